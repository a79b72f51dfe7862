//! `fork()` with a running profiler, through the public API: the parent
//! keeps sampling; a child that drops the inherited guard can start its own
//! profiler and take samples; a child that never touches the profiler runs
//! and exits normally even when it burns CPU and receives `SIGPROF`.
//!
//! Children report through their exit status.

use crate::cpu_clock;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cpu_clock::thread_cpu_nanos;
use tracing_pyroscope::{ProfilerGuard, SpanProfileLayer};

/// One profiler per process: the tests take turns.
static SERIAL: Mutex<()> = Mutex::new(());

fn tempdir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "tracing-pyroscope-fork-{name}-{}",
        std::process::id()
    ))
}

fn start(dir: &Path) -> Result<(SpanProfileLayer, ProfilerGuard), tracing_pyroscope::Error> {
    tracing_pyroscope::Builder::new("fork-test")
        .profiles_dir(dir)
        .sample_rate(1000)
        .upload_interval(Duration::from_secs(1))
        .build()
}

/// Burns CPU on this thread for `nanos` of its CPU time.
fn burn(nanos: u64) -> u64 {
    let end = thread_cpu_nanos() + nanos;
    let mut x = 3u64;
    while thread_cpu_nanos() < end {
        for i in 0..10_000u64 {
            x = black_box(x.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i));
        }
    }
    x
}

/// A thread burning CPU until the returned flag is set.
fn spinner() -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let handle = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                black_box(burn(1_000_000));
            }
        })
    };
    (stop, handle)
}

fn wait_until(timeout: Duration, mut what: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if what() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    what()
}

/// Forks; the child runs `child` and `_exit`s with its result. Returns the
/// child's exit status, or 100 + the signal that killed it. A child still
/// running after 60 s is killed (a hang fails the test).
fn fork_and_wait(child: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child runs `child` and then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = child();
        // SAFETY: ends the child without the test harness's teardown.
        unsafe { libc::_exit(code) };
    }
    let started = Instant::now();
    let mut status = 0;
    loop {
        // SAFETY: polling our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            // SAFETY: killing our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the forked child hung");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        100 + libc::WTERMSIG(status)
    }
}

#[test]
fn a_forked_child_profiles_itself_and_the_parent_keeps_sampling() {
    isolated!();
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let parent_dir = tempdir("parent");
    let child_dir = tempdir("child");
    let (_layer, guard) = start(&parent_dir).expect("start the parent's profiler");
    let (stop, spinning) = spinner();
    assert!(
        wait_until(Duration::from_secs(10), || guard.stats().samples > 0),
        "the parent takes no samples: {:?}",
        guard.stats()
    );

    // The child drops its copy of the guard; the parent's stays.
    let mut inherited = Some(guard);
    let status = fork_and_wait(|| {
        // The inherited guard belongs to the parent.
        drop(inherited.take());
        let (_layer, own) = match start(&child_dir) {
            Ok(started) => started,
            Err(e) if e.kind() == tracing_pyroscope::ErrorKind::AlreadyRunning => return 2,
            Err(_) => return 3,
        };
        if !own.is_active() {
            return 4;
        }
        // Only this thread runs in the child: burn until samples arrive.
        let end = Instant::now() + Duration::from_secs(20);
        while own.stats().samples == 0 && Instant::now() < end {
            black_box(burn(20_000_000));
        }
        let samples = own.stats().samples;
        drop(own);
        if samples == 0 {
            return 5;
        }
        0
    });
    assert_eq!(
        status, 0,
        "child: 2 = AlreadyRunning, 3 = other start error, 4 = inactive, 5 = no samples, 100+ = killed by signal"
    );

    let guard = inherited.expect("the parent keeps its guard");
    // The parent still samples after the fork.
    let after_fork = guard.stats().samples;
    assert!(
        wait_until(Duration::from_secs(10), || guard.stats().samples
            > after_fork + 50),
        "the parent stopped sampling after the fork: {:?}",
        guard.stats()
    );
    stop.store(true, Ordering::Relaxed);
    spinning.join().unwrap();
    let stats = guard.stats();
    drop(guard);
    println!("parent: {stats:?}");
    let child_files = std::fs::read_dir(&child_dir).map_or(0, |d| d.count());
    assert!(child_files > 0, "the child's profiler wrote nothing");
    let _ = std::fs::remove_dir_all(&parent_dir);
    let _ = std::fs::remove_dir_all(&child_dir);
}

#[test]
fn a_child_that_never_touches_the_profiler_is_unharmed() {
    isolated!();
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempdir("bystander");
    let (_layer, guard) = start(&dir).expect("start the parent's profiler");
    let (stop, spinning) = spinner();
    assert!(wait_until(Duration::from_secs(10), || guard
        .stats()
        .samples
        > 0));
    let status = fork_and_wait(|| {
        // CPU time, a stray SIGPROF through the inherited handler, and a
        // subprocess: none may kill or stop the child.
        black_box(burn(300_000_000));
        // SAFETY: raising a signal whose handler is installed.
        unsafe { libc::raise(libc::SIGPROF) };
        black_box(burn(50_000_000));
        match std::process::Command::new("true").status() {
            Ok(s) if s.success() => 0,
            _ => 6,
        }
    });
    assert_eq!(status, 0, "the bystander child failed (100+ = signal)");
    stop.store(true, Ordering::Relaxed);
    spinning.join().unwrap();
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
}
