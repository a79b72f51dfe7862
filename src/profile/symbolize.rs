//! Instruction address → function name, source file and line, for code in
//! this process.
//!
//! On Linux, [`Symbolizer`] reads `/proc/self/maps` to find the loaded object
//! (executable or shared library) that contains an address, converts the
//! runtime address (AVMA) to the object's own address (SVMA) with the ELF
//! program headers, and asks `addr2line` for the frames at that address,
//! inlined frames included (innermost first). The DWARF is read a few pages
//! at a time, one compilation unit at a time (`dwarf.rs`), so symbolizing
//! holds a small part of the debug info, never the whole; objects with
//! compressed DWARF go through `addr2line::Loader`.
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
//!   ([`frame_name`](super::names::frame_name)): `poll`, not `poll<tokio::runtime::blocking::task::BlockingTask<…>, …>`.
//!   Those arguments name the caller's concrete types, so one function would
//!   otherwise be as many frames as it has instantiations (closures of
//!   different callers included), and a flame graph could not merge them.
//!
//! Fallbacks, in order: DWARF → ELF symbol table → `<object>+0x<svma>` →
//! `0x<addr>` when no object contains the address. Names of the second kind
//! are stable across runs (no ASLR in them), so flame graphs still merge.
//!
//! Results are cached by address; the cache is cleared past
//! [`CACHE_LIMIT`] entries and whenever the set of loaded objects changes.
//! The maps are re-read (at most once per second) when an address falls
//! outside every known object, which picks up `dlopen`ed libraries.
//!
//! The profiler's own frames are named from the symbol table only
//! ([`Symbolizer::resolve_from_symbols`]), so that its own work never makes
//! it read debug info.
//!
//! Elsewhere than Linux the symbolizer is a stub that only names addresses in
//! hex.

use std::sync::Arc;

/// Cached addresses kept before the cache is cleared.
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

/// Everything known about one address.
#[derive(Debug, PartialEq, Eq, Hash)]
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
        pub(crate) fn release_debug_info(&mut self) -> bool {
            false
        }
    }
}

#[cfg(tp_sampler)]
mod linux {
    use super::super::dwarf::{raw_frames, DebugInfo, RawFrame, Unsupported};
    use super::super::names::{frame_name, is_qualified};
    use super::{hex_frame, ObjectMapping, Resolved, SymbolFrame, CACHE_LIMIT};
    use addr2line::gimli;
    use object::elf::{
        FileHeader32, FileHeader64, ELF_NOTE_GNU, NT_GNU_BUILD_ID, PF_X, PT_LOAD, PT_NOTE,
    };
    use object::read::elf::{FileHeader, NoteIterator, ProgramHeader};
    use object::{Endianness, FileKind, ReadCache};
    use std::borrow::Cow;
    use std::collections::{HashMap, HashSet};
    use std::fmt;
    use std::fs::File;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// Addresses of the profiler's own samples kept before that cache is
    /// cleared (each holds a pointer to its function's shared result).
    const SYMBOL_CACHE_LIMIT: usize = 16 * 1024;

    /// How often `/proc/self/maps` may be re-read for unknown addresses.
    const MAPS_REFRESH: Duration = Duration::from_secs(1);

    /// An executable mapping plus what is needed to look addresses up in it.
    struct Range {
        mapping: Arc<ObjectMapping>,
        /// `svma = avma - bias` (wrapping).
        bias: u64,
        /// Index into `Symbolizer::objects`; `None` for pseudo files.
        object: Option<usize>,
    }

    /// One object file on disk, opened lazily.
    struct ObjectFile {
        path: Arc<str>,
        /// Its DWARF, read a piece at a time (`dwarf.rs`); `None` until
        /// first needed.
        dwarf: Option<Result<DebugInfo, Unsupported>>,
        /// For DWARF that `dwarf.rs` does not read (compressed, no
        /// `.debug_aranges`): `None` until first needed; `Some(None)` if it
        /// cannot be loaded.
        loader: Option<Option<addr2line::Loader>>,
        elf: Option<ElfInfo>,
        /// The function symbols, read on first need for an address from a
        /// profiler thread (see [`Symbolizer::resolve_from_symbols`]);
        /// `Some(None)` if there are none.
        symbols: Option<Option<SymbolTable>>,
    }

    /// An object's function symbols (`.symtab`, else `.dynsym`): the
    /// names of the profiler's own frames, without reading debug info.
    /// Compact, so it is kept for good (16 bytes a function); the names
    /// stay in the file and are read when a function is first named.
    #[derive(Default)]
    struct SymbolTable {
        /// `(svma, size, name offset in the string table)`, sorted by
        /// `svma`.
        entries: Vec<(u64, u32, u32)>,
        /// File offset and size of the string table.
        strings: (u64, u64),
    }

    /// Longest symbol name read from a string table.
    const MAX_SYMBOL_NAME: usize = 16 * 1024;

    impl SymbolTable {
        /// Reads the function symbols of the ELF file at `path`: its section
        /// headers and one symbol table, not the whole file (nor its
        /// strings).
        fn read(path: &str) -> Option<SymbolTable> {
            let file = File::open(path).ok()?;
            let data = ReadCache::new(file);
            let mut table = match FileKind::parse(&data).ok()? {
                FileKind::Elf32 => Self::read_elf::<FileHeader32<Endianness>>(&data)?,
                FileKind::Elf64 => Self::read_elf::<FileHeader64<Endianness>>(&data)?,
                _ => return None,
            };
            table
                .entries
                .sort_unstable_by_key(|e| (e.0, std::cmp::Reverse(e.1)));
            table.entries.dedup_by_key(|e| e.0);
            table.entries.shrink_to_fit();
            (!table.entries.is_empty()).then_some(table)
        }

        fn read_elf<Elf: FileHeader<Endian = Endianness>>(
            data: &ReadCache<File>,
        ) -> Option<SymbolTable> {
            use object::elf::{SHN_UNDEF, SHT_DYNSYM, SHT_SYMTAB, STT_FUNC, STT_GNU_IFUNC};
            use object::read::elf::{SectionHeader, Sym};
            let header = Elf::parse(data).ok()?;
            let endian = header.endian().ok()?;
            let sections = header.sections(endian, data).ok()?;
            let mut table = SymbolTable::default();
            // `.symtab` has every function; a stripped object has `.dynsym`.
            for kind in [SHT_SYMTAB, SHT_DYNSYM] {
                let Some(section) = sections.iter().find(|s| s.sh_type(endian) == kind) else {
                    continue;
                };
                let Ok(symbols) = section.data_as_array::<Elf::Sym, _>(endian, data) else {
                    continue;
                };
                let Ok(strings) =
                    sections.section(object::SectionIndex(section.sh_link(endian) as usize))
                else {
                    continue;
                };
                table.strings = (
                    strings.sh_offset(endian).into(),
                    strings.sh_size(endian).into(),
                );
                for sym in symbols {
                    let function = matches!(sym.st_type(), STT_FUNC | STT_GNU_IFUNC);
                    if !function || sym.st_shndx(endian) == SHN_UNDEF || sym.st_name(endian) == 0 {
                        continue;
                    }
                    let size: u64 = sym.st_size(endian).into();
                    table.entries.push((
                        sym.st_value(endian).into(),
                        u32::try_from(size).unwrap_or(u32::MAX),
                        sym.st_name(endian),
                    ));
                }
                if !table.entries.is_empty() {
                    break;
                }
            }
            Some(table)
        }

        /// The start of the function that contains `svma`, and its name's
        /// offset in the string table.
        fn find(&self, svma: u64) -> Option<(u64, u32)> {
            let i = self
                .entries
                .partition_point(|e| e.0 <= svma)
                .checked_sub(1)?;
            let (start, size, name) = self.entries[i];
            if size != 0 && svma - start >= u64::from(size) {
                return None;
            }
            Some((start, name))
        }

        /// The mangled name at `offset` of the string table, read from the
        /// file at `path`.
        fn name(&self, path: &str, offset: u32) -> Option<String> {
            use std::os::unix::fs::FileExt;
            let (at, size) = self.strings;
            let len = size
                .checked_sub(u64::from(offset))?
                .min(MAX_SYMBOL_NAME as u64);
            let mut buf = vec![0u8; usize::try_from(len).ok()?];
            let file = File::open(path).ok()?;
            let n = file.read_at(&mut buf, at + u64::from(offset)).ok()?;
            let bytes = buf.get(..n)?;
            let end = bytes.iter().position(|&b| b == 0)?;
            String::from_utf8(bytes[..end].to_vec()).ok()
        }
    }

    /// Maps addresses of this process to frames. See the module docs.
    pub(crate) struct Symbolizer {
        /// Sorted by start address, non-overlapping.
        ranges: Vec<Range>,
        objects: Vec<ObjectFile>,
        object_index: HashMap<Arc<str>, usize>,
        last_maps_read: Option<Instant>,
        cache: HashMap<u64, Arc<Resolved>>,
        /// The cache's results, one per distinct content: addresses with
        /// the same frames (the many sampled instructions of one source
        /// line, say) share one, so a new address costs a map entry.
        shared: HashSet<Arc<Resolved>>,
        /// Addresses resolved from the symbol table alone
        /// ([`Symbolizer::resolve_from_symbols`]).
        symbol_cache: HashMap<u64, Arc<Resolved>>,
        /// Their results, one per function: `(mapping start, function
        /// start)`.
        symbol_functions: HashMap<(u64, u64), Arc<Resolved>>,
        names: HashSet<Arc<str>>,
    }

    impl fmt::Debug for Symbolizer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Symbolizer")
                .field("ranges", &self.ranges.len())
                .field("objects", &self.objects.len())
                .field("cached_addresses", &self.cache.len())
                .finish()
        }
    }

    impl Default for Symbolizer {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Symbolizer {
        /// A new symbolizer. Cheap: maps and debug info are read on first use.
        pub(crate) fn new() -> Self {
            Symbolizer {
                ranges: Vec::new(),
                objects: Vec::new(),
                object_index: HashMap::new(),
                last_maps_read: None,
                cache: HashMap::new(),
                shared: HashSet::new(),
                symbol_cache: HashMap::new(),
                symbol_functions: HashMap::new(),
                names: HashSet::new(),
            }
        }

        /// The frames at `probe`, an address of this process. Pass
        /// [`lookup_address`](super::lookup_address)`(addr, is_return)`.
        pub(crate) fn resolve(&mut self, probe: u64) -> Arc<Resolved> {
            if let Some(hit) = self.cache.get(&probe) {
                return hit.clone();
            }
            let range = match self.find_range(probe) {
                Some(i) => i,
                None => {
                    // Not cached: a later maps refresh may know the address.
                    return Arc::new(Resolved {
                        frames: vec![hex_frame(probe, Arc::from(""))],
                        mapping: None,
                    });
                }
            };
            let resolved = self.resolve_in(range, probe);
            if self.cache.len() >= CACHE_LIMIT {
                self.cache.clear();
                self.shared.clear();
                self.symbol_cache.clear();
                self.names.clear();
            }
            let resolved = match self.shared.get(&resolved) {
                Some(hit) => hit.clone(),
                None => {
                    let resolved = Arc::new(resolved);
                    self.shared.insert(resolved.clone());
                    resolved
                }
            };
            self.cache.insert(probe, resolved.clone());
            resolved
        }

        /// Resolves every address of `probes` not cached yet, in address
        /// order, so that [`resolve`](Self::resolve) then finds them all
        /// cached. In address order each compilation unit's debug info is
        /// read once, while its addresses are looked up, and can be let go
        /// before the next unit's: the few unit contexts kept
        /// ([`UNIT_CONTEXTS`](super::super::dwarf::UNIT_CONTEXTS)) are
        /// enough, and the heap used to symbolize an interval stays that of
        /// a few units, not of every unit its new addresses fall in.
        pub(crate) fn prefetch(&mut self, probes: impl IntoIterator<Item = u64>) {
            let mut todo: Vec<u64> = probes
                .into_iter()
                .filter(|probe| !self.cache.contains_key(probe))
                .collect();
            todo.sort_unstable();
            todo.dedup();
            for probe in todo {
                self.resolve(probe);
            }
        }

        /// The frame at `probe` for a sample of the profiler's own threads:
        /// what [`resolve`](Self::resolve) already knows, else the
        /// function's name from the object's symbol table (no inlined
        /// frames, no line), so that symbolizing the profiler's own
        /// samples never reads debug info. Without this, its leaf addresses
        /// are new in every interval (it runs different code each time
        /// its samples land) and each interval would read the binary's debug
        /// info again, which costs more than the rest of its work.
        pub(crate) fn resolve_from_symbols(&mut self, probe: u64) -> Arc<Resolved> {
            if let Some(hit) = self.cache.get(&probe) {
                return hit.clone();
            }
            if let Some(hit) = self.symbol_cache.get(&probe) {
                return hit.clone();
            }
            let Some(range) = self.find_range(probe) else {
                return Arc::new(Resolved {
                    frames: vec![hex_frame(probe, Arc::from(""))],
                    mapping: None,
                });
            };
            let mapping = self.ranges[range].mapping.clone();
            let svma = probe.wrapping_sub(self.ranges[range].bias);
            let found = self.ranges[range].object.and_then(|object| {
                let file = &mut self.objects[object];
                let table = file
                    .symbols
                    .get_or_insert_with(|| SymbolTable::read(&file.path));
                let (start, name) = table.as_ref()?.find(svma)?;
                Some((object, start, name))
            });
            let resolved = match found {
                // One result per function, shared by its addresses.
                Some((object, start, name)) => {
                    let key = (mapping.start, start);
                    match self.symbol_functions.get(&key) {
                        Some(hit) => hit.clone(),
                        None => {
                            let file = &self.objects[object];
                            let path = file.path.clone();
                            let name = file
                                .symbols
                                .as_ref()
                                .and_then(Option::as_ref)
                                .and_then(|t| t.name(&path, name))
                                .map(|s| {
                                    addr2line::demangle_auto(Cow::Borrowed(&s), None).into_owned()
                                });
                            let frame = match name.as_deref().map(frame_name) {
                                Some(n) if !n.is_empty() => SymbolFrame {
                                    name: self.intern(n),
                                    file: path,
                                    line: 0,
                                },
                                _ => unknown_frame(&path, start),
                            };
                            let resolved = Arc::new(Resolved {
                                frames: vec![frame],
                                mapping: Some(mapping),
                            });
                            self.symbol_functions.insert(key, resolved.clone());
                            resolved
                        }
                    }
                }
                None => Arc::new(Resolved {
                    frames: vec![unknown_frame(&mapping.path, svma)],
                    mapping: Some(mapping),
                }),
            };
            if self.symbol_cache.len() >= SYMBOL_CACHE_LIMIT {
                self.symbol_cache.clear();
            }
            self.symbol_cache.insert(probe, resolved.clone());
            resolved
        }

        /// Drops the debug info read so far (the units' parsed DWARF and
        /// the file's pages read; the compact symbol tables stay), keeping
        /// the resolved addresses:
        /// between intervals the process does not carry the debug info, and
        /// it is read again only for an address not seen before. Returns
        /// `true` if some was in memory.
        pub(crate) fn release_debug_info(&mut self) -> bool {
            let mut released = false;
            for object in &mut self.objects {
                if let Some(Some(_)) = object.loader {
                    object.loader = None;
                    released = true;
                }
                if let Some(Ok(dwarf)) = &mut object.dwarf {
                    released |= dwarf.release();
                }
            }
            released
        }

        /// Objects whose debug info is in memory.
        #[cfg(test)]
        pub(crate) fn loaded_objects(&self) -> usize {
            self.objects
                .iter()
                .filter(|o| {
                    matches!(o.loader, Some(Some(_)))
                        || matches!(&o.dwarf, Some(Ok(d)) if d.holds())
                })
                .count()
        }

        /// Number of cached addresses (for tests and stats).
        #[cfg(test)]
        pub(crate) fn cached(&self) -> usize {
            self.cache.len()
        }

        fn find_range(&mut self, addr: u64) -> Option<usize> {
            if let Some(i) = self.lookup_range(addr) {
                return Some(i);
            }
            let due = self
                .last_maps_read
                .is_none_or(|at| at.elapsed() >= MAPS_REFRESH);
            if !due {
                return None;
            }
            self.reload_maps();
            self.lookup_range(addr)
        }

        fn lookup_range(&self, addr: u64) -> Option<usize> {
            let i = self.ranges.partition_point(|r| r.mapping.start <= addr);
            let i = i.checked_sub(1)?;
            (addr < self.ranges[i].mapping.limit).then_some(i)
        }

        fn reload_maps(&mut self) {
            self.last_maps_read = Some(Instant::now());
            let text = match std::fs::read_to_string("/proc/self/maps") {
                Ok(text) => text,
                Err(_) => return,
            };
            let mut ranges = Vec::new();
            for line in text.lines() {
                let Some(entry) = parse_maps_line(line) else {
                    continue;
                };
                let path: Arc<str> = Arc::from(entry.path);
                let pseudo = path.starts_with('[');
                let object = if pseudo {
                    None
                } else {
                    Some(self.object_for(&path))
                };
                let elf = object.and_then(|o| self.objects[o].elf.as_ref());
                let bias = match elf {
                    Some(elf) => elf.bias(entry.start, entry.offset),
                    // Pseudo files: addresses relative to the mapping.
                    None => entry.start.wrapping_sub(entry.offset),
                };
                let build_id = elf.and_then(|e| e.build_id.clone());
                ranges.push(Range {
                    mapping: Arc::new(ObjectMapping {
                        path,
                        start: entry.start,
                        limit: entry.end,
                        file_offset: entry.offset,
                        build_id,
                    }),
                    bias,
                    object,
                });
            }
            ranges.sort_by_key(|r| r.mapping.start);
            let changed = ranges.len() != self.ranges.len()
                || ranges
                    .iter()
                    .zip(&self.ranges)
                    .any(|(a, b)| a.mapping != b.mapping);
            if changed {
                // An unloaded library's addresses may now belong to another.
                self.cache.clear();
                self.shared.clear();
                self.symbol_cache.clear();
                self.symbol_functions.clear();
                self.ranges = ranges;
            }
        }

        fn object_for(&mut self, path: &Arc<str>) -> usize {
            if let Some(&i) = self.object_index.get(path) {
                return i;
            }
            let elf = read_elf_info(path);
            let i = self.objects.len();
            self.objects.push(ObjectFile {
                path: path.clone(),
                dwarf: None,
                loader: None,
                elf,
                symbols: None,
            });
            self.object_index.insert(path.clone(), i);
            i
        }

        fn intern(&mut self, s: &str) -> Arc<str> {
            if let Some(hit) = self.names.get(s) {
                return hit.clone();
            }
            let arc: Arc<str> = Arc::from(s);
            self.names.insert(arc.clone());
            arc
        }

        fn resolve_in(&mut self, range: usize, probe: u64) -> Resolved {
            let mapping = self.ranges[range].mapping.clone();
            let svma = probe.wrapping_sub(self.ranges[range].bias);
            let Some(object) = self.ranges[range].object else {
                return Resolved {
                    frames: vec![unknown_frame(&mapping.path, svma)],
                    mapping: Some(mapping),
                };
            };
            let file = &mut self.objects[object];
            let dwarf = file
                .dwarf
                .get_or_insert_with(|| DebugInfo::open(&file.path));
            let frames = match dwarf {
                Ok(dwarf) => dwarf.find_frames(svma),
                Err(Unsupported::NoDwarf) => Vec::new(),
                Err(Unsupported::Other) => {
                    let loader = file
                        .loader
                        .get_or_insert_with(|| addr2line::Loader::new(&*file.path).ok());
                    match loader {
                        Some(loader) => loader_frames(loader, svma),
                        None => Vec::new(),
                    }
                }
            };
            // With `debug = "line-tables-only"` DWARF has bare names
            // (`run`, no path): the symbol table's is better for the
            // outermost frame, which owns the symbol.
            let bare = |name: &Option<String>| name.as_deref().is_none_or(|n| !is_qualified(n));
            let symbol = if frames.last().is_none_or(|(name, _, _)| bare(name))
                || frames.iter().any(|(name, _, _)| name.is_none())
            {
                self.symbol_name(object, svma)
            } else {
                None
            };
            self.build_resolved(object, mapping, svma, RawFrames { frames, symbol })
        }

        /// The demangled symbol-table name of the function at `svma` of
        /// `object`.
        fn symbol_name(&mut self, object: usize, svma: u64) -> Option<String> {
            let file = &mut self.objects[object];
            let table = file
                .symbols
                .get_or_insert_with(|| SymbolTable::read(&file.path))
                .as_ref()?;
            let (_, name) = table.find(svma)?;
            let name = table.name(&file.path, name)?;
            Some(addr2line::demangle_auto(Cow::Borrowed(&name), None).into_owned())
        }

        /// Interns what the raw lookup found at `svma` of `object` into a
        /// [`Resolved`] (fallbacks included).
        fn build_resolved(
            &mut self,
            object: usize,
            mapping: Arc<ObjectMapping>,
            svma: u64,
            raw: RawFrames,
        ) -> Resolved {
            let RawFrames {
                frames: raw,
                symbol,
            } = raw;
            let object_path = self.objects[object].path.clone();
            let mut frames = Vec::with_capacity(raw.len().max(1));
            let outermost = raw.len().saturating_sub(1);
            for (i, (name, file, line)) in raw.into_iter().enumerate() {
                if name.is_none() && i != outermost {
                    continue; // a nameless inlined frame: the outer one says enough
                }
                let bare = name.as_deref().is_none_or(|n| !is_qualified(n));
                let name = if i == outermost && bare && symbol.is_some() {
                    symbol.as_deref()
                } else {
                    name.as_deref().or(symbol.as_deref())
                };
                let name = match name.map(frame_name) {
                    Some(n) if !n.is_empty() => self.intern(n),
                    _ => unknown_frame(&object_path, svma).name,
                };
                let file = match file {
                    Some(f) => self.intern(&f),
                    None => self.intern(""),
                };
                frames.push(SymbolFrame { name, file, line });
            }
            if frames.is_empty() {
                match symbol.as_deref().map(frame_name) {
                    Some(s) if !s.is_empty() => {
                        let name = self.intern(s);
                        frames.push(SymbolFrame {
                            name,
                            file: object_path,
                            line: 0,
                        });
                    }
                    _ => frames.push(unknown_frame(&object_path, svma)),
                }
            }
            Resolved {
                frames,
                mapping: Some(mapping),
            }
        }
    }

    /// What `addr2line` says about one address, before interning: the
    /// frames innermost first (name, file, line), and the symbol table's
    /// name when DWARF's is missing or bare.
    #[derive(Default)]
    struct RawFrames {
        frames: Vec<RawFrame>,
        symbol: Option<String>,
    }

    /// The frames `addr2line::Loader` finds at `svma`, innermost first.
    fn loader_frames(loader: &addr2line::Loader, svma: u64) -> Vec<RawFrame> {
        raw_frames(loader.find_frames(svma).map_err(|_| gimli::Error::Io))
    }

    /// `<basename>+0x<svma>`, file = the object's path.
    fn unknown_frame(path: &Arc<str>, svma: u64) -> SymbolFrame {
        let base = path.rsplit('/').next().unwrap_or(path);
        SymbolFrame {
            name: Arc::from(format!("{base}+0x{svma:x}")),
            file: path.clone(),
            line: 0,
        }
    }

    #[derive(Debug, PartialEq, Eq)]
    pub(super) struct MapsEntry<'a> {
        pub(super) start: u64,
        pub(super) end: u64,
        pub(super) offset: u64,
        pub(super) path: &'a str,
    }

    /// One executable, named mapping of `/proc/self/maps`:
    /// `start-end perms offset dev inode path`. Others give `None`.
    pub(super) fn parse_maps_line(line: &str) -> Option<MapsEntry<'_>> {
        let mut rest = line;
        let mut field = || {
            rest = rest.trim_start();
            let end = rest.find(' ').unwrap_or(rest.len());
            let (f, r) = rest.split_at(end);
            rest = r;
            f
        };
        let range = field();
        let perms = field();
        let offset = field();
        let _dev = field();
        let _inode = field();
        let path = rest.trim();
        if !perms.contains('x') || path.is_empty() {
            return None;
        }
        let (start, end) = range.split_once('-')?;
        let start = u64::from_str_radix(start, 16).ok()?;
        let end = u64::from_str_radix(end, 16).ok()?;
        let offset = u64::from_str_radix(offset, 16).ok()?;
        if end <= start {
            return None;
        }
        Some(MapsEntry {
            start,
            end,
            offset,
            path,
        })
    }

    /// `PT_LOAD` segment of an ELF file.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) struct LoadSegment {
        pub(super) executable: bool,
        pub(super) offset: u64,
        pub(super) vaddr: u64,
        pub(super) filesz: u64,
        pub(super) align: u64,
    }

    #[derive(Debug, Default)]
    pub(super) struct ElfInfo {
        pub(super) loads: Vec<LoadSegment>,
        pub(super) build_id: Option<Arc<str>>,
    }

    impl ElfInfo {
        /// The load bias of a mapping of file offset `offset` at `start`.
        /// The segment is the executable `PT_LOAD` whose page-aligned file
        /// range contains `offset` (several may share a page: the one that
        /// starts last wins).
        pub(super) fn bias(&self, start: u64, offset: u64) -> u64 {
            let aligned = |s: &LoadSegment| s.offset - s.offset % s.align.max(1);
            let contains = |s: &&LoadSegment| {
                aligned(s) <= offset && offset < s.offset.saturating_add(s.filesz.max(1))
            };
            let seg = self
                .loads
                .iter()
                .filter(contains)
                .max_by_key(|s| (s.executable, aligned(s)));
            match seg {
                // The segment's file offset `p_offset` lives at `bias + p_vaddr`,
                // and this mapping puts file offset `offset` at `start`.
                Some(s) => start
                    .wrapping_sub(offset)
                    .wrapping_sub(s.vaddr.wrapping_sub(s.offset)),
                None => start.wrapping_sub(offset),
            }
        }
    }

    /// Largest note segment read when looking for the build id.
    const MAX_NOTES: u64 = 64 * 1024;

    /// The `PT_LOAD` segments and GNU build id of the ELF file at `path`.
    /// Reads only the file header, the program headers and small note
    /// segments, not the whole file. `None` if it is not a readable ELF file.
    fn read_elf_info(path: &str) -> Option<ElfInfo> {
        let file = File::open(path).ok()?;
        let data = ReadCache::new(file);
        match FileKind::parse(&data).ok()? {
            FileKind::Elf32 => elf_info::<FileHeader32<Endianness>>(&data),
            FileKind::Elf64 => elf_info::<FileHeader64<Endianness>>(&data),
            _ => None,
        }
    }

    fn elf_info<Elf: FileHeader<Endian = Endianness>>(data: &ReadCache<File>) -> Option<ElfInfo> {
        let header = Elf::parse(data).ok()?;
        let endian = header.endian().ok()?;
        let mut info = ElfInfo::default();
        for ph in header.program_headers(endian, data).ok()? {
            match ph.p_type(endian) {
                PT_LOAD => info.loads.push(LoadSegment {
                    executable: ph.p_flags(endian) & PF_X != 0,
                    offset: ph.p_offset(endian).into(),
                    vaddr: ph.p_vaddr(endian).into(),
                    filesz: ph.p_filesz(endian).into(),
                    align: ph.p_align(endian).into(),
                }),
                PT_NOTE if info.build_id.is_none() && ph.p_filesz(endian).into() <= MAX_NOTES => {
                    if let Ok(Some(notes)) = ph.notes(endian, data) {
                        info.build_id = gnu_build_id(endian, notes);
                    }
                }
                _ => {}
            }
        }
        Some(info)
    }

    /// The GNU build id among `notes` (a `PT_NOTE` segment), lowercase hex.
    /// Stops at the first malformed note.
    pub(super) fn gnu_build_id<Elf: FileHeader>(
        endian: Elf::Endian,
        mut notes: NoteIterator<'_, Elf>,
    ) -> Option<Arc<str>> {
        while let Some(note) = notes.next().ok()? {
            if note.n_type(endian) == NT_GNU_BUILD_ID
                && note.name() == ELF_NOTE_GNU
                && !note.desc().is_empty()
            {
                let hex: String = note.desc().iter().map(|b| format!("{b:02x}")).collect();
                return Some(Arc::from(hex));
            }
        }
        None
    }

    #[cfg(test)]
    pub(super) fn elf_info_of(path: &str) -> Option<ElfInfo> {
        read_elf_info(path)
    }
}

#[cfg(all(test, tp_sampler))]
mod tests {
    use super::linux::{
        elf_info_of, gnu_build_id, parse_maps_line, ElfInfo, LoadSegment, MapsEntry,
    };
    use super::*;
    use std::hint::black_box;

    #[inline(never)]
    fn symbolizer_target_function(x: u64) -> u64 {
        let mut acc = black_box(x);
        for i in 0..black_box(17u64) {
            acc = acc.rotate_left(5) ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
        black_box(acc)
    }

    #[inline(always)]
    fn inlined_helper_for_symbolizer(x: u64) -> u64 {
        black_box(x.wrapping_mul(0x2545_f491_4f6c_dd1d)).rotate_right(11)
    }

    #[inline(never)]
    fn outer_function_with_inlining(x: u64) -> u64 {
        let a = black_box(x) ^ 7;
        let b = inlined_helper_for_symbolizer(a);
        black_box(b.wrapping_add(a))
    }

    #[inline(always)]
    fn generic_inlined_helper<T: Copy + Into<u64>>(x: T) -> u64 {
        black_box(x.into().wrapping_mul(0x9e37_79b9_7f4a_7c15)).rotate_left(17)
    }

    #[inline(never)]
    fn outer_function_with_generic_inlining(x: u64) -> u64 {
        let a = generic_inlined_helper(black_box(x));
        let b = generic_inlined_helper(black_box(x as u32 ^ 0x55));
        black_box(a ^ b)
    }

    fn outermost(resolved: &Resolved) -> &SymbolFrame {
        resolved.frames.last().expect("frames are never empty")
    }

    #[test]
    fn resolves_a_function_to_its_demangled_name_file_and_line() {
        assert_ne!(symbolizer_target_function(3), 0);
        let addr = symbolizer_target_function as *const () as usize as u64;
        let mut sym = Symbolizer::new();
        let r = sym.resolve(addr);
        let f = outermost(&r);
        assert_eq!(
            &*f.name, "tracing_pyroscope::profile::symbolize::tests::symbolizer_target_function",
            "frames: {:?}",
            r.frames
        );
        assert!(f.file.ends_with("symbolize.rs"), "{:?}", f);
        assert!(f.line > 0, "{:?}", f);
        let mapping = r.mapping.as_ref().expect("address is in a mapping");
        assert!(mapping.start <= addr && addr < mapping.limit);
        let exe = std::env::current_exe().expect("current exe");
        assert_eq!(&*mapping.path, exe.to_str().expect("utf-8 path"));

        // An address inside the body resolves to the same function.
        let inside = sym.resolve(addr + 8);
        assert_eq!(outermost(&inside).name, f.name);
        assert_eq!(sym.cached(), 2);
        // Cached: the same Arc comes back.
        assert!(Arc::ptr_eq(&sym.resolve(addr), &r));
        // Addresses with the same frames (instructions of one line) share
        // one result.
        let twin = (1..64u64)
            .map(|off| addr + off)
            .filter(|&a| a != addr + 8)
            .map(|a| sym.resolve(a))
            .find(|other| **other == *inside)
            .expect("another instruction with the same frames");
        assert!(Arc::ptr_eq(&twin, &inside));

        // A return address just after the function's start is looked up at -1.
        assert_eq!(lookup_address(addr + 1, true), addr);
        assert_eq!(lookup_address(addr, false), addr);
        assert_eq!(lookup_address(0, true), 0);
    }

    #[test]
    fn the_profilers_own_frames_come_from_the_symbol_table_without_debug_info() {
        assert_ne!(symbolizer_target_function(5), 0);
        let addr = symbolizer_target_function as *const () as usize as u64;
        let mut sym = Symbolizer::new();
        let light = sym.resolve_from_symbols(addr + 8);
        assert_eq!(
            sym.loaded_objects(),
            0,
            "debug info read for the profiler's frame"
        );
        assert_eq!(light.frames.len(), 1, "{:?}", light.frames);
        let f = &light.frames[0];
        assert_eq!(
            &*f.name,
            "tracing_pyroscope::profile::symbolize::tests::symbolizer_target_function"
        );
        assert_eq!(f.line, 0);
        let exe = std::env::current_exe().expect("current exe");
        assert_eq!(&*f.file, exe.to_str().expect("utf-8 path"));
        // Cached apart from the full results, which it does not pre-empt.
        assert!(Arc::ptr_eq(&sym.resolve_from_symbols(addr + 8), &light));
        assert_eq!(sym.cached(), 0);
        // Once an application sample resolved the address with debug info,
        // the profiler's frames get the same, fuller result.
        let full = sym.resolve(addr + 8);
        assert!(full.frames.iter().all(|f| f.line > 0), "{:?}", full.frames);
        assert!(Arc::ptr_eq(&sym.resolve_from_symbols(addr + 8), &full));
        // A shared library's function resolves from its dynamic symbols.
        let getpid = libc::getpid as *const () as usize as u64;
        sym.release_debug_info();
        let r = sym.resolve_from_symbols(getpid);
        assert_eq!(sym.loaded_objects(), 0);
        assert!(r.frames[0].name.contains("getpid"), "{:?}", r.frames);
    }

    #[test]
    fn releasing_debug_info_keeps_results_and_reloads_for_new_addresses() {
        let mut sym = Symbolizer::new();
        let first = symbolizer_target_function as *const () as usize as u64;
        let before = sym.resolve(first);
        let loaded = |s: &Symbolizer| s.loaded_objects();
        assert_eq!(loaded(&sym), 1);
        sym.release_debug_info();
        assert_eq!(loaded(&sym), 0);
        // A cached address needs no debug info.
        assert_eq!(sym.resolve(first).frames, before.frames);
        assert_eq!(loaded(&sym), 0);
        // A new one reads it again, with the same result as before.
        let f: fn() -> u32 = std::process::id;
        let r = sym.resolve(f as *const () as usize as u64);
        assert_eq!(&*outermost(&r).name, "std::process::id", "{:?}", r.frames);
        assert_eq!(loaded(&sym), 1);
    }

    #[test]
    #[cfg_attr(
        debug_assertions,
        ignore = "needs release inlining; scripts/test.sh runs it in release"
    )]
    fn reports_inlined_frames_innermost_first() {
        assert_ne!(outer_function_with_inlining(5), 0);
        let start = outer_function_with_inlining as *const () as usize as u64;
        let mut sym = Symbolizer::new();
        let is_helper = |f: &SymbolFrame| f.name.ends_with("inlined_helper_for_symbolizer");
        let found = (0..256)
            .map(|off| sym.resolve(start + off))
            .find(|r| r.frames.len() >= 2 && r.frames[..r.frames.len() - 1].iter().any(is_helper));
        let r = found.expect("an address inside the inlined helper");
        // Innermost first: whatever the helper inlined comes before it.
        let helper = r.frames.iter().position(is_helper).expect("helper");
        assert!(r.frames[..helper]
            .iter()
            .all(|f| !f.name.contains("outer_function")));
        assert!(
            outermost(&r)
                .name
                .ends_with("tests::outer_function_with_inlining"),
            "{:?}",
            r.frames
        );
        assert!(r.frames.iter().all(|f| f.line > 0), "{:?}", r.frames);
    }

    /// A `::h` followed by 16 hex digits: a legacy symbol hash.
    fn has_hash(name: &str) -> bool {
        name.match_indices("::h").any(|(i, _)| {
            let rest = &name[i + 3..];
            rest.len() >= 16 && rest[..16].chars().all(|c| c.is_ascii_hexdigit())
        })
    }

    #[test]
    #[cfg_attr(
        debug_assertions,
        ignore = "needs release inlining; scripts/test.sh runs it in release"
    )]
    fn inlined_generic_frames_take_their_linkage_name() {
        // The crate's own profiles (`debug = "limited"` in release, full
        // debug info in dev) give DWARF linkage names, so inlined frames
        // have their path, as the outermost one does.
        black_box(outer_function_with_generic_inlining(black_box(9)));
        let start = outer_function_with_generic_inlining as *const () as usize as u64;
        let mut sym = Symbolizer::new();
        let mut helpers = Vec::new();
        for off in 0..512 {
            let r = sym.resolve(start + off);
            if !outermost(&r)
                .name
                .ends_with("outer_function_with_generic_inlining")
            {
                break; // past the function's end
            }
            let inlined = &r.frames[..r.frames.len() - 1];
            helpers.extend(
                inlined
                    .iter()
                    .filter(|f| f.name.contains("generic_inlined_helper"))
                    .map(|f| f.name.clone()),
            );
        }
        assert!(!helpers.is_empty(), "no address inside the inlined helper");
        for name in &helpers {
            assert!(
                name.starts_with(
                    "tracing_pyroscope::profile::symbolize::tests::generic_inlined_helper"
                ),
                "{name}"
            );
            assert!(!has_hash(name), "{name}");
        }
    }

    #[test]
    fn resolves_std_and_shared_library_symbols() {
        let mut sym = Symbolizer::new();
        let f: fn() -> u32 = std::process::id;
        let r = sym.resolve(f as *const () as usize as u64);
        assert_eq!(&*outermost(&r).name, "std::process::id", "{:?}", r.frames);

        // libc is a shared object, usually without DWARF: the dynamic symbol
        // table names it.
        let getpid = libc::getpid as *const () as usize as u64;
        let r = sym.resolve(getpid);
        let mapping = r.mapping.as_ref().expect("libc mapping");
        assert!(mapping.path.contains("libc"), "{mapping:?}");
        assert!(outermost(&r).name.contains("getpid"), "{:?}", r.frames);

        // An address outside any object is named in hex and has no mapping.
        let r = sym.resolve(8);
        assert_eq!(&*r.frames[0].name, "0x8");
        assert!(r.mapping.is_none());
    }

    #[test]
    fn parses_maps_lines() {
        let line = "7f1c2a000000-7f1c2a1b0000 r-xp 00028000 08:01 1234   /usr/lib/x86_64-linux-gnu/libc.so.6";
        assert_eq!(
            parse_maps_line(line),
            Some(MapsEntry {
                start: 0x7f1c2a000000,
                end: 0x7f1c2a1b0000,
                offset: 0x28000,
                path: "/usr/lib/x86_64-linux-gnu/libc.so.6",
            })
        );
        let spaces = "1000-2000 r-xp 00000000 08:01 1 /tmp/a dir/lib x.so";
        assert_eq!(
            parse_maps_line(spaces).map(|e| e.path),
            Some("/tmp/a dir/lib x.so")
        );
        let vdso = "7ffd1000-7ffd3000 r-xp 00000000 00:00 0                          [vdso]";
        assert_eq!(parse_maps_line(vdso).map(|e| e.path), Some("[vdso]"));
        assert_eq!(
            parse_maps_line("1000-2000 rw-p 00000000 08:01 1 /tmp/x"),
            None
        );
        assert_eq!(parse_maps_line("1000-2000 r-xp 00000000 00:00 0 "), None);
        assert_eq!(parse_maps_line("garbage"), None);
    }

    #[test]
    fn computes_load_bias_from_program_headers() {
        // lld-style PIE: text at file offset 0x1000 is linked at 0x2000.
        let info = ElfInfo {
            loads: vec![
                LoadSegment {
                    executable: false,
                    offset: 0,
                    vaddr: 0,
                    filesz: 0x1800,
                    align: 0x1000,
                },
                LoadSegment {
                    executable: true,
                    offset: 0x1000,
                    vaddr: 0x2000,
                    filesz: 0x5000,
                    align: 0x1000,
                },
            ],
            build_id: None,
        };
        let bias = info.bias(0x5555_0000_2000, 0x1000);
        assert_eq!(bias, 0x5555_0000_0000);
        // svma of a text address is its link-time address.
        assert_eq!((0x5555_0000_2345u64).wrapping_sub(bias), 0x2345);

        // The test binary itself: its real bias maps our function to an SVMA
        // inside a PT_LOAD segment.
        let exe = std::env::current_exe().expect("exe");
        let info = elf_info_of(exe.to_str().expect("utf-8")).expect("ELF info");
        assert!(!info.loads.is_empty());
        assert!(
            info.build_id.as_ref().is_none_or(|b| b.len() >= 16
                && b.chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())),
            "{:?}",
            info.build_id
        );
        // The same id as the `.note.gnu.build-id` section, read another way.
        use object::Object;
        let bytes = std::fs::read(&exe).expect("read exe");
        #[cfg(target_pointer_width = "64")]
        type NativeElf<'a> = object::read::elf::ElfFile64<'a, object::Endianness>;
        #[cfg(target_pointer_width = "32")]
        type NativeElf<'a> = object::read::elf::ElfFile32<'a, object::Endianness>;
        let file = NativeElf::parse(&*bytes).expect("ELF");
        let from_section = file
            .build_id()
            .expect("notes")
            .map(|id| id.iter().map(|b| format!("{b:02x}")).collect::<String>());
        assert_eq!(info.build_id.as_deref(), from_section.as_deref());
    }

    #[test]
    fn reads_gnu_build_id_notes() {
        use object::elf::FileHeader64;
        use object::read::elf::NoteIterator;
        use object::Endianness;
        type Notes<'a> = NoteIterator<'a, FileHeader64<Endianness>>;
        let le = Endianness::Little;
        let mut notes = Vec::new();
        notes.extend_from_slice(&4u32.to_le_bytes());
        notes.extend_from_slice(&4u32.to_le_bytes());
        notes.extend_from_slice(&1u32.to_le_bytes()); // some other note
        notes.extend_from_slice(b"XYZ\0");
        notes.extend_from_slice(&[1, 2, 3, 4]);
        notes.extend_from_slice(&4u32.to_le_bytes());
        notes.extend_from_slice(&3u32.to_le_bytes());
        notes.extend_from_slice(&3u32.to_le_bytes()); // NT_GNU_BUILD_ID
        notes.extend_from_slice(b"GNU\0");
        notes.extend_from_slice(&[0xab, 0x0c, 0xff, 0]);
        let build_id = |bytes: &[u8]| gnu_build_id(le, Notes::new(le, 4, bytes).expect("align"));
        assert_eq!(build_id(&notes).as_deref(), Some("ab0cff"));
        // Truncated in the build-id note: none, and no panic.
        assert_eq!(build_id(&notes[..30]), None);
        // A build-id type under another owner name is not a build id.
        let mut other = notes.clone();
        other[32..35].copy_from_slice(b"GNX");
        assert_eq!(build_id(&other), None);
    }

    /// A 64-bit little-endian ELF header, two program headers (an
    /// executable `PT_LOAD` and a `PT_NOTE`) and the build-id note.
    fn tiny_elf(class: u8) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = class;
        f[5] = 1; // little endian
        f[6] = 1; // EV_CURRENT
        f[16..18].copy_from_slice(&3u16.to_le_bytes()); // ET_DYN
        f[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        f[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        f[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        f[56..58].copy_from_slice(&2u16.to_le_bytes()); // e_phnum
        let phdr = |p_type: u32, flags: u32, offset: u64, vaddr: u64, size: u64, align: u64| {
            let mut ph = Vec::with_capacity(56);
            ph.extend_from_slice(&p_type.to_le_bytes());
            ph.extend_from_slice(&flags.to_le_bytes());
            for v in [offset, vaddr, vaddr, size, size, align] {
                ph.extend_from_slice(&v.to_le_bytes());
            }
            ph
        };
        let note_at = 64 + 2 * 56;
        f.extend(phdr(1, 5, 0x1000, 0x2000, 0x3000, 0x1000)); // PT_LOAD, R+X
        f.extend(phdr(4, 4, note_at as u64, note_at as u64, 24, 4)); // PT_NOTE
        f.extend_from_slice(&4u32.to_le_bytes());
        f.extend_from_slice(&8u32.to_le_bytes());
        f.extend_from_slice(&3u32.to_le_bytes());
        f.extend_from_slice(b"GNU\0");
        f.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0x00, 0x11, 0x22, 0x33]);
        f
    }

    #[test]
    fn reads_program_headers_and_build_id_of_an_elf_file() {
        let dir = std::env::temp_dir().join(format!("tp-symbolize-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("tiny.so");
        let path_str = path.to_str().expect("utf-8");

        std::fs::write(&path, tiny_elf(2)).expect("write");
        let info = elf_info_of(path_str).expect("ELF info");
        assert_eq!(
            info.loads,
            [LoadSegment {
                executable: true,
                offset: 0x1000,
                vaddr: 0x2000,
                filesz: 0x3000,
                align: 0x1000,
            }]
        );
        assert_eq!(info.build_id.as_deref(), Some("deadbeef00112233"));

        // Not an ELF file, an unknown ELF class, a missing file: no info.
        std::fs::write(&path, b"#!/bin/sh\n").expect("write");
        assert!(elf_info_of(path_str).is_none());
        std::fs::write(&path, tiny_elf(3)).expect("write");
        assert!(elf_info_of(path_str).is_none());
        std::fs::remove_dir_all(&dir).expect("clean up");
        assert!(elf_info_of(path_str).is_none());
    }
}
