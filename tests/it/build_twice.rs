//! A second `build()` while a profiler runs fails with `AlreadyRunning`
//! and changes nothing of the running one: its process-wide limits stay
//! those it was built with.

use std::time::Duration;

use tracing_pyroscope::ErrorKind;
use tracing_subscriber::prelude::*;

#[test]
fn a_failed_second_build_leaves_the_running_profilers_limits_alone() {
    isolated!();
    let dir = std::env::temp_dir().join(format!("tracing-pyroscope-twice-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let builder = |max_names: usize| {
        tracing_pyroscope::Builder::new("twice-test")
            .profiles_dir(dir.join(max_names.to_string()))
            .sample_rate(100)
            .upload_interval(Duration::from_secs(60))
            .max_span_names(max_names)
    };
    let (layer, guard) = builder(3).build().expect("start the first profiler");
    let second = builder(500).build();
    assert_eq!(
        second.as_ref().err().map(|e| e.kind()),
        Some(ErrorKind::AlreadyRunning),
        "{:?}",
        second.as_ref().err()
    );
    // The first profiler's cap of 3 names still holds: of 10 distinct
    // root-span names, at least 7 overflow.
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        for i in 0..10 {
            let name = format!("twice-name-{i}");
            let span = tracing::info_span!("request", otel.name = %name);
            span.in_scope(|| std::hint::black_box(i));
        }
    });
    // Counters are refreshed on every drain (100 ms).
    std::thread::sleep(Duration::from_millis(300));
    let overflows = guard.stats().span_name_overflows;
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        overflows >= 7,
        "{overflows} of 10 names overflowed a cap of 3"
    );
}
