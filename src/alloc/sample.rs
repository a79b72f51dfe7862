//! The allocation path: a thread-local countdown, and for the allocations
//! it picks, a sample (labels, stack, size) in the lock-free buffer.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::context;
use crate::sampler::{unwind_here, SampleBuffer, MAX_FRAMES};

use super::live;

/// Mean bytes between samples, set when allocation profiling starts.
pub(super) static SAMPLE_BYTES: AtomicU64 = AtomicU64::new(super::DEFAULT_ALLOCATION_SAMPLE_BYTES);

/// Slots in the sample buffer: at 512 KiB between samples, 2 GiB of
/// allocation before the drain thread must have emptied it (it is woken
/// at a sixteenth). Slot memory is touched only as slots get used.
pub(super) const SLOTS: usize = 4096;

/// The sample buffer, made when allocation profiling first starts and
/// kept for the process's lifetime (so the allocation path never needs a
/// grace period to read it).
pub(super) static BUFFER: OnceLock<SampleBuffer> = OnceLock::new();

/// Ids of remembered blocks (`live`), never 0 or 1 (the buffer's weight
/// field carries them, read back as at least 1; 1 means "not remembered").
static NEXT_ID: AtomicU32 = AtomicU32::new(2);

/// Seeds for the threads' generators.
static SEEDS: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);

/// One thread's sampling state. `Cell`s, `const`-initialised and without a
/// destructor: a plain TLS access, valid until the thread is gone (also
/// while its thread-local destructors run).
struct Countdown {
    /// Bytes left before the next sample; below 0: sample.
    left: Cell<i64>,
    /// xorshift64* state; 0 until the first sample seeds it.
    rng: Cell<u64>,
    /// The thread is sampling: its allocations meanwhile are not sampled.
    busy: Cell<bool>,
}

thread_local! {
    static COUNTDOWN: Countdown = const {
        Countdown { left: Cell::new(0), rng: Cell::new(0), busy: Cell::new(false) }
    };
}

/// Counts `size` bytes against the thread's countdown: `true` when it ran
/// out, and the allocation, once made, goes to [`sampled`]. Counted before
/// the allocation, so that nothing is kept across the wrapped allocator's
/// call on the common path.
#[inline(always)]
pub(super) fn due(size: usize) -> bool {
    COUNTDOWN
        .try_with(|c| {
            let left = c.left.get() - size as i64;
            c.left.set(left);
            left < 0
        })
        .unwrap_or(false)
}

/// The countdown ran out at the block at `p` (null: the allocation
/// failed): samples it, unless this thread is already sampling; draws the
/// next distance.
#[inline(always)]
pub(super) fn sampled(p: *mut u8, size: usize, heap: bool) {
    let _ = COUNTDOWN.try_with(|c| ran_out(c, p as usize, size, heap));
}

#[cold]
#[inline(never)]
fn ran_out(c: &Countdown, p: usize, size: usize, heap: bool) {
    if c.busy.get() || p == 0 {
        // An allocation made while this thread samples (or by a signal
        // handler interrupting it), or none: never sampled.
        c.left.set(next_distance(c));
        return;
    }
    if c.rng.get() == 0 {
        // The thread's first time here: draw its first distance, and only
        // then count this allocation against it.
        c.rng.set(seed(c));
        let left = next_distance(c) - size as i64;
        c.left.set(left);
        if left >= 0 {
            return;
        }
    }
    c.busy.set(true);
    c.left.set(next_distance(c));
    record(p, size, heap);
    c.busy.set(false);
}

/// A seed from the thread's state address and a global sequence: never 0.
fn seed(c: &Countdown) -> u64 {
    let n = SEEDS.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    let s = (c as *const Countdown as u64).rotate_left(32) ^ n;
    splitmix(s) | 1
}

fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The bytes to the next sample: exponentially distributed with mean
/// [`SAMPLE_BYTES`] (memoryless, so every byte is equally likely to be
/// picked, whatever the allocation sizes).
fn next_distance(c: &Countdown) -> i64 {
    let mut x = c.rng.get();
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    c.rng.set(x);
    let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
    // Uniform in (0, 1].
    let u = ((r >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
    let mean = SAMPLE_BYTES.load(Ordering::Relaxed).max(1) as f64;
    (-u.ln() * mean).min(i64::MAX as f64 / 2.0) as i64
}

/// Writes one sample: `frames[0]` = the block's size, `frames[1..]` = the
/// stack from the allocator's entry (leaf first); `weight` = the block's
/// id in the live table (1: not remembered). No allocation, no lock.
#[inline(never)]
fn record(p: usize, size: usize, heap: bool) {
    let Some(buffer) = BUFFER.get() else { return };
    let (labels, own_stack) = context::current_without_registering();
    let Some(mut claim) = buffer.claim() else {
        return; // counted as dropped by `claim`
    };
    let data = buffer.data(&mut claim);
    data.labels = labels;
    let frames: &mut [u64; MAX_FRAMES] = &mut data.frames;
    // frames[0]: a pc in `unwind_here`; frames[1] and [2]: the returns
    // into this function and `ran_out` (neither is inlined): the
    // profiler's own, left out. The leaf is then the allocator's entry.
    const OWN: usize = 3;
    let depth = unwind_here(own_stack, frames);
    let keep = depth.saturating_sub(OWN);
    frames.copy_within(OWN..OWN + keep, 1);
    frames[0] = size as u64;
    data.depth = 1 + keep;
    data.weight = 1;
    if heap {
        let id = loop {
            let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            if id >= 2 {
                break id;
            }
        };
        if live::remember(p, id, size as u64) {
            data.weight = id;
        }
    }
    buffer.publish(claim);
}
