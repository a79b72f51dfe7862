//! Shared test helpers. Each test binary uses a different subset.
#![allow(dead_code, unreachable_pub)]

pub mod pprof;
pub mod pyroscope_double;

use std::time::{Duration, Instant};

/// Polls `what` every 20 ms until it holds or `timeout` passes; returns
/// whether it held.
pub fn wait_until(timeout: Duration, mut what: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if what() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    what()
}

/// This thread's CPU time.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Burns `cpu` of this thread's CPU time. Callers wrap it in an
/// `#[inline(never)]` function of their own, named for the stacks they look
/// for, and pass its result through `black_box` (so that the wrapper's frame
/// stays: no tail call).
#[inline(never)]
pub fn spin_for(cpu: Duration) -> u64 {
    let end = thread_cpu() + cpu;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while thread_cpu() < end {
        for i in 0..1000 {
            x = std::hint::black_box(x ^ i)
                .wrapping_mul(0x2545_f491_4f6c_dd1d)
                .rotate_left(17);
        }
    }
    x
}
