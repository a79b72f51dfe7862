//! Where the handler may read the interrupted thread's stack.
//!
//! - **A thread that registered** with the label arena (its first span
//!   enter, or the profiler's own threads) stored its own stack there,
//!   from `pthread_getattr_np` ([`own_stack`]). When the interrupted stack
//!   pointer lies in it, reads are bounded by that range: exact, with no
//!   system call, whatever became of the memory around it.
//! - **Any other thread** (one that never called the crate, or running on a
//!   stack it switched to: a coroutine, a fiber) is bounded by the readable
//!   mapping of the maps snapshot that holds its stack pointer. That range
//!   can be stale: adjacent anonymous mappings merge, and a later `munmap`
//!   of a neighbour (a pool of stacks carved from one mapping) leaves a
//!   hole inside it. So only the page holding the stack pointer is trusted
//!   (the interrupted code was using it); each page above it is checked
//!   with one `mincore` call before its first read ([`StackBounds`]), and
//!   the bound stops at the first page that is no longer mapped.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

/// The page size (`sysconf`), set when a sampler starts; 4 KiB until then.
static PAGE_SIZE: AtomicU64 = AtomicU64::new(4096);

/// Reads the page size once, off the signal path.
pub(crate) fn init_page_size() {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if let Ok(size) = u64::try_from(size) {
        if size.is_power_of_two() {
            PAGE_SIZE.store(size, Ordering::Relaxed);
        }
    }
}

/// The calling thread's stack, `lo..hi`, from `pthread_getattr_np` (on the
/// main thread: its `[stack]` top down to where `RLIMIT_STACK` lets it
/// grow). Allocates and, on the main thread, reads `/proc/self/maps`: call
/// it once per thread, at registration, never from a signal handler.
pub(crate) fn own_stack() -> Option<Range<u64>> {
    // SAFETY: pthread_attr_t is plain data; pthread_getattr_np initialises
    // it (and on success we destroy it); the out-pointers are valid.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let rc = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        if rc != 0 || addr.is_null() || size == 0 {
            return None;
        }
        let lo = addr as u64;
        Some(lo..lo.checked_add(size as u64)?)
    }
}

/// The readable part of one interrupted stack: `[lo, hi)`, 8-byte aligned
/// reads only. For a stack bounded by the maps snapshot, pages above the
/// stack pointer's are checked before their first read.
pub(crate) struct StackBounds {
    lo: u64,
    hi: u64,
    /// Reads below this are known to be mapped; `u64::MAX` for an exact
    /// range (the thread's own).
    checked_to: u64,
}

impl StackBounds {
    /// The thread's own stack, from `sp` up to its top: nothing to check.
    pub(crate) fn exact(sp: u64, top: u64) -> StackBounds {
        StackBounds {
            lo: sp,
            hi: top,
            checked_to: u64::MAX,
        }
    }

    /// From `sp` up to the end of a snapshot's mapping, which may have
    /// shrunk since: only `sp`'s page is trusted.
    pub(crate) fn probed(sp: u64, end: u64) -> StackBounds {
        let page = PAGE_SIZE.load(Ordering::Relaxed);
        StackBounds {
            lo: sp,
            hi: end,
            checked_to: (sp & !(page - 1)).saturating_add(page),
        }
    }

    /// `true` if the 8 bytes at `addr` may be read. At most one system
    /// call (`mincore`, for the pages not checked yet up to `addr`);
    /// no allocation, no lock.
    #[inline]
    pub(crate) fn readable(&mut self, addr: u64) -> bool {
        let Some(end) = addr.checked_add(8) else {
            return false;
        };
        if addr < self.lo || end > self.hi || !addr.is_multiple_of(8) {
            return false;
        }
        if end <= self.checked_to {
            return true;
        }
        let page = PAGE_SIZE.load(Ordering::Relaxed);
        let want = end.saturating_add(page - 1) & !(page - 1);
        if pages_mapped(self.checked_to, want, page) {
            self.checked_to = want;
            true
        } else {
            // A hole: nothing above it is this stack.
            self.hi = self.checked_to;
            false
        }
    }
}

/// `true` if every page of `[from, to)` (page-aligned) is mapped.
///
/// One `mincore` call per 64 pages: the one system call the handler makes
/// besides the drain thread's wake, and only for stacks of threads that
/// never registered (see the module docs). `mincore` is a plain system call
/// (no lock, no allocation, async-signal-safe in practice, allowed by
/// container runtimes' default seccomp profiles) that fails with `ENOMEM`
/// when part of the range is unmapped; it reads nothing, so it cannot
/// fault. The caller's `errno` is restored by the handler.
fn pages_mapped(from: u64, to: u64, page: u64) -> bool {
    const BATCH: u64 = 64;
    let mut at = from;
    while at < to {
        let pages = ((to - at) / page).clamp(1, BATCH);
        let mut residency = [0u8; BATCH as usize];
        // SAFETY: `at` is page-aligned; `residency` has room for one byte
        // per page of the `pages * page` bytes asked about. mincore only
        // writes to `residency`.
        let rc = unsafe {
            libc::mincore(
                at as *mut libc::c_void,
                (pages * page) as libc::size_t,
                residency.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return false;
        }
        at += pages * page;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registered_threads_own_stack_holds_its_stack_pointer() {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let stack = own_stack().expect("pthread_getattr_np");
                let local = 0u64;
                let sp = &local as *const u64 as u64;
                assert!(stack.contains(&sp), "{stack:x?} does not hold {sp:#x}");
                assert!(stack.end - stack.start >= 256 * 1024);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn probed_bounds_stop_at_a_hole_left_by_munmap() {
        init_page_size();
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
        let mut bounds = StackBounds::probed(base + 64, base + 4 * page);
        assert!(bounds.readable(base + 64));
        assert!(bounds.readable(base + page + 8));
        assert!(!bounds.readable(base + 2 * page + 8));
        // Nothing above the hole either, though that page is still mapped.
        assert!(!bounds.readable(base + 3 * page));
        assert!(!bounds.readable(base), "below the stack pointer");
        let mut exact = StackBounds::exact(base + 64, base + 2 * page);
        assert!(exact.readable(base + 2 * page - 8));
        assert!(!exact.readable(base + 2 * page));
        // SAFETY: the rest of the mapping above.
        unsafe {
            libc::munmap(base as *mut libc::c_void, (2 * page) as usize);
            libc::munmap((base + 3 * page) as *mut libc::c_void, page as usize);
        }
    }
}
