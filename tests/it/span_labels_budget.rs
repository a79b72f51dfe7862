//! Span labels stay within the series budget: values past the per-key cap
//! become `other`, and span names plus (name, span labels) combinations
//! share one cap (`max_span_names`); past it a combination keeps its span
//! name and loses its span labels. Read back through Google's pprof tool.
//!
//! The name and label tables are process-wide, hence a test binary of its
//! own.

use crate::pprof_tool;

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

use tracing_pyroscope::Builder;
use tracing_subscriber::layer::SubscriberExt;

#[inline(never)]
fn burn(d: Duration) -> u64 {
    let end = Instant::now() + d;
    let mut x = 1u64;
    while Instant::now() < end {
        for _ in 0..1000 {
            x = black_box(
                x.wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407),
            );
        }
    }
    x
}

#[test]
fn label_sets_stay_within_the_budget() {
    isolated!();
    const NAMES: usize = 10;
    const VALUES: usize = 40;
    const MAX_VALUES: usize = 20;
    const BUDGET: usize = 50;
    let dir = std::env::temp_dir().join(format!("tp-span-label-budget-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (layer, guard) = Builder::new("span-label-budget")
        .profiles_dir(&dir)
        .sample_rate(1000)
        .upload_interval(Duration::from_secs(1))
        .span_labels(["vehicle"])
        .max_span_label_values(MAX_VALUES)
        .max_span_names(BUDGET)
        .build()
        .expect("start");
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        for n in 0..NAMES {
            for v in 0..VALUES {
                let name = format!("GET /route{n}");
                let span = tracing::info_span!("request", otel.name = %name, vehicle = v);
                span.in_scope(|| burn(Duration::from_millis(1)));
            }
        }
    });
    // Counters are refreshed on every drain (100 ms).
    std::thread::sleep(Duration::from_millis(300));
    let stats = guard.stats();
    drop(guard);

    let mut sets = BTreeSet::new();
    let mut values = BTreeSet::new();
    let mut samples = 0;
    for file in pprof_tool::profile_files(&dir) {
        for t in pprof_tool::traces(&file) {
            samples += t.count;
            let vehicle = t.labels.get("vehicle").cloned();
            values.extend(vehicle.clone());
            sets.insert((t.labels.get("span_name").cloned(), vehicle));
        }
    }
    println!(
        "{samples} samples, {} label sets, vehicle values {values:?}, {stats:?}",
        sets.len()
    );
    assert!(samples > 200, "too few samples to judge: {samples}");
    // The budget, the overflow name and samples outside spans.
    assert!(
        sets.len() <= BUDGET + 2,
        "{} label sets: {sets:?}",
        sets.len()
    );
    // 20 values, then `other`; each refused value counted once.
    assert!(values.contains("other"), "{values:?}");
    assert!(values.len() <= MAX_VALUES + 1, "{values:?}");
    assert_eq!(stats.span_label_overflows, (VALUES - MAX_VALUES) as u64);
    // Past the budget: span names without span labels, counted.
    assert!(stats.label_set_overflows > 0, "{stats:?}");
    assert!(
        sets.iter().any(|(name, vehicle)| name
            .as_deref()
            .is_some_and(|n| n.starts_with("GET /route"))
            && vehicle.is_none()),
        "no combination was refused: {sets:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
