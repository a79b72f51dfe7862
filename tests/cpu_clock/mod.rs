//! Test helper: this thread's CPU time, the yardstick for expected samples,
//! and functions that burn it.
#![allow(dead_code)]

use std::time::Duration;

/// Nanoseconds of CPU time the calling thread has used.
pub fn thread_cpu_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time (ns) spent in the functions made by [`burners!`], summed over
/// threads: the ground truth the samples are counted against.
#[allow(dead_code)]
pub static BURN_CPU_NANOS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `burners!(name = salt, ...)` defines one `#[inline(never)]` function
/// per name, `fn name(nanos: u64) -> u64`, that burns `nanos` of the
/// calling thread's CPU time and adds what it used to [`BURN_CPU_NANOS`].
/// Each has its own salt, so that no two fold into one. `BURNERS` lists
/// them with their names.
#[allow(unused_macros)]
macro_rules! burners {
    ($($name:ident = $salt:expr),* $(,)?) => {
        $(
            #[inline(never)]
            fn $name(nanos: u64) -> u64 {
                let start = $crate::cpu_clock::thread_cpu_nanos();
                let end = start + nanos;
                let mut x: u64 = $salt;
                while $crate::cpu_clock::thread_cpu_nanos() < end {
                    for _ in 0..1000 {
                        x = ::std::hint::black_box(x.wrapping_mul(0x2545_F491_4F6C_DD1D).wrapping_add($salt));
                    }
                }
                $crate::cpu_clock::BURN_CPU_NANOS.fetch_add(
                    $crate::cpu_clock::thread_cpu_nanos() - start,
                    ::std::sync::atomic::Ordering::Relaxed,
                );
                x
            }
        )*
        /// Every burner, with its name.
        #[allow(dead_code)]
        const BURNERS: &[(&str, fn(u64) -> u64)] = &[$((stringify!($name), $name)),*];
    };
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
