// Drives the operator console in real headless Chromium (Debian's /usr/bin/chromium) with
// playwright-core, the way a person would: typing into labelled fields and pressing buttons.
//
//   node console.mjs flow <base-url> <api-key> <dead-id> <screenshot-dir>
//       signs in, finds the dead notification by id, opens it, checks its attempts, presses
//       Replay and waits, without reloading, until the page says it was delivered; takes a
//       screenshot of every main page on the way.
//   node console.mjs access <base-url> <read-only-key> <dead-id> <short-session-base-url> <api-key>
//       a wrong key cannot sign in; a read-only key sees the dead notification but its Replay
//       button is disabled and the server refuses the replay; on a node whose sessions last
//       2 s, a session that has expired is sent back to the sign-in page (the open page by its
//       live connection, and a new load of the console by the server).
// Prints OK and exits 0 on success; prints FAILED: <reason> and exits 1 otherwise.
import { chromium } from "playwright-core";

const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const args = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];
const T = { timeout: 20000 };

async function signIn(page, base, key) {
  await page.goto(`${base}/console`);
  // No session yet: the console sends the browser to its sign-in page.
  await page.waitForURL(/\/console\/login/, T);
  await page.getByLabel("API key").fill(key);
  await page.getByRole("button", { name: "Sign in" }).click();
}

async function flow(page, base, key, deadId, shots) {
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  await signIn(page, base, key);
  await page.waitForURL(/\/console(#.*)?$/, T);
  await page.waitForSelector("#stat-dead", T);
  await page.waitForSelector(".chart svg rect", T);
  await page.waitForSelector("text=Nodes alive (1)", T);
  await page.screenshot({ path: `${shots}/overview.png`, fullPage: true });

  await page.getByRole("link", { name: "Notifications" }).click();
  await page.getByLabel("Id or text").fill(deadId);
  await page.getByRole("button", { name: "Search" }).click();
  await page.waitForSelector("#exact", T);
  await page.screenshot({ path: `${shots}/search.png`, fullPage: true });
  await page.locator("#exact a").click();

  await page.waitForSelector("#notification h2", T);
  const state = await page.textContent("[data-field=state]");
  if (state.trim() !== "dead") throw new Error(`the notification is ${state}, not dead`);
  const attempts = await page.locator("#notification table tbody tr").count();
  if (attempts < 1) throw new Error("no attempt rows");
  const firstStatus = await page.textContent("#notification table tbody tr td:nth-child(4)");
  if (firstStatus.trim() !== "500") throw new Error(`first attempt status ${firstStatus}`);
  await page.screenshot({ path: `${shots}/notification-dead.png`, fullPage: true });

  // Marks this document: if the page reloaded, the mark would be gone.
  await page.evaluate(() => { window.__noReload = true; });
  await page.locator("#notification").getByRole("button", { name: "Replay" }).click();
  await page.waitForFunction(() => {
    const s = document.querySelector("[data-field=state]");
    return s && s.textContent.trim() === "delivered";
  }, null, T);
  if (!(await page.evaluate(() => window.__noReload === true))) throw new Error("the page reloaded");
  // Delivered entries are compacted: the delivering attempt's row, and the count of all.
  const made = await page.textContent("[data-field=attempts]");
  if (made.trim() !== "2") throw new Error(`${made} attempts after the replay`);
  const lastStatus = await page.textContent("#notification table tbody tr:last-child td:nth-child(4)");
  if (lastStatus.trim() !== "200") throw new Error(`the delivering attempt's status is ${lastStatus}`);
  await page.screenshot({ path: `${shots}/notification-delivered.png`, fullPage: true });

  for (const [link, wait, name] of [
    ["Dead", "text=Failures by merchant and error", "dead"],
    ["Merchants", "text=Rotate secret", "merchants"],
    ["Browser push", "text=An order's stored result", "push"],
    ["Devices", "text=Look up or call a device", "devices"],
    ["Audit", "text=POST /v1/dead/", "audit"],
  ]) {
    await page.getByRole("link", { name: link, exact: true }).click();
    await page.waitForSelector(wait, T);
    await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
  }
  if (errors.length) throw new Error("page errors: " + errors.join(" | "));
}

async function access(browser, base, readOnlyKey, deadId, shortBase, key) {
  let page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  await signIn(page, base, "not-a-key-of-anyone-at-all");
  await page.waitForSelector("text=That key cannot sign in", T);
  if (!page.url().includes("/console/login")) throw new Error(`wrong key reached ${page.url()}`);

  await signIn(page, base, readOnlyKey);
  await page.waitForSelector("#who", T);
  await page.goto(`${base}/console#/n/${encodeURIComponent(deadId)}`);
  const replay = page.locator("#notification").getByRole("button", { name: "Replay" });
  await replay.waitFor(T);
  if (!(await replay.isDisabled())) throw new Error("a read-only key has an enabled Replay button");
  const status = await page.evaluate(async (id) => {
    const s = await (await fetch("/console/api/session")).json();
    const r = await fetch(`/console/api/v1/dead/${id}/replay`, { method: "POST", headers: { "X-CSRF-Token": s.csrf } });
    return `${r.status} ${(await r.json()).code}`;
  }, deadId);
  if (status !== "403 read_only") throw new Error(`a read-only replay answered ${status}`);

  // A browser of its own: cookies do not tell ports apart, and this one must start signed out.
  page = await (await browser.newContext()).newPage();
  await signIn(page, shortBase, key);
  await page.waitForSelector("#stat-dead", T);
  // The open page is told over its live connection when the session ends, and goes by itself.
  await page.waitForURL(/\/console\/login\?error=expired/, T);
  await page.waitForSelector("text=Your session has expired", T);
  // Opening the console again lands there too (the browser has dropped the cookie by now).
  await page.goto(`${shortBase}/console#/dead`);
  await page.waitForURL(/\/console\/login/, T);
}

const [mode, ...given] = process.argv.slice(2);
// Base URLs without a trailing slash.
const rest = given.map((a) => (a.startsWith("http") ? a.replace(/\/+$/, "") : a));
const browser = await chromium.launch({ executablePath, args, headless: true });
try {
  if (mode === "flow") await flow(await browser.newPage({ viewport: { width: 1280, height: 800 } }), ...rest);
  else if (mode === "access") await access(browser, ...rest);
  else throw new Error(`unknown mode ${mode}`);
  console.log("OK");
} catch (e) {
  console.log(`FAILED: ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
