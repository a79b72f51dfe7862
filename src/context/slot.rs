//! Where each thread's [`SpanLabels`] live: entries of a global arena, so
//! that a signal handler (and any other thread) can read them without
//! touching thread-local storage.
//!
//! A thread local is not always a plain memory access. In a shared library
//! loaded with `dlopen` (a Python or Node extension), or in any `cdylib`, it
//! is reached through `__tls_get_addr`, which on a thread's first access
//! allocates the library's TLS block with `malloc` and may take the dynamic
//! loader's lock. A `SIGPROF` handler doing that on a thread that never
//! touched the library (a host thread interrupted inside `malloc`) can
//! deadlock it. So the labels live here instead:
//!
//! - **The arena**: chunks of [`CHUNK`] entries, allocated by normal code
//!   on demand and never freed, so an entry, once handed out, stays valid
//!   memory for the process's lifetime. An entry is atomics only: its owner
//!   word (`generation << 32 | tid`, tid 0 for a free entry), the
//!   profiler-thread marker and two copies of the labels with a flip
//!   counter. Looking one up by index is a bounds-checked array access and
//!   an atomic load (`OnceLock::get`).
//! - **Writers**: only the owning thread writes its entry ([`replace`]). It
//!   finds it through a `const` thread local on first use (normal code may
//!   use TLS), checks that the entry is still its own (a fork or a release
//!   by the manager changes its owner word), fills the inactive copy and
//!   bumps the counter: no lock, no allocation, no system call. A
//!   `fence(Release)` before the copy is written makes the counter a
//!   sequence lock for readers on other threads (free on x86-64); signal
//!   fences order it for a handler interrupting the writer on its own
//!   thread.
//! - **Registration** (once per thread, slow path): [`slot_for_tid`] finds or
//!   claims the entry of a kernel thread id under a lock. The thread itself
//!   calls it on its first [`replace`] (reading its tid from
//!   `/proc/thread-self`), and the sampler's manager calls it when it arms
//!   the thread's CPU timer, so both agree on one entry. The timer's
//!   `sigev_value` carries the entry's [`SlotRef`] (index and generation),
//!   which the kernel hands to the handler in `si_value`.
//! - **Release**: a thread-local guard returns the entry at thread exit
//!   (owner `(g, tid)` → `(g + 1, 0)`, a compare-and-swap); the manager does
//!   the same for threads that vanished without it (threads that never
//!   touched the crate) and, now and then, for entries whose tid no longer
//!   exists. The generation makes a stale [`SlotRef`] (a reused tid, a
//!   released entry) read as "no labels", never as another thread's.
//! - **Readers**: [`read_slot`], from the signal handler or any thread,
//!   checks the generation and reads the active copy between two loads of
//!   the counter (retrying a few times if a write raced it).
//! - **fork**: the first registry operation in a forked child (its pid
//!   differs) frees every entry, since only the forking thread survived;
//!   that thread notices its entry changed owner and registers again under
//!   its new tid, carrying its labels over. Like every lock in the process,
//!   the registry's would block a child forked while another thread held
//!   it (a few instructions of bookkeeping, once per thread).
//!
//! Threads that cannot get an entry (arena full, no `/proc`, a thread
//! already running its thread-local destructors) keep their labels in a
//! plain thread local: [`current`] still works, samples carry no labels.

use crate::sync::atomic::{compiler_fence, fence, spin, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

use super::{ProfilerThread, SpanLabels};
use crate::sync::lock;

/// Entries per chunk.
const CHUNK: usize = 256;
/// Chunks: at most `CHUNK * CHUNKS` threads (131072) hold an entry at once.
const CHUNKS: usize = 512;
/// Attempts of a read racing writes before it gives up.
const READ_ATTEMPTS: usize = 16;

static ARENA: [OnceLock<Box<[Entry]>>; CHUNKS] = [const { OnceLock::new() }; CHUNKS];
/// Entries ever handed out (the registry's `used`), for [`view`]'s
/// callers: indexes below it are in allocated chunks.
static USED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// One thread's labels. On its own cache lines: only its thread writes it.
#[repr(align(64))]
struct Entry {
    /// `generation << 32 | tid`; tid 0 when free. The generation grows by
    /// one at every release.
    owner: AtomicU64,
    /// Writes so far; the current copy is `copies[flips & 1]`.
    flips: AtomicU32,
    /// [`ProfilerThread::code`] of the owner, 0 for other threads.
    profiler: AtomicU8,
    /// Two copies of the labels (see [`pack`]).
    copies: [[AtomicU64; 4]; 2],
    /// The owner's own stack, `stack_lo..stack_hi`, as the thread itself
    /// reported it when it registered (`pthread_getattr_np`); `stack_hi` 0
    /// when unknown (an entry the manager claimed for a thread that never
    /// called the crate). The handler bounds its stack reads by it.
    stack_lo: AtomicU64,
    stack_hi: AtomicU64,
    /// Samples taken of the owner so far (any profile type), wrapping: the
    /// signal handler adds one per CPU sample it records, the wall sampler
    /// one per blocked or runnable sample. The layer compares it between a
    /// span's enter and exit (`pyroscope.profile.id`).
    samples: AtomicU32,
}

/// An arena entry as one owner period saw it: its index and generation.
/// What the sampler puts in a timer's `sigev_value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlotRef {
    index: u32,
    generation: u32,
}

impl SlotRef {
    /// "No entry" (the arena was full): reads as no labels.
    #[cfg_attr(not(tp_sampler), allow(dead_code))]
    pub(crate) const NONE_BITS: u64 = u64::MAX;

    /// The pointer-sized value a timer carries.
    #[cfg_attr(not(tp_sampler), allow(dead_code))]
    pub(crate) fn to_bits(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    /// The reference in a timer's value; [`NONE_BITS`](Self::NONE_BITS) (an
    /// index past the arena) refers to no entry.
    pub(crate) fn from_bits(bits: u64) -> SlotRef {
        SlotRef {
            index: bits as u32,
            generation: (bits >> 32) as u32,
        }
    }
}

const fn owner_word(generation: u32, tid: u32) -> u64 {
    ((generation as u64) << 32) | tid as u64
}

/// Labels as four words: span id, trace id high and low, name and fields.
#[inline(always)]
fn pack(l: &SpanLabels) -> [u64; 4] {
    [
        l.span_id,
        (l.trace_id >> 64) as u64,
        l.trace_id as u64,
        (u64::from(l.name_id) << 32) | u64::from(l.fields_id),
    ]
}

impl Entry {
    #[cfg(not(all(tracing_pyroscope_loom, test)))]
    const fn new() -> Entry {
        Entry {
            owner: AtomicU64::new(0),
            flips: AtomicU32::new(0),
            profiler: AtomicU8::new(0),
            copies: [const { [const { AtomicU64::new(0) }; 4] }; 2],
            stack_lo: AtomicU64::new(0),
            stack_hi: AtomicU64::new(0),
            samples: AtomicU32::new(0),
        }
    }

    /// Loom's atomics are not `const`.
    #[cfg(all(tracing_pyroscope_loom, test))]
    fn new() -> Entry {
        Entry {
            owner: AtomicU64::new(0),
            flips: AtomicU32::new(0),
            profiler: AtomicU8::new(0),
            copies: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            stack_lo: AtomicU64::new(0),
            stack_hi: AtomicU64::new(0),
            samples: AtomicU32::new(0),
        }
    }

    /// Records the owner's stack (only the owner calls this, on its own
    /// thread). `stack_hi` is stored last: a handler interrupting this on
    /// the same thread sees either no stack or the whole range.
    fn set_stack(&self, stack: std::ops::Range<u64>) {
        self.stack_hi.store(0, Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        self.stack_lo.store(stack.start, Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        self.stack_hi.store(stack.end, Ordering::Release);
    }

    #[inline(always)]
    fn load(&self, copy: usize) -> SpanLabels {
        self.load_pausing(copy, || ())
    }

    /// [`load`](Self::load), calling `pause` after the first word (tests
    /// stand for a slow reader there).
    #[inline(always)]
    fn load_pausing(&self, copy: usize, pause: impl FnOnce()) -> SpanLabels {
        let w = &self.copies[copy & 1];
        let a = w[0].load(Ordering::Relaxed);
        pause();
        let [b, c, d] = [1, 2, 3].map(|i| w[i].load(Ordering::Relaxed));
        SpanLabels {
            span_id: a,
            trace_id: (u128::from(b) << 64) | u128::from(c),
            name_id: (d >> 32) as u32,
            fields_id: d as u32,
        }
    }

    #[inline(always)]
    fn store(&self, copy: usize, labels: &SpanLabels) {
        let w = &self.copies[copy & 1];
        for (slot, value) in w.iter().zip(pack(labels)) {
            slot.store(value, Ordering::Relaxed);
        }
    }

    /// Installs `labels`, returns the previous ones. Only the owner thread
    /// (or the registry, before the owner knows the entry) writes.
    #[inline(always)]
    fn write(&self, labels: SpanLabels) -> SpanLabels {
        let flips = self.flips.load(Ordering::Relaxed);
        let previous = self.load(flips as usize);
        self.install(flips, labels);
        previous
    }

    /// Installs `labels` as the copy after `flips`. Only the owner thread
    /// (or the registry, before the owner knows the entry) writes.
    #[inline(always)]
    fn install(&self, flips: u32, labels: SpanLabels) {
        // Readers on other threads: one that sees any store below also sees
        // the counter value that made this copy inactive (the store that
        // ended the previous write), and retries.
        fence(Ordering::Release);
        self.store(flips as usize ^ 1, &labels);
        // Signal fence: the inactive copy is fully written before the flip
        // is visible to a signal handler interrupting this thread.
        compiler_fence(Ordering::SeqCst);
        self.flips.store(flips.wrapping_add(1), Ordering::Release);
        compiler_fence(Ordering::SeqCst);
    }

    /// The current labels, read by the owner thread.
    #[inline(always)]
    fn read_own(&self) -> SpanLabels {
        let flips = self.flips.load(Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        self.load(flips as usize)
    }

    /// The labels an entry held when it was released from `owner` (a fork,
    /// or the manager took it back), if nobody claimed it since.
    fn read_released(&self, owner: u64) -> Option<SpanLabels> {
        let released = owner_word(((owner >> 32) as u32).wrapping_add(1), 0);
        if self.owner.load(Ordering::Acquire) != released {
            return None;
        }
        let labels = self.load(self.flips.load(Ordering::Acquire) as usize);
        fence(Ordering::Acquire);
        (self.owner.load(Ordering::Relaxed) == released).then_some(labels)
    }
}

/// The entry at `index`, if its chunk exists. Async-signal-safe: an index
/// check and an atomic load.
#[inline(always)]
fn entry(index: u32) -> Option<&'static Entry> {
    let index = index as usize;
    ARENA.get(index / CHUNK)?.get()?.get(index % CHUNK)
}

/// The labels of the entry `slot` refers to, if it still belongs to the
/// same owner; with the mark of [`SpanLabels::profiler_thread`] on the profiler's own
/// threads. `None` if the entry was released or reused, or (very rarely,
/// from another thread) if writes kept racing the read.
///
/// Lock-free and allocation-free, no thread-local access: callable from a
/// signal handler. On the owner's own thread (the `SIGPROF` handler) the
/// first attempt always succeeds: a handler cannot be interrupted by the
/// code it interrupted.
#[inline]
pub(crate) fn read_slot(slot: SlotRef) -> Option<SpanLabels> {
    read_slot_pausing(slot, || ())
}

/// [`read_slot`], calling `pause` in the middle of each attempt's read.
#[inline(always)]
fn read_slot_pausing(slot: SlotRef, pause: impl FnMut()) -> Option<SpanLabels> {
    entry(slot.index)?.read(slot.generation, pause)
}

impl Entry {
    /// The labels, if the entry still belongs to the owner of
    /// `generation`: the read side of the sequence lock (see
    /// [`read_slot`]), calling `pause` in the middle of each attempt.
    #[inline(always)]
    fn read(&self, generation: u32, mut pause: impl FnMut()) -> Option<SpanLabels> {
        for _ in 0..READ_ATTEMPTS {
            let owner = self.owner.load(Ordering::Acquire);
            if (owner >> 32) as u32 != generation || owner as u32 == 0 {
                return None;
            }
            let flips = self.flips.load(Ordering::Acquire);
            let mut labels = self.load_pausing(flips as usize, &mut pause);
            let profiler = self.profiler.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if self.flips.load(Ordering::Relaxed) == flips
                && self.owner.load(Ordering::Relaxed) == owner
            {
                if let Some(thread) = ProfilerThread::from_code(profiler) {
                    labels = labels.on_profiler_thread(thread);
                }
                return Some(labels);
            }
            spin();
        }
        None
    }
}

/// The stack the owner of `slot` reported when it registered, if it did
/// and the entry is still that owner's. Lock-free, allocation-free, no
/// thread-local access: callable from a signal handler (which only asks
/// about the thread it runs on).
#[inline]
#[cfg_attr(not(tp_sampler), allow(dead_code))]
pub(crate) fn stack_of(slot: SlotRef) -> Option<std::ops::Range<u64>> {
    let entry = entry(slot.index)?;
    let owner = entry.owner.load(Ordering::Acquire);
    if (owner >> 32) as u32 != slot.generation || owner as u32 == 0 {
        return None;
    }
    let hi = entry.stack_hi.load(Ordering::Acquire);
    let lo = entry.stack_lo.load(Ordering::Relaxed);
    fence(Ordering::Acquire);
    (entry.owner.load(Ordering::Relaxed) == owner && lo < hi).then_some(lo..hi)
}

/// Counts one sample of the owner of `slot` (if the entry is still its):
/// one relaxed add. Lock-free, allocation-free, no thread-local access:
/// callable from the signal handler and from the wall sampler.
#[inline]
#[cfg_attr(not(any(tp_sampler, test)), allow(dead_code))]
pub(crate) fn count_sample(slot: SlotRef) {
    if let Some(e) = entry(slot.index) {
        if (e.owner.load(Ordering::Relaxed) >> 32) as u32 == slot.generation {
            e.samples.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `true` while `slot` is the entry of thread `tid` (not released, not
/// reused).
#[cfg_attr(not(tp_sampler), allow(dead_code))]
pub(crate) fn slot_is_current(slot: SlotRef, tid: u32) -> bool {
    entry(slot.index)
        .is_some_and(|e| e.owner.load(Ordering::Acquire) == owner_word(slot.generation, tid))
}

/// One owned entry as another thread sees it: what the wall-time sampler
/// walks (`sampler::wall`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(tp_sampler), allow(dead_code))]
pub(crate) struct SlotView {
    /// The entry and its owner's generation.
    pub(crate) slot: SlotRef,
    /// The owner's kernel thread id.
    pub(crate) tid: u32,
    /// Its labels now.
    pub(crate) labels: SpanLabels,
    /// `true` on the profiler's own threads.
    pub(crate) profiler: bool,
}

/// How many entries [`view`] may find: indexes `0..slots_used()`. One
/// atomic load.
#[cfg_attr(not(tp_sampler), allow(dead_code))]
pub(crate) fn slots_used() -> u32 {
    USED.load(Ordering::Acquire)
}

/// The entry at `index` if a thread owns it: its owner and labels (a
/// sequence-locked read, as [`read_slot`]). Atomics only: no lock, no
/// allocation, no system call. `None` for a free entry, an index past
/// [`slots_used`], or a read that kept racing its owner's writes.
#[cfg_attr(not(tp_sampler), allow(dead_code))]
pub(crate) fn view(index: u32) -> Option<SlotView> {
    let e = entry(index)?;
    let owner = e.owner.load(Ordering::Acquire);
    let tid = owner as u32;
    if tid == 0 {
        return None;
    }
    let generation = (owner >> 32) as u32;
    let labels = e.read(generation, || ())?;
    Some(SlotView {
        slot: SlotRef { index, generation },
        tid,
        labels,
        profiler: labels.profiler_thread().is_some(),
    })
}

/// Who holds which entry. Locked only off the hot path.
struct Registry {
    /// The process the table describes; a forked child starts over.
    pid: u32,
    /// Owned entries by tid.
    by_tid: BTreeMap<u32, u32>,
    /// Released entries, reused first.
    free: Vec<u32>,
    /// Entries ever handed out: indexes below are in allocated chunks.
    used: u32,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    pid: 0,
    by_tid: BTreeMap::new(),
    free: Vec::new(),
    used: 0,
});

/// The registry, reset first in a forked child: there only the forking
/// thread lives, under a new tid, so every entry is free (that thread
/// re-registers, see [`register`]).
fn registry() -> MutexGuard<'static, Registry> {
    let mut reg = lock(&REGISTRY);
    let pid = std::process::id();
    if reg.pid != pid {
        if reg.pid != 0 {
            reg.by_tid.clear();
            reg.free.clear();
            for index in (0..reg.used).rev() {
                if let Some(e) = entry(index) {
                    let generation = (e.owner.load(Ordering::Relaxed) >> 32) as u32;
                    e.owner
                        .store(owner_word(generation.wrapping_add(1), 0), Ordering::Release);
                }
                reg.free.push(index);
            }
        }
        reg.pid = pid;
    }
    reg
}

fn new_chunk() -> Box<[Entry]> {
    (0..CHUNK).map(|_| Entry::new()).collect()
}

/// The entry of kernel thread `tid`: the one it holds, or a free one
/// claimed for it (its labels none). `None` if the arena is full. Takes a
/// lock and may allocate (a new chunk): never call it from a signal
/// handler.
pub(crate) fn slot_for_tid(tid: u32) -> Option<SlotRef> {
    if tid == 0 {
        return None;
    }
    let mut reg = registry();
    if let Some(&index) = reg.by_tid.get(&tid) {
        let owner = entry(index).map_or(0, |e| e.owner.load(Ordering::Acquire));
        if owner as u32 == tid {
            return Some(SlotRef {
                index,
                generation: (owner >> 32) as u32,
            });
        }
        reg.by_tid.remove(&tid);
    }
    let index = match reg.free.pop() {
        Some(index) => index,
        None => {
            let index = reg.used;
            if index as usize >= CHUNK * CHUNKS {
                return None;
            }
            ARENA[index as usize / CHUNK].get_or_init(new_chunk);
            reg.used += 1;
            USED.store(reg.used, Ordering::Release);
            index
        }
    };
    let e = entry(index)?;
    let generation = (e.owner.load(Ordering::Relaxed) >> 32) as u32;
    // The owner is not told yet, so this is the only writer; readers of the
    // previous owner's generation see it change below.
    e.write(SpanLabels::NONE);
    e.profiler.store(0, Ordering::Relaxed);
    e.samples.store(0, Ordering::Relaxed);
    // Unknown until the owner registers itself (see `register`).
    e.stack_hi.store(0, Ordering::Relaxed);
    e.stack_lo.store(0, Ordering::Relaxed);
    e.owner
        .store(owner_word(generation, tid), Ordering::Release);
    reg.by_tid.insert(tid, index);
    CLAIMS.fetch_add(1, Ordering::Release);
    Some(SlotRef { index, generation })
}

/// How a thread finds its own stack (`lo..hi`): given by the sampler,
/// which alone may call into libc for it (imports run from the sampler to
/// the context, not back).
static STACK_PROBE: OnceLock<fn() -> Option<std::ops::Range<u64>>> = OnceLock::new();

/// Sets how threads registering from now on find their own stack.
#[cfg_attr(not(tp_sampler), allow(dead_code))]
pub(crate) fn set_stack_probe(probe: fn() -> Option<std::ops::Range<u64>>) {
    let _ = STACK_PROBE.set(probe);
}

/// Entries claimed so far (see [`claims`]).
static CLAIMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many entries were claimed so far, by threads registering at their
/// first span enter or by the manager arming a timer: the manager lists
/// threads when it changed, so that a thread that started and entered a
/// span is armed within one look even when another thread exited meanwhile
/// (the thread count alone did not move).
#[cfg_attr(not(tp_sampler), allow(dead_code))]
pub(crate) fn claims() -> u64 {
    CLAIMS.load(Ordering::Acquire)
}

/// Releases `slot` if thread `tid` still holds it under that generation;
/// `false` if someone else released it first (or it is another's now).
pub(crate) fn release_slot(slot: SlotRef, tid: u32) -> bool {
    let mut reg = registry();
    let Some(e) = entry(slot.index) else {
        return false;
    };
    let released = e
        .owner
        .compare_exchange(
            owner_word(slot.generation, tid),
            owner_word(slot.generation.wrapping_add(1), 0),
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .is_ok();
    if released {
        if reg.by_tid.get(&tid) == Some(&slot.index) {
            reg.by_tid.remove(&tid);
        }
        reg.free.push(slot.index);
    }
    released
}

/// Releases the entries of threads that no longer exist: those whose tid
/// `listed` says is not alive and that `/proc/self/task` no longer has
/// (checked after the entry was claimed, so a thread that registered after
/// the listing is never taken for dead). Catches what the owners' guards
/// and the manager's per-timer releases miss. Returns how many.
#[cfg_attr(not(tp_sampler), allow(dead_code))]
pub(crate) fn release_exited(listed: impl Fn(u32) -> bool) -> usize {
    let candidates: Vec<(u32, u32)> = {
        let reg = registry();
        reg.by_tid
            .iter()
            .filter(|(tid, _)| !listed(**tid))
            .map(|(&tid, &index)| (tid, index))
            .collect()
    };
    let mut released = 0;
    for (tid, index) in candidates {
        let Some(owner) = entry(index).map(|e| e.owner.load(Ordering::Acquire)) else {
            continue;
        };
        if owner as u32 != tid || std::path::Path::new(&format!("/proc/self/task/{tid}")).exists() {
            continue;
        }
        let slot = SlotRef {
            index,
            generation: (owner >> 32) as u32,
        };
        if release_slot(slot, tid) {
            released += 1;
        }
    }
    released
}

/// This thread's kernel id, from `/proc/thread-self` (`PID/task/TID`).
fn own_tid() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// How this thread reaches its labels. Separate cells, so that the hot
/// path loads two words and copies nothing.
struct Mine {
    /// Its entry: `None` before the first lookup, and without one.
    entry: Cell<Option<&'static Entry>>,
    /// The owner word it holds the entry with.
    owner: Cell<u64>,
    /// The entry's index.
    index: Cell<u32>,
    /// No entry to be had: labels in [`FALLBACK`], not seen by samples.
    without: Cell<bool>,
}

impl Mine {
    /// Its entry as a reference, if it has one.
    fn slot(&self) -> Option<(&'static Entry, SlotRef, u32)> {
        let owner = self.owner.get();
        let slot = SlotRef {
            index: self.index.get(),
            generation: (owner >> 32) as u32,
        };
        Some((self.entry.get()?, slot, owner as u32))
    }

    /// From now on, labels live in [`FALLBACK`].
    fn give_up(&self) {
        self.entry.set(None);
        self.without.set(true);
    }
}

/// Returns this thread's entry at thread exit.
struct Lease;

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = MINE.try_with(|m| {
            let held = m.slot();
            m.give_up();
            if let Some((e, slot, tid)) = held {
                // Destructors that run later still see the labels.
                let _ = FALLBACK.try_with(|f| f.set(e.read_own()));
                release_slot(slot, tid);
            }
        });
    }
}

thread_local! {
    // const-initialised, no destructor: plain TLS, always accessible.
    static MINE: Mine = const {
        Mine {
            entry: Cell::new(None),
            owner: Cell::new(0),
            index: Cell::new(0),
            without: Cell::new(false),
        }
    };
    static FALLBACK: Cell<SpanLabels> = const { Cell::new(SpanLabels::NONE) };
    // Registered (with its destructor) at the first registration.
    static LEASE: Lease = const { Lease };
}

/// This thread's entry, registering on first use.
#[inline(always)]
fn own_entry() -> Option<&'static Entry> {
    MINE.try_with(|m| {
        match m.entry.get() {
            Some(e) if e.owner.load(Ordering::Relaxed) == m.owner.get() => return Some(e),
            None if m.without.get() => return None,
            _ => {}
        }
        register(m)
    })
    .unwrap_or(None)
}

/// The slow path: find or claim this thread's entry. Also taken when the
/// entry changed owner under the thread (a fork reset the arena, or the
/// manager released it): the labels it held are carried over.
#[cold]
#[inline(never)]
fn register(mine: &Mine) -> Option<&'static Entry> {
    let carried = mine
        .entry
        .get()
        .map(|e| e.read_released(mine.owner.get()).unwrap_or_default());
    // Arm the guard that returns the entry at exit; none once this thread's
    // thread-local destructors run.
    let claimed = LEASE
        .try_with(|_| ())
        .ok()
        .and_then(|()| own_tid())
        .and_then(|tid| {
            let slot = slot_for_tid(tid)?;
            Some((tid, slot, entry(slot.index)?))
        });
    let Some((tid, slot, e)) = claimed else {
        mine.give_up();
        if let Some(labels) = carried {
            let _ = FALLBACK.try_with(|f| f.set(labels));
        }
        return None;
    };
    if let Some(labels) = carried {
        e.write(labels);
    }
    // The thread's own stack bounds the handler's reads of it.
    if let Some(stack) = STACK_PROBE.get().and_then(|probe| probe()) {
        e.set_stack(stack);
    }
    mine.owner.set(owner_word(slot.generation, tid));
    mine.index.set(slot.index);
    mine.entry.set(Some(e));
    Some(e)
}

/// This thread's entry, for the tests.
#[cfg(test)]
pub(crate) fn own_slot() -> Option<SlotRef> {
    own_entry()?;
    MINE.with(|m| m.slot().map(|(_, slot, _)| slot))
}

/// Sets this thread's labels and returns the previous ones.
#[inline(always)]
pub(super) fn replace(labels: SpanLabels) -> SpanLabels {
    match own_entry() {
        Some(e) => e.write(labels),
        None => FALLBACK.try_with(|f| f.replace(labels)).unwrap_or_default(),
    }
}

/// Sets this thread's labels (what [`replace`] does, without reading the
/// previous ones: an exit restoring what its enter saved).
#[inline(always)]
pub(super) fn restore(labels: SpanLabels) {
    match own_entry() {
        Some(e) => e.install(e.flips.load(Ordering::Relaxed), labels),
        None => {
            let _ = FALLBACK.try_with(|f| f.set(labels));
        }
    }
}

/// This thread's labels.
///
/// Does not register a thread that has none yet: its labels are none (in
/// [`FALLBACK`]), so reading them allocates nothing.
#[inline]
pub(super) fn current() -> SpanLabels {
    let fallback = || FALLBACK.try_with(Cell::get).unwrap_or_default();
    MINE.try_with(|m| match m.entry.get() {
        Some(e) if e.owner.load(Ordering::Relaxed) == m.owner.get() => e.read_own(),
        Some(_) => register(m).map_or_else(fallback, Entry::read_own),
        None => fallback(),
    })
    .unwrap_or_default()
}

/// Samples taken of this thread so far (wrapping; see [`count_sample`]), 0
/// for a thread that cannot get an entry. The layer compares two readings.
#[inline(always)]
pub(super) fn own_samples() -> u32 {
    // Registers the thread like `replace` (which comes next), so both
    // readings are of the same entry.
    own_entry().map_or(0, |e| e.samples.load(Ordering::Relaxed))
}

/// This thread's labels and the stack it registered, for the allocator's
/// sampled path: never registers, allocates, locks or makes a system call
/// (a thread without an entry, or whose entry changed owner, reads its
/// fallback labels). Const thread locals without destructors only, so it
/// works during thread exit too.
#[inline]
#[cfg_attr(not(tp_sampler), allow(dead_code))]
pub(crate) fn current_without_registering() -> (SpanLabels, Option<std::ops::Range<u64>>) {
    let fallback = || (FALLBACK.try_with(Cell::get).unwrap_or_default(), None);
    MINE.try_with(|m| match m.entry.get() {
        Some(e) if e.owner.load(Ordering::Relaxed) == m.owner.get() => {
            let hi = e.stack_hi.load(Ordering::Acquire);
            let lo = e.stack_lo.load(Ordering::Relaxed);
            (e.read_own(), (lo < hi).then_some(lo..hi))
        }
        _ => fallback(),
    })
    .unwrap_or((SpanLabels::NONE, None))
}

/// Marks this thread's entry as one of the profiler's threads.
pub(super) fn mark_profiler_thread(thread: ProfilerThread) {
    if let Some(e) = own_entry() {
        e.profiler.store(thread.code(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;

/// Models of the label slot under loom: every interleaving (within the
/// preemption bound) of the owner writing its labels and another thread
/// reading them. Run by `scripts/test.sh`.
#[cfg(all(tracing_pyroscope_loom, test))]
mod loom_models;
