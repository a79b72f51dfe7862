//! Shared by the allocation-profile test binaries (each installs its own
//! `#[global_allocator]`): concurrent tokio root spans allocating known
//! amounts, read back through Google's pprof tool.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::Instrument;
use tracing_subscriber::prelude::*;

#[path = "../pprof_tool/mod.rs"]
pub mod pprof_tool;

/// Allocation profiling at 32 KiB: 64 MiB per span is about 2,000
/// samples, so the estimate's σ is about 2.2 % and ±10 % sits at 4.5σ.
pub const SAMPLE_BYTES: u64 = 32 * 1024;
/// What each span allocates.
pub const PER_SPAN: usize = 64 << 20;
/// Concurrent root spans.
pub const SPANS: usize = 4;

/// One process-wide profiler at a time.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// `pprof -traces -sample_index=INDEX -unit=byte FILE`: each entry's
/// `count` is the sample type's value (bytes or objects).
pub fn traces(file: &Path, index: &str) -> Vec<pprof_tool::Trace> {
    pprof_tool::traces_of(file, index, Some("byte"))
}

/// The memory profiles in `dir`, oldest first.
pub fn memory_files(dir: &Path) -> Vec<PathBuf> {
    if !dir.exists() {
        return Vec::new();
    }
    pprof_tool::profile_files(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".memory.pb.gz"))
        })
        .collect()
}

macro_rules! allocators {
    ($($name:ident = $salt:literal),*) => {
        $(
            /// Allocates `total` bytes in chunks of several sizes, dropping
            /// each at once. (The sizes differ a little per function, so the
            /// linker cannot fold the functions into one.)
            #[inline(never)]
            pub fn $name(total: usize) {
                let sizes = [64usize + $salt, 512, 2048, 8192 + $salt, 32_768];
                let mut done = 0;
                let mut i = 0;
                while done < total {
                    let n = sizes[i % sizes.len()];
                    i += 1;
                    std::hint::black_box(Vec::<u8>::with_capacity(n));
                    done += n;
                }
            }
        )*
        pub const ALLOCATORS: &[(&str, fn(usize))] = &[$((stringify!($name), $name)),*];
    };
}

allocators!(
    allocate_for_span_0 = 0,
    allocate_for_span_1 = 8,
    allocate_for_span_2 = 16,
    allocate_for_span_3 = 24
);

/// Per function: (span ids its sampled bytes carry, bytes), and per span
/// id: alloc_space.
pub struct Readback {
    pub by_function: HashMap<String, HashMap<String, u64>>,
    pub by_span: HashMap<String, u64>,
}

pub fn read_allocs(dir: &Path) -> Readback {
    let mut by_function: HashMap<String, HashMap<String, u64>> = HashMap::new();
    let mut by_span: HashMap<String, u64> = HashMap::new();
    let files = memory_files(dir);
    assert!(!files.is_empty(), "no memory profile in {}", dir.display());
    for file in files {
        for t in traces(&file, "alloc_space") {
            let span = t.labels.get("span_id").cloned().unwrap_or_default();
            *by_span.entry(span.clone()).or_default() += t.count;
            for (name, _) in ALLOCATORS {
                if t.frames.iter().any(|f| f.contains(name)) {
                    *by_function
                        .entry(name.to_string())
                        .or_default()
                        .entry(span.clone())
                        .or_default() += t.count;
                }
            }
        }
    }
    Readback {
        by_function,
        by_span,
    }
}

/// Runs [`SPANS`] concurrent root spans on a 2-worker tokio runtime, each
/// allocating [`PER_SPAN`] bytes in its own function in 256 KiB steps,
/// yielding between steps (tasks hop workers), with allocation profiling
/// at [`SAMPLE_BYTES`]; then checks each span's alloc_space and that every
/// sampled byte of each function carries its span's id.
pub fn exact_per_span(test: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = std::env::temp_dir().join(format!("tracing-pyroscope-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (layer, guard) = tracing_pyroscope::Builder::new(test)
        .profiles_dir(&dir)
        .allocations(true)
        .allocation_sample_bytes(SAMPLE_BYTES)
        .upload_interval(Duration::from_secs(1))
        .build()
        .expect("start profiler");
    let subscriber = tracing_subscriber::registry().with(layer);
    let dispatch = tracing::Dispatch::new(subscriber);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    const STEP: usize = 256 << 10;
    runtime.block_on(async {
        let tasks: Vec<_> = (0..SPANS)
            .map(|i| {
                let root = tracing::dispatcher::with_default(&dispatch, || {
                    tracing::info_span!("alloc_root", task = i)
                });
                let task = async move {
                    let mut done = 0;
                    while done < PER_SPAN {
                        (ALLOCATORS[i].1)(STEP);
                        done += STEP;
                        tokio::task::yield_now().await;
                    }
                };
                tokio::spawn(tracing::instrument::WithSubscriber::with_subscriber(
                    task.instrument(root),
                    dispatch.clone(),
                ))
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    drop(runtime);
    let stats = guard.stats();
    drop(guard);
    let read = read_allocs(&dir);
    let mut spans = Vec::new();
    for (name, _) in ALLOCATORS {
        let by_span = read
            .by_function
            .get(*name)
            .unwrap_or_else(|| panic!("no sample in {name}"));
        assert_eq!(
            by_span.len(),
            1,
            "{name}: sampled bytes under several span ids (or none): {by_span:?}"
        );
        let (span, bytes) = by_span.iter().next().unwrap();
        assert_eq!(span.len(), 16, "{name}: bytes without a span id");
        let total = read.by_span[span];
        let ratio = total as f64 / PER_SPAN as f64;
        eprintln!("{name}: span {span} alloc_space {total} ({ratio:.3} of {PER_SPAN}), {bytes} in the function");
        assert!(
            (0.9..=1.1).contains(&ratio),
            "{name}: span {span} alloc_space {total}, {ratio:.3} of {PER_SPAN}"
        );
        spans.push(span.clone());
    }
    spans.sort();
    spans.dedup();
    assert_eq!(spans.len(), SPANS, "one span id per function");
    eprintln!("{stats:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The in-use figure of `span_name` in `file`.
fn inuse_of(file: &Path, span_name: &str) -> u64 {
    traces(file, "inuse_space")
        .iter()
        .filter(|t| t.labels.get("span_name").is_some_and(|n| n == span_name))
        .map(|t| t.count)
        .sum()
}

/// Waits for a memory profile written after `since`, returns it.
fn next_file(dir: &Path, seen: usize) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let files = memory_files(dir);
        if files.len() > seen {
            return files[files.len() - 1].clone();
        }
        assert!(Instant::now() < deadline, "no new memory profile");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[inline(never)]
pub fn allocate_and_keep(total: usize, keep: usize) -> Vec<Vec<u8>> {
    let mut kept = Vec::new();
    let mut done = 0;
    let sizes = [64usize, 512, 2048, 8192, 32_768];
    let mut i = 0;
    while done < total {
        let n = sizes[i % sizes.len()];
        i += 1;
        let v = std::hint::black_box(Vec::<u8>::with_capacity(n));
        done += n;
        if done <= keep {
            kept.push(v);
        }
    }
    kept
}

/// A span allocates 128 MiB and keeps 64 MiB: the next interval's
/// inuse_space is within 10 % of 64 MiB; after it frees the rest, under
/// 2 MiB.
pub fn live_heap(test: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = std::env::temp_dir().join(format!("tracing-pyroscope-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (layer, guard) = tracing_pyroscope::Builder::new(test)
        .profiles_dir(&dir)
        .allocations(true)
        .heap(true)
        .allocation_sample_bytes(SAMPLE_BYTES)
        .upload_interval(Duration::from_secs(1))
        .build()
        .expect("start profiler");
    let subscriber = tracing_subscriber::registry().with(layer);
    let _default = tracing::subscriber::set_default(subscriber);
    const KEEP: usize = 64 << 20;
    let kept = tracing::info_span!("keeper").in_scope(|| allocate_and_keep(128 << 20, KEEP));
    // The interval in which the blocks were allocated may end any moment:
    // judge the one after it.
    let seen = memory_files(&dir).len();
    let _ = next_file(&dir, seen);
    let file = next_file(&dir, memory_files(&dir).len());
    let live = inuse_of(&file, "keeper");
    let ratio = live as f64 / KEEP as f64;
    eprintln!("inuse_space while keeping: {live} ({ratio:.3} of {KEEP})");
    assert!(
        (0.9..=1.1).contains(&ratio),
        "inuse_space {live}, {ratio:.3} of {KEEP}"
    );
    tracing::info_span!("keeper").in_scope(|| drop(kept));
    let _ = next_file(&dir, memory_files(&dir).len());
    let file = next_file(&dir, memory_files(&dir).len());
    let live = inuse_of(&file, "keeper");
    eprintln!("inuse_space after freeing: {live}");
    assert!(live < 2 << 20, "inuse_space {live} after freeing");
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
}
