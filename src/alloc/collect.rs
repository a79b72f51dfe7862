//! Collecting allocation samples: [`AllocProfiler`] switches sampling on,
//! runs the `pyroscope-alloc` thread that moves samples out of the buffer
//! into an aggregate, and hands the collector the allocation figures per
//! drain and the in-use figures per interval.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::context::SpanLabels;
use crate::sampler::SampleBuffer;
use crate::sync::lock;
use crate::{Error, ErrorKind};

use super::sample::{BUFFER, SAMPLE_BYTES};
use super::{live, HEAP, SAMPLING, STATE};

/// Most distinct (labels, stack) entries aggregated between two drains;
/// samples past it are dropped and counted.
const MAX_STACKS: usize = 1 << 16;
/// How long the drain thread sleeps when the buffer is not filling up.
const DRAIN_WAIT: Duration = Duration::from_millis(50);

/// An allocation profiler is running (one per process).
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Values by (labels, stack): `[objects, bytes]`, before rounding.
type Figures = HashMap<(SpanLabels, Arc<[u64]>), [f64; 2]>;

#[derive(Default)]
struct Aggregate {
    allocs: Figures,
    /// Remembered blocks' samples by id: labels and stack.
    live: HashMap<u32, (SpanLabels, Arc<[u64]>)>,
    /// Stacks shared by `allocs` and `live`.
    stacks: HashSet<Arc<[u64]>>,
    /// Samples dropped at the [`MAX_STACKS`] bound.
    dropped: u64,
}

struct Shared {
    aggregate: Mutex<Aggregate>,
    stop: AtomicBool,
    sample_bytes: f64,
}

/// Allocation profiling while it lives: sampling in the [`super::Allocator`]
/// is on from [`AllocProfiler::start`] until drop.
pub(crate) struct AllocProfiler {
    shared: Arc<Shared>,
    heap: bool,
    drainer: Option<JoinHandle<()>>,
    pid: u32,
    /// The buffer's counters when this run started.
    base: (u64, u64, u64),
}

impl std::fmt::Debug for AllocProfiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllocProfiler")
            .field("heap", &self.heap)
            .finish_non_exhaustive()
    }
}

/// Go's `scaleHeapSample`: a sampled block of `size` bytes stands for
/// `1 / (1 - exp(-size / rate))` blocks, its inverse probability of being
/// picked by an exponential countdown of mean `rate`.
pub(crate) fn scale(size: u64, rate: f64) -> f64 {
    if size == 0 || rate <= 1.0 {
        return 1.0;
    }
    1.0 / (1.0 - (-(size as f64) / rate).exp())
}

/// Counters of one run: samples taken, and dropped (buffer full, aggregate
/// bound, live table full).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AllocStats {
    pub(crate) samples: u64,
    pub(crate) dropped: u64,
}

extern "C" fn after_fork_in_child() {
    // The parent's drain thread does not exist here: sampling stops.
    STATE.fetch_and(!(SAMPLING | HEAP), Ordering::SeqCst);
    RUNNING.store(false, Ordering::SeqCst);
}

fn counters(buffer: &SampleBuffer) -> (u64, u64, u64) {
    (
        buffer.taken.load(Ordering::Relaxed),
        buffer.dropped.load(Ordering::Relaxed),
        live::DROPPED.load(Ordering::Relaxed),
    )
}

impl AllocProfiler {
    /// Switches allocation sampling on: a sample every `sample_bytes` bytes
    /// on average; `heap` also remembers sampled blocks until freed. An
    /// error if [`super::Allocator`] is not the global allocator, or an
    /// allocation profiler already runs.
    pub(crate) fn start(sample_bytes: u64, heap: bool) -> Result<AllocProfiler, Error> {
        if !super::installed() {
            return Err(Error::new(ErrorKind::Config, super::NOT_INSTALLED));
        }
        if sample_bytes == 0 {
            return Err(Error::config(
                "allocation_sample_bytes",
                "0",
                "a positive number of bytes",
            ));
        }
        if RUNNING
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(Error::new(
                ErrorKind::AlreadyRunning,
                "an allocation profiler is already running in this process",
            ));
        }
        if BUFFER.get().is_none() {
            if let Some(buffer) = SampleBuffer::new(super::sample::SLOTS) {
                let _ = BUFFER.set(buffer);
            }
        }
        let Some(buffer) = BUFFER.get() else {
            RUNNING.store(false, Ordering::SeqCst);
            return Err(Error::new(
                ErrorKind::Os,
                "could not allocate the allocation sample buffer",
            ));
        };
        static AT_FORK: Once = Once::new();
        AT_FORK.call_once(|| {
            // SAFETY: registers a plain function; in the child it only
            // stores to atomics.
            unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        });
        if heap {
            live::clear();
        }
        let shared = Arc::new(Shared {
            aggregate: Mutex::new(Aggregate::default()),
            stop: AtomicBool::new(false),
            sample_bytes: sample_bytes as f64,
        });
        let drainer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("pyroscope-alloc".into())
                .spawn(move || {
                    while !shared.stop.load(Ordering::Relaxed) {
                        buffer.sleep(Some(DRAIN_WAIT));
                        shared.move_from(buffer);
                    }
                })
        };
        let drainer = match drainer {
            Ok(d) => d,
            Err(e) => {
                RUNNING.store(false, Ordering::SeqCst);
                return Err(Error::new(
                    ErrorKind::Os,
                    "could not spawn the allocation drain thread",
                )
                .with_source(e));
            }
        };
        SAMPLE_BYTES.store(sample_bytes, Ordering::Relaxed);
        let base = counters(buffer);
        STATE.fetch_or(SAMPLING | if heap { HEAP } else { 0 }, Ordering::SeqCst);
        Ok(AllocProfiler {
            shared,
            heap,
            drainer: Some(drainer),
            pid: std::process::id(),
            base,
        })
    }

    /// Passes the allocations sampled since the last call to `f`: labels,
    /// stack (leaf first) and `[alloc_objects, alloc_space, 0, 0]`, weighted.
    pub(crate) fn drain(&self, mut f: impl FnMut(SpanLabels, &[u64], [i64; 4])) {
        if let Some(buffer) = BUFFER.get() {
            self.shared.move_from(buffer);
        }
        let allocs = std::mem::take(&mut lock(&self.shared.aggregate).allocs);
        for ((labels, stack), [objects, bytes]) in allocs {
            f(
                labels,
                &stack,
                [objects.round() as i64, bytes.round() as i64, 0, 0],
            );
        }
    }

    /// With heap profiling on, passes the blocks still allocated to `f`:
    /// labels, stack and `[0, 0, inuse_objects, inuse_space]`, weighted.
    /// Call it at the end of an interval, after [`Self::drain`].
    pub(crate) fn in_use(&self, mut f: impl FnMut(SpanLabels, &[u64], [i64; 4])) {
        if !self.heap {
            return;
        }
        if let Some(buffer) = BUFFER.get() {
            self.shared.move_from(buffer);
        }
        let mut blocks = Vec::new();
        live::for_each(|id, size| blocks.push((id, size)));
        let rate = self.shared.sample_bytes;
        let mut figures = Figures::new();
        {
            let mut agg = lock(&self.shared.aggregate);
            for &(id, size) in &blocks {
                if let Some(key) = agg.live.get(&id) {
                    let s = scale(size, rate);
                    let v = figures.entry(key.clone()).or_default();
                    v[0] += s;
                    v[1] += s * size as f64;
                }
            }
            agg.forget_freed(blocks.iter().map(|&(id, _)| id).collect());
        }
        for ((labels, stack), [objects, bytes]) in figures {
            f(
                labels,
                &stack,
                [0, 0, objects.round() as i64, bytes.round() as i64],
            );
        }
    }

    /// This run's counters.
    pub(crate) fn stats(&self) -> AllocStats {
        let Some(buffer) = BUFFER.get() else {
            return AllocStats::default();
        };
        let (taken, dropped, live_dropped) = counters(buffer);
        let (t0, d0, l0) = self.base;
        AllocStats {
            samples: taken.saturating_sub(t0),
            dropped: dropped.saturating_sub(d0)
                + live_dropped.saturating_sub(l0)
                + lock(&self.shared.aggregate).dropped,
        }
    }
}

impl Shared {
    /// Moves every ready sample from the buffer into the aggregate. The
    /// lock serialises the buffer's consumers.
    fn move_from(&self, buffer: &SampleBuffer) {
        let mut guard = lock(&self.aggregate);
        let agg = &mut *guard;
        let rate = self.sample_bytes;
        buffer.drain(|labels, frames, id| {
            let size = frames[0];
            let stack = agg.intern(&frames[1..]);
            let s = scale(size, rate);
            if id >= 2 {
                agg.live.insert(id, (labels, stack.clone()));
            }
            let key = (labels, stack);
            if agg.allocs.len() >= MAX_STACKS && !agg.allocs.contains_key(&key) {
                agg.dropped += 1;
                return;
            }
            let v = agg.allocs.entry(key).or_default();
            v[0] += s;
            v[1] += s * size as f64;
        });
        if agg.live.len() > 2 * live::CAPACITY {
            let mut ids = HashSet::new();
            live::for_each(|id, _| {
                ids.insert(id);
            });
            agg.forget_freed(ids);
        }
    }
}

impl Aggregate {
    fn intern(&mut self, stack: &[u64]) -> Arc<[u64]> {
        if let Some(s) = self.stacks.get(stack) {
            return s.clone();
        }
        let s: Arc<[u64]> = stack.into();
        self.stacks.insert(s.clone());
        s
    }

    /// Keeps only the samples of blocks still remembered (`alive`), and
    /// the stacks still used.
    fn forget_freed(&mut self, alive: HashSet<u32>) {
        self.live.retain(|id, _| alive.contains(id));
        self.stacks.retain(|s| Arc::strong_count(s) > 1);
    }
}

impl Drop for AllocProfiler {
    fn drop(&mut self) {
        if self.pid != std::process::id() {
            // A forked child: the drain thread lives only in the parent.
            std::mem::forget(self.drainer.take());
            return;
        }
        STATE.fetch_and(!(SAMPLING | HEAP), Ordering::SeqCst);
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(d) = self.drainer.take() {
            let _ = d.join();
        }
        RUNNING.store(false, Ordering::SeqCst);
    }
}
