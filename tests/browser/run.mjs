// Drives real headless Chromium (Debian's /usr/bin/chromium) with playwright-core.
//
//   node run.mjs demo <base-url>
//       opens <base-url>/demo, clicks "Simulate payment", waits until the page says "Paid".
//   node run.mjs failover <node-a-url> <node-b-url> <order-id> <token>
//       loads paynotify.js from node A, follows the order over [A, B], prints READY once
//       subscribed, then waits until the callback reports the result (the test kills A and
//       publishes through B in between).
// Prints PAID and exits 0 on success; prints the reason and exits 1 otherwise.
import { chromium } from "playwright-core";

const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const args = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

const [mode, ...rest] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath, args, headless: true });
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.error("page:", m.text()));
  if (mode === "demo") {
    const [base] = rest;
    await page.goto(`${base}/demo`);
    await page.waitForSelector("#status");
    const before = await page.textContent("#status");
    if (before.includes("Paid")) throw new Error("the page says Paid before any payment");
    await page.click("#pay");
    await page.waitForFunction(() => document.getElementById("status").textContent === "Paid", null, { timeout: 20000 });
    console.log("PAID");
  } else if (mode === "failover") {
    const [a, b, order, token] = rest;
    const ws = (u) => u.replace(/^http/, "ws") + "/ws";
    await page.goto(`${a}/healthz`);
    await page.addScriptTag({ url: `${a}/paynotify.js` });
    await page.evaluate(({ urls, order, token }) => {
      window.__events = [];
      const client = new PayNotify({
        urls,
        maxDelayMs: 1000,
        onStatus: (s, detail) => window.__events.push(s + " " + (detail || "")),
      });
      client.follow(order, token, (err, result) => {
        window.__result = err ? "error " + err.code : result.status;
      });
    }, { urls: [ws(a), ws(b)], order, token });
    await page.waitForFunction(() => window.__events.some((e) => e.startsWith("subscribed")), null, { timeout: 20000 });
    console.log("READY");
    await page.waitForFunction(() => window.__result !== undefined, null, { timeout: 30000 });
    const result = await page.evaluate(() => window.__result);
    const events = await page.evaluate(() => window.__events);
    console.error("events:", JSON.stringify(events));
    if (result !== "paid") throw new Error(`unexpected result ${result}`);
    console.log("PAID");
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
} catch (e) {
  console.log(`FAILED: ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
