//! A span's time adds up, end to end through Google's pprof tool: at
//! 1000 Hz with wall time on, a CPU-bound span's wall time is its CPU time
//! (±5%, leaving out `[runnable]` time spent waiting for a CPU), and a span that burns CPU, then sleeps (blocked), then awaits a
//! tokio timer (awaiting) has wall time summing to its duration (±5%),
//! each part in its place.

use crate::wall_blocked::{wall_profiler, wall_traces};

use crate::cpu_clock::thread_cpu_nanos;
use std::time::{Duration, Instant};

use tracing::Instrument;

burners!(wall_sums_burn = 0x5a11);

#[test]
fn cpu_blocked_and_awaiting_add_up_to_the_span() {
    isolated!();
    let (dir, guard) = wall_profiler("wall-sums");

    // CPU-bound: its wall time is its CPU time.
    let cpu_start = thread_cpu_nanos();
    tracing::info_span!("wall_sums_busy").in_scope(|| wall_sums_burn(200_000_000));
    let busy_cpu = (thread_cpu_nanos() - cpu_start) as f64;

    // Mixed: 100 ms of CPU, a 100 ms sleep, a 100 ms await.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let started = Instant::now();
    runtime.block_on(
        async {
            wall_sums_burn(100_000_000);
            std::thread::sleep(Duration::from_millis(100));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        .instrument(tracing::info_span!("wall_sums_mixed")),
    );
    let mixed_duration = started.elapsed().as_nanos() as f64;
    drop(runtime);
    drop(guard);

    let traces = wall_traces(&dir);
    let sum = |span: &str, part: &dyn Fn(&str) -> bool| -> f64 {
        traces
            .iter()
            .filter(|t| t.labels.get("span_name").map(String::as_str) == Some(span))
            .filter(|t| part(t.frames.first().map_or("", String::as_str)))
            .map(|t| t.count as f64)
            .sum()
    };
    let any = |_: &str| true;
    let blocked = |leaf: &str| leaf.starts_with("[blocked");
    let runnable = |leaf: &str| leaf == "[runnable]";
    let awaiting = |leaf: &str| leaf == "[awaiting]";
    // Everything else is a CPU sample's stack (its leaf may be `[vdso]`:
    // the burn reads the thread's CPU clock).
    let running = |leaf: &str| !(blocked(leaf) || runnable(leaf) || awaiting(leaf));
    let ms = |n: f64| n / 1e6;

    // Time it waited for a CPU on a loaded machine is wall time too, but
    // not the CPU's: compare the rest.
    let busy_runnable = sum("wall_sums_busy", &|leaf: &str| leaf == "[runnable]");
    let busy_wall = sum("wall_sums_busy", &any) - busy_runnable;
    println!(
        "busy: wall {:.1} ms (and {:.1} ms runnable), CPU {:.1} ms",
        ms(busy_wall),
        ms(busy_runnable),
        ms(busy_cpu)
    );
    assert!(
        (busy_wall / busy_cpu - 1.0).abs() <= 0.05,
        "a CPU-bound span: wall {:.1} ms against CPU {:.1} ms",
        ms(busy_wall),
        ms(busy_cpu)
    );

    let parts = [
        sum("wall_sums_mixed", &running),
        sum("wall_sums_mixed", &blocked),
        sum("wall_sums_mixed", &awaiting),
    ];
    let waiting_for_cpu = sum("wall_sums_mixed", &runnable);
    let total = sum("wall_sums_mixed", &any);
    println!(
        "mixed: running {:.1} ms, blocked {:.1} ms, awaiting {:.1} ms, runnable {:.1} ms, sum {:.1} ms, duration {:.1} ms",
        ms(parts[0]),
        ms(parts[1]),
        ms(parts[2]),
        ms(waiting_for_cpu),
        ms(total),
        ms(mixed_duration)
    );
    assert!(
        (total / mixed_duration - 1.0).abs() <= 0.05,
        "a mixed span: wall {:.1} ms against its {:.1} ms",
        ms(total),
        ms(mixed_duration)
    );
    // Each part in its place: 100 ms of CPU (sampled at the kernel tick),
    // a 100 ms sleep, a 100 ms await.
    for (name, part) in ["running", "blocked", "awaiting"].iter().zip(parts) {
        assert!(
            (75e6..=125e6).contains(&part),
            "{name}: {:.1} ms where about 100 ms were spent",
            ms(part)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
