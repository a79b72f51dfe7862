//! Bounded memory and disk at any span rate, end to end:
//! - the local span index keeps every root span that got CPU samples and
//!   only a bounded, counted sample of the others;
//! - past `max_span_ids` distinct span ids in an interval, samples keep
//!   their stacks and `span_name` but lose `span_id`, counted in `Stats`
//!   (read back through Google's pprof tool);
//! - the profiles directory never passes its size limit while profiles and
//!   span indexes are written every 100 ms.
//!
//! One profiler runs at a time in a process, so the scenarios run in one
//! test, in order.

use crate::cpu_clock;
use crate::pprof_tool;

use std::collections::BTreeSet;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cpu_clock::thread_cpu_nanos;
use tracing_pyroscope::Builder;
use tracing_subscriber::layer::SubscriberExt;

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tp-limits-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Burns `nanos` of this thread's CPU time.
#[inline(never)]
fn burn(nanos: u64) -> u64 {
    let end = thread_cpu_nanos() + nanos;
    let mut x = 1u64;
    while thread_cpu_nanos() < end {
        for _ in 0..1000 {
            x = black_box(x.wrapping_mul(0x2545_F491_4F6C_DD1D).wrapping_add(7));
        }
    }
    x
}

/// `(name, cpu_samples)` of every line of every span index in `dir`.
fn index_lines(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.starts_with("spans") && name.ends_with(".jsonl")) {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            out.push((
                v["name"].as_str().unwrap().to_string(),
                v["cpu_samples"].as_u64().unwrap(),
            ));
        }
    }
    out
}

#[test]
fn memory_and_disk_stay_bounded_at_any_span_rate() {
    isolated!();
    the_index_keeps_sampled_spans_and_a_counted_sample_of_the_rest();
    span_ids_past_the_cap_lose_only_the_id();
    the_directory_never_passes_its_size_limit();
}

fn the_index_keeps_sampled_spans_and_a_counted_sample_of_the_rest() {
    const IDLE: u64 = 3000;
    const BUSY: usize = 10;
    let dir = tempdir("index");
    let (layer, guard) = Builder::new("limits")
        .profiles_dir(&dir)
        .sample_rate(1000)
        .build()
        .expect("start profiler");
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        for i in 0..IDLE {
            tracing::info_span!("idle", i).in_scope(|| black_box(i));
        }
        for _ in 0..BUSY {
            tracing::info_span!("busy").in_scope(|| burn(30_000_000));
        }
    });
    // Records are indexed one drain after they arrive: wait until every
    // span is either indexed or counted.
    let stats = wait_for(&guard, |s| {
        s.spans_recorded + s.spans_unindexed >= IDLE + BUSY as u64
    });
    drop(guard);
    assert_eq!(stats.dropped_spans, 0, "{stats:?}");
    assert_eq!(
        stats.spans_recorded + stats.spans_unindexed,
        IDLE + BUSY as u64
    );
    let lines = index_lines(&dir);
    assert_eq!(lines.len() as u64, stats.spans_recorded);
    let busy: Vec<u64> = lines
        .iter()
        .filter(|(n, _)| n == "busy")
        .map(|(_, c)| *c)
        .collect();
    let idle = lines.iter().filter(|(n, _)| n == "idle").count() as u64;
    assert_eq!(busy.len(), BUSY, "every span with samples is indexed");
    assert!(busy.iter().all(|&c| c > 0), "{busy:?}");
    // Idle spans: a burst of at most 1000, plus 100 per second.
    assert!(
        (1..=1500).contains(&idle),
        "{idle} of {IDLE} idle spans indexed"
    );
    assert_eq!(stats.spans_unindexed, IDLE - idle);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Polls the guard's stats until `done` holds (at most 20 s).
fn wait_for(
    guard: &tracing_pyroscope::ProfilerGuard,
    done: impl Fn(&tracing_pyroscope::Stats) -> bool,
) -> tracing_pyroscope::Stats {
    for _ in 0..400 {
        let s = guard.stats();
        if done(&s) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    guard.stats()
}

fn span_ids_past_the_cap_lose_only_the_id() {
    const SPANS: usize = 12;
    let dir = tempdir("cap");
    let (layer, guard) = Builder::new("limits")
        .profiles_dir(&dir)
        .sample_rate(1000)
        .max_span_ids(3)
        .build()
        .expect("start profiler");
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        for _ in 0..SPANS {
            tracing::info_span!("capped").in_scope(|| burn(30_000_000));
        }
    });
    let stats = wait_for(&guard, |s| s.span_id_overflows > 0);
    drop(guard);
    let mut ids = BTreeSet::new();
    let (mut without_id, mut with_id) = (0, 0);
    let files = pprof_tool::profile_files(&dir);
    assert!(!files.is_empty());
    for file in &files {
        for t in pprof_tool::traces(file) {
            if t.labels.get("span_name").map(String::as_str) != Some("capped") {
                continue;
            }
            match t.labels.get("span_id") {
                Some(id) => {
                    ids.insert(id.clone());
                    with_id += t.count;
                }
                None => without_id += t.count,
            }
        }
    }
    // One interval (10 s): at most 3 ids; the other spans' samples keep
    // their name and stack.
    assert!(ids.len() <= 3 && !ids.is_empty(), "{ids:?}");
    assert!(with_id > 0, "{with_id}");
    assert!(
        stats.span_id_overflows > 0 && without_id >= stats.span_id_overflows,
        "{without_id} samples without an id, {stats:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn the_directory_never_passes_its_size_limit() {
    const LIMIT: u64 = 64 * 1024;
    let dir = tempdir("size");
    let (layer, guard) = Builder::new("limits")
        .profiles_dir(&dir)
        .sample_rate(1000)
        .upload_interval(Duration::from_millis(100))
        .profiles_dir_max_size(LIMIT)
        .build()
        .expect("start profiler");
    // Watch the directory while the profiler writes into it.
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (done, peak, dir) = (done.clone(), peak.clone(), dir.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(managed_bytes(&dir), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let subscriber = tracing_subscriber::registry().with(layer);
    let cpu = thread_cpu_nanos();
    tracing::subscriber::with_default(subscriber, || {
        // Many sampled root spans (span index lines) and a profile every
        // 100 ms, until well past the limit.
        let mut i = 0u64;
        while thread_cpu_nanos() - cpu < 3_000_000_000 {
            tracing::info_span!("sized", i).in_scope(|| burn(2_000_000));
            i += 1;
        }
    });
    // The collector may lag on a busy machine: give it time to catch up.
    let stats = wait_for(&guard, |s| s.files_evicted > 0);
    drop(guard);
    done.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let after = managed_bytes(&dir);
    let peak = peak.load(Ordering::Relaxed).max(after);
    assert!(peak <= LIMIT, "the directory reached {peak} bytes");
    // The limit was reached: files were deleted to stay below it.
    assert!(stats.files_evicted > 0, "{stats:?}");
    assert!(stats.files_written > 0, "{stats:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bytes of the profiles and span indexes in `dir`.
fn managed_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            (n.ends_with(".pb.gz") && !n.starts_with('.'))
                || (n.starts_with("spans") && n.ends_with(".jsonl"))
        })
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .sum()
}
