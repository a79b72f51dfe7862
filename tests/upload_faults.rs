//! Fault table for uploads, through the public API: a misbehaving Pyroscope
//! (down, refusing, 5 s per answer, 500, 429 with `Retry-After`, 413, 400)
//! must never hurt the application.
//!
//! For each fault, in one run:
//! - the app's own work takes the same wall time as unprofiled, ±10 %
//!   (best of several repetitions; the baseline is measured before starting
//!   the profiler and again after stopping it);
//! - memory stays bounded: profiles waiting for upload never exceed the
//!   queue (8) plus the one in flight, the excess is counted as dropped, and
//!   RSS does not grow while the fault lasts;
//! - profiles arrive again once the server recovers, with their `span_id`s;
//! - dropping the guard with the fault still on returns within the 5 s
//!   shutdown bound (plus slack).

mod common;
mod pprof_tool;

use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::pyroscope_double::{Fault, PyroscopeDouble};
use common::wait_until;
use tracing_subscriber::prelude::*;

/// One profiler per process, and quiet timing: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const UPLOAD_INTERVAL: Duration = Duration::from_millis(250);
/// How long the fault lasts while the app works (≥ 12 intervals).
const FAULT_PERIOD: Duration = Duration::from_secs(3);
const SHUTDOWN_BOUND: Duration = Duration::from_secs(5);
const SHUTDOWN_SLACK: Duration = Duration::from_millis(250);
/// Queue capacity plus the profile in flight.
const MAX_WAITING: u64 = 8 + 1;

#[inline(never)]
fn app_work(rounds: u64) -> u64 {
    let mut x = 0x9e3779b97f4a7c15u64;
    for i in 0..rounds {
        x = black_box(x ^ i)
            .wrapping_mul(0x2545f4914f6cdd1d)
            .rotate_left(17);
    }
    x
}

/// Rounds of `app_work` that take about `target` of CPU time.
fn calibrate(target: Duration) -> u64 {
    let mut rounds = 1_000_000;
    loop {
        let t = thread_cpu();
        black_box(app_work(rounds));
        let took = thread_cpu() - t;
        if took >= Duration::from_millis(30) {
            return (rounds as f64 * target.as_secs_f64() / took.as_secs_f64()) as u64;
        }
        rounds *= 4;
    }
}

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Best wall time and best thread CPU time of the work.
#[derive(Clone, Copy, Debug)]
struct Timing {
    wall: Duration,
    cpu: Duration,
}

impl Timing {
    const NONE: Timing = Timing {
        wall: Duration::MAX,
        cpu: Duration::MAX,
    };

    fn min(self, other: Timing) -> Timing {
        Timing {
            wall: self.wall.min(other.wall),
            cpu: self.cpu.min(other.cpu),
        }
    }
}

/// Best of `reps` runs of the work, each inside a root span.
fn best_time(rounds: u64, reps: usize) -> Timing {
    (0..reps)
        .map(|_| {
            let span = tracing::info_span!("app_request");
            let _entered = span.enter();
            let (t, c) = (Instant::now(), thread_cpu());
            black_box(app_work(rounds));
            Timing {
                wall: t.elapsed(),
                cpu: thread_cpu() - c,
            }
        })
        .fold(Timing::NONE, Timing::min)
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// What a fault should do to the counters.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    /// Uploads fail: errors counted, nothing accepted meanwhile.
    Failing,
    /// 4xx: failed, and never retried (at most one request per profile).
    FailingNoRetry,
    /// Slow but eventually accepted: the queue fills and drops.
    Slow,
}

fn run_fault(fault: Fault, expect: Expect) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let double = PyroscopeDouble::start();
    let rounds = calibrate(Duration::from_millis(100));
    let before = best_time(rounds, 10);

    double.set_fault(fault);
    let (layer, guard) = tracing_pyroscope::Builder::new("fault-app")
        .server_address(double.url())
        .upload_interval(UPLOAD_INTERVAL)
        .build()
        .expect("profiler starts");
    assert!(guard.is_active());
    let subscriber = tracing_subscriber::registry().with(layer);
    let dispatch = tracing::Dispatch::new(subscriber);

    // Under the fault: the app's work, timed; memory and queue watched.
    let (profiled, rss_early, rss_late) = tracing::dispatcher::with_default(&dispatch, || {
        // Warm up until a few profiles were cut (symbolizer caches filled).
        let mut profiled = Timing::NONE;
        while guard.stats().profiles < 3 {
            profiled = profiled.min(best_time(rounds, 1));
        }
        let rss_early = rss_bytes();
        let until = Instant::now() + FAULT_PERIOD;
        while Instant::now() < until {
            profiled = profiled.min(best_time(rounds, 1));
            let s = guard.stats();
            let waiting = s.profiles.saturating_sub(s.uploads + s.dropped_profiles);
            assert!(
                waiting <= MAX_WAITING,
                "{fault:?}: {waiting} waiting: {s:?}"
            );
        }
        (profiled, rss_early, rss_bytes())
    });
    let during = guard.stats();
    let accepted_during = double.accepted();
    let requests_during = double.received().len() as u64;

    // The server recovers: profiles arrive again.
    double.clear_fault();
    let resumed = tracing::dispatcher::with_default(&dispatch, || {
        wait_until(Duration::from_secs(15), || {
            black_box(best_time(rounds / 4, 1));
            double.accepted() > accepted_during && double.samples().iter().any(|s| s.span_id != 0)
        })
    });
    // The uploader counts a success only after the server has answered.
    wait_until(Duration::from_secs(5), || {
        guard.stats().uploads > during.uploads
    });
    let after_recovery = guard.stats();

    // Fault again, then shut down: bounded.
    double.set_fault(fault);
    tracing::dispatcher::with_default(&dispatch, || black_box(best_time(rounds, 3)));
    let t = Instant::now();
    drop(guard);
    let shutdown = t.elapsed();
    drop(dispatch);

    let after = best_time(rounds, 10);
    let baseline = before.min(after);
    let ratio = |p: Duration, b: Duration| p.as_secs_f64() / b.as_secs_f64();
    let wall_ratio = ratio(profiled.wall, baseline.wall);
    let cpu_ratio = ratio(profiled.cpu, baseline.cpu);
    // Other processes on the machine make wall times noisy; the two
    // unprofiled baselines (before and after) show how noisy.
    let spread = ratio(before.wall.max(after.wall), before.wall.min(after.wall));
    let rss_growth = rss_late as i64 - rss_early as i64;
    eprintln!(
        "FIGURES {fault:?}: work wall {:.1} ms profiled vs {:.1} ms unprofiled (ratio {wall_ratio:.3}, \
         baseline spread {spread:.3}), thread CPU ratio {cpu_ratio:.3}; shutdown {:.0} ms; \
         rss growth under fault {} KiB; during fault: profiles {} uploads {} upload_errors {} \
         dropped {} requests {}; after recovery: uploads {} (double accepted {})",
        profiled.wall.as_secs_f64() * 1e3,
        baseline.wall.as_secs_f64() * 1e3,
        shutdown.as_secs_f64() * 1e3,
        rss_growth / 1024,
        during.profiles,
        during.uploads,
        during.upload_errors,
        during.dropped_profiles,
        requests_during,
        after_recovery.uploads,
        double.accepted(),
    );

    assert!(
        (0.90..=1.10).contains(&cpu_ratio),
        "{fault:?}: the app's work cost {:?} CPU profiled vs {:?} unprofiled",
        profiled.cpu,
        baseline.cpu
    );
    if spread <= 1.05 {
        assert!(
            (0.90..=1.10).contains(&wall_ratio),
            "{fault:?}: the app's work took {:?} profiled vs {:?} unprofiled",
            profiled.wall,
            baseline.wall
        );
    } else {
        eprintln!("{fault:?}: wall-time check skipped: the machine is busy (spread {spread:.3})");
    }
    assert!(
        shutdown <= SHUTDOWN_BOUND + SHUTDOWN_SLACK,
        "{fault:?}: guard drop took {shutdown:?}"
    );
    assert!(
        rss_growth < 8 << 20,
        "{fault:?}: RSS grew {rss_growth} bytes under the fault"
    );
    assert!(during.profiles >= 10, "{fault:?}: {during:?}");
    assert!(resumed, "{fault:?}: no profile accepted after recovery");
    check_with_pprof(&double);
    assert!(after_recovery.uploads > during.uploads, "{fault:?}");
    match expect {
        Expect::Failing | Expect::FailingNoRetry => {
            assert_eq!(accepted_during, 0, "{fault:?}");
            assert_eq!(during.uploads, 0, "{fault:?}");
            assert!(during.upload_errors > 0, "{fault:?}: {during:?}");
            assert!(during.dropped_profiles > 0, "{fault:?}: {during:?}");
        }
        Expect::Slow => {
            assert!(
                during.dropped_profiles > 0,
                "{fault:?}: a slow server must make the bounded queue drop: {during:?}"
            );
        }
    }
    if expect == Expect::FailingNoRetry {
        assert!(
            requests_during <= during.profiles,
            "{fault:?}: {requests_during} requests for {} profiles: 4xx must not be retried",
            during.profiles
        );
    }
}

/// Every profile the double accepted is valid for Google's pprof tool, and
/// some samples carry a `span_id`.
fn check_with_pprof(double: &PyroscopeDouble) {
    let dir = std::env::temp_dir().join(format!("upload-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut with_span = 0;
    for (i, profile) in double.profiles().iter().enumerate() {
        let file = dir.join(format!("{i}.pb.gz"));
        std::fs::write(&file, &profile.raw).unwrap();
        let traces = pprof_tool::traces(&file);
        with_span += traces
            .iter()
            .filter(|t| t.labels.get("span_id").is_some_and(|v| v.len() == 16))
            .count();
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        with_span > 0,
        "no sample with a span_id in what the double got"
    );
}

#[test]
fn server_down() {
    run_fault(Fault::Down, Expect::Failing);
}

#[test]
fn server_refusing_connections() {
    run_fault(Fault::Refuse, Expect::Failing);
}

#[test]
fn server_answering_in_5s() {
    run_fault(Fault::Delay(Duration::from_secs(5)), Expect::Slow);
}

#[test]
fn server_500() {
    run_fault(Fault::Status(500), Expect::Failing);
}

#[test]
fn server_429_with_retry_after() {
    run_fault(
        Fault::TooManyRequests {
            retry_after_secs: 1,
        },
        Expect::Failing,
    );
}

#[test]
fn server_413() {
    run_fault(Fault::Status(413), Expect::FailingNoRetry);
}

#[test]
fn server_400() {
    run_fault(Fault::Status(400), Expect::FailingNoRetry);
}
