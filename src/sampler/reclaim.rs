//! Freeing what the signal handler may still read, with grace periods that
//! cannot starve (userspace RCU's two-counter scheme).
//!
//! The manager publishes the unwinder and the maps snapshot through atomic
//! pointers and retires the old ones. A handler may still be reading a
//! retired object, so it is freed only after a *grace period*: once every
//! handler that could have loaded its pointer has returned.
//!
//! With one global count of running handlers, a grace period ends only when
//! that count reads 0, which may never happen in a process with hundreds of
//! busy threads (a handler preempted mid-flight keeps it above 0 for a whole
//! scheduling round, and new ones keep starting). Here handlers count
//! themselves in one of two counters, chosen by the parity of a global
//! epoch read on entry. A grace period flips the epoch and waits for the
//! *previous* parity's counter to drain, then flips again and waits for the
//! other one. New handlers always enter the counter not being waited for,
//! so each wait only covers handlers already running: it is bounded by the
//! longest single handler (including time preempted), however busy the
//! process. Two flips are needed because a handler may read the epoch, be
//! preempted, and only then count itself under the stale parity.
//!
//! Handlers do one epoch load, one increment and one decrement (all
//! `SeqCst`); the manager polls the state machine once per scan, so it
//! never blocks.

use crate::sync::atomic::{fence, AtomicUsize, Ordering};

use super::unwind::{MapsSnapshot, UnwindState};

/// The grace-period epoch (handlers use its parity) and the handlers
/// running, by the parity they read on entry.
pub(crate) struct Grace {
    epoch: AtomicUsize,
    readers: [AtomicUsize; 2],
}

impl Grace {
    #[cfg(not(all(tracing_pyroscope_loom, test)))]
    const fn new() -> Grace {
        Grace {
            epoch: AtomicUsize::new(0),
            readers: [AtomicUsize::new(0), AtomicUsize::new(0)],
        }
    }

    /// Loom's atomics are not `const`.
    #[cfg(all(tracing_pyroscope_loom, test))]
    pub(crate) fn new() -> Grace {
        Grace {
            epoch: AtomicUsize::new(0),
            readers: [AtomicUsize::new(0), AtomicUsize::new(0)],
        }
    }

    /// A reader starts: returns the parity it counted itself under.
    #[inline(always)]
    pub(crate) fn enter(&self) -> usize {
        let parity = self.epoch.load(Ordering::SeqCst) & 1;
        self.readers[parity].fetch_add(1, Ordering::SeqCst);
        // The count is visible before this reader loads any published
        // pointer: pairs with the fence in `flip` (store-load ordering,
        // which SeqCst accesses alone give too; the fences state it so
        // that loom, which models SeqCst fences but not SeqCst accesses
        // fully, checks it). A locked add is already a full barrier on
        // x86-64.
        fence(Ordering::SeqCst);
        parity
    }

    /// A reader is done.
    #[inline(always)]
    pub(crate) fn exit(&self, parity: usize) {
        self.readers[parity & 1].fetch_sub(1, Ordering::SeqCst);
    }

    /// Starts a new epoch; returns the parity that was current.
    pub(crate) fn flip(&self) -> usize {
        let parity = self.epoch.fetch_add(1, Ordering::SeqCst) & 1;
        // Pointers unpublished before the flip are visible before the
        // counts are read: pairs with the fence in `enter`.
        fence(Ordering::SeqCst);
        parity
    }

    /// `true` once no reader counted under `parity` runs.
    pub(crate) fn drained(&self, parity: usize) -> bool {
        self.readers[parity & 1].load(Ordering::SeqCst) == 0
    }

    fn reset(&self) {
        self.readers[0].store(0, Ordering::SeqCst);
        self.readers[1].store(0, Ordering::SeqCst);
    }
}

/// The handlers' grace-period state.
#[cfg(not(all(tracing_pyroscope_loom, test)))]
static GRACE: Grace = Grace::new();
#[cfg(all(tracing_pyroscope_loom, test))]
loom::lazy_static! {
    static ref GRACE: Grace = Grace::new();
}

/// Called first thing in the handler; pass the result to [`exit`].
/// Async-signal-safe: atomics only.
#[inline(always)]
pub(crate) fn enter() -> usize {
    GRACE.enter()
}

/// Called last thing in the handler.
#[inline(always)]
pub(crate) fn exit(parity: usize) {
    GRACE.exit(parity)
}

/// `true` if no handler is counted under either parity.
#[cfg(test)]
pub(crate) fn quiescent() -> bool {
    GRACE.drained(0) && GRACE.drained(1)
}

/// In a forked child: handlers counted as running were on threads that do
/// not exist there. Atomics only.
pub(crate) fn reset_after_fork() {
    GRACE.reset();
}

/// Starts a new epoch; returns the parity that was current.
fn flip() -> usize {
    GRACE.flip()
}

fn drained(parity: usize) -> bool {
    GRACE.drained(parity)
}

/// One object a handler may still be reading.
#[allow(dead_code)] // held only to be dropped after the grace period
pub(crate) enum Retiree {
    Unwinder(Box<UnwindState>),
    Maps(Box<MapsSnapshot>),
    /// A signal buffer; the sampler keeps its own reference for draining.
    Buffer(std::sync::Arc<super::buffer::SampleBuffer>),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Phase {
    /// No grace period running.
    #[default]
    Idle,
    /// Flipped once; waiting for handlers of this parity.
    First(usize),
    /// Flipped twice; waiting for handlers of this parity.
    Second(usize),
}

/// Retired objects and the grace period that will free them. Owned by the
/// manager thread.
///
/// The boxes must stay boxes: a handler may still read them at their
/// published address until the grace period has passed.
#[derive(Default)]
pub(crate) struct Retired {
    /// Retired since the running grace period began: they wait for the next.
    pending: Vec<Retiree>,
    /// Freed when the running grace period ends.
    waiting: Vec<Retiree>,
    phase: Phase,
    /// Objects freed so far.
    freed: u64,
}

impl Retired {
    /// Adds an object unpublished by an atomic swap (`SeqCst`) before this
    /// call.
    pub(crate) fn push(&mut self, retiree: Retiree) {
        self.pending.push(retiree);
    }

    /// Objects retired and not yet freed.
    pub(crate) fn len(&self) -> usize {
        self.pending.len() + self.waiting.len()
    }

    /// Objects freed so far.
    pub(crate) fn freed(&self) -> u64 {
        self.freed
    }

    /// Advances the grace period as far as it can now, freeing what it
    /// can. Never blocks.
    pub(crate) fn collect(&mut self) {
        loop {
            match self.phase {
                Phase::Idle => {
                    if self.pending.is_empty() {
                        return;
                    }
                    std::mem::swap(&mut self.pending, &mut self.waiting);
                    self.phase = Phase::First(flip());
                }
                Phase::First(parity) => {
                    if !drained(parity) {
                        return;
                    }
                    self.phase = Phase::Second(flip());
                }
                Phase::Second(parity) => {
                    if !drained(parity) {
                        return;
                    }
                    self.freed += self.waiting.len() as u64;
                    self.waiting.clear();
                    self.phase = Phase::Idle;
                }
            }
        }
    }

    /// Runs grace periods until everything is freed, yielding between
    /// polls, for at most `limit`. Returns `false` if objects are left (the
    /// caller then leaks them rather than risk a use after free).
    pub(crate) fn collect_all(&mut self, limit: std::time::Duration) -> bool {
        let start = std::time::Instant::now();
        loop {
            self.collect();
            if self.len() == 0 {
                return true;
            }
            if start.elapsed() > limit {
                return false;
            }
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maps() -> Retiree {
        Retiree::Maps(Box::new(MapsSnapshot::from_ranges(Vec::new())))
    }

    #[test]
    fn a_grace_period_waits_for_handlers_already_running_and_no_others() {
        // No sampler runs in this process meanwhile: the counters are ours.
        let _serial = crate::sampler::tests::serial();
        let mut retired = Retired::default();
        retired.push(maps());
        // A handler that entered before the retirement keeps it alive...
        let early = enter();
        retired.collect();
        assert_eq!(retired.len(), 1);
        // ...while handlers that enter afterwards, and stay, do not: they
        // count under the new parity, which this period does not wait for
        // first; and once they are the only ones left, the period ends.
        let late = enter();
        assert_ne!(late, early, "new handlers use the other counter");
        retired.collect();
        assert_eq!(retired.len(), 1, "the early handler still runs");
        exit(early);
        retired.collect();
        // Phase two waits for `late`'s parity: `late` started after the
        // first flip, so it never saw the retired object, yet it is
        // counted; it is the only handler in the way and it ends.
        exit(late);
        retired.collect();
        assert_eq!(retired.len(), 0);
        assert_eq!(retired.freed(), 1);
    }

    #[test]
    fn a_stream_of_overlapping_handlers_cannot_starve_reclamation() {
        // Handlers overlap so that at every instant at least one runs (the
        // single-counter scheme never sees 0), yet every retiree is freed
        // after a bounded number of polls.
        let _serial = crate::sampler::tests::serial();
        let mut retired = Retired::default();
        let mut running = vec![enter()];
        for round in 0..100 {
            retired.push(maps());
            running.push(enter());
            // The oldest handler returns; the newest keeps running.
            exit(running.remove(0));
            retired.collect();
            assert!(
                retired.len() <= 4,
                "round {round}: {} retired",
                retired.len()
            );
        }
        for parity in running {
            exit(parity);
        }
        retired.collect();
        assert_eq!(retired.len(), 0);
    }
}

/// Models of the grace period under loom: every interleaving (within the
/// preemption bound) of a handler reading a published object and the
/// manager retiring it. Run by `scripts/test.sh`.
#[cfg(all(tracing_pyroscope_loom, test))]
mod loom_models {
    use super::Grace;
    use crate::sync::atomic::{AtomicUsize, Ordering};
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;

    #[test]
    fn loom_a_retired_object_is_freed_only_after_its_readers_left() {
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            let grace = Arc::new(Grace::new());
            // Version 1 is published; the manager retires it for 2.
            let published = Arc::new(AtomicUsize::new(1));
            let first = Arc::new(UnsafeCell::new(1u64));
            let handler = {
                let (grace, published, first) = (grace.clone(), published.clone(), first.clone());
                loom::thread::spawn(move || {
                    let parity = grace.enter();
                    if published.load(Ordering::SeqCst) == 1 {
                        // SAFETY (model): loom checks that no free races it.
                        let value = first.with(|v| unsafe { *v });
                        assert_eq!(value, 1, "read a freed object");
                    }
                    grace.exit(parity);
                })
            };
            published.store(2, Ordering::SeqCst);
            // The manager's grace period: two flips, each waiting for the
            // readers of the parity it ended.
            for _ in 0..2 {
                let parity = grace.flip();
                while !grace.drained(parity) {
                    loom::thread::yield_now();
                }
            }
            // Freed: loom reports a write concurrent with a read.
            first.with_mut(|v| unsafe { *v = 0 });
            handler.join().unwrap();
        });
    }
}
