//! Cost of the allocator wrapper, against the bare system allocator in the
//! same run.
//!
//! - `alloc+free 64 B`: `System` directly, against the wrapper (the global
//!   allocator here) inert (no profiler) and with allocation and heap
//!   profiling on at the default 512 KiB distance (the average over
//!   sampled and unsampled calls). Targets: inert ≤ 1.05×, on ≤ 1.15× or
//!   ≤ +2 ns.
//! - `malloc-heavy`: 8 threads building and dropping `Vec`s and `String`s
//!   of mixed sizes, process CPU time, with a profiler sampling CPU only
//!   against one also profiling allocations and the live heap. Target:
//!   ≤ +2 % CPU.
//!
//! The machine is shared, so the figures come from interleaved rounds (the
//! profiler started and stopped between them), each kind's minimum; a
//! criterion group follows for the 64 B case.
//!
//! ```text
//! cargo bench --bench alloc -- --warm-up-time 1 --measurement-time 3
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use tracing_pyroscope::{Allocator, ProfilerGuard};

#[global_allocator]
static GLOBAL: Allocator = Allocator::system();

const LAYOUT: Layout = match Layout::from_size_align(64, 8) {
    Ok(l) => l,
    Err(_) => panic!("layout"),
};

#[inline(always)]
fn pair<A: GlobalAlloc>(a: &A) {
    // SAFETY: a non-zero layout; the block is freed with the same layout.
    unsafe {
        let p = a.alloc(LAYOUT);
        black_box(p);
        a.dealloc(p, LAYOUT);
    }
}

/// Nanoseconds per alloc+free pair over `n` pairs.
fn time_pairs<A: GlobalAlloc>(a: &A, n: u64) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        pair(a);
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn profiler(allocations: bool) -> ProfilerGuard {
    let dir = std::env::temp_dir().join(format!("tracing-pyroscope-bench-alloc-{}", std::process::id()));
    let (_layer, guard) = tracing_pyroscope::Builder::new("bench-alloc")
        .profiles_dir(&dir)
        .allocations(allocations)
        .heap(allocations)
        .upload_interval(Duration::from_secs(1))
        .build()
        .expect("profiler");
    guard
}

/// This process's CPU time.
fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// 8 threads building and dropping vectors and strings; returns the
/// process CPU time it took.
fn malloc_heavy(rounds: u64) -> Duration {
    let start = cpu_time();
    std::thread::scope(|s| {
        for t in 0..8u64 {
            s.spawn(move || {
                let mut x = t.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                let mut keep: Vec<Vec<u64>> = Vec::with_capacity(64);
                for i in 0..rounds {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let n = (x % 512) as usize + 1;
                    let v: Vec<u64> = (0..n as u64).collect();
                    let text = format!("order-{i}-{}", v.len());
                    black_box(text.len());
                    if keep.len() == 64 {
                        keep.swap_remove((x % 64) as usize);
                    }
                    keep.push(v);
                }
                black_box(keep.len());
            });
        }
    });
    cpu_time() - start
}

fn interleaved() {
    const PAIRS: u64 = 5_000_000;
    const ROUNDS: usize = 8;
    const HEAVY: u64 = 200_000;
    let mut best = [f64::MAX; 4];
    let mut heavy = [Duration::MAX; 2];
    for _ in 0..ROUNDS {
        best[0] = best[0].min(time_pairs(&System, PAIRS));
        best[1] = best[1].min(time_pairs(&GLOBAL, PAIRS));
        let guard = profiler(false);
        heavy[0] = heavy[0].min(malloc_heavy(HEAVY));
        drop(guard);
        let guard = profiler(true);
        best[2] = best[2].min(time_pairs(&System, PAIRS));
        best[3] = best[3].min(time_pairs(&GLOBAL, PAIRS));
        heavy[1] = heavy[1].min(malloc_heavy(HEAVY));
        drop(guard);
    }
    println!(
        "alloc+free 64 B: system {:.2} ns, wrapper inert {:.2} ns ({:.3}x)",
        best[0],
        best[1],
        best[1] / best[0]
    );
    println!(
        "alloc+free 64 B, allocation+heap profiling on: system {:.2} ns, wrapper {:.2} ns ({:.3}x, {:+.2} ns)",
        best[2],
        best[3],
        best[3] / best[2],
        best[3] - best[2]
    );
    println!(
        "malloc-heavy, 8 threads: CPU profiling only {:.3} s, with allocation+heap profiling {:.3} s ({:+.2}%)",
        heavy[0].as_secs_f64(),
        heavy[1].as_secs_f64(),
        (heavy[1].as_secs_f64() / heavy[0].as_secs_f64() - 1.0) * 100.0
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    // Not when cargo only checks that the benches run (`--test`, `--list`).
    if !std::env::args().any(|a| a == "--test" || a == "--list") {
        interleaved();
    }
    let mut group = c.benchmark_group("alloc+free 64 B");
    group.bench_function("system", |b| b.iter(|| pair(&System)));
    group.bench_function("wrapper inert", |b| b.iter(|| pair(&GLOBAL)));
    let guard = profiler(true);
    group.bench_function("system, profiling on", |b| b.iter(|| pair(&System)));
    group.bench_function("wrapper, allocation+heap profiling", |b| {
        b.iter(|| pair(&GLOBAL))
    });
    drop(guard);
    group.finish();
    c.final_summary();
}
