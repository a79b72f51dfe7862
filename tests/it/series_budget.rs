//! What reaches the server stays within its limits and the crate's series
//! budget: dynamic span names are capped and truncated, and scope `none`
//! still labels samples with `span_name`. Read back through Google's pprof
//! tool from the local directory sink.
//!
//! The span-name table is process-wide (the cap is per process), so the
//! scenarios run in one test, in order: scope `none`, a long name, then
//! thousands of dynamic names that fill the table.

use crate::cpu_clock;
use crate::pprof_tool;

use std::collections::BTreeSet;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use tracing_pyroscope::{Builder, SpanScope};
use tracing_subscriber::layer::SubscriberExt;

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tp-series-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Burns `d` of this thread's CPU time (not wall time: the machine may be
/// busy).
#[inline(never)]
fn burn(d: Duration) -> u64 {
    let end = cpu_clock::thread_cpu_nanos() + d.as_nanos() as u64;
    let mut x = 1u64;
    while cpu_clock::thread_cpu_nanos() < end {
        for _ in 0..1000 {
            x = black_box(
                x.wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407),
            );
        }
    }
    x
}

/// Every distinct `span_name` value in the directory's profiles (`None`
/// for samples without one), checked by pprof.
fn span_names(dir: &std::path::Path) -> (BTreeSet<Option<String>>, u64) {
    let mut names = BTreeSet::new();
    let mut samples = 0;
    for file in pprof_tool::profile_files(dir) {
        for t in pprof_tool::traces(&file) {
            samples += t.count;
            names.insert(t.labels.get("span_name").cloned());
        }
    }
    (names, samples)
}

#[test]
fn names_reach_the_server_within_its_limits() {
    isolated!();
    scope_none_labels_samples_with_the_span_name_only();
    long_names_are_truncated_with_a_mark();
    // Two names are in the table now.
    dynamic_span_names_stay_within_the_series_budget(2);
}

fn dynamic_span_names_stay_within_the_series_budget(names_before: u64) {
    let dir = tempdir("names");
    let (layer, guard) = Builder::new("series-budget")
        .profiles_dir(&dir)
        .sample_rate(1000)
        .upload_interval(Duration::from_secs(1))
        .build()
        .expect("start");
    let long_name = format!("GET /{}", "x".repeat(3000));
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        for i in 0..3000 {
            // A raw URL path as the span name: a common mistake.
            let name = if i == 1500 {
                long_name.clone()
            } else {
                format!("GET /car/{i}")
            };
            let span = tracing::info_span!("request", otel.name = %name);
            span.in_scope(|| burn(Duration::from_micros(700)));
        }
    });
    // Counters are refreshed on every drain (100 ms).
    std::thread::sleep(Duration::from_millis(300));
    let stats = guard.stats();
    drop(guard);
    let (names, samples) = span_names(&dir);
    println!(
        "{samples} samples, {} distinct span_name values, {} overflows",
        names.len(),
        stats.span_name_overflows
    );
    assert!(samples > 500, "too few samples to judge: {samples}");
    // 200 names, `other`, and samples outside any span.
    assert!(names.len() <= 202, "{} label sets", names.len());
    assert!(names.len() <= 500);
    assert!(names.contains(&Some("other".to_string())), "{names:?}");
    // 3000 distinct names, the first 256 kept: every later one counted.
    assert_eq!(stats.span_name_overflows, 3000 - (200 - names_before));
    for name in names.iter().flatten() {
        assert!(name.len() <= 2048, "a {}-byte label value", name.len());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn long_names_are_truncated_with_a_mark() {
    let dir = tempdir("long");
    let (layer, guard) = Builder::new("series-long")
        .profiles_dir(&dir)
        .sample_rate(1000)
        .build()
        .expect("start");
    let long_name = "é".repeat(1500); // 3000 bytes
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("request", otel.name = %long_name);
        span.in_scope(|| burn(Duration::from_millis(200)));
    });
    drop(guard);
    let (names, _) = span_names(&dir);
    let long: Vec<&String> = names
        .iter()
        .flatten()
        .filter(|n| n.starts_with("éé"))
        .collect();
    assert_eq!(long.len(), 1, "{names:?}");
    assert!(
        long[0].len() <= 2048 && long[0].ends_with('…'),
        "{}",
        long[0].len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn scope_none_labels_samples_with_the_span_name_only() {
    let dir = tempdir("none");
    let (layer, guard) = Builder::new("series-none")
        .profiles_dir(&dir)
        .sample_rate(1000)
        .span_scope(SpanScope::None)
        .build()
        .expect("start");
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("checkout");
        span.in_scope(|| burn(Duration::from_millis(300)));
    });
    drop(guard);
    let mut with_name = 0;
    for file in pprof_tool::profile_files(&dir) {
        for t in pprof_tool::traces(&file) {
            assert!(!t.labels.contains_key("span_id"), "{t:?}");
            if t.labels.get("span_name").map(String::as_str) == Some("checkout") {
                with_name += t.count;
            }
        }
    }
    assert!(
        with_name > 150, // 300 ms of CPU at 1000 Hz
        "samples labelled span_name=checkout: {with_name}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
