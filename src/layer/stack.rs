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
}

const EMPTY: Entry = Entry {
    span: 0,
    saved: SpanLabels::NONE,
};

/// A span's settled labels, valid while `epoch` matches the close counter
/// of the span's id. `layer` tells apart equal ids of different
/// subscribers (span ids are per Registry).
#[derive(Clone, Copy)]
struct Cached {
    layer: usize,
    span: u64,
    epoch: u64,
    labels: SpanLabels,
}

const NO_CACHE: Cached = Cached {
    layer: 0,
    span: 0,
    epoch: 0,
    labels: SpanLabels::NONE,
};

struct Stack {
    len: Cell<usize>,
    /// Enters beyond `CAPACITY` not yet exited.
    overflow: Cell<usize>,
    entries: [Cell<Entry>; CAPACITY],
    cache: [Cell<Cached>; CACHE],
}

thread_local! {
    // const-initialised, no destructor: plain TLS, no lazy registration.
    static STACK: Stack = const {
        Stack {
            len: Cell::new(0),
            overflow: Cell::new(0),
            entries: [const { Cell::new(EMPTY) }; CAPACITY],
            cache: [const { Cell::new(NO_CACHE) }; CACHE],
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

/// Caches a span's settled labels for later enters on this thread.
#[inline]
pub(super) fn remember(layer: usize, span: u64, epoch: u64, labels: SpanLabels) {
    let _ = STACK.try_with(|stack| {
        stack.cache[cache_slot(span)].set(Cached {
            layer,
            span,
            epoch,
            labels,
        });
    });
}

/// Enters with cached labels if this thread has them; `false` if not.
#[inline(always)]
pub(super) fn enter_cached(layer: usize, span: u64) -> bool {
    STACK
        .try_with(|stack| {
            let cached = stack.cache[cache_slot(span)].get();
            if cached.span != span
                || cached.layer != layer
                || cached.epoch != epoch_of(span).load(Ordering::Acquire)
            {
                return false;
            }
            push(stack, span, cached.labels);
            true
        })
        .unwrap_or(false)
}

/// Installs `labels`, remembering what the slot held.
#[inline]
pub(super) fn enter(span: u64, labels: SpanLabels) {
    let _ = STACK.try_with(|stack| push(stack, span, labels));
}

#[inline(always)]
fn push(stack: &Stack, span: u64, labels: SpanLabels) {
    let len = stack.len.get();
    if len >= CAPACITY {
        stack.overflow.set(stack.overflow.get() + 1);
        return;
    }
    let saved = context::replace(labels);
    stack.entries[len].set(Entry { span, saved });
    stack.len.set(len + 1);
}

/// Undoes the topmost enter of `span` on this thread.
#[inline(always)]
pub(super) fn exit(span: u64) {
    let _ = STACK.try_with(|stack| {
        let len = stack.len.get();
        if stack.overflow.get() == 0 && len > 0 {
            let top = stack.entries[len - 1].get();
            if top.span == span {
                // The common case: the most recent enter.
                context::restore(top.saved);
                stack.len.set(len - 1);
                return;
            }
        }
        exit_slow(stack, span);
    });
}

/// Overflowed stacks, out-of-order exits, and exits without an enter.
#[cold]
#[inline(never)]
fn exit_slow(stack: &Stack, span: u64) {
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
        return;
    };
    let entry = stack.entries[i].get();
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
        }
    }
    stack.len.set(len - 1);
}

#[cfg(test)]
pub(super) fn depth() -> usize {
    STACK.with(|stack| stack.len.get())
}
