//! Samples that do not come from the CPU signal buffer: wall samples of
//! blocked, runnable and awaiting time, taken by the sampler's manager
//! thread and by the layer's slow paths.
//!
//! A bounded queue behind a mutex, taken whole by the collector at every
//! drain. Producers are normal threads, never a signal handler nor the
//! allocator's sampled path (pushing locks and allocates). A sample of a
//! kind no running profiler collects is refused at once (one atomic
//! load); past [`CAPACITY`] waiting samples, samples are dropped and
//! counted ([`dropped`]), which the guard's stats report as dropped
//! samples.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use super::{ProfileKind, Values};
use crate::context::SpanLabels;
use crate::sync::lock;

/// The leaf frame of awaiting time (wall profile).
pub(crate) const AWAITING_FRAME: &str = "[awaiting]";

/// Most samples waiting for the collector.
#[allow(dead_code)] // until its producers (wall sampler, layer) use it
pub(crate) const CAPACITY: usize = 64 * 1024;

/// One queued sample.
#[derive(Debug)]
pub(crate) struct ExtraSample {
    pub(crate) kind: ProfileKind,
    pub(crate) labels: SpanLabels,
    /// Leaf first, as the sampler's; may hold synthetic frames.
    pub(crate) frames: Box<[u64]>,
    pub(crate) values: Values,
}

static QUEUE: Mutex<Vec<ExtraSample>> = Mutex::new(Vec::new());
/// One bit per [`ProfileKind`] a running collector takes.
static ENABLED: AtomicU8 = AtomicU8::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);

const fn bit(kind: ProfileKind) -> u8 {
    1 << kind as u8
}

/// `true` while a running profiler collects samples of `kind`.
#[allow(dead_code)] // until its producers (wall sampler, layer) use it
#[inline]
pub(crate) fn enabled(kind: ProfileKind) -> bool {
    ENABLED.load(Ordering::Relaxed) & bit(kind) != 0
}

#[allow(dead_code)] // until its producers (wall sampler, layer) use it
/// Hands a sample to the collector; `false` if it was refused (its kind
/// is not collected) or dropped (the queue is full, counted).
pub(crate) fn submit(
    kind: ProfileKind,
    labels: SpanLabels,
    frames: &[u64],
    values: Values,
) -> bool {
    if !enabled(kind) {
        return false;
    }
    let mut queue = lock(&QUEUE);
    if queue.len() >= CAPACITY {
        drop(queue);
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    queue.push(ExtraSample {
        kind,
        labels,
        frames: frames.into(),
        values,
    });
    true
}

/// Everything queued so far.
pub(crate) fn take() -> Vec<ExtraSample> {
    std::mem::take(&mut *lock(&QUEUE))
}

/// Samples dropped at the queue's bound, in this process.
pub(crate) fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Starts (or, with an empty list, stops) taking the given kinds; a stop
/// also empties the queue.
pub(crate) fn set_kinds(kinds: &[ProfileKind]) {
    let bits = kinds.iter().fold(0, |b, &k| b | bit(k));
    ENABLED.store(bits, Ordering::Relaxed);
    if bits == 0 {
        take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the queue is process-wide.
    #[test]
    fn refuses_kinds_not_collected_then_queues_up_to_its_bound() {
        set_kinds(&[]);
        let labels = SpanLabels::new(7, 0, 0);
        assert!(!submit(ProfileKind::Wall, labels, &[1, 2], [1, 5, 0, 0]));
        set_kinds(&[ProfileKind::Wall]);
        assert!(!submit(ProfileKind::Memory, labels, &[1], [1, 5, 0, 0]));
        assert!(submit(ProfileKind::Wall, labels, &[1, 2], [1, 5, 0, 0]));
        let taken = take();
        assert_eq!(taken.len(), 1);
        assert_eq!(&*taken[0].frames, &[1, 2]);
        assert_eq!(taken[0].values, [1, 5, 0, 0]);
        let before = dropped();
        for _ in 0..CAPACITY {
            assert!(submit(ProfileKind::Wall, labels, &[1], [1, 1, 0, 0]));
        }
        assert!(!submit(ProfileKind::Wall, labels, &[1], [1, 1, 0, 0]));
        assert_eq!(dropped(), before + 1);
        set_kinds(&[]);
        assert!(take().is_empty());
    }
}
