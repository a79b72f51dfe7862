//! The heap side of draining: samples moved out of the signal buffer wait
//! here, aggregated, until the collector takes them.
//!
//! The signal buffer is small and fixed; the collector sometimes does slow
//! work (a first debug-info load, a big encode, a gzip) during which it
//! cannot drain. So a drain thread that does nothing else moves samples from
//! the signal buffer into this queue whenever a sixteenth of the buffer is
//! waiting, and the collector takes the whole queue in O(1) under a lock
//! that nothing slow ever holds.
//!
//! Samples are aggregated on the way in: identical (labels, stack) pairs
//! add their weights, so a stall of seconds costs memory in proportion to
//! the distinct stacks, not to the samples. The queue is bounded
//! ([`MAX_STACKS`] entries, [`MAX_WORDS`] words of keys, about 16 MiB); a
//! sample that would pass a bound is dropped and counted.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::buffer::SampleBuffer;
use crate::context::SpanLabels;

/// Most distinct (labels, stack) entries held.
pub(crate) const MAX_STACKS: usize = 1 << 16;
/// Most `u64` words held in keys (labels and frames): 16 MiB.
pub(crate) const MAX_WORDS: usize = 1 << 21;
/// Words a label record costs in the [`MAX_WORDS`] budget (its size).
const LABEL_WORDS: usize = std::mem::size_of::<SpanLabels>() / 8;

/// A fast hash for keys made of code addresses (not attacker-chosen).
#[derive(Default)]
struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_ne_bytes(word));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Weights by stack, for one label record.
type Stacks = HashMap<Box<[u64]>, u64, BuildHasherDefault<AddressHasher>>;

/// Aggregated samples: weight by (labels, stack). Labels are kept whole, so
/// a new sample label (a field of `SpanLabels`) needs nothing here.
#[derive(Default)]
pub(crate) struct Batch {
    map: HashMap<SpanLabels, Stacks>,
    /// Distinct (labels, stack) entries.
    entries: usize,
    words: usize,
    /// Samples (not weight) in the batch.
    samples: usize,
}

impl Batch {
    /// Samples in the batch.
    pub(crate) fn samples(&self) -> usize {
        self.samples
    }

    /// Calls `f(labels, stack, weight)` for every entry (weights above
    /// `u32::MAX` are split over several calls).
    pub(crate) fn for_each(&self, mut f: impl FnMut(SpanLabels, &[u64], u32)) {
        for (&labels, stacks) in &self.map {
            for (frames, &weight) in stacks {
                let mut left = weight;
                while left > 0 {
                    let part = left.min(u64::from(u32::MAX));
                    f(labels, frames, part as u32);
                    left -= part;
                }
            }
        }
    }
}

/// The queue: a bounded [`Batch`] behind a lock held only for O(1) swaps
/// and for moving samples out of the signal buffer.
#[derive(Default)]
pub(crate) struct Queue {
    batch: Mutex<Batch>,
    /// Samples dropped because the queue was at a bound.
    pub(crate) dropped: AtomicU64,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Batch> {
        crate::sync::lock(&self.batch)
    }

    /// Moves every ready sample from `buffer` into the queue. Returns how
    /// many were moved (dropped ones included). The lock serialises the
    /// buffer's consumers.
    pub(crate) fn move_from(&self, buffer: &SampleBuffer) -> usize {
        let mut guard = self.lock();
        let batch = &mut *guard;
        let mut dropped = 0;
        let moved = buffer.drain(|labels, frames, weight| {
            if let Some(total) = batch.map.get_mut(&labels).and_then(|s| s.get_mut(frames)) {
                *total += u64::from(weight);
                batch.samples += 1;
                return;
            }
            let cost = LABEL_WORDS + frames.len();
            if batch.entries < MAX_STACKS && batch.words + cost <= MAX_WORDS {
                batch.entries += 1;
                batch.words += cost;
                batch
                    .map
                    .entry(labels)
                    .or_default()
                    .insert(frames.into(), u64::from(weight));
                batch.samples += 1;
            } else {
                dropped += 1;
            }
        });
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        moved
    }

    /// Takes everything queued, leaving the queue empty.
    pub(crate) fn take(&self) -> Batch {
        std::mem::take(&mut *self.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(buffer: &SampleBuffer, labels: SpanLabels, frames: &[u64], weight: u32) {
        let mut claim = buffer.claim().expect("a free slot");
        let data = buffer.data(&mut claim);
        data.labels = labels;
        data.weight = weight;
        data.depth = frames.len();
        data.frames[..frames.len()].copy_from_slice(frames);
        buffer.publish(claim);
    }

    #[test]
    fn identical_samples_add_up_and_labels_survive_the_round_trip() {
        let buffer = SampleBuffer::new(64).unwrap();
        let queue = Queue::default();
        let a = SpanLabels::new(7, (3u128 << 64) | 5, 9);
        let b = SpanLabels::NONE;
        publish(&buffer, a, &[1, 2, 3], 1);
        publish(&buffer, a, &[1, 2, 3], 2);
        publish(&buffer, b, &[1, 2, 3], 1);
        publish(&buffer, a, &[1, 2], 1);
        assert_eq!(queue.move_from(&buffer), 4);
        let batch = queue.take();
        assert_eq!(batch.samples(), 4);
        let mut seen = Vec::new();
        batch.for_each(|labels, frames, weight| seen.push((labels, frames.to_vec(), weight)));
        seen.sort_by_key(|(l, f, _)| (l.span_id, f.len()));
        assert_eq!(
            seen,
            vec![
                (b, vec![1, 2, 3], 1),
                (a, vec![1, 2], 1),
                (a, vec![1, 2, 3], 3),
            ]
        );
        assert_eq!(queue.take().samples(), 0, "take empties the queue");
    }

    #[test]
    fn the_queue_is_bounded_and_counts_what_it_drops() {
        let buffer = SampleBuffer::new(1024).unwrap();
        let queue = Queue::default();
        let mut published = 0u64;
        // Distinct deep stacks until the word bound is passed.
        let frames: Vec<u64> = (0..256).collect();
        while published < (MAX_WORDS / 256 + 100) as u64 {
            for _ in 0..512 {
                let mut stack = frames.clone();
                stack[0] = published;
                publish(&buffer, SpanLabels::NONE, &stack, 1);
                published += 1;
            }
            queue.move_from(&buffer);
        }
        let batch = queue.take();
        let dropped = queue.dropped.load(Ordering::Relaxed);
        assert!(dropped > 0);
        assert_eq!(batch.samples() as u64 + dropped, published);
        assert!(batch.words <= MAX_WORDS);
    }
}
