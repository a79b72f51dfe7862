//! Runs the demo as a user would (`ride-sharing-demo --duration 8s --out
//! DIR`, nothing else configured) and checks what its report shows:
//! - the heaviest spans' flame graphs contain `find_nearest_vehicle`;
//! - `/car` spans contain `check_driver_availability`;
//! - each span's flame graph holds only its own samples: no `/bike` or
//!   `/scooter` span shows the car-only function, no span outside eu-north
//!   shows eu-north's `mutex_lock`, no client span shows server work;
//! - `GET /car` in eu-north explains itself: for at least half of those
//!   spans the breakdown bar (CPU + blocked + awaiting) is the duration
//!   within 5% and the wall graph has `[awaiting]` under `dispatch`; at
//!   least one has blocked time in `mutex_lock` (`lock_contended`);
//! - client and server root spans share trace ids (and a recorded remote
//!   parent of a server span is the client span);
//! - the per-vehicle view (span label `vehicle`, from the request span's
//!   field): `find_nearest_vehicle` under every vehicle,
//!   `check_driver_availability` under `car` only; `region` stays a static
//!   label, not a span label;
//! - frames read like the code: no frame on a `GET /car` span's hot path
//!   is a bare name without its path (`{closure#0}`, `poll`, `run`), which
//!   is what the workspace's `debug = "limited"` gives (README, "Symbols");
//! - frame names stay readable in Google's pprof tool, the reference reader
//!   (Pyroscope and Grafana show the same `name` field): none starts with
//!   `::`, contains `::::` or ends with `::`, as they did when the pprof
//!   files held one full name that readers cut every `<...>` out of
//!   (`::call_once`, `core::iter::range::::next`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const FIND: &str = "work::find_nearest_vehicle";
const DRIVER: &str = "work::check_driver_availability";
const MUTEX: &str = "work::mutex_lock";

/// One root span as the report shows it.
#[derive(Debug)]
struct ReportSpan {
    id: String,
    name: String,
    region: Option<String>,
    samples: u64,
    /// The CPU flame graph document, if the span has one.
    graph: Option<String>,
    /// The wall flame graph document, if the span has one.
    wall: Option<String>,
    /// The breakdown bar: (duration, CPU, blocked, awaiting, as sampled),
    /// nanoseconds.
    breakdown: Option<(u64, u64, u64, u64, u64)>,
}

fn attr<'a>(s: &'a str, name: &str, quote: char) -> Option<&'a str> {
    let marker = format!("{name}={quote}");
    let start = s.find(&marker)? + marker.len();
    let len = s[start..].find(quote)?;
    Some(&s[start..start + len])
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

fn parse_report(html: &str) -> Vec<ReportSpan> {
    let mut spans = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find("<div class=\"span\" ") {
        rest = &rest[at + 1..];
        let end = rest.find("<div class=\"span\" ").unwrap_or(rest.len());
        let block = &rest[..end];
        let region = block
            .find("region <b>")
            .map(|i| &block[i + "region <b>".len()..])
            .and_then(|r| r.split("</b>").next())
            .map(str::to_string);
        spans.push(ReportSpan {
            id: attr(block, "data-span-id", '"').unwrap().to_string(),
            name: unescape(attr(block, "title", '"').unwrap()),
            region,
            samples: attr(block, "data-samples", '"').unwrap().parse().unwrap(),
            graph: view_graph(block, "cpu"),
            wall: view_graph(block, "wall"),
            breakdown: block.find("<div class=\"breakdown\"").map(|at| {
                let bar = &block[at..];
                let n = |name: &str| attr(bar, name, '"').unwrap().parse::<u64>().unwrap();
                (
                    n("data-dur"),
                    n("data-cpu"),
                    n("data-blocked"),
                    n("data-awaiting"),
                    n("data-measured"),
                )
            }),
        });
    }
    spans
}

/// The flame graph of one profile type (`data-view`) in a span's block.
fn view_graph(block: &str, view: &str) -> Option<String> {
    let at = block.find(&format!("<iframe class=\"fg\" data-view=\"{view}\""))?;
    attr(&block[at..], "data-srcdoc", '\'').map(unescape)
}

/// The flame graph of the report's span-label view `key=value`.
fn label_graph(html: &str, label: &str) -> Option<String> {
    let marker = format!("data-label=\"{label}\" data-srcdoc='");
    let start = html.find(&marker)? + marker.len();
    let len = html[start..].find('\'')?;
    Some(unescape(&html[start..start + len]))
}

/// The frames of a flame graph: (full name, samples), from the frames'
/// `<title>`s (`NAME (N samples, P%)`).
fn graph_frames(graph: &str) -> Vec<(String, u64)> {
    let mut frames = Vec::new();
    for chunk in graph.split("<title>").skip(1) {
        let Some(title) = chunk.split("</title>").next() else {
            continue;
        };
        let title = unescape(title);
        let Some((name, rest)) = title.rsplit_once(" (") else {
            continue;
        };
        let samples = rest
            .split(' ')
            .next()
            .and_then(|n| n.replace(',', "").parse().ok())
            .unwrap_or(0);
        frames.push((name.to_string(), samples));
    }
    frames
}

/// A name with a path: `::` outside generic arguments.
fn is_qualified(name: &str) -> bool {
    let mut depth = 0usize;
    let mut prev = ' ';
    for c in name.chars() {
        match c {
            '<' => depth += 1,
            '>' if prev != '-' => depth = depth.saturating_sub(1),
            ':' if prev == ':' && depth == 0 => return true,
            _ => {}
        }
        prev = c;
    }
    false
}

/// A name that cannot have a path: an object without symbols
/// (`libc.so.6+0x891f4`), or a symbol the compiler or C runtime made
/// (`__rust_try`, which a debug build does not inline).
fn is_pathless_symbol(name: &str) -> bool {
    let offset = name
        .rsplit_once("+0x")
        .is_some_and(|(_, hex)| !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()));
    let internal =
        name.starts_with("__") && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    offset || internal
}

fn run_demo(out: &Path) -> (String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ride-sharing-demo"))
        .args(["--duration", "8s", "--out"])
        .arg(out)
        // As on a fresh machine: nothing configured.
        .env_remove("PYROSCOPE_SERVER_ADDRESS")
        .env_remove("PYROSCOPE_PROFILES_DIR")
        .env_remove("PYROSCOPE_PROFILING_ENABLED")
        .env_remove("PYROSCOPE_LABELS")
        .env_remove("PYROSCOPE_SPAN_LABELS")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_SERVICE_NAME")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(
        output.status.success(),
        "demo failed: {}\n{stderr}",
        output.status
    );
    (stdout, stderr)
}

#[test]
fn demo_report_shows_each_span_with_its_own_profile() {
    let out: PathBuf =
        std::env::temp_dir().join(format!("ride-sharing-demo-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let started = std::time::Instant::now();
    let (stdout, stderr) = run_demo(&out);
    let elapsed = started.elapsed();
    eprintln!("{stderr}");

    // It finishes by itself and prints the report's path.
    let report = out.join("report.html");
    let printed = stdout.lines().last().expect("report path on stdout");
    assert_eq!(Path::new(printed), report.canonicalize().unwrap());
    // A hang guard, not a timing check: the 8 s demo ends by itself (an
    // unoptimized build on a loaded machine takes about 40 s).
    assert!(elapsed.as_secs() < 300, "the demo did not end: {elapsed:?}");
    assert!(
        stderr.contains("orders")
            && stderr.contains("profiled spans")
            && stderr.contains("samples")
    );

    // The span index: client spans and server spans share traces.
    let jsonl = std::fs::read_to_string(out.join("spans.jsonl")).unwrap();
    let records: Vec<serde_like::Record> = jsonl.lines().filter_map(serde_like::parse).collect();
    let clients: HashMap<&str, &serde_like::Record> = records
        .iter()
        .filter(|r| r.name == "OrderVehicle")
        .map(|r| (r.trace_id.as_str(), r))
        .collect();
    let servers: Vec<&serde_like::Record> = records
        .iter()
        .filter(|r| r.name.starts_with("GET /"))
        .collect();
    assert!(
        clients.len() >= 30 && servers.len() >= 30,
        "{} client, {} server spans",
        clients.len(),
        servers.len()
    );
    let mut same_trace = 0;
    let mut parent_is_client = 0;
    for s in &servers {
        assert_eq!(s.service, "ride-sharing-app");
        assert!(
            ["us-east", "eu-north", "ap-south"].contains(&s.region.as_str()),
            "{s:?}"
        );
        if let Some(client) = clients.get(s.trace_id.as_str()) {
            same_trace += 1;
            assert_eq!(client.service, "load-generator");
            if s.parent_span_id == client.span_id {
                parent_is_client += 1;
            }
        }
    }
    assert!(
        same_trace * 10 >= servers.len() * 9,
        "{same_trace} of {} server spans share a client's trace",
        servers.len()
    );
    // The remote parent is recorded where the layer can see it; when it is,
    // it must be the client span.
    let with_parent = servers
        .iter()
        .filter(|s| !s.parent_span_id.is_empty())
        .count();
    assert_eq!(
        parent_is_client, with_parent,
        "{with_parent} server spans record a remote parent, {parent_is_client} of them the client span"
    );
    if with_parent == 0 {
        eprintln!("note: spans.jsonl records no remote parent ids");
    }

    // The report.
    let html = std::fs::read_to_string(&report).unwrap();
    let mut spans = parse_report(&html);
    assert!(spans.len() >= 60, "{} spans in the report", spans.len());
    spans.sort_by_key(|s| std::cmp::Reverse(s.samples));
    let with_graph: Vec<&ReportSpan> = spans.iter().filter(|s| s.graph.is_some()).collect();
    assert!(
        with_graph.len() >= 30,
        "{} spans have flame graphs",
        with_graph.len()
    );

    // The heaviest spans show find_nearest_vehicle.
    for s in spans.iter().take(5) {
        let graph = s
            .graph
            .as_deref()
            .unwrap_or_else(|| panic!("heavy span {s:?} has no flame graph"));
        assert!(
            graph.contains(FIND),
            "heaviest span {} {} lacks {FIND}",
            s.name,
            s.id
        );
        assert!(s.samples >= 3, "heaviest spans have several samples: {s:?}");
    }

    // Frames read like the code: on the hot path of `GET /car` spans (every
    // frame with at least a tenth of the span's samples, and two) each frame has its
    // path, e.g. `tokio::runtime::task::harness::Harness::poll`, not
    // `poll`. Only objects without symbols (libc's thread start) are named
    // by offset, and the compiler's own symbols have no path.
    let mut hot_frames = 0;
    let mut tokio_frames = 0;
    for s in with_graph.iter().filter(|s| s.name == "GET /car") {
        let frames = graph_frames(s.graph.as_deref().unwrap());
        let total = frames
            .iter()
            .find(|(name, _)| name == "all")
            .map_or(0, |(_, n)| *n);
        assert!(total > 0, "no root frame in {}'s graph", s.id);
        // A single sample is no hot path (a libc leaf such as `socketpair`
        // can take one of a short span's few samples).
        for (name, samples) in frames.iter().filter(|(_, n)| n * 10 >= total && *n >= 2) {
            if name == "all" {
                continue;
            }
            hot_frames += 1;
            tokio_frames += usize::from(name.starts_with("tokio::runtime::"));
            assert!(
                is_qualified(name) || is_pathless_symbol(name),
                "GET /car span {}: hot frame `{name}` ({samples} of {total} samples) has no path",
                s.id
            );
        }
    }
    assert!(
        hot_frames >= 20,
        "{hot_frames} hot frames in GET /car graphs"
    );
    assert!(
        tokio_frames > 0,
        "no tokio::runtime:: frame on the GET /car hot path"
    );

    // Each flame graph holds only its own span's samples.
    let (mut cars, mut cars_with_driver, mut eu_mutex) = (0, 0, 0);
    for s in &with_graph {
        let graph = s.graph.as_deref().unwrap();
        match s.name.as_str() {
            "GET /bike" | "GET /scooter" => {
                assert!(
                    !graph.contains(DRIVER),
                    "{} {} shows the car-only {DRIVER}",
                    s.name,
                    s.id
                )
            }
            "GET /car" if s.samples >= 6 => {
                cars += 1;
                cars_with_driver += usize::from(graph.contains(DRIVER));
            }
            "OrderVehicle" => {
                assert!(
                    !graph.contains(FIND),
                    "client span {} shows server work",
                    s.id
                )
            }
            _ => {}
        }
        if s.name.starts_with("GET /") {
            match s.region.as_deref() {
                Some("eu-north") => eu_mutex += usize::from(graph.contains(MUTEX)),
                Some(_) => assert!(
                    !graph.contains(MUTEX),
                    "{} in {:?} shows eu-north's {MUTEX}",
                    s.id,
                    s.region
                ),
                None => panic!("server span without region: {s:?}"),
            }
        }
    }
    assert!(cars >= 3, "{cars} /car spans with >= 6 samples");
    assert!(
        cars_with_driver * 10 >= cars * 7,
        "{cars_with_driver} of {cars} /car spans show {DRIVER}"
    );
    assert!(eu_mutex >= 1, "no eu-north span shows {MUTEX}");

    // The per-vehicle view: a flame graph per value of the span label.
    for vehicle in ["bike", "scooter", "car"] {
        let graph = label_graph(&html, &format!("vehicle={vehicle}"))
            .unwrap_or_else(|| panic!("no flame graph for vehicle={vehicle}"));
        assert!(graph.contains(FIND), "vehicle={vehicle} lacks {FIND}");
        assert_eq!(
            graph.contains(DRIVER),
            vehicle == "car",
            "{DRIVER} under vehicle={vehicle}"
        );
    }
    assert!(
        !html.contains("data-label=\"region="),
        "region is a static label, not a span label"
    );

    // Why is `GET /car` slow in eu-north? Its time adds up (CPU + blocked +
    // awaiting within 5% of its duration), with blocked time in the region
    // lock and awaiting time under the dispatch step, in its wall graph.
    let eu_cars: Vec<&ReportSpan> = spans
        .iter()
        .filter(|s| s.name == "GET /car" && s.region.as_deref() == Some("eu-north"))
        .collect();
    assert!(
        eu_cars.len() >= 3,
        "{} GET /car spans in eu-north",
        eu_cars.len()
    );
    let (mut explained, mut blocked_in_lock) = (0, 0);
    for s in &eu_cars {
        let (dur, cpu, blocked, awaiting, measured) = s.breakdown.expect("a breakdown bar");
        assert!(cpu + blocked + awaiting <= dur, "{s:?}");
        let Some(wall) = s.wall.as_deref() else {
            continue;
        };
        let adds_up = (cpu + blocked + awaiting) as f64 >= 0.95 * dur as f64
            && measured as f64 <= 1.05 * dur as f64;
        let mutex_blocked = blocked > 0 && wall.contains(MUTEX) && wall.contains("lock_contended");
        let awaits_dispatch = awaiting > 0
            && graph_frames(wall)
                .iter()
                .any(|(name, _)| name.contains("dispatch"))
            && wall.contains("[awaiting]");
        explained += usize::from(adds_up && awaits_dispatch);
        blocked_in_lock += usize::from(mutex_blocked);
    }
    assert!(
        explained * 2 >= eu_cars.len(),
        "{explained} of {} GET /car spans in eu-north add up with awaiting under dispatch (wall time on?)",
        eu_cars.len()
    );
    assert!(
        blocked_in_lock >= 1,
        "no GET /car span in eu-north shows blocked time in {MUTEX} (lock_contended)"
    );
    eprintln!(
        "demo: {} spans, {} with flame graphs, {cars_with_driver}/{cars} /car spans show {DRIVER}, {eu_mutex} eu-north spans show {MUTEX}, {explained}/{} eu-north GET /car spans add up with awaiting under dispatch, {blocked_in_lock} blocked in {MUTEX}; ran {elapsed:?}",
        spans.len(),
        with_graph.len(),
        eu_cars.len()
    );
    assert_pprof_names_are_readable(&out);
    let _ = std::fs::remove_dir_all(&out);
}

/// Google's pprof tool: `$PPROF`, else what `scripts/install-pprof.sh`
/// builds.
fn pprof() -> PathBuf {
    if let Some(p) = std::env::var_os("PPROF").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/install-pprof.sh");
    let out = Command::new("bash").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "install-pprof.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The frame names of `pprof -traces` output: its lines are
/// `     10ms   NAME`, `             NAME` or `NAME (inline)`, between
/// `----` separators, after a header and label lines (`key:  value`).
fn traces_frames(traces: &str) -> Vec<&str> {
    traces
        .split("-----------+-------------------------------------------------------")
        .skip(1)
        .flat_map(str::lines)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        // Label lines (`span_id:  0123…`); no frame name has a double space.
        .filter_map(|l| l.rsplit("  ").next())
        .map(|l| l.trim_start().trim_end_matches(" (inline)"))
        .collect()
}

/// Every frame name of the demo's pprof files, as Google's pprof tool
/// shows them, reads as a path: `<F as core::ops::function::FnOnce>::call_once`,
/// not `::call_once`.
fn assert_pprof_names_are_readable(out: &Path) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".pb.gz"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no pprof files in {}", out.display());
    let mut names = std::collections::BTreeSet::new();
    for file in &files {
        // Memory profiles count `alloc_objects`, the others `samples`.
        let index = if file.to_string_lossy().ends_with(".memory.pb.gz") {
            "-sample_index=alloc_objects"
        } else {
            "-sample_index=samples"
        };
        let output = Command::new(pprof())
            .args(["-traces", index])
            .arg(file)
            .env("PPROF_BINARY_PATH", "/nonexistent")
            .output()
            .unwrap();
        let traces = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "pprof rejected {}: {}",
            file.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        names.extend(traces_frames(&traces).into_iter().map(str::to_string));
    }
    // The reader saw the demo's frames at all.
    assert!(
        names.iter().any(|n| n.ends_with(FIND)),
        "pprof shows no {FIND} in {} files",
        files.len()
    );
    let unreadable: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("::") || n.contains("::::") || n.ends_with("::"))
        .collect();
    assert!(
        unreadable.is_empty(),
        "{} of {} frame names in pprof's reading of {} files lost their type: {unreadable:#?}",
        unreadable.len(),
        names.len(),
        files.len()
    );
    eprintln!(
        "pprof: {} distinct frame names in {} files, all readable",
        names.len(),
        files.len()
    );
}

/// A `spans.jsonl` line, as far as this test needs it.
mod serde_like {
    #[derive(Debug)]
    pub(crate) struct Record {
        pub(crate) span_id: String,
        pub(crate) trace_id: String,
        pub(crate) parent_span_id: String,
        pub(crate) name: String,
        pub(crate) service: String,
        pub(crate) region: String,
    }

    /// `None` for a partial line.
    pub(crate) fn parse(line: &str) -> Option<Record> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        Some(Record {
            span_id: s(&v["span_id"]),
            trace_id: s(&v["trace_id"]),
            parent_span_id: s(&v["parent_span_id"]),
            name: s(&v["name"]),
            service: s(&v["service"]),
            region: s(&v["labels"]["region"]),
        })
    }
}
