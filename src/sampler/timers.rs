//! Per-thread CPU-time timers, as Go's runtime does since 1.18.
//!
//! For every thread of the process, the manager creates a POSIX timer on
//! that thread's own CPU-time clock (clock id derived from its tid) whose
//! expiry sends `SIGPROF` to exactly that thread (`SIGEV_THREAD_ID`). A busy
//! thread is thus sampled in proportion to its own CPU time, however many
//! threads are busy; a process-wide `setitimer(ITIMER_PROF)` would instead
//! deliver to whichever thread happens to run and caps the total rate.
//!
//! Threads are discovered by listing `/proc/self/task` every scan period, so
//! threads the crate did not create, and threads started later, are covered.
//! A thread that lives shorter than one scan period may go unsampled.
//! Timers of exited threads are deleted on the next scan. A recycled tid is
//! detected because the old timer reads as disarmed for several scans.
//!
//! Each timer's `sigev_value` names its thread's label entry in the
//! context arena ([`context::SlotRef`]), so the handler finds the thread's
//! labels without a thread-local access. A timer whose entry stopped being
//! its thread's (released at thread exit, the tid reused) is created again
//! with the current entry on the next scan; entries of threads that exited
//! are released here.

use std::collections::HashMap;

use crate::context::{self, SlotRef};

/// One armed timer.
struct ThreadTimer {
    id: libc::timer_t,
    /// Consecutive scans that found the timer disarmed.
    idle_scans: u8,
    /// The thread's label entry the timer's value names (`None`: the
    /// arena was full).
    slot: Option<SlotRef>,
}

/// The manager's timers, keyed by tid.
pub(crate) struct Timers {
    period_nanos: u64,
    timers: HashMap<libc::pid_t, ThreadTimer>,
    /// Errors creating timers (e.g. thread exited meanwhile, EAGAIN).
    pub(crate) create_errors: u64,
}

// SAFETY: timer_t is an opaque kernel handle (a pointer-sized id) that may be
// used from any thread of the process.
unsafe impl Send for Timers {}

/// CPU-time clock of thread `tid` (Linux's MAKE_THREAD_CPUCLOCK(tid, SCHED)).
fn thread_cpu_clock(tid: libc::pid_t) -> libc::clockid_t {
    ((!(tid as u32)) << 3 | 6) as libc::clockid_t
}

fn timespec(nanos: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (nanos / 1_000_000_000) as libc::time_t,
        tv_nsec: (nanos % 1_000_000_000) as libc::c_long,
    }
}

impl Timers {
    pub(crate) fn new(period_nanos: u64) -> Self {
        Timers {
            period_nanos,
            timers: HashMap::new(),
            create_errors: 0,
        }
    }

    /// Number of threads with a timer.
    pub(crate) fn len(&self) -> usize {
        self.timers.len()
    }

    /// Brings timers in line with the threads alive now. Returns true if
    /// timers were added. `before_arming` runs once, before the first new
    /// thread's timer is armed: the caller refreshes the maps snapshot there,
    /// so that the new threads' stacks are in it by their first sample.
    /// `check_recycled` also looks for timers whose thread died and whose
    /// tid was reused (one `timer_gettime` per thread, so not every scan).
    pub(crate) fn scan(&mut self, check_recycled: bool, before_arming: impl FnOnce()) -> bool {
        let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
            return false;
        };
        let mut alive: Vec<libc::pid_t> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        alive.sort_unstable();
        // Delete timers of threads that exited.
        let gone: Vec<libc::pid_t> = self
            .timers
            .keys()
            .copied()
            .filter(|tid| alive.binary_search(tid).is_err())
            .collect();
        for tid in gone {
            if let Some(t) = self.timers.remove(&tid) {
                delete(t.id);
                if let Some(slot) = t.slot {
                    context::release_slot(slot, tid as u32);
                }
            }
        }
        // Timers naming an entry that is no longer their thread's (it
        // exited and the tid was reused, or it released the entry while
        // exiting): created again below with the current one.
        let moved: Vec<libc::pid_t> = self
            .timers
            .iter()
            .filter(|(tid, t)| {
                t.slot
                    .is_some_and(|s| !context::slot_is_current(s, **tid as u32))
            })
            .map(|(tid, _)| *tid)
            .collect();
        for tid in moved {
            if let Some(t) = self.timers.remove(&tid) {
                delete(t.id);
            }
        }
        // Recycled tids: a timer whose thread died reads as disarmed.
        let mut stale = Vec::new();
        for (tid, t) in self.timers.iter_mut().filter(|_| check_recycled) {
            if armed(t.id) {
                t.idle_scans = 0;
            } else {
                t.idle_scans = t.idle_scans.saturating_add(1);
                if t.idle_scans >= 3 {
                    stale.push(*tid);
                }
            }
        }
        for tid in stale {
            if let Some(t) = self.timers.remove(&tid) {
                delete(t.id);
            }
        }
        if check_recycled {
            // Entries of exited threads nobody released (claimed here for
            // threads that never touched the crate, while no sampler ran).
            context::release_exited(|tid| alive.binary_search(&(tid as libc::pid_t)).is_ok());
        }
        alive.retain(|tid| !self.timers.contains_key(tid));
        if !alive.is_empty() {
            before_arming();
        }
        let mut added = false;
        for tid in alive {
            let slot = context::slot_for_tid(tid as u32);
            match self.create(tid, slot) {
                Some(id) => {
                    self.timers.insert(
                        tid,
                        ThreadTimer {
                            id,
                            idle_scans: 0,
                            slot,
                        },
                    );
                    added = true;
                }
                None => self.create_errors += 1,
            }
        }
        added
    }

    fn create(&self, tid: libc::pid_t, slot: Option<SlotRef>) -> Option<libc::timer_t> {
        // SAFETY: sigevent is plain data; zeroed is a valid initial value.
        let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
        sev.sigev_notify = libc::SIGEV_THREAD_ID;
        sev.sigev_signo = libc::SIGPROF;
        sev.sigev_notify_thread_id = tid;
        // Handed to the handler in `si_value`: the thread's label entry.
        let bits = slot.map_or(SlotRef::NONE_BITS, SlotRef::to_bits);
        sev.sigev_value = libc::sigval {
            sival_ptr: bits as usize as *mut libc::c_void,
        };
        let mut id: libc::timer_t = std::ptr::null_mut();
        // SAFETY: valid pointers to initialised sigevent and out-param.
        if unsafe { libc::timer_create(thread_cpu_clock(tid), &mut sev, &mut id) } != 0 {
            return None;
        }
        let spec = libc::itimerspec {
            it_interval: timespec(self.period_nanos),
            it_value: timespec(first_expiry(tid, self.period_nanos)),
        };
        // SAFETY: `id` was just created by timer_create.
        if unsafe { libc::timer_settime(id, 0, &spec, std::ptr::null_mut()) } != 0 {
            delete(id);
            return None;
        }
        Some(id)
    }

    /// Deletes every timer. After this no new SIGPROF is generated by us.
    pub(crate) fn clear(&mut self) {
        for (_, t) in self.timers.drain() {
            delete(t.id);
        }
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        self.clear();
    }
}

/// When a new timer first fires, in CPU nanoseconds of its thread: a
/// uniformly random point in (0, period]. A thread's first period then
/// yields a sample with probability (CPU used / period), so the expected
/// sample count is exact for every thread, even one that runs less than a
/// period after it was armed; a fixed first expiry of one period would
/// never sample such a thread. A splitmix64 of the tid and the clock, not
/// for anything but spreading expiries.
fn first_expiry(tid: libc::pid_t, period_nanos: u64) -> u64 {
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut z = clock ^ (tid as u64).rotate_left(32);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    1 + z % period_nanos.max(1)
}

fn armed(id: libc::timer_t) -> bool {
    // SAFETY: itimerspec is plain data.
    let mut cur: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: `id` is a live timer owned by us; `cur` is a valid out-param.
    let ok = unsafe { libc::timer_gettime(id, &mut cur) } == 0;
    ok && (cur.it_value.tv_sec != 0 || cur.it_value.tv_nsec != 0)
}

fn delete(id: libc::timer_t) {
    // SAFETY: `id` is a timer we created and have not deleted yet.
    unsafe {
        libc::timer_delete(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_expiries_spread_over_the_whole_period() {
        let period = 10_000_000;
        let mut quarters = [0u32; 4];
        for tid in 1..=4000 {
            let first = first_expiry(tid, period);
            assert!((1..=period).contains(&first), "{first}");
            quarters[((first - 1) * 4 / period) as usize] += 1;
        }
        // 1000 expected in each quarter; 800 is more than 12 sigma away.
        assert!(quarters.iter().all(|&q| q > 800), "{quarters:?}");
    }
}
