//! What the symbolizer reads from ELF files: the program headers (for the
//! load bias), the GNU build id, and the function symbols.

use object::elf::{
    FileHeader32, FileHeader64, ELF_NOTE_GNU, NT_GNU_BUILD_ID, PF_X, PT_LOAD, PT_NOTE,
};
use object::read::elf::{FileHeader, NoteIterator, ProgramHeader};
use object::{Endianness, FileKind, ReadCache};
use std::fs::File;
use std::sync::Arc;

/// An object's function symbols (`.symtab`, else `.dynsym`): the
/// names of the profiler's own frames, without reading debug info.
/// Compact, so it is kept for good (16 bytes a function); the names
/// stay in the file and are read when a function is first named.
#[derive(Default)]
pub(super) struct SymbolTable {
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
    pub(super) fn read(path: &str) -> Option<SymbolTable> {
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
    pub(super) fn find(&self, svma: u64) -> Option<(u64, u32)> {
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
    pub(super) fn name(&self, path: &str, offset: u32) -> Option<String> {
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
pub(super) fn read_elf_info(path: &str) -> Option<ElfInfo> {
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

/// The `.gnu_debuglink` of the ELF file at `path`: the separate debug
/// file's name and the CRC-32 of its contents.
pub(super) fn debuglink(path: &str) -> Option<(String, u32)> {
    let file = File::open(path).ok()?;
    let data = ReadCache::new(file);
    match FileKind::parse(&data).ok()? {
        FileKind::Elf32 => debuglink_of::<FileHeader32<Endianness>>(&data),
        FileKind::Elf64 => debuglink_of::<FileHeader64<Endianness>>(&data),
        _ => None,
    }
}

fn debuglink_of<Elf: FileHeader<Endian = Endianness>>(
    data: &ReadCache<File>,
) -> Option<(String, u32)> {
    use object::read::elf::SectionHeader;
    use object::Endian;
    let header = Elf::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let sections = header.sections(endian, data).ok()?;
    let (_, section) = sections.section_by_name(endian, b".gnu_debuglink")?;
    let bytes = section.data(endian, data).ok()?;
    let nul = bytes.iter().position(|&b| b == 0)?;
    let name = std::str::from_utf8(&bytes[..nul]).ok()?;
    if name.is_empty() || name.contains('/') {
        return None;
    }
    let at = (nul + 4) & !3;
    let crc: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    let crc = if endian.is_big_endian() {
        u32::from_be_bytes(crc)
    } else {
        u32::from_le_bytes(crc)
    };
    Some((name.to_owned(), crc))
}

/// CRC-32 (the `.gnu_debuglink` one) of the file at `path`.
pub(super) fn file_crc32(path: &std::path::Path) -> Option<u32> {
    use std::io::Read;
    let mut file = File::open(path).ok()?;
    let mut crc = flate2::Crc::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Some(crc.sum()),
            Ok(n) => crc.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}
