//! Instruction address → function name, source file and line, for code in
//! this process.
//!
//! On Linux, [`Symbolizer`] reads `/proc/self/maps` to find the loaded object
//! (executable or shared library) that contains an address, converts the
//! runtime address (AVMA) to the object's own address (SVMA) with the ELF
//! program headers, and asks `addr2line` for the frames at that address,
//! inlined frames included (innermost first). Names are demangled Rust names
//! without the hash (`{:#}`).
//!
//! With `debug = "line-tables-only"` DWARF only has bare function names
//! (`poll`, no path); the outermost frame at an address, which owns the
//! symbol, then takes its qualified name from the symbol table instead, while
//! inlined frames keep the bare DWARF name.
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
//! Elsewhere than Linux the symbolizer is a stub that only names addresses in
//! hex.

use std::sync::Arc;

/// Cached addresses kept before the cache is cleared.
#[cfg_attr(
    not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64"),
        not(tracing_pyroscope_unsupported)
    )),
    allow(dead_code)
)]
pub(crate) const CACHE_LIMIT: usize = 100_000;

/// One source-level frame at an address. An address has several when code
/// was inlined: innermost first, the function that really owns the machine
/// code last (pprof's `Location.line` order).
#[derive(Clone, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug, PartialEq, Eq)]
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
#[derive(Debug)]
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

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(tracing_pyroscope_unsupported)
))]
pub(crate) use linux::Symbolizer;

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(tracing_pyroscope_unsupported)
)))]
pub(crate) use stub::Symbolizer;

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(tracing_pyroscope_unsupported)
)))]
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
    }
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(tracing_pyroscope_unsupported)
))]
mod linux {
    use super::{hex_frame, ObjectMapping, Resolved, SymbolFrame, CACHE_LIMIT};
    use std::borrow::Cow;
    use std::collections::{HashMap, HashSet};
    use std::fmt;
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

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
        /// `None` until first needed; `Some(None)` if it cannot be loaded.
        loader: Option<Option<addr2line::Loader>>,
        elf: Option<ElfInfo>,
    }

    /// Maps addresses of this process to frames. See the module docs.
    pub(crate) struct Symbolizer {
        /// Sorted by start address, non-overlapping.
        ranges: Vec<Range>,
        objects: Vec<ObjectFile>,
        object_index: HashMap<Arc<str>, usize>,
        last_maps_read: Option<Instant>,
        cache: HashMap<u64, Arc<Resolved>>,
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
            let resolved = Arc::new(self.resolve_in(range, probe));
            if self.cache.len() >= CACHE_LIMIT {
                self.cache.clear();
                self.names.clear();
            }
            self.cache.insert(probe, resolved.clone());
            resolved
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
                loader: None,
                elf,
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
            if file.loader.is_none() {
                file.loader = Some(addr2line::Loader::new(&*file.path).ok());
            }
            // Raw strings first, interned afterwards (the loader borrows self).
            let mut raw: Vec<(Option<String>, Option<String>, u32)> = Vec::new();
            let mut symbol: Option<String> = None;
            if let Some(Some(loader)) = &self.objects[object].loader {
                if let Ok(mut frames) = loader.find_frames(svma) {
                    while let Ok(Some(frame)) = frames.next() {
                        let name = frame
                            .function
                            .as_ref()
                            .and_then(|f| f.demangle().ok())
                            .map(Cow::into_owned);
                        let (file, line) = match &frame.location {
                            Some(loc) => (loc.file.map(str::to_owned), loc.line.unwrap_or(0)),
                            None => (None, 0),
                        };
                        raw.push((name, file, line));
                    }
                }
                // With `debug = "line-tables-only"` DWARF has bare names
                // (`run`, no path): the symbol table's is better for the
                // outermost frame, which owns the symbol.
                let bare = |name: &Option<String>| name.as_ref().is_none_or(|n| !n.contains("::"));
                if raw.last().is_none_or(|(name, _, _)| bare(name))
                    || raw.iter().any(|(name, _, _)| name.is_none())
                {
                    symbol = loader
                        .find_symbol(svma)
                        .map(|s| addr2line::demangle_auto(Cow::Borrowed(s), None).into_owned());
                }
            }
            let object_path = self.objects[object].path.clone();
            let mut frames = Vec::with_capacity(raw.len().max(1));
            let outermost = raw.len().saturating_sub(1);
            for (i, (name, file, line)) in raw.into_iter().enumerate() {
                if name.is_none() && i != outermost {
                    continue; // a nameless inlined frame: the outer one says enough
                }
                let bare = name.as_deref().is_none_or(|n| !n.contains("::"));
                let name = if i == outermost && bare && symbol.is_some() {
                    symbol.as_deref()
                } else {
                    name.as_deref().or(symbol.as_deref())
                };
                let name = match name {
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
                match symbol {
                    Some(s) if !s.is_empty() => {
                        let name = self.intern(&s);
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

    const PT_LOAD: u32 = 1;
    const PT_NOTE: u32 = 4;
    const PF_X: u32 = 1;
    const NT_GNU_BUILD_ID: u32 = 3;
    /// Largest note segment read when looking for the build id.
    const MAX_NOTES: u64 = 64 * 1024;

    fn read_elf_info(path: &str) -> Option<ElfInfo> {
        let file = File::open(path).ok()?;
        let read = |offset: u64, len: usize| -> Option<Vec<u8>> {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset).ok()?;
            Some(buf)
        };
        let header = read(0, 64)?;
        let elf = Elf::from_ident(&header)?;
        let (phoff, phentsize, phnum) = if elf.is64 {
            (
                elf.u64(&header, 32)?,
                elf.u16(&header, 54)?,
                elf.u16(&header, 56)?,
            )
        } else {
            (
                u64::from(elf.u32(&header, 28)?),
                elf.u16(&header, 42)?,
                elf.u16(&header, 44)?,
            )
        };
        let expected = if elf.is64 { 56 } else { 32 };
        if usize::from(phentsize) != expected || phnum == 0 || phnum == 0xffff {
            return None;
        }
        let table = read(phoff, usize::from(phentsize) * usize::from(phnum))?;
        let mut info = ElfInfo::default();
        for ph in table.chunks_exact(expected) {
            let (p_type, flags, offset, vaddr, filesz, align) = if elf.is64 {
                (
                    elf.u32(ph, 0)?,
                    elf.u32(ph, 4)?,
                    elf.u64(ph, 8)?,
                    elf.u64(ph, 16)?,
                    elf.u64(ph, 32)?,
                    elf.u64(ph, 48)?,
                )
            } else {
                (
                    elf.u32(ph, 0)?,
                    elf.u32(ph, 24)?,
                    u64::from(elf.u32(ph, 4)?),
                    u64::from(elf.u32(ph, 8)?),
                    u64::from(elf.u32(ph, 16)?),
                    u64::from(elf.u32(ph, 28)?),
                )
            };
            match p_type {
                PT_LOAD => info.loads.push(LoadSegment {
                    executable: flags & PF_X != 0,
                    offset,
                    vaddr,
                    filesz,
                    align,
                }),
                PT_NOTE if info.build_id.is_none() && filesz <= MAX_NOTES => {
                    if let Some(notes) = read(offset, filesz as usize) {
                        info.build_id = elf.build_id(&notes, align);
                    }
                }
                _ => {}
            }
        }
        Some(info)
    }

    /// ELF class and byte order, and field readers for them.
    #[derive(Clone, Copy)]
    pub(super) struct Elf {
        is64: bool,
        little: bool,
    }

    impl Elf {
        pub(super) fn from_ident(header: &[u8]) -> Option<Elf> {
            if header.get(..4)? != b"\x7fELF" {
                return None;
            }
            let is64 = match header.get(4)? {
                1 => false,
                2 => true,
                _ => return None,
            };
            let little = match header.get(5)? {
                1 => true,
                2 => false,
                _ => return None,
            };
            Some(Elf { is64, little })
        }

        fn bytes<const N: usize>(data: &[u8], at: usize) -> Option<[u8; N]> {
            data.get(at..at.checked_add(N)?)?.try_into().ok()
        }

        fn u16(self, data: &[u8], at: usize) -> Option<u16> {
            let b = Self::bytes::<2>(data, at)?;
            Some(if self.little {
                u16::from_le_bytes(b)
            } else {
                u16::from_be_bytes(b)
            })
        }

        fn u32(self, data: &[u8], at: usize) -> Option<u32> {
            let b = Self::bytes::<4>(data, at)?;
            Some(if self.little {
                u32::from_le_bytes(b)
            } else {
                u32::from_be_bytes(b)
            })
        }

        fn u64(self, data: &[u8], at: usize) -> Option<u64> {
            let b = Self::bytes::<8>(data, at)?;
            Some(if self.little {
                u64::from_le_bytes(b)
            } else {
                u64::from_be_bytes(b)
            })
        }

        /// The GNU build id among `notes` (a `PT_NOTE` segment), lowercase hex.
        pub(super) fn build_id(self, notes: &[u8], align: u64) -> Option<Arc<str>> {
            let align = if align == 8 { 8 } else { 4 };
            let pad = |n: usize| n.checked_add(align - 1).map(|v| v & !(align - 1));
            let mut at = 0usize;
            while at.checked_add(12)? <= notes.len() {
                let namesz = self.u32(notes, at)? as usize;
                let descsz = self.u32(notes, at + 4)? as usize;
                let kind = self.u32(notes, at + 8)?;
                let name_at = at + 12;
                let desc_at = name_at.checked_add(pad(namesz)?)?;
                let next = desc_at.checked_add(pad(descsz)?)?;
                let name = notes.get(name_at..name_at.checked_add(namesz)?)?;
                let desc = notes.get(desc_at..desc_at.checked_add(descsz)?)?;
                if kind == NT_GNU_BUILD_ID && name == b"GNU\0" && !desc.is_empty() {
                    let hex: String = desc.iter().map(|b| format!("{b:02x}")).collect();
                    return Some(Arc::from(hex));
                }
                at = next;
            }
            None
        }
    }

    #[cfg(test)]
    pub(super) fn elf_info_of(path: &str) -> Option<ElfInfo> {
        read_elf_info(path)
    }
}

#[cfg(all(
    test,
    all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64"),
        not(tracing_pyroscope_unsupported)
    )
))]
mod tests {
    use super::linux::{elf_info_of, parse_maps_line, Elf, ElfInfo, LoadSegment, MapsEntry};
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

        // A return address just after the function's start is looked up at -1.
        assert_eq!(lookup_address(addr + 1, true), addr);
        assert_eq!(lookup_address(addr, false), addr);
        assert_eq!(lookup_address(0, true), 0);
    }

    #[test]
    fn reports_inlined_frames_innermost_first() {
        assert_ne!(outer_function_with_inlining(5), 0);
        let start = outer_function_with_inlining as *const () as usize as u64;
        let mut sym = Symbolizer::new();
        let is_helper = |f: &SymbolFrame| &*f.name == "inlined_helper_for_symbolizer";
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
    }

    #[test]
    fn reads_gnu_build_id_notes() {
        let elf = Elf::from_ident(b"\x7fELF\x02\x01\x01\0").expect("ident");
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
        assert_eq!(elf.build_id(&notes, 4).as_deref(), Some("ab0cff"));
        assert_eq!(elf.build_id(&notes[..30], 4), None);
        assert!(Elf::from_ident(b"\x7fELF\x03\x01").is_none());
    }
}
