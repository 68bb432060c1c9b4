// Drives the inbox page in Debian's headless Chromium for tests/e2e/test_inbox_browser.py.
//
// Environment: INBOX_URL (the page, with #token=...), EXPECT_TITLE (the notification to wait for),
// CHROMIUM (default /usr/bin/chromium), STEP_TIMEOUT_MS (default 60000).
// Protocol: prints one JSON line per step on stdout. After {"step":"ready"} the test publishes the
// event; this script then waits for it to appear WITHOUT reloading, clicks "Mark read" and waits
// for the badge to go. It exits 0 after {"step":"done", ...}, or 1 after {"step":"error", ...}.
import { chromium } from "playwright-core";

const url = process.env.INBOX_URL;
const title = process.env.EXPECT_TITLE;
const timeout = Number(process.env.STEP_TIMEOUT_MS || 60000);
const say = (doc) => process.stdout.write(JSON.stringify(doc) + "\n");

if (!url || !title) {
  say({ step: "error", message: "INBOX_URL and EXPECT_TITLE must be set" });
  process.exit(1);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
});
let code = 0;
try {
  const page = await browser.newPage();
  const problems = [];
  page.on("pageerror", (err) => problems.push(String(err)));
  let navigations = 0;
  page.on("framenavigated", (frame) => { if (frame === page.mainFrame()) navigations += 1; });

  await page.goto(url);
  await page.waitForFunction(() => document.getElementById("status").textContent === "live", null, { timeout });
  await page.waitForFunction(() => document.getElementById("empty").hidden === false, null, { timeout });
  const before = await page.evaluate(() => {
    window.__tidingsSameDocument = "marker";  // survives only if the page is never reloaded
    const badge = document.getElementById("badge");
    return { hidden: badge.hidden, text: badge.textContent, items: document.querySelectorAll("#list li").length };
  });
  say({ step: "ready", badge: before, navigations });

  const item = page.locator("#list li", { has: page.locator(".title", { hasText: title }) });
  await item.waitFor({ timeout });
  await page.waitForFunction(() => !document.getElementById("badge").hidden, null, { timeout });
  const arrived = await page.evaluate(() => ({
    badge: document.getElementById("badge").textContent,
    sameDocument: window.__tidingsSameDocument === "marker",
    unread: document.querySelectorAll("#list li.unread").length,
  }));
  arrived.body = await item.locator(".body").textContent();
  arrived.navigations = navigations;
  say({ step: "arrived", ...arrived });

  await item.getByRole("button", { name: "Mark read" }).click();
  await page.waitForFunction(() => document.getElementById("badge").hidden, null, { timeout });
  const after = await page.evaluate(() => ({
    badgeHidden: document.getElementById("badge").hidden,
    badge: document.getElementById("badge").textContent,
    sameDocument: window.__tidingsSameDocument === "marker",
    unread: document.querySelectorAll("#list li.unread").length,
    read: document.querySelectorAll("#list li.read").length,
    summary: document.getElementById("summary").textContent,
  }));
  after.navigations = navigations;
  after.problems = problems;
  say({ step: "done", ...after });
} catch (err) {
  say({ step: "error", message: String(err && err.stack ? err.stack : err) });
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);
