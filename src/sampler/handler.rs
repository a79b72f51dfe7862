//! The `SIGPROF` handler and everything it runs: the one file to audit for
//! async-signal safety.
//!
//! The handler runs on whichever thread the timer interrupted, possibly
//! inside `malloc`, the dynamic loader or a lock. So from [`on_sigprof`]
//! down it allocates nothing, takes no lock, touches no thread local and
//! makes no system call except two: one `FUTEX_WAKE` of the drain thread
//! when a sixteenth of the signal buffer waits (`buffer.rs`), and
//! `mincore` page checks when it reads the stack of a thread that never
//! registered ([`StackBounds`]). It saves and restores `errno`.
//!
//! Every function here that the handler runs takes an [`InHandler`]: a
//! token only [`on_sigprof`] creates, so a signature says which code must
//! stay async-signal-safe. framehop's `MustNotAllocateDuringUnwind` holds
//! the unwinder's cache to the same rule. What the handler calls outside
//! this file is as small: the signal buffer's `claim`/`publish`
//! (`buffer.rs`, atomics), `reclaim::enter`/`exit` (two atomic adds), the
//! label arena's `read_slot`/`stack_of` (`context/slot.rs`, atomic loads)
//! and the maps snapshot's lookups (`unwind.rs`, a binary search).
//!
//! Stack reads stay on the interrupted thread's live stack:
//!
//! - **A thread that registered** with the label arena (its first span
//!   enter, or the profiler's own threads) stored its own stack there,
//!   from `pthread_getattr_np` (`stack.rs`). When the interrupted stack
//!   pointer lies in it, reads are bounded by that range: exact, with no
//!   system call, whatever became of the memory around it.
//! - **Any other thread** (one that never called the crate, or running on
//!   a stack it switched to: a coroutine, a fiber) is bounded by the
//!   readable mapping of the maps snapshot that holds its stack pointer.
//!   That range can be stale: adjacent anonymous mappings merge, and a
//!   later `munmap` of a neighbour (a pool of stacks carved from one
//!   mapping) leaves a hole inside it. So only the page holding the stack
//!   pointer is trusted (the interrupted code was using it); each page
//!   above it is checked with `mincore` before its first read, and the
//!   bound stops at the first page that is no longer mapped.
//! - **Headroom**: the handler runs on the interrupted thread's own stack
//!   (no `SA_ONSTACK`), below the kernel's signal frame. It unwinds only if
//!   at least [`HANDLER_HEADROOM`] is left below its *own* frame (so the
//!   signal frame's size, larger with AVX-512 or AMX state, is accounted
//!   for), measured in the thread's own stack or else in the snapshot;
//!   otherwise it records the interrupted pc alone. A stack pointer in
//!   neither makes the manager read the maps again on its next scan.

use std::marker::PhantomData;
use std::ops::Range;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};

use framehop::{FrameAddress, UnwindRegsNative, Unwinder};

use super::buffer::{SampleBuffer, MAX_FRAMES};
use super::reclaim;
use super::unwind::{MapsSnapshot, NativeCache, UnwindState, STALE_MAPS};
use super::{Shared, ACTIVE, BUFFER, MAPS, SHARED, UNWIND};
use crate::context;

/// Proof that the code holding it runs inside the `SIGPROF` handler:
/// no allocation, no lock, no thread-local access, no system call but
/// those the module docs name. Only [`on_sigprof`] makes one (tests may
/// too, to call handler code directly); it is neither `Send` nor `Sync`,
/// so it cannot leave the handler's thread.
#[derive(Clone, Copy)]
pub(super) struct InHandler {
    _not_send: PhantomData<*const ()>,
}

impl InHandler {
    /// # Safety
    /// Only in the signal handler, in code held to its rules
    /// (`here.rs`), or in a test that calls handler code.
    pub(super) unsafe fn new() -> InHandler {
        InHandler {
            _not_send: PhantomData,
        }
    }

    /// A token for tests that call handler code outside a handler.
    #[cfg(test)]
    pub(super) fn for_test() -> InHandler {
        // SAFETY: the caller is a test; handler code is also safe to run
        // outside a handler.
        unsafe { InHandler::new() }
    }
}

/// The page size (`sysconf`), set when a sampler starts; 4 KiB until then.
pub(super) static PAGE_SIZE: AtomicU64 = AtomicU64::new(4096);

/// The start of the kernel's `siginfo_t` for POSIX timer signals
/// (`_sigfault` union member `_timer`), on 64-bit Linux.
#[repr(C)]
struct TimerSigInfo {
    si_signo: libc::c_int,
    si_errno: libc::c_int,
    si_code: libc::c_int,
    _pad: libc::c_int,
    si_tid: libc::c_int,
    si_overrun: libc::c_int,
    /// The timer's `sigev_value`: its thread's arena entry
    /// ([`context::SlotRef`]).
    si_value: u64,
}

/// The arena entry of the thread this signal's timer samples, from the
/// timer's value; "no entry" for a `SIGPROF` that no timer of ours sent.
/// Read from the siginfo, not from a thread local (see [`context`]).
fn slot_bits(info: *const libc::siginfo_t) -> u64 {
    if info.is_null() {
        return context::SlotRef::NONE_BITS;
    }
    // SAFETY: as in `weight`.
    let info = unsafe { &*(info as *const TimerSigInfo) };
    if info.si_code == libc::SI_TIMER {
        info.si_value
    } else {
        context::SlotRef::NONE_BITS
    }
}

/// `true` if a POSIX timer sent this signal.
fn from_timer(info: *const libc::siginfo_t) -> bool {
    // SAFETY: as in `weight`.
    !info.is_null() && unsafe { &*(info as *const TimerSigInfo) }.si_code == libc::SI_TIMER
}

/// How many timer periods this signal stands for. When expirations are
/// detected late (CPU timers are checked at scheduler ticks) the kernel
/// merges them and reports the extra ones as the overrun count; weighting by
/// it keeps sample counts proportional to CPU time.
fn weight(info: *const libc::siginfo_t) -> u32 {
    if info.is_null() {
        return 1;
    }
    // SAFETY: the kernel passes a full siginfo_t (128 bytes), larger than
    // TimerSigInfo; for SI_TIMER the `_timer` member is the active one.
    let info = unsafe { &*(info as *const TimerSigInfo) };
    if info.si_code == libc::SI_TIMER && info.si_overrun > 0 {
        (info.si_overrun as u32).saturating_add(1).min(1000)
    } else {
        1
    }
}

pub(super) extern "C" fn on_sigprof(
    _sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    if !from_timer(info) {
        // Not one of our timers: a stray `kill`, or the wake `stop` sends
        // the manager to end its sleep. Nothing to sample.
        return;
    }
    // SAFETY: this is the handler.
    let cx = unsafe { InHandler::new() };
    // SAFETY: __errno_location returns this thread's errno slot.
    let errno = unsafe { *libc::__errno_location() };
    let parity = reclaim::enter();
    if ACTIVE.load(Ordering::SeqCst) {
        let buffer = BUFFER.load(Ordering::SeqCst);
        if let (Some(shared), false) = (SHARED.get(), buffer.is_null()) {
            // SAFETY: a published buffer stays alive until a grace period
            // after it was unpublished, and we are counted in `reclaim`.
            take_sample(
                cx,
                shared,
                unsafe { &*buffer },
                ctx,
                weight(info),
                slot_bits(info),
            );
        }
    }
    reclaim::exit(parity);
    // SAFETY: as above; restoring errno keeps the interrupted code's view intact.
    unsafe { *libc::__errno_location() = errno };
}

/// Reads pc/sp/fp/lr from the signal context.
fn regs_from(ctx: *mut libc::c_void) -> Option<Regs> {
    if ctx.is_null() {
        return None;
    }
    // SAFETY: for an SA_SIGINFO handler the kernel passes a valid ucontext_t
    // describing the interrupted thread; we only read it.
    let uc = unsafe { &*(ctx as *const libc::ucontext_t) };
    #[cfg(target_arch = "x86_64")]
    {
        let g = &uc.uc_mcontext.gregs;
        Some(Regs {
            pc: g[libc::REG_RIP as usize] as u64,
            sp: g[libc::REG_RSP as usize] as u64,
            fp: g[libc::REG_RBP as usize] as u64,
            lr: 0,
            r11: g[libc::REG_R11 as usize] as u64,
        })
    }
    #[cfg(target_arch = "aarch64")]
    {
        let m = &uc.uc_mcontext;
        Some(Regs {
            pc: m.pc,
            sp: m.sp,
            fp: m.regs[29],
            lr: m.regs[30],
            r11: 0,
        })
    }
}

#[inline]
fn take_sample(
    cx: InHandler,
    shared: &Shared,
    buffer: &SampleBuffer,
    ctx: *mut libc::c_void,
    weight: u32,
    slot_bits: u64,
) {
    // A local of the handler's own frame: the stack left below it is what
    // the handler can use (on the interrupted thread's stack, below the
    // kernel's signal frame).
    let marker = 0u8;
    let here = std::hint::black_box(ptr::addr_of!(marker)) as u64;
    let labels = context::read_in_signal_handler(slot_bits);
    let Some(regs) = regs_from(ctx) else { return };
    let Some(mut claim) = buffer.claim() else {
        return; // counted as dropped by `claim`
    };
    let data = buffer.data(&mut claim);
    data.labels = labels;
    data.weight = weight;
    data.frames[0] = regs.pc;
    data.depth = 1;
    let unwinder = UNWIND.load(Ordering::SeqCst);
    let maps = MAPS.load(Ordering::SeqCst);
    if !unwinder.is_null() && !maps.is_null() {
        // SAFETY: the unwinder and maps are kept alive while a handler runs
        // (they are only freed after a grace period with none running).
        let (state, maps) = unsafe { (&*unwinder, &*maps) };
        let own = context::stack_in_signal_handler(slot_bits);
        match plan(cx, maps, own, regs.sp, here) {
            Plan::LeafOnly => {
                buffer.leaf_only.fetch_add(1, Ordering::Relaxed);
            }
            Plan::Unwind(bounds) => {
                if let Some(slot) = shared.caches.iter().find(|c| {
                    c.busy
                        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                }) {
                    // SAFETY: `busy` gives us exclusive use of this cache.
                    let cache = unsafe { &mut *slot.cache.get() };
                    data.depth = unwind(cx, state, bounds, cache, regs, &mut data.frames).max(1);
                    slot.busy.store(false, Ordering::Release);
                } else {
                    buffer.leaf_only.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    buffer.publish(claim);
}

/// Stack the handler needs below its own frame to unwind safely (measured
/// ~9 KiB in an optimised build, with margin; an unoptimised build's frames
/// are several times larger, so it asks for more). Checked by the caller
/// *before* calling [`unwind`], whose own frame holds the unwinder's state.
pub(crate) const HANDLER_HEADROOM: u64 = if cfg!(debug_assertions) {
    96 * 1024
} else {
    16 * 1024
};

/// What a handler may do with the interrupted stack.
pub(crate) enum Plan {
    /// Unwind it, reading the stack within these bounds.
    Unwind(StackBounds),
    /// Record the interrupted pc only: the stack pointer lies neither in
    /// the thread's own stack nor in a mapping of the snapshot (a stack
    /// mapped or grown since: the manager reads the maps again), or the
    /// handler's own stack has no headroom left.
    LeafOnly,
}

impl Plan {
    /// `true` for [`Plan::Unwind`].
    #[cfg(test)]
    pub(crate) fn unwinds(&self) -> bool {
        matches!(self, Plan::Unwind(_))
    }
}

/// Decides whether a handler whose own frame is at `here` may unwind a
/// stack whose pointer is `sp`, and within which bounds. `own` is the
/// stack the interrupted thread registered (see [`super::stack`]): when it
/// holds both `sp` and `here`, it bounds the reads and the headroom;
/// otherwise the maps snapshot does. Headroom is measured from the
/// handler's frame, not from `sp`: the kernel's signal frame sits between
/// the two, and it is several KiB (more with AVX-512 or AMX state). No
/// allocation.
#[inline]
pub(crate) fn plan(
    cx: InHandler,
    maps: &MapsSnapshot,
    own: Option<Range<u64>>,
    sp: u64,
    here: u64,
) -> Plan {
    if let Some(own) = own.filter(|r| r.contains(&sp) && r.contains(&here)) {
        if here - own.start < HANDLER_HEADROOM {
            return Plan::LeafOnly;
        }
        return Plan::Unwind(StackBounds::exact(cx, sp, own.end));
    }
    let Some(range) = maps.readable_range(sp) else {
        STALE_MAPS.fetch_add(1, Ordering::Relaxed);
        return Plan::LeafOnly;
    };
    if !maps.has_headroom(here, HANDLER_HEADROOM) {
        return Plan::LeafOnly;
    }
    Plan::Unwind(StackBounds::probed(cx, sp, range.end))
}

/// Registers taken from the interrupted context.
#[derive(Clone, Copy)]
pub(crate) struct Regs {
    pub(crate) pc: u64,
    pub(crate) sp: u64,
    pub(crate) fp: u64,
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub(crate) lr: u64,
    /// x86-64's `r11`: the bound of an inline stack-probe loop
    /// ([`probe_loop_entry`]).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) r11: u64,
}

/// Unwinds into `out`, leaf first (`out[0]` = pc, then return addresses).
/// Stack reads stay within `bounds` (from [`plan`]).
/// No allocation, no locks; no system call but `bounds`' page checks.
/// Never inlined, so that its large frame is only pushed after the caller
/// checked the stack headroom.
#[inline(never)]
pub(crate) fn unwind(
    _cx: InHandler,
    state: &UnwindState,
    mut bounds: StackBounds,
    cache: &mut NativeCache,
    regs: Regs,
    out: &mut [u64; MAX_FRAMES],
) -> usize {
    let mut read_stack = |addr: u64| -> Result<u64, ()> {
        if !bounds.readable(addr) {
            return Err(());
        }
        // SAFETY: `bounds` holds this thread's own stack (from the stack
        // pointer up), as the thread itself reported it or as checked page
        // by page against what is mapped now; the read is aligned. The
        // interrupted thread is the one running this handler, so its stack
        // cannot go away meanwhile.
        Ok(unsafe { std::ptr::read_volatile(addr as *const u64) })
    };
    // Inside an inline stack-probe loop the CFA is `r11`-based, which
    // framehop cannot follow: unwind from the loop's entry instead, where
    // it is `rsp`-based again (same frame, same caller).
    #[cfg(target_arch = "x86_64")]
    let (pc, sp) = probe_loop_entry(_cx, regs.pc, regs.sp, regs.r11).unwrap_or((regs.pc, regs.sp));
    #[cfg(target_arch = "aarch64")]
    let pc = regs.pc;
    #[cfg(target_arch = "x86_64")]
    let unwind_regs = UnwindRegsNative::new(pc, sp, regs.fp);
    // Return addresses may carry pointer-authentication bits (PAC): strip
    // everything above the highest known code address.
    #[cfg(target_arch = "aarch64")]
    let unwind_regs = UnwindRegsNative::new_with_ptr_auth_mask(
        framehop::aarch64::PtrAuthMask::from_max_known_address(
            state.unwinder.max_known_code_address(),
        ),
        regs.lr,
        regs.sp,
        regs.fp,
    );
    let mut frames = state
        .unwinder
        .iter_frames(pc, unwind_regs, cache, &mut read_stack);
    let mut n = 0;
    while n < MAX_FRAMES {
        match frames.next() {
            Ok(Some(frame)) => {
                let address = match frame {
                    FrameAddress::InstructionPointer(a) => a,
                    FrameAddress::ReturnAddress(a) => a.get(),
                };
                out[n] = address;
                n += 1;
            }
            _ => break,
        }
    }
    n
}

/// LLVM's inline stack probe on x86-64, for frames of 64 KiB or more
/// (`probe-stack=inline-asm`, Rust's default): the prologue saves the
/// stack pointer's target in `r11`, then touches one page at a time:
///
/// ```text
/// M:  mov  %rsp, %r11              49 89 e3
///     sub  $size, %r11             49 81 eb <size: u32>
/// L:  sub  $0x1000, %rsp           48 81 ec 00 10 00 00
///     movq $0, (%rsp)              48 c7 04 24 00 00 00 00
///     cmp  %r11, %rsp              4c 39 dc
///     jne  L                       75 ec
/// ```
///
/// From `L` until the frame is set up, the CFI gives the CFA as
/// `r11 + offset`, and framehop follows only `rsp`/`rbp`-based rules, so a
/// sample there would end at its leaf. At `M` the CFA is `rsp`-based and
/// `rsp` was `r11 + size`: for a `pc` in the loop (or just after it), the
/// same frame is unwound from `(M, r11 + size)`. The code is matched
/// byte for byte, and only within `pc`'s own page (mapped: the thread was
/// running it). `None` if `pc` is not in such a loop.
#[cfg(target_arch = "x86_64")]
pub(crate) fn probe_loop_entry(_cx: InHandler, pc: u64, sp: u64, r11: u64) -> Option<(u64, u64)> {
    // In the loop `rsp` steps down a page at a time until it equals `r11`:
    // this rules out nearly every other sample before a code byte is read.
    let gap = sp.checked_sub(r11)?;
    if gap % 4096 != 0 || gap > u64::from(u32::MAX) {
        return None;
    }
    const PREFIX: usize = 10; // `mov` and `sub` before `L`
    const LOOP: usize = 20; // `L` up to the instruction after `jne`
    let page = PAGE_SIZE.load(Ordering::Relaxed).max(4096);
    let page_start = pc & !(page - 1);
    let page_end = page_start.checked_add(page)?;
    let byte = |addr: u64| -> u8 {
        // SAFETY: callers pass only addresses in `pc`'s page, which is
        // mapped and readable (x86-64 has no execute-only pages without
        // protection keys, which code segments do not use): the
        // interrupted thread was executing from it.
        unsafe { ptr::read_volatile(addr as *const u8) }
    };
    // `pc` lies anywhere from `L` to the instruction after `jne`.
    for back in 0..=LOOP as u64 {
        let Some(l) = pc.checked_sub(back) else { break };
        let Some(m) = l.checked_sub(PREFIX as u64) else {
            break;
        };
        if m < page_start || l + LOOP as u64 > page_end {
            continue;
        }
        if !matches_probe_loop(|i| byte(m + i as u64)) {
            continue;
        }
        let size = u32::from_le_bytes([byte(m + 6), byte(m + 7), byte(m + 8), byte(m + 9)]);
        let sp = r11.checked_add(u64::from(size))?;
        return Some((m, sp));
    }
    None
}

/// Whether the 30 bytes that `at(0..30)` gives are the probe loop of
/// [`probe_loop_entry`] (its size immediate left out).
#[cfg(target_arch = "x86_64")]
fn matches_probe_loop(at: impl Fn(usize) -> u8) -> bool {
    // `None`: the size immediate, any value.
    const CODE: [Option<u8>; 30] = {
        let mut code = [None; 30];
        let bytes: [(usize, u8); 26] = [
            (0, 0x49),
            (1, 0x89),
            (2, 0xe3),
            (3, 0x49),
            (4, 0x81),
            (5, 0xeb),
            (10, 0x48),
            (11, 0x81),
            (12, 0xec),
            (13, 0x00),
            (14, 0x10),
            (15, 0x00),
            (16, 0x00),
            (17, 0x48),
            (18, 0xc7),
            (19, 0x04),
            (20, 0x24),
            (21, 0x00),
            (22, 0x00),
            (23, 0x00),
            (24, 0x00),
            (25, 0x4c),
            (26, 0x39),
            (27, 0xdc),
            (28, 0x75),
            (29, 0xec),
        ];
        let mut i = 0;
        while i < bytes.len() {
            code[bytes[i].0] = Some(bytes[i].1);
            i += 1;
        }
        code
    };
    CODE.iter()
        .enumerate()
        .all(|(i, b)| b.is_none_or(|b| at(i) == b))
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
    cx: InHandler,
}

impl StackBounds {
    /// The thread's own stack, from `sp` up to its top: nothing to check.
    pub(crate) fn exact(cx: InHandler, sp: u64, top: u64) -> StackBounds {
        StackBounds {
            lo: sp,
            hi: top,
            checked_to: u64::MAX,
            cx,
        }
    }

    /// From `sp` up to the end of a snapshot's mapping, which may have
    /// shrunk since: only `sp`'s page is trusted.
    pub(crate) fn probed(cx: InHandler, sp: u64, end: u64) -> StackBounds {
        let page = PAGE_SIZE.load(Ordering::Relaxed);
        StackBounds {
            lo: sp,
            hi: end,
            checked_to: (sp & !(page - 1)).saturating_add(page),
            cx,
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
        if pages_mapped(self.cx, self.checked_to, want, page) {
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
fn pages_mapped(_cx: InHandler, from: u64, to: u64, page: u64) -> bool {
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
mod tests;
