//! Exits under fire at 1000 Hz:
//! - `std::process::exit` while the profiler runs (guard alive, threads
//!   busy) ends the process normally, without a crash;
//! - samples taken while threads run their thread-local destructors (TLS
//!   teardown) are harmless and unwound like any other.

use crate::cpu_clock;
use crate::pprof_tool;

use std::cell::Cell;
use std::hint::black_box;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cpu_clock::thread_cpu_nanos;
use tracing_pyroscope::context;

/// One profiler per process: the tests take turns.
static SERIAL: Mutex<()> = Mutex::new(());

/// Set in the child process that `exit_with_a_live_guard_ends_the_process_normally`
/// runs.
const CHILD: &str = "TRACING_PYROSCOPE_EXIT_CHILD";

fn burn(nanos: u64, salt: u64) -> u64 {
    let end = thread_cpu_nanos() + nanos;
    let mut x = salt;
    while thread_cpu_nanos() < end {
        for _ in 0..1000 {
            x = black_box(x.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(11));
        }
    }
    x
}

fn tempdir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "tracing-pyroscope-exit-{name}-{}",
        std::process::id()
    ))
}

/// The child's side: profile busy threads, then `exit` with everything
/// still running. Only runs in the child (see below).
#[test]
#[ignore = "run in a child process by exit_with_a_live_guard_ends_the_process_normally"]
fn child_exits_with_a_live_guard() {
    let Some(dir) = std::env::var_os(CHILD) else {
        return;
    };
    let (_layer, guard) = tracing_pyroscope::Builder::new("exit-test")
        .profiles_dir(std::path::PathBuf::from(dir))
        .sample_rate(1000)
        .upload_interval(Duration::from_secs(1))
        .build()
        .expect("start profiler");
    let stop = Arc::new(AtomicBool::new(false));
    for t in 0..4 {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                black_box(burn(1_000_000, t));
            }
        });
    }
    // Samples are flowing when we exit.
    while guard.stats().samples < 200 {
        black_box(burn(10_000_000, 9));
    }
    std::process::exit(42);
}

#[test]
fn exit_with_a_live_guard_ends_the_process_normally() {
    isolated!();
    let dir = tempdir("child");
    let output = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--ignored",
            "--exact",
            "sampler_exit::child_exits_with_a_live_guard",
            "--nocapture",
        ])
        .env(CHILD, &dir)
        .output()
        .expect("run the child");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        output.status.code(),
        Some(42),
        "the child did not exit normally ({:?}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Burns CPU in its destructor, under a span label: runs during the
/// thread's TLS teardown.
struct SlowToDrop(u64);

impl Drop for SlowToDrop {
    fn drop(&mut self) {
        context::with_labels(&[("mark", "teardown")], || {
            black_box(burn_in_tls_destructor(30_000_000, self.0));
        });
    }
}

#[inline(never)]
fn burn_in_tls_destructor(nanos: u64, salt: u64) -> u64 {
    black_box(burn(nanos, salt))
}

thread_local! {
    static SLOW: Cell<Option<SlowToDrop>> = const { Cell::new(None) };
}

#[test]
fn samples_during_thread_local_teardown_are_harmless() {
    isolated!();
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempdir("tls");
    let _ = std::fs::remove_dir_all(&dir);
    let (_layer, guard) = tracing_pyroscope::Builder::new("tls-exit-test")
        .profiles_dir(&dir)
        .sample_rate(1000)
        .upload_interval(Duration::from_secs(60))
        .span_labels(["mark"])
        .build()
        .expect("start profiler");
    for round in 0..8u64 {
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                std::thread::spawn(move || {
                    // Long enough to be armed before it starts exiting.
                    black_box(burn(30_000_000, t));
                    SLOW.with(|s| s.set(Some(SlowToDrop(round * 4 + t))));
                })
            })
            .collect();
        for t in threads {
            t.join().expect("a thread died in its TLS teardown");
        }
    }
    drop(guard);
    let (mut in_teardown, mut rooted) = (0u64, 0u64);
    for file in pprof_tool::profile_files(&dir) {
        for tr in pprof_tool::traces(&file) {
            let labelled = tr.labels.get("mark").is_some_and(|v| v == "teardown");
            if labelled
                && tr
                    .frames
                    .iter()
                    .any(|f| f.contains("burn_in_tls_destructor"))
            {
                in_teardown += tr.count;
                // Unwound through glibc's TLS destructor loop into the
                // thread's start routine below it.
                let dtors = tr.frames.iter().position(|f| f == "__call_tls_dtors");
                if dtors.is_some_and(|i| i + 1 < tr.frames.len()) {
                    rooted += tr.count;
                } else if rooted == 0 {
                    println!("not unwound: {:?}", tr.frames);
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("{in_teardown} samples in TLS destructors, {rooted} unwound to the thread's root");
    // 32 destructors × 30 ms of CPU at 1000 Hz: ~960 periods expected.
    assert!(
        in_teardown >= 300,
        "too few samples in TLS teardown: {in_teardown}"
    );
    assert_eq!(rooted, in_teardown, "stacks in TLS teardown not unwound");
}
