//! The span-aware sampling CPU profiler (Linux on x86_64 and aarch64).
//!
//! - [`timers`]: one POSIX timer per thread on its own CPU-time clock sends
//!   it `SIGPROF`, so each thread is sampled in proportion to its CPU time.
//!   The manager thread (`pyroscope-timer`, [`manager`]) arms new threads,
//!   lists threads only when their count changes, and sleeps until the
//!   process uses CPU while it is idle ([`activity`]). A thread whose timer
//!   cannot be created is counted and retried, never sampled wrongly.
//! - [`handler`]: the signal handler, and all it runs, in one file. It
//!   reads the thread's labels from the arena entry its timer names
//!   ([`crate::context`]), unwinds within the thread's own stack
//!   ([`unwind`], [`stack`]) and writes into a preallocated lock-free
//!   buffer ([`buffer`]). Installed with `SA_RESTART | SA_SIGINFO`; calls
//!   that Linux never restarts (`epoll_wait`, `nanosleep`, …) may return
//!   `EINTR`, as under any signal-based profiler.
//! - [`wall`] (wall time on): the manager also measures the blocked and
//!   runnable time of threads inside spans, with stacks read from `/proc`
//!   and our own memory, never with a signal: no application call fails
//!   with `EINTR` because of it.
//! - [`queue`]: the drain thread (`pyroscope-drain`) moves samples from the
//!   signal buffer to a bounded aggregating queue when the handler wakes
//!   it; the collector takes the queue in O(1), so its slow work never
//!   stalls draining.
//! - [`reclaim`]: what the handler reads (unwinder, maps snapshot, buffer)
//!   is replaced by publishing a new pointer and freed after a grace
//!   period with no handler running.
//! - **Lifetime**: one sampler per process ([`ErrorKind::AlreadyRunning`]).
//!   Another `SIGPROF` handler is never replaced ([`ErrorKind::SignalInUse`]);
//!   one installed over ours later stops our timers and is logged once.
//!   After `stop` the handler stays installed but inert. A `pthread_atfork`
//!   child hook resets the sampler state a forked child inherits.
//! - **`dlopen`/`dlclose`**: the unwinder owns copies of every object's
//!   unwind tables and is rebuilt when the loader's generation moves.
//! - **Inside a shared library**: the handler touches no thread local; the
//!   timer's `sigev_value` carries the thread's arena entry
//!   (`tests/sampler_cdylib.rs`).
//! - **Limits**: threads living less than one scan period may go
//!   unsampled: at most [`STEADY_SCAN_PERIOD`] (160 ms), 20 ms while
//!   threads come and go.
//!
//! Sizing figures (buffer, drain throughput, handler stack use) are in
//! BENCHMARKS.md, "Sampler sizing".

use std::cell::UnsafeCell;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::sync::StopSignal;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::context::{self, SpanLabels};
use crate::{Error, ErrorKind};

mod activity;
mod buffer;
mod handler;
mod here;
mod images;
mod manager;
mod queue;
mod reclaim;
mod stack;
mod timers;
mod unwind;
pub(crate) mod wall;

pub(crate) use buffer::{SampleBuffer, MAX_FRAMES};
pub(crate) use here::unwind_here;
pub(crate) use images::loaded_images;
use manager::{
    drain_loop, foreign_handler, install_handler, manage, publish_maps, publish_unwinder, shut_down,
};
use queue::Queue;
use reclaim::{Retired, Retiree};
use unwind::{MapsSnapshot, NativeCache, UnwindState};

/// How often the manager looks for new and exited threads.
pub(crate) const SCAN_PERIOD: Duration = Duration::from_millis(20);
/// How often, at most, the manager looks for timers whose thread died and
/// whose tid was reused.
const RECYCLED_CHECK_PERIOD: Duration = Duration::from_millis(500);
/// The scan period for a process with `threads` threads: [`SCAN_PERIOD`]
/// up to 64 threads, then growing with the thread count, at most 1 s.
fn scan_period(threads: usize) -> Duration {
    let factor = (threads / 64).clamp(1, 50) as u32;
    SCAN_PERIOD * factor
}

/// The longest the manager waits between looks while the process is busy
/// and nothing changed (no new or exited thread, no thread new to the
/// label arena, no stack outside the maps snapshot): each such look
/// doubles the period from [`scan_period`], up to this; any change brings
/// it back. A busy process with a steady set of threads thus wakes the
/// manager about 6 times a second, not 50; a thread started in such a
/// process is armed within this much time.
pub(crate) const STEADY_SCAN_PERIOD: Duration = Duration::from_millis(160);

/// The next scan period after a busy look: `period` doubled up to
/// [`STEADY_SCAN_PERIOD`] if nothing changed, else [`scan_period`]. Never
/// below [`scan_period`] (processes with many threads).
fn busy_scan_period(period: Duration, threads: usize, changed: bool) -> Duration {
    let base = scan_period(threads);
    if changed {
        base
    } else {
        (period * 2).min(STEADY_SCAN_PERIOD).max(base)
    }
}

/// Unwinder caches: the most handlers that can unwind at the same instant.
const CACHES: usize = 32;

struct CacheSlot {
    busy: AtomicBool,
    cache: UnsafeCell<NativeCache>,
}

/// Process-wide state the handler reads. Allocated on first start, reused.
struct Shared {
    caches: Box<[CacheSlot]>,
}

// SAFETY: a cache is only touched by the handler that flipped its `busy`
// flag from false to true (acquire) until it stores false (release).
unsafe impl Sync for Shared {}

static SHARED: OnceLock<Shared> = OnceLock::new();
/// Bumped in a forked child: samplers started before the fork belong to the
/// parent (their threads and timers do not exist in the child).
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);
/// True while a sampler runs; the handler does nothing otherwise.
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// A `Sampler` exists.
static RUNNING: AtomicBool = AtomicBool::new(false);
static UNWIND: AtomicPtr<UnwindState> = AtomicPtr::new(ptr::null_mut());
/// The running sampler's signal buffer (owned by its `Arc`s; unpublished
/// and waited out before the sampler lets go of it).
static BUFFER: AtomicPtr<SampleBuffer> = AtomicPtr::new(ptr::null_mut());
static MAPS: AtomicPtr<MapsSnapshot> = AtomicPtr::new(ptr::null_mut());

fn shared() -> &'static Shared {
    static AT_FORK: std::sync::Once = std::sync::Once::new();
    AT_FORK.call_once(|| {
        stack::init_page_size();
        // Threads registering from now on record their own stack, which
        // bounds the handler's reads of it (see `stack`).
        context::set_stack_probe(stack::own_stack);
        // SAFETY: registers a plain function; it runs in the child of every
        // later fork(), where it only stores to atomics.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
    SHARED.get_or_init(|| Shared {
        caches: (0..CACHES)
            .map(|_| CacheSlot {
                busy: AtomicBool::new(false),
                cache: UnsafeCell::new(NativeCache::new_in()),
            })
            .collect(),
    })
}

/// Runs in the child right after `fork()`, where only the forking thread
/// exists: the parent's manager thread, timers and drain consumer do not.
/// Resets what the child inherited mid-flight so that it can start its own
/// sampler: the running flags, handlers counted as running on threads that
/// are gone, the parent's signal buffer (slots they were writing, and unread
/// samples that belong to the parent's profile: the child's own sampler
/// gets a new buffer), and unwinder caches they held. The handler stays
/// installed but inert, as after `stop`. Atomics only, as required between
/// `fork` and `exec`.
extern "C" fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::SeqCst);
    ACTIVE.store(false, Ordering::SeqCst);
    BUFFER.store(ptr::null_mut(), Ordering::SeqCst);
    reclaim::reset_after_fork();
    if let Some(shared) = SHARED.get() {
        for cache in shared.caches.iter() {
            cache.busy.store(false, Ordering::SeqCst);
        }
    }
    RUNNING.store(false, Ordering::SeqCst);
}

/// Sampler counters, all for this sampler only (they start at 0).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SamplerStats {
    /// Samples taken by the handler.
    pub(crate) taken: u64,
    /// Samples lost: the signal buffer was full, or the heap queue at its
    /// bound.
    pub(crate) dropped: u64,
    /// Samples recorded with the leaf only: every unwinder cache was busy,
    /// the handler's stack had no headroom left, or the interrupted stack
    /// lay outside the maps snapshot.
    pub(crate) unwind_busy: u64,
    pub(crate) threads: u64,
    pub(crate) timer_errors: u64,
    /// 1 once another `SIGPROF` handler replaced ours while this sampler
    /// ran: sampling stopped then (and a warning was logged). For `Stats`.
    #[allow(dead_code)]
    pub(crate) handler_conflicts: u64,
    /// Unwinders and maps snapshots retired and waiting for their grace
    /// period (bounded: see [`reclaim`]).
    #[allow(dead_code)]
    pub(crate) retired: u64,
    /// Retired objects freed so far.
    #[allow(dead_code)]
    pub(crate) reclaimed: u64,
    /// Slots in the signal buffer (sized from the rate and the CPUs).
    #[allow(dead_code)]
    pub(crate) buffer_slots: u64,
}

/// How to start a [`Sampler`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Options {
    /// CPU samples per CPU-second of each thread; also the wall sampler's
    /// ticks per second.
    pub(crate) rate_hz: u32,
    /// Measure the blocked and runnable time of threads inside spans
    /// ([`wall`]).
    pub(crate) wall: bool,
}

/// Counters one sampler's manager thread keeps.
#[derive(Default)]
struct RunCounters {
    threads: AtomicU64,
    timer_errors: AtomicU64,
    handler_conflicts: AtomicU64,
    retired: AtomicU64,
    reclaimed: AtomicU64,
}

/// A running sampler. Stops on drop.
pub(crate) struct Sampler {
    period_nanos: u64,
    /// [`FORK_GENERATION`] at start: in a forked child this sampler is the
    /// parent's, and stopping or dropping it must not touch the child's.
    fork_generation: u64,
    stop: StopSignal,
    manager: Option<JoinHandle<()>>,
    /// The manager sleeps until the process uses CPU time: stopping it
    /// takes some.
    manager_asleep_on_cpu: Arc<AtomicBool>,
    drainer: Option<JoinHandle<()>>,
    counters: Arc<RunCounters>,
    buffer: Arc<SampleBuffer>,
    queue: Arc<Queue>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("period_nanos", &self.period_nanos)
            .finish_non_exhaustive()
    }
}

impl Sampler {
    /// Starts sampling every thread at `rate_hz` samples per CPU-second.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn start(rate_hz: u32) -> Result<Sampler, Error> {
        Self::start_with(Options {
            rate_hz,
            wall: false,
        })
    }

    /// Starts sampling with `options`.
    pub(crate) fn start_with(options: Options) -> Result<Sampler, Error> {
        let rate_hz = options.rate_hz;
        if rate_hz == 0 {
            return Err(Error::config("sample_rate", "0", "1 to 1000 (Hz)"));
        }
        if RUNNING
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(Error::new(
                ErrorKind::AlreadyRunning,
                "a tracing-pyroscope profiler is already running in this process",
            ));
        }
        match Self::start_inner(rate_hz, options.wall) {
            Ok(s) => Ok(s),
            Err(e) => {
                RUNNING.store(false, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    fn start_inner(rate_hz: u32, wall: bool) -> Result<Sampler, Error> {
        shared();
        install_handler()?;
        let mut retired = Retired::default();
        let mut tables = unwind::TablesCache::default();
        publish_unwinder(unwind::build_unwinder(&mut tables), &mut retired);
        if let Some(maps) = MapsSnapshot::read() {
            publish_maps(maps, &mut retired);
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let Some(buffer) = SampleBuffer::new(buffer::slots_for(rate_hz, cpus)) else {
            return Err(Error::new(
                ErrorKind::Os,
                "could not allocate the sample buffer",
            ));
        };
        let buffer = Arc::new(buffer);
        let queue = Arc::new(Queue::default());
        BUFFER.store(Arc::as_ptr(&buffer).cast_mut(), Ordering::SeqCst);
        ACTIVE.store(true, Ordering::SeqCst);
        let drainer = {
            let buffer = buffer.clone();
            let queue = queue.clone();
            std::thread::Builder::new()
                .name("pyroscope-drain".into())
                .spawn(move || {
                    // Its samples get a root frame naming it (context.rs).
                    context::mark_profiler_thread(context::ProfilerThread::Drain);
                    drain_loop(&buffer, &queue)
                })
        };
        let drainer = match drainer {
            Ok(d) => d,
            Err(e) => {
                shut_down(&mut retired, buffer);
                return Err(
                    Error::new(ErrorKind::Os, "could not spawn the drain thread").with_source(e),
                );
            }
        };

        let period_nanos = 1_000_000_000 / u64::from(rate_hz);
        let stop = StopSignal::new();
        let counters = Arc::new(RunCounters::default());
        let mut timers = timers::Timers::new(period_nanos);
        // Arm the threads alive now before returning, so work started right
        // after `start` is sampled.
        timers.scan(true, || {
            if let Some(maps) = MapsSnapshot::read() {
                publish_maps(maps, &mut retired);
            }
        });
        counters
            .threads
            .store(timers.len() as u64, Ordering::Relaxed);
        // The manager gets `retired` only once spawned: keep a way back.
        let retired = Arc::new(Mutex::new(Some(retired)));
        let asleep_on_cpu = Arc::new(AtomicBool::new(false));
        let manager = {
            let stop = stop.clone();
            let asleep_on_cpu = asleep_on_cpu.clone();
            let counters = counters.clone();
            let buffer = buffer.clone();
            let retired = retired.clone();
            std::thread::Builder::new()
                .name("pyroscope-timer".into())
                .spawn(move || {
                    // Its samples get a root frame naming it (context.rs).
                    context::mark_profiler_thread(context::ProfilerThread::Timers);
                    let retired = crate::sync::lock(&retired).take().unwrap_or_default();
                    manage(
                        timers,
                        tables,
                        retired,
                        stop,
                        counters,
                        buffer,
                        asleep_on_cpu,
                        wall.then(|| (wall::start(), Duration::from_nanos(period_nanos))),
                    )
                })
        };
        let manager = match manager {
            Ok(m) => m,
            Err(e) => {
                let mut retired = crate::sync::lock(&retired).take().unwrap_or_default();
                shut_down(&mut retired, buffer.clone());
                buffer.stop_sleeping();
                let _ = drainer.join();
                return Err(
                    Error::new(ErrorKind::Os, "could not spawn the timer thread").with_source(e),
                );
            }
        };
        Ok(Sampler {
            period_nanos,
            fork_generation: FORK_GENERATION.load(Ordering::SeqCst),
            stop,
            manager: Some(manager),
            manager_asleep_on_cpu: asleep_on_cpu,
            drainer: Some(drainer),
            counters,
            buffer,
            queue,
        })
    }

    /// Nanoseconds of CPU time per sample.
    pub(crate) fn period_nanos(&self) -> u64 {
        self.period_nanos
    }

    /// Passes every sample taken since the last drain to `f`: labels, stack
    /// (leaf first: pc, then return addresses) and weight (timer periods).
    /// Identical (labels, stack) pairs come aggregated, with their weights
    /// added. Returns the number of samples. Never waits for slow work: the
    /// drain thread only moves samples.
    pub(crate) fn drain(&self, f: impl FnMut(SpanLabels, &[u64], u32)) -> usize {
        if !self.owned_by_this_process() {
            return 0;
        }
        self.queue.move_from(&self.buffer);
        let batch = self.queue.take();
        batch.for_each(f);
        batch.samples()
    }

    /// `false` in a forked child: the sampler is the parent's.
    fn owned_by_this_process(&self) -> bool {
        self.fork_generation == FORK_GENERATION.load(Ordering::SeqCst)
    }

    pub(crate) fn stats(&self) -> SamplerStats {
        SamplerStats {
            taken: self.buffer.taken.load(Ordering::Relaxed),
            dropped: self.buffer.dropped.load(Ordering::Relaxed)
                + self.queue.dropped.load(Ordering::Relaxed),
            unwind_busy: self.buffer.leaf_only.load(Ordering::Relaxed),
            threads: self.counters.threads.load(Ordering::Relaxed),
            timer_errors: self.counters.timer_errors.load(Ordering::Relaxed),
            handler_conflicts: self.counters.handler_conflicts.load(Ordering::Relaxed),
            retired: self.counters.retired.load(Ordering::Relaxed),
            reclaimed: self.counters.reclaimed.load(Ordering::Relaxed),
            buffer_slots: self.buffer.capacity() as u64,
        }
    }

    /// Stops the timers, waits for running handlers and stops the drain
    /// thread. Idempotent. Samples already taken stay for a final `drain`.
    pub(crate) fn stop(&mut self) {
        let Some(manager) = self.manager.take() else {
            return;
        };
        if !self.owned_by_this_process() {
            // The manager and drain threads live only in the parent.
            std::mem::forget(manager);
            std::mem::forget(self.drainer.take());
            return;
        }
        self.stop.stop();
        // A manager asleep until the process uses CPU time: interrupt its
        // `clock_nanosleep` (never restarted after a handler) with a
        // `SIGPROF` of our own, which the handler ignores (it samples only
        // timer signals). Sent again every millisecond until it is out, in
        // case it was sent just before the manager went to sleep. Should
        // another handler have replaced ours, it must not get our signal:
        // then the process uses the CPU time the manager waits for
        // (`IDLE_WAKE_CPU`) instead.
        while !manager.is_finished() {
            if self.manager_asleep_on_cpu.load(Ordering::SeqCst) {
                if foreign_handler().is_none() {
                    // SAFETY: the manager thread is joinable (not joined
                    // yet), so its pthread_t is valid; our handler is
                    // installed for SIGPROF.
                    unsafe {
                        libc::pthread_kill(
                            std::os::unix::thread::JoinHandleExt::as_pthread_t(&manager),
                            libc::SIGPROF,
                        )
                    };
                } else {
                    activity::burn_until(|| {
                        manager.is_finished() || !self.manager_asleep_on_cpu.load(Ordering::SeqCst)
                    });
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = manager.join();
        self.buffer.stop_sleeping();
        if let Some(drainer) = self.drainer.take() {
            let _ = drainer.join();
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop();
        if !self.owned_by_this_process() {
            return;
        }
        // Only now: a stopped sampler may still `drain` (the collector's
        // final drain).
        RUNNING.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
pub(crate) mod tests;
