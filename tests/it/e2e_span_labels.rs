//! Labels from span fields, end to end through Google's pprof tool:
//! - many concurrent tokio root spans on a 2-worker runtime, each with its
//!   own `vehicle` value and its own `#[inline(never)]` burn function, in
//!   bursts separated by `.await` yields (tasks hop between workers): every
//!   sample in a task's function carries its span's value and span id;
//! - a nested span overriding a key (the nearest span wins);
//! - `Span::record` after creation: before the first enter, and on the
//!   entered span (at once);
//! - a field on a child span under scope `root`: the child's samples carry
//!   the root's span id and the child's value.
//!
//! One profiler runs at a time in a process, so the tests take turns.

use crate::cpu_clock;
use crate::pprof_tool;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use cpu_clock::BURN_CPU_NANOS;
use tracing::Instrument;
use tracing_subscriber::prelude::*;

const RATE: u32 = 250;

static ONE_PROFILER: Mutex<()> = Mutex::new(());
burners!(
    burn_vehicle_00 = 3,
    burn_vehicle_01 = 5,
    burn_vehicle_02 = 7,
    burn_vehicle_03 = 11,
    burn_vehicle_04 = 13,
    burn_vehicle_05 = 17,
    burn_vehicle_06 = 19,
    burn_vehicle_07 = 23,
    burn_vehicle_08 = 29,
    burn_vehicle_09 = 31,
    burn_vehicle_10 = 37,
    burn_vehicle_11 = 41,
    burn_vehicle_12 = 43,
    burn_vehicle_13 = 47,
    burn_vehicle_14 = 53,
    burn_vehicle_15 = 59,
    burn_outer = 61,
    burn_inner = 67,
    burn_before_record = 71,
    burn_after_record = 73,
    burn_recorded_early = 79,
    burn_in_root = 83,
    burn_in_child = 89,
);

/// A burn function and its name (as pprof shows it).
type Burner = (&'static str, fn(u64) -> u64);

const TASK_BURNERS: [Burner; 16] = [
    ("burn_vehicle_00", burn_vehicle_00),
    ("burn_vehicle_01", burn_vehicle_01),
    ("burn_vehicle_02", burn_vehicle_02),
    ("burn_vehicle_03", burn_vehicle_03),
    ("burn_vehicle_04", burn_vehicle_04),
    ("burn_vehicle_05", burn_vehicle_05),
    ("burn_vehicle_06", burn_vehicle_06),
    ("burn_vehicle_07", burn_vehicle_07),
    ("burn_vehicle_08", burn_vehicle_08),
    ("burn_vehicle_09", burn_vehicle_09),
    ("burn_vehicle_10", burn_vehicle_10),
    ("burn_vehicle_11", burn_vehicle_11),
    ("burn_vehicle_12", burn_vehicle_12),
    ("burn_vehicle_13", burn_vehicle_13),
    ("burn_vehicle_14", burn_vehicle_14),
    ("burn_vehicle_15", burn_vehicle_15),
];

/// What a profiled run left in its directory.
struct Profiled {
    /// Every pprof trace written.
    traces: Vec<pprof_tool::Trace>,
    /// The span index (`spans.jsonl`): root span name → the span ids it
    /// recorded under that name.
    roots: BTreeMap<String, BTreeSet<String>>,
}

impl Profiled {
    /// The one span id of the root span `name`.
    fn root_id(&self, name: &str) -> &str {
        let ids = &self.roots[name];
        assert_eq!(ids.len(), 1, "{name}: {ids:?}");
        ids.iter().next().map(String::as_str).unwrap_or_default()
    }
}

/// Runs `work` under a profiled subscriber listing `vehicle` and `region`
/// as span labels, and returns what it wrote.
fn profile(name: &str, work: impl FnOnce()) -> Profiled {
    let _turn = ONE_PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    let dir: PathBuf =
        std::env::temp_dir().join(format!("tp-span-labels-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (layer, guard) = tracing_pyroscope::Builder::new("e2e-span-labels")
        .profiles_dir(&dir)
        .sample_rate(RATE)
        .upload_interval(Duration::from_secs(2))
        .span_labels(["vehicle", "region"])
        .build()
        .expect("start profiler");
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, work);
    let stats = guard.stats();
    drop(guard);
    assert_eq!(stats.span_label_overflows, 0, "{stats:?}");
    assert_eq!(stats.label_set_overflows, 0, "{stats:?}");
    let traces = read(&dir);
    let roots = span_index(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    Profiled { traces, roots }
}

/// The span index the profiler wrote (`spans*.jsonl`), as root span name →
/// span ids.
fn span_index(dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut roots: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("the profiles directory") {
        let path = entry.expect("a directory entry").path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if !(name.starts_with("spans") && name.ends_with(".jsonl")) {
            continue;
        }
        for line in std::fs::read_to_string(&path)
            .expect("the span index")
            .lines()
        {
            let record: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let field = |k: &str| record[k].as_str().unwrap_or_default().to_string();
            roots
                .entry(field("name"))
                .or_default()
                .insert(field("span_id"));
        }
    }
    roots
}

fn read(dir: &Path) -> Vec<pprof_tool::Trace> {
    pprof_tool::profile_files(dir)
        .iter()
        .flat_map(|f| pprof_tool::traces(f))
        .collect()
}

/// Samples in `function`, by their labels (`key=value` joined by ` `).
fn by_labels(traces: &[pprof_tool::Trace], function: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for t in traces {
        if t.frames.iter().any(|f| f.contains(function)) {
            let labels: Vec<String> = t
                .labels
                .iter()
                .filter(|(k, _)| k.as_str() != "span_name")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            *out.entry(labels.join(" ")).or_default() += t.count;
        }
    }
    out
}

/// Asserts that every sample in `function` carries exactly `labels`, and
/// that there are at least `min` of them.
fn all_samples_carry(traces: &[pprof_tool::Trace], function: &str, labels: &str, min: u64) {
    let seen = by_labels(traces, function);
    let total: u64 = seen.values().sum();
    assert!(total >= min, "{function}: only {total} samples ({seen:?})");
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        [labels],
        "{function}: {seen:?}"
    );
}

#[test]
fn concurrent_tokio_roots_each_carry_their_own_value_and_id() {
    isolated!();
    const BURSTS: usize = 40;
    const BURST_NANOS: u64 = 3_000_000;
    let mut burnt_nanos = 0;
    let profiled = profile("tokio", || {
        // Under the profiler's turn: no other test burns now.
        BURN_CPU_NANOS.store(0, Ordering::Relaxed);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        runtime.block_on(async {
            let tasks: Vec<_> = TASK_BURNERS
                .iter()
                .enumerate()
                .map(|(i, &(_, burn))| {
                    let root = tracing::info_span!(
                        "vehicle_task",
                        vehicle = format_args!("vehicle-{i:02}")
                    );
                    let task = async move {
                        let mut workers = std::collections::HashSet::new();
                        for b in 0..BURSTS {
                            workers.insert(std::thread::current().id());
                            if b % 2 == 0 {
                                // A child without fields inherits the value.
                                let _burst = tracing::info_span!("burst").entered();
                                burn(BURST_NANOS);
                            } else {
                                burn(BURST_NANOS);
                            }
                            tokio::task::yield_now().await;
                        }
                        workers.len()
                    };
                    tokio::spawn(tracing::instrument::WithSubscriber::with_subscriber(
                        task.instrument(root),
                        dispatch.clone(),
                    ))
                })
                .collect();
            let mut hopped = 0;
            for t in tasks {
                let workers = t.await.unwrap();
                hopped += usize::from(workers > 1);
            }
            assert!(hopped > 0, "no task ran on both workers");
        });
        burnt_nanos = BURN_CPU_NANOS.load(Ordering::Relaxed);
    });
    let traces = &profiled.traces;
    // Each task's samples carry one span id: one of the recorded roots',
    // and no other task's.
    let roots = &profiled.roots["vehicle_task"];
    assert_eq!(roots.len(), TASK_BURNERS.len(), "{roots:?}");
    let mut used = BTreeSet::new();
    let mut total = 0;
    for (i, (name, _)) in TASK_BURNERS.iter().enumerate() {
        let seen = by_labels(traces, name);
        let n: u64 = seen.values().sum();
        total += n;
        let id = traces
            .iter()
            .find(|t| t.frames.iter().any(|f| f.contains(name)))
            .and_then(|t| t.labels.get("span_id"))
            .unwrap_or_else(|| panic!("{name}: no sample with a span id ({seen:?})"));
        assert!(roots.contains(id), "{name}: {id} is no recorded root");
        assert!(used.insert(id.clone()), "{name}: {id} shared by two tasks");
        all_samples_carry(
            traces,
            name,
            &format!("span_id={id} vehicle=vehicle-{i:02}"),
            5,
        );
    }
    let expected = burnt_nanos as f64 * f64::from(RATE) / 1e9;
    println!(
        "{} root spans: 100% of every burn function's {total} samples carry its span's vehicle and span id (expected about {expected:.0} samples)",
        TASK_BURNERS.len()
    );
    assert!(total as f64 >= expected * 0.9, "{total} of {expected:.0}");
}

#[test]
fn the_nearest_span_wins() {
    isolated!();
    let profiled = profile("nested", || {
        let root = tracing::info_span!("order", vehicle = "car", region = "eu");
        root.in_scope(|| {
            burn_outer(150_000_000);
            tracing::info_span!("leg", vehicle = "bike").in_scope(|| burn_inner(150_000_000));
        });
    });
    let (traces, id) = (&profiled.traces, profiled.root_id("order"));
    all_samples_carry(
        traces,
        "burn_outer",
        &format!("region=eu span_id={id} vehicle=car"),
        10,
    );
    all_samples_carry(
        traces,
        "burn_inner",
        &format!("region=eu span_id={id} vehicle=bike"),
        10,
    );
}

#[test]
fn span_record_after_creation() {
    isolated!();
    let profiled = profile("record", || {
        // Recorded before the first enter.
        let early = tracing::info_span!("early", vehicle = tracing::field::Empty);
        early.record("vehicle", "scooter");
        early.in_scope(|| burn_recorded_early(150_000_000));
        // Recorded while entered: applies at once.
        let late = tracing::info_span!("late", vehicle = tracing::field::Empty);
        late.in_scope(|| {
            burn_before_record(150_000_000);
            tracing::Span::current().record("vehicle", "car");
            burn_after_record(150_000_000);
        });
    });
    let traces = &profiled.traces;
    let (early, late) = (profiled.root_id("early"), profiled.root_id("late"));
    all_samples_carry(
        traces,
        "burn_recorded_early",
        &format!("span_id={early} vehicle=scooter"),
        10,
    );
    all_samples_carry(traces, "burn_before_record", &format!("span_id={late}"), 10);
    all_samples_carry(
        traces,
        "burn_after_record",
        &format!("span_id={late} vehicle=car"),
        10,
    );
}

#[test]
fn a_child_field_labels_its_samples_under_root_scope() {
    isolated!();
    let profiled = profile("child", || {
        let root = tracing::info_span!("request");
        root.in_scope(|| {
            burn_in_root(150_000_000);
            tracing::info_span!("dispatch", vehicle = "bike")
                .in_scope(|| burn_in_child(150_000_000));
        });
    });
    // Under the root scope the child carries the root's id.
    let (traces, id) = (&profiled.traces, profiled.root_id("request"));
    all_samples_carry(traces, "burn_in_root", &format!("span_id={id}"), 10);
    all_samples_carry(
        traces,
        "burn_in_child",
        &format!("span_id={id} vehicle=bike"),
        10,
    );
}
