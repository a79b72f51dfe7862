//! The thread span slot: which span is running on this thread, right now.
//!
//! Every thread has one [`SpanLabels`] record. The tracing layer writes it on
//! span enter and exit; the sampler's `SIGPROF` handler reads it at the very
//! moment it takes a sample. That is what makes labels exact, even for async
//! tasks that hop between worker threads on every poll.
//!
//! The slot is a `const`-initialised thread local without a destructor, so on
//! Linux it is a plain TLS variable: no lazy initialisation, no registration,
//! nothing a signal handler could trip over. Writes are double-buffered: the
//! writer fills the inactive copy and then flips a one-byte index, so a
//! signal arriving in the middle of a write sees either the old or the new
//! record, never a torn mix of both.
//!
//! Most users never touch this module: [`SpanProfileLayer`] does. It is public
//! so that code outside `tracing` (and tests) can label work directly:
//!
//! ```
//! use tracing_pyroscope::context::{self, SpanLabels};
//!
//! let labels = SpanLabels::new(0x0123_4567_89ab_cdef, 0, context::intern_name("GET /car"));
//! let previous = context::replace(labels);
//! assert_eq!(context::current(), labels);
//! // ... work done here is sampled with span_id="0123456789abcdef" ...
//! context::replace(previous);
//! assert_eq!(context::current(), previous);
//! ```
//!
//! [`SpanProfileLayer`]: crate::SpanProfileLayer

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{compiler_fence, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The labels of the span running on a thread.
///
/// A zero `span_id` means "no span": samples then carry no span labels. A zero
/// `trace_id` or `name_id` means that label is absent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SpanLabels {
    /// The span id (`span_id` label, 16 lowercase hex digits); 0 for none.
    pub span_id: u64,
    /// The trace id (`trace_id` label, 32 lowercase hex digits); 0 for none.
    pub trace_id: u128,
    /// An id from [`intern_name`] (`span_name` label); 0 for none.
    pub name_id: u32,
}

impl SpanLabels {
    /// No span: the value of a fresh thread's slot.
    pub const NONE: SpanLabels = SpanLabels {
        span_id: 0,
        trace_id: 0,
        name_id: 0,
    };

    /// Labels for a span.
    pub const fn new(span_id: u64, trace_id: u128, name_id: u32) -> Self {
        SpanLabels {
            span_id,
            trace_id,
            name_id,
        }
    }

    /// `true` if no span is recorded.
    pub const fn is_none(&self) -> bool {
        self.span_id == 0 && self.trace_id == 0 && self.name_id == 0
    }
}

struct Slot {
    active: Cell<u8>,
    copies: [Cell<SpanLabels>; 2],
}

thread_local! {
    // const-initialised and without Drop: a plain `#[thread_local]` static on
    // Linux, safe to read from a signal handler running on the same thread.
    static SLOT: Slot = const {
        Slot {
            active: Cell::new(0),
            copies: [Cell::new(SpanLabels::NONE), Cell::new(SpanLabels::NONE)],
        }
    };
}

/// Sets this thread's labels and returns the previous ones, to be restored
/// later with another `replace`. A few nanoseconds; no syscall, no allocation.
#[inline]
pub fn replace(labels: SpanLabels) -> SpanLabels {
    SLOT.with(|slot| {
        let active = slot.active.get() as usize & 1;
        let previous = slot.copies[active].get();
        slot.copies[active ^ 1].set(labels);
        // Signal fence: the inactive copy is fully written before the flip is
        // visible to a signal handler interrupting this thread.
        compiler_fence(Ordering::SeqCst);
        slot.active.set((active ^ 1) as u8);
        compiler_fence(Ordering::SeqCst);
        previous
    })
}

/// This thread's current labels.
#[inline]
pub fn current() -> SpanLabels {
    SLOT.with(|slot| {
        let active = slot.active.get() as usize & 1;
        compiler_fence(Ordering::SeqCst);
        slot.copies[active].get()
    })
}

/// Reads the slot from a signal handler that interrupted this thread.
///
/// Only `Cell` reads of a const thread local: async-signal-safe.
#[inline(always)]
#[cfg_attr(
    not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64"),
        not(tracing_pyroscope_unsupported)
    )),
    allow(dead_code)
)]
pub(crate) fn read_in_signal_handler() -> SpanLabels {
    current()
}

/// The most distinct span names kept; later new names share one id.
pub const MAX_NAMES: usize = 4096;
/// The name used once [`MAX_NAMES`] distinct names have been seen.
pub const OVERFLOW_NAME: &str = "other";

#[derive(Default)]
struct Names {
    ids: HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
}

fn names() -> &'static Mutex<Names> {
    static NAMES: OnceLock<Mutex<Names>> = OnceLock::new();
    NAMES.get_or_init(Default::default)
}

/// Returns the id of a span name, for [`SpanLabels::name_id`].
///
/// Interning takes a lock and may allocate: call it when a span is created,
/// not on enter. Ids are never 0. At most [`MAX_NAMES`] names are kept; after
/// that every new name maps to [`OVERFLOW_NAME`], so memory stays bounded.
pub fn intern_name(name: &str) -> u32 {
    let mut table = match names().lock() {
        Ok(t) => t,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(&id) = table.ids.get(name) {
        return id;
    }
    let name: &str = if table.names.len() >= MAX_NAMES {
        OVERFLOW_NAME
    } else {
        name
    };
    if let Some(&id) = table.ids.get(name) {
        return id;
    }
    let arc: Arc<str> = Arc::from(name);
    table.names.push(arc.clone());
    let id = table.names.len() as u32;
    table.ids.insert(arc, id);
    id
}

/// The name behind an id from [`intern_name`].
pub fn name_of(id: u32) -> Option<Arc<str>> {
    if id == 0 {
        return None;
    }
    let table = match names().lock() {
        Ok(t) => t,
        Err(poisoned) => poisoned.into_inner(),
    };
    table.names.get(id as usize - 1).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_returns_previous_and_restores() {
        let a = SpanLabels::new(1, 2, 0);
        let b = SpanLabels::new(3, 0, 0);
        assert_eq!(current(), SpanLabels::NONE);
        let p0 = replace(a);
        assert_eq!(p0, SpanLabels::NONE);
        let p1 = replace(b);
        assert_eq!(p1, a);
        assert_eq!(current(), b);
        replace(p1);
        assert_eq!(current(), a);
        replace(p0);
        assert_eq!(current(), SpanLabels::NONE);
    }

    #[test]
    fn slots_are_per_thread() {
        replace(SpanLabels::new(7, 0, 0));
        std::thread::spawn(|| assert_eq!(current(), SpanLabels::NONE))
            .join()
            .unwrap();
        assert_eq!(current().span_id, 7);
        replace(SpanLabels::NONE);
    }

    #[test]
    fn names_intern_to_stable_nonzero_ids() {
        let a = intern_name("context-test-a");
        let b = intern_name("context-test-b");
        assert_ne!(a, 0);
        assert_ne!(a, b);
        assert_eq!(intern_name("context-test-a"), a);
        assert_eq!(name_of(a).as_deref(), Some("context-test-a"));
        assert_eq!(name_of(0), None);
    }
}
