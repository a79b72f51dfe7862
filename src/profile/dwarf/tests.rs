use super::*;
use object::{Object, ObjectSymbol, SymbolKind};

/// `(start, size)` of up to `limit` functions of this test binary,
/// spread evenly over its symbol table.
fn functions(path: &str, limit: usize) -> Vec<(u64, u64)> {
    let data = std::fs::read(path).expect("read the test binary");
    let file = object::File::parse(&*data).expect("parse the test binary");
    let mut all: Vec<(u64, u64)> = file
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0)
        .map(|s| (s.address(), s.size()))
        .collect();
    all.sort_unstable();
    all.dedup_by_key(|f| f.0);
    let step = (all.len() / limit).max(1);
    all.into_iter().step_by(step).take(limit).collect()
}

fn loader_frames(loader: &addr2line::Loader, svma: u64) -> Vec<RawFrame> {
    raw_frames(loader.find_frames(svma).map_err(|_| gimli::Error::Io))
}

fn exe() -> Arc<str> {
    let exe = std::env::current_exe().expect("current exe");
    Arc::from(exe.to_str().expect("utf-8 path"))
}

#[test]
fn reads_the_same_frames_as_addr2lines_loader_holding_a_fraction_of_the_debug_info() {
    let path = exe();
    let mut info = DebugInfo::open(&path).expect("this test binary has DWARF and aranges");
    let loader = addr2line::Loader::new(&*path).expect("addr2line loader");
    let debug_bytes: u64 = info.sections.iter().map(|(_, s)| s.size).sum();
    let probes: Vec<u64> = functions(&path, 400)
        .into_iter()
        .flat_map(|(start, size)| [start, start + size / 2, start + size - 1])
        .collect();
    assert!(probes.len() >= 600, "{} probes", probes.len());
    let (mut named, mut inlined, mut max_held) = (0, 0, 0);
    for &svma in &probes {
        let ours = info.find_frames(svma);
        assert_eq!(ours, loader_frames(&loader, svma), "at {svma:#x}");
        named += usize::from(ours.first().is_some_and(|f| f.0.is_some()));
        inlined += usize::from(ours.len() >= 2);
        max_held = max_held.max(info.bytes_held());
        assert!(info.bytes_held() <= CHUNK_BYTES_LIMIT);
    }
    // Not a vacuous agreement: most probes have names, some inlining.
    assert!(
        named * 10 >= probes.len() * 9,
        "{named} of {}",
        probes.len()
    );
    assert!(inlined > 0);
    // One address reads a small part of the debug info.
    info.release();
    assert!(!info.holds());
    let first = probes[probes.len() / 2];
    assert!(!info.find_frames(first).is_empty());
    let one = info.bytes_held() as u64;
    assert!(
        one * 8 < debug_bytes,
        "{one} of {debug_bytes} bytes for one address"
    );
    eprintln!(
        "{} probes, {named} named, {inlined} with inlined frames; {one} bytes held for one \
         address, at most {max_held} for all, of {debug_bytes} bytes of DWARF",
        probes.len()
    );
}

/// A copy of this test binary made by `objcopy <option>`, in a
/// directory of its own (removed by the caller).
fn objcopy(option: &str, name: &str) -> (std::path::PathBuf, Arc<str>) {
    let dir = std::env::temp_dir().join(format!("tp-dwarf-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let out = dir.join(name);
    let status = std::process::Command::new("objcopy")
        .arg(option)
        .arg(&*exe())
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => panic!("objcopy (binutils) is needed for this test: {other:?}"),
    }
    let path: Arc<str> = Arc::from(out.to_str().expect("utf-8 path"));
    (dir, path)
}

#[test]
fn without_aranges_the_index_comes_from_the_units_and_the_frames_are_the_same() {
    let (dir, path) = objcopy("--remove-section=.debug_aranges", "no-aranges");
    let mut info = DebugInfo::open(&path).expect("DWARF without aranges");
    assert!(info.section(".debug_aranges").is_none());
    let loader = addr2line::Loader::new(&*path).expect("addr2line loader");
    let mut named = 0;
    let probes = functions(&path, 200);
    for &(start, size) in &probes {
        let svma = start + size / 2;
        let ours = info.find_frames(svma);
        assert_eq!(ours, loader_frames(&loader, svma), "at {svma:#x}");
        named += usize::from(ours.first().is_some_and(|f| f.0.is_some()));
        assert!(info.bytes_held() <= CHUNK_BYTES_LIMIT);
    }
    assert!(
        named * 10 >= probes.len() * 9,
        "{named} of {}",
        probes.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn split_dwarf_is_left_to_addr2lines_loader() {
    let dir = std::env::temp_dir().join(format!("tp-dwarf-{}-split", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(
        dir.join("split.rs"),
        "#[inline(never)] fn work(x: u64) -> u64 { x * 3 }\n\
         fn main() { println!(\"{}\", work(std::env::args().count() as u64)); }\n",
    )
    .expect("write the program");
    let build = |split: &str, out: &str| -> Arc<str> {
        let status = std::process::Command::new("rustc")
            .current_dir(&dir)
            .args(["-g", "-C", &format!("split-debuginfo={split}"), "-o", out])
            .arg("split.rs")
            .status()
            .expect("rustc (the toolchain that runs this test)");
        assert!(
            status.success(),
            "rustc -C split-debuginfo={split}: {status}"
        );
        Arc::from(dir.join(out).to_str().expect("utf-8 path"))
    };
    let packed = build("packed", "packed");
    assert!(dir.join("packed.dwp").exists(), "rustc wrote no .dwp");
    assert_eq!(DebugInfo::open(&packed).err(), Some(Unsupported::Other));
    // The same program with its DWARF in the binary is read here.
    let whole = build("off", "whole");
    let opened = DebugInfo::open(&whole);
    assert!(opened.is_ok(), "{:?}", opened.err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn compressed_debug_sections_are_left_to_addr2lines_loader() {
    let (dir, path) = objcopy("--compress-debug-sections=zlib", "compressed");
    assert_eq!(DebugInfo::open(&path).err(), Some(Unsupported::Other));
    let _ = std::fs::remove_dir_all(&dir);
    // And a file without DWARF says so.
    let libc = std::fs::read_to_string("/proc/self/maps")
        .expect("maps")
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5).map(str::to_owned))
        .find(|p| p.contains("libc.so"));
    if let Some(libc) = libc {
        let libc: Arc<str> = Arc::from(libc);
        let opened = DebugInfo::open(&libc);
        assert!(
            matches!(opened, Ok(_) | Err(Unsupported::NoDwarf)),
            "{opened:?}"
        );
    }
}

/// Every `DW_FORM_ref_addr` of the unit at `unit` leaving it, found by
/// decoding every attribute: what [`references`] must find while skipping
/// the attributes that cannot be one.
fn references_decoding_everything(dwarf: &gimli::Dwarf<FileReader>, unit: u32) -> Vec<u64> {
    let header = dwarf
        .debug_info
        .header_from_offset(gimli::DebugInfoOffset(unit as usize))
        .expect("unit header");
    let end = u64::from(unit) + header.length_including_self() as u64;
    let unit_data = dwarf.unit(header).expect("unit");
    let mut entries = unit_data.entries_raw(None).expect("entries");
    let mut targets = Vec::new();
    while !entries.is_empty() {
        let Some(abbrev) = entries.read_abbreviation().expect("abbreviation") else {
            continue;
        };
        for spec in abbrev.attributes() {
            let attr = entries.read_attribute(*spec).expect("attribute");
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

#[test]
fn cross_unit_references_are_found_while_skipping_other_attributes() {
    let path = exe();
    let info = DebugInfo::open(&path).expect("this test binary has DWARF");
    let store = ChunkStore::new(File::open(&*path).expect("open"));
    let section = info.section(".debug_info").expect(".debug_info");
    let dwarf = info.load(&store, None).expect("sections");
    let starts = unit_starts(&store.file, section, info.endian).expect("unit starts");
    let step = (starts.len() / 300).max(1);
    let (mut units, mut found) = (0, 0);
    for &unit in starts.iter().step_by(step) {
        let ours = references(&dwarf, unit);
        assert_eq!(
            ours,
            references_decoding_everything(&dwarf, unit),
            "unit at {unit:#x}"
        );
        units += 1;
        found += ours.len();
    }
    // Not a vacuous agreement: the units checked do refer across.
    assert!(found > 0, "no cross-unit reference in {units} units");
    eprintln!(
        "{found} cross-unit references in {units} of {} units",
        starts.len()
    );
}
