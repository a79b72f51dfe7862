//! Preallocated, lock-free sample storage shared by the signal handler
//! (many producers) and the collector thread (one consumer).
//!
//! Each slot has an atomic state: `FREE → WRITING → READY → FREE`. A handler
//! claims a slot with one compare-and-swap, fills it and publishes it with a
//! release store; the collector scans all slots for `READY` ones. Order does
//! not matter (samples are aggregated), so no head/tail is needed. When no
//! free slot is found within a few probes the sample is dropped and counted.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use crate::context::SpanLabels;

/// Deepest stack kept per sample (Pyroscope truncates at 1000).
pub(crate) const MAX_FRAMES: usize = 256;
/// Number of slots: 2048 × ~2 KiB ≈ 4.3 MiB, allocated once per process.
pub(crate) const SLOTS: usize = 2048;
const PROBES: usize = 8;

const FREE: u8 = 0;
const WRITING: u8 = 1;
const READY: u8 = 2;

pub(crate) struct Slot {
    state: AtomicU8,
    data: UnsafeCell<SlotData>,
}

pub(crate) struct SlotData {
    pub(crate) labels: SpanLabels,
    /// Timer periods this sample stands for: 1 + the timer's overrun count.
    pub(crate) weight: u32,
    pub(crate) depth: usize,
    pub(crate) frames: [u64; MAX_FRAMES],
}

// SAFETY: `data` is only accessed by the one party that moved `state` to
// WRITING (a handler) or observed READY (the single collector), and the
// state transitions use acquire/release ordering.
unsafe impl Sync for Slot {}

pub(crate) struct SampleBuffer {
    slots: Box<[Slot]>,
    next: AtomicU64,
    pub(crate) taken: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

/// A claimed slot; publish with [`Claim::publish`].
pub(crate) struct Claim<'a> {
    slot: &'a Slot,
}

impl SampleBuffer {
    pub(crate) fn new() -> Self {
        let slots = (0..SLOTS)
            .map(|_| Slot {
                state: AtomicU8::new(FREE),
                data: UnsafeCell::new(SlotData {
                    labels: SpanLabels::NONE,
                    weight: 0,
                    depth: 0,
                    frames: [0; MAX_FRAMES],
                }),
            })
            .collect();
        SampleBuffer {
            slots,
            next: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Claims a free slot, or counts a drop. Async-signal-safe: atomics only.
    #[inline]
    pub(crate) fn claim(&self) -> Option<Claim<'_>> {
        let start = self.next.fetch_add(1, Ordering::Relaxed) as usize;
        for probe in 0..PROBES {
            let slot = &self.slots[(start + probe) % SLOTS];
            if slot
                .state
                .compare_exchange(FREE, WRITING, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return Some(Claim { slot });
            }
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Frees every slot, whatever its state. Only for a forked child, where
    /// the threads that were writing slots no longer exist. Atomics only.
    pub(crate) fn reset(&self) {
        for slot in self.slots.iter() {
            slot.state.store(FREE, Ordering::SeqCst);
        }
    }

    /// Slots not free (being written or ready).
    #[cfg(test)]
    pub(crate) fn busy_slots(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.state.load(Ordering::SeqCst) != FREE)
            .count()
    }

    /// Calls `f(labels, stack, weight)` with every ready sample, then frees
    /// its slot.
    pub(crate) fn drain(&self, mut f: impl FnMut(SpanLabels, &[u64], u32)) -> usize {
        let mut n = 0;
        for slot in self.slots.iter() {
            if slot.state.load(Ordering::Acquire) == READY {
                // SAFETY: READY means the writer published with Release and
                // will not touch the slot again; we are the only consumer.
                let data = unsafe { &*slot.data.get() };
                let depth = data.depth.min(MAX_FRAMES);
                f(data.labels, &data.frames[..depth], data.weight.max(1));
                slot.state.store(FREE, Ordering::Release);
                n += 1;
            }
        }
        n
    }
}

impl Claim<'_> {
    /// The slot's data, exclusively ours until `publish` or `abandon`.
    #[inline]
    pub(crate) fn data(&mut self) -> &mut SlotData {
        // SAFETY: we moved the state FREE → WRITING, so nobody else reads or
        // writes this slot until we store READY or FREE.
        unsafe { &mut *self.slot.data.get() }
    }

    #[inline]
    pub(crate) fn publish(self, buffer: &SampleBuffer) {
        self.slot.state.store(READY, Ordering::Release);
        buffer.taken.fetch_add(1, Ordering::Relaxed);
    }
}
