//! No silent failure: a profiler whose samples never fall in a span says so,
//! once. The usual cause is a global filter above the spans' level
//! (`RUST_LOG=info` hides tower-http's DEBUG request spans from every
//! layer), which this test reproduces with a global `LevelFilter::INFO` and
//! a DEBUG span; with an INFO span nothing is said.
//!
//! Each case runs in a child process of this binary (the subscriber is
//! process-global, and the profiler's own threads log through it).

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;

/// Selects the case a child process runs.
const CHILD: &str = "TP_NO_SPAN_WARNING_CHILD";
/// Words of the warning.
const WARNING: &str = "none of them inside a span";

/// Burns CPU for `ms` milliseconds.
fn spin(ms: u64) -> u64 {
    let until = Instant::now() + Duration::from_millis(ms);
    let mut x = 1u64;
    while Instant::now() < until {
        for _ in 0..10_000 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    x
}

/// The child: a profiler with 100 ms intervals under a global INFO filter,
/// CPU spent inside a span of level `level`, for a dozen intervals with
/// samples; the log goes to stderr.
fn run_child(level: &str) {
    let dir = std::env::temp_dir().join(format!("tp-no-span-{}", std::process::id()));
    let (layer, guard) = tracing_pyroscope::Builder::new("no-span-test")
        .profiles_dir(&dir)
        .upload_interval(Duration::from_millis(100))
        .build()
        .expect("start the profiler");
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let subscriber = tracing_subscriber::registry()
        .with(layer)
        .with(fmt)
        .with(LevelFilter::INFO);
    tracing::subscriber::set_global_default(subscriber).expect("global subscriber");
    let deadline = Instant::now() + Duration::from_secs(60);
    // Intervals with samples each give a profile.
    while guard.stats().profiles < 12 && Instant::now() < deadline {
        let span = match level {
            "debug" => tracing::debug_span!("request"),
            _ => tracing::info_span!("request"),
        };
        span.in_scope(|| black_box(spin(20)));
    }
    let stats = guard.stats();
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("child done: {} profiles", stats.profiles);
}

/// Runs the `level` case in a child; its stderr.
fn child(level: &str) -> String {
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "no_span_warning::child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, level)
        .env_remove("RUST_LOG")
        .output()
        .expect("run the child");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "child failed: {stderr}");
    let profiles = stderr
        .split("child done: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(
        profiles.is_some_and(|n| n >= 12),
        "the child did not reach 12 intervals with samples: {stderr}"
    );
    stderr
}

/// Not a test by itself: the body of the child processes.
#[test]
fn child_process() {
    if let Ok(level) = std::env::var(CHILD) {
        run_child(&level);
    }
}

#[test]
fn spans_hidden_by_a_global_filter_give_one_warning() {
    isolated!();
    let log = child("debug");
    assert_eq!(log.matches(WARNING).count(), 1, "{log}");
    let warning = log
        .lines()
        .find(|l| l.contains(WARNING))
        .unwrap_or_default();
    for cause in [
        "WARN",
        "tracing_pyroscope",
        "RUST_LOG=info",
        "DEBUG",
        "instrumented",
    ] {
        assert!(
            warning.contains(cause),
            "the warning lacks `{cause}`: {warning}"
        );
    }
}

#[test]
fn spans_that_pass_the_filter_give_no_warning() {
    isolated!();
    let log = child("info");
    assert_eq!(log.matches(WARNING).count(), 0, "{log}");
}
