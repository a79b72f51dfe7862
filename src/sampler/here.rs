//! Unwinding the calling thread from where it stands, for the allocator's
//! sampled path (`crate::alloc`): the handler's unwinder, caches and stack
//! bounds, entered from normal code instead of a signal.
//!
//! Everything the handler's rules forbid stays forbidden here: no
//! allocation (an allocation here would re-enter the allocator), no lock
//! (the allocator may run in another library's signal handler, or in a
//! forked child), no thread local. What it reads (the published unwinder
//! and maps snapshot) is held for the call by a `reclaim` read section,
//! exactly like a handler's.

use std::ops::Range;
use std::ptr;
use std::sync::atomic::Ordering;

use super::buffer::MAX_FRAMES;
use super::handler::{plan, unwind, InHandler, Plan, Regs};
use super::{reclaim, MAPS, SHARED, UNWIND};

/// Unwinds the calling thread into `out`, leaf first, starting in this
/// function's own frame (`out[0]` is a pc inside it, then return
/// addresses: its caller first). `own` is the thread's registered stack
/// (bounds reads exactly), if it has one. Returns the frames written: 0 when
/// no sampler has published an unwinder, 1 when only the leaf could be
/// had (every cache busy, too little stack left, a stack outside the maps
/// snapshot). No allocation, no lock, no thread local; at most the
/// `mincore` checks of [`super::handler::StackBounds`].
#[inline(never)]
pub(crate) fn unwind_here(own: Option<Range<u64>>, out: &mut [u64; MAX_FRAMES]) -> usize {
    let marker = 0u8;
    let here = std::hint::black_box(ptr::addr_of!(marker)) as u64;
    let regs = regs_here();
    // SAFETY: the code below is the handler's, run under the handler's
    // rules (see the module docs); the token does not leave this call.
    let cx = unsafe { InHandler::new() };
    let parity = reclaim::enter();
    let unwinder = UNWIND.load(Ordering::SeqCst);
    let maps = MAPS.load(Ordering::SeqCst);
    let depth = match (SHARED.get(), unwinder.is_null() || maps.is_null()) {
        (Some(shared), false) => {
            // SAFETY: published objects are freed only after a grace period
            // with no reader counted in `reclaim`, and we are counted.
            let (state, maps) = unsafe { (&*unwinder, &*maps) };
            out[0] = regs.pc;
            match plan(cx, maps, own, regs.sp, here) {
                Plan::LeafOnly => 1,
                Plan::Unwind(bounds) => match shared.caches.iter().find(|c| {
                    c.busy
                        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                }) {
                    Some(slot) => {
                        // SAFETY: `busy` gives us exclusive use of this cache.
                        let cache = unsafe { &mut *slot.cache.get() };
                        let n = unwind(cx, state, bounds, cache, regs, out).max(1);
                        slot.busy.store(false, Ordering::Release);
                        n
                    }
                    None => 1,
                },
            }
        }
        _ => 0,
    };
    reclaim::exit(parity);
    depth
}

/// This function's registers at this point: a pc inside it and the stack
/// and frame pointers its unwind rules at that pc describe.
#[inline(always)]
fn regs_here() -> Regs {
    let (pc, sp, fp, lr): (u64, u64, u64, u64);
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: reads registers only; touches no memory and no flags.
        unsafe {
            std::arch::asm!(
                "lea {pc}, [rip]",
                "mov {sp}, rsp",
                "mov {fp}, rbp",
                pc = out(reg) pc,
                sp = out(reg) sp,
                fp = out(reg) fp,
                options(nomem, nostack, preserves_flags),
            );
        }
        lr = 0;
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: reads registers only; touches no memory and no flags.
        unsafe {
            std::arch::asm!(
                "adr {pc}, .",
                "mov {sp}, sp",
                "mov {fp}, x29",
                "mov {lr}, x30",
                pc = out(reg) pc,
                sp = out(reg) sp,
                fp = out(reg) fp,
                lr = out(reg) lr,
                options(nomem, nostack, preserves_flags),
            );
        }
    }
    Regs {
        pc,
        sp,
        fp,
        lr,
        r11: 0,
    }
}
