//! No sample is lost at scale: many busy threads at 1000 Hz, across the
//! collector's first profile (which loads the binary's debug info, the
//! slowest thing it ever does), give `dropped_samples == 0`.
//!
//! The issue asks for 24 busy threads over a 10 s interval. CPU-time timers
//! fire in proportion to CPU time, so the sample rate is bounded by the
//! CPUs, not the threads: on a 2-core machine 24 busy threads give at most
//! about 2000 samples per second, whatever their number. The default here
//! is 24 threads for 5 s with a 1 s upload interval (so the run spans the
//! first debug-info load and several encodes); `SAMPLER_TEST_THREADS` and
//! `SAMPLER_TEST_SECONDS` change it.

use crate::cpu_clock;
use crate::pprof_tool;

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cpu_clock::thread_cpu_nanos;
use tracing_pyroscope::context;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[inline(never)]
fn busy(stop: &AtomicBool, salt: u64) -> u64 {
    let mut x = salt;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..10_000 {
            x = black_box(
                x.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .rotate_left(salt as u32 % 63 + 1),
            );
        }
    }
    x
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "an unoptimized collector reads debug info too slowly for the run to span its first profiles; scripts/test.sh runs it in release"
)]
fn no_sample_is_dropped_with_many_busy_threads_across_the_first_debug_info_load() {
    isolated!();
    let threads = env_or("SAMPLER_TEST_THREADS", 24);
    let seconds = env_or("SAMPLER_TEST_SECONDS", 5);
    let dir = std::env::temp_dir().join(format!("tracing-pyroscope-scale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (_layer, guard) = tracing_pyroscope::Builder::new("scale-test")
        .profiles_dir(&dir)
        .sample_rate(1000)
        .upload_interval(Duration::from_secs(1))
        .span_labels(["mark"])
        .build()
        .expect("start profiler");
    let stop = Arc::new(AtomicBool::new(false));
    let cpu = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let stop = stop.clone();
            let cpu = cpu.clone();
            std::thread::spawn(move || {
                let begin = thread_cpu_nanos();
                context::with_labels(&[("mark", "scale")], || {
                    black_box(busy(&stop, t));
                });
                cpu.fetch_add(thread_cpu_nanos() - begin, Ordering::Relaxed);
            })
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    let elapsed = started.elapsed();
    // Two collector drains after the last sample.
    std::thread::sleep(Duration::from_millis(300));
    let stats = guard.stats();
    drop(guard);
    // Timer periods recorded for the busy threads, read back from the
    // profiles (a signal stands for 1 + its timer's overruns).
    let mut periods = 0u64;
    for file in pprof_tool::profile_files(&dir) {
        for tr in pprof_tool::traces(&file) {
            let ours = tr.labels.get("mark").is_some_and(|v| v == "scale");
            if ours {
                periods += tr.count;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let cpu_seconds = cpu.load(Ordering::Relaxed) as f64 / 1e9;
    let coverage = periods as f64 / (cpu_seconds * 1000.0);
    println!(
        "{threads} threads, {:.1} s, {cpu_seconds:.2} CPU-s: {} signals ({:.0}/s) for {periods} periods ({:.1}% of CPU time), {} dropped, {} profiles; {stats:?}",
        elapsed.as_secs_f64(),
        stats.samples,
        stats.samples as f64 / elapsed.as_secs_f64(),
        coverage * 100.0,
        stats.dropped_samples,
        stats.profiles,
    );
    assert!(
        stats.profiles >= 2,
        "the run did not span the first profiles: {stats:?}"
    );
    assert_eq!(stats.dropped_samples, 0, "samples were lost: {stats:?}");
    assert!(
        coverage >= 0.9,
        "profiles hold {:.1}% of the threads' CPU time",
        coverage * 100.0
    );
}
