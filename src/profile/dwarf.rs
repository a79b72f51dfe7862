//! DWARF read from the object file a few pages at a time, one compilation
//! unit at a time.
//!
//! `addr2line::Loader` maps the whole file and, before its first answer,
//! walks every compilation unit: it parses each unit's abbreviations and
//! line-program header and keeps them, and it reads the whole symbol table.
//! For a 34 MB release binary that is some 14 MiB of heap plus 27 MiB of
//! file pages resident while an interval is symbolized, whatever the
//! interval's addresses were.
//!
//! [`DebugInfo`] needs far less:
//! - a unit index built once from `.debug_aranges` (address range → unit
//!   offset; 16 bytes a range), kept for good;
//! - the offsets of the units in `.debug_info` (4 bytes a unit), read once;
//! - for an address, an `addr2line::Context` that parses the unit that
//!   holds it and the units that unit refers to (`DW_FORM_ref_addr`:
//!   ThinLTO, on by default in release builds, leaves inlined functions'
//!   names in other units), and no other: every other run of units is
//!   shown to `addr2line` as one type unit, which it skips
//!   ([`DebugInfo::make_context`]);
//! - every section read through [`FileReader`], which reads the file with
//!   `pread` in [`CHUNK`]-byte pieces on first touch and keeps them in a
//!   [`ChunkStore`]: only the bytes a lookup touches are ever in memory, and
//!   nothing is mapped.
//!
//! The chunks are a cache of at most [`CHUNK_BYTES_LIMIT`] bytes, and at
//! most [`UNIT_CONTEXTS`] unit contexts are kept; both are dropped by
//! [`DebugInfo::release`] (when the symbolizer lets the object's debug info
//! go at the end of an interval). So memory stays bounded
//! whatever the binary's size. Without `.debug_aranges` the index is built
//! by reading each unit's ranges from its first entry, once, through the
//! same bounded cache. Objects whose debug sections are compressed, or
//! whose DWARF is split off into `.dwo`/`.dwp` files (`split-debuginfo`),
//! are not handled here ([`Unsupported::Other`]) and the symbolizer falls
//! back to `addr2line::Loader`, which inflates the first and finds the
//! second.

use addr2line::gimli::{self, RunTimeEndian};
use object::read::elf::{FileHeader, SectionHeader};
use object::{Endianness, FileKind, ReadCache};
use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

mod reader;
use reader::{ChunkStore, FileReader, Overlay, TYPE_UNIT_HEADER};

/// Bytes read from the file at a time.
pub(crate) const CHUNK: u64 = 4096;

/// Chunk bytes kept: past it, the chunks read so far are dropped (and
/// read again when needed).
pub(crate) const CHUNK_BYTES_LIMIT: usize = 4 << 20;

/// Unit contexts kept at once (the oldest is dropped past it). The
/// symbolizer looks an interval's new addresses up in address order
/// (`Symbolizer::prefetch`), so one unit's addresses come together, and it
/// keeps the contexts of the objects used last from one interval to the
/// next, so a later interval's new addresses in the same units parse
/// nothing again. More contexts cost heap: at 32, the soak's largest arena
/// was 25 MB; at 4, 12 MB. At 16 the demo's profiler threads held 2.2 % of
/// its samples after warm-up at a 2 s interval, against 3.5 % at 4
/// (BENCHMARKS.md).
pub(crate) const UNIT_CONTEXTS: usize = 16;

/// A DWARF section's place in the file.
#[derive(Clone, Copy, Debug)]
struct Section {
    offset: u64,
    size: u64,
}

/// Why [`DebugInfo::open`] did not take an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unsupported {
    /// No DWARF at all (or not an ELF file we can read): the symbol table
    /// is all there is.
    NoDwarf,
    /// DWARF this module does not read (compressed sections, split DWARF)
    /// or an ELF file it could not parse: `addr2line::Loader` may.
    Other,
}

/// One unit's `addr2line` context.
type UnitContext = addr2line::Context<FileReader>;

/// An object's DWARF, read a piece at a time. See the module docs.
pub(crate) struct DebugInfo {
    path: Arc<str>,
    endian: RunTimeEndian,
    sections: Vec<(&'static str, Section)>,
    /// `(start, length, unit offset in .debug_info)`, sorted by start.
    units: Vec<(u64, u32, u32)>,
    /// Offset of every unit in `.debug_info`, sorted; read on first need
    /// (4 bytes a unit), kept for good.
    unit_starts: Option<Vec<u32>>,
    store: Option<Arc<ChunkStore>>,
    /// Contexts of units looked into since the last release, oldest
    /// first.
    contexts: Vec<(u32, Option<UnitContext>)>,
}

impl fmt::Debug for DebugInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DebugInfo")
            .field("path", &self.path)
            .field("unit_ranges", &self.units.len())
            .field("contexts", &self.contexts.len())
            .finish()
    }
}

/// The DWARF sections a lookup may read, by `gimli::SectionId::name`.
const SECTIONS: [&str; 11] = [
    ".debug_abbrev",
    ".debug_addr",
    ".debug_aranges",
    ".debug_info",
    ".debug_line",
    ".debug_line_str",
    ".debug_ranges",
    ".debug_rnglists",
    ".debug_str",
    ".debug_str_offsets",
    ".debug_loclists",
];

impl DebugInfo {
    /// The debug info of the ELF file at `path`. Reads the section headers
    /// and the address ranges, nothing else.
    pub(crate) fn open(path: &Arc<str>) -> Result<DebugInfo, Unsupported> {
        let file = File::open(&**path).map_err(|_| Unsupported::NoDwarf)?;
        let data = ReadCache::new(file);
        let parsed = match FileKind::parse(&data) {
            Ok(FileKind::Elf32) => read_sections::<object::elf::FileHeader32<Endianness>>(&data),
            Ok(FileKind::Elf64) => read_sections::<object::elf::FileHeader64<Endianness>>(&data),
            _ => return Err(Unsupported::NoDwarf),
        };
        let (endian, sections) = parsed.ok_or(Unsupported::Other)?;
        if !sections.iter().any(|(n, _)| *n == ".debug_info") {
            return Err(Unsupported::NoDwarf);
        }
        let file = data.into_inner();
        let mut info = DebugInfo {
            path: path.clone(),
            endian,
            sections,
            units: Vec::new(),
            unit_starts: None,
            store: None,
            contexts: Vec::new(),
        };
        if info.is_split(&file) {
            return Err(Unsupported::Other);
        }
        info.units = info.read_unit_index(&file).ok_or(Unsupported::Other)?;
        Ok(info)
    }

    /// `true` if the first unit is a skeleton whose entries live in a
    /// `.dwo` or `.dwp` file (`split-debuginfo`): `addr2line::Loader`
    /// finds and reads those, this module does not.
    fn is_split(&self, file: &File) -> bool {
        let Ok(file) = file.try_clone() else {
            return false;
        };
        let store = ChunkStore::new(file);
        let Some(dwarf) = self.load(&store, None) else {
            return false;
        };
        let mut headers = dwarf.units();
        match headers.next() {
            Ok(Some(header)) => dwarf.unit(header).is_ok_and(|u| u.dwo_id.is_some()),
            _ => false,
        }
    }

    fn section(&self, name: &str) -> Option<Section> {
        self.sections
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, section)| section)
    }

    /// The unit index, `(start, length, unit offset)` sorted by start:
    /// from `.debug_aranges`, else from the units themselves.
    fn read_unit_index(&self, file: &File) -> Option<Vec<(u64, u32, u32)>> {
        let mut units = match self.section(".debug_aranges") {
            Some(aranges) => self.read_aranges(file, aranges)?,
            None => self.scan_units(file.try_clone().ok()?)?,
        };
        units.sort_unstable_by_key(|u| u.0);
        units.shrink_to_fit();
        (!units.is_empty()).then_some(units)
    }

    /// Every unit's address ranges, read from its first entry
    /// (`DW_AT_low_pc`/`DW_AT_high_pc` or `DW_AT_ranges`), one unit at a
    /// time through a bounded chunk cache.
    fn scan_units(&self, file: File) -> Option<Vec<(u64, u32, u32)>> {
        let store = ChunkStore::new(file);
        let dwarf = self.load(&store, None)?;
        let mut units = Vec::new();
        let mut headers = dwarf.units();
        while let Ok(Some(header)) = headers.next() {
            let Some(offset) = header
                .debug_info_offset()
                .and_then(|o| u32::try_from(o.0).ok())
            else {
                continue;
            };
            let Ok(unit) = dwarf.unit(header) else {
                continue;
            };
            let Ok(mut ranges) = dwarf.unit_ranges(&unit) else {
                continue;
            };
            while let Ok(Some(range)) = ranges.next() {
                if range.end > range.begin {
                    let length = u32::try_from(range.end - range.begin).unwrap_or(u32::MAX);
                    units.push((range.begin, length, offset));
                }
            }
        }
        Some(units)
    }

    /// The sections as readers through `store`; `.debug_info` only the
    /// unit at `unit` (with its size) if given, and no `.debug_aranges`
    /// (the unit's ranges come from its own first entry).
    fn load(
        &self,
        store: &Arc<ChunkStore>,
        unit: Option<(u32, u64)>,
    ) -> Option<gimli::Dwarf<FileReader>> {
        let info = self.section(".debug_info")?;
        gimli::Dwarf::load(|id| -> gimli::Result<FileReader> {
            let name = id.name();
            let (offset, size) = match (name, unit) {
                (".debug_info", Some((unit, size))) => (info.offset + u64::from(unit), size),
                (".debug_aranges", _) => (0, 0),
                _ => self.section(name).map_or((0, 0), |s| (s.offset, s.size)),
            };
            Ok(FileReader::new(store.clone(), offset, size, self.endian))
        })
        .ok()
    }

    /// `.debug_aranges` as `(start, length, unit offset)`.
    fn read_aranges(&self, file: &File, aranges: Section) -> Option<Vec<(u64, u32, u32)>> {
        let mut buf = vec![0u8; usize::try_from(aranges.size).ok()?];
        file.read_exact_at(&mut buf, aranges.offset).ok()?;
        let section = gimli::DebugAranges::new(&buf, self.endian);
        let mut units = Vec::new();
        let mut headers = section.headers();
        while let Ok(Some(header)) = headers.next() {
            let Ok(unit) = u32::try_from(header.debug_info_offset().0) else {
                continue;
            };
            let mut entries = header.entries();
            loop {
                match entries.next() {
                    Ok(Some(entry)) => {
                        if entry.length() == 0 {
                            continue;
                        }
                        let length = u32::try_from(entry.length()).unwrap_or(u32::MAX);
                        units.push((entry.address(), length, unit));
                    }
                    Ok(None) => break,
                    // An entry that overflows: skip the rest of this set.
                    Err(_) => break,
                }
            }
        }
        Some(units)
    }

    /// Unit offset of the unit whose ranges contain `svma`.
    fn unit_for(&self, svma: u64) -> Option<u32> {
        let i = self.units.partition_point(|u| u.0 <= svma).checked_sub(1)?;
        let (start, length, unit) = self.units[i];
        (svma - start < u64::from(length)).then_some(unit)
    }

    /// The frames `addr2line` finds at `svma`, innermost first, as
    /// `(function name, file, line)`; empty if no unit covers it.
    pub(crate) fn find_frames(&mut self, svma: u64) -> Vec<RawFrame> {
        let Some(unit) = self.unit_for(svma) else {
            return Vec::new();
        };
        match self.context(unit) {
            Some(context) => collect_frames(context, svma),
            None => Vec::new(),
        }
    }

    /// Drops the unit contexts and the chunks read; keeps the unit index.
    /// Returns `true` if anything was held.
    pub(crate) fn release(&mut self) -> bool {
        let held = self.store.is_some() || !self.contexts.is_empty();
        self.contexts = Vec::new();
        self.store = None;
        held
    }

    /// `true` while unit contexts or chunks are held.
    pub(crate) fn holds(&self) -> bool {
        self.store.is_some() || !self.contexts.is_empty()
    }

    /// Bytes of the file held right now.
    pub(crate) fn bytes_held(&self) -> usize {
        self.store
            .as_ref()
            .map_or(0, |s| s.bytes.load(Ordering::Relaxed))
    }

    /// The context of the unit at `unit`, made on first need.
    fn context(&mut self, unit: u32) -> Option<&UnitContext> {
        if let Some(i) = self.contexts.iter().position(|(u, _)| *u == unit) {
            return self.contexts[i].1.as_ref();
        }
        if self.contexts.len() >= UNIT_CONTEXTS {
            self.contexts.remove(0);
        }
        let context = self.make_context(unit);
        self.contexts.push((unit, context));
        self.contexts.last().and_then(|(_, c)| c.as_ref())
    }

    /// A context that parses the unit at `unit` and the units it refers
    /// to (`DW_FORM_ref_addr`: with link-time optimization, inlined
    /// functions' names are often in another unit), and no other.
    ///
    /// `addr2line` parses every unit of the `.debug_info` it is given, so
    /// it is given the whole section (unit offsets must stay what the
    /// references say) with every run of units it does not need made to
    /// look like one DWARF 5 type unit: a 24-byte header laid over the
    /// run's first bytes ([`Overlay`]). `addr2line` skips type units
    /// without reading further. A reference from a referred-to unit into
    /// a third one is not followed: that frame's name comes out missing
    /// and the symbolizer names the function from the symbol table.
    fn make_context(&mut self, unit: u32) -> Option<UnitContext> {
        if self.store.is_none() {
            self.store = Some(ChunkStore::new(File::open(&*self.path).ok()?));
        }
        let store = self.store.clone()?;
        let info = self.section(".debug_info")?;
        let plain = self.load(&store, None)?;
        let starts = match self.unit_starts.take() {
            Some(starts) => starts,
            None => unit_starts(&store.file, info, self.endian)?,
        };
        let mut needed = vec![unit];
        for target in references(&plain, unit) {
            let i = starts.partition_point(|&s| u64::from(s) <= target);
            if let Some(&owner) = i.checked_sub(1).and_then(|i| starts.get(i)) {
                needed.push(owner);
            }
        }
        needed.sort_unstable();
        needed.dedup();
        let overlay = self.overlay(&starts, &needed, info.size);
        self.unit_starts = Some(starts);
        let mut dwarf = plain;
        dwarf.debug_info = gimli::DebugInfo::from(
            FileReader::new(store, info.offset, info.size, self.endian)
                .with_overlay(Arc::new(overlay?)),
        );
        addr2line::Context::from_dwarf(dwarf).ok()
    }

    /// Type-unit headers over every run of units not in `needed` (sorted),
    /// at file positions. A run too short for a header is left as it is
    /// (and parsed).
    fn overlay(&self, starts: &[u32], needed: &[u32], size: u64) -> Option<Overlay> {
        let info = self.section(".debug_info")?;
        let mut overlay = Vec::new();
        let mut run_start: Option<u64> = None;
        let close = |from: u64, to: u64, overlay: &mut Overlay| {
            if to - from >= TYPE_UNIT_HEADER as u64 {
                if let Some(header) = type_unit_header(to - from, self.endian) {
                    overlay.push((info.offset + from, header));
                }
            }
        };
        for &start in starts {
            let start = u64::from(start);
            let is_needed = needed.binary_search(&(start as u32)).is_ok();
            match (is_needed, run_start) {
                (true, Some(from)) => {
                    close(from, start, &mut overlay);
                    run_start = None;
                }
                (false, None) => run_start = Some(start),
                _ => {}
            }
        }
        if let Some(from) = run_start {
            close(from, size, &mut overlay);
        }
        Some(overlay)
    }
}

/// A 32-bit DWARF 5 type unit header for a unit of `total` bytes, its
/// length field included; `None` if that does not fit 32-bit DWARF.
fn type_unit_header(total: u64, endian: RunTimeEndian) -> Option<[u8; TYPE_UNIT_HEADER]> {
    let length = u32::try_from(total.checked_sub(4)?).ok()?;
    if length >= 0xffff_fff0 {
        return None;
    }
    let mut header = [0u8; TYPE_UNIT_HEADER];
    let big = endian == RunTimeEndian::Big;
    let put32 = |v: u32| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let put16 = |v: u16| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    header[0..4].copy_from_slice(&put32(length));
    header[4..6].copy_from_slice(&put16(5)); // version
    header[6] = gimli::DW_UT_type.0;
    header[7] = 8; // address size
                   // abbreviation offset 0 (never read), type signature 0, and the type
                   // DIE's offset: just past the header.
    header[20..24].copy_from_slice(&put32(TYPE_UNIT_HEADER as u32));
    Some(header)
}

/// Offsets of the units in `.debug_info` (at `info` in `file`), from
/// their length fields: one small `pread` a unit, nothing kept but the
/// offsets.
fn unit_starts(file: &File, info: Section, endian: RunTimeEndian) -> Option<Vec<u32>> {
    let read32 = |at: u64| -> Option<u32> {
        let mut b = [0u8; 4];
        file.read_exact_at(&mut b, info.offset + at).ok()?;
        Some(if endian == RunTimeEndian::Big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    };
    let mut starts = Vec::new();
    let mut at = 0u64;
    while at + 4 <= info.size {
        let length = read32(at)?;
        let next = match length {
            // 64-bit DWARF: an 8-byte length follows.
            0xffff_ffff => {
                let mut b = [0u8; 8];
                file.read_exact_at(&mut b, info.offset + at + 4).ok()?;
                let length = if endian == RunTimeEndian::Big {
                    u64::from_be_bytes(b)
                } else {
                    u64::from_le_bytes(b)
                };
                at.checked_add(12)?.checked_add(length)?
            }
            0xffff_fff0.. => return None,
            _ => at + 4 + u64::from(length),
        };
        starts.push(u32::try_from(at).ok()?);
        at = next;
    }
    starts.shrink_to_fit();
    Some(starts)
}

/// The `.debug_info` offsets that entries of the unit at `unit` refer to
/// with `DW_FORM_ref_addr`, outside the unit itself.
fn references(dwarf: &gimli::Dwarf<FileReader>, unit: u32) -> Vec<u64> {
    let mut targets = Vec::new();
    let Ok(header) = dwarf
        .debug_info
        .header_from_offset(gimli::DebugInfoOffset(unit as usize))
    else {
        return targets;
    };
    let end = u64::from(unit) + header.length_including_self() as u64;
    let Ok(unit_data) = dwarf.unit(header) else {
        return targets;
    };
    let Ok(mut entries) = unit_data.entries_raw(None) else {
        return targets;
    };
    while !entries.is_empty() {
        let Ok(abbrev) = entries.read_abbreviation() else {
            break;
        };
        let Some(abbrev) = abbrev else {
            continue;
        };
        let specs = abbrev.attributes();
        // Most entries have no such reference: skipped by their forms'
        // sizes, nothing decoded.
        if !specs.iter().any(|s| may_refer_across(s.form())) {
            if entries.skip_attributes(specs).is_err() {
                return targets;
            }
            continue;
        }
        for spec in specs {
            if !may_refer_across(spec.form()) {
                if entries.skip_attributes(std::slice::from_ref(spec)).is_err() {
                    return targets;
                }
                continue;
            }
            let Ok(attr) = entries.read_attribute(*spec) else {
                return targets;
            };
            if let gimli::AttributeValue::DebugInfoRef(target) = attr.value() {
                let target = target.0 as u64;
                if target < u64::from(unit) || target >= end {
                    targets.push(target);
                }
            }
        }
    }
    targets.sort_unstable();
    targets.dedup();
    targets
}

/// `true` for an attribute form that may be a `DW_FORM_ref_addr` (that
/// form, or one given in the entry itself).
fn may_refer_across(form: gimli::DwForm) -> bool {
    form == gimli::DW_FORM_ref_addr || form == gimli::DW_FORM_indirect
}

/// One frame as the symbolizer takes it: demangled function name, file,
/// line (0 when unknown).
pub(crate) type RawFrame = (Option<String>, Option<String>, u32);

/// The frames at `svma` in `context`, innermost first.
fn collect_frames(context: &UnitContext, svma: u64) -> Vec<RawFrame> {
    raw_frames(context.find_frames(svma).skip_all_loads())
}

/// The frames an `addr2line` lookup found, innermost first; none if it
/// failed.
pub(crate) fn raw_frames<R: gimli::Reader>(
    found: Result<addr2line::FrameIter<'_, R>, gimli::Error>,
) -> Vec<RawFrame> {
    let mut raw = Vec::new();
    if let Ok(mut frames) = found {
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
    raw
}

/// The file's endianness and its uncompressed DWARF sections; `None` if a
/// DWARF section is compressed (the caller falls back to
/// `addr2line::Loader`, which can inflate it).
fn read_sections<Elf: FileHeader<Endian = Endianness>>(
    data: &ReadCache<File>,
) -> Option<(RunTimeEndian, Vec<(&'static str, Section)>)> {
    use object::elf::{SHF_COMPRESSED, SHT_NOBITS};
    let header = Elf::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let sections = header.sections(endian, data).ok()?;
    let mut found = Vec::new();
    for section in sections.iter() {
        let Ok(name) = sections.section_name(endian, section) else {
            continue;
        };
        if name.starts_with(b".zdebug") {
            return None;
        }
        let Some(&known) = SECTIONS.iter().find(|n| n.as_bytes() == name) else {
            continue;
        };
        if section.sh_type(endian) == SHT_NOBITS {
            continue;
        }
        let flags: u64 = section.sh_flags(endian).into();
        if flags & u64::from(SHF_COMPRESSED) != 0 {
            return None;
        }
        found.push((
            known,
            Section {
                offset: section.sh_offset(endian).into(),
                size: section.sh_size(endian).into(),
            },
        ));
    }
    let endian = if endian == Endianness::Big {
        RunTimeEndian::Big
    } else {
        RunTimeEndian::Little
    };
    Some((endian, found))
}

#[cfg(test)]
mod tests;
