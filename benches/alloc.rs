//! Cost of the allocator wrapper, against the bare system allocator in the
//! same run.
//!
//! - `alloc+free 64 B`: `System` directly, against the wrapper (the global
//!   allocator here) inert (no profiler) and with allocation and heap
//!   profiling on at the default 512 KiB distance (the average over
//!   sampled and unsampled calls). Targets: inert ≤ 1.05×, on ≤ 1.15× or
//!   ≤ +2 ns.
//! - `malloc-heavy`: 8 threads building and dropping `Vec`s (grown element
//!   by element) and `String`s (`format!`), process CPU time, with a
//!   profiler sampling CPU only against one also profiling allocations and
//!   the live heap. Target: ≤ +2 % CPU. `bulk` allocates far more bytes
//!   per CPU-second (vectors filled at once): the sampler's cost is per
//!   byte allocated, so this is its worst case.
//!
//! The machine is shared, so the 64 B figures are each kind's minimum over
//! interleaved rounds, and the multi-threaded ones come from 20 pairs of
//! runs in alternating order (the profiler started and stopped between
//! runs), each timed in its steady state (threads and profiler started,
//! each thread's first sample taken) and whole: fastest against fastest,
//! lower quartile against lower quartile, and the median pair; a criterion
//! group follows for the 64 B case.
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

fn profiler(allocations: bool, heap: bool) -> ProfilerGuard {
    let dir = std::env::temp_dir().join(format!(
        "tracing-pyroscope-bench-alloc-{}",
        std::process::id()
    ));
    let (_layer, guard) = tracing_pyroscope::Builder::new("bench-alloc")
        .profiles_dir(&dir)
        .allocations(allocations)
        .heap(allocations && heap)
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
/// process CPU time it took, whole and in the steady state: after each
/// thread's first eighth of the rounds (thread start, each thread's first
/// sample, the profiler's own start-up work), all threads past it.
/// `bulk`: each round instead fills one vector of up to 4 KiB at once
/// (about 10 GB of allocation per CPU-second, the most a sampler pays for:
/// its cost is per byte allocated).
fn malloc_heavy(rounds: u64, bulk: bool) -> (Duration, Duration) {
    const THREADS: usize = 8;
    let start = cpu_time();
    let warm = std::sync::Barrier::new(THREADS + 1);
    let mut steady_start = start;
    std::thread::scope(|s| {
        for t in 0..THREADS as u64 {
            let warm = &warm;
            s.spawn(move || {
                let mut x = t.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                let mut keep: Vec<Vec<u64>> = Vec::with_capacity(64);
                for i in 0..rounds {
                    if i == rounds / 8 {
                        warm.wait();
                    }
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let n = (x % 512) as usize + 1;
                    let v: Vec<u64> = if bulk {
                        (0..n as u64).collect()
                    } else {
                        // Grown element by element, as most code does.
                        let mut v = Vec::new();
                        for j in 0..(n / 8) as u64 {
                            v.push(j ^ x);
                        }
                        v
                    };
                    let mut names: Vec<String> = Vec::new();
                    for j in 0..if bulk { 1 } else { 8 } {
                        names.push(format!("order-{i}-{j}-{}", v.len()));
                    }
                    black_box(names.iter().map(String::len).sum::<usize>());
                    if keep.len() == 64 {
                        keep.swap_remove((x % 64) as usize);
                    }
                    keep.push(v);
                }
                black_box(keep.len());
            });
        }
        warm.wait();
        steady_start = cpu_time();
    });
    let end = cpu_time();
    (end - start, end - steady_start)
}

/// The `q` quantile (0 to 1) of `v` (sorted in place).
fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// What [`heavy_pairs`] measured: allocation profiling's CPU against CPU
/// profiling only, as ratios, in the steady state.
struct Heavy {
    /// Fastest run against fastest run.
    min: f64,
    /// Lower quartile against lower quartile.
    q25: f64,
    /// The median of the pairs' ratios.
    pairs: f64,
    /// Total CPU, off and on, whole runs (start-up included).
    whole: (f64, f64),
}

/// Multi-threaded workload `bulk` with CPU profiling only against
/// allocation profiling (and the live heap if `heap`): `PAIRS` pairs of
/// runs, their order alternating (ABBA) so that drift cancels.
/// Interference on a shared machine only ever adds CPU, so the fastest
/// runs and the lower quartiles are what it moves least.
fn heavy_pairs(bulk: bool, heap: bool) -> Heavy {
    const PAIRS: usize = 20;
    const ROUNDS: u64 = 100_000;
    let (mut off, mut on, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut whole = (0.0, 0.0);
    let run = |allocations: bool| {
        let guard = profiler(allocations, heap);
        let (whole, steady) = malloc_heavy(ROUNDS, bulk);
        drop(guard);
        (whole.as_secs_f64(), steady.as_secs_f64())
    };
    for i in 0..PAIRS {
        let (a, b) = if i % 2 == 0 {
            let a = run(false);
            (a, run(true))
        } else {
            let b = run(true);
            (run(false), b)
        };
        if std::env::var_os("ALLOC_BENCH_VERBOSE").is_some() {
            eprintln!(
                "pair {i}: off {:.4} s ({:.4} s whole), on {:.4} s ({:.4} s whole)",
                a.1, a.0, b.1, b.0
            );
        }
        whole.0 += a.0;
        whole.1 += b.0;
        off.push(a.1);
        on.push(b.1);
        ratios.push(b.1 / a.1);
    }
    Heavy {
        min: quantile(&mut on, 0.0) / quantile(&mut off, 0.0),
        q25: quantile(&mut on, 0.25) / quantile(&mut off, 0.25),
        pairs: quantile(&mut ratios, 0.5),
        whole,
    }
}

fn interleaved() {
    // Short alternating runs: the minimum of each is what interference
    // on a shared machine barely moves.
    const PAIRS: u64 = 500_000;
    const ALTERNATIONS: usize = 10;
    const ROUNDS: usize = 8;
    let mut best = [f64::MAX; 4];
    for _ in 0..ROUNDS {
        for _ in 0..ALTERNATIONS {
            best[0] = best[0].min(time_pairs(&System, PAIRS));
            best[1] = best[1].min(time_pairs(&GLOBAL, PAIRS));
        }
        let guard = profiler(true, true);
        for _ in 0..ALTERNATIONS {
            best[2] = best[2].min(time_pairs(&System, PAIRS));
            best[3] = best[3].min(time_pairs(&GLOBAL, PAIRS));
        }
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
    for (name, bulk, heap) in [
        ("malloc-heavy, allocation profiling", false, false),
        ("malloc-heavy, allocation+heap profiling", false, true),
        (
            "bulk (up to 4 KiB filled at once), allocation+heap profiling",
            true,
            true,
        ),
    ] {
        let h = heavy_pairs(bulk, heap);
        let pct = |r: f64| (r - 1.0) * 100.0;
        println!(
            "{name} against CPU profiling only, 8 threads, process CPU in the steady state over 20 ABBA pairs: \
             fastest {:+.2}%, lower quartile {:+.2}%, median pair {:+.2}% (whole runs, start-up included: {:.3} s and {:.3} s, {:+.2}%)",
            pct(h.min),
            pct(h.q25),
            pct(h.pairs),
            h.whole.0,
            h.whole.1,
            pct(h.whole.1 / h.whole.0)
        );
    }
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
    let guard = profiler(true, true);
    group.bench_function("system, profiling on", |b| b.iter(|| pair(&System)));
    group.bench_function("wrapper, allocation+heap profiling", |b| {
        b.iter(|| pair(&GLOBAL))
    });
    drop(guard);
    group.finish();
    c.final_summary();
}
