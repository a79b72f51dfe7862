//! Small synchronisation helpers shared by the background threads.
//!
//! - [`lock`]: a `Mutex` lock that ignores poisoning. A panic on another
//!   thread must never turn into a second panic (or a lost flush) here: the
//!   data behind our locks stays consistent between statements, so the
//!   poisoned value is still good.
//! - [`StopSignal`]: a flag plus a condition variable, for a thread that
//!   works on a period and must wake at once when asked to stop.
//!
//! Neither is for hot paths: the layer's enter/exit and the signal handler
//! take no locks.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The atomics of the lock-free protocols (the label slots, the
/// reclamation grace periods): std's, or loom's when the loom models run
/// (`cfg(tracing_pyroscope_loom)`, `scripts/test.sh`), so the models check
/// the real code.
pub(crate) mod atomic {
    #[cfg(all(tracing_pyroscope_loom, test))]
    pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, AtomicUsize};
    // Compiler fences order a thread against a signal handler on itself,
    // which loom does not model.
    pub(crate) use std::sync::atomic::{compiler_fence, Ordering};
    #[cfg(not(all(tracing_pyroscope_loom, test)))]
    pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, AtomicUsize};

    /// A retry loop's pause (lets loom run the other threads).
    #[inline(always)]
    pub(crate) fn spin() {
        #[cfg(all(tracing_pyroscope_loom, test))]
        loom::thread::yield_now();
        #[cfg(not(all(tracing_pyroscope_loom, test)))]
        std::hint::spin_loop();
    }
}
use std::time::Duration;

/// Locks `mutex`, taking the value even if another thread panicked while
/// holding it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A stop flag that a periodic thread can sleep on.
///
/// Cloning shares the flag: one side calls [`stop`](StopSignal::stop), the
/// other loops on [`wait`](StopSignal::wait).
#[derive(Clone, Debug, Default)]
pub(crate) struct StopSignal(Arc<(Mutex<bool>, Condvar)>);

impl StopSignal {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Sets the flag and wakes every waiter.
    pub(crate) fn stop(&self) {
        let (flag, wake) = &*self.0;
        *lock(flag) = true;
        wake.notify_all();
    }

    /// `true` once [`stop`](StopSignal::stop) was called.
    #[allow(dead_code)] // part of the signal's interface; tests use it
    pub(crate) fn is_stopped(&self) -> bool {
        *lock(&self.0 .0)
    }

    /// Sleeps up to `timeout`, returning early when stopped. Returns `true`
    /// if the flag is set.
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        let (flag, wake) = &*self.0;
        let guard = lock(flag);
        match wake.wait_timeout_while(guard, timeout, |stopped| !*stopped) {
            Ok((guard, _)) => *guard,
            Err(poisoned) => *poisoned.into_inner().0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn lock_survives_a_poisoned_mutex() {
        let m = Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }

    #[test]
    fn stop_wakes_a_waiter_early() {
        let stop = StopSignal::new();
        assert!(!stop.wait(Duration::from_millis(1)));
        let waiter = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                let stopped = stop.wait(Duration::from_secs(30));
                (stopped, t.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        stop.stop();
        let (stopped, waited) = waiter.join().unwrap();
        assert!(stopped);
        assert!(waited < Duration::from_secs(10));
        assert!(stop.is_stopped());
    }
}
