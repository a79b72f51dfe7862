//! The main thread is sampled with deep stacks. Its stack (`[stack]`) is the
//! one the kernel grows on demand: a deep recursion grows it past the maps
//! snapshot taken at start, and samples there must still be unwound all
//! the way to `main` once the manager has read the maps again.
//!
//! Runs without the test harness (`harness = false`), so that the work
//! happens on the process's real main thread.

mod cpu_clock;
mod pprof_tool;

use std::hint::black_box;
use std::time::Duration;

use cpu_clock::thread_cpu_nanos;
use tracing_pyroscope::context;

/// Recursion depth: with 8 KiB frames, about 1.6 MiB of main stack, far
/// beyond what the kernel mapped at start.
const DEPTH: u32 = 200;

#[inline(never)]
fn deep(level: u32, nanos: u64) -> u64 {
    let mut pad = [0u8; 8192];
    black_box(&mut pad);
    if level == 0 {
        return at_the_bottom(nanos);
    }
    black_box(deep(level - 1, nanos)) ^ u64::from(pad[level as usize % 8192])
}

#[inline(never)]
fn at_the_bottom(nanos: u64) -> u64 {
    let end = thread_cpu_nanos() + nanos;
    let mut x = 3u64;
    while thread_cpu_nanos() < end {
        for _ in 0..1000 {
            x = black_box(x.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(5));
        }
    }
    x
}

fn main() {
    let dir = std::env::temp_dir().join(format!(
        "tracing-pyroscope-main-thread-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let (_layer, guard) = tracing_pyroscope::Builder::new("main-thread-test")
        .profiles_dir(&dir)
        .sample_rate(1000)
        .upload_interval(Duration::from_secs(60))
        .span_labels(["mark"])
        .build()
        .expect("start profiler");
    // Let the profiler's own threads start and be scanned first, so that
    // only the stack's growth can make the maps snapshot stale.
    std::thread::sleep(Duration::from_millis(300));
    context::with_labels(&[("mark", "main")], || {
        black_box(deep(DEPTH, 1_000_000_000));
    });
    drop(guard);

    let (mut at_bottom, mut deep_and_rooted) = (0u64, 0u64);
    for file in pprof_tool::profile_files(&dir) {
        for tr in pprof_tool::traces(&file) {
            if tr.labels.get("mark").map(String::as_str) != Some("main")
                || !tr.frames.iter().any(|f| f.contains("at_the_bottom"))
            {
                continue;
            }
            at_bottom += tr.count;
            let levels = tr.frames.iter().filter(|f| f.ends_with("::deep")).count();
            let rooted = tr
                .frames
                .iter()
                .any(|f| f.ends_with("sampler_main_thread::main"));
            if levels > DEPTH as usize && rooted {
                deep_and_rooted += tr.count;
            } else if deep_and_rooted == 0 {
                println!(
                    "shallow: {} frames, {levels} levels of deep()",
                    tr.frames.len()
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let share = deep_and_rooted as f64 / at_bottom.max(1) as f64;
    println!(
        "main thread: {deep_and_rooted}/{at_bottom} samples at the bottom of {DEPTH} levels unwound to main ({:.1}%)",
        share * 100.0
    );
    assert!(
        at_bottom >= 500,
        "too few samples on the main thread: {at_bottom}"
    );
    // The first samples after the stack grew past the snapshot keep the leaf
    // only, until the manager's next scan reads the maps again.
    assert!(share >= 0.95, "only {:.1}% unwound", share * 100.0);
    println!("test main_thread_is_sampled_with_deep_stacks ... ok");
}
