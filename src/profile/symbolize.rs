//! Instruction address → function name, source file and line, for code in
//! this process.
//!
//! On Linux, [`Symbolizer`] reads `/proc/self/maps` (`crate::maps`) to find
//! the loaded object (executable or shared library) that contains an
//! address, converts the runtime address (AVMA) to the object's own address
//! (SVMA) with the load bias, and asks `addr2line` for the frames at that
//! address, inlined frames included (innermost first). The DWARF is read a
//! few pages at a time, one compilation unit at a time (`dwarf.rs`), so
//! symbolizing holds a small part of the debug info, never the whole;
//! objects with compressed or split DWARF go through `addr2line::Loader`.
//!
//! Symbols come from the loaded image, not from whatever file is at its path
//! now (`symbolize/linux.rs`). An object is identified by the device and
//! inode the maps give; its load bias and GNU build id are read from memory
//! (the dynamic loader's list, `dl_iterate_phdr`). Its symbols are read only
//! from a file with that build id (or, for an object without one in memory,
//! with that device and inode): the path, `/proc/self/exe`, or
//! `/proc/self/map_files/<range>`, opened when the object is first seen and
//! kept open while it is mapped. A library renamed over on disk by a deploy
//! keeps its names; if no file has the object's identity, its frames are
//! `<object>+0x<svma>`, counted in `Stats::symbol_mismatches`. Without DWARF
//! of its own, an object's debug info is looked for in
//! `/usr/lib/debug/.build-id/xx/yyyy.debug` (same build id) and through
//! `.gnu_debuglink` (same CRC-32) next to it, in its `.debug/` and under
//! `/usr/lib/debug` (`symbolize/elf.rs` reads the ELF side).
//!
//! Names, best first, from whatever debug info the build has (README's
//! "Symbols" says which `Cargo.toml` settings give which):
//! - DWARF's linkage name (`debug = "limited"` or `"full"`), demangled
//!   without the hash (`{:#}`): `tokio::runtime::task::harness::Harness<T,S>::poll`;
//! - for the outermost frame at an address, which owns the symbol, the
//!   symbol table's name, demangled the same way, when DWARF has no
//!   qualified name for it;
//! - DWARF's bare name (`debug = "line-tables-only"` has nothing else for
//!   inlined frames), shown without its generic arguments
//!   ([`frame_name`]): `poll`, not `poll<tokio::runtime::blocking::task::BlockingTask<…>, …>`.
//!   Those arguments name the caller's concrete types, so one function would
//!   otherwise be as many frames as it has instantiations (closures of
//!   different callers included), and a flame graph could not merge them.
//!
//! Fallbacks, in order: DWARF → ELF symbol table → `<object>+0x<svma>` →
//! `0x<addr>` when no object contains the address. Names of the second kind
//! are stable across runs (no ASLR in them), so flame graphs still merge.
//!
//! Results are cached by address for the life of the process, in two
//! generations of at most [`CACHE_LIMIT`] entries together: an address still
//! sampled moves to the newer one, the older one is dropped when the newer
//! fills (counted). The parsed debug info of the objects used last is kept
//! from one interval to the next, within a bound. The maps are re-read (at
//! most once per second) when an address falls outside every known object,
//! which picks up `dlopen`ed libraries; objects no longer mapped are then
//! dropped, with their files and cached results.
//!
//! The profiler's own frames are named from the symbol table only
//! ([`Symbolizer::resolve_from_symbols`]), so that its own work never makes
//! it read debug info.
//!
//! Elsewhere than Linux the symbolizer is a stub that only names addresses in
//! hex.

use std::sync::Arc;

/// Cached addresses kept at most (both generations).
#[cfg_attr(not(tp_sampler), allow(dead_code))]
pub(crate) const CACHE_LIMIT: usize = 100_000;

/// One source-level frame at an address. An address has several when code
/// was inlined: innermost first, the function that really owns the machine
/// code last (pprof's `Location.line` order).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SymbolFrame {
    /// Demangled function name, never empty.
    pub(crate) name: Arc<str>,
    /// Source file, or the object's path for symbol-table fallbacks; may be
    /// empty.
    pub(crate) file: Arc<str>,
    /// Source line; 0 when unknown.
    pub(crate) line: u32,
}

/// An executable mapping of a loaded object (pprof `Mapping`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ObjectMapping {
    /// Path of the object, or a pseudo name such as `[vdso]`.
    pub(crate) path: Arc<str>,
    /// First address of the mapping.
    pub(crate) start: u64,
    /// One past the last address of the mapping.
    pub(crate) limit: u64,
    /// File offset the mapping starts at.
    pub(crate) file_offset: u64,
    /// GNU build id in lowercase hex, if the object has one.
    pub(crate) build_id: Option<Arc<str>>,
}

/// A loaded image as the dynamic loader lists it (`dl_iterate_phdr`):
/// what the symbolizer takes from memory rather than from a file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LoadedImage {
    /// Load bias: `avma = svma + bias`.
    pub(crate) bias: u64,
    /// Runtime address ranges of its executable segments.
    pub(crate) text: Vec<std::ops::Range<u64>>,
    /// Its GNU build id, read from its `PT_NOTE` in memory.
    pub(crate) build_id: Option<Vec<u8>>,
}

/// Everything known about one address.
#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Resolved {
    /// Never empty; innermost (inlined) frame first.
    pub(crate) frames: Vec<SymbolFrame>,
    /// The mapping that contains the address, if any.
    pub(crate) mapping: Option<Arc<ObjectMapping>>,
}

/// The address to look up for `addr`: the address itself for the
/// interrupted instruction (the leaf), `addr - 1` for return addresses, so
/// that the lookup lands inside the call instruction and not on the line
/// after it (or in the next function, for calls that never return).
#[inline]
pub(crate) fn lookup_address(addr: u64, is_return_address: bool) -> u64 {
    if is_return_address {
        addr.saturating_sub(1)
    } else {
        addr
    }
}

pub(crate) use super::names::{frame_name, is_qualified};

fn hex_frame(addr: u64, file: Arc<str>) -> SymbolFrame {
    SymbolFrame {
        name: Arc::from(format!("0x{addr:x}")),
        file,
        line: 0,
    }
}

#[cfg(tp_sampler)]
pub(crate) use linux::Symbolizer;

#[cfg(not(tp_sampler))]
pub(crate) use stub::Symbolizer;

#[cfg(not(tp_sampler))]
mod stub {
    use super::{hex_frame, Resolved};
    use std::sync::Arc;

    /// Names addresses in hex only: there is no sampler on this platform.
    #[derive(Debug, Default)]
    pub(crate) struct Symbolizer {}

    impl Symbolizer {
        /// A new symbolizer.
        pub(crate) fn new() -> Self {
            Symbolizer {}
        }

        /// `0x<probe>`, without a mapping.
        pub(crate) fn resolve(&mut self, probe: u64) -> Arc<Resolved> {
            Arc::new(Resolved {
                frames: vec![hex_frame(probe, Arc::from(""))],
                mapping: None,
            })
        }

        /// `0x<probe>`, as [`resolve`](Self::resolve).
        pub(crate) fn resolve_from_symbols(&mut self, probe: u64) -> Arc<Resolved> {
            self.resolve(probe)
        }

        /// Nothing to read here.
        pub(crate) fn prefetch(&mut self, _probes: impl IntoIterator<Item = u64>) {}

        /// Nothing is loaded here.
        pub(crate) fn end_interval(&mut self) -> bool {
            false
        }

        /// Nothing is read here.
        pub(crate) fn symbol_mismatches(&self) -> u64 {
            0
        }
    }
}

#[cfg(tp_sampler)]
mod elf;
#[cfg(tp_sampler)]
mod linux;
#[cfg(tp_sampler)]
mod objects;

#[cfg(all(test, tp_sampler))]
mod tests;
