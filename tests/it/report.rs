//! The span-profile report, from synthetic profiles directories: each span's
//! flame graph holds only that span's samples, traces group root spans, and
//! the page is self-contained.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use prost::Message;
use tracing_pyroscope::report::{write_report, ReportSummary};

// The test's own pprof messages, not the crate's: the profiles here are
// written independently of the encoder.
use crate::common::pprof;
use pprof as proto;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN_A: &str = "00f067aa0ba902b7";
const SPAN_B: &str = "b7ad6b7169203331";
const SPAN_ONLY_IN_SAMPLES: &str = "1111222233334444";

/// Builds pprof profiles the way the crate's encoder does: string table,
/// functions, locations (inlined frames as several lines, innermost first),
/// samples with `samples/count` + `cpu/nanoseconds` and string labels.
#[derive(Default)]
struct ProfileBuilder {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: HashMap<String, u64>,
    profile: proto::Profile,
}

impl ProfileBuilder {
    fn new() -> Self {
        let mut b = ProfileBuilder::default();
        b.s("");
        let samples = proto::ValueType {
            r#type: b.s("samples"),
            unit: b.s("count"),
        };
        let cpu = proto::ValueType {
            r#type: b.s("cpu"),
            unit: b.s("nanoseconds"),
        };
        b.profile.sample_type = vec![samples, cpu];
        b.profile.period_type = Some(cpu);
        b.profile.period = 10_000_000;
        b.profile.time_nanos = 1_700_000_000_000_000_000;
        b.profile.duration_nanos = 10_000_000_000;
        b
    }

    fn s(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), id);
        id
    }

    fn function(&mut self, name: &str) -> u64 {
        if let Some(&id) = self.functions.get(name) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        let name_id = self.s(name);
        self.profile.function.push(proto::Function {
            id,
            name: name_id,
            system_name: name_id,
            filename: 0,
        });
        self.functions.insert(name.to_string(), id);
        id
    }

    /// A location whose frames are given innermost (inlined) first.
    fn location(&mut self, frames: &[&str]) -> u64 {
        let id = self.profile.location.len() as u64 + 1;
        let line = frames
            .iter()
            .map(|f| proto::Line {
                function_id: self.function(f),
                line: 1,
            })
            .collect();
        self.profile.location.push(proto::Location {
            id,
            mapping_id: 0,
            address: 0x1000 + id,
            line,
        });
        id
    }

    /// `stack` is leaf first, one location per entry; `labels` are string labels.
    fn sample(&mut self, stack: &[&[&str]], count: i64, labels: &[(&str, &str)]) {
        let location_id = stack.iter().map(|frames| self.location(frames)).collect();
        let label = labels
            .iter()
            .map(|(k, v)| proto::Label {
                key: self.s(k),
                str: self.s(v),
                num: 0,
                num_unit: 0,
            })
            .collect();
        self.profile.sample.push(proto::Sample {
            location_id,
            value: vec![count, count * 10_000_000],
            label,
        });
    }

    fn write_gz(mut self, path: &Path) {
        self.profile.string_table = std::mem::take(&mut self.strings);
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&self.profile.encode_to_vec()).unwrap();
        std::fs::write(path, gz.finish().unwrap()).unwrap();
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tp-report-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn span_line(span_id: &str, name: &str, start_ms: u64, end_ms: u64, cpu_samples: u64) -> String {
    format!(
        r#"{{"span_id":"{span_id}","trace_id":"{TRACE}","parent_span_id":null,"name":"{name}","service":"ride-sharing-app","labels":{{"region":"eu-north"}},"start_unix_nanos":{},"end_unix_nanos":{},"cpu_samples":{cpu_samples},"pid":42}}"#,
        1_700_000_000_000_000_000u64 + start_ms * 1_000_000,
        1_700_000_000_000_000_000u64 + end_ms * 1_000_000,
    )
}

/// Two spans in one trace with distinct stacks, samples without a span, a
/// span known only from samples, a partial last line and a corrupt file.
fn synthetic_dir(name: &str) -> PathBuf {
    let dir = temp_dir(name);
    let mut b = ProfileBuilder::new();
    let span_a = [
        ("span_id", SPAN_A),
        ("span_name", "GET /car"),
        ("trace_id", TRACE),
    ];
    let span_b = [("span_id", SPAN_B), ("span_name", "OrderVehicle")];
    // Leaf first. The leaf location of span A has an inlined frame.
    b.sample(
        &[&["alpha_inlined", "alpha_work"], &["handle_car"], &["main"]],
        5,
        &span_a,
    );
    b.sample(&[&["alpha_other"], &["handle_car"], &["main"]], 2, &span_a);
    b.sample(&[&["beta_work"], &["order_vehicle"], &["main"]], 3, &span_b);
    b.sample(&[&["idle_loop"], &["main"]], 4, &[]);
    b.sample(
        &[&["gamma_work"], &["main"]],
        1,
        &[("span_id", SPAN_ONLY_IN_SAMPLES)],
    );
    b.write_gz(&dir.join("ride-sharing-app-1700000000000-42-0.pb.gz"));
    std::fs::write(
        dir.join("ride-sharing-app-1700000010000-42-1.pb.gz"),
        b"not gzip",
    )
    .unwrap();
    std::fs::write(
        dir.join(".ride-sharing-app-1700000020000-42-2.pb.gz.tmp"),
        b"partial",
    )
    .unwrap();

    let jsonl = format!(
        "{}\n{}\n{{\"span_id\":\"cafe",
        span_line(SPAN_B, "OrderVehicle", 0, 120, 3),
        span_line(SPAN_A, "GET /car", 10, 110, 7),
    );
    std::fs::write(dir.join("spans.jsonl"), jsonl).unwrap();
    dir
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// The `srcdoc` of the flame graph iframe carrying `data-{kind}="{key}"`
/// (a single-quoted attribute), with inferno's shared script put back in as
/// the page's script does when the graph is opened.
fn srcdoc(html: &str, kind: &str, key: &str) -> Option<String> {
    let marker = format!("data-{kind}=\"{key}\" data-srcdoc='");
    let start = html.find(&marker)? + marker.len();
    let len = html[start..].find('\'')?;
    let doc = unescape(&html[start..start + len]);
    assert_eq!(
        doc.matches("/*inferno.js*/").count(),
        1,
        "one script marker"
    );
    Some(doc.replace("/*inferno.js*/", &shared_script(html)))
}

/// inferno's script, held once in the page.
fn shared_script(html: &str) -> String {
    let open = "<script type=\"text/plain\" id=\"inferno-js\">";
    let start = html.find(open).expect("shared inferno script") + open.len();
    let len = html[start..].find("</script>").unwrap();
    html[start..start + len].to_string()
}

fn report(dir: &Path) -> (ReportSummary, String) {
    let out = dir.join("report.html");
    let summary = write_report(dir, &out).expect("report");
    assert_eq!(summary.path, out);
    let html = std::fs::read_to_string(&out).unwrap();
    (summary, html)
}

#[test]
fn each_span_flame_graph_holds_only_its_own_samples() {
    let dir = synthetic_dir("own");
    let (summary, html) = report(&dir);

    let a = srcdoc(&html, "span", SPAN_A).expect("span A has a flame graph");
    let b = srcdoc(&html, "span", SPAN_B).expect("span B has a flame graph");
    for f in ["alpha_work", "alpha_inlined", "alpha_other", "handle_car"] {
        assert!(a.contains(f), "span A's flame graph lacks {f}");
        assert!(!b.contains(f), "span B's flame graph has A's {f}");
    }
    for f in ["beta_work", "order_vehicle"] {
        assert!(b.contains(f), "span B's flame graph lacks {f}");
        assert!(!a.contains(f), "span A's flame graph has B's {f}");
    }
    for doc in [&a, &b] {
        assert!(!doc.contains("idle_loop") && !doc.contains("gamma_work"));
        assert!(
            doc.contains("<svg") && doc.contains("function init("),
            "interactive inferno SVG"
        );
    }
    // Sample counts: A has 7, B has 3 (inferno puts them in the frame titles).
    assert!(
        a.contains("handle_car (7 samples"),
        "{}",
        &a[a.find("handle_car").unwrap()..][..60]
    );
    assert!(b.contains("order_vehicle (3 samples"));

    // The service's aggregate graph has everything, including samples without a span.
    let all = srcdoc(&html, "service", "ride-sharing-app").expect("service flame graph");
    for f in ["alpha_work", "beta_work", "idle_loop", "gamma_work"] {
        assert!(all.contains(f), "aggregate lacks {f}");
    }

    assert_eq!(summary.files, 1);
    assert_eq!(
        summary.skipped_files, 1,
        "the corrupt file is skipped, the .tmp ignored"
    );
    assert_eq!(
        summary.skipped_span_lines, 1,
        "the partial last line is skipped"
    );
    assert_eq!(summary.samples, 15);
    assert_eq!(summary.samples_with_span, 11);
    assert_eq!(summary.spans, 3, "two recorded + one seen only in samples");
    assert_eq!(
        summary.traces, 2,
        "A and B share a trace; the sample-only span has none"
    );
    assert_eq!(summary.span_flame_graphs, 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn page_shows_trace_rows_details_and_files_and_is_self_contained() {
    let dir = synthetic_dir("page");
    let (_, html) = report(&dir);

    // One trace row holding both root spans, heaviest trace first.
    let row = html.find("<section class=\"trace\"").unwrap();
    let next = html[row + 1..]
        .find("<section class=\"trace\"")
        .map(|i| row + 1 + i)
        .unwrap();
    let first_row = &html[row..next];
    assert!(first_row.contains(&format!("data-span-id=\"{SPAN_A}\"")));
    assert!(first_row.contains(&format!("data-span-id=\"{SPAN_B}\"")));
    assert!(first_row.contains(TRACE));
    assert!(
        first_row.contains("data-cpu=\"100000000\""),
        "CPU = 10 samples × 10 ms"
    );
    assert!(
        first_row.contains("data-dur=\"120000000\""),
        "trace spans 0..120 ms"
    );
    assert!(first_row.contains("region <b>eu-north</b>"));
    assert!(
        first_row.contains("CPU 70.0 ms") && first_row.contains("100.0 ms"),
        "span A: 7 samples, 100 ms"
    );
    // OrderVehicle starts first, so it is the first bar in the waterfall.
    assert!(first_row.find(SPAN_B).unwrap() < first_row.find(SPAN_A).unwrap());
    assert!(first_row.contains("<b>OrderVehicle</b>"));

    // Flame graphs load lazily: no iframe has a srcdoc until toggled.
    assert!(html.contains("data-srcdoc=") && !html.contains(" srcdoc="));
    assert!(shared_script(&html).contains("function init("));
    assert!(html.contains("button class=\"toggle\""));

    // Files with pprof commands, skipped files listed.
    assert!(html.contains("pprof -http=: "));
    assert!(html.contains("ride-sharing-app-1700000000000-42-0.pb.gz"));
    assert!(html.contains("skipped <code>"));
    assert!(!html.contains(".pb.gz.tmp"));

    // Self-contained: no external scripts, styles, images or frames.
    for bad in [
        "src=\"http",
        "href=\"http",
        "src=\"//",
        "href=\"//",
        "@import",
        "url(http",
    ] {
        assert!(!html.contains(bad), "page references the network: {bad}");
    }
    assert!(html.contains("Content-Security-Policy"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `(title, y)` of each frame of a flame graph's SVG, in document order; the
/// title is as written in the SVG (escaped), e.g. `main (7 samples, 100.00%)`.
fn frames(doc: &str) -> Vec<(String, f64)> {
    let at = doc.find("<svg id=\"frames\"").expect("frames container");
    doc[at..]
        .split("<g><title>")
        .skip(1)
        .map(|g| {
            let title = &g[..g.find("</title>").expect("title end")];
            let y = g.split(" y=\"").nth(1).expect("rect y");
            let y = y[..y.find('"').unwrap()].parse().expect("numeric y");
            (title.to_string(), y)
        })
        .collect()
}

/// The `y` of the frame whose name (the title up to " (N samples") is `name`.
fn frame_y(frames: &[(String, f64)], name: &str) -> f64 {
    let prefix = format!("{name} (");
    let mut ys = frames.iter().filter(|(t, _)| t.starts_with(&prefix));
    let (_, y) = ys.next().unwrap_or_else(|| panic!("no frame {name}"));
    assert!(ys.next().is_none(), "one frame named {name}");
    *y
}

#[test]
fn flame_graphs_draw_the_root_on_top_and_keep_full_names_in_tooltips() {
    const LONG: &str =
        "ride_sharing_demo::dispatch::Dispatcher<alloc::vec::Vec<u8>>::route_to_the_nearest_region";
    let dir = temp_dir("icicle");
    let mut b = ProfileBuilder::new();
    let span = [("span_id", SPAN_A)];
    // Leaf first: main -> handle_car -> alpha_work -> alpha_inlined, and
    // main -> handle_car -> LONG.
    b.sample(
        &[&["alpha_inlined", "alpha_work"], &["handle_car"], &["main"]],
        5,
        &span,
    );
    b.sample(&[&[LONG], &["handle_car"], &["main"]], 2, &span);
    b.write_gz(&dir.join("svc-1700000000000-1-0.pb.gz"));
    let (_, html) = report(&dir);

    for (kind, key) in [("span", SPAN_A), ("service", "svc")] {
        let doc = srcdoc(&html, kind, key).expect("flame graph");
        let frames = frames(&doc);
        let root = frame_y(&frames, "all");
        // Icicle: the root is the topmost frame and each callee lies below
        // its caller (SVG y grows downwards).
        let min = frames.iter().map(|(_, y)| *y).fold(f64::INFINITY, f64::min);
        assert_eq!(root, min, "{kind}: the root is not on top");
        let chain = ["all", "main", "handle_car", "alpha_work", "alpha_inlined"];
        let ys: Vec<f64> = chain.iter().map(|f| frame_y(&frames, f)).collect();
        assert!(
            ys.windows(2).all(|w| w[0] < w[1]),
            "{kind}: {chain:?} at y {ys:?}, not root to leaf downwards"
        );
        let full = LONG.replace('<', "&lt;").replace('>', "&gt;");
        assert!(frame_y(&frames, "handle_car") < frame_y(&frames, &full));

        // The tooltip (the frame's <title>) holds the full name, generic
        // arguments and module path included, whatever the label shows.
        assert!(
            doc.contains(&format!("<title>{full} (2 samples, 28.57%)</title>")),
            "{kind}: no tooltip with the full name"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn markup_in_names_is_escaped() {
    let dir = temp_dir("escape");
    let mut b = ProfileBuilder::new();
    b.sample(
        &[&["<script>alert(1)</script>"], &["main"]],
        2,
        &[("span_id", SPAN_A)],
    );
    b.write_gz(&dir.join("svc-1700000000000-1-0.pb.gz"));
    let line = span_line(SPAN_A, "\\\"><img src=x onerror=alert(1)>", 0, 50, 2);
    std::fs::write(dir.join("spans.jsonl"), line + "\n").unwrap();
    let (summary, html) = report(&dir);
    assert_eq!(summary.spans, 1);
    assert!(!html.contains("<img src=x"));
    assert!(!html.contains("<script>alert"));
    let doc = srcdoc(&html, "span", SPAN_A).unwrap();
    assert!(
        !doc.contains("<script>alert(1)"),
        "the SVG escapes names too"
    );
    assert!(doc.contains("alert(1)"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn empty_or_missing_directories() {
    let dir = temp_dir("empty");
    let (summary, html) = report(&dir);
    assert_eq!(
        (
            summary.spans,
            summary.traces,
            summary.files,
            summary.samples
        ),
        (0, 0, 0, 0)
    );
    assert!(html.contains("No spans recorded."));
    let _ = std::fs::remove_dir_all(&dir);

    let missing = dir.join("does-not-exist");
    let err = write_report(&missing, &dir.join("r.html")).unwrap_err();
    assert_eq!(err.kind(), tracing_pyroscope::ErrorKind::Os);
    assert!(err.to_string().contains("does-not-exist"), "{err}");
}

/// A profile written by Go's own runtime profiler, with `span_id` and
/// `span_name` labels: the report reads what a mature profiler writes.
#[test]
fn reads_go_runtime_labeled_profile() {
    let reference = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/go-runtime-labeled-cpu.pb.gz"
    );
    let dir = temp_dir("go");
    std::fs::copy(reference, dir.join("go-app-1700000000000-1-0.pb.gz")).unwrap();
    let (summary, html) = report(&dir);
    assert_eq!(summary.files, 1);
    assert!(summary.samples_with_span > 0 && summary.samples_with_span < summary.samples);
    assert_eq!(summary.spans, 1);
    let doc = srcdoc(&html, "span", "0123456789abcdef").expect("span flame graph");
    assert!(doc.contains("main."), "Go function names");
    assert!(
        html.contains("GET /car"),
        "span name from the span_name label"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The span-labels section: one flame graph per value of each span-field
/// label, holding exactly the samples that carry that value.
#[test]
fn a_flame_graph_per_span_label_value() {
    let dir = temp_dir("labels");
    let mut b = ProfileBuilder::new();
    let car = [
        ("span_id", SPAN_A),
        ("span_name", "GET /car"),
        ("vehicle", "car"),
        ("zone", "north"),
    ];
    let bike = [("span_id", SPAN_B), ("vehicle", "bike"), ("zone", "north")];
    b.sample(&[&["find_nearest_vehicle"], &["main"]], 6, &car);
    b.sample(&[&["check_driver_availability"], &["main"]], 3, &car);
    b.sample(&[&["find_nearest_vehicle"], &["main"]], 2, &bike);
    b.sample(&[&["idle_loop"], &["main"]], 4, &[]);
    b.write_gz(&dir.join("ride-sharing-app-1700000000000-42-0.pb.gz"));
    let (_, html) = report(&dir);

    let car = srcdoc(&html, "label", "vehicle=car").expect("vehicle=car graph");
    let bike = srcdoc(&html, "label", "vehicle=bike").expect("vehicle=bike graph");
    let north = srcdoc(&html, "label", "zone=north").expect("zone=north graph");
    assert!(car.contains("find_nearest_vehicle (6 samples"), "car");
    assert!(car.contains("check_driver_availability"));
    assert!(bike.contains("find_nearest_vehicle (2 samples"), "bike");
    assert!(!bike.contains("check_driver_availability"));
    assert!(north.contains("main (11 samples"), "both vehicles' samples");
    for doc in [&car, &bike, &north] {
        assert!(!doc.contains("idle_loop"), "samples without the label");
    }
    // Only span-field labels get a view; the heaviest value comes first.
    assert!(srcdoc(&html, "label", &format!("span_id={SPAN_A}")).is_none());
    assert!(html.find("vehicle=car").unwrap() < html.find("vehicle=bike").unwrap());
    assert!(!html.contains("No span labels"));

    let plain = synthetic_dir("no-labels");
    let (_, without) = report(&plain);
    assert!(
        without.contains("No span labels"),
        "a hint when none are set"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&plain);
}
