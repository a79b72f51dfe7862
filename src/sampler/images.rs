//! The loaded images as the dynamic loader knows them, for the symbolizer:
//! each object's load bias, the addresses of its executable segments and
//! its GNU build id, read from the `PT_NOTE` in memory (not from whatever
//! file is at its path now). Collector thread only, never the signal
//! handler: it allocates.

use crate::profile::LoadedImage;
use std::ops::Range;

/// Largest note segment read.
const MAX_NOTES: u64 = 64 * 1024;

/// Every object `dl_iterate_phdr` lists (the vdso included).
pub(crate) fn loaded_images() -> Vec<LoadedImage> {
    unsafe extern "C" fn callback(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is the `&mut Vec` passed below; `info` is valid for
        // the duration of the callback as documented by dl_iterate_phdr.
        let (out, info) = unsafe { (&mut *(data as *mut Vec<LoadedImage>), &*info) };
        let phdrs: &[libc::Elf64_Phdr] = if info.dlpi_phdr.is_null() {
            &[]
        } else {
            // SAFETY: the loader provides `dlpi_phnum` program headers at `dlpi_phdr`.
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) }
        };
        let bias = info.dlpi_addr;
        let loads: Vec<(Range<u64>, bool)> = phdrs
            .iter()
            .filter(|ph| ph.p_type == libc::PT_LOAD)
            .map(|ph| {
                let range = ph.p_vaddr..ph.p_vaddr.saturating_add(ph.p_memsz);
                (range, ph.p_flags & libc::PF_X != 0)
            })
            .collect();
        let mut build_id = None;
        for ph in phdrs.iter().filter(|ph| ph.p_type == libc::PT_NOTE) {
            let notes = ph.p_vaddr..ph.p_vaddr.saturating_add(ph.p_filesz);
            let inside = loads
                .iter()
                .any(|(l, _)| l.start <= notes.start && notes.end <= l.end);
            if !inside || ph.p_filesz > MAX_NOTES {
                continue;
            }
            let Ok(len) = usize::try_from(ph.p_filesz) else {
                continue;
            };
            // SAFETY: the note segment lies inside a PT_LOAD segment of an
            // object the loader keeps mapped while its lock is held (during
            // this callback; dlclose unmaps under the same lock).
            let bytes = unsafe {
                std::slice::from_raw_parts(notes.start.wrapping_add(bias) as *const u8, len)
            };
            build_id = gnu_build_id(bytes, ph.p_align);
            if build_id.is_some() {
                break;
            }
        }
        let text = loads
            .iter()
            .filter(|(_, exec)| *exec)
            .map(|(r, _)| r.start.wrapping_add(bias)..r.end.wrapping_add(bias))
            .collect();
        out.push(LoadedImage {
            bias,
            text,
            build_id,
        });
        0
    }
    let mut out: Vec<LoadedImage> = Vec::new();
    // SAFETY: the callback only reads the loader-provided structures and the
    // mapped notes they describe, and writes into `out`, which outlives the
    // call.
    unsafe {
        libc::dl_iterate_phdr(
            Some(callback),
            &mut out as *mut Vec<LoadedImage> as *mut libc::c_void,
        );
    }
    out
}

/// The GNU build id (`NT_GNU_BUILD_ID`, owner `GNU`) among the notes in
/// `bytes` (native endian, entries aligned to `align`, 4 or 8).
fn gnu_build_id(bytes: &[u8], align: u64) -> Option<Vec<u8>> {
    let align = if align == 8 { 8 } else { 4 };
    let pad = |n: usize| n.checked_add(align - 1).map(|n| n & !(align - 1));
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let mut at = 0usize;
    while at + 12 <= bytes.len() {
        let namesz = word(at)? as usize;
        let descsz = word(at + 4)? as usize;
        let kind = word(at + 8)?;
        let name_at = at + 12;
        let desc_at = name_at.checked_add(pad(namesz)?)?;
        let next = desc_at.checked_add(pad(descsz)?)?;
        let name = bytes.get(name_at..name_at.checked_add(namesz)?)?;
        let desc = bytes.get(desc_at..desc_at.checked_add(descsz)?)?;
        if kind == 3 && name == b"GNU\0" && !desc.is_empty() {
            return Some(desc.to_vec());
        }
        at = next;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_binary_has_its_build_id_in_memory() {
        let here = the_test_binary_has_its_build_id_in_memory as *const () as u64;
        let images = loaded_images();
        let own = images
            .iter()
            .find(|i| i.text.iter().any(|r| r.contains(&here)))
            .expect("the test binary is a loaded image");
        // The same id the file's `.note.gnu.build-id` section holds.
        use object::Object;
        let bytes = std::fs::read(std::env::current_exe().expect("exe")).expect("read exe");
        let file = object::File::parse(&*bytes).expect("ELF");
        let from_file = file.build_id().expect("notes").map(<[u8]>::to_vec);
        assert_eq!(own.build_id, from_file);
    }

    #[test]
    fn finds_the_gnu_note_among_others() {
        let mut notes = Vec::new();
        for v in [4u32, 4, 1] {
            notes.extend_from_slice(&v.to_ne_bytes());
        }
        notes.extend_from_slice(b"XYZ\0");
        notes.extend_from_slice(&[1, 2, 3, 4]);
        for v in [4u32, 3, 3] {
            notes.extend_from_slice(&v.to_ne_bytes());
        }
        notes.extend_from_slice(b"GNU\0");
        notes.extend_from_slice(&[0xab, 0x0c, 0xff, 0]);
        assert_eq!(gnu_build_id(&notes, 4), Some(vec![0xab, 0x0c, 0xff]));
        assert_eq!(gnu_build_id(&notes[..30], 4), None);
        notes[32..35].copy_from_slice(b"GNX");
        assert_eq!(gnu_build_id(&notes, 4), None);
    }
}
