//! Stacks are right: a known chain of `#[inline(never)]` functions must show
//! up in order in the samples taken inside it. CI runs this test twice: in
//! the ordinary release build (no frame pointers, DWARF CFI unwinding) and
//! with `-C force-frame-pointers=yes`.

mod cpu_clock;
mod pprof_tool;

use cpu_clock::thread_cpu_nanos;
use std::hint::black_box;
use std::time::Duration;

use tracing_pyroscope::context::{self, SpanLabels};

#[inline(never)]
fn chain_outer(nanos: u64) -> u64 {
    black_box(chain_middle(black_box(nanos)) ^ 0x11)
}

#[inline(never)]
fn chain_middle(nanos: u64) -> u64 {
    black_box(chain_inner(black_box(nanos)).rotate_left(3))
}

#[inline(never)]
fn chain_inner(nanos: u64) -> u64 {
    let end = thread_cpu_nanos() + nanos;
    let mut x = 7u64;
    while thread_cpu_nanos() < end {
        for _ in 0..5000 {
            x = black_box(x.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(7));
        }
    }
    x
}

#[test]
fn known_call_chain_is_unwound_in_order() {
    let dir = std::env::temp_dir().join(format!("tracing-pyroscope-stacks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (_layer, guard) = tracing_pyroscope::Builder::new("stacks-test")
        .profiles_dir(&dir)
        .sample_rate(500)
        .upload_interval(Duration::from_secs(60))
        .build()
        .expect("start profiler");
    let worker = std::thread::Builder::new()
        .name("chain".into())
        .spawn(|| {
            context::replace(SpanLabels::new(0xabcdef, 0, 0));
            black_box(chain_outer(1_500_000_000));
            context::replace(SpanLabels::NONE);
        })
        .unwrap();
    worker.join().unwrap();
    drop(guard);

    let mut in_inner = 0u64;
    let mut full_chain = 0u64;
    for file in pprof_tool::profile_files(&dir) {
        for tr in pprof_tool::traces(&file) {
            if tr.labels.get("span_id").map(String::as_str) != Some("0000000000abcdef") {
                continue;
            }
            let Some(i) = tr.frames.iter().position(|f| f.contains("chain_inner")) else {
                continue;
            };
            in_inner += tr.count;
            let rest: Vec<&str> = tr.frames[i + 1..].iter().map(String::as_str).collect();
            let ok = rest.first().is_some_and(|f| f.contains("chain_middle"))
                && rest.get(1).is_some_and(|f| f.contains("chain_outer"))
                // ...and on through std's thread entry to libc's thread root.
                && rest.iter().any(|f| f.contains("thread_start"));
            if ok {
                full_chain += tr.count;
            } else if full_chain == 0 {
                println!("broken stack: {:?}", tr.frames);
            }
        }
    }
    let share = full_chain as f64 / in_inner.max(1) as f64;
    println!(
        "{full_chain}/{in_inner} samples in chain_inner have the full chain ({:.1}%)",
        share * 100.0
    );
    assert!(
        in_inner >= 300,
        "too few samples in chain_inner: {in_inner}"
    );
    assert!(
        share >= 0.99,
        "only {:.1}% of stacks complete",
        share * 100.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}
