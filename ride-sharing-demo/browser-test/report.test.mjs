// Opens the span-profile report in headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core) and checks it as a person would:
// - the page loads with no console errors and no page errors;
// - one server span's "profile" toggle reveals its flame graph in place;
// - the flame graph is visible and contains the expected function;
// - it is drawn root on top (icicle), as Grafana draws it;
// - frames read like the code: every frame on the path from the root to the
//   expected function has its module path (the demo builds with
//   `debug = "limited"`; only objects without symbols and the compiler's
//   own symbols have none), among them tokio's `Harness::poll`;
// - frame names have no generic arguments but keep their types (the pprof
//   files name them so); frame labels are shortened for display (module
//   path dropped when narrow) and fit their frames, while the frames' titles
//   and the details line keep the whole names;
// - clicking a frame zooms (labels are redone), and inferno's search finds
//   and highlights it;
// - the per-label view: the span label `LABEL`'s flame graph (default
//   vehicle=car) opens in place and holds the expected functions, another
//   value's graph lacks `LABEL_ONLY_FUNCTION` (default
//   check_driver_availability, which only cars run);
// - screenshots of the page and of the flame graph are saved.
//
// Environment: REPORT (required, the report.html), SCREENSHOT (default
// REPORT's dir/report-screenshot.png), FLAME_SCREENSHOT (default REPORT's
// dir/report-flame-graph.png), CHROMIUM (default /usr/bin/chromium),
// EXPECT_FUNCTION (default find_nearest_vehicle), EXPECT_PATH (a qualified
// name, or part of one, expected on the path to it, default
// tokio::runtime::task::harness::Harness), SPAN_NAME (a regexp for the span
// to open, default "^GET /car$"), LABEL (default vehicle=car),
// LABEL_ONLY_FUNCTION (default check_driver_availability).

import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { chromium } from "playwright-core";

const report = process.env.REPORT;
const fn = process.env.EXPECT_FUNCTION || "find_nearest_vehicle";
const expectPath = process.env.EXPECT_PATH || "tokio::runtime::task::harness::Harness";
const spanName = new RegExp(process.env.SPAN_NAME || "^GET /car$");
const labelValue = process.env.LABEL || "vehicle=car";
const labelOnlyFn = process.env.LABEL_ONLY_FUNCTION || "check_driver_availability";
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const screenshot =
  process.env.SCREENSHOT ||
  (report ? path.join(path.dirname(report), "report-screenshot.png") : "report-screenshot.png");
const flameScreenshot =
  process.env.FLAME_SCREENSHOT ||
  (report ? path.join(path.dirname(report), "report-flame-graph.png") : "report-flame-graph.png");

// Runs in the flame graph's document: checks every shown frame's label
// against its full name (from the frame's <title>).
function checkLabels() {
  const out = { frames: 0, titlesWithGenerics: 0, shortened: 0, generic: [], bad: [], overflow: [] };
  const framesWidth = parseFloat(document.getElementById("frames").getAttribute("width"));
  for (const g of document.querySelectorAll("#frames > g")) {
    if (g.classList.contains("hide")) continue;
    out.frames++;
    const full = g.querySelector("title").textContent.replace(/\([^(]*\)$/, "").trim();
    const text = g.querySelector("text");
    // inferno leaves a trailing space on labels it does not cut.
    const label = text.textContent.trim();
    if (/[A-Za-z0-9_}\]]</.test(full)) out.titlesWithGenerics++;
    if (label === "") continue;
    if (label !== full) out.shortened++;
    if (/[A-Za-z0-9_}\]]</.test(label)) out.generic.push(label);
    const names = fg_short_names(full);
    const last = names[names.length - 1];
    if (!(names.includes(label) || (label.endsWith("..") && last.startsWith(label.slice(0, -2))))) {
      out.bad.push([full, label]);
    }
    const room = (parseFloat(g.querySelector("rect").getAttribute("width")) * framesWidth) / 100 - 3;
    if (text.getComputedTextLength() > room + 0.5) out.overflow.push([label, text.getComputedTextLength(), room]);
  }
  return out;
}

function assertLabels(labels, when) {
  assert.ok(labels.frames > 0, `${when}: no frames shown`);
  assert.deepEqual(labels.generic, [], `${when}: labels with generic arguments`);
  assert.deepEqual(labels.bad, [], `${when}: labels that are not a shortening of the frame's name`);
  assert.deepEqual(labels.overflow, [], `${when}: labels wider than their frames`);
}

async function launch(t) {
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
  return context;
}

test("report: open, zoom and search a span's flame graph", async (t) => {
  const context = await launch(t);
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

  const iframe = span.locator('iframe.fg[data-view="cpu"]');
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

  // Root on top: the "all" frame is the topmost, the function lies below it.
  const geometry = await frame.evaluate((fn) => {
    const ys = [];
    let root = null;
    let target = null;
    for (const g of document.querySelectorAll("#frames > g")) {
      const title = g.querySelector("title").textContent;
      const y = parseFloat(g.querySelector("rect").getAttribute("y"));
      ys.push(y);
      if (title.startsWith("all (")) root = y;
      if (target === null && title.includes(fn)) target = y;
    }
    return { min: Math.min(...ys), root, target };
  }, fn);
  assert.equal(geometry.root, geometry.min, `the root frame is not on top: ${JSON.stringify(geometry)}`);
  assert.ok(geometry.target > geometry.root, `${fn} is not below the root: ${JSON.stringify(geometry)}`);

  // The hot path: the frames above the expected function (its callers, root
  // on top) by their full names. Each has its path (`::` outside generic
  // arguments), or is an object without symbols named by offset.
  const hotPath = await frame.evaluate((fn) => {
    const frames = Array.from(document.querySelectorAll("#frames > g")).map((g) => {
      const r = g.querySelector("rect");
      return {
        name: g.querySelector("title").textContent.replace(/ \([^(]*\)$/, ""),
        x: parseFloat(r.getAttribute("x")),
        w: parseFloat(r.getAttribute("width")),
        y: parseFloat(r.getAttribute("y")),
      };
    });
    const target = frames.find((f) => f.name.includes(fn));
    return frames
      .filter((f) => f.y < target.y && f.x <= target.x + 1e-6 && f.x + f.w >= target.x + target.w - 1e-6)
      .sort((a, b) => a.y - b.y)
      .map((f) => f.name);
  }, fn);
  const qualified = (name) => {
    let depth = 0;
    for (let i = 0; i < name.length; i++) {
      const c = name[i];
      if (c === "<") depth++;
      else if (c === ">" && name[i - 1] !== "-") depth = Math.max(0, depth - 1);
      else if (c === ":" && name[i - 1] === ":" && depth === 0) return true;
    }
    return false;
  };
  assert.equal(hotPath[0], "all", `the path to ${fn} starts at the root: ${hotPath}`);
  assert.ok(hotPath.length >= 10, `a short path to ${fn}: ${hotPath}`);
  // Names that cannot have a path: objects without symbols (`libc.so.6+0x…`)
  // and the compiler's own symbols (`__rust_try`).
  const pathless = hotPath.slice(1).filter((n) => !qualified(n) && !/\+0x[0-9a-f]+$/.test(n) && !/^__\w+$/.test(n));
  assert.deepEqual(pathless, [], `frames without a path above ${fn}`);
  const expected = hotPath.find((n) => n.includes(expectPath));
  assert.ok(expected, `no ${expectPath} above ${fn}: ${hotPath.join(" / ")}`);

  // The label shortening itself, on names of known shapes.
  const shortNames = await frame.evaluate(() =>
    [
      "tokio::runtime::task::harness::Harness<T,S>::poll",
      "<alloc::boxed::Box<dyn core::ops::function::FnOnce<(), Output = ()> + core::marker::Send> as core::ops::function::FnOnce<()>>::call_once",
      "call_once<std::thread::lifecycle::spawn_unchecked::{closure_env#1}<F, ()>, ()>",
      "core::ops::Box<dyn Fn(u8) -> u8>::call",
      "github.com/grafana/pyroscope-go.(*Profiler).Start",
      "operator<",
      "all",
    ].map(fg_short_names),
  );
  assert.deepEqual(shortNames, [
    [
      "tokio::runtime::task::harness::Harness::poll",
      "runtime::task::harness::Harness::poll",
      "task::harness::Harness::poll",
      "harness::Harness::poll",
      "Harness::poll",
      "poll",
    ],
    ["<alloc::boxed::Box as core::ops::function::FnOnce>::call_once", "<Box as FnOnce>::call_once", "call_once"],
    ["call_once"],
    ["core::ops::Box::call", "ops::Box::call", "Box::call", "call"],
    [
      "github.com/grafana/pyroscope-go.(*Profiler).Start",
      "grafana/pyroscope-go.(*Profiler).Start",
      "pyroscope-go.(*Profiler).Start",
    ],
    ["operator<"],
    ["all"],
  ]);

  // Labels, once inferno has fitted them to the page's width (its timer,
  // queued before this one).
  await frame.evaluate(() => new Promise((resolve) => setTimeout(resolve, 0)));
  const labels = await frame.evaluate(checkLabels);
  assertLabels(labels, "after loading");
  // The pprof files name functions without generic arguments, types kept
  // (`<alloc::boxed::Box as core::ops::function::FnOnce>::call_once`).
  assert.equal(labels.titlesWithGenerics, 0, "frame names with generic arguments");
  assert.ok(labels.shortened > 0, "no label is shortened");
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
  assertLabels(await frame.evaluate(checkLabels), "after zooming");

  // The details line (inferno's tooltip) shows the frame's full name.
  const fullTitle = await target.locator("title").textContent();
  await target.hover();
  const details = await frame.locator("#details").textContent();
  assert.ok(details.includes(fullTitle), `details line "${details}" lacks the full name "${fullTitle}"`);

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
  assertLabels(await frame.evaluate(checkLabels), "after unzooming");
  await page.screenshot({ path: screenshot, fullPage: false });
  await iframe.screenshot({ path: flameScreenshot });

  // The per-label view: open LABEL's flame graph, then another value's.
  const labelKey = labelValue.split("=")[0];
  const views = page.locator(`#labels .label-value[data-label^="${labelKey}="]`);
  assert.ok((await views.count()) >= 2, `the span-label view has fewer than two values of ${labelKey}`);
  const labelText = async (view) => {
    const toggle = view.locator("button.toggle");
    const lframe = view.locator('iframe.fg[data-view="cpu"]');
    assert.equal(await lframe.isVisible(), false, "a label's flame graph starts hidden");
    await toggle.click();
    await lframe.waitFor({ state: "visible" });
    const doc = await (await lframe.elementHandle()).contentFrame();
    await doc.waitForFunction(() => typeof details !== "undefined" && details !== undefined);
    return doc.locator("#frames").textContent();
  };
  const chosen = page.locator(`#labels .label-value[data-label="${labelValue}"]`);
  assert.equal(await chosen.count(), 1, `no span-label view ${labelValue}`);
  await chosen.scrollIntoViewIfNeeded();
  const chosenText = await labelText(chosen);
  assert.ok(chosenText.includes(fn), `${labelValue}: flame graph lacks ${fn}`);
  assert.ok(chosenText.includes(labelOnlyFn), `${labelValue}: flame graph lacks ${labelOnlyFn}`);
  let other = null;
  for (let i = 0; i < (await views.count()) && other === null; i++) {
    if ((await views.nth(i).getAttribute("data-label")) !== labelValue) other = views.nth(i);
  }
  const otherLabel = await other.getAttribute("data-label");
  const otherText = await labelText(other);
  assert.ok(otherText.includes(fn), `${otherLabel}: flame graph lacks ${fn}`);
  assert.ok(!otherText.includes(labelOnlyFn), `${otherLabel}: flame graph shows ${labelOnlyFn}`);
  await chosen.screenshot({ path: screenshot.replace(/\.png$/, "-label.png") });

  // Filter by name hides other rows; the service select exists.
  await page.fill("#q", spanId);
  assert.equal(await page.locator("#shown").textContent(), "1");
  await page.fill("#q", "");

  assert.deepEqual(errors, [], "console errors");
  assert.deepEqual(requests, [], "network requests");
  console.log(`opened ${label} (span ${spanId}): ${fn} present under ${hotPath.length} qualified frames (${expected}), zoom ok, search ${matched.trim()}; opened ${labelValue} (${labelOnlyFn} present) and ${otherLabel} (absent); screenshots ${screenshot} ${flameScreenshot}`);
});

// The wall view: WALL_SPAN (a regexp, default "^GET /car$") in WALL_REGION
// (default eu-north), the heaviest such span with wall samples:
// - its breakdown bar's CPU + blocked + awaiting is its duration within 5%,
//   or two sample periods for a span shorter than 40 (as sampled, and as
//   drawn, which is never longer than the span); the median of that sum
//   over all spans of 10 periods or more is within 5% of their durations;
//   no span's CPU is drawn longer than it;
// - its profile-type switch opens the wall flame graph in place (the CPU
//   graph hidden), which holds WALL_BLOCKED_FUNCTION (default mutex_lock),
//   blocked time in the lock (a WALL_BLOCKED_FRAME, default
//   lock_contended) and `[awaiting]` directly under span frames, one of
//   them the await site's span WALL_AWAIT_SITE (default dispatch);
// - the services section offers the wall graph too;
// - a screenshot goes to WALL_SCREENSHOT (default REPORT's dir/report-wall.png).
test("report: a span's wall flame graph and its CPU/blocked/awaiting breakdown", async (t) => {
  const wallSpan = new RegExp(process.env.WALL_SPAN || "^GET /car$");
  const wallRegion = process.env.WALL_REGION || "eu-north";
  const blockedFn = process.env.WALL_BLOCKED_FUNCTION || "mutex_lock";
  const awaitSite = process.env.WALL_AWAIT_SITE || "dispatch";
  const blockedLeaf = process.env.WALL_BLOCKED_FRAME || "lock_contended";
  const wallScreenshot =
    process.env.WALL_SCREENSHOT || path.join(path.dirname(report || "."), "report-wall.png");
  const context = await launch(t);
  const page = context.pages()[0] || (await context.newPage());
  const errors = [];
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(`console: ${m.text()}`);
  });
  page.on("pageerror", (e) => errors.push(`pageerror: ${e.message}`));
  await page.goto(pathToFileURL(path.resolve(report)).href, { waitUntil: "load" });
  await page.locator("#traces").waitFor();

  // No span's CPU is drawn longer than the span, and no bar overflows.
  const overdrawn = await page.evaluate(() =>
    Array.from(document.querySelectorAll(".breakdown"))
      .map((b) => ({
        dur: Number(b.dataset.dur),
        sum: Number(b.dataset.cpu) + Number(b.dataset.blocked) + Number(b.dataset.awaiting),
        cpu: Number(b.dataset.cpu),
      }))
      .filter((b) => b.cpu > b.dur || b.sum > b.dur),
  );
  assert.deepEqual(overdrawn, [], "breakdown bars longer than their spans");

  const candidates = page.locator(".span").filter({ has: page.locator('button.view[data-view="wall"]') });
  const n = await candidates.count();
  assert.ok(n > 0, "no span has a wall flame graph (is PYROSCOPE_PROFILING_WALLTIME_ENABLED on?)");
  // The first such span (heaviest first) that blocked in the lock, if any.
  let span = null;
  let blockedInLock = false;
  for (let i = 0; i < n && !blockedInLock; i++) {
    const s = candidates.nth(i);
    const name = (await s.locator(".label").getAttribute("title")) || "";
    const where = (await s.locator(".label .dim").textContent()) || "";
    if (!wallSpan.test(name) || !where.includes(`region ${wallRegion}`)) continue;
    const doc = (await s.locator('iframe.fg[data-view="wall"]').getAttribute("data-srcdoc")) || "";
    blockedInLock = doc.includes(blockedLeaf);
    if (span === null || blockedInLock) span = s;
  }
  assert.ok(span, `no span named like ${wallSpan} in ${wallRegion} has a wall flame graph`);
  const spanId = await span.getAttribute("data-span-id");

  // The breakdown: numbers, then as drawn.
  const bar = span.locator(".breakdown");
  const parts = await bar.evaluate((b) => {
    const width = b.getBoundingClientRect().width;
    const drawn = {};
    for (const s of b.querySelectorAll(".seg")) {
      drawn[s.classList[1]] = s.getBoundingClientRect().width / width;
    }
    return {
      dur: Number(b.dataset.dur),
      cpu: Number(b.dataset.cpu),
      blocked: Number(b.dataset.blocked),
      awaiting: Number(b.dataset.awaiting),
      measured: Number(b.dataset.measured),
      cpuSamples: Number(b.dataset.cpuSamples),
      cpuSampled: Number(b.dataset.cpuSampled),
      drawn,
      title: b.getAttribute("title"),
    };
  });
  const sum = parts.cpu + parts.blocked + parts.awaiting;
  const ratio = sum / parts.dur;
  assert.ok(parts.dur > 0, `span ${spanId}: no duration`);
  // A span's sum is as exact as its sampling: its CPU is a whole number of
  // sample periods (one more or one fewer than it ran), and the manager's
  // first check of a thread in it starts the clock (up to a period late).
  // So: within 5%, or within two periods for a span shorter than 40.
  const period = parts.cpuSamples > 0 ? parts.cpuSampled / parts.cpuSamples : 0;
  const tolerance = Math.max(0.05, (2 * period) / parts.dur);
  assert.ok(
    Math.abs(ratio - 1) <= tolerance,
    `span ${spanId}: CPU + blocked + awaiting = ${sum} ns is ${(ratio * 100).toFixed(1)}% of its ${parts.dur} ns, ` +
      `beyond ${(tolerance * 100).toFixed(1)}% (${parts.title})`,
  );
  // And no bias: over every span with wall samples at least 10 periods
  // long, the median sum is within 5% of the duration.
  const ratios = await page.evaluate((minDur) =>
    Array.from(document.querySelectorAll('.breakdown[data-wall="true"]'))
      .filter((b) => Number(b.dataset.dur) >= minDur)
      .map((b) => (Number(b.dataset.cpu) + Number(b.dataset.blocked) + Number(b.dataset.awaiting)) / Number(b.dataset.dur))
      .sort((a, b) => a - b),
    10 * (period || 10e6),
  );
  assert.ok(ratios.length >= 5, `only ${ratios.length} spans with wall samples are 10 periods long`);
  const median = ratios[Math.floor(ratios.length / 2)];
  t.diagnostic(
    `wall: span ${spanId} sums to ${(ratio * 100).toFixed(1)}% of its duration; median over ${ratios.length} spans ${(median * 100).toFixed(1)}%`,
  );
  assert.ok(Math.abs(median - 1) <= 0.05, `median CPU + blocked + awaiting over ${ratios.length} spans is ${(median * 100).toFixed(1)}% of their durations`);
  // Drawn parts never exceed the span; as sampled they may not overcount it
  // by more than 5% either.
  assert.ok(parts.measured <= 1.05 * parts.dur, `span ${spanId}: sampled CPU + blocked + awaiting = ${parts.measured} ns is ${((parts.measured / parts.dur) * 100).toFixed(1)}% of its ${parts.dur} ns`);
  const drawnSum = (parts.drawn.cpu || 0) + (parts.drawn.blocked || 0) + (parts.drawn.awaiting || 0);
  assert.ok(Math.abs(drawnSum - ratio) <= 0.01, `drawn ${drawnSum} vs ${ratio}`);
  assert.ok(parts.blocked > 0, `span ${spanId}: no blocked time (${parts.title})`);
  assert.ok(parts.awaiting > 0, `span ${spanId}: no awaiting time (${parts.title})`);

  // The switch: open the panel (CPU first), then the wall graph.
  await span.locator("button.toggle").click();
  const wallButton = span.locator('button.view[data-view="wall"]');
  await wallButton.click();
  assert.equal(await wallButton.getAttribute("aria-pressed"), "true");
  const wallFrame = span.locator('iframe.fg[data-view="wall"]');
  await wallFrame.waitFor({ state: "visible" });
  assert.equal(await span.locator('.fg[data-view="cpu"]').isVisible(), false, "the CPU graph is hidden");
  const frame = await (await wallFrame.elementHandle()).contentFrame();
  await frame.waitForFunction(() => typeof details !== "undefined" && details !== undefined);
  const frames = await frame.evaluate(() =>
    Array.from(document.querySelectorAll("#frames > g")).map((g) => {
      const r = g.querySelector("rect");
      return {
        name: g.querySelector("title").textContent.replace(/ \([^(]*\)$/, ""),
        x: parseFloat(r.getAttribute("x")),
        w: parseFloat(r.getAttribute("width")),
        y: parseFloat(r.getAttribute("y")),
      };
    }),
  );
  // Blocked in the lock: the wall graph has WALL_BLOCKED_FUNCTION (default
  // mutex_lock) and a WALL_BLOCKED_FRAME (default lock_contended: the only
  // std Mutex the request contends on is the region lock).
  assert.ok(frames.some((f) => f.name.includes(blockedFn)), `wall graph of ${spanId} lacks ${blockedFn}`);
  assert.ok(
    frames.some((f) => f.name.includes(blockedLeaf)),
    `no ${wallSpan} span in ${wallRegion} shows blocked time in the lock (${blockedLeaf}): ${spanId}`,
  );
  const awaiting = frames.filter((f) => f.name === "[awaiting]");
  assert.ok(awaiting.length > 0, `wall graph of ${spanId} lacks [awaiting]`);
  // Icicle: a frame's caller is the frame just above it, covering it. Each
  // `[awaiting]` sits under a span frame (`name (file.rs:line)`): the await
  // site, or the span itself for an uninstrumented await (the blocking
  // task's join handle); the dispatch step is one of them.
  const callerOf = (a) =>
    frames
      .filter((f) => f.y < a.y && f.x <= a.x + 1e-6 && f.x + f.w >= a.x + a.w - 1e-6)
      .sort((p, q) => q.y - p.y)[0];
  const sites = awaiting.map((a) => (callerOf(a) || { name: "" }).name);
  assert.deepEqual(sites.filter((n) => !/\(.*\.rs:\d+\)$/.test(n)), [], `[awaiting] under a frame that is no span: ${sites}`);
  assert.ok(sites.some((n) => n.includes(awaitSite)), `no [awaiting] under ${awaitSite}: ${sites}`);
  await span.scrollIntoViewIfNeeded();
  await page.waitForTimeout(300);
  await span.screenshot({ path: wallScreenshot });

  // The services section has the switch too.
  assert.ok((await page.locator('#services button.view[data-view="wall"]').count()) > 0, "no service wall graph");
  assert.deepEqual(errors, [], "console errors");
  console.log(`span ${spanId}: CPU ${parts.cpu} + blocked ${parts.blocked} + awaiting ${parts.awaiting} = ${(ratio * 100).toFixed(1)}% of ${parts.dur} ns drawn, ${((parts.measured / parts.dur) * 100).toFixed(1)}% as sampled; wall graph holds ${blockedFn} and [awaiting] under ${awaitSite}; screenshot ${wallScreenshot}`);
});

// The switch's memory views, when the report has memory profiles (the demo
// with allocation profiling on): a span's "allocations" and "in-use"
// buttons each show their own graph and hide the others.
test("report: a span's allocation and in-use flame graphs", async (t) => {
  const context = await launch(t);
  const page = context.pages()[0] || (await context.newPage());
  await page.goto(pathToFileURL(path.resolve(report)).href, { waitUntil: "load" });
  const spans = page.locator(".span").filter({ has: page.locator('button.view[data-view="alloc"]') });
  if ((await spans.count()) === 0) {
    t.skip("no memory profiles in this report");
    return;
  }
  const span = spans.first();
  await span.locator("button.toggle").click();
  for (const view of ["alloc", "inuse"]) {
    const button = span.locator(`button.view[data-view="${view}"]`);
    if ((await button.count()) === 0) continue;
    await button.click();
    const frame = span.locator(`iframe.fg[data-view="${view}"]`);
    await frame.waitFor({ state: "visible" });
    assert.equal(await span.locator(".fg:not([hidden])").count(), 1, `${view}: one graph shown`);
    const doc = await (await frame.elementHandle()).contentFrame();
    await doc.waitForFunction(() => typeof details !== "undefined" && details !== undefined);
    const subtitle = await doc.locator("#frames").evaluate((g) => g.ownerDocument.querySelector("text").textContent);
    assert.ok((await doc.locator("#frames > g").count()) > 1, `${view}: no frames`);
    console.log(`${view}: ${subtitle}`);
  }
});
