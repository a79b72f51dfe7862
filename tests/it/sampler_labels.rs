//! The sampler labels each sample with the span slot's value at the moment
//! the sample is taken, and samples threads in proportion to their own CPU
//! time. Checked end to end: public API → pprof files → Google's pprof tool.

use crate::cpu_clock;
use crate::pprof_tool;

use cpu_clock::thread_cpu_nanos;
use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use tracing_pyroscope::context;

/// Serialises the tests: one profiler per process.
static ONE_PROFILER: Mutex<()> = Mutex::new(());

/// Spins for `nanos` of this thread's CPU time. `salt` keeps the callers'
/// code distinct, so the linker cannot fold them into one function.
#[inline(always)]
fn spin(nanos: u64, salt: u64) -> u64 {
    let end = thread_cpu_nanos() + nanos;
    let mut x = salt;
    while thread_cpu_nanos() < end {
        for _ in 0..2000 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(salt));
        }
    }
    x
}

#[inline(never)]
fn burn_alpha(nanos: u64) -> u64 {
    black_box(spin(nanos, 11))
}
#[inline(never)]
fn burn_beta(nanos: u64) -> u64 {
    black_box(spin(nanos, 13))
}
#[inline(never)]
fn burn_gamma(nanos: u64) -> u64 {
    black_box(spin(nanos, 17))
}
#[inline(never)]
fn unlabelled_gap(nanos: u64) -> u64 {
    black_box(spin(nanos, 19))
}

/// A burn function and its name.
type Burner = (&'static str, fn(u64) -> u64);

const FUNCS: [Burner; 3] = [
    ("burn_alpha", burn_alpha),
    ("burn_beta", burn_beta),
    ("burn_gamma", burn_gamma),
];

fn start(
    dir: &Path,
    rate: u32,
) -> (
    tracing_pyroscope::SpanProfileLayer,
    tracing_pyroscope::ProfilerGuard,
) {
    tracing_pyroscope::Builder::new("sampler-test")
        .profiles_dir(dir)
        .sample_rate(rate)
        .upload_interval(Duration::from_secs(1))
        // Samples are marked with `func` (which burn function) and
        // `thread`, through the public `context::with_labels`.
        .span_labels(["func", "thread"])
        .max_span_names(500)
        .max_span_label_values(500)
        .build()
        .expect("start profiler")
}

fn all_traces(dir: &Path) -> Vec<pprof_tool::Trace> {
    let files = pprof_tool::profile_files(dir);
    assert!(!files.is_empty(), "no profile written");
    files.iter().flat_map(|f| pprof_tool::traces(f)).collect()
}

#[test]
fn labels_are_exact_at_sample_time() {
    isolated!();
    let _one = ONE_PROFILER.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempdir("labels");
    let rate = 1000;
    let (_layer, guard) = start(&dir, rate);

    let threads = 4u64;
    let cpu = Arc::new(Mutex::new(0u64));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let cpu = cpu.clone();
            std::thread::spawn(move || {
                let begin = thread_cpu_nanos();
                for round in 0..300usize {
                    let f = (round + t as usize) % 3;
                    let thread = t.to_string();
                    context::with_labels(&[("func", FUNCS[f].0), ("thread", &thread)], || {
                        (FUNCS[f].1)(3_000_000);
                    });
                    unlabelled_gap(300_000);
                }
                *cpu.lock().unwrap() += thread_cpu_nanos() - begin;
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    drop(guard);

    let traces = all_traces(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    // For each burn function: who carries which label.
    let mut by_func: HashMap<&str, (u64, u64)> = HashMap::new(); // (right label, total)
    let mut total = 0u64;
    for tr in &traces {
        total += tr.count;
        for (name, _) in &FUNCS {
            if tr.frames.iter().any(|fr| fr.contains(name)) {
                let e = by_func.entry(name).or_default();
                e.1 += tr.count;
                let right = tr.labels.get("func").map(String::as_str) == Some(*name)
                    && tr.labels.contains_key("thread");
                if right {
                    e.0 += tr.count;
                }
            }
        }
        if tr.frames.iter().any(|fr| fr.contains("unlabelled_gap")) {
            assert!(
                !tr.labels.contains_key("func") && !tr.labels.contains_key("thread"),
                "unlabelled work carries a span label: {tr:?}"
            );
        }
    }
    let expected = *cpu.lock().unwrap() * rate as u64 / 1_000_000_000;
    for (name, _) in FUNCS {
        let (right, all) = by_func.get(name).copied().unwrap_or_default();
        let share = right as f64 / all.max(1) as f64;
        println!(
            "{name}: {right}/{all} samples carry its label ({:.2}%)",
            share * 100.0
        );
        assert!(all > 500, "too few samples in {name}: {all}");
        // Label and stack are read at the same instant, by the handler on
        // the interrupted thread: every sample is right, not most.
        assert_eq!(
            right,
            all,
            "{name}: only {:.2}% labelled right",
            share * 100.0
        );
    }
    let coverage = total as f64 / expected as f64;
    println!(
        "samples {total} / expected {expected} = {:.1}%",
        coverage * 100.0
    );
    assert!(
        coverage >= 0.90,
        "only {:.1}% of expected samples",
        coverage * 100.0
    );
}

#[test]
fn busy_threads_are_sampled_in_proportion_to_their_cpu_time() {
    isolated!();
    let _one = ONE_PROFILER.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempdir("threads");
    let rate = 100;
    let threads: u64 = std::env::var("SAMPLER_TEST_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    // Threads exist before the profiler starts, and burn after it started.
    let barrier = Arc::new(Barrier::new(threads as usize + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let begin = thread_cpu_nanos();
                context::with_labels(&[("thread", &t.to_string())], || {
                    burn_alpha(1_000_000_000 + t * 100_000_000);
                });
                thread_cpu_nanos() - begin
            })
        })
        .collect();
    let (_layer, guard) = start(&dir, rate);
    barrier.wait();
    let cpu: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    println!("before stop: {:?}", guard.stats());
    drop(guard);

    let mut counts: HashMap<u64, u64> = HashMap::new();
    let traces = all_traces(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    for tr in traces {
        if let Some(t) = tr.labels.get("thread") {
            *counts.entry(t.parse().unwrap()).or_default() += tr.count;
        }
    }
    for t in 0..threads {
        let expected = cpu[t as usize] as f64 * rate as f64 / 1e9;
        let got = counts.get(&t).copied().unwrap_or(0) as f64;
        println!(
            "thread {t}: {got} samples, expected {expected:.1} ({:+.1}%)",
            (got / expected - 1.0) * 100.0
        );
        assert!(
            (got - expected).abs() <= expected * 0.10,
            "thread {t}: {got} samples vs {expected:.1} expected"
        );
    }
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tracing-pyroscope-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
