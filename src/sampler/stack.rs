//! A thread's own stack, recorded when it registers with the label arena
//! (see `context::slot`): it bounds the handler's reads of that stack
//! exactly ([`super::handler`]).

use std::ops::Range;
use std::sync::atomic::Ordering;

/// Reads the page size once, off the signal path.
pub(crate) fn init_page_size() {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if let Ok(size) = u64::try_from(size) {
        if size.is_power_of_two() {
            super::handler::PAGE_SIZE.store(size, Ordering::Relaxed);
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
}
