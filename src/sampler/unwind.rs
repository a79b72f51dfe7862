//! Stack unwinding from a signal context with `framehop` (DWARF CFI from
//! `.eh_frame`, with frame pointers as a fallback), so stacks are right in
//! ordinary release binaries built without frame pointers.
//!
//! Module information is taken from memory, not files: `dl_iterate_phdr`
//! gives each loaded object's segments and its `PT_GNU_EH_FRAME`
//! (`.eh_frame_hdr`), from which `.eh_frame` is found. The vDSO is covered
//! the same way. The unwinder and a snapshot of the process's memory
//! mappings (used to bound stack reads) are built by the manager thread and
//! published to the handler through atomic pointers.
//!
//! **`dlclose`**: the unwinder never reads module memory. Each object's
//! `.eh_frame_hdr` and `.eh_frame` are copied (inside the
//! `dl_iterate_phdr` callback, under the loader's lock, so the object
//! cannot be unmapped meanwhile) into buffers the unwinder owns, shared
//! between rebuilds while the object stays loaded (typically a few hundred
//! KiB per program). A library unloaded while sampling therefore cannot
//! fault a handler, and it is really unloaded (nothing pins it). Until the
//! manager's next scan notices the loader's generation change (every scan,
//! one allocation-free `dl_iterate_phdr` step) and rebuilds, a sample in
//! code loaded over the old range may unwind with the old tables: a wrong
//! stack for at most one scan period, never a crash (stack reads stay
//! bounded by the maps snapshot).

use std::collections::HashMap;
use std::ffi::CStr;
use std::ops::Range;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use framehop::{
    CacheNative, ExplicitModuleSectionInfo, Module, MustNotAllocateDuringUnwind, Unwinder,
    UnwinderNative,
};

/// Unwind-table bytes: copies owned by the unwinder.
pub(crate) type Bytes = Arc<[u8]>;
pub(crate) type NativeUnwinder = UnwinderNative<Bytes, MustNotAllocateDuringUnwind>;
pub(crate) type NativeCache = CacheNative<MustNotAllocateDuringUnwind>;

/// The unwinder plus the generation of the loader's object list it reflects.
pub(crate) struct UnwindState {
    pub(crate) unwinder: NativeUnwinder,
    /// `dlpi_adds + dlpi_subs` when built: a change means dlopen/dlclose.
    pub(crate) loader_generation: u64,
}

/// Samples whose stack pointer lay in no range of the published snapshot
/// (a stack mapped or grown after it was read: the main thread's stack
/// growing down, a new thread, a coroutine or fiber stack). Their stacks are
/// cut to the leaf; the manager re-reads the maps when this count moves.
pub(crate) static STALE_MAPS: AtomicU64 = AtomicU64::new(0);

/// Readable memory ranges (sorted; one per mapping, never merged across
/// mappings, so a stack read cannot run into a neighbour that may have been
/// unmapped since), to keep stack reads inside mapped memory.
pub(crate) struct MapsSnapshot {
    ranges: Vec<Range<u64>>,
    /// The main thread's `[stack]`, which the kernel grows on demand.
    main_stack: Option<Range<u64>>,
    /// The lowest address the main stack may grow down to (its top minus
    /// `RLIMIT_STACK`); `None` when the limit is infinite.
    main_stack_floor: Option<u64>,
}

impl MapsSnapshot {
    /// Reads `/proc/self/maps`. Only the manager thread calls this.
    pub(crate) fn read() -> Option<MapsSnapshot> {
        let text = std::fs::read_to_string("/proc/self/maps").ok()?;
        let mut ranges: Vec<Range<u64>> = Vec::new();
        let mut main_stack = None;
        for entry in crate::maps::entries(&text).filter(|e| e.readable()) {
            if entry.path == "[stack]" {
                main_stack = Some(entry.start..entry.end);
            }
            ranges.push(entry.start..entry.end);
        }
        let main_stack_floor = main_stack
            .as_ref()
            .and_then(|r| Some(r.end.saturating_sub(stack_limit()?)));
        Some(MapsSnapshot {
            ranges,
            main_stack,
            main_stack_floor,
        })
    }

    /// A snapshot of the given ranges (sorted, disjoint), for tests.
    #[cfg(test)]
    pub(crate) fn from_ranges(ranges: Vec<Range<u64>>) -> MapsSnapshot {
        MapsSnapshot {
            ranges,
            main_stack: None,
            main_stack_floor: None,
        }
    }

    /// The readable region containing `addr`. No allocation.
    #[inline]
    pub(crate) fn readable_range(&self, addr: u64) -> Option<&Range<u64>> {
        let i = self.ranges.partition_point(|r| r.end <= addr);
        let r = self.ranges.get(i)?;
        (r.start <= addr).then_some(r)
    }

    /// `true` if code whose frame is at `here` has at least `headroom`
    /// bytes of stack left below it. On the main thread's growable
    /// `[stack]` that is the distance to the lowest address `RLIMIT_STACK`
    /// lets it grow to (always, if the limit is infinite); anywhere else the
    /// distance to the start of the mapping holding `here` (thread stacks
    /// are fixed-size, with a guard page below). An address in no mapping of
    /// the snapshot has none.
    #[inline]
    pub(crate) fn has_headroom(&self, here: u64, headroom: u64) -> bool {
        if let Some(main) = &self.main_stack {
            let lowest = self.main_stack_floor.unwrap_or(main.start);
            if lowest <= here && here < main.end {
                return self.main_stack_floor.is_none() || here.saturating_sub(lowest) >= headroom;
            }
        }
        self.readable_range(here)
            .is_some_and(|r| here.saturating_sub(r.start) >= headroom)
    }
}

/// `RLIMIT_STACK` in bytes, `None` if infinite or unknown.
fn stack_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    Some(limit.rlim_cur)
}

/// One loaded object as found by `dl_iterate_phdr`, with copies of its
/// unwind tables.
struct Object {
    name: String,
    bias: u64,
    /// SVMA range of the first executable PT_LOAD segment.
    text: Option<Range<u64>>,
    /// `.eh_frame_hdr` and `.eh_frame`: SVMA ranges and copies.
    tables: Option<UnwindTables>,
}

/// Copies of one object's `.eh_frame_hdr` and `.eh_frame`.
#[derive(Clone)]
struct UnwindTables {
    hdr_svma: Range<u64>,
    hdr: Bytes,
    eh_frame_svma: Range<u64>,
    eh_frame: Bytes,
}

/// Identifies an object's tables across rebuilds, so unchanged objects
/// share their copies instead of being copied again.
#[derive(Clone, PartialEq, Eq, Hash)]
struct TablesKey {
    name: String,
    bias: u64,
    hdr_avma: u64,
    hdr_len: u64,
}

/// Copies of unwind tables kept between rebuilds (manager thread only).
#[derive(Default)]
pub(crate) struct TablesCache {
    tables: HashMap<TablesKey, UnwindTables>,
}

/// Length of `.eh_frame` starting at `start`: its entries up to and
/// including the zero terminator, within `limit` bytes.
///
/// # Safety
/// `start..start + limit` must be readable.
unsafe fn eh_frame_len(start: *const u8, limit: usize) -> usize {
    let mut offset = 0usize;
    while offset + 4 <= limit {
        // SAFETY: inside the readable range (caller).
        let len = unsafe { std::ptr::read_unaligned(start.add(offset) as *const u32) };
        if len == 0 {
            return offset + 4;
        }
        let (header, body) = if len == u32::MAX {
            if offset + 12 > limit {
                break;
            }
            // SAFETY: as above.
            let len = unsafe { std::ptr::read_unaligned(start.add(offset + 4) as *const u64) };
            (12usize, usize::try_from(len).unwrap_or(usize::MAX))
        } else {
            (4usize, len as usize)
        };
        match offset.checked_add(header).and_then(|o| o.checked_add(body)) {
            Some(next) if next <= limit => offset = next,
            _ => break,
        }
    }
    offset.min(limit)
}

/// Lists loaded objects and the loader's generation counter, copying each
/// object's unwind tables (or reusing the copies in `cache`) while the
/// loader's lock keeps the object mapped.
fn loaded_objects(cache: &TablesCache) -> (Vec<Object>, u64) {
    struct Acc<'a> {
        objects: Vec<Object>,
        generation: u64,
        cache: &'a TablesCache,
    }
    unsafe extern "C" fn callback(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is the `&mut Acc` passed below; `info` is valid for
        // the duration of the callback as documented by dl_iterate_phdr.
        let (acc, info) = unsafe { (&mut *(data as *mut Acc), &*info) };
        acc.generation = info.dlpi_adds.wrapping_add(info.dlpi_subs);
        let name = if info.dlpi_name.is_null() {
            String::new()
        } else {
            // SAFETY: non-null dlpi_name is a NUL-terminated string owned by the loader.
            unsafe { CStr::from_ptr(info.dlpi_name) }
                .to_string_lossy()
                .into_owned()
        };
        let phdrs: &[libc::Elf64_Phdr] = if info.dlpi_phdr.is_null() {
            &[]
        } else {
            // SAFETY: the loader provides `dlpi_phnum` program headers at `dlpi_phdr`.
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) }
        };
        let bias = info.dlpi_addr;
        let mut loads = Vec::new();
        let mut hdr_range = None;
        for ph in phdrs {
            let range = ph.p_vaddr..ph.p_vaddr.saturating_add(ph.p_memsz);
            match ph.p_type {
                libc::PT_LOAD => loads.push((range, ph.p_flags & libc::PF_X != 0)),
                libc::PT_GNU_EH_FRAME => hdr_range = Some(range),
                _ => {}
            }
        }
        let text = loads.iter().find(|(_, exec)| *exec).map(|(r, _)| r.clone());
        let tables = hdr_range.and_then(|hdr_svma| {
            let key = TablesKey {
                name: name.clone(),
                bias,
                hdr_avma: hdr_svma.start.wrapping_add(bias),
                hdr_len: hdr_svma.end - hdr_svma.start,
            };
            if let Some(tables) = acc.cache.tables.get(&key) {
                return Some(tables.clone());
            }
            // SAFETY: the loader holds its lock during the callback, so the
            // object stays mapped (dlclose unmaps under the same lock), and
            // its PT_LOAD segments are readable.
            unsafe { copy_tables(bias, &hdr_svma, &loads) }
        });
        acc.objects.push(Object {
            name,
            bias,
            text,
            tables,
        });
        0
    }
    let mut acc = Acc {
        objects: Vec::new(),
        generation: 0,
        cache,
    };
    // SAFETY: the callback only reads the loader-provided structures and the
    // mapped objects they describe, and writes into `acc`, which outlives
    // the call.
    unsafe {
        libc::dl_iterate_phdr(Some(callback), &mut acc as *mut Acc as *mut libc::c_void);
    }
    (acc.objects, acc.generation)
}

/// Copies an object's `.eh_frame_hdr` and the `.eh_frame` it points to.
///
/// # Safety
/// The object must stay mapped during the call (its PT_LOAD segments
/// `loads`, relocated by `bias`, readable).
unsafe fn copy_tables(
    bias: u64,
    hdr_svma: &Range<u64>,
    loads: &[(Range<u64>, bool)],
) -> Option<UnwindTables> {
    let inside = |r: &Range<u64>| {
        loads
            .iter()
            .any(|(l, _)| l.start <= r.start && r.end <= l.end)
    };
    if !inside(hdr_svma) {
        return None;
    }
    let hdr_avma = hdr_svma.start.wrapping_add(bias);
    let hdr_len = usize::try_from(hdr_svma.end - hdr_svma.start).ok()?;
    // SAFETY: inside a PT_LOAD segment of a mapped object (caller).
    let hdr: Bytes = unsafe { std::slice::from_raw_parts(hdr_avma as *const u8, hdr_len) }.into();
    if hdr.len() < 8 || hdr[0] != 1 {
        return None;
    }
    let eh_avma = read_eh_ptr(&hdr, 4, hdr[1], hdr_avma)?;
    let eh_svma = eh_avma.wrapping_sub(bias);
    // `.eh_frame` runs to its terminator inside its PT_LOAD segment.
    let (segment, _) = loads
        .iter()
        .find(|(r, _)| r.start <= eh_svma && eh_svma < r.end)?;
    let limit = usize::try_from(segment.end - eh_svma).ok()?;
    // SAFETY: `eh_avma..eh_avma + limit` is the rest of that segment.
    let eh_frame: Bytes = unsafe {
        let len = eh_frame_len(eh_avma as *const u8, limit);
        std::slice::from_raw_parts(eh_avma as *const u8, len)
    }
    .into();
    Some(UnwindTables {
        hdr_svma: hdr_svma.clone(),
        hdr,
        eh_frame_svma: eh_svma..eh_svma + eh_frame.len() as u64,
        eh_frame,
    })
}

/// The loader's generation counter (`dlpi_adds + dlpi_subs`): it changes
/// with every `dlopen` that loads and every `dlclose` that unloads. Cheap
/// and allocation-free (stops at the first object); manager thread only.
pub(crate) fn loader_generation() -> u64 {
    unsafe extern "C" fn first(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: as in `loaded_objects`.
        let (generation, info) = unsafe { (&mut *(data as *mut u64), &*info) };
        *generation = info.dlpi_adds.wrapping_add(info.dlpi_subs);
        1
    }
    let mut generation = 0u64;
    // SAFETY: the callback writes only to `generation`, which outlives it.
    unsafe {
        libc::dl_iterate_phdr(
            Some(first),
            &mut generation as *mut u64 as *mut libc::c_void,
        );
    }
    generation
}

/// Reads a DWARF EH pointer at `pos` in `.eh_frame_hdr` (only the encodings
/// used for `eh_frame_ptr` in practice).
fn read_eh_ptr(hdr: &[u8], pos: usize, encoding: u8, hdr_avma: u64) -> Option<u64> {
    let rest = hdr.get(pos..)?;
    let value: i64 = match encoding & 0x0f {
        0x03 => u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as i64,
        0x0b => i32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as i64,
        0x04 | 0x0c => i64::from_le_bytes(rest.get(..8)?.try_into().ok()?),
        _ => return None,
    };
    match encoding & 0x70 {
        0x00 => Some(value as u64),
        0x10 => Some((hdr_avma + pos as u64).wrapping_add(value as u64)),
        0x30 => Some(hdr_avma.wrapping_add(value as u64)),
        _ => None,
    }
}

/// Builds a framehop unwinder over the objects loaded now. It owns copies
/// of their unwind tables (shared with `cache`, which keeps the copies of
/// the objects still loaded for the next build): nothing it reads is module
/// memory, so `dlclose` can never pull memory out from under a sample.
pub(crate) fn build_unwinder(cache: &mut TablesCache) -> UnwindState {
    let (objects, generation) = loaded_objects(cache);
    let mut unwinder = NativeUnwinder::new();
    let mut kept = HashMap::new();
    for object in &objects {
        if let Some(module) = module_for(object) {
            unwinder.add_module(module);
        }
        if let (Some(tables), Some(_)) = (&object.tables, &object.text) {
            let key = TablesKey {
                name: object.name.clone(),
                bias: object.bias,
                hdr_avma: tables.hdr_svma.start.wrapping_add(object.bias),
                hdr_len: tables.hdr_svma.end - tables.hdr_svma.start,
            };
            kept.insert(key, tables.clone());
        }
    }
    cache.tables = kept;
    UnwindState {
        unwinder,
        loader_generation: generation,
    }
}

fn module_for(object: &Object) -> Option<Module<Bytes>> {
    let bias = object.bias;
    let text = object.text.clone()?;
    let avma = |r: &Range<u64>| r.start.wrapping_add(bias)..r.end.wrapping_add(bias);
    // No text bytes: framehop's instruction analysis is for mach-O; ELF
    // unwinding goes by `.eh_frame`.
    let mut info = ExplicitModuleSectionInfo::<Bytes> {
        base_svma: 0,
        text_svma: Some(text.clone()),
        ..Default::default()
    };
    if let Some(tables) = &object.tables {
        info.eh_frame = Some(tables.eh_frame.clone());
        info.eh_frame_svma = Some(tables.eh_frame_svma.clone());
        info.eh_frame_hdr = Some(tables.hdr.clone());
        info.eh_frame_hdr_svma = Some(tables.hdr_svma.clone());
    }
    Some(Module::new(object.name.clone(), avma(&text), bias, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_ranges_stop_at_the_mapping_boundary() {
        // Two adjacent readable mappings (one region, upper half made
        // read-only, so the kernel keeps two mappings): a read bounded by the
        // first must not run into the second, which could be unmapped after
        // the snapshot.
        const PAGE: u64 = 4096;
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let first = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8 * PAGE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(first, libc::MAP_FAILED);
        let first = first as u64;
        let second = first + 4 * PAGE;
        // SAFETY: the upper half of the region mapped above.
        let rc = unsafe {
            libc::mprotect(
                second as *mut libc::c_void,
                4 * PAGE as usize,
                libc::PROT_READ,
            )
        };
        assert_eq!(rc, 0);
        let maps = MapsSnapshot::read().expect("read /proc/self/maps");
        assert_eq!(maps.readable_range(first + 8).map(|r| r.end), Some(second));
        assert_eq!(
            maps.readable_range(second).map(|r| r.end),
            Some(second + 4 * PAGE)
        );
        // SAFETY: the region mapped above, not used after this.
        unsafe {
            libc::munmap(first as *mut libc::c_void, 8 * PAGE as usize);
        }
    }
}
