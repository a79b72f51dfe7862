//! Synthetic frames: named frames that are not code addresses, such as
//! `[awaiting]`, `[blocked: futex]`, `[runnable]`, or a span's await site.
//!
//! [`synthetic_frame`] interns a name and returns an address-like value
//! with [`TAG`] in its top bits, which no user-space code address has
//! (x86-64 and aarch64 user addresses stay below 2⁴⁸). Such a value goes
//! in a stack like any frame; the encoder turns it into a `Location` of
//! the synthetic mapping whose one function has exactly that name, and the
//! symbolizer never sees it. Interning locks and allocates: call it from
//! normal code (the manager, the collector, a span's first enter), never
//! from a signal handler or the allocator's sampled path, and keep the
//! value.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::sync::lock;

/// The top bits of every synthetic frame value.
const TAG: u64 = 0xFFFF_5A00_0000_0000;
/// The bits above the id.
const TAG_MASK: u64 = 0xFFFF_FF00_0000_0000;
/// Most distinct synthetic names; past it, [`OVERFLOW_NAME`] stands for the rest.
const MAX_NAMES: usize = 65_536;
/// The name of every synthetic frame past [`MAX_NAMES`].
const OVERFLOW_NAME: &str = "[other]";

#[derive(Default)]
struct Table {
    ids: HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
}

static TABLE: Mutex<Option<Table>> = Mutex::new(None);

/// The frame value that stands for a frame named `name`.
pub(crate) fn synthetic_frame(name: &str) -> u64 {
    let mut guard = lock(&TABLE);
    let table = guard.get_or_insert_with(Table::default);
    if let Some(&id) = table.ids.get(name) {
        return TAG | u64::from(id);
    }
    let name: Arc<str> = if table.names.len() < MAX_NAMES {
        Arc::from(name)
    } else {
        Arc::from(OVERFLOW_NAME)
    };
    if let Some(&id) = table.ids.get(&name) {
        return TAG | u64::from(id);
    }
    let id = table.names.len() as u32;
    table.names.push(name.clone());
    table.ids.insert(name, id);
    TAG | u64::from(id)
}

/// `true` if `frame` came from [`synthetic_frame`].
#[inline]
pub(crate) fn is_synthetic(frame: u64) -> bool {
    frame & TAG_MASK == TAG
}

/// The name of a synthetic frame; `None` for any other value.
pub(crate) fn synthetic_name(frame: u64) -> Option<Arc<str>> {
    if !is_synthetic(frame) {
        return None;
    }
    let id = (frame & !TAG_MASK) as usize;
    lock(&TABLE).as_ref()?.names.get(id).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_gets_one_value_that_reads_back_as_that_name() {
        let a = synthetic_frame("[awaiting]");
        let b = synthetic_frame("[blocked: futex]");
        assert_ne!(a, b);
        assert_eq!(a, synthetic_frame("[awaiting]"));
        assert!(is_synthetic(a) && is_synthetic(b));
        assert_eq!(synthetic_name(a).as_deref(), Some("[awaiting]"));
        assert_eq!(synthetic_name(b).as_deref(), Some("[blocked: futex]"));
    }

    #[test]
    fn code_addresses_are_not_synthetic() {
        for addr in [
            0,
            0x40_1000,
            0x7fff_ffff_f000,
            0x0000_ffff_ffff_ffff,
            u64::MAX,
        ] {
            assert!(!is_synthetic(addr), "{addr:#x}");
            assert_eq!(synthetic_name(addr), None);
        }
    }
}
