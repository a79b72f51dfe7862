//! The live table: sampled blocks not freed yet, for the in-use figures.
//!
//! A fixed array of [`CAPACITY`] slots in groups of [`WAYS`] (a block may
//! go in any free slot of the group its address hashes to), and beside it
//! a count map: one byte per address-hash bucket ([`BUCKETS`], 64 KiB)
//! counting the remembered blocks of that bucket. Freeing a block first
//! loads its bucket's count: for a block that was never sampled that is
//! almost always 0, and the free costs that one load. Only otherwise are
//! the group's slots compared.
//!
//! Lock-free: a slot is claimed with a compare-and-swap of its address word
//! (0, free → [`BUSY`]), filled, then published by storing the address; it
//! is released by swapping the address back to 0. A full group drops the
//! block (counted): it is then in the allocation profile but not in the
//! in-use one. Both arrays are zero-initialised statics (no memory is
//! touched until used).

use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

/// Address-hash buckets (the count map's bytes).
const BUCKET_BITS: u32 = 16;
const BUCKETS: usize = 1 << BUCKET_BITS;
/// Slots per group; the buckets of a group share its slots, so a bucket's
/// count never passes `WAYS` (it fits a byte).
const WAYS: usize = 8;
/// Blocks remembered at most: at the default 512 KiB sample distance,
/// about 32 GiB of live heap.
pub(super) const CAPACITY: usize = BUCKETS;
/// A slot being filled or emptied.
const BUSY: usize = 1;

struct Slot {
    addr: AtomicUsize,
    id: AtomicU32,
    size: AtomicU64,
}

static SLOTS: [Slot; CAPACITY] = [const {
    Slot {
        addr: AtomicUsize::new(0),
        id: AtomicU32::new(0),
        size: AtomicU64::new(0),
    }
}; CAPACITY];

static COUNTS: [AtomicU8; BUCKETS] = [const { AtomicU8::new(0) }; BUCKETS];

/// Blocks not remembered because their group was full.
pub(super) static DROPPED: AtomicU64 = AtomicU64::new(0);

#[inline(always)]
fn bucket(addr: usize) -> usize {
    ((addr as u64 >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - BUCKET_BITS)) as usize
}

#[inline(always)]
fn group(bucket: usize) -> &'static [Slot] {
    let start = bucket / WAYS * WAYS;
    &SLOTS[start..start + WAYS]
}

/// Remembers the block at `addr` (`id` names its sample); `false` if its
/// group is full (counted in [`DROPPED`]). No allocation, no lock.
pub(super) fn remember(addr: usize, id: u32, size: u64) -> bool {
    let b = bucket(addr);
    // Counted before the block can be found: its free (which happens after
    // this allocation returned) sees the count.
    COUNTS[b].fetch_add(1, Ordering::Relaxed);
    for slot in group(b) {
        if slot
            .addr
            .compare_exchange(0, BUSY, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            slot.id.store(id, Ordering::Relaxed);
            slot.size.store(size, Ordering::Relaxed);
            slot.addr.store(addr, Ordering::Release);
            return true;
        }
    }
    COUNTS[b].fetch_sub(1, Ordering::Relaxed);
    DROPPED.fetch_add(1, Ordering::Relaxed);
    false
}

/// Forgets the block at `addr` if it is remembered: the free path. One
/// load when its bucket holds no remembered block.
#[inline(always)]
pub(super) fn forget(addr: usize) {
    let b = bucket(addr);
    if COUNTS[b].load(Ordering::Relaxed) == 0 {
        return;
    }
    forget_slow(addr, b);
}

#[cold]
#[inline(never)]
fn forget_slow(addr: usize, b: usize) {
    for slot in group(b) {
        if slot.addr.load(Ordering::Relaxed) == addr
            && slot
                .addr
                .compare_exchange(addr, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            COUNTS[b].fetch_sub(1, Ordering::Relaxed);
            return;
        }
    }
}

/// Calls `f(id, size)` for every remembered block. A block freed while
/// the walk passes it may or may not be seen.
pub(super) fn for_each(mut f: impl FnMut(u32, u64)) {
    for slot in &SLOTS {
        let addr = slot.addr.load(Ordering::Acquire);
        if addr <= BUSY {
            continue;
        }
        let id = slot.id.load(Ordering::Relaxed);
        let size = slot.size.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if slot.addr.load(Ordering::Relaxed) == addr {
            f(id, size);
        }
    }
}

/// Forgets every block: when heap profiling starts, nothing remembered by
/// an earlier run (whose frees were not watched after it stopped) counts.
pub(super) fn clear() {
    for slot in &SLOTS {
        slot.addr.store(0, Ordering::Relaxed);
    }
    for count in &COUNTS {
        count.store(0, Ordering::Relaxed);
    }
    fence(Ordering::SeqCst);
}
