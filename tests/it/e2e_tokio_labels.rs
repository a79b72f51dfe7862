//! Exact labels end to end: dozens of concurrent root spans on a tokio
//! multi-thread runtime, each burning CPU in its own `#[inline(never)]`
//! function in short bursts separated by `.await` yields (so tasks hop
//! between worker threads), half of them wrapping each burst in a child
//! span. Read back through Google's pprof tool, each function's CPU must
//! carry the span id of the root that ran it, which must equal the exported
//! OTel span's `pyroscope.profile.id`.

use crate::cpu_clock;
use crate::pprof_tool;

use cpu_clock::BURN_CPU_NANOS;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing::Instrument;
use tracing_subscriber::prelude::*;

const RATE: u32 = 250;
const TASKS: usize = 24;
const BURSTS: usize = 40;
const BURST_NANOS: u64 = 3_000_000;

burners!(
    burn_task_00 = 3,
    burn_task_01 = 5,
    burn_task_02 = 7,
    burn_task_03 = 11,
    burn_task_04 = 13,
    burn_task_05 = 17,
    burn_task_06 = 19,
    burn_task_07 = 23,
    burn_task_08 = 29,
    burn_task_09 = 31,
    burn_task_10 = 37,
    burn_task_11 = 41,
    burn_task_12 = 43,
    burn_task_13 = 47,
    burn_task_14 = 53,
    burn_task_15 = 59,
    burn_task_16 = 61,
    burn_task_17 = 67,
    burn_task_18 = 71,
    burn_task_19 = 73,
    burn_task_20 = 79,
    burn_task_21 = 83,
    burn_task_22 = 89,
    burn_task_23 = 97,
);

#[test]
fn every_burst_carries_its_root_span_id() {
    isolated!();
    assert_eq!(BURNERS.len(), TASKS);
    let dir = std::env::temp_dir().join(format!(
        "tracing-pyroscope-e2e-tokio-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);

    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let tracer = provider.tracer("e2e");
    let (profiling, guard) = tracing_pyroscope::Builder::new("e2e-tokio")
        .profiles_dir(&dir)
        .sample_rate(RATE)
        .upload_interval(Duration::from_secs(2))
        .build()
        .expect("start profiler");
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .with(profiling);
    let _default = tracing::subscriber::set_default(subscriber);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dispatch = tracing::dispatcher::get_default(|d| d.clone());
    runtime.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|i| {
                let dispatch = dispatch.clone();
                let task = async move {
                    for _ in 0..BURSTS {
                        if i % 2 == 0 {
                            let _burst = tracing::info_span!("burst").entered();
                            (BURNERS[i].1)(BURST_NANOS);
                        } else {
                            (BURNERS[i].1)(BURST_NANOS);
                        }
                        tokio::task::yield_now().await;
                    }
                };
                let root = tracing::dispatcher::with_default(&dispatch, || {
                    tracing::info_span!("root_task", task = i)
                });
                tokio::spawn(tracing::instrument::WithSubscriber::with_subscriber(
                    task.instrument(root),
                    dispatch,
                ))
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    drop(runtime);
    drop(_default);
    drop(guard);
    let _ = provider.force_flush();

    // Root spans' profile ids, by task number.
    let mut profile_ids: HashMap<usize, String> = HashMap::new();
    for span in exporter.get_finished_spans().unwrap() {
        if span.name != "root_task" {
            assert!(
                !span
                    .attributes
                    .iter()
                    .any(|kv| kv.key.as_str() == "pyroscope.profile.id"),
                "only local roots carry the profile id"
            );
            continue;
        }
        let task = span
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == "task")
            .map(|kv| kv.value.as_str().parse::<usize>().unwrap())
            .expect("task attribute");
        let id = span
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == "pyroscope.profile.id")
            .map(|kv| kv.value.as_str().to_string())
            .expect("root span has pyroscope.profile.id");
        assert_eq!(
            id,
            format!(
                "{:016x}",
                u64::from_be_bytes(span.span_context.span_id().to_bytes())
            )
        );
        profile_ids.insert(task, id);
    }
    assert_eq!(profile_ids.len(), TASKS);

    let mut right: HashMap<usize, u64> = HashMap::new();
    let mut all: HashMap<usize, u64> = HashMap::new();
    for file in pprof_tool::profile_files(&dir) {
        for tr in pprof_tool::traces(&file) {
            for (i, (name, _)) in BURNERS.iter().enumerate() {
                if tr.frames.iter().any(|f| f.contains(name)) {
                    *all.entry(i).or_default() += tr.count;
                    if tr.labels.get("span_id") == profile_ids.get(&i) {
                        *right.entry(i).or_default() += tr.count;
                    }
                }
            }
        }
    }
    let mut total = 0;
    for (i, (name, _)) in BURNERS.iter().enumerate() {
        let (r, a) = (
            right.get(&i).copied().unwrap_or(0),
            all.get(&i).copied().unwrap_or(0),
        );
        total += a;
        let share = r as f64 / a.max(1) as f64;
        assert!(a >= 5, "{name}: only {a} samples");
        assert!(
            share >= 0.99,
            "{name}: {r}/{a} samples carry its root's span id"
        );
    }
    let expected = BURN_CPU_NANOS.load(Ordering::Relaxed) as f64 * RATE as f64 / 1e9;
    println!(
        "{TASKS} root spans: every burn function's samples carry its root's id; {total} samples in burn functions, expected {expected:.0} ({:.1}%)",
        total as f64 / expected * 100.0
    );
    assert!(
        total as f64 >= expected * 0.9,
        "only {total} of {expected:.0} expected samples"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
