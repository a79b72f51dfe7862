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

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use cpu_clock::BURN_CPU_NANOS;
use tracing::Instrument;
use tracing_pyroscope::context;
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

/// Runs `work` under a profiled subscriber listing `vehicle` and `region`
/// as span labels, and returns every pprof trace written.
fn profile(name: &str, work: impl FnOnce()) -> Vec<pprof_tool::Trace> {
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
    let _ = std::fs::remove_dir_all(&dir);
    traces
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

fn hex(id: u64) -> String {
    format!("{id:016x}")
}

#[test]
fn concurrent_tokio_roots_each_carry_their_own_value_and_id() {
    isolated!();
    const BURSTS: usize = 40;
    const BURST_NANOS: u64 = 3_000_000;
    let ids: Mutex<HashMap<usize, u64>> = Mutex::new(HashMap::new());
    let mut burnt_nanos = 0;
    let traces = profile("tokio", || {
        // Under the profiler's turn: no other test burns now.
        BURN_CPU_NANOS.store(0, Ordering::Relaxed);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        let ids = &ids;
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
                        (context::current().span_id, workers.len())
                    };
                    tokio::spawn(tracing::instrument::WithSubscriber::with_subscriber(
                        task.instrument(root),
                        dispatch.clone(),
                    ))
                })
                .collect();
            let mut hopped = 0;
            for (i, t) in tasks.into_iter().enumerate() {
                let (span_id, workers) = t.await.unwrap();
                assert_ne!(span_id, 0);
                hopped += usize::from(workers > 1);
                ids.lock().unwrap().insert(i, span_id);
            }
            assert!(hopped > 0, "no task ran on both workers");
        });
        burnt_nanos = BURN_CPU_NANOS.load(Ordering::Relaxed);
    });
    let ids = ids.into_inner().unwrap();
    let mut total = 0;
    for (i, (name, _)) in TASK_BURNERS.iter().enumerate() {
        let seen = by_labels(&traces, name);
        let n: u64 = seen.values().sum();
        total += n;
        all_samples_carry(
            &traces,
            name,
            &format!("span_id={} vehicle=vehicle-{i:02}", hex(ids[&i])),
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
    let mut root_id = 0;
    let traces = profile("nested", || {
        let root = tracing::info_span!("order", vehicle = "car", region = "eu");
        root.in_scope(|| {
            root_id = context::current().span_id;
            burn_outer(150_000_000);
            tracing::info_span!("leg", vehicle = "bike").in_scope(|| burn_inner(150_000_000));
        });
    });
    let id = hex(root_id);
    all_samples_carry(
        &traces,
        "burn_outer",
        &format!("region=eu span_id={id} vehicle=car"),
        10,
    );
    all_samples_carry(
        &traces,
        "burn_inner",
        &format!("region=eu span_id={id} vehicle=bike"),
        10,
    );
}

#[test]
fn span_record_after_creation() {
    isolated!();
    let mut ids = (0, 0);
    let traces = profile("record", || {
        // Recorded before the first enter.
        let early = tracing::info_span!("early", vehicle = tracing::field::Empty);
        early.record("vehicle", "scooter");
        early.in_scope(|| {
            ids.0 = context::current().span_id;
            burn_recorded_early(150_000_000);
        });
        // Recorded while entered: applies at once.
        let late = tracing::info_span!("late", vehicle = tracing::field::Empty);
        late.in_scope(|| {
            ids.1 = context::current().span_id;
            burn_before_record(150_000_000);
            tracing::Span::current().record("vehicle", "car");
            burn_after_record(150_000_000);
        });
    });
    all_samples_carry(
        &traces,
        "burn_recorded_early",
        &format!("span_id={} vehicle=scooter", hex(ids.0)),
        10,
    );
    all_samples_carry(
        &traces,
        "burn_before_record",
        &format!("span_id={}", hex(ids.1)),
        10,
    );
    all_samples_carry(
        &traces,
        "burn_after_record",
        &format!("span_id={} vehicle=car", hex(ids.1)),
        10,
    );
}

#[test]
fn a_child_field_labels_its_samples_under_root_scope() {
    isolated!();
    let mut root_id = 0;
    let traces = profile("child", || {
        let root = tracing::info_span!("request");
        root.in_scope(|| {
            root_id = context::current().span_id;
            burn_in_root(150_000_000);
            tracing::info_span!("dispatch", vehicle = "bike").in_scope(|| {
                assert_eq!(context::current().span_id, root_id, "scope root");
                burn_in_child(150_000_000);
            });
        });
    });
    let id = hex(root_id);
    all_samples_carry(&traces, "burn_in_root", &format!("span_id={id}"), 10);
    all_samples_carry(
        &traces,
        "burn_in_child",
        &format!("span_id={id} vehicle=bike"),
        10,
    );
}
