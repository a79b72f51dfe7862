// Opens the span-profile report in headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core) and checks it as a person would:
// - the page loads with no console errors and no page errors;
// - one server span's "profile" toggle reveals its flame graph in place;
// - the flame graph is visible and contains the expected function;
// - clicking a frame zooms, and inferno's search finds and highlights it;
// - a screenshot is saved.
//
// Environment: REPORT (required, the report.html), SCREENSHOT (default
// REPORT's dir/report-screenshot.png), CHROMIUM (default /usr/bin/chromium),
// EXPECT_FUNCTION (default find_nearest_vehicle), SPAN_NAME (a regexp for the
// span to open, default "^GET /").

import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { chromium } from "playwright-core";

const report = process.env.REPORT;
const fn = process.env.EXPECT_FUNCTION || "find_nearest_vehicle";
const spanName = new RegExp(process.env.SPAN_NAME || "^GET /");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const screenshot =
  process.env.SCREENSHOT ||
  (report ? path.join(path.dirname(report), "report-screenshot.png") : "report-screenshot.png");

test("report: open, zoom and search a span's flame graph", async (t) => {
  assert.ok(report, "set REPORT to the report.html to test");
  assert.ok(fs.existsSync(report), `no such file: ${report}`);
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "report-chromium-"));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    viewport: { width: 1400, height: 1000 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  t.after(async () => {
    await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  });

  const page = context.pages()[0] || (await context.newPage());
  const errors = [];
  const requests = [];
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(`console: ${m.text()}`);
  });
  page.on("pageerror", (e) => errors.push(`pageerror: ${e.message}`));
  page.on("request", (r) => {
    const u = r.url();
    if (!u.startsWith("file:") && !u.startsWith("data:") && !u.startsWith("about:")) requests.push(u);
  });
  // inferno's search asks for the term with prompt().
  page.on("dialog", (d) => d.accept(fn));

  await page.goto(pathToFileURL(path.resolve(report)).href, { waitUntil: "load" });
  await page.locator("#traces").waitFor();

  // The first span (rows are sorted heaviest first) whose name matches and
  // that has a flame graph.
  const spans = page.locator(".span").filter({ has: page.locator("button.toggle") });
  const count = await spans.count();
  assert.ok(count > 0, "no span has a flame graph");
  let span = null;
  for (let i = 0; i < count; i++) {
    const s = spans.nth(i);
    const label = (await s.locator(".label").getAttribute("title")) || "";
    if (spanName.test(label)) {
      span = s;
      break;
    }
  }
  assert.ok(span, `no span named like ${spanName} has a flame graph`);
  const spanId = await span.getAttribute("data-span-id");
  const label = await span.locator(".label").getAttribute("title");

  const iframe = span.locator("iframe.fg");
  assert.equal(await iframe.isVisible(), false, "the flame graph starts hidden");
  assert.equal(await iframe.getAttribute("srcdoc"), null, "and is not loaded before it is opened");
  await span.locator("button.toggle").click();
  await iframe.waitFor({ state: "visible" });
  const box = await iframe.boundingBox();
  assert.ok(box && box.width > 600 && box.height > 100, `iframe too small: ${JSON.stringify(box)}`);

  const frame = await (await iframe.elementHandle()).contentFrame();
  assert.ok(frame, "no iframe document");
  // inferno's init(evt) ran (svg onload): its globals are set.
  await frame.waitForFunction(() => typeof details !== "undefined" && details !== undefined && searchbtn);
  const svgText = await frame.locator("#frames").textContent();
  assert.ok(svgText.includes(fn), `${label} (${spanId}): flame graph lacks ${fn}`);
  await span.scrollIntoViewIfNeeded();
  await page.screenshot({ path: screenshot, fullPage: false });

  // Zoom: click the frame of the expected function.
  const target = frame.locator("#frames > g").filter({ has: frame.locator("title", { hasText: fn }) }).first();
  const before = Number(await target.locator("rect").getAttribute("width").then((w) => parseFloat(w)));
  await target.click();
  await frame.waitForFunction(() => !document.getElementById("unzoom").classList.contains("hide"));
  const after = Number(await target.locator("rect").getAttribute("width").then((w) => parseFloat(w)));
  assert.ok(after >= before, `zoomed frame did not widen: ${before}% -> ${after}%`);
  assert.ok(after > 99, `zoomed frame should fill the width, got ${after}%`);

  // Search (the dialog handler types the function name).
  await frame.locator("#search").click();
  await frame.waitForFunction(() => document.getElementById("matched").textContent.includes("Matched"));
  const matched = await frame.locator("#matched").textContent();
  const highlighted = await frame.evaluate(
    () => Array.from(document.querySelectorAll("#frames rect")).filter((r) => r.getAttribute("fill") === "rgb(230,0,230)").length,
  );
  assert.ok(highlighted > 0, `search highlighted nothing (${matched})`);
  const pct = parseFloat(matched.replace(/[^0-9.]/g, ""));
  assert.ok(pct > 0, `search matched ${matched}`);

  // Reset zoom, then take the screenshot of the open flame graph.
  await frame.locator("#unzoom").click();
  await page.screenshot({ path: screenshot, fullPage: false });

  // Filter by name hides other rows; the service select exists.
  await page.fill("#q", spanId);
  assert.equal(await page.locator("#shown").textContent(), "1");
  await page.fill("#q", "");

  assert.deepEqual(errors, [], "console errors");
  assert.deepEqual(requests, [], "network requests");
  console.log(`opened ${label} (span ${spanId}): ${fn} present, zoom ok, search ${matched.trim()}; screenshot ${screenshot}`);
});
