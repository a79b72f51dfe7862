//! Cheap checks of what the process is doing, so that the manager thread
//! lists `/proc/self/task` only when it may find something to do.
//!
//! - **Samples taken**: one atomic load. Any sample since the last look
//!   means some armed thread uses CPU.
//! - **Thread count**: the link count of `/proc/self/task` is 2 plus the
//!   number of threads (Linux's `proc_task_getattr`). One `fstat` of a
//!   directory kept open, O(1) whatever the thread count; listing the
//!   directory costs in proportion to the threads. A new thread changes the
//!   count unless another exited in the same period.
//! - **Process CPU time**, for that last case (a new, unarmed thread that
//!   took an exited one's place and runs while no armed thread does):
//!   `clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`, minus the manager's own
//!   thread's. The kernel sums it over every thread (about 0.15 µs each),
//!   so it is read only when no sample came in, and every
//!   `threads / 32` looks (at most 16) in processes with many threads.
//!
//! The manager combines them (see `manage`): it lists the threads when
//! their count changed, when a sample hit a stack outside the maps
//! snapshot, and, while the process uses CPU, every half second (recycled
//! tids, a thread that replaced one that exited in the same period). It
//! looks every scan period while samples come in; after [`IDLE_LOOKS`]
//! idle looks it sleeps until the process has used [`IDLE_WAKE_CPU`]
//! ([`sleep_until_cpu_used`]): an idle process does not wake it at all, and
//! a new thread that runs wakes it within that much CPU time plus a
//! scheduler tick (one that only sleeps needs no timer yet). Stopping a
//! manager asleep on CPU time takes that much CPU ([`burn_until`]). Where
//! the kernel refuses such sleeps it backs off instead, up to
//! [`IDLE_SCAN_PERIOD`].

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

/// The longest the manager sleeps while the process is idle, where the
/// kernel refuses sleeps on the process CPU clock.
pub(crate) const IDLE_SCAN_PERIOD: Duration = Duration::from_secs(1);

/// The share of one core the process's other threads must use over a
/// window for the process to count as busy: 1%.
const BUSY_PER_MILLE: u64 = 10;

/// The manager's view of the process since its last look.
pub(crate) struct Activity {
    task_dir: Option<File>,
    /// Thread count at the last scan (`None`: unknown).
    threads: Option<u64>,
    /// Samples taken at the last look.
    taken: u64,
    /// Looks since the process CPU time was last read.
    looks: u64,
    /// Process and manager-thread CPU time (ns) and the wall clock at the
    /// last read: the difference since is other threads' work.
    cpu_mark: u64,
    own_mark: u64,
    wall_mark: Instant,
}

/// What changed since the last look.
pub(crate) struct Look {
    /// Samples came in, or the process used at least 1% of a core since
    /// the process CPU time was last read.
    pub(crate) busy: bool,
    /// The thread count changed (or cannot be read).
    pub(crate) threads_changed: bool,
    threads: Option<u64>,
}

impl Activity {
    pub(crate) fn new(taken: u64) -> Activity {
        let task_dir = File::open("/proc/self/task").ok();
        // The thread count is unknown until the first scan: threads
        // started between the sampler's own scan and this thread's start
        // must not count as seen.
        Activity {
            task_dir,
            threads: None,
            taken,
            looks: 0,
            cpu_mark: process_cpu_nanos(),
            own_mark: thread_cpu_nanos(),
            wall_mark: Instant::now(),
        }
    }

    /// The number of threads in the process, from one `fstat`.
    fn thread_count(&self) -> Option<u64> {
        let nlink = self.task_dir.as_ref()?.metadata().ok()?.nlink();
        nlink.checked_sub(2)
    }

    /// Compares the process with the last look; `taken` is the sampler's
    /// count of samples taken so far. One system call, three when the
    /// process CPU time is due.
    pub(crate) fn look(&mut self, taken: u64) -> Look {
        let threads = self.thread_count();
        let sampled = taken != self.taken;
        self.taken = taken;
        self.looks += 1;
        let every = threads.map_or(1, |t| (t / 32).clamp(1, 16));
        let mut busy = sampled;
        if !sampled && self.looks >= every {
            self.looks = 0;
            let (cpu, own, now) = (process_cpu_nanos(), thread_cpu_nanos(), Instant::now());
            let used = cpu
                .saturating_sub(self.cpu_mark)
                .saturating_sub(own.saturating_sub(self.own_mark));
            let wall = now.saturating_duration_since(self.wall_mark).as_nanos() as u64;
            busy = used.saturating_mul(1000) >= wall.saturating_mul(BUSY_PER_MILLE);
            (self.cpu_mark, self.own_mark, self.wall_mark) = (cpu, own, now);
        }
        Look {
            busy,
            threads_changed: threads.is_none() || threads != self.threads,
            threads,
        }
    }

    /// Records that the threads were listed as of `look`.
    pub(crate) fn scanned(&mut self, look: &Look) {
        self.threads = look.threads;
    }
}

/// CPU time of `clock`, in nanoseconds (0 if it cannot be read).
fn cpu_nanos(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; the clock id is a constant.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time used by the whole process so far.
fn process_cpu_nanos() -> u64 {
    cpu_nanos(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// CPU time used by the calling thread so far.
fn thread_cpu_nanos() -> u64 {
    cpu_nanos(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// Consecutive idle looks (at the busy period) before the manager sleeps
/// until the process uses CPU.
pub(crate) const IDLE_LOOKS: u32 = 3;

/// Process CPU time the process uses before an idle manager wakes.
pub(crate) const IDLE_WAKE_CPU: Duration = Duration::from_millis(1);

/// Sleeps until the process (its other threads: this one sleeps) has used
/// `cpu` more CPU time, however long that takes: no wake at all while the
/// process is idle. `clock_nanosleep` on `CLOCK_PROCESS_CPUTIME_ID` (Linux
/// arms a process-wide CPU timer for the sleep; a thread's own CPU clock
/// is refused). Returns `false` if the kernel refuses it, `true` when the
/// CPU time was used or a signal interrupted the sleep.
pub(crate) fn sleep_until_cpu_used(cpu: Duration) -> bool {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; the clock id is a constant.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) } != 0 {
        return false;
    }
    let target = now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64 + cpu.as_nanos() as u64;
    let target = libc::timespec {
        tv_sec: (target / 1_000_000_000) as libc::time_t,
        tv_nsec: (target % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: a valid timespec; no remaining-time out-pointer (absolute).
    let rc = unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_PROCESS_CPUTIME_ID,
            libc::TIMER_ABSTIME,
            &target,
            std::ptr::null_mut(),
        )
    };
    rc == 0 || rc == libc::EINTR
}

/// Makes the process use CPU time until `done` (about 50 µs at a time):
/// wakes a manager in [`sleep_until_cpu_used`] that has to stop.
pub(crate) fn burn_until(done: impl Fn() -> bool) {
    let mut x = 1u64;
    while !done() {
        let start = Instant::now();
        while start.elapsed() < Duration::from_micros(50) {
            for i in 0..64u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
    }
}

/// The next period while the process stays idle: doubled, at most
/// [`IDLE_SCAN_PERIOD`].
pub(crate) fn back_off(period: Duration) -> Duration {
    (period * 2).min(IDLE_SCAN_PERIOD)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Threads listed in `/proc/self/task`.
    fn listed() -> u64 {
        std::fs::read_dir("/proc/self/task")
            .expect("/proc/self/task")
            .count() as u64
    }

    #[test]
    fn the_thread_count_matches_the_task_listing() {
        let activity = Activity::new(0);
        let (release, hold) = mpsc::channel::<()>();
        let hold = std::sync::Arc::new(std::sync::Mutex::new(hold));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let hold = hold.clone();
                std::thread::spawn(move || {
                    let _ = hold.lock().map(|h| h.recv());
                })
            })
            .collect();
        // Other tests start and end threads meanwhile: compare with a
        // listing that did not move around the count.
        let mut matched = false;
        for _ in 0..1000 {
            let before = listed();
            let count = activity.thread_count().expect("count");
            if before == listed() {
                assert_eq!(count, before);
                assert!(count >= 17, "16 threads are alive: {count}");
                matched = true;
                break;
            }
        }
        assert!(matched, "the thread count never held still");
        drop(release);
        for t in threads {
            t.join().expect("join");
        }
    }

    #[test]
    fn cpu_used_by_another_thread_or_samples_count_as_busy() {
        let mut activity = Activity::new(0);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let burner = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 1u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for i in 0..10_000u64 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                    }
                }
            })
        };
        let started = Instant::now();
        let mut busy = false;
        // The manager's own CPU is not counted: this thread only sleeps.
        while !busy && started.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(20));
            busy = activity.look(0).busy;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        burner.join().expect("join");
        assert!(busy, "another thread burning CPU never counted as busy");
        assert!(activity.look(1).busy, "a new sample counts as busy");
    }

    #[test]
    fn a_sleep_on_process_cpu_time_ends_when_another_thread_uses_it() {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sleeper = {
            let done = done.clone();
            std::thread::spawn(move || {
                let before = process_cpu_nanos();
                let ok = sleep_until_cpu_used(Duration::from_millis(5));
                let used = process_cpu_nanos() - before;
                done.store(true, std::sync::atomic::Ordering::SeqCst);
                (ok, used)
            })
        };
        burn_until(|| done.load(std::sync::atomic::Ordering::SeqCst));
        let (ok, used) = sleeper.join().expect("join");
        assert!(ok, "clock_nanosleep refused");
        assert!(used >= 5_000_000, "woke after {used} ns of process CPU");
    }

    #[test]
    fn the_first_look_asks_for_a_scan_and_later_ones_only_on_a_change() {
        let mut activity = Activity::new(0);
        let first = activity.look(0);
        assert!(first.threads_changed, "threads started before the manager");
        activity.scanned(&first);
        // Other tests may start or end threads meanwhile: only a look that
        // sees the scanned count must report no change.
        let again = activity.look(0);
        if again.threads == first.threads {
            assert!(!again.threads_changed);
        } else {
            assert!(again.threads_changed);
        }
    }

    #[test]
    fn back_off_doubles_up_to_the_idle_period() {
        assert_eq!(
            back_off(Duration::from_millis(20)),
            Duration::from_millis(40)
        );
        assert_eq!(back_off(Duration::from_millis(800)), IDLE_SCAN_PERIOD);
        assert_eq!(back_off(IDLE_SCAN_PERIOD), IDLE_SCAN_PERIOD);
    }
}
