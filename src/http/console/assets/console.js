// paynotify console: a page built from /console/api, with no framework and no inline script.
// Every value from the server goes into the page as text (textContent), never as HTML.
"use strict";

const state = { session: null, live: null, page: null };

// ---- helpers ---------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

const main = () => document.getElementById("main");
// Puts `nodes` in the page, skipping the absent ones.
const show = (...nodes) => main().replaceChildren(...nodes.flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false));
const fmtTime = (ms) => (ms ? new Date(Number(ms)).toLocaleString() : "—");
const fmtAge = (ms) => {
  if (!ms) return "0 s";
  const s = Math.round(ms / 1000);
  if (s < 120) return s + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return Math.round(s / 3600) + " h";
};
const badge = (text) => el("span", { class: "badge " + String(text).replace(/[^a-z_]/gi, "") }, text);
const isAdmin = () => state.session && state.session.role === "admin";

function flash(message, bad) {
  const f = document.getElementById("flash");
  f.textContent = message;
  f.className = bad ? "flash bad" : "flash";
  f.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { f.hidden = true; }, 8000);
}

function toSignIn(reason) {
  window.location.assign("/console/login?error=" + reason);
}

async function api(path, options) {
  const opts = Object.assign({ headers: {} }, options || {});
  opts.credentials = "same-origin";
  if (opts.method && opts.method !== "GET") {
    opts.headers["X-CSRF-Token"] = state.session ? state.session.csrf : "";
    if (opts.body !== undefined && typeof opts.body !== "string") {
      opts.body = JSON.stringify(opts.body);
      opts.headers["Content-Type"] = "application/json";
    }
  }
  const res = await fetch("/console/api" + path, opts);
  let body = null;
  try { body = await res.json(); } catch (_) { body = null; }
  if (res.status === 401) {
    toSignIn(body && body.code === "session_expired" ? "expired" : "expired");
    throw new Error("signed out");
  }
  if (!res.ok) {
    const err = new Error((body && body.message) || res.statusText);
    err.status = res.status;
    err.body = body;
    throw err;
  }
  return body;
}

// A button that runs an action, shows what happened and stays disabled for read-only keys.
function action(label, run, cls) {
  const b = el("button", { type: "button", class: cls || "", disabled: !isAdmin(),
    title: isAdmin() ? null : "This key can look but not change anything" }, label);
  b.addEventListener("click", async () => {
    b.disabled = true;
    try { await run(); } catch (e) { if (e.message !== "signed out") flash(label + " failed: " + e.message, true); }
    b.disabled = !isAdmin();
  });
  return b;
}

function openLive(params, handlers) {
  closeLive();
  const es = new EventSource("/console/api/live?" + new URLSearchParams(params));
  state.live = es;
  for (const [name, fn] of Object.entries(handlers)) {
    es.addEventListener(name, (ev) => fn(JSON.parse(ev.data)));
  }
  es.addEventListener("expired", () => { closeLive(); toSignIn("expired"); });
  es.addEventListener("error", () => {
    const dot = document.getElementById("livedot");
    if (dot) { dot.textContent = "● reconnecting"; dot.className = "live off"; }
    // A 401 on reconnect means the session ended.
    api("/session").catch(() => {});
  });
  es.addEventListener("open", () => {
    const dot = document.getElementById("livedot");
    if (dot) { dot.textContent = "● live"; dot.className = "live"; }
  });
}

function closeLive() {
  if (state.live) { state.live.close(); state.live = null; }
}

function table(headers, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { class: h.endsWith("#") ? "num" : "" }, h.replace(/#$/, ""))))),
    el("tbody", {}, rows.length ? rows : [el("tr", {}, el("td", { colspan: headers.length, class: "muted" }, "Nothing here."))]));
}

// ---- overview --------------------------------------------------------------------------

const COLORS = { delivered: "#1f8a4c", retry: "#c98a00", dead: "#c23a3a" };

function chart(minutes) {
  const w = 960, h = 170, pad = 24;
  const s = svg("svg", { viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: "none", role: "img", "aria-label": "attempts per minute" });
  const max = Math.max(1, ...minutes.map((m) => m.delivered + m.retry + m.dead));
  const bw = (w - pad) / Math.max(1, minutes.length);
  minutes.forEach((m, i) => {
    let y = h - 16;
    for (const k of ["delivered", "retry", "dead"]) {
      const bh = (m[k] / max) * (h - 30);
      if (bh > 0) {
        y -= bh;
        const r = svg("rect", { x: pad + i * bw, y, width: Math.max(1, bw - (bw > 3 ? 1 : 0)), height: bh, fill: COLORS[k] });
        const t = svg("title", {});
        t.textContent = `${new Date(m.at).toLocaleTimeString()}: ${m.delivered} delivered, ${m.retry} retry, ${m.dead} dead`;
        r.append(t);
        s.append(r);
      }
    }
  });
  const top = svg("text", { x: 0, y: 12, "font-size": 11, fill: "#6b7685" });
  top.textContent = String(max);
  const base = svg("line", { x1: pad, x2: w, y1: h - 16, y2: h - 16, stroke: "#dde2e8" });
  s.append(top, base);
  if (minutes.length) {
    const l = svg("text", { x: pad, y: h - 2, "font-size": 11, fill: "#6b7685" });
    l.textContent = new Date(minutes[0].at).toLocaleTimeString();
    const r = svg("text", { x: w - 60, y: h - 2, "font-size": 11, fill: "#6b7685" });
    r.textContent = new Date(minutes[minutes.length - 1].at).toLocaleTimeString();
    s.append(l, r);
  }
  return s;
}

function renderOverview(box, o) {
  const st = o.stats;
  const stat = (label, n, id) => el("div", { class: "stat", id }, el("div", { class: "n" }, n), el("div", { class: "l" }, label));
  const sum = (k) => o.chart.reduce((a, m) => a + m[k], 0);
  box.replaceChildren(
    el("div", { class: "grid" },
      stat("scheduled", st.scheduled, "stat-scheduled"), stat("delivering", st.delivering, "stat-delivering"),
      stat("delivered (kept)", st.delivered, "stat-delivered"), stat("dead", st.dead, "stat-dead"),
      stat("due backlog", st.due_backlog, "stat-backlog"), stat("oldest overdue", fmtAge(st.oldest_overdue_ms), "stat-overdue"),
      stat("intake pending", st.intake_pending, "stat-intake")),
    el("h2", {}, "Attempts per minute"),
    el("div", { class: "card chart" },
      el("div", { class: "legend" },
        ["delivered", "retry", "dead"].map((k) => el("span", {}, el("i", { class: "sw-" + k }), `${k} ${sum(k)}`))),
      chart(o.chart)),
    el("h2", {}, `Nodes alive (${o.nodes.length})`),
    table(["id", "roles", "version", "uptime", "in flight#", "browsers#", "devices#"],
      o.nodes.map((n) => el("tr", {}, el("td", { class: "mono" }, n.id), el("td", {}, n.roles), el("td", {}, n.version),
        el("td", {}, fmtAge(o.now - n.started_at)), el("td", { class: "num" }, n.in_flight),
        el("td", { class: "num" }, n.ws_connections), el("td", { class: "num" }, n.devices_online)))));
}

async function pageOverview(params) {
  const range = params.get("range") === "day" ? "day" : "hour";
  const box = el("div", {});
  show(
    el("div", { class: "row" }, el("h1", {}, "Overview"), el("span", { id: "livedot", class: "live" }, "● live"),
      el("a", { href: "#/overview?range=hour" }, "last hour"), el("a", { href: "#/overview?range=day" }, "last day")),
    box);
  renderOverview(box, await api("/overview?range=" + range));
  openLive({ view: "overview", range }, { overview: (o) => renderOverview(box, o) });
}

// ---- notifications ---------------------------------------------------------------------

function hitRow(h, selectable) {
  return el("tr", {},
    selectable ? el("td", {}, el("input", { type: "checkbox", class: "pick", value: h.id, "aria-label": "select " + h.id })) : null,
    el("td", { class: "mono" }, el("a", { href: "#/n/" + encodeURIComponent(h.id) }, h.id)),
    el("td", {}, badge(h.state)), el("td", {}, h.merchant || "—"), el("td", {}, fmtTime(h.at)),
    el("td", { class: "num" }, h.attempts), el("td", {}, h.reason || ""),
    selectable ? el("td", {}, action("Replay", async () => {
      await api("/v1/dead/" + encodeURIComponent(h.id) + "/replay", { method: "POST" });
      flash(`Replayed ${h.id}.`);
    }, "secondary")) : null);
}

function toMs(v) { return v ? String(new Date(v).getTime()) : ""; }

async function pageNotifications(params) {
  const f = el("form", { class: "filters", id: "search" },
    el("label", {}, "Id or text", el("input", { name: "q", value: params.get("q") || "", size: 32, placeholder: "order-1001, or text in the url or body" })),
    el("label", {}, "State", el("select", { name: "state" }, ["any", "scheduled", "delivering", "delivered", "dead"].map((s) =>
      el("option", { value: s, selected: (params.get("state") || "any") === s }, s)))),
    el("label", {}, "Merchant", el("input", { name: "merchant", value: params.get("merchant") || "", size: 14 })),
    el("label", {}, "From", el("input", { name: "from", type: "datetime-local", value: params.get("from") || "" })),
    el("label", {}, "To", el("input", { name: "to", type: "datetime-local", value: params.get("to") || "" })),
    el("button", { type: "submit" }, "Search"));
  f.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const [k, v] of new FormData(f)) if (v && v !== "any") p.set(k, v);
    location.hash = "#/notifications?" + p;
  });
  const results = el("div", {});
  show(el("h1", {}, "Notifications"), f, results);
  const q = new URLSearchParams();
  for (const k of ["q", "state", "merchant"]) if (params.get(k)) q.set(k, params.get(k));
  if (params.get("from")) q.set("from", toMs(params.get("from")));
  if (params.get("to")) q.set("to", toMs(params.get("to")));
  const rows = el("tbody", {});
  const more = el("button", { type: "button", class: "secondary", hidden: true }, "More");
  const info = el("p", { class: "muted" });
  let after = null;
  async function load() {
    if (after) q.set("after", after);
    const page = await api("/search?" + q);
    if (page.exact && !after) {
      results.prepend(el("div", { class: "card", id: "exact" }, "Exact id match: ",
        el("a", { href: "#/n/" + encodeURIComponent(page.exact.id) }, page.exact.id), " ", badge(page.exact.state)));
    }
    page.hits.forEach((h) => rows.append(hitRow(h, false)));
    after = page.next;
    more.hidden = !after;
    info.textContent = `${rows.children.length} shown; ${page.scanned} examined for this page` + (after ? "; more may match." : ".");
  }
  more.addEventListener("click", () => load().catch((e) => flash(e.message, true)));
  results.append(el("table", {}, el("thead", {}, el("tr", {}, ["id", "state", "merchant", "time", "attempts", "reason"].map((h) => el("th", {}, h)))), rows), info, more);
  await load();
}

function attemptRows(attempts) {
  return attempts.map((a) => el("tr", {},
    el("td", { class: "num" }, a.attempt), el("td", {}, fmtTime(a.due_at)), el("td", {}, fmtTime(a.started_at)),
    el("td", {}, a.status === null || a.status === undefined ? "—" : String(a.status)),
    el("td", { class: "num" }, a.latency_ms === undefined ? "—" : a.latency_ms + " ms"),
    el("td", {}, a.error || ""), el("td", { class: "mono" }, a.response || ""), el("td", { class: "mono" }, a.node || "")));
}

function renderNotification(box, n, id) {
  if (!n) {
    box.replaceChildren(el("p", {}, `No notification ${id} (unknown, or past retention).`));
    return;
  }
  const kv = [["state", badge(n.state)], ["merchant", (n.spec && n.spec.merchant) || n.merchant || "—"], ["url", n.url],
    ["created", fmtTime(n.created_at)]];
  if (n.next_attempt_at) kv.push(["next attempt", fmtTime(n.next_attempt_at)]);
  if (n.lease_until) kv.push(["leased by", `${n.owner} until ${fmtTime(n.lease_until)}`]);
  if (n.delivered_at) kv.push(["delivered", fmtTime(n.delivered_at)]);
  if (n.died_at) kv.push(["died", fmtTime(n.died_at)]);
  if (n.reason) kv.push(["reason", n.reason]);
  kv.push(["attempts", String(n.compacted ? n.attempts.length + n.earlier_attempts : n.attempts.length)]);
  const replay = n.state === "dead" ? action("Replay", async () => {
    await api("/v1/dead/" + encodeURIComponent(id) + "/replay", { method: "POST" });
    flash(`Replayed ${id}: it is scheduled now.`);
  }) : null;
  box.replaceChildren(
    el("div", { class: "row" }, el("h1", { class: "mono" }, id), badge(n.state), replay,
      el("span", { id: "livedot", class: "live" }, "● live")),
    el("dl", { class: "kv card" }, kv.map(([k, v]) => [el("dt", {}, k), el("dd", { "data-field": k }, v)])),
    el("h2", {}, "Attempts"),
    table(["attempt#", "due", "started", "status", "latency#", "error", "response", "node"], attemptRows(n.attempts)),
    n.compacted ? el("p", { class: "muted" }, `Delivered entries are kept compact: the delivering attempt only` +
      (n.earlier_attempts ? ` (${n.earlier_attempts} earlier not kept)` : "") + `, and the spec as its digest ${n.spec_digest}.`) : null,
    el("h2", {}, "Spec (header values redacted)"),
    n.compacted ? el("p", { class: "muted" }, "Not kept after delivery.") : el("pre", {}, JSON.stringify(n.spec, null, 2)));
}

async function pageNotification(id) {
  const box = el("div", { id: "notification" });
  show(box);
  let n = null;
  try { n = await api("/v1/notifications/" + encodeURIComponent(id)); } catch (e) { if (e.status !== 404) throw e; }
  renderNotification(box, n, id);
  openLive({ view: "notification", id }, { notification: (v) => renderNotification(box, v, id) });
}

// ---- dead ------------------------------------------------------------------------------

async function pageDead(params) {
  const f = el("form", { class: "filters" },
    el("label", {}, "Merchant", el("input", { name: "merchant", value: params.get("merchant") || "" })),
    el("label", {}, "Reason contains", el("input", { name: "reason", value: params.get("reason") || "" })),
    el("button", { type: "submit" }, "Filter"));
  f.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const [k, v] of new FormData(f)) if (v) p.set(k, v);
    location.hash = "#/dead?" + p;
  });
  const groups = await api("/dead/groups");
  const q = new URLSearchParams({ state: "dead", limit: "100" });
  for (const k of ["merchant", "reason"]) if (params.get(k)) q.set(k, params.get(k));
  const page = await api("/search?" + q);
  const replaySelected = action("Replay selected", async () => {
    const ids = [...document.querySelectorAll("input.pick:checked")].map((c) => c.value);
    if (!ids.length) { flash("Select some first.", true); return; }
    const r = await api("/v1/dead/replay", { method: "POST", body: { ids } });
    flash(`Replayed ${r.replayed}.`);
    route();
  });
  show(
    el("h1", {}, "Dead"),
    el("h2", {}, `Failures by merchant and error (${groups.sampled} of ${groups.total_dead} newest read)`),
    table(["merchant", "error", "count#", "latest", ""], groups.groups.map((g) => el("tr", {},
      el("td", {}, g.merchant || "—"), el("td", {}, g.error), el("td", { class: "num" }, g.count),
      el("td", { class: "mono" }, el("a", { href: "#/n/" + encodeURIComponent(g.latest_id) }, g.latest_id)),
      el("td", {}, g.merchant ? el("div", { class: "row" },
        el("a", { href: "#/dead?merchant=" + encodeURIComponent(g.merchant) }, "show"),
        action(`Replay all of ${g.merchant}`, async () => {
          const r = await api("/dead/replay-merchant", { method: "POST", body: { merchant: g.merchant } });
          flash(`Replayed ${r.replayed} of ${g.merchant}` + (r.complete ? "." : "; more remain, press again."));
          route();
        }, "secondary")) : "")))),
    el("h2", {}, "Dead notifications"), f,
    el("div", { class: "row" }, replaySelected),
    el("table", {}, el("thead", {}, el("tr", {}, ["", "id", "state", "merchant", "died", "attempts", "reason", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, page.hits.map((h) => hitRow(h, true)))),
    el("p", { class: "muted" }, `${page.hits.length} shown` + (page.next ? "; more exist (narrow the filter)." : ".")));
}

// ---- merchants -------------------------------------------------------------------------

function merchantRow(m) {
  const h = m.health || {};
  const lanes = (h.lanes || []);
  const breaker = lanes.length ? lanes.map((l) => badge(l.breaker)) : "—";
  const limit = lanes.reduce((a, l) => a + (l.concurrency_limit || 0), 0);
  const w = h.last_1h || {};
  return el("tr", {},
    el("td", { class: "mono" }, m.id),
    el("td", {}, badge(m.disabled ? "disabled" : "enabled"), h.failing ? [" ", badge("bad")] : null),
    el("td", { class: "num" }, `${w.delivered || 0} / ${w.failed || 0}`),
    el("td", { class: "num" }, w.p99_ms ? "≤ " + w.p99_ms + " ms" : "—"),
    el("td", { class: "num" }, h.consecutive_failures || 0),
    el("td", {}, breaker), el("td", { class: "num" }, limit || "—"),
    el("td", {}, el("div", { class: "row" },
      action(m.disabled ? "Enable" : "Disable", async () => {
        await api("/v1/merchants/" + encodeURIComponent(m.id), { method: "PATCH", body: { disabled: !m.disabled } });
        flash(`${m.id} ${m.disabled ? "enabled" : "disabled"}.`);
        route();
      }, "secondary"),
      action("Rotate secret", async () => {
        const r = await api("/v1/merchants/" + encodeURIComponent(m.id) + "/secret/rotate", { method: "POST", body: {} });
        const s = typeof r.secret === "string" ? r.secret : JSON.stringify(r.secret);
        document.getElementById("secretbox").replaceChildren(el("div", { class: "secret" },
          `New secret for ${m.id} (shown this once; the old one keeps signing for the grace period): `, el("code", {}, s)));
      }, "secondary"),
      action("Send test", async () => {
        const r = await api("/merchants/" + encodeURIComponent(m.id) + "/test", { method: "POST", body: {} });
        flash(`Test notification ${r.id} enqueued.`);
        location.hash = "#/n/" + encodeURIComponent(r.id);
      }, "secondary"))));
}

async function pageMerchants(params) {
  const after = params.get("after");
  const page = await api("/merchants" + (after ? "?after=" + encodeURIComponent(after) : ""));
  show(
    el("h1", {}, "Merchants"), el("div", { id: "secretbox" }),
    table(["id", "status", "1 h delivered / failed#", "1 h p99#", "failing in a row#", "breaker", "limit#", ""],
      page.merchants.map(merchantRow)),
    page.next ? el("p", {}, el("a", { href: "#/merchants?after=" + encodeURIComponent(page.next) }, "Next page")) : null);
}

// ---- browser push and devices ----------------------------------------------------------

async function pagePush() {
  const o = await api("/overview?range=hour");
  const out = el("div", {});
  const f = el("form", { class: "filters" }, el("label", {}, "Order id", el("input", { name: "order", required: true })),
    el("button", { type: "submit" }, "Show stored result"));
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const id = new FormData(f).get("order");
    try {
      const r = await api("/orders/" + encodeURIComponent(id) + "/result");
      out.replaceChildren(r.result === null ? el("p", {}, `No stored result for ${id}.`) : el("pre", {}, JSON.stringify(r, null, 2)));
    } catch (e) { flash(e.message, true); }
  });
  show(el("h1", {}, "Browser push"),
    table(["node", "connections#", "orders followed#"], o.nodes.filter((n) => n.roles.includes("gateway")).map((n) =>
      el("tr", {}, el("td", { class: "mono" }, n.id), el("td", { class: "num" }, n.ws_connections), el("td", { class: "num" }, n.orders_followed)))),
    el("h2", {}, "An order's stored result"), f, out);
}

async function pageDevices() {
  const o = await api("/overview?range=hour");
  const out = el("div", {});
  const f = el("form", { class: "filters" },
    el("label", {}, "Device id", el("input", { name: "device", required: true })),
    el("label", {}, "Method", el("input", { name: "method", value: "status" })),
    el("label", {}, "Params (JSON)", el("input", { name: "params", value: "{}" })),
    el("label", {}, "Timeout ms", el("input", { name: "timeout", type: "number", value: "3000", min: 1 })),
    el("button", { type: "submit", name: "look" }, "Look up"));
  const call = action("Call", async () => {
    const d = new FormData(f);
    let params;
    try { params = JSON.parse(d.get("params") || "null"); } catch (_) { flash("Params are not JSON.", true); return; }
    try {
      const r = await api("/v1/devices/" + encodeURIComponent(d.get("device")) + "/call",
        { method: "POST", body: { method: d.get("method"), params, timeout_ms: Number(d.get("timeout")) } });
      out.replaceChildren(el("p", {}, "Answer:"), el("pre", { id: "answer" }, JSON.stringify(r.result, null, 2)));
    } catch (e) {
      out.replaceChildren(el("p", { id: "answer" }, (e.body && e.body.code === "device_timeout") ? "No answer by the deadline (timeout)." : "Call failed: " + e.message));
    }
  });
  f.append(call);
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await api("/v1/devices/" + encodeURIComponent(new FormData(f).get("device")));
    out.replaceChildren(el("pre", {}, JSON.stringify(r, null, 2)));
  });
  show(el("h1", {}, "Devices"),
    table(["node", "online#", "calls waiting#"], o.nodes.filter((n) => n.roles.includes("gateway")).map((n) =>
      el("tr", {}, el("td", { class: "mono" }, n.id), el("td", { class: "num" }, n.devices_online), el("td", { class: "num" }, n.device_calls_waiting)))),
    el("h2", {}, "Look up or call a device"), f, out);
}

async function pageAudit() {
  const a = await api("/audit");
  show(el("h1", {}, "Audit log"),
    table(["when", "who", "role", "action", "outcome", "node"], a.entries.map((e) => el("tr", {},
      el("td", {}, fmtTime(e.at)), el("td", { class: "mono" }, e.who), el("td", {}, e.role),
      el("td", { class: "mono" }, e.action), el("td", {}, e.outcome), el("td", { class: "mono" }, e.node)))));
}

// ---- routing ---------------------------------------------------------------------------

async function route() {
  closeLive();
  const hash = location.hash.replace(/^#\/?/, "") || "overview";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const [page, ...rest] = path.split("/");
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === (page === "n" ? "notifications" : page)));
  const pages = { overview: pageOverview, notifications: pageNotifications, dead: pageDead, merchants: pageMerchants,
    push: pagePush, devices: pageDevices, audit: pageAudit, n: () => pageNotification(decodeURIComponent(rest.join("/"))) };
  try {
    await (pages[page] || pageOverview)(params);
  } catch (e) {
    if (e.message !== "signed out") show(el("p", { class: "message" }, "Could not load this page: " + e.message));
  }
}

async function start() {
  state.session = await api("/session");
  document.getElementById("who").textContent = `${state.session.who} (${state.session.role}) on ${state.session.node}`;
  document.getElementById("signout").addEventListener("click", async () => {
    await api("/logout", { method: "POST" }).catch(() => {});
    toSignIn("signed_out");
  });
  window.addEventListener("hashchange", route);
  await route();
}

start().catch((e) => { if (e.message !== "signed out") flash(e.message, true); });
