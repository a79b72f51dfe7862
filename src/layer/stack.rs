//! The layer's per-thread span stack and label cache.
//!
//! Each thread keeps a small fixed-size stack of `(span, saved labels)`
//! entries in a `const` thread local. Enter pushes what the slot held and
//! writes the span's labels; exit finds the span's entry and restores it.
//! A small direct-mapped cache keyed by span id makes warm enters
//! lookup-free; a per-id close counter ("epoch") invalidates entries whose
//! id the Registry has reused. No allocation, lock or syscall on any path.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use super::wall;
use crate::context::{self, SpanLabels};

/// Deeper nesting on one thread leaves the slot unchanged.
pub(super) const CAPACITY: usize = 32;
/// Direct-mapped label cache size (a power of two).
const CACHE: usize = 32;
/// Close counters (a power of two), one per cache line.
const EPOCHS: usize = 256;

#[derive(Clone, Copy)]
struct Entry {
    span: u64,
    saved: SpanLabels,
    /// The span's [`Track`], with [`Track::SAMPLED`] if its enter ended an
    /// awaiting episode (in what was padding: the entry stays 48 bytes).
    track: Track,
}

const EMPTY: Entry = Entry {
    span: 0,
    saved: SpanLabels::NONE,
    track: Track::NONE,
};

/// What the layer tracks of a span beyond its labels, cached with them:
/// its awaiting record (`wall.rs`, 0: none), its chain (the await site it
/// stands for, 0: none) and whether its label owner still waits for its
/// first sample (compare the thread's sample count between enter and
/// exit). Eight bytes, so that a cache entry stays 64.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Track {
    pub(super) record: u32,
    /// The chain, and [`Track::WATCH`].
    bits: u32,
}

impl Track {
    pub(super) const NONE: Track = Track { record: 0, bits: 0 };
    /// Chains stay below 2^16 (`wall::MAX_CHAINS`): the top bits are free.
    const WATCH: u32 = 1 << 31;
    /// On a stack entry: the enter ended an awaiting episode (a sample of
    /// the wall type).
    const SAMPLED: u32 = 1 << 30;
    const FLAGS: u32 = Self::WATCH | Self::SAMPLED;

    pub(super) fn new(record: u32, chain: u32, watch: bool) -> Track {
        Track {
            record,
            bits: (chain & !Self::FLAGS) | if watch { Self::WATCH } else { 0 },
        }
    }

    #[inline(always)]
    pub(super) fn chain(self) -> u32 {
        self.bits & !Self::FLAGS
    }

    #[inline(always)]
    pub(super) fn watch(self) -> bool {
        self.bits & Self::WATCH != 0
    }

    #[inline(always)]
    fn sampled(self) -> bool {
        self.bits & Self::SAMPLED != 0
    }

    fn unwatched(self) -> Track {
        Track {
            bits: self.bits & !Self::WATCH,
            ..self
        }
    }
}

/// A span's settled labels, valid while `epoch` matches the close counter
/// of the span's id. `layer` tells apart equal ids of different
/// subscribers (span ids are per Registry).
#[derive(Clone, Copy)]
struct Cached {
    layer: usize,
    span: u64,
    epoch: u64,
    labels: SpanLabels,
    track: Track,
}

const NO_CACHE: Cached = Cached {
    layer: 0,
    span: 0,
    epoch: 0,
    labels: SpanLabels::NONE,
    track: Track::NONE,
};

struct Stack {
    len: Cell<usize>,
    /// Enters beyond `CAPACITY` not yet exited.
    overflow: Cell<usize>,
    entries: [Cell<Entry>; CAPACITY],
    /// The thread's sample count at each watched entry's enter.
    samples: [Cell<u32>; CAPACITY],
    cache: [Cell<Cached>; CACHE],
    /// Wall time on: the chain of the last exit that directly followed an
    /// enter (the deepest span of the last poll: the await site).
    site: Cell<u32>,
    /// Wall time on: the last operation was an enter.
    peak: Cell<bool>,
}

thread_local! {
    // const-initialised, no destructor: plain TLS, no lazy registration.
    static STACK: Stack = const {
        Stack {
            len: Cell::new(0),
            overflow: Cell::new(0),
            entries: [const { Cell::new(EMPTY) }; CAPACITY],
            samples: [const { Cell::new(0) }; CAPACITY],
            cache: [const { Cell::new(NO_CACHE) }; CACHE],
            site: Cell::new(0),
            peak: Cell::new(false),
        }
    };
}

/// A counter on its own cache line, so closes on other threads do not
/// slow down enters of unrelated spans.
#[repr(align(64))]
struct Epoch(AtomicU64);

/// Bumped whenever a span whose id hashes here closes. A Registry reuses
/// span ids after a close, so a cached entry is valid only while the
/// counter of its id is unchanged.
static CLOSES: [Epoch; EPOCHS] = [const { Epoch(AtomicU64::new(0)) }; EPOCHS];

#[inline(always)]
fn hash(span: u64) -> u64 {
    span.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

#[inline(always)]
fn epoch_of(span: u64) -> &'static AtomicU64 {
    &CLOSES[(hash(span) >> 56) as usize & (EPOCHS - 1)].0
}

#[inline(always)]
fn cache_slot(span: u64) -> usize {
    (hash(span) >> 32) as usize & (CACHE - 1)
}

/// The close counter to pass to [`remember`]; read it before looking
/// the span up.
#[inline]
pub(super) fn epoch(span: u64) -> u64 {
    epoch_of(span).load(Ordering::Acquire)
}

/// Call from `on_close`, before the Registry can reuse the id.
#[inline]
pub(super) fn closed(span: u64) {
    epoch_of(span).fetch_add(1, Ordering::Release);
}

/// Drops every thread's cached labels of `span` (its label set changed).
#[inline]
pub(super) fn invalidate(span: u64) {
    closed(span);
}

/// Drops every thread's cached labels of every span (a label set high in
/// a tree changed: its descendants' changed too). A few microseconds.
pub(super) fn invalidate_all() {
    for epoch in &CLOSES {
        epoch.0.fetch_add(1, Ordering::Release);
    }
}

/// `true` if `span` is the innermost span entered on this thread and the
/// slot holds `labels`.
pub(super) fn innermost(span: u64, labels: SpanLabels) -> bool {
    STACK
        .try_with(|stack| {
            let len = stack.len.get();
            if stack.overflow.get() != 0 || len == 0 || stack.entries[len - 1].get().span != span {
                return false;
            }
            context::current() == labels
        })
        .unwrap_or(false)
}

/// Writes `labels` into the slot if `span` is still the innermost span
/// entered on this thread; its exit restores what its enter saved.
pub(super) fn retarget_innermost(span: u64, labels: SpanLabels) {
    let _ = STACK.try_with(|stack| {
        let len = stack.len.get();
        if stack.overflow.get() == 0 && len > 0 && stack.entries[len - 1].get().span == span {
            context::replace(labels);
        }
    });
}

/// A span of chain `chain` closed on this thread: if it was the await
/// site, the site becomes its parent's chain (a finished child is not
/// what the enclosing span awaits).
pub(super) fn site_closed(chain: u32, parent_chain: u32) {
    let _ = STACK.try_with(|stack| {
        if stack.site.get() == chain {
            stack.site.set(parent_chain);
        }
    });
}

/// Caches a span's settled labels for later enters on this thread.
#[inline]
pub(super) fn remember(layer: usize, span: u64, epoch: u64, labels: SpanLabels, track: Track) {
    let _ = STACK.try_with(|stack| {
        stack.cache[cache_slot(span)].set(Cached {
            layer,
            span,
            epoch,
            labels,
            track,
        });
    });
}

/// Stops watching `span`'s sample count on this thread (its label owner
/// has its profile id now).
pub(super) fn unwatch(layer: usize, span: u64) {
    let _ = STACK.try_with(|stack| {
        let slot = &stack.cache[cache_slot(span)];
        let mut cached = slot.get();
        if cached.span == span && cached.layer == layer {
            cached.track = cached.track.unwatched();
            slot.set(cached);
        }
        // Entered spans of this id stop comparing at their exit too.
        for entry in &stack.entries[..stack.len.get().min(CAPACITY)] {
            let mut e = entry.get();
            if e.span == span {
                e.track = e.track.unwatched();
                entry.set(e);
            }
        }
    });
}

/// Enters with cached labels if this thread has them; `false` if not.
#[inline(always)]
pub(super) fn enter_cached(layer: usize, span: u64, wall: bool) -> bool {
    STACK
        .try_with(|stack| {
            let cached = stack.cache[cache_slot(span)].get();
            if cached.span != span
                || cached.layer != layer
                || cached.epoch != epoch_of(span).load(Ordering::Acquire)
            {
                return false;
            }
            push(stack, span, cached.labels, cached.track, wall);
            true
        })
        .unwrap_or(false)
}

/// Installs `labels`, remembering what the slot held.
#[inline]
pub(super) fn enter(span: u64, labels: SpanLabels, track: Track, wall: bool) {
    let _ = STACK.try_with(|stack| push(stack, span, labels, track, wall));
}

#[inline(always)]
fn push(stack: &Stack, span: u64, labels: SpanLabels, mut track: Track, wall: bool) {
    let len = stack.len.get();
    if len >= CAPACITY {
        stack.overflow.set(stack.overflow.get() + 1);
        return;
    }
    if track.watch() {
        // Read before the labels go in: a sample between the two would
        // carry the span's labels without being counted as its own.
        stack.samples[len].set(context::own_samples());
    }
    let saved = context::replace(labels);
    if wall {
        stack.peak.set(true);
        if track.record != 0 && wall::enter(track.record) {
            track.bits |= Track::SAMPLED;
        }
    }
    stack.entries[len].set(Entry { span, saved, track });
    stack.len.set(len + 1);
}

/// What an exit found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Exited {
    /// Nothing to do.
    Done,
    /// The span got a sample while entered here and its label owner
    /// waits for its profile id.
    Sampled,
}

/// The exit's bookkeeping beyond the slot: the await site, the awaiting
/// record, the sample count (`samples`: now; the enter's is in the stack
/// at `index`).
#[inline(always)]
fn popped(stack: &Stack, index: usize, track: Track, samples: u32, wall: bool) -> Exited {
    if wall {
        if stack.peak.get() {
            stack.site.set(track.chain());
            stack.peak.set(false);
        }
        if track.record != 0 {
            wall::exit(track.record, stack.site.get());
        }
    }
    if track.watch() && (track.sampled() || samples != stack.samples[index].get()) {
        Exited::Sampled
    } else {
        Exited::Done
    }
}

/// Undoes the topmost enter of `span` on this thread.
#[inline(always)]
pub(super) fn exit(span: u64, wall: bool) -> Exited {
    STACK
        .try_with(|stack| {
            let len = stack.len.get();
            if stack.overflow.get() == 0 && len > 0 {
                let top = stack.entries[len - 1].get();
                if top.span == span {
                    // The common case: the most recent enter.
                    // Read while the labels are still in: a sample counted
                    // here carries the span's labels.
                    let samples = own_samples_if(top.track.watch());
                    context::restore(top.saved);
                    stack.len.set(len - 1);
                    if top.track.bits == 0 && !wall {
                        return Exited::Done;
                    }
                    return popped(stack, len - 1, top.track, samples, wall);
                }
            }
            exit_slow(stack, span, wall)
        })
        .unwrap_or(Exited::Done)
}

/// Overflowed stacks, out-of-order exits, and exits without an enter.
#[cold]
#[inline(never)]
fn exit_slow(stack: &Stack, span: u64, wall: bool) -> Exited {
    let len = stack.len.get();
    // A span with an entry is undone from the stack even while enters
    // beyond the capacity are pending: counting its exit against those
    // instead would leave its entry (and its labels in the slot) behind
    // for good. Only exits of spans without an entry are taken as exits
    // of the uncounted deeper enters.
    let Some(i) = (0..len)
        .rev()
        .find(|&i| stack.entries[i].get().span == span)
    else {
        let overflow = stack.overflow.get();
        if overflow > 0 {
            stack.overflow.set(overflow - 1);
        }
        return Exited::Done;
    };
    let entry = stack.entries[i].get();
    let samples = own_samples_if(entry.track.watch());
    let at_enter = stack.samples[i].get();
    if i + 1 == len {
        context::replace(entry.saved);
    } else {
        // Out of order: a later span still runs, so the slot stays; the
        // entry above takes over what this one saved.
        let mut above = stack.entries[i + 1].get();
        above.saved = entry.saved;
        stack.entries[i + 1].set(above);
        for j in i..len - 1 {
            stack.entries[j].set(stack.entries[j + 1].get());
            stack.samples[j].set(stack.samples[j + 1].get());
        }
    }
    stack.len.set(len - 1);
    // Compared with the enter's count, moved away above.
    stack.samples[len - 1].set(at_enter);
    popped(stack, len - 1, entry.track, samples, wall)
}

/// The thread's sample count, if `watch`.
#[inline(always)]
fn own_samples_if(watch: bool) -> u32 {
    if watch {
        context::own_samples()
    } else {
        0
    }
}

#[cfg(test)]
pub(super) fn depth() -> usize {
    STACK.with(|stack| stack.len.get())
}

// A cache entry is one 64-byte line's worth (copied on every warm enter),
// and a stack entry kept its size when the track went in.
const _: () = assert!(std::mem::size_of::<Cached>() == 64);
const _: () = assert!(std::mem::size_of::<Entry>() == 48);
