//! What the profiler did: [`Stats`], a snapshot of shared atomic counters.
//!
//! Every part bumps its own counters (the sinks their uploads, writes and
//! drops, the layer its dropped span records, the collector the sampler's
//! figures), and [`ProfilerGuard::stats`](crate::ProfilerGuard::stats)
//! reads them all at once. Counters only ever count: bumping one is a
//! relaxed atomic add, cheap enough for any path except the signal handler,
//! which keeps its own.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters describing what the profiler did. See
/// [`ProfilerGuard::stats`](crate::ProfilerGuard::stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Samples taken by the signal handler.
    pub samples: u64,
    /// Samples lost before they reached a profile: the signal handler found
    /// the sample buffer full, or the collector's queue was at its bound.
    /// (A sample taken while every unwinder cache was busy is kept, cut to
    /// its leaf frame, and counted in `degraded_samples`.)
    pub dropped_samples: u64,
    /// Profiles encoded.
    pub profiles: u64,
    /// Profile files written to the profiles directory.
    pub files_written: u64,
    /// Errors writing files.
    pub write_errors: u64,
    /// Profiles accepted by the server.
    pub uploads: u64,
    /// Upload attempts that failed (each retry counts).
    pub upload_errors: u64,
    /// Profiles dropped before upload (queue full, gave up, shutdown).
    pub dropped_profiles: u64,
    /// Profiled root spans recorded in the local span index.
    pub spans_recorded: u64,
    /// Span records dropped (queue full).
    pub dropped_spans: u64,
    /// Threads currently sampled (each has its own CPU-time timer).
    pub sampled_threads: u64,
    /// Samples whose stack was cut to the leaf because every unwinder cache
    /// was busy, plus failures to arm a thread's timer.
    pub degraded_samples: u64,
    /// New span names past the cap (`PYROSCOPE_MAX_SPAN_NAMES`), labelled
    /// `span_name="other"` instead.
    pub span_name_overflows: u64,
    /// Another `SIGPROF` handler was installed over ours (another profiler?):
    /// sampling stopped then, and a warning named it. 0 or 1.
    pub sigprof_conflicts: u64,
    /// New span-label values past the per-key cap
    /// (`PYROSCOPE_SPAN_LABEL_VALUES`), sent as `other` instead.
    pub span_label_overflows: u64,
    /// Combinations of span name and span-label values refused by the
    /// series budget (`PYROSCOPE_MAX_SPAN_NAMES`); their samples keep the
    /// span name without span labels.
    pub label_set_overflows: u64,
    /// Samples that lost their `span_id` (and `trace_id`) label because
    /// their interval already had `PYROSCOPE_MAX_SPAN_IDS` distinct span
    /// ids; they keep their stacks and `span_name`.
    pub span_id_overflows: u64,
    /// Closed root spans without CPU samples left out of the local span
    /// index (only a bounded sample of them is written).
    pub spans_unindexed: u64,
    /// Files the profiles directory's size or age limit deleted.
    pub files_evicted: u64,
    /// Addresses named `object+offset` because no file had their loaded
    /// object's identity (the file at its path was replaced or rewritten
    /// since it was loaded), so its symbols were not read.
    pub symbol_mismatches: u64,
    /// Allocations sampled by [`Allocator`](crate::Allocator) (allocation
    /// profiling on).
    pub allocation_samples: u64,
    /// Allocation samples lost: the sample buffer was full, the interval
    /// had too many distinct stacks, or (heap profiling) the live-block
    /// table was full, so the block counts as allocated but not in use.
    pub dropped_allocation_samples: u64,
}

/// Shared atomic counters behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) samples: AtomicU64,
    pub(crate) dropped_samples: AtomicU64,
    pub(crate) profiles: AtomicU64,
    pub(crate) files_written: AtomicU64,
    pub(crate) write_errors: AtomicU64,
    pub(crate) uploads: AtomicU64,
    pub(crate) upload_errors: AtomicU64,
    pub(crate) dropped_profiles: AtomicU64,
    pub(crate) spans_recorded: AtomicU64,
    pub(crate) dropped_spans: AtomicU64,
    pub(crate) sampled_threads: AtomicU64,
    pub(crate) degraded_samples: AtomicU64,
    pub(crate) span_name_overflows: AtomicU64,
    pub(crate) sigprof_conflicts: AtomicU64,
    pub(crate) span_label_overflows: AtomicU64,
    pub(crate) label_set_overflows: AtomicU64,
    pub(crate) span_id_overflows: AtomicU64,
    pub(crate) spans_unindexed: AtomicU64,
    pub(crate) files_evicted: AtomicU64,
    pub(crate) symbol_mismatches: AtomicU64,
    pub(crate) allocation_samples: AtomicU64,
    pub(crate) dropped_allocation_samples: AtomicU64,
}

impl Counters {
    /// Adds one.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets a gauge, or a counter kept elsewhere.
    pub(crate) fn set(counter: &AtomicU64, value: u64) {
        counter.store(value, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub(crate) fn snapshot(&self) -> Stats {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            samples: r(&self.samples),
            dropped_samples: r(&self.dropped_samples),
            profiles: r(&self.profiles),
            files_written: r(&self.files_written),
            write_errors: r(&self.write_errors),
            uploads: r(&self.uploads),
            upload_errors: r(&self.upload_errors),
            dropped_profiles: r(&self.dropped_profiles),
            spans_recorded: r(&self.spans_recorded),
            dropped_spans: r(&self.dropped_spans),
            sampled_threads: r(&self.sampled_threads),
            degraded_samples: r(&self.degraded_samples),
            span_name_overflows: r(&self.span_name_overflows),
            sigprof_conflicts: r(&self.sigprof_conflicts),
            span_label_overflows: r(&self.span_label_overflows),
            label_set_overflows: r(&self.label_set_overflows),
            span_id_overflows: r(&self.span_id_overflows),
            spans_unindexed: r(&self.spans_unindexed),
            files_evicted: r(&self.files_evicted),
            symbol_mismatches: r(&self.symbol_mismatches),
            allocation_samples: r(&self.allocation_samples),
            dropped_allocation_samples: r(&self.dropped_allocation_samples),
        }
    }
}
