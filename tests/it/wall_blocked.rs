//! Wall time of blocked threads, end to end through Google's pprof tool: a
//! sync span sleeping 200 ms gets 200 ms (±5%) of blocked wall time on a
//! stack through `clock_nanosleep` and the test's function; a CPU-bound
//! span gets next to none.

use crate::pprof_tool;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing_subscriber::layer::SubscriberExt;

/// A profiler at 1000 Hz with wall time on, writing to a fresh directory
/// named after `test`, its layer the global subscriber's (so call it in an
/// isolated child process).
pub(crate) fn wall_profiler(test: &str) -> (PathBuf, tracing_pyroscope::ProfilerGuard) {
    let dir = std::env::temp_dir().join(format!("tracing-pyroscope-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (layer, guard) = tracing_pyroscope::Builder::new(format!("{test}-test"))
        .profiles_dir(&dir)
        .sample_rate(1000)
        .wall_time(true)
        .upload_interval(Duration::from_secs(60))
        .build()
        .expect("start profiler");
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
        .expect("global subscriber");
    (dir, guard)
}

/// The traces of every wall profile in `dir`, valued in nanoseconds.
pub(crate) fn wall_traces(dir: &Path) -> Vec<pprof_tool::Trace> {
    pprof_tool::dir_traces(dir, ".wall.pb.gz", "wall", Some("ns"))
}

#[inline(never)]
fn wall_test_sleeps_200_ms() {
    // Work after the call: not a tail call, so this frame stays.
    let start = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    black_box(start.elapsed());
}

burners!(wall_test_burns = 0x3a11);

#[test]
fn a_sleeping_span_is_blocked_for_its_sleep_and_a_busy_one_is_not() {
    isolated!();
    let (dir, guard) = wall_profiler("wall");
    let sleeper = std::thread::spawn(|| {
        tracing::info_span!("sleepy").in_scope(wall_test_sleeps_200_ms);
    });
    let busy = std::thread::spawn(|| {
        tracing::info_span!("busy").in_scope(|| wall_test_burns(200_000_000));
    });
    sleeper.join().unwrap();
    busy.join().unwrap();
    drop(guard);

    let traces = wall_traces(&dir);
    let blocked = |name: &str| -> f64 {
        traces
            .iter()
            .filter(|t| t.labels.get("span_name").map(String::as_str) == Some(name))
            .filter(|t| t.frames.first().is_some_and(|f| f.starts_with("[blocked")))
            .map(|t| t.count as f64)
            .sum()
    };
    let slept = blocked("sleepy");
    println!("sleepy: blocked {:.1} ms", slept / 1e6);
    assert!(
        (190e6..=210e6).contains(&slept),
        "a 200 ms sleep got {:.1} ms blocked: {traces:#?}",
        slept / 1e6
    );
    let through = traces.iter().any(|t| {
        t.labels.get("span_name").map(String::as_str) == Some("sleepy")
            && t.frames.first().map(String::as_str) == Some("[blocked: clock_nanosleep]")
            && t.frames.iter().any(|f| f.contains("nanosleep"))
            && t.frames
                .iter()
                .any(|f| f.contains("wall_test_sleeps_200_ms"))
    });
    assert!(
        through,
        "no blocked stack through clock_nanosleep and the test's function: {traces:#?}"
    );
    let busy_blocked = blocked("busy");
    println!("busy: blocked {:.1} ms", busy_blocked / 1e6);
    assert!(
        busy_blocked < 10e6,
        "a CPU-bound span got {:.1} ms blocked",
        busy_blocked / 1e6
    );
    let _ = std::fs::remove_dir_all(&dir);
}
