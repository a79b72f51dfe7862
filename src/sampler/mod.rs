//! The span-aware sampling CPU profiler (Linux on x86_64 and aarch64).
//!
//! - **Timers** ([`timers`]): one POSIX timer per thread on that thread's own
//!   CPU-time clock, delivering `SIGPROF` to that thread, so every busy
//!   thread is sampled at the configured rate of its own CPU time. A manager
//!   thread picks up new threads every [`SCAN_PERIOD`] (less often in
//!   processes with hundreds of threads, see `scan_period`). There is no
//!   process-wide `setitimer` fallback: per-thread timers exist on every
//!   Linux since 2.6.12, and if `timer_create` fails for a thread that thread
//!   is counted (and retried on the next scan) rather than sampled wrongly.
//! - **Signal handler**: installed with `SA_RESTART` (most interrupted
//!   application syscalls are restarted; those Linux never restarts after a
//!   handler, such as `epoll_wait`, `poll`, `select`, `nanosleep` and calls
//!   with a timeout, can still return `EINTR`, as under any signal-based
//!   profiler, and callers must retry as std and mio do) and `SA_SIGINFO`;
//!   it saves and restores `errno`. It reads the thread span slot
//!   ([`crate::context`]), unwinds the interrupted stack ([`unwind`]) and
//!   writes into a preallocated lock-free buffer ([`buffer`]). It allocates
//!   nothing, takes no lock and makes no syscall, so it cannot deadlock a
//!   thread interrupted inside `malloc` or the dynamic loader. Samples that
//!   find no free slot are counted as dropped.
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
//!   (running flags, in-flight slots and caches), so a child that never
//!   profiles is untouched (no timers are inherited; the handler is inert)
//!   and a child that starts its own profiler samples itself. The parent's
//!   sampler object, if the child holds it, is left alone (its threads live
//!   only in the parent).
//! - **Stack headroom**: the handler runs on the interrupted thread's own
//!   stack (no `SA_ONSTACK`), below the kernel's signal frame. It unwinds
//!   only if the stack pointer lies in a mapping of the maps snapshot and if
//!   at least [`unwind::HANDLER_HEADROOM`] (16 KiB) is left below the
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
//! - **Limits**: objects unloaded with `dlclose` while sampling are noticed
//!   on the next scan; a sample landing in the short window in between could
//!   read unmapped unwind data. Threads living less than one scan period may
//!   go unsampled.

use std::cell::UnsafeCell;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::sync::StopSignal;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::context::{self, SpanLabels};
use crate::{Error, ErrorKind};

mod buffer;
mod timers;
mod unwind;

use buffer::SampleBuffer;
use unwind::{MapsSnapshot, NativeCache, Plan, Regs, UnwindState};

/// How often the manager looks for new and exited threads.
pub(crate) const SCAN_PERIOD: Duration = Duration::from_millis(20);
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
    buffer: SampleBuffer,
    caches: Box<[CacheSlot]>,
    /// Samples recorded with the leaf only: every unwinder cache was busy,
    /// the handler's stack had no headroom left, or the interrupted stack
    /// lay outside the maps snapshot.
    unwind_busy: AtomicU64,
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
/// Handlers currently running (grace period for retiring published data).
static IN_HANDLER: AtomicUsize = AtomicUsize::new(0);
static UNWIND: AtomicPtr<UnwindState> = AtomicPtr::new(ptr::null_mut());
static MAPS: AtomicPtr<MapsSnapshot> = AtomicPtr::new(ptr::null_mut());

fn shared() -> &'static Shared {
    static AT_FORK: std::sync::Once = std::sync::Once::new();
    AT_FORK.call_once(|| {
        // SAFETY: registers a plain function; it runs in the child of every
        // later fork(), where it only stores to atomics.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
    SHARED.get_or_init(|| Shared {
        buffer: SampleBuffer::new(),
        caches: (0..CACHES)
            .map(|_| CacheSlot {
                busy: AtomicBool::new(false),
                cache: UnsafeCell::new(NativeCache::new_in()),
            })
            .collect(),
        unwind_busy: AtomicU64::new(0),
    })
}

/// Runs in the child right after `fork()`, where only the forking thread
/// exists: the parent's manager thread, timers and drain consumer do not.
/// Resets what the child inherited mid-flight so that it can start its own
/// sampler: the running flags, handlers counted as running on threads that
/// are gone, slots they were writing (and the parent's unread samples, which
/// belong to the parent's profile), and unwinder caches they held. The
/// handler stays installed but inert, as after `stop`. Atomics only, as
/// required between `fork` and `exec`.
extern "C" fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::SeqCst);
    ACTIVE.store(false, Ordering::SeqCst);
    IN_HANDLER.store(0, Ordering::SeqCst);
    if let Some(shared) = SHARED.get() {
        shared.buffer.reset();
        for cache in shared.caches.iter() {
            cache.busy.store(false, Ordering::SeqCst);
        }
    }
    RUNNING.store(false, Ordering::SeqCst);
}

/// The start of the kernel's `siginfo_t` for POSIX timer signals
/// (`_sigfault` union member `_timer`), on 64-bit Linux.
#[repr(C)]
struct TimerSigInfo {
    si_signo: libc::c_int,
    si_errno: libc::c_int,
    si_code: libc::c_int,
    _pad: libc::c_int,
    si_tid: libc::c_int,
    si_overrun: libc::c_int,
}

/// How many timer periods this signal stands for. When expirations are
/// detected late (CPU timers are checked at scheduler ticks) the kernel
/// merges them and reports the extra ones as the overrun count; weighting by
/// it keeps sample counts proportional to CPU time.
fn weight(info: *const libc::siginfo_t) -> u32 {
    if info.is_null() {
        return 1;
    }
    // SAFETY: the kernel passes a full siginfo_t (128 bytes), larger than
    // TimerSigInfo; for SI_TIMER the `_timer` member is the active one.
    let info = unsafe { &*(info as *const TimerSigInfo) };
    if info.si_code == libc::SI_TIMER && info.si_overrun > 0 {
        (info.si_overrun as u32).saturating_add(1).min(1000)
    } else {
        1
    }
}

extern "C" fn on_sigprof(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: __errno_location returns this thread's errno slot.
    let errno = unsafe { *libc::__errno_location() };
    IN_HANDLER.fetch_add(1, Ordering::SeqCst);
    if ACTIVE.load(Ordering::SeqCst) {
        if let Some(shared) = SHARED.get() {
            take_sample(shared, ctx, weight(info));
        }
    }
    IN_HANDLER.fetch_sub(1, Ordering::SeqCst);
    // SAFETY: as above; restoring errno keeps the interrupted code's view intact.
    unsafe { *libc::__errno_location() = errno };
}

/// Reads pc/sp/fp/lr from the signal context.
fn regs_from(ctx: *mut libc::c_void) -> Option<Regs> {
    if ctx.is_null() {
        return None;
    }
    // SAFETY: for an SA_SIGINFO handler the kernel passes a valid ucontext_t
    // describing the interrupted thread; we only read it.
    let uc = unsafe { &*(ctx as *const libc::ucontext_t) };
    #[cfg(target_arch = "x86_64")]
    {
        let g = &uc.uc_mcontext.gregs;
        Some(Regs {
            pc: g[libc::REG_RIP as usize] as u64,
            sp: g[libc::REG_RSP as usize] as u64,
            fp: g[libc::REG_RBP as usize] as u64,
            lr: 0,
        })
    }
    #[cfg(target_arch = "aarch64")]
    {
        let m = &uc.uc_mcontext;
        Some(Regs {
            pc: m.pc,
            sp: m.sp,
            fp: m.regs[29],
            lr: m.regs[30],
        })
    }
}

#[inline]
fn take_sample(shared: &Shared, ctx: *mut libc::c_void, weight: u32) {
    // A local of the handler's own frame: the stack left below it is what
    // the handler can use (on the interrupted thread's stack, below the
    // kernel's signal frame).
    let marker = 0u8;
    let here = std::hint::black_box(ptr::addr_of!(marker)) as u64;
    let labels = context::read_in_signal_handler();
    let Some(regs) = regs_from(ctx) else { return };
    let Some(mut claim) = shared.buffer.claim() else {
        return; // counted as dropped by `claim`
    };
    let data = claim.data();
    data.labels = labels;
    data.weight = weight;
    data.frames[0] = regs.pc;
    data.depth = 1;
    let unwinder = UNWIND.load(Ordering::SeqCst);
    let maps = MAPS.load(Ordering::SeqCst);
    if !unwinder.is_null() && !maps.is_null() {
        // SAFETY: the unwinder and maps are kept alive while a handler runs
        // (they are only freed after a grace period with none running).
        let (state, maps) = unsafe { (&*unwinder, &*maps) };
        match unwind::plan(maps, regs.sp, here) {
            Plan::LeafOnly => {
                shared.unwind_busy.fetch_add(1, Ordering::Relaxed);
            }
            Plan::Unwind => {
                if let Some(slot) = shared.caches.iter().find(|c| {
                    c.busy
                        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                }) {
                    // SAFETY: `busy` gives us exclusive use of this cache.
                    let cache = unsafe { &mut *slot.cache.get() };
                    data.depth = unwind::unwind(state, maps, cache, regs, &mut data.frames).max(1);
                    slot.busy.store(false, Ordering::Release);
                } else {
                    shared.unwind_busy.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    claim.publish(&shared.buffer);
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

/// Retired published data, freed once no handler is running.
///
/// The boxes must stay boxes: a handler may still read them at their
/// published address until the grace period has passed.
#[derive(Default)]
#[allow(clippy::vec_box)]
struct Retired {
    unwinders: Vec<Box<UnwindState>>,
    maps: Vec<Box<MapsSnapshot>>,
}

impl Retired {
    fn collect(&mut self) {
        if (!self.unwinders.is_empty() || !self.maps.is_empty())
            && IN_HANDLER.load(Ordering::SeqCst) == 0
        {
            self.unwinders.clear();
            self.maps.clear();
        }
    }
}

fn publish_unwinder(state: UnwindState, retired: &mut Retired) {
    let old = UNWIND.swap(Box::into_raw(Box::new(state)), Ordering::SeqCst);
    if !old.is_null() {
        // SAFETY: `old` came from Box::into_raw in this function.
        retired.unwinders.push(unsafe { Box::from_raw(old) });
    }
}

fn publish_maps(maps: MapsSnapshot, retired: &mut Retired) {
    let old = MAPS.swap(Box::into_raw(Box::new(maps)), Ordering::SeqCst);
    if !old.is_null() {
        // SAFETY: `old` came from Box::into_raw in this function.
        retired.maps.push(unsafe { Box::from_raw(old) });
    }
}

/// Sampler counters.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SamplerStats {
    pub(crate) taken: u64,
    pub(crate) dropped: u64,
    pub(crate) unwind_busy: u64,
    pub(crate) threads: u64,
    pub(crate) timer_errors: u64,
    /// 1 once another `SIGPROF` handler replaced ours while this sampler
    /// ran: sampling stopped then (and a warning was logged). For `Stats`.
    #[allow(dead_code)]
    pub(crate) handler_conflicts: u64,
}

/// Counters one sampler's manager thread keeps.
#[derive(Default)]
struct RunCounters {
    threads: AtomicU64,
    timer_errors: AtomicU64,
    handler_conflicts: AtomicU64,
}

/// A running sampler. Stops on drop.
pub(crate) struct Sampler {
    period_nanos: u64,
    /// [`FORK_GENERATION`] at start: in a forked child this sampler is the
    /// parent's, and stopping or dropping it must not touch the child's.
    fork_generation: u64,
    stop: StopSignal,
    manager: Option<JoinHandle<()>>,
    counters: Arc<RunCounters>,
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
        let shared = shared();
        // Discard anything left over from a previous run.
        shared.buffer.drain(|_, _, _| {});
        install_handler()?;
        let mut retired = Retired::default();
        publish_unwinder(unwind::build_unwinder(), &mut retired);
        if let Some(maps) = MapsSnapshot::read() {
            publish_maps(maps, &mut retired);
        }
        ACTIVE.store(true, Ordering::SeqCst);

        let period_nanos = 1_000_000_000 / u64::from(rate_hz);
        let stop = StopSignal::new();
        let counters = Arc::new(RunCounters::default());
        let mut timers = timers::Timers::new(period_nanos);
        // Arm the threads alive now before returning, so work started right
        // after `start` is sampled.
        if timers.scan(true) {
            if let Some(maps) = MapsSnapshot::read() {
                publish_maps(maps, &mut retired);
            }
        }
        counters
            .threads
            .store(timers.len() as u64, Ordering::Relaxed);
        let manager = {
            let stop = stop.clone();
            let counters = counters.clone();
            std::thread::Builder::new()
                .name("pyroscope-timer".into())
                .spawn(move || {
                    // Its samples get a root frame naming it (context.rs).
                    context::mark_profiler_thread(context::ProfilerThread::Timers);
                    manage(timers, retired, stop, counters)
                })
        };
        let manager = match manager {
            Ok(m) => m,
            Err(e) => {
                ACTIVE.store(false, Ordering::SeqCst);
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
            counters,
        })
    }

    /// Nanoseconds of CPU time per sample.
    pub(crate) fn period_nanos(&self) -> u64 {
        self.period_nanos
    }

    /// Passes every sample taken since the last drain to `f`: labels, stack
    /// (leaf first: pc, then return addresses) and weight (timer periods).
    pub(crate) fn drain(&self, f: impl FnMut(SpanLabels, &[u64], u32)) -> usize {
        if !self.owned_by_this_process() {
            return 0;
        }
        shared().buffer.drain(f)
    }

    /// `false` in a forked child: the sampler is the parent's.
    fn owned_by_this_process(&self) -> bool {
        self.fork_generation == FORK_GENERATION.load(Ordering::SeqCst)
    }

    pub(crate) fn stats(&self) -> SamplerStats {
        let s = shared();
        SamplerStats {
            taken: s.buffer.taken.load(Ordering::Relaxed),
            dropped: s.buffer.dropped.load(Ordering::Relaxed),
            unwind_busy: s.unwind_busy.load(Ordering::Relaxed),
            threads: self.counters.threads.load(Ordering::Relaxed),
            timer_errors: self.counters.timer_errors.load(Ordering::Relaxed),
            handler_conflicts: self.counters.handler_conflicts.load(Ordering::Relaxed),
        }
    }

    /// Stops the timers and waits for running handlers. Idempotent. Samples
    /// already taken stay in the buffer for a final `drain`.
    pub(crate) fn stop(&mut self) {
        let Some(manager) = self.manager.take() else {
            return;
        };
        if !self.owned_by_this_process() {
            // The manager thread lives only in the parent.
            std::mem::forget(manager);
            return;
        }
        self.stop.stop();
        let _ = manager.join();
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop();
        if !self.owned_by_this_process() {
            return;
        }
        // Only now: a stopped sampler may still `drain` (the collector's final
        // drain), and the buffer allows one consumer at a time, so a new
        // sampler (whose start drains too) must wait until this one is gone.
        RUNNING.store(false, Ordering::SeqCst);
    }
}

fn manage(
    mut timers: timers::Timers,
    mut retired: Retired,
    stop: StopSignal,
    counters: Arc<RunCounters>,
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
    let mut scans: u64 = 0;
    let mut period = SCAN_PERIOD;
    let mut stale_maps = unwind::STALE_MAPS.load(Ordering::Relaxed);
    // Set once another SIGPROF handler replaced ours: nothing left to do
    // but wait for `stop`.
    let mut displaced = false;
    loop {
        if stop.wait(period) {
            break;
        }
        if displaced {
            period = Duration::from_secs(1);
            continue;
        }
        // Someone installed another SIGPROF handler over ours (another
        // profiler, a crash reporter): our timers would now feed it. Stop
        // them, say so once, and leave that handler alone.
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
        scans += 1;
        // New code loaded (dlopen)? Rebuild the unwinder, checked every 0.5 s.
        if scans.is_multiple_of(25) {
            let generation = unwind::loader_generation();
            if generation != loader_generation {
                let state = unwind::build_unwinder();
                loader_generation = state.loader_generation;
                publish_unwinder(state, &mut retired);
                if let Some(maps) = MapsSnapshot::read() {
                    publish_maps(maps, &mut retired);
                }
            }
        }
        // New threads, or samples whose stack lay outside the snapshot:
        // read the maps again.
        let added = timers.scan(scans.is_multiple_of(25));
        let stale = unwind::STALE_MAPS.load(Ordering::Relaxed) != stale_maps;
        if added || stale {
            stale_maps = unwind::STALE_MAPS.load(Ordering::Relaxed);
            if let Some(maps) = MapsSnapshot::read() {
                publish_maps(maps, &mut retired);
            }
        }
        counters
            .threads
            .store(timers.len() as u64, Ordering::Relaxed);
        // Listing threads costs in proportion to their number: scan less
        // often in processes with many threads (up to once a second).
        period = scan_period(timers.len());
        counters
            .timer_errors
            .store(timers.create_errors, Ordering::Relaxed);
        retired.collect();
    }
    // Shut down: no new signals from us, then wait out running handlers.
    timers.clear();
    ACTIVE.store(false, Ordering::SeqCst);
    let mut spins = 0;
    while IN_HANDLER.load(Ordering::SeqCst) != 0 && spins < 10_000 {
        std::thread::yield_now();
        spins += 1;
    }
    if IN_HANDLER.load(Ordering::SeqCst) == 0 {
        let u = UNWIND.swap(ptr::null_mut(), Ordering::SeqCst);
        let m = MAPS.swap(ptr::null_mut(), Ordering::SeqCst);
        // SAFETY: both came from Box::into_raw; ACTIVE is false and no
        // handler is running, so none can hold them.
        unsafe {
            if !u.is_null() {
                drop(Box::from_raw(u));
            }
            if !m.is_null() {
                drop(Box::from_raw(m));
            }
        }
        retired.unwinders.clear();
        retired.maps.clear();
    } else {
        // Extremely unlikely; leak rather than risk a use-after-free.
        std::mem::forget(retired);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            // The claim marks its slot in flight; it has no destructor.
            let _in_flight = state.buffer.claim();
            state.caches[0].busy.store(true, Ordering::SeqCst);
            IN_HANDLER.fetch_add(1, Ordering::SeqCst);
            let status = in_child(|| {
                let shared = shared();
                if IN_HANDLER.load(Ordering::SeqCst) != 0
                    || ACTIVE.load(Ordering::SeqCst)
                    || shared.buffer.busy_slots() != 0
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
            IN_HANDLER.fetch_sub(1, Ordering::SeqCst);
            state.caches[0].busy.store(false, Ordering::SeqCst);
            sampler.stop();
            status
        });
        assert_eq!(
            status, 0,
            "1: start, 2: dirty state, 3: AlreadyRunning, 4: no samples"
        );
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
        #[allow(clippy::single_range_in_vec_init)] // one mapping, not a range of items
        let maps = MapsSnapshot::from_ranges(vec![base..base + 256 * 1024]);
        let sp = base + 20 * 1024;
        assert_eq!(unwind::plan(&maps, sp, base + 6 * 1024), Plan::LeafOnly);
        // The same sp with the handler's frame 17 KiB up: room to unwind.
        assert_eq!(unwind::plan(&maps, sp, base + 17 * 1024), Plan::Unwind);
    }

    #[test]
    fn an_sp_outside_the_snapshot_gets_the_leaf_only_and_a_maps_reread() {
        // A stack mapped after the snapshot (a new thread, a fiber, the
        // main stack grown): nothing is known about its bounds.
        let base = 0x7f00_0000_0000u64;
        #[allow(clippy::single_range_in_vec_init)] // one mapping, not a range of items
        let maps = MapsSnapshot::from_ranges(vec![base..base + 256 * 1024]);
        let elsewhere = 0x7e00_0000_0000u64;
        let stale = unwind::STALE_MAPS.load(Ordering::Relaxed);
        assert_eq!(
            unwind::plan(&maps, elsewhere, base + 128 * 1024),
            Plan::LeafOnly
        );
        assert!(unwind::STALE_MAPS.load(Ordering::Relaxed) > stale);
        // A handler frame outside the snapshot has no known headroom.
        assert_eq!(
            unwind::plan(&maps, base + 64 * 1024, elsewhere),
            Plan::LeafOnly
        );
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
