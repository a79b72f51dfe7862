use super::*;

/// The probe loop of `probe_loop_entry`'s docs, `size` = 0x10000, at
/// `at` in a page-aligned buffer; returns the buffer.
#[cfg(target_arch = "x86_64")]
fn probe_code(at: usize) -> Vec<u8> {
    let page = PAGE_SIZE.load(Ordering::Relaxed).max(4096) as usize;
    // Twice a page, so that one whole page is page-aligned within it.
    let mut v = vec![0x90u8; 3 * page];
    let start = (page - (v.as_ptr() as usize % page)) % page;
    let code: [u8; 30] = [
        0x49, 0x89, 0xe3, 0x49, 0x81, 0xeb, 0x00, 0x00, 0x01, 0x00, 0x48, 0x81, 0xec, 0x00, 0x10,
        0x00, 0x00, 0x48, 0xc7, 0x04, 0x24, 0x00, 0x00, 0x00, 0x00, 0x4c, 0x39, 0xdc, 0x75, 0xec,
    ];
    v[start + at..start + at + 30].copy_from_slice(&code);
    v
}

#[cfg(target_arch = "x86_64")]
#[test]
fn a_pc_in_a_stack_probe_loop_unwinds_from_the_loops_entry() {
    let page = PAGE_SIZE.load(Ordering::Relaxed).max(4096) as usize;
    let code = probe_code(100);
    let base = code.as_ptr() as u64;
    let m = base + ((page as u64 - base % page as u64) % page as u64) + 100;
    let r11 = 0x7f00_0000_0000u64;
    // Anywhere from `L` (m + 10) to the instruction after `jne`.
    for pc in m + 10..=m + 30 {
        assert_eq!(
            probe_loop_entry(InHandler::for_test(), pc, r11 + 0x3000, r11),
            Some((m, r11 + 0x10000)),
            "pc at m+{}",
            pc - m
        );
    }
    // Before the loop, and past it: CFI is rsp-based there.
    for pc in [m, m + 3, m + 9, m + 31, m + 60] {
        assert_eq!(
            probe_loop_entry(InHandler::for_test(), pc, r11 + 0x3000, r11),
            None
        );
    }
    // The loop's code, but `rsp` not a whole number of pages above `r11`:
    // not in that loop now.
    assert_eq!(
        probe_loop_entry(InHandler::for_test(), m + 12, r11 + 0x3008, r11),
        None
    );
    assert_eq!(
        probe_loop_entry(InHandler::for_test(), m + 12, r11 - 0x1000, r11),
        None
    );
    // Other code: no match.
    let other = vec![0x90u8; 2 * page];
    let pc = other.as_ptr() as u64 + page as u64;
    assert_eq!(
        probe_loop_entry(InHandler::for_test(), pc, r11 + 0x3000, r11),
        None
    );
}

#[cfg(target_arch = "x86_64")]
#[test]
fn a_probe_loop_across_a_page_boundary_is_left_alone() {
    let page = PAGE_SIZE.load(Ordering::Relaxed).max(4096) as usize;
    // The loop's entry 5 bytes before a page boundary.
    let code = probe_code(page - 5);
    let base = code.as_ptr() as u64;
    let m = base + ((page as u64 - base % page as u64) % page as u64) + page as u64 - 5;
    assert_eq!(probe_loop_entry(InHandler::for_test(), m + 12, 0, 0), None);
}

#[test]
fn a_stack_outside_the_snapshot_is_counted_as_stale() {
    let maps = MapsSnapshot::from_ranges(Vec::new());
    let local = 0u64;
    let sp = &local as *const u64 as u64;
    let before = STALE_MAPS.load(Ordering::Relaxed);
    assert!(!plan(InHandler::for_test(), &maps, None, sp, sp).unwinds());
    assert!(STALE_MAPS.load(Ordering::Relaxed) > before);
}

#[test]
fn the_threads_own_stack_bounds_reads_and_headroom() {
    let base = 0x7f00_0000_0000u64;
    let own = base..base + 256 * 1024;
    // Not in the snapshot at all: the thread's own range decides.
    let maps = MapsSnapshot::from_ranges(Vec::new());
    let here = base + 128 * 1024;
    assert!(plan(
        InHandler::for_test(),
        &maps,
        Some(own.clone()),
        here + 512,
        here
    )
    .unwinds());
    // Too little room below the handler's frame.
    let low = base + 4 * 1024;
    assert!(!plan(
        InHandler::for_test(),
        &maps,
        Some(own.clone()),
        low + 512,
        low
    )
    .unwinds());
    // A stack pointer outside it (a coroutine's stack): the snapshot
    // decides, and knows nothing here.
    assert!(!plan(InHandler::for_test(), &maps, Some(own), base - 4096, here).unwinds());
}

#[test]
fn probed_bounds_stop_at_a_hole_left_by_munmap() {
    super::super::stack::init_page_size();
    let page = PAGE_SIZE.load(Ordering::Relaxed);
    // SAFETY: a fresh anonymous mapping; no existing memory is touched.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            (4 * page) as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    let base = base as u64;
    // The third page goes, as a neighbour's stack would.
    // SAFETY: a page of the mapping above, not used after this.
    assert_eq!(
        unsafe { libc::munmap((base + 2 * page) as *mut libc::c_void, page as usize) },
        0
    );
    // A stale snapshot still says the four pages are one mapping.
    let mut bounds = StackBounds::probed(InHandler::for_test(), base + 64, base + 4 * page);
    assert!(bounds.readable(base + 64));
    assert!(bounds.readable(base + page + 8));
    assert!(!bounds.readable(base + 2 * page + 8));
    // Nothing above the hole either, though that page is still mapped.
    assert!(!bounds.readable(base + 3 * page));
    assert!(!bounds.readable(base), "below the stack pointer");
    let mut exact = StackBounds::exact(InHandler::for_test(), base + 64, base + 2 * page);
    assert!(exact.readable(base + 2 * page - 8));
    assert!(!exact.readable(base + 2 * page));
    // SAFETY: the rest of the mapping above.
    unsafe {
        libc::munmap(base as *mut libc::c_void, (2 * page) as usize);
        libc::munmap((base + 3 * page) as *mut libc::c_void, page as usize);
    }
}
