//! Measures the CPU overhead of profiling a CPU-bound workload at 100 Hz
//! against the same workload unprofiled, interleaved in one run.
//!
//! ```text
//! cargo run --release --example overhead -- [ROUNDS] [SECONDS_PER_RUN] [THREADS] [INTERVAL_SECONDS]
//! ```
//!
//! Each round runs the same fixed amount of work twice, once with profiling
//! off and once on (a local profiles directory, the default 100 Hz, a
//! profile encoded every `INTERVAL_SECONDS`, default 1, so encoding and
//! symbolization happen inside the measured window), in alternating order. It prints the median wall
//! time of the work, the process CPU time (which includes the profiler's own
//! threads), and the process CPU time including the profiler's start and its
//! final flush (dropping the guard), with their ratios. Both runs create and
//! enter the same spans under a `tracing_subscriber::Registry`; the profiled
//! run adds the profiling layer.

use std::hint::black_box;
use std::time::{Duration, Instant};

use tracing::Dispatch;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::Registry;

/// The CPU time of clock `clock` (this process's or this thread's).
fn cpu_time(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn process_cpu() -> Duration {
    cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// CPU time of this process's profiler threads, by thread name
/// (`pyroscope-*`), from `/proc/self/task/*/schedstat`.
fn profiler_threads_cpu() -> Vec<(String, Duration)> {
    let mut out: Vec<(String, Duration)> = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let name = name.trim();
        if !name.starts_with("pyroscope-") {
            continue;
        }
        let ns: u64 = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, d)) => *d += Duration::from_nanos(ns),
            None => out.push((name.to_string(), Duration::from_nanos(ns))),
        }
    }
    out.sort();
    out
}

fn thread_cpu() -> Duration {
    cpu_time(libc::CLOCK_THREAD_CPUTIME_ID)
}

#[inline(never)]
fn work_unit(seed: u64) -> u64 {
    let mut x = seed | 1;
    for _ in 0..20_000 {
        x = black_box(x.wrapping_mul(0x5851_F42D_4C95_7F2D).rotate_left(17) ^ seed);
    }
    x
}

/// The fixed workload: `units` units, a new root span every 16 units as a
/// traced service would, under `dispatch`.
/// Returns the CPU time its threads used (the work, plus what the layer
/// and the signal handler cost on them).
fn workload(units: u64, threads: u64, dispatch: &Dispatch) -> Duration {
    let per_thread = units / threads;
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(move || {
                    tracing::dispatcher::with_default(dispatch, || {
                        let mut acc = 0u64;
                        let mut span = None;
                        for i in 0..per_thread {
                            if i % 16 == 0 {
                                // Exit the previous span first: each is a root.
                                drop(span.take());
                                span = Some(tracing::info_span!("overhead").entered());
                            }
                            acc ^= work_unit(i);
                        }
                        drop(span);
                        black_box(acc);
                    });
                    thread_cpu()
                })
            })
            .collect();
        workers.into_iter().filter_map(|w| w.join().ok()).sum()
    })
}

/// The subscriber of a run: the Registry, with the profiling layer if any.
fn dispatch(layer: Option<tracing_pyroscope::SpanProfileLayer>) -> Dispatch {
    match layer {
        Some(layer) => Dispatch::new(Registry::default().with(layer)),
        None => Dispatch::new(Registry::default()),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(7);
    let seconds: f64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2.0);
    let threads: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1);
    let interval: f64 = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(1.0);
    let dir =
        std::env::temp_dir().join(format!("tracing-pyroscope-overhead-{}", std::process::id()));

    // Calibrate the number of units for the requested duration.
    let t = Instant::now();
    workload(2000 * threads, threads, &dispatch(None));
    let per_unit = t.elapsed().as_secs_f64() / (2000 * threads) as f64;
    let units = ((seconds / per_unit) as u64).max(threads) * threads.min(2) / threads.min(2);

    // The first profiler in a process loads the binary's debug info for
    // symbolization; that one-time cost is reported on its own.
    let c = process_cpu();
    let (layer, guard) = tracing_pyroscope::Builder::new("overhead")
        .profiles_dir(&dir)
        .build()
        .expect("start profiler");
    workload(2000 * threads, threads, &dispatch(Some(layer)));
    drop(guard);
    let cold_ms = (process_cpu() - c).as_secs_f64() * 1e3;

    let (mut wall_off, mut wall_on, mut cpu_off, mut cpu_on) = (vec![], vec![], vec![], vec![]);
    let mut cpu_on_all = vec![];
    let (mut workers_off, mut workers_on) = (vec![], vec![]);
    let mut samples = 0;
    // Per profiler thread: its CPU during each profiled run's window.
    let mut threads_on: Vec<(String, Vec<f64>)> = Vec::new();
    for round in 0..rounds {
        for profiled in [round % 2 == 0, round % 2 != 0] {
            let c_start = process_cpu();
            let guard = profiled.then(|| {
                tracing_pyroscope::Builder::new("overhead")
                    .profiles_dir(&dir)
                    .sample_rate(100)
                    .upload_interval(Duration::from_secs_f64(interval))
                    .build()
                    .expect("start profiler")
            });
            let (layer, guard) = guard.map_or((None, None), |(l, g)| (Some(l), Some(g)));
            let dispatch = dispatch(layer);
            let before = profiler_threads_cpu();
            let (c0, t0) = (process_cpu(), Instant::now());
            let workers = workload(units, threads, &dispatch).as_secs_f64();
            let (wall, cpu) = (
                t0.elapsed().as_secs_f64(),
                (process_cpu() - c0).as_secs_f64(),
            );
            if profiled {
                for (name, after) in profiler_threads_cpu() {
                    let start = before.iter().find(|(n, _)| *n == name).map(|(_, d)| *d);
                    let used = after
                        .saturating_sub(start.unwrap_or_default())
                        .as_secs_f64();
                    match threads_on.iter_mut().find(|(n, _)| *n == name) {
                        Some((_, v)) => v.push(used),
                        None => threads_on.push((name, vec![used])),
                    }
                }
            }
            drop(dispatch);
            if let Some(guard) = guard {
                samples += guard.stats().samples;
                drop(guard);
                cpu_on_all.push((process_cpu() - c_start).as_secs_f64());
                wall_on.push(wall);
                cpu_on.push(cpu);
                workers_on.push(workers);
            } else {
                wall_off.push(wall);
                cpu_off.push(cpu);
                workers_off.push(workers);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (wo, wn) = (median(wall_off), median(wall_on));
    let (co, cn, ca) = (median(cpu_off), median(cpu_on), median(cpu_on_all));
    let pct = |on: f64, off: f64| (on / off - 1.0) * 100.0;
    println!(
        "workload: {units} units on {threads} thread(s), {rounds} rounds, \
         profiling at 100 Hz, a profile every {interval} s ({samples} samples taken)"
    );
    println!("first profiler start in this process (loads debug info): {cold_ms:.0} ms CPU, once");
    println!(
        "wall  off {wo:.3} s  on {wn:.3} s  ratio {:.4} ({:+.2}%)",
        wn / wo,
        pct(wn, wo)
    );
    println!(
        "cpu   off {co:.3} s  on {cn:.3} s  ratio {:.4} ({:+.2}%)",
        cn / co,
        pct(cn, co)
    );
    let (wko, wkn) = (median(workers_off), median(workers_on));
    println!(
        "  of which the workload's threads (layer and signal handler): off {wko:.3} s  on {wkn:.3} s  ({:+.2}%)",
        pct(wkn, wko)
    );
    for (name, used) in threads_on {
        let m = median(used);
        println!(
            "  of which thread {name}: {:.1} ms a run ({:.2}% of cpu off)",
            m * 1e3,
            m / co * 100.0
        );
    }
    println!(
        "cpu incl. profiler start and final flush: on {ca:.3} s  ratio {:.4} ({:+.2}%)",
        ca / co,
        pct(ca, co)
    );
}
