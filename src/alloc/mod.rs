//! Allocation profiles per span: [`Allocator`], a `#[global_allocator]`
//! wrapper that samples allocations and labels each sample with the span
//! running on the allocating thread.
//!
//! ```no_run
//! #[global_allocator]
//! static GLOBAL: tracing_pyroscope::Allocator = tracing_pyroscope::Allocator::system();
//! ```
//!
//! - **Inert until asked**: until a profiler with allocation profiling runs
//!   (`PYROSCOPE_PROFILING_ALLOCATION_ENABLED=true`,
//!   `Builder::allocations(true)`), an allocation costs one relaxed atomic
//!   load on top of the wrapped allocator.
//! - **Sampling** (`sample.rs`), as Go and jemalloc do: each thread counts
//!   down the bytes to its next sample, drawn from an exponential
//!   distribution whose mean is the sample distance
//!   (`PYROSCOPE_ALLOCATION_SAMPLE_BYTES`, default 512 KiB). The count is a
//!   plain thread-local decrement; only a sampled allocation does more:
//!   it reads the thread's span labels, unwinds its stack with the CPU
//!   sampler's unwinder and puts both in a preallocated lock-free buffer.
//!   Nothing on that path allocates or locks, and an allocation made while
//!   a thread samples is never sampled (a thread-local flag).
//! - **Weights**: a sampled allocation of `size` bytes stands for
//!   `1 / (1 - exp(-size / distance))` allocations, its inverse probability
//!   of being sampled (Go's `scaleHeapSample`), so the totals estimate
//!   what was allocated.
//! - **Live heap** (`live.rs`, `PYROSCOPE_PROFILING_HEAP_ENABLED=true`):
//!   sampled blocks are remembered in a fixed-size lock-free table until
//!   freed. A free first reads one byte of a small address-hash count map,
//!   so freeing a block that was not sampled stays one load.
//! - **Collection** (`collect.rs`): a thread (`pyroscope-alloc`) moves
//!   samples from the buffer into an aggregate the collector takes per
//!   drain; at the end of each interval the blocks still alive give the
//!   in-use figures.
//! - **Safety**: thread exit (the thread locals are `const` and without
//!   destructors), `fork` (a child hook switches sampling off in the
//!   child) and allocations made by other libraries' signal handlers (no
//!   lock, no allocation on the sampled path; a handler interrupting a
//!   sampling thread is not sampled) are all safe.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

#[cfg(tp_sampler)]
mod collect;
#[cfg(tp_sampler)]
mod live;
#[cfg(tp_sampler)]
mod sample;

#[cfg(tp_sampler)]
pub(crate) use collect::AllocProfiler;

/// Set by the wrapper's first allocation.
const INSTALLED: u8 = 1;
/// Allocation sampling is on.
const SAMPLING: u8 = 2;
/// Sampled blocks are remembered until freed.
const HEAP: u8 = 4;

/// The wrapper's state: [`INSTALLED`], [`SAMPLING`], [`HEAP`]. One relaxed
/// load per allocation and free.
static STATE: AtomicU8 = AtomicU8::new(0);

/// The default mean distance between sampled allocations (512 KiB, Go's
/// `MemProfileRate`), until a profiler sets its own.
const DEFAULT_ALLOCATION_SAMPLE_BYTES: u64 = crate::config::DEFAULT_ALLOCATION_SAMPLE_BYTES;

/// A global allocator that samples allocations for per-span allocation
/// profiles, wrapping another (the system allocator by default).
///
/// Install it in the binary:
///
/// ```no_run
/// #[global_allocator]
/// static GLOBAL: tracing_pyroscope::Allocator = tracing_pyroscope::Allocator::system();
/// ```
///
/// or around another allocator: `Allocator::new(tikv_jemallocator::Jemalloc)`,
/// `Allocator::new(mimalloc::MiMalloc)`. It does nothing but forward (one
/// relaxed atomic load per call) until a profiler with allocation profiling
/// runs (`PYROSCOPE_PROFILING_ALLOCATION_ENABLED=true`). Then each thread
/// samples an allocation every `PYROSCOPE_ALLOCATION_SAMPLE_BYTES` bytes on
/// average (default 512 KiB), labelled with the span running on it, and
/// the profiler sends `memory` profiles (`alloc_objects`, `alloc_space`,
/// and with `PYROSCOPE_PROFILING_HEAP_ENABLED=true` also `inuse_objects`,
/// `inuse_space`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Allocator<A = System> {
    inner: A,
}

impl Allocator<System> {
    /// The wrapper around the system allocator ([`System`]).
    pub const fn system() -> Self {
        Allocator { inner: System }
    }
}

impl<A> Allocator<A> {
    /// The wrapper around `inner`.
    pub const fn new(inner: A) -> Self {
        Allocator { inner }
    }
}

/// `true` once an [`Allocator`] is the global allocator (it has allocated).
#[cfg_attr(not(tp_sampler), allow(dead_code))]
pub(crate) fn installed() -> bool {
    STATE.load(Ordering::Relaxed) & INSTALLED != 0
}

/// What asking for allocation profiling without the wrapper says.
#[cfg_attr(not(tp_sampler), allow(dead_code))]
pub(crate) const NOT_INSTALLED: &str = "allocation profiling needs tracing_pyroscope::Allocator as the global allocator: add `#[global_allocator] static GLOBAL: tracing_pyroscope::Allocator = tracing_pyroscope::Allocator::system();` to the binary (or `Allocator::new(tikv_jemallocator::Jemalloc)` to wrap another allocator)";

#[cold]
#[inline(never)]
fn mark_installed() {
    STATE.fetch_or(INSTALLED, Ordering::Relaxed);
}

// SAFETY: every method forwards to the wrapped allocator with the caller's
// arguments and returns its result unchanged; sampling only reads the
// returned pointer and size and never allocates (see the module docs).
unsafe impl<A: GlobalAlloc> GlobalAlloc for Allocator<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let state = STATE.load(Ordering::Relaxed);
        if state != INSTALLED && due(state, layout.size()) {
            // SAFETY: the caller's contract, passed on.
            let p = unsafe { self.inner.alloc(layout) };
            sampled(state, p, layout.size());
            return p;
        }
        // Inert, or not this thread's sample: a tail call, nothing kept
        // across it (the countdown ran before it).
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let state = STATE.load(Ordering::Relaxed);
        if state != INSTALLED && due(state, layout.size()) {
            // SAFETY: the caller's contract, passed on.
            let p = unsafe { self.inner.alloc_zeroed(layout) };
            sampled(state, p, layout.size());
            return p;
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Forgotten before the block is freed: an allocation that gets the
        // same address afterwards is a new block.
        on_free(ptr);
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        on_free(ptr);
        let state = STATE.load(Ordering::Relaxed);
        let sample = state != INSTALLED && due(state, new_size);
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if sample {
            sampled(state, p, new_size);
        }
        p
    }
}

/// Before an allocation of `size` bytes while not inert (`state` is not
/// [`INSTALLED`]): counts it down if sampling is on, `true` if it is to be
/// sampled; marks the wrapper installed at its first allocation.
#[inline(always)]
fn due(state: u8, size: usize) -> bool {
    if state & SAMPLING != 0 {
        #[cfg(tp_sampler)]
        return sample::due(size);
    } else if state == 0 {
        mark_installed();
    }
    let _ = size;
    false
}

/// After an allocation [`due`] picked: samples the block at `p`.
#[inline(always)]
fn sampled(state: u8, p: *mut u8, size: usize) {
    #[cfg(tp_sampler)]
    sample::sampled(p, size, state & HEAP != 0);
    let _ = (state, p, size);
}

#[inline(always)]
fn on_free(p: *mut u8) {
    // Installed is marked by allocations (a free follows one).
    if STATE.load(Ordering::Relaxed) & HEAP != 0 {
        #[cfg(tp_sampler)]
        live::forget(p as usize);
    }
    let _ = p;
}

#[cfg(all(test, tp_sampler))]
mod tests;
