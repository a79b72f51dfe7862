//! The profiler's own threads are named in its profiles: every sample taken
//! on the collector (`pyroscope-collect`), the timer manager
//! (`pyroscope-timer`) or the sample drain (`pyroscope-drain`) ends in a root frame `tracing-pyroscope: …` that
//! says which thread it is, and no sample of the program's own threads
//! does. The frame is not a label: the samples carry no label for it.

use crate::common;
use crate::cpu_clock;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use common::pprof::Profile;
use cpu_clock::thread_cpu_nanos;
use tracing_pyroscope::context;

const COLLECTOR: &str = "tracing-pyroscope: collector (pyroscope-collect)";
const TIMERS: &str = "tracing-pyroscope: timer manager (pyroscope-timer)";
const DRAIN: &str = "tracing-pyroscope: sample drain (pyroscope-drain)";

#[inline(never)]
fn program_work(nanos: u64) -> u64 {
    let end = thread_cpu_nanos() + nanos;
    let mut x = 3u64;
    while thread_cpu_nanos() < end {
        for _ in 0..5000 {
            x = black_box(x.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(9));
        }
    }
    x
}

/// Root-first stacks, with their sample counts and label keys, of every
/// profile in `dir`.
fn stacks(dir: &Path) -> Vec<(Vec<String>, i64, Vec<String>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.to_string_lossy().ends_with(".pb.gz") {
            continue;
        }
        let bytes = std::fs::read(&path).expect("read profile");
        let p = Profile::parse(&bytes).expect("a pprof profile");
        for s in &p.sample {
            let keys = p.labels(s).into_iter().map(|(k, _)| k).collect();
            out.push((p.stack(s), s.value[0], keys));
        }
    }
    out
}

#[test]
fn samples_on_profiler_threads_start_with_a_frame_naming_the_thread() {
    isolated!();
    let dir =
        std::env::temp_dir().join(format!("tracing-pyroscope-threads-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // 1000 Hz and a profile every 100 ms: the collector symbolizes, encodes
    // and writes ten profiles a second, enough CPU to be sampled.
    let (_layer, guard) = tracing_pyroscope::Builder::new("threads-test")
        .profiles_dir(&dir)
        .sample_rate(1000)
        .upload_interval(Duration::from_millis(100))
        .span_labels(["mark"])
        .build()
        .expect("start profiler");
    let saw_collector = common::wait_until(Duration::from_secs(30), || {
        let worker = std::thread::spawn(|| {
            context::with_labels(&[("mark", "program")], || {
                black_box(program_work(200_000_000));
            });
        });
        worker.join().expect("worker");
        stacks(&dir)
            .iter()
            .any(|(stack, _, _)| stack.first().is_some_and(|f| f == COLLECTOR))
    });
    drop(guard);
    assert!(saw_collector, "no sample of the collector thread");

    let mut by_root: BTreeMap<String, i64> = BTreeMap::new();
    for (stack, count, keys) in stacks(&dir) {
        let Some(root) = stack.first().map(String::as_str) else {
            continue; // a sample without a stack
        };
        *by_root.entry(root.to_owned()).or_default() += count;
        let has = |needle: &str| stack.iter().any(|f| f.contains(needle));
        if root.starts_with("tracing-pyroscope: ") {
            // Only the four threads have such a frame, only at the root,
            // and it is no label.
            assert!(
                [COLLECTOR, TIMERS, DRAIN].contains(&root)
                    || root == "tracing-pyroscope: uploader (pyroscope-upload)",
                "{root}"
            );
            assert!(
                stack[1..]
                    .iter()
                    .all(|f| !f.starts_with("tracing-pyroscope: ")),
                "{stack:?}"
            );
            assert!(keys.is_empty(), "{keys:?} on {stack:?}");
            // Under it, the thread's own code.
            if root == COLLECTOR {
                assert!(!has("program_work"), "{stack:?}");
            }
        } else {
            // The program's threads: no profiler frame, and the profiler's
            // code is never found on them without its root frame.
            assert!(
                !has("tracing_pyroscope::collector::linux::Collector::"),
                "{stack:?}"
            );
            assert!(!has("tracing_pyroscope::sampler::manage"), "{stack:?}");
            // The drain thread's work (the collector does the same work
            // under its own root frame).
            assert!(
                !has("tracing_pyroscope::sampler::queue::Queue::move_from"),
                "{stack:?}"
            );
        }
        if has("program_work") {
            assert_eq!(keys, ["mark"], "{stack:?}");
        }
    }
    assert!(
        by_root.get(COLLECTOR).is_some_and(|&n| n > 0),
        "{by_root:?}"
    );
    eprintln!("samples by root frame: {by_root:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
