use super::elf::{gnu_build_id, read_elf_info as elf_info_of, ElfInfo, LoadSegment};
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
    assert!(f.file.ends_with("symbolize/tests.rs"), "{:?}", f);
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

/// A program built with `rustc -g`, its DWARF moved to a separate file
/// the way distributions ship it: `objcopy --only-keep-debug`, `strip
/// --strip-debug`, `objcopy --add-gnu-debuglink`.
#[test]
fn separate_debug_files_are_found_by_debuglink_and_build_id() {
    use super::objects::{open_debug_info, separate_debug_file};
    use std::path::Path;
    use std::process::Command;
    let dir = std::env::temp_dir().join(format!("tp-symbolize-debuglink-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(
        dir.join("prog.rs"),
        "#[inline(never)] fn separately_debugged_work(x: u64) -> u64 { x.wrapping_mul(3) ^ 5 }\n\
         fn main() { println!(\"{}\", separately_debugged_work(std::env::args().count() as u64)); }\n",
    )
    .expect("write the program");
    let run = |cmd: &mut Command| {
        let status = cmd.current_dir(&dir).status().expect("rustc and binutils");
        assert!(status.success(), "{cmd:?}: {status}");
    };
    run(Command::new("rustc").args([
        "-g",
        "-C",
        "link-arg=-Wl,--build-id",
        "-o",
        "prog",
        "prog.rs",
    ]));
    let prog = dir.join("prog");
    let prog_str: Arc<str> = Arc::from(prog.to_str().expect("utf-8"));
    // The function's address, from the (kept) symbol table.
    let nm = Command::new("nm").arg(&prog).output().expect("nm");
    let svma = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .find(|l| l.contains("separately_debugged_work"))
        .and_then(|l| u64::from_str_radix(l.split_whitespace().next()?, 16).ok())
        .expect("the function's symbol");
    run(Command::new("objcopy").args(["--only-keep-debug", "prog", "prog.debug"]));
    run(Command::new("strip").args(["--strip-debug", "prog"]));
    run(Command::new("objcopy").args(["--add-gnu-debuglink=prog.debug", "prog"]));
    let build_id = elf_info_of(&prog_str).and_then(|e| e.build_id);
    let no_root = dir.join("no-root");
    let frames = |root: &Path| -> Vec<String> {
        match open_debug_info(root, &prog_str, &prog_str, build_id.as_deref()) {
            Ok(mut info) => info
                .find_frames(svma + 1)
                .into_iter()
                .filter_map(|f| f.0)
                .collect(),
            Err(e) => vec![format!("{e:?}")],
        }
    };
    // The stripped program has no DWARF of its own: the linked file has.
    assert!(super::super::dwarf::DebugInfo::open(&prog_str).is_err());
    let found = separate_debug_file(&no_root, &prog_str, &prog_str, None);
    assert_eq!(found.as_deref(), dir.join("prog.debug").to_str());
    let names = frames(&no_root);
    assert!(
        names
            .iter()
            .any(|n| n.ends_with("separately_debugged_work")),
        "{names:?}"
    );

    // A debug file whose CRC is not the link's is not used.
    let debug = std::fs::read(dir.join("prog.debug")).expect("read");
    let mut other = debug.clone();
    other.extend_from_slice(b"changed");
    std::fs::write(dir.join("prog.debug"), &other).expect("write");
    assert_eq!(
        separate_debug_file(&no_root, &prog_str, &prog_str, None),
        None
    );

    // The build-id directory: `<root>/.build-id/xx/yyyy.debug`, checked by
    // its build id.
    let id = build_id.clone().expect("rustc's linker wrote a build id");
    let root = dir.join("debug-root");
    let by_id = root.join(format!(".build-id/{}/{}.debug", &id[..2], &id[2..]));
    std::fs::create_dir_all(by_id.parent().expect("parent")).expect("dirs");
    std::fs::write(&by_id, &debug).expect("write");
    let found = separate_debug_file(&root, &prog_str, &prog_str, Some(&id));
    assert_eq!(found.as_deref(), by_id.to_str());
    let names = frames(&root);
    assert!(
        names
            .iter()
            .any(|n| n.ends_with("separately_debugged_work")),
        "{names:?}"
    );
    // Under another build id it is not taken.
    assert_eq!(
        separate_debug_file(&root, &prog_str, &prog_str, Some("00ff00ff")),
        None
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn results_and_debug_info_are_kept_across_intervals_within_bounds() {
    assert_ne!(symbolizer_target_function(7), 0);
    let addr = symbolizer_target_function as *const () as usize as u64;
    let mut sym = Symbolizer::new();
    let first = sym.resolve(addr);
    assert_eq!(sym.loaded_objects(), 1);
    // The interval ends: the object used last keeps its parsed debug info
    // (within the bound), and the result stays cached.
    sym.end_interval();
    assert_eq!(sym.loaded_objects(), 1);
    assert!(Arc::ptr_eq(&sym.resolve(addr), &first));

    // The address cache is bounded; what it drops is counted, and
    // resolves again to the same frames.
    let mut sym = Symbolizer::new().with_cache_limit(64);
    let first = sym.resolve(addr);
    for off in 1..400 {
        sym.resolve(addr + off);
        assert!(sym.cached() <= 64, "{}", sym.cached());
    }
    assert!(sym.evictions() >= 400 - 64, "{}", sym.evictions());
    assert_eq!(sym.resolve(addr).frames, first.frames);
    // An address still in use survives the generations.
    let mut sym = Symbolizer::new().with_cache_limit(64);
    let kept = sym.resolve(addr);
    for off in 1..400 {
        sym.resolve(addr + off);
        sym.resolve(addr);
    }
    assert!(Arc::ptr_eq(&sym.resolve(addr), &kept));
}
