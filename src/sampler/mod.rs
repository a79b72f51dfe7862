//! The span-aware sampling CPU profiler (Linux on x86_64 and aarch64).
//!
//! - **Timers** ([`timers`]): one POSIX timer per thread on that thread's own
//!   CPU-time clock, delivering `SIGPROF` to that thread, so every busy
//!   thread is sampled at the configured rate of its own CPU time. A manager
//!   thread picks up new threads every [`SCAN_PERIOD`] while the process
//!   uses CPU (less often in processes with hundreds of threads, see
//!   `scan_period`) and lists the threads only when their count changes
//!   (and twice a second); while the process is idle the manager sleeps
//!   until it uses CPU time, so an idle process costs no wakes
//!   ([`activity`]). Each thread's first expiry falls at a random point of
//!   its first period, so a thread is sampled in proportion to its CPU
//!   time even when it uses less than a period. There is no
//!   process-wide `setitimer` fallback: per-thread timers exist on every
//!   Linux since 2.6.12, and if `timer_create` fails for a thread that thread
//!   is counted (and retried on the next scan) rather than sampled wrongly.
//! - **Signal handler**: installed with `SA_RESTART` (most interrupted
//!   application syscalls are restarted; those Linux never restarts after a
//!   handler, such as `epoll_wait`, `poll`, `select`, `nanosleep` and calls
//!   with a timeout, can still return `EINTR`, as under any signal-based
//!   profiler, and callers must retry as std and mio do) and `SA_SIGINFO`;
//!   it saves and restores `errno`. It reads the thread's labels from the
//!   entry its timer names ([`crate::context`]), unwinds the interrupted
//!   stack ([`unwind`]) and
//!   writes into a preallocated lock-free buffer ([`buffer`]). It allocates
//!   nothing and takes no lock, so it cannot deadlock a thread interrupted
//!   inside `malloc` or the dynamic loader; its only system call is one
//!   `FUTEX_WAKE` when a sixteenth of the buffer waits and the drain thread
//!   sleeps. Samples that find every slot taken are counted as dropped.
//! - **Draining** ([`queue`]): a drain thread that does nothing else moves
//!   samples from the signal buffer to a bounded, aggregating heap queue
//!   whenever the handler wakes it, and sleeps otherwise (never polls); the
//!   collector takes the queue in O(1). So the collector's slow work (a
//!   first debug-info load, an encode) never stalls draining. The buffer
//!   holds half a second of samples with every CPU busy (CPU-time timers
//!   cannot fire faster than the CPUs run, at most once per scheduler tick
//!   each): 1024 slots on 2 CPUs at 1000 Hz, at most 65536. The drain
//!   thread moves about 600,000 samples a second on one core (30-frame
//!   stacks), far above any signal rate, so the ceiling is set by how soon
//!   it is scheduled after a wake: the wake comes at a sixteenth of the
//!   buffer's time span (31 ms at the full rate), which leaves the other
//!   fifteen sixteenths (470 ms) as margin.
//! - **Lifetime**: one sampler per process ([`ErrorKind::AlreadyRunning`]).
//!   Starting while another `SIGPROF` handler is installed fails with
//!   [`ErrorKind::SignalInUse`]; we never replace someone else's handler.
//!   If one is installed over ours later, the manager notices on its next
//!   scan (one `sigaction` query), deletes our timers so they stop feeding
//!   it, counts it (`handler_conflicts`) and logs one warning naming it.
//!   After `stop`, our handler stays installed but inert, so a `SIGPROF`
//!   still in flight can never hit the default action (which would kill the
//!   process).
//! - **fork**: a `pthread_atfork` child hook resets what the child inherits
//!   (running flags, the parent's signal buffer, caches), so a child that never
//!   profiles is untouched (no timers are inherited; the handler is inert)
//!   and a child that starts its own profiler samples itself. The parent's
//!   sampler object, if the child holds it, is left alone (its threads live
//!   only in the parent).
//! - **Stack headroom**: the handler runs on the interrupted thread's own
//!   stack (no `SA_ONSTACK`), below the kernel's signal frame. It unwinds
//!   only if the stack pointer lies in a mapping of the maps snapshot and if
//!   at least [`handler::HANDLER_HEADROOM`] (16 KiB) is left below the
//!   handler's *own* frame (so the signal frame's size, larger with AVX-512
//!   or AMX state, is accounted for); otherwise it records the interrupted
//!   pc alone. A stack pointer outside the snapshot makes the manager read
//!   the maps again on its next scan.
//! - **Stacks the program allocated itself** (coroutines, fibers,
//!   `pthread_attr_setstack`): one mapped on its own, with a guard page
//!   below (what most coroutine libraries do), is measured exactly like a
//!   thread stack, from the first maps read after it was mapped (leaf-only
//!   samples until then). One carved out of a larger mapping (a `malloc`ed
//!   or static buffer, several stacks in one `mmap`) cannot be measured: the
//!   check sees the whole mapping, not the stack's bottom. Stack reads stay
//!   inside that mapping, so they cannot fault, but the handler may then use
//!   up to about 9 KiB beyond the kernel's signal frame; such stacks need
//!   that much slack below their deepest use (any signal handler needs the
//!   signal frame's), or a guard page of their own.
//! - **`dlopen`/`dlclose`**: the unwinder owns copies of every object's
//!   unwind tables, so unloading a library can never fault a handler; the
//!   loader's generation is checked on every scan and the unwinder rebuilt
//!   when it moves (see [`unwind`]).
//! - **Inside a shared library** (a `cdylib`, a Python or Node extension,
//!   anything loaded with `dlopen`): the handler touches no thread local,
//!   since there one is reached through `__tls_get_addr`, which may call
//!   `malloc` or take the loader's lock on a thread's first access (a host
//!   thread that never called the crate). Each thread's labels live in an
//!   entry of the context's never-freed arena; the timer's `sigev_value`
//!   carries the entry's index and generation, which the handler reads
//!   from `si_value` and checks (a stale one reads as no labels). The
//!   manager finds or claims the entry when it arms a thread's timer,
//!   creates the timer again if the entry stopped being the thread's, and
//!   releases entries of threads that exited
//!   (`tests/sampler_cdylib.rs`).
//! - **Limits**: threads living less than one scan period may go
//!   unsampled.

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
mod queue;
mod reclaim;
mod stack;
mod timers;
mod unwind;

use buffer::SampleBuffer;
use queue::Queue;
use reclaim::{Retired, Retiree};
use handler::on_sigprof;
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

/// Installs our handler unless a foreign one is installed.
fn install_handler() -> Result<(), Error> {
    let ours = on_sigprof as *const () as libc::sighandler_t;
    // SAFETY: sigaction is plain data; zeroed is valid.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: querying the current action with a valid out-pointer.
    if unsafe { libc::sigaction(libc::SIGPROF, ptr::null(), &mut old) } != 0 {
        return Err(Error::new(ErrorKind::Os, "sigaction(SIGPROF) query failed")
            .with_source(std::io::Error::last_os_error()));
    }
    if old.sa_sigaction == ours {
        return Ok(());
    }
    if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN {
        return Err(Error::new(
            ErrorKind::SignalInUse,
            "another SIGPROF handler is installed (another profiler?); tracing-pyroscope will not replace it",
        ));
    }
    // SAFETY: as above.
    let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
    new.sa_sigaction = ours;
    new.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: valid pointers; the handler is async-signal-safe (module docs).
    let rc = unsafe {
        libc::sigemptyset(&mut new.sa_mask);
        libc::sigaction(libc::SIGPROF, &new, ptr::null_mut())
    };
    if rc != 0 {
        return Err(
            Error::new(ErrorKind::Os, "sigaction(SIGPROF) install failed")
                .with_source(std::io::Error::last_os_error()),
        );
    }
    Ok(())
}

/// The `SIGPROF` action installed now, if it is not ours: one `sigaction`
/// query, no allocation.
fn foreign_handler() -> Option<libc::sighandler_t> {
    let ours = on_sigprof as *const () as libc::sighandler_t;
    // SAFETY: sigaction is plain data; zeroed is valid.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: querying the current action with a valid out-pointer.
    if unsafe { libc::sigaction(libc::SIGPROF, ptr::null(), &mut current) } != 0 {
        return None;
    }
    (current.sa_sigaction != ours).then_some(current.sa_sigaction)
}

/// Names a signal action for a log line: `SIG_DFL`, `SIG_IGN`, or the
/// handler's address with its symbol and object when the loader knows them.
fn describe_handler(handler: libc::sighandler_t) -> String {
    match handler {
        libc::SIG_DFL => return "SIG_DFL".into(),
        libc::SIG_IGN => return "SIG_IGN".into(),
        _ => {}
    }
    // SAFETY: Dl_info is plain data; zeroed is valid.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the loader's tables (manager thread, not a
    // signal handler); the strings it returns are owned by the loader.
    let found = unsafe { libc::dladdr(handler as *const libc::c_void, &mut info) } != 0;
    let text = |p: *const libc::c_char| {
        (!p.is_null())
            // SAFETY: non-null dladdr strings are NUL-terminated.
            .then(|| {
                unsafe { std::ffi::CStr::from_ptr(p) }
                    .to_string_lossy()
                    .into_owned()
            })
    };
    let mut out = format!("{handler:#x}");
    if found {
        if let Some(symbol) = text(info.dli_sname) {
            out.push_str(&format!(" ({symbol})"));
        }
        if let Some(object) = text(info.dli_fname) {
            out.push_str(&format!(" in {object}"));
        }
    }
    out
}

fn publish_unwinder(state: UnwindState, retired: &mut Retired) {
    let old = UNWIND.swap(Box::into_raw(Box::new(state)), Ordering::SeqCst);
    if !old.is_null() {
        // SAFETY: `old` came from Box::into_raw in this function.
        retired.push(Retiree::Unwinder(unsafe { Box::from_raw(old) }));
    }
}

fn publish_maps(maps: MapsSnapshot, retired: &mut Retired) {
    let old = MAPS.swap(Box::into_raw(Box::new(maps)), Ordering::SeqCst);
    if !old.is_null() {
        // SAFETY: `old` came from Box::into_raw in this function.
        retired.push(Retiree::Maps(unsafe { Box::from_raw(old) }));
    }
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
    pub(crate) fn start(rate_hz: u32) -> Result<Sampler, Error> {
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
        match Self::start_inner(rate_hz) {
            Ok(s) => Ok(s),
            Err(e) => {
                RUNNING.store(false, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    fn start_inner(rate_hz: u32) -> Result<Sampler, Error> {
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
                        manager.is_finished()
                            || !self.manager_asleep_on_cpu.load(Ordering::SeqCst)
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

fn manage(
    mut timers: timers::Timers,
    mut tables: unwind::TablesCache,
    mut retired: Retired,
    stop: StopSignal,
    counters: Arc<RunCounters>,
    buffer: Arc<SampleBuffer>,
    asleep_on_cpu: Arc<AtomicBool>,
) {
    let mut loader_generation = {
        let p = UNWIND.load(Ordering::SeqCst);
        // SAFETY: only this thread replaces or frees UNWIND while running.
        if p.is_null() {
            0
        } else {
            unsafe { (*p).loader_generation }
        }
    };
    let mut period = SCAN_PERIOD;
    let mut stale_maps = unwind::STALE_MAPS.load(Ordering::Relaxed);
    let mut activity = activity::Activity::new(buffer.taken.load(Ordering::Relaxed));
    let mut listed_claims = context::slot_claims();
    let mut recycled_checked = std::time::Instant::now();
    // Set once another SIGPROF handler replaced ours: nothing left to do
    // but wait for `stop`.
    let mut displaced = false;
    // Idle for long enough: sleep until the process uses CPU (see
    // `activity`), unless the kernel refuses such sleeps.
    let mut cpu_sleep = false;
    let mut cpu_sleep_refused = false;
    let mut idle_looks = 0u32;
    loop {
        if cpu_sleep {
            asleep_on_cpu.store(true, Ordering::SeqCst);
            if !stop.is_stopped() {
                cpu_sleep_refused = !activity::sleep_until_cpu_used(activity::IDLE_WAKE_CPU);
            }
            asleep_on_cpu.store(false, Ordering::SeqCst);
            if stop.is_stopped() {
                break;
            }
        } else if stop.wait(period) {
            break;
        }
        cpu_sleep = false;
        if displaced {
            period = Duration::from_secs(1);
            continue;
        }
        // Code loaded or unloaded (dlopen, dlclose)? Rebuild the unwinder.
        // Checked every wake: one allocation-free dl_iterate_phdr step.
        if unwind::loader_generation() != loader_generation {
            let state = unwind::build_unwinder(&mut tables);
            loader_generation = state.loader_generation;
            publish_unwinder(state, &mut retired);
            if let Some(maps) = MapsSnapshot::read() {
                publish_maps(maps, &mut retired);
            }
        }
        // Listing the threads costs in proportion to their number: do it
        // only when the thread count moved (a new thread: it is armed
        // within one period), when a sample's stack lay outside the maps
        // snapshot, or, while the process uses CPU, every
        // `RECYCLED_CHECK_PERIOD` (a thread that replaced one that exited
        // within the same period leaves the count unchanged; recycled tids),
        // or when a thread registered with the label arena.
        // A look costs one or a few system calls (see `activity`).
        let look = activity.look(buffer.taken.load(Ordering::Relaxed));
        let stale = unwind::STALE_MAPS.load(Ordering::Relaxed);
        let stale_moved = stale != stale_maps;
        let recycled_due = look.busy && recycled_checked.elapsed() >= RECYCLED_CHECK_PERIOD;
        // A thread that registered with the label arena (its first span
        // enter) since the last listing: new, even if the count did not move.
        let claims = context::slot_claims();
        if look.threads_changed || stale_moved || recycled_due || claims != listed_claims {
            // Someone installed another SIGPROF handler over ours (another
            // profiler, a crash reporter): our timers would now feed it. Stop
            // them, say so once, and leave that handler alone. Checked when
            // there is work: a process that uses no CPU fires no timers.
            if let Some(foreign) = foreign_handler() {
                timers.clear();
                ACTIVE.store(false, Ordering::SeqCst);
                counters.threads.store(0, Ordering::Relaxed);
                counters.handler_conflicts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    target: "tracing_pyroscope",
                    handler = %describe_handler(foreign),
                    "another SIGPROF handler replaced tracing-pyroscope's (another profiler?); CPU sampling stopped"
                );
                displaced = true;
                continue;
            }
            // New threads (read before their timers are armed, so their
            // stacks are known by their first sample), or samples whose
            // stack lay outside the snapshot: read the maps again.
            // Recycled tids are looked for at most every
            // `RECYCLED_CHECK_PERIOD` (one `timer_gettime` per thread).
            let check_recycled = recycled_checked.elapsed() >= RECYCLED_CHECK_PERIOD;
            if check_recycled {
                recycled_checked = std::time::Instant::now();
            }
            let mut refreshed = false;
            timers.scan(check_recycled, || {
                if let Some(maps) = MapsSnapshot::read() {
                    publish_maps(maps, &mut retired);
                }
                refreshed = true;
            });
            if !refreshed && stale_moved {
                if let Some(maps) = MapsSnapshot::read() {
                    publish_maps(maps, &mut retired);
                }
            }
            stale_maps = stale;
            // Entries the scan claimed itself count as seen.
            listed_claims = context::slot_claims();
            activity.scanned(&look);
            counters
                .threads
                .store(timers.len() as u64, Ordering::Relaxed);
            counters
                .timer_errors
                .store(timers.create_errors, Ordering::Relaxed);
        }
        // Busy: look again soon (less often in processes with many
        // threads, up to once a second). Idle for `IDLE_LOOKS` looks: sleep
        // until the process uses CPU (no wakes while it stays idle), or,
        // where the kernel refuses that, back off up to once a second.
        if look.busy || look.threads_changed || stale_moved {
            idle_looks = 0;
            period = scan_period(timers.len());
        } else if cpu_sleep_refused {
            period = activity::back_off(period);
        } else {
            idle_looks = idle_looks.saturating_add(1);
            cpu_sleep = idle_looks >= activity::IDLE_LOOKS;
        }
        retired.collect();
        counters
            .retired
            .store(retired.len() as u64, Ordering::Relaxed);
        counters.reclaimed.store(retired.freed(), Ordering::Relaxed);
    }
    timers.clear();
    shut_down(&mut retired, buffer);
}

/// Moves samples from the signal buffer to the heap queue whenever the
/// buffer's wake mark is reached, and sleeps otherwise (no polling: at idle
/// it never wakes). Nothing slow happens here.
fn drain_loop(buffer: &SampleBuffer, queue: &Queue) {
    while !buffer.stopping() {
        queue.move_from(buffer);
        buffer.sleep(None);
    }
    queue.move_from(buffer);
}

/// Stops sampling (after the caller deleted the timers): unpublishes the
/// unwinder, maps and signal buffer, then waits out the handlers still
/// running before freeing them (or leaks them if one seems stuck).
fn shut_down(retired: &mut Retired, buffer: Arc<SampleBuffer>) {
    ACTIVE.store(false, Ordering::SeqCst);
    let u = UNWIND.swap(ptr::null_mut(), Ordering::SeqCst);
    let m = MAPS.swap(ptr::null_mut(), Ordering::SeqCst);
    // Only ours: a later sampler may have published its own meanwhile.
    let _ = BUFFER.compare_exchange(
        Arc::as_ptr(&buffer).cast_mut(),
        ptr::null_mut(),
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    // SAFETY: both came from Box::into_raw and are no longer published.
    unsafe {
        if !u.is_null() {
            retired.push(Retiree::Unwinder(Box::from_raw(u)));
        }
        if !m.is_null() {
            retired.push(Retiree::Maps(Box::from_raw(m)));
        }
    }
    retired.push(Retiree::Buffer(buffer));
    if !retired.collect_all(Duration::from_secs(2)) {
        // A handler preempted for seconds: leak rather than risk a use
        // after free.
        std::mem::forget(std::mem::take(retired));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Tests that start a sampler in this process, or use the grace-period
    /// counters, take turns.
    pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
        static SERIAL: Mutex<()> = Mutex::new(());
        SERIAL.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in a forked child and returns its exit status (or 100 +
    /// the signal that killed it).
    fn in_child(f: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the child only runs `f` and then `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = f();
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            100 + libc::WTERMSIG(status)
        }
    }

    #[test]
    fn a_forked_child_starts_from_a_clean_sampler_state() {
        // In a first child (so this process's state is untouched), leave the
        // state a fork can catch mid-flight: a running sampler, a handler
        // counted as running, a slot being written and a cache in use on
        // threads that the second fork will not copy.
        let status = in_child(|| {
            let mut sampler = match Sampler::start(1000) {
                Ok(s) => s,
                Err(_) => return 1,
            };
            let state = shared();
            // SAFETY: the running sampler's buffer, alive while it runs.
            let buffer = unsafe { &*BUFFER.load(Ordering::SeqCst) };
            // Claimed and never published: a handler caught mid-write.
            let _ = buffer.claim();
            state.caches[0].busy.store(true, Ordering::SeqCst);
            let parity = reclaim::enter();
            let status = in_child(|| {
                let shared = shared();
                if !reclaim::quiescent()
                    || ACTIVE.load(Ordering::SeqCst)
                    || !BUFFER.load(Ordering::SeqCst).is_null()
                    || shared.caches.iter().any(|c| c.busy.load(Ordering::SeqCst))
                {
                    return 2;
                }
                // The child's own sampler starts and samples this thread.
                let Ok(mut own) = Sampler::start(1000) else {
                    return 3;
                };
                let mut x = 1u64;
                let mut samples = 0;
                for _ in 0..2000 {
                    for i in 0..100_000u64 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                    }
                    samples += own.drain(|_, _, _| {});
                    if samples > 0 {
                        break;
                    }
                }
                own.stop();
                if samples == 0 {
                    return 4;
                }
                0
            });
            reclaim::exit(parity);
            state.caches[0].busy.store(false, Ordering::SeqCst);
            sampler.stop();
            status
        });
        assert_eq!(
            status, 0,
            "1: start, 2: dirty state, 3: AlreadyRunning, 4: no samples"
        );
    }

    /// Spinning threads for the reclamation test. 64 by default: on a
    /// 2-core machine 512 spinners starve the manager thread itself, which
    /// then scans (and retires) only a few times in the whole run. Set
    /// `SAMPLER_TEST_SPINNERS=512` on a bigger machine.
    fn spinners() -> usize {
        std::env::var("SAMPLER_TEST_SPINNERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64)
    }

    /// This thread's CPU time in nanoseconds.
    fn thread_cpu_nanos() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid out-pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    /// Spins for 20 ms of its own CPU time, then hands over to a new thread
    /// and exits, until `stop`: constant CPU load with constant churn, so
    /// every scan finds new threads and retires the maps snapshot.
    fn relay(stop: Arc<AtomicBool>, live: Arc<AtomicU64>, exits: Arc<AtomicU64>) {
        let end = thread_cpu_nanos() + 20_000_000;
        let mut x = 1u64;
        while thread_cpu_nanos() < end && !stop.load(Ordering::Relaxed) {
            for _ in 0..1000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        if !stop.load(Ordering::Relaxed) {
            let (s, l, e) = (stop.clone(), live.clone(), exits.clone());
            let next = std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || relay(s, l, e));
            if next.is_ok() {
                live.fetch_add(1, Ordering::SeqCst);
            }
        }
        exits.fetch_add(1, Ordering::Relaxed);
        live.fetch_sub(1, Ordering::SeqCst);
    }

    #[test]
    fn retired_snapshots_stay_bounded_under_many_spinning_threads_with_churn() {
        let _serial = serial();
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(AtomicU64::new(0));
        let exits = Arc::new(AtomicU64::new(0));
        for _ in 0..spinners() {
            let (s, l, e) = (stop.clone(), live.clone(), exits.clone());
            live.fetch_add(1, Ordering::SeqCst);
            let spawned = std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || relay(s, l, e));
            if spawned.is_err() {
                live.fetch_sub(1, Ordering::SeqCst);
                break; // the machine's thread limit
            }
        }
        let spinning = live.load(Ordering::SeqCst);
        let mut sampler = Sampler::start(1000).expect("start");
        // On a machine with hundreds of cores, some handler is always in
        // flight, some of them preempted mid-way for a scheduling round.
        // Two cores rarely show that, so two threads play such handlers,
        // each counted in for 30 ms, staggered: at every instant at least
        // one is in flight, as the single-counter scheme could not bear.
        let stalls: Vec<_> = (0..2u64)
            .map(|k| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(15 * k));
                    while !stop.load(Ordering::Relaxed) {
                        let parity = reclaim::enter();
                        std::thread::sleep(Duration::from_millis(30));
                        reclaim::exit(parity);
                    }
                })
            })
            .collect();
        let mut peak = 0;
        let mut samples = 0;
        let started = std::time::Instant::now();
        // 8 s, or longer (up to 40 s) on a busy machine until there has
        // been enough churn to judge.
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = sampler.stats();
            peak = peak.max(now.retired);
            samples += sampler.drain(|_, _, _| {});
            let elapsed = started.elapsed();
            let churned = now.reclaimed + now.retired >= 20;
            if (elapsed >= Duration::from_secs(8) && churned) || elapsed >= Duration::from_secs(40)
            {
                break;
            }
        }
        let stats = sampler.stats();
        stop.store(true, Ordering::Relaxed);
        for stall in stalls {
            let _ = stall.join();
        }
        sampler.stop();
        while live.load(Ordering::SeqCst) > 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
        println!(
            "{spinning} spinning threads, {} thread exits: retired peak {peak}, reclaimed {}, samples {samples}, {stats:?}",
            exits.load(Ordering::Relaxed),
            stats.reclaimed
        );
        assert!(
            stats.reclaimed + stats.retired >= 20,
            "too little churn to test: {stats:?}"
        );
        assert!(peak <= 16, "retired snapshots piled up: peak {peak}");
    }

    #[test]
    fn samples_wait_in_the_heap_queue_while_the_collector_is_busy() {
        // The collector does slow work (a first debug-info load, a big
        // encode) and does not drain for seconds: the drain thread moves
        // samples out of the signal buffer meanwhile. The stall is long
        // enough to fill the signal buffer several times over (on 2 CPUs
        // CPU-time timers fire at most ~500 times a second).
        let _serial = serial();
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = (0..8u64)
            .map(|t| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let begin = thread_cpu_nanos();
                    let mut x = t;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..1000 {
                            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                        }
                    }
                    thread_cpu_nanos() - begin
                })
            })
            .collect();
        let mut sampler = Sampler::start(1000).expect("start");
        let slots = sampler.stats().buffer_slots;
        let started = std::time::Instant::now();
        // The stalled collector: no drain until the signals taken exceed
        // two buffers' worth (or 30 s pass).
        let signals = |s: SamplerStats| s.taken + s.dropped;
        while signals(sampler.stats()) < 2 * slots && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        let cpu: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
        sampler.stop();
        let mut periods = 0u64;
        let samples = sampler.drain(|_, _, weight| periods += u64::from(weight));
        let stats = sampler.stats();
        println!(
            "stalled {:?}: {samples} samples ({periods} periods) for {:.2} CPU-s; {stats:?}",
            started.elapsed(),
            cpu as f64 / 1e9
        );
        assert!(
            signals(stats) >= 2 * slots,
            "too few signals to test: {stats:?}"
        );
        assert_eq!(
            stats.dropped, 0,
            "samples lost while the collector was busy"
        );
        assert_eq!(
            samples as u64, stats.taken,
            "every sample taken reaches the collector"
        );
    }

    #[test]
    fn stopping_a_manager_asleep_on_cpu_time_spins_no_core() {
        let _serial = serial();
        let mut sampler = Sampler::start(100).expect("start");
        // Idle: the manager goes to sleep until the process uses CPU time
        // (unless other tests keep the process busy: then there is nothing
        // to test).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !sampler.manager_asleep_on_cpu.load(Ordering::SeqCst)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !sampler.manager_asleep_on_cpu.load(Ordering::SeqCst) {
            println!("skipped: the manager never slept (a busy process)");
            sampler.stop();
            return;
        }
        let (cpu, wall) = (thread_cpu_nanos(), std::time::Instant::now());
        sampler.stop();
        let (cpu, wall) = (thread_cpu_nanos() - cpu, wall.elapsed());
        println!("stop: {cpu} ns of this thread's CPU, {wall:?}");
        assert!(wall < Duration::from_secs(2), "stop took {wall:?}");
        // Burning the CPU time the manager waits for would take about
        // `IDLE_WAKE_CPU` (1 ms) of it.
        assert!(cpu < 500_000, "stop used {cpu} ns of CPU");
    }

    #[test]
    fn scan_period_grows_with_threads_and_is_capped() {
        assert_eq!(scan_period(0), SCAN_PERIOD);
        assert_eq!(scan_period(64), SCAN_PERIOD);
        assert_eq!(scan_period(640), SCAN_PERIOD * 10);
        assert_eq!(scan_period(1_000_000), Duration::from_secs(1));
    }

    #[test]
    fn headroom_is_measured_on_fixed_size_thread_stacks() {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let maps = MapsSnapshot::read().expect("read /proc/self/maps");
                let local = 0u64;
                let sp = &local as *const u64 as u64;
                let range = maps
                    .readable_range(sp)
                    .expect("the stack is mapped")
                    .clone();
                // Near the top of a fresh thread stack: plenty of room.
                assert!(maps.has_headroom(sp, 16 * 1024));
                // A stack pointer 1 KiB above the mapping's start has none.
                assert!(!maps.has_headroom(range.start + 1024, 16 * 1024));
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn headroom_is_measured_from_the_handlers_frame_not_the_interrupted_sp() {
        // A 256 KiB thread stack. The interrupted code's sp has 20 KiB left,
        // but the kernel's signal frame (with AVX-512 or AMX state) and the
        // handler's own frames took 14 KiB of it: the handler's frame is 6
        // KiB above the stack's bottom. Unwinding (~9 KiB) would overflow.
        let base = 0x7f00_0000_0000u64;
        let maps = MapsSnapshot::from_ranges(std::iter::once(base..base + 256 * 1024).collect());
        let sp = base + 20 * 1024;
        assert!(!handler::plan(handler::InHandler::for_test(), &maps, None, sp, base + 6 * 1024).unwinds());
        // The handler's frame just above the headroom it needs (16 KiB in
        // release): room to unwind.
        let frame = base + handler::HANDLER_HEADROOM + 1024;
        assert!(handler::plan(handler::InHandler::for_test(), &maps, None, frame - 4096, frame).unwinds());
    }

    #[test]
    fn an_sp_outside_the_snapshot_gets_the_leaf_only_and_a_maps_reread() {
        // A stack mapped after the snapshot (a new thread, a fiber, the
        // main stack grown): nothing is known about its bounds.
        let base = 0x7f00_0000_0000u64;
        let maps = MapsSnapshot::from_ranges(std::iter::once(base..base + 256 * 1024).collect());
        let elsewhere = 0x7e00_0000_0000u64;
        let stale = unwind::STALE_MAPS.load(Ordering::Relaxed);
        assert!(!handler::plan(handler::InHandler::for_test(), &maps, None, elsewhere, base + 128 * 1024).unwinds());
        assert!(unwind::STALE_MAPS.load(Ordering::Relaxed) > stale);
        // A handler frame outside the snapshot has no known headroom.
        assert!(!handler::plan(handler::InHandler::for_test(), &maps, None, base + 64 * 1024, elsewhere).unwinds());
    }

    #[test]
    fn maps_snapshot_bounds_reads_to_mapped_memory() {
        let maps = MapsSnapshot::read().expect("read /proc/self/maps");
        let local = 0u64;
        let addr = &local as *const u64 as u64;
        let end = maps.readable_range(addr).expect("the stack is mapped").end;
        assert!(end > addr);
        assert_eq!(maps.readable_range(8), None, "page zero is never mapped");
    }
}
