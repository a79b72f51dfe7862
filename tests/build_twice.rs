//! A second `build()` while a profiler runs fails with `AlreadyRunning`
//! and changes nothing of the running one: its process-wide limits stay
//! those it was built with.

use std::time::Duration;

use tracing_pyroscope::context::{intern_name, name_of, OVERFLOW_NAME};
use tracing_pyroscope::ErrorKind;

#[test]
fn a_failed_second_build_leaves_the_running_profilers_limits_alone() {
    let dir = std::env::temp_dir().join(format!("tracing-pyroscope-twice-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let builder = |max_names: usize| {
        tracing_pyroscope::Builder::new("twice-test")
            .profiles_dir(dir.join(max_names.to_string()))
            .sample_rate(100)
            .upload_interval(Duration::from_secs(60))
            .max_span_names(max_names)
    };
    let (_layer, guard) = builder(3).build().expect("start the first profiler");
    let second = builder(500).build();
    assert_eq!(
        second.as_ref().err().map(|e| e.kind()),
        Some(ErrorKind::AlreadyRunning),
        "{:?}",
        second.as_ref().err()
    );
    // The first profiler's cap of 3 names still holds.
    let ids: Vec<u32> = (0..10)
        .map(|i| intern_name(&format!("twice-name-{i}")))
        .collect();
    let names: Vec<String> = ids
        .iter()
        .map(|&id| name_of(id).map(|n| n.to_string()).unwrap_or_default())
        .collect();
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
    let admitted = names.iter().filter(|n| n.as_str() != OVERFLOW_NAME).count();
    assert!(admitted <= 3, "{admitted} names admitted: {names:?}");
    assert_eq!(names.last().map(String::as_str), Some(OVERFLOW_NAME));
}
