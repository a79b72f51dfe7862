//! Preallocated, lock-free sample storage shared by the signal handler
//! (many producers) and the drain side (one consumer at a time).
//!
//! Slots are tracked by two bitmaps: `claimed` (a handler owns the slot, or
//! it holds a sample not yet drained) and `ready` (the sample is complete).
//! A handler claims the lowest free slot with one `fetch_or` per 64 slots
//! looked at, fills it and publishes it by setting its `ready` bit
//! (release). A claim gives up only when it found every slot taken, i.e.
//! when the buffer is full; that sample is counted as dropped. The consumer
//! walks the `ready` words (one load per 64 slots), so looking at an empty
//! or idle buffer costs a few hundred nanoseconds.
//!
//! Claims take the lowest free slot, so only as many slots are ever touched
//! as were in use at once: the slot memory is allocated zeroed, and pages
//! beyond the busiest moment are never faulted in.
//!
//! Handlers wake the drain thread (one `FUTEX_WAKE`, async-signal-safe) only
//! when the samples waiting reach a sixteenth of the buffer and the drain
//! thread sleeps; at idle nothing wakes anybody.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::context::SpanLabels;

/// Deepest stack kept per sample (Pyroscope truncates at 1000).
pub(crate) const MAX_FRAMES: usize = 256;
/// The drain thread is woken when this fraction of the slots waits
/// (1/16: 64 of 1024). Claims take the lowest free slot, so the slots ever
/// touched, and so resident, are about as many as wait at most: a low mark
/// keeps that small (about 130 KiB of the 2 MiB buffer on 2 CPUs) at the
/// cost of a `FUTEX_WAKE` every 64 samples.
const WAKE_FRACTION: usize = 16;
/// Fewest and most slots (each about 2 KiB).
const MIN_SLOTS: usize = 1024;
const MAX_SLOTS: usize = 1 << 16;

/// Drain-thread states in [`SampleBuffer::wake`].
const AWAKE: u32 = 0;
const ASLEEP: u32 = 1;

#[repr(C)]
pub(crate) struct SlotData {
    pub(crate) labels: SpanLabels,
    /// Timer periods this sample stands for: 1 + the timer's overrun count.
    pub(crate) weight: u32,
    pub(crate) depth: usize,
    pub(crate) frames: [u64; MAX_FRAMES],
}

pub(crate) struct SampleBuffer {
    data: Box<[UnsafeCell<SlotData>]>,
    claimed: Box<[AtomicU64]>,
    ready: Box<[AtomicU64]>,
    /// Published samples not yet drained.
    pending: AtomicUsize,
    /// Pending samples at which a handler wakes the drain thread.
    wake_mark: usize,
    /// Futex word: [`AWAKE`] or [`ASLEEP`].
    wake: AtomicU32,
    /// Set by [`SampleBuffer::stop_sleeping`]: `sleep` returns at once.
    stopping: AtomicBool,
    /// Samples recorded with the leaf only (see `Plan::LeafOnly`, busy
    /// unwinder caches).
    pub(crate) leaf_only: AtomicU64,
    pub(crate) taken: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

// SAFETY: a slot's data is only accessed by the one party that set its
// `claimed` bit (a handler, until it sets `ready`) or that observed its
// `ready` bit (the single consumer, until it clears `claimed`); the bit
// operations use acquire/release ordering.
unsafe impl Sync for SampleBuffer {}
// SAFETY: as above; nothing in it is tied to a thread.
unsafe impl Send for SampleBuffer {}

/// A claimed slot; publish with [`SampleBuffer::publish`].
pub(crate) struct Claim {
    index: usize,
}

/// Slots for sampling at `rate_hz` on `cpus` CPUs: half a second of samples
/// with every CPU busy (CPU-time timers cannot fire faster than the CPUs
/// run), as a power of two in `MIN_SLOTS..=MAX_SLOTS`.
pub(crate) fn slots_for(rate_hz: u32, cpus: usize) -> usize {
    let half_second = (rate_hz as usize).saturating_mul(cpus.max(1)) / 2;
    half_second
        .clamp(MIN_SLOTS, MAX_SLOTS)
        .next_power_of_two()
        .min(MAX_SLOTS)
}

impl SampleBuffer {
    /// A buffer of `slots` slots (rounded up to a multiple of 64), or `None`
    /// if the memory cannot be had. The slot memory is allocated zeroed and
    /// only touched as slots get used.
    pub(crate) fn new(slots: usize) -> Option<Self> {
        let words = slots.max(64).div_ceil(64);
        let slots = words * 64;
        let layout = std::alloc::Layout::array::<UnsafeCell<SlotData>>(slots).ok()?;
        // SAFETY: the layout has a non-zero size. SlotData is integers only
        // (SpanLabels included), so all zeroes is a valid value, and
        // UnsafeCell is repr(transparent); the pointer comes from the global
        // allocator with the layout of a `[UnsafeCell<SlotData>; slots]`,
        // which is what Box frees it with.
        let data = unsafe {
            let raw = std::alloc::alloc_zeroed(layout).cast::<UnsafeCell<SlotData>>();
            if raw.is_null() {
                return None;
            }
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(raw, slots))
        };
        Some(SampleBuffer {
            data,
            claimed: (0..words).map(|_| AtomicU64::new(0)).collect(),
            ready: (0..words).map(|_| AtomicU64::new(0)).collect(),
            pending: AtomicUsize::new(0),
            wake_mark: (slots / WAKE_FRACTION).max(1),
            wake: AtomicU32::new(AWAKE),
            stopping: AtomicBool::new(false),
            leaf_only: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    /// Number of slots.
    pub(crate) fn capacity(&self) -> usize {
        self.data.len()
    }

    /// Claims the lowest free slot, or counts a drop if every slot is
    /// taken. Async-signal-safe: atomics only.
    #[inline]
    pub(crate) fn claim(&self) -> Option<Claim> {
        for (w, word) in self.claimed.iter().enumerate() {
            let mut current = word.load(Ordering::Relaxed);
            while current != u64::MAX {
                let bit = (!current).trailing_zeros() as usize;
                let mask = 1u64 << bit;
                // Acquire: the consumer's reads of this slot (before its
                // release clear) are done before we write.
                let before = word.fetch_or(mask, Ordering::Acquire);
                if before & mask == 0 {
                    return Some(Claim {
                        index: w * 64 + bit,
                    });
                }
                current = before | mask;
            }
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// The claimed slot's data, exclusively the claimer's until `publish`.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub(crate) fn data(&self, claim: &mut Claim) -> &mut SlotData {
        // SAFETY: the claim set the slot's `claimed` bit, so nobody else
        // reads or writes this slot until we set its `ready` bit; `&mut
        // Claim` keeps the borrow unique.
        unsafe { &mut *self.data[claim.index].get() }
    }

    /// Publishes a claimed slot to the consumer, and wakes the drain thread
    /// if 1/16 of the buffer (`WAKE_FRACTION`) is waiting and it sleeps.
    /// Async-signal-safe: atomics and at most one `FUTEX_WAKE`.
    #[inline]
    pub(crate) fn publish(&self, claim: Claim) {
        let (w, bit) = (claim.index / 64, claim.index % 64);
        // Counted before it is visible, so the count never runs below the
        // samples the consumer can see.
        let pending = self.pending.fetch_add(1, Ordering::SeqCst) + 1;
        self.ready[w].fetch_or(1u64 << bit, Ordering::Release);
        self.taken.fetch_add(1, Ordering::Relaxed);
        if pending >= self.wake_mark
            && self.wake.load(Ordering::SeqCst) == ASLEEP
            && self.wake.swap(AWAKE, Ordering::SeqCst) == ASLEEP
        {
            futex_wake(&self.wake);
        }
    }

    /// Samples published and not yet drained.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Calls `f(labels, stack, weight)` with every ready sample, then frees
    /// its slot. Returns how many. One consumer at a time (the caller
    /// serialises).
    pub(crate) fn drain(&self, mut f: impl FnMut(SpanLabels, &[u64], u32)) -> usize {
        let mut n = 0;
        for (w, word) in self.ready.iter().enumerate() {
            let mut ready = word.load(Ordering::Acquire);
            while ready != 0 {
                let bit = ready.trailing_zeros() as usize;
                let mask = 1u64 << bit;
                ready &= !mask;
                // SAFETY: `ready` set with release by the writer, which no
                // longer touches the slot; we are the only consumer.
                let data = unsafe { &*self.data[w * 64 + bit].get() };
                let depth = data.depth.clamp(1, MAX_FRAMES);
                f(data.labels, &data.frames[..depth], data.weight.max(1));
                word.fetch_and(!mask, Ordering::Relaxed);
                // Release: our reads are done before a handler reuses it.
                self.claimed[w].fetch_and(!mask, Ordering::Release);
                n += 1;
            }
        }
        self.pending.fetch_sub(n, Ordering::SeqCst);
        n
    }

    /// Sleeps until a handler finds the wake mark reached,
    /// [`SampleBuffer::stop_sleeping`] is called, or `timeout` passes
    /// (`None`: no limit); a signal may also end it early. Returns at once
    /// if the mark is already reached. Drain thread only.
    pub(crate) fn sleep(&self, timeout: Option<Duration>) {
        self.wake.store(ASLEEP, Ordering::SeqCst);
        // Dekker with `publish` and `stop_sleeping`: either they see
        // ASLEEP (and wake us), or we see their write here.
        if self.pending.load(Ordering::SeqCst) >= self.wake_mark
            || self.stopping.load(Ordering::SeqCst)
        {
            self.wake.store(AWAKE, Ordering::SeqCst);
            return;
        }
        futex_wait(&self.wake, ASLEEP, timeout);
        self.wake.store(AWAKE, Ordering::SeqCst);
    }

    /// Wakes the drain thread, and keeps it from sleeping again: it is to
    /// stop.
    pub(crate) fn stop_sleeping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake.store(AWAKE, Ordering::SeqCst);
        futex_wake(&self.wake);
    }

    /// `true` once [`SampleBuffer::stop_sleeping`] was called.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Slots claimed or holding samples.
    #[cfg(test)]
    pub(crate) fn busy_slots(&self) -> usize {
        self.claimed
            .iter()
            .map(|w| w.load(Ordering::SeqCst).count_ones() as usize)
            .sum()
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned u32 of this process; it only
    // wakes waiters (async-signal-safe: a plain system call).
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        );
    }
}

fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs() as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: FUTEX_WAIT on a valid, aligned u32; returns at once if it no
    // longer holds `expected`; EINTR and timeouts just return.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            ts_ptr,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(buffer: &SampleBuffer, n: usize) -> usize {
        (0..n)
            .filter(|i| {
                let Some(mut claim) = buffer.claim() else {
                    return false;
                };
                let data = buffer.data(&mut claim);
                data.labels = SpanLabels::new(*i as u64 + 1, 0, 0);
                data.weight = 1;
                data.depth = 1;
                data.frames[0] = *i as u64;
                buffer.publish(claim);
                true
            })
            .count()
    }

    #[test]
    fn claims_succeed_until_the_buffer_is_full_then_drop() {
        let buffer = SampleBuffer::new(1024).unwrap();
        assert_eq!(fill(&buffer, 1024), 1024, "a claim gave up early");
        assert_eq!(buffer.dropped.load(Ordering::Relaxed), 0);
        assert!(buffer.claim().is_none());
        assert_eq!(buffer.dropped.load(Ordering::Relaxed), 1);
        // Free slots scattered through the buffer are all found again.
        let mut seen = 0;
        assert_eq!(buffer.drain(|_, _, _| seen += 1), 1024);
        assert_eq!(seen, 1024);
        assert_eq!(buffer.pending(), 0);
        assert_eq!(fill(&buffer, 1024), 1024);
    }

    #[test]
    fn a_claim_finds_a_free_slot_behind_long_runs_of_busy_ones() {
        // Slots held by handlers still writing (preempted), in runs of 15,
        // with one free slot after each run: a claim must find every free
        // slot, not give up after a few probes.
        let buffer = SampleBuffer::new(1024).unwrap();
        let claims: Vec<Claim> = (0..1024).map(|_| buffer.claim().unwrap()).collect();
        let mut held = 0;
        for claim in claims {
            if claim.index % 16 == 15 {
                buffer.publish(claim);
            } else {
                // Never published: held, as by a preempted handler.
                let _ = claim;
                held += 1;
            }
        }
        assert_eq!(buffer.drain(|_, _, _| {}), 1024 - held);
        assert_eq!(fill(&buffer, 1024 - held), 1024 - held);
        assert_eq!(buffer.dropped.load(Ordering::Relaxed), 0);
        assert!(buffer.claim().is_none(), "the buffer is full now");
    }

    #[test]
    fn drain_hands_over_each_sample_once_and_frees_its_slot() {
        let buffer = SampleBuffer::new(128).unwrap();
        fill(&buffer, 100);
        assert_eq!(buffer.busy_slots(), 100);
        let mut ids = Vec::new();
        buffer.drain(|labels, frames, weight| {
            assert_eq!(frames, &[labels.span_id - 1]);
            assert_eq!(weight, 1);
            ids.push(labels.span_id);
        });
        ids.sort_unstable();
        assert_eq!(ids, (1..=100).collect::<Vec<u64>>());
        assert_eq!(buffer.busy_slots(), 0);
        assert_eq!(buffer.drain(|_, _, _| {}), 0);
    }

    #[test]
    fn the_buffer_is_sized_from_rate_and_cpus() {
        assert_eq!(slots_for(100, 2), MIN_SLOTS);
        assert_eq!(slots_for(1000, 2), 1024);
        assert_eq!(slots_for(1000, 24), 16384);
        assert_eq!(slots_for(1000, 4096), MAX_SLOTS);
    }

    #[test]
    fn publishing_past_the_mark_wakes_a_sleeping_drain_thread() {
        // No sampler's SIGPROF may interrupt the sleeper meanwhile.
        let _serial = crate::sampler::tests::serial();
        let buffer = std::sync::Arc::new(SampleBuffer::new(256).unwrap());
        let sleeper = {
            let buffer = buffer.clone();
            std::thread::spawn(move || buffer.sleep(None))
        };
        // Below the mark (16 of 256) nobody is woken...
        while buffer.wake.load(Ordering::SeqCst) != ASLEEP {
            std::thread::yield_now();
        }
        fill(&buffer, 15);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!sleeper.is_finished(), "woken below the mark");
        // ...at the mark the sleeper is.
        fill(&buffer, 1);
        sleeper.join().unwrap();
    }
}
