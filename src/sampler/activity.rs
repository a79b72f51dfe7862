//! Cheap checks of what the process is doing, so that the manager thread
//! lists `/proc/self/task` only when it may find something to do.
//!
//! - **Thread count**: the link count of `/proc/self/task` is 2 plus the
//!   number of threads (Linux's `proc_task_getattr`). One `fstat` of a
//!   directory kept open, O(1) whatever the thread count; listing the
//!   directory costs in proportion to the threads.
//! - **Process CPU time**: one `clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`.
//!   A process whose threads use (almost) no CPU needs no new timers soon:
//!   a thread that never runs is never sampled anyway.
//!
//! The manager combines them (see `manage`): it scans when the thread
//! count changed, when the process used CPU since its last look, or when a
//! sample hit a stack outside the maps snapshot; otherwise it only backs off
//! its period, up to [`IDLE_SCAN_PERIOD`].

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

/// The longest the manager sleeps while the process is idle.
pub(crate) const IDLE_SCAN_PERIOD: Duration = Duration::from_secs(1);

/// The share of one core the process's other threads must use over a
/// manager period for the process to count as busy: 1%.
const BUSY_PER_MILLE: u64 = 10;

/// The manager's view of the process since its last look.
pub(crate) struct Activity {
    task_dir: Option<File>,
    /// Thread count at the last scan (`None`: unknown).
    threads: Option<u64>,
    /// Process CPU time (ns) and wall clock when the manager last finished
    /// its own work: what the process used since is other threads' work.
    cpu_mark: u64,
    wall_mark: Instant,
}

/// What changed since the last mark.
pub(crate) struct Look {
    /// The process used at least 1% of a core since the last mark.
    pub(crate) busy: bool,
    /// The thread count changed (or cannot be read).
    pub(crate) threads_changed: bool,
    threads: Option<u64>,
}

impl Activity {
    pub(crate) fn new() -> Activity {
        let task_dir = File::open("/proc/self/task").ok();
        let mut activity = Activity {
            task_dir,
            threads: None,
            cpu_mark: 0,
            wall_mark: Instant::now(),
        };
        activity.threads = activity.thread_count();
        activity.mark();
        activity
    }

    /// The number of threads in the process, from one `fstat`.
    fn thread_count(&self) -> Option<u64> {
        let nlink = self.task_dir.as_ref()?.metadata().ok()?.nlink();
        nlink.checked_sub(2)
    }

    /// Compares the process with the last mark. Cheap: two system calls.
    pub(crate) fn look(&self) -> Look {
        let threads = self.thread_count();
        let used = process_cpu_nanos().saturating_sub(self.cpu_mark);
        let wall = self.wall_mark.elapsed().as_nanos() as u64;
        Look {
            busy: used.saturating_mul(1000) >= wall.saturating_mul(BUSY_PER_MILLE),
            threads_changed: threads.is_none() || threads != self.threads,
            threads,
        }
    }

    /// Records that the threads were listed as of `look`.
    pub(crate) fn scanned(&mut self, look: &Look) {
        self.threads = look.threads;
    }

    /// Starts a new window: the manager's own work up to here is not
    /// counted as the process's.
    pub(crate) fn mark(&mut self) {
        self.cpu_mark = process_cpu_nanos();
        self.wall_mark = Instant::now();
    }
}

/// CPU time used by the whole process so far, in nanoseconds.
fn process_cpu_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; the clock id is a constant.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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
        let activity = Activity::new();
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
    fn cpu_used_since_the_mark_counts_as_busy() {
        let activity = Activity::new();
        let started = Instant::now();
        let mut x = 1u64;
        while !activity.look().busy && started.elapsed() < Duration::from_secs(20) {
            for i in 0..10_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        assert!(activity.look().busy, "burning CPU never counted as busy");
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
