//! The collector: the background thread that turns samples into profiles.
//!
//! One thread, `pyroscope-collect`, loops every [`DRAIN_PERIOD`] while
//! samples come in (backing off, doubling, while none do: at idle it wakes
//! once per interval, or once per [`IDLE_DRAIN_PERIOD`] when a sink keeps a
//! span index): it drains the sampler's buffer into the interval's
//! [`ProfileBuilder`](crate::profile::ProfileBuilder), and at the end of
//! each upload interval symbolizes, encodes and hands the profiles to every
//! [`Sink`]. Closed profiled root spans arrive from the layer through a
//! bounded queue; when a sink keeps a span index the collector tallies CPU
//! samples per span and passes the finished records on: every span that got
//! samples, and of the others only a bounded sample
//! ([`UNSAMPLED_SPANS_PER_SEC`], the rest counted in
//! `Stats::spans_unindexed`), so that the index grows with the CPU
//! profiled, not with the span rate.
//!
//! [`ProfilerGuard`] owns the thread: dropping it stops the timers, takes
//! the last samples, flushes the partial interval and shuts the sinks down
//! within the shutdown timeout.
//!
//! The collector knows sinks only through the trait, and the sampler only
//! through `Sampler`'s drain and counters.

use std::collections::HashMap;
use std::fmt;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::export::span_index::ClosedSpan;
use crate::export::{Sink, SpanCost, SpanIndexRecord};
use crate::profile::ProfileKind;
use crate::stats::{Counters, Stats};
use crate::sync::StopSignal;

/// Stops profiling when dropped: stops the timers, encodes the last partial
/// interval and flushes it, within the shutdown timeout (default 5 s) even if
/// the server is down.
pub struct ProfilerGuard {
    running: Option<Running>,
    counters: Arc<Counters>,
}

struct Running {
    stop: StopSignal,
    collector: JoinHandle<()>,
    /// The process that started the profiler: after `fork()` the child has
    /// no collector thread to stop or join.
    pid: u32,
}

impl ProfilerGuard {
    /// A guard with nothing to stop (profiling off).
    pub(crate) fn inert() -> Self {
        ProfilerGuard {
            running: None,
            counters: Arc::new(Counters::default()),
        }
    }

    /// Counters so far: samples taken and dropped, profiles written and
    /// uploaded, upload errors and drops.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// `true` if profiling is running (not inert).
    pub fn is_active(&self) -> bool {
        self.running.is_some()
    }
}

impl fmt::Debug for ProfilerGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProfilerGuard")
            .field("active", &self.running.is_some())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Drop for ProfilerGuard {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            if running.pid != std::process::id() {
                // A forked child: the threads live only in the parent.
                std::mem::forget(running.collector);
                return;
            }
            running.stop.stop();
            let _ = running.collector.join();
        }
    }
}

/// How often the collector drains the sample buffer while samples come in.
/// What waits meanwhile is bounded and counted when dropped: the
/// sampler's aggregating queue, 64 Ki wall and allocation samples, and
/// 16 Ki closed root spans (four times what `examples/scale` closes in one
/// period at 10⁶ spans a minute). Each wake costs tens of microseconds on
/// a virtual machine, so four a second rather than ten.
const DRAIN_PERIOD: Duration = Duration::from_millis(250);
/// The longest the collector sleeps while nothing comes in, when a sink
/// keeps a span index (closed spans wait in a bounded queue); without one
/// it sleeps until the interval's end.
const IDLE_DRAIN_PERIOD: Duration = Duration::from_secs(1);
/// Most span ids whose CPU samples are tallied for the span index.
const MAX_TALLIED_SPANS: usize = 100_000;
/// Intervals a span's tally is kept after its last sample while its index
/// record has not come: spans that never close (or whose record was
/// dropped) must not fill the tally for good.
const TALLY_INTERVALS: u32 = 6;
/// Closed root spans without CPU samples indexed per second: a bounded
/// sample of them, so the report still shows that such spans ran.
pub(crate) const UNSAMPLED_SPANS_PER_SEC: f64 = 100.0;
/// The most unsampled spans indexed in one burst.
const UNSAMPLED_SPANS_BURST: f64 = 1000.0;
/// Headroom kept inside the shutdown timeout for the steps around the
/// sinks' flush.
const SHUTDOWN_MARGIN: Duration = Duration::from_millis(250);

/// CPU samples per root span id, kept until the span's index record comes
/// (one drain after the span closed). Bounded twice: at most
/// [`MAX_TALLIED_SPANS`] ids, and an id without a sample for
/// [`TALLY_INTERVALS`] intervals is forgotten, so spans that never close,
/// or whose record was dropped at the queue's bound, cannot fill it for good.
#[derive(Debug, Default)]
#[cfg_attr(not(tp_sampler), allow(dead_code))]
struct SpanTally {
    /// What each span got, and the interval of its last sample.
    spans: HashMap<u64, (SpanCost, u32)>,
    /// Intervals ended so far.
    interval: u32,
}

#[cfg_attr(not(tp_sampler), allow(dead_code))]
impl SpanTally {
    fn add(&mut self, span_id: u64, cost: SpanCost) {
        if self.spans.len() >= MAX_TALLIED_SPANS && !self.spans.contains_key(&span_id) {
            return;
        }
        let entry = self
            .spans
            .entry(span_id)
            .or_insert((SpanCost::default(), self.interval));
        entry.0.add(cost);
        entry.1 = self.interval;
    }

    /// The span's samples so far, forgetting it.
    fn take(&mut self, span_id: u64) -> SpanCost {
        self.spans
            .remove(&span_id)
            .map_or(SpanCost::default(), |(cost, _)| cost)
    }

    /// Ends an interval: forgets ids without a sample in the last
    /// [`TALLY_INTERVALS`].
    fn next_interval(&mut self) {
        self.interval = self.interval.wrapping_add(1);
        let now = self.interval;
        self.spans
            .retain(|_, (_, last)| now.wrapping_sub(*last) < TALLY_INTERVALS);
    }
}

/// `true` for a sample of an application thread inside a span: the
/// samples the wall profile covers.
#[cfg_attr(not(tp_sampler), allow(dead_code))]
fn in_span(labels: &crate::context::SpanLabels) -> bool {
    labels.profiler_thread().is_none() && (labels.span_id != 0 || labels.name_id != 0)
}

/// Upload intervals with samples of the application's threads, none of
/// them in a span, after which [`SpanlessWatch`] warns.
const SPANLESS_INTERVALS: u32 = 3;

/// The warning [`SpanlessWatch`] asks for.
const SPANLESS_WARNING: &str = "tracing-pyroscope: CPU samples in the first upload intervals, but none of them inside a span, so profiles carry no span labels. Likely causes: a global filter (such as RUST_LOG=info or an EnvFilter on the whole registry) set above the level of the spans, which hides them from every layer: tower-http's TraceLayer makes its request spans at DEBUG (filter the fmt layer alone, per layer, instead); or no code on the busy threads is instrumented (#[instrument], info_span!)";

/// Says once, and only when nothing does, that profiling found no span.
///
/// A global filter above the spans' level (`RUST_LOG=info` hides
/// tower-http's DEBUG request spans) or code without spans gives profiles
/// without span labels, and nothing else would say so. The watch counts
/// upload intervals whose application samples (the profiler's own threads
/// left out) include none in a span; after [`SPANLESS_INTERVALS`] of them
/// it asks for the warning, once. A sample in a span, or a closed span's
/// index record, ends the watch for good. It runs on the collector thread,
/// over drained samples: the signal handler and the layer do nothing for
/// it.
#[derive(Debug, Default)]
#[cfg_attr(not(tp_sampler), allow(dead_code))]
struct SpanlessWatch {
    /// Application samples in the current interval.
    samples: u64,
    /// Intervals ended with samples, none in a span.
    spanless: u32,
    /// A span was seen, or the warning was given: nothing more to say.
    done: bool,
}

#[cfg_attr(not(tp_sampler), allow(dead_code))]
impl SpanlessWatch {
    /// One drained sample with the labels the signal handler read.
    fn sample(&mut self, labels: &crate::context::SpanLabels) {
        if self.done || labels.profiler_thread().is_some() {
            return;
        }
        if labels.span_id != 0 || labels.name_id != 0 {
            self.span_seen();
        } else {
            self.samples += 1;
        }
    }

    /// A span exists (a sample in one, or a closed span's record).
    fn span_seen(&mut self) {
        self.done = true;
    }

    /// Ends an upload interval; `true` exactly once, when the warning is due.
    fn end_interval(&mut self) -> bool {
        let samples = std::mem::take(&mut self.samples);
        if self.done || samples == 0 {
            return false;
        }
        self.spanless += 1;
        self.done = self.spanless >= SPANLESS_INTERVALS;
        self.done
    }
}

#[cfg(tp_sampler)]
pub(crate) use linux::{start, Settings};

#[cfg(tp_sampler)]
mod linux {
    use std::sync::Mutex;

    use super::*;
    use crate::context::ProfilerThread;
    use crate::profile::{ProfileBuilder, Symbolizer};
    use crate::sampler::Sampler;
    use crate::sync::lock;

    /// The symbol cache outlives a profiler, so a restart in the same
    /// process does not load debug info again.
    static SYMBOLIZER: Mutex<Option<Symbolizer>> = Mutex::new(None);

    /// What the collector needs besides the sampler and the sinks.
    #[derive(Debug)]
    pub(crate) struct Settings {
        pub(crate) upload_interval: Duration,
        pub(crate) shutdown_timeout: Duration,
        /// `service_name`, for span index records.
        pub(crate) service: String,
        /// Static labels, for span index records.
        pub(crate) labels: Vec<(String, String)>,
        /// Closed profiled root spans from the layer.
        pub(crate) records: Receiver<ClosedSpan>,
        /// Distinct span ids one interval keeps.
        pub(crate) max_span_ids: usize,
        /// Collect the `wall` profile.
        pub(crate) wall_time: bool,
        /// Hands the layer's awaiting time of spans still open to the
        /// wall profile (called at each interval's end and at shutdown).
        pub(crate) flush_awaiting: Option<fn()>,
        /// Collect the `memory` profile, with this mean distance in bytes
        /// between sampled allocations (its period).
        pub(crate) memory_period: Option<u64>,
        /// The running allocation sampler, and whether the profile gets
        /// its allocations (else only the live heap).
        pub(crate) allocations: Option<(crate::alloc::AllocProfiler, bool)>,
    }

    /// One interval's profiles, one builder per kind collected.
    struct Builders {
        cpu: ProfileBuilder,
        wall: Option<ProfileBuilder>,
        memory: Option<ProfileBuilder>,
    }

    impl Builders {
        fn of(&mut self, kind: ProfileKind) -> Option<&mut ProfileBuilder> {
            match kind {
                ProfileKind::Cpu => Some(&mut self.cpu),
                ProfileKind::Wall => self.wall.as_mut(),
                ProfileKind::Memory => self.memory.as_mut(),
            }
        }

        fn span_id_overflows(&self) -> u64 {
            [Some(&self.cpu), self.wall.as_ref(), self.memory.as_ref()]
                .into_iter()
                .flatten()
                .map(ProfileBuilder::span_id_overflows)
                .sum()
        }
    }

    /// Starts the collector thread over a running sampler.
    pub(crate) fn start(
        sampler: Sampler,
        sinks: Vec<Box<dyn Sink>>,
        settings: Settings,
        counters: Arc<Counters>,
    ) -> std::io::Result<ProfilerGuard> {
        let index = sinks.iter().any(|s| s.keeps_span_index());
        let mut kinds = vec![ProfileKind::Cpu];
        if settings.wall_time {
            kinds.push(ProfileKind::Wall);
        }
        if settings.memory_period.is_some() {
            kinds.push(ProfileKind::Memory);
        }
        crate::profile::extra::set_kinds(&kinds);
        let collector = Collector {
            awaiting_frame: crate::profile::synthetic_frame(crate::profile::AWAITING_FRAME),
            period_nanos: sampler.period_nanos(),
            sampler,
            sinks,
            index,
            settings,
            counters: counters.clone(),
            pending: Vec::new(),
            span_samples: SpanTally::default(),
            base_extra_dropped: crate::profile::extra::dropped(),
            base_name_overflows: crate::context::name_overflows(),
            base_label_overflows: (
                crate::context::value_overflows(),
                crate::context::label_set_overflows(),
            ),
            id_overflows: 0,
            unsampled_budget: UNSAMPLED_SPANS_BURST,
            budget_clock: Instant::now(),
            spanless: SpanlessWatch::default(),
        };
        let stop = StopSignal::new();
        let handle = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("pyroscope-collect".into())
                .spawn(move || {
                    crate::context::mark_profiler_thread(ProfilerThread::Collector);
                    collector.run(stop)
                })?
        };
        Ok(ProfilerGuard {
            running: Some(Running {
                stop,
                collector: handle,
                pid: std::process::id(),
            }),
            counters,
        })
    }

    /// The background thread: drain → aggregate → encode → sinks.
    struct Collector {
        sampler: Sampler,
        period_nanos: u64,
        sinks: Vec<Box<dyn Sink>>,
        /// Some sink keeps a span index.
        index: bool,
        settings: Settings,
        counters: Arc<Counters>,
        /// Closed spans received last tick: their samples may still have
        /// been in the buffer, so they are indexed one drain later.
        pending: Vec<SpanIndexRecord>,
        /// CPU samples per span id, for the span index.
        span_samples: SpanTally,
        /// Span-name overflows (process-wide) when this run started.
        base_name_overflows: u64,
        /// Span-label value and label-set overflows before this run.
        base_label_overflows: (u64, u64),
        /// Span-id overflows of the intervals already emitted.
        id_overflows: u64,
        /// Unsampled spans that may still be indexed (a token bucket).
        unsampled_budget: f64,
        budget_clock: Instant,
        /// Whether any span was ever seen, for the one no-span warning.
        spanless: SpanlessWatch,
        /// The frame value of [`AWAITING_FRAME`](crate::profile::AWAITING_FRAME).
        awaiting_frame: u64,
        /// Extra samples dropped (process-wide) when this run started.
        base_extra_dropped: u64,
    }

    impl Collector {
        fn run(mut self, stop: StopSignal) {
            // Symbols resolved by an earlier profiler in this process are kept.
            let mut symbolizer = lock(&SYMBOLIZER)
                .take()
                .unwrap_or_else(|| Symbolizer::with_images(crate::sampler::loaded_images));
            let mut interval_clock = Instant::now();
            let mut builder = self.new_builders(SystemTime::now());
            let interval = self.settings.upload_interval;
            let mut backoff = DRAIN_PERIOD;
            let mut wait = DRAIN_PERIOD;
            while !stop.wait(wait) {
                let samples = self.drain(&mut builder);
                self.index_spans(false);
                if interval_clock.elapsed() >= interval {
                    if let Some(flush) = self.settings.flush_awaiting {
                        // Awaiting time of spans still open, into this
                        // interval.
                        flush();
                        self.drain(&mut builder);
                    }
                    let now = SystemTime::now();
                    let full = std::mem::replace(&mut builder, self.new_builders(now));
                    self.emit(full, now, &mut symbolizer);
                    self.span_samples.next_interval();
                    if self.spanless.end_interval() {
                        tracing::warn!(
                            target: "tracing_pyroscope",
                            intervals = SPANLESS_INTERVALS,
                            "{SPANLESS_WARNING}"
                        );
                    }
                    interval_clock = Instant::now();
                }
                // Nothing came in: back off (samples wait in the sampler's
                // queue meanwhile, closed spans in theirs), never past the
                // interval's end.
                backoff = if samples > 0 || !self.pending.is_empty() {
                    DRAIN_PERIOD
                } else {
                    let cap = if self.index {
                        IDLE_DRAIN_PERIOD
                    } else {
                        interval
                    };
                    (backoff * 2).min(cap)
                };
                wait = backoff
                    .min(interval.saturating_sub(interval_clock.elapsed()))
                    .max(Duration::from_millis(1));
            }
            // Shutdown: stop timers, take the last samples, flush everything.
            // A sink may overrun its deadline by a little while its thread
            // winds down; keep the whole drop within the configured bound.
            let deadline = Instant::now()
                + self
                    .settings
                    .shutdown_timeout
                    .saturating_sub(SHUTDOWN_MARGIN);
            self.sampler.stop();
            if let Some(flush) = self.settings.flush_awaiting {
                flush();
            }
            self.drain(&mut builder);
            self.index_spans(true);
            self.emit(builder, SystemTime::now(), &mut symbolizer);
            crate::profile::extra::set_kinds(&[]);
            for sink in std::mem::take(&mut self.sinks) {
                sink.shutdown(deadline);
            }
            *lock(&SYMBOLIZER) = Some(symbolizer);
        }

        fn new_builders(&self, start: SystemTime) -> Builders {
            let new = |kind, period: u64| {
                ProfileBuilder::new(
                    kind,
                    start,
                    i64::try_from(period).unwrap_or(i64::MAX),
                    self.settings.max_span_ids,
                )
            };
            Builders {
                cpu: new(ProfileKind::Cpu, self.period_nanos),
                wall: self
                    .settings
                    .wall_time
                    .then(|| new(ProfileKind::Wall, self.period_nanos)),
                memory: self
                    .settings
                    .memory_period
                    .map(|bytes| new(ProfileKind::Memory, bytes)),
            }
        }

        /// Returns the number of samples taken.
        fn drain(&mut self, builders: &mut Builders) -> usize {
            let span_samples = &mut self.span_samples;
            let spanless = &mut self.spanless;
            let tally = self.index;
            let Builders { cpu, wall, .. } = builders;
            let period = i64::try_from(self.period_nanos).unwrap_or(i64::MAX);
            let samples = self.sampler.drain(|labels, frames, weight| {
                spanless.sample(&labels);
                // A thread in a span is running: its wall time is its CPU
                // time, on the same stack.
                if let Some(wall) = wall.as_mut() {
                    if in_span(&labels) {
                        wall.add_values(
                            labels,
                            frames,
                            ProfileKind::timer_values(u64::from(weight), period),
                        );
                    }
                }
                // The index counts only what the profile labels.
                let labels = cpu.add(labels, frames, u64::from(weight));
                if tally && labels.span_id != 0 {
                    let cost = SpanCost {
                        cpu_samples: u64::from(weight),
                        ..SpanCost::default()
                    };
                    span_samples.add(labels.span_id, cost);
                }
            });
            let mut extras = 0;
            for sample in crate::profile::extra::take() {
                let Some(builder) = builders.of(sample.kind) else {
                    continue;
                };
                extras += 1;
                let labels = builder.add_values(sample.labels, &sample.frames, sample.values);
                if tally && labels.span_id != 0 {
                    let cost = self.cost_of(sample.kind, &sample.frames, sample.values);
                    self.span_samples.add(labels.span_id, cost);
                }
            }
            let samples = samples + extras + self.drain_allocations(builders);
            let stats = self.sampler.stats();
            let c = &self.counters;
            // The sampler's counters are its own run's (they start at 0).
            Counters::set(&c.samples, stats.taken);
            Counters::set(
                &c.dropped_samples,
                stats.dropped
                    + crate::profile::extra::dropped().saturating_sub(self.base_extra_dropped),
            );
            Counters::set(&c.sigprof_conflicts, stats.handler_conflicts);
            Counters::set(&c.sampled_threads, stats.threads);
            Counters::set(
                &c.span_name_overflows,
                crate::context::name_overflows().saturating_sub(self.base_name_overflows),
            );
            let (values, sets) = self.base_label_overflows;
            Counters::set(
                &c.span_label_overflows,
                crate::context::value_overflows().saturating_sub(values),
            );
            Counters::set(
                &c.span_id_overflows,
                self.id_overflows + builders.span_id_overflows(),
            );
            Counters::set(
                &c.label_set_overflows,
                crate::context::label_set_overflows().saturating_sub(sets),
            );
            Counters::set(&c.degraded_samples, stats.unwind_busy + stats.timer_errors);
            samples
        }

        /// Hands closed root spans to the sinks that keep an index, one
        /// drain after they arrived (or all of them when `all`): those with
        /// CPU samples, and a bounded sample of the others.
        fn index_spans(&mut self, all: bool) {
            if !self.index {
                return;
            }
            let mut ready = std::mem::take(&mut self.pending);
            let fresh: Vec<SpanIndexRecord> = self
                .settings
                .records
                .try_iter()
                .map(SpanIndexRecord::from)
                .collect();
            if !fresh.is_empty() {
                self.spanless.span_seen();
            }
            if all {
                ready.extend(fresh);
            } else {
                self.pending = fresh;
            }
            if ready.is_empty() {
                return;
            }
            for record in &mut ready {
                let cost = record
                    .span_id()
                    .map_or(SpanCost::default(), |id| self.span_samples.take(id));
                record.set_cost(cost, self.period_nanos);
            }
            let elapsed = self.budget_clock.elapsed().as_secs_f64();
            self.budget_clock = Instant::now();
            self.unsampled_budget = (self.unsampled_budget + elapsed * UNSAMPLED_SPANS_PER_SEC)
                .min(UNSAMPLED_SPANS_BURST);
            let before = ready.len();
            let budget = &mut self.unsampled_budget;
            ready.retain(|record| {
                if record.has_samples() {
                    return true;
                }
                let keep = *budget >= 1.0;
                if keep {
                    *budget -= 1.0;
                }
                keep
            });
            Counters::add(
                &self.counters.spans_unindexed,
                (before - ready.len()) as u64,
            );
            if ready.is_empty() {
                return;
            }
            let pid = std::process::id();
            for record in &mut ready {
                record.service.clone_from(&self.settings.service);
                record.labels = self.settings.labels.iter().cloned().collect();
                record.pid = pid;
            }
            for sink in &mut self.sinks {
                if sink.keeps_span_index() {
                    sink.index_spans(&ready);
                }
            }
        }

        /// What one extra sample adds to its span's index record.
        fn cost_of(
            &self,
            kind: ProfileKind,
            frames: &[u64],
            values: crate::profile::Values,
        ) -> SpanCost {
            let value = u64::try_from(values[1]).unwrap_or(0);
            match kind {
                ProfileKind::Cpu => SpanCost {
                    cpu_samples: u64::try_from(values[0]).unwrap_or(0),
                    ..SpanCost::default()
                },
                ProfileKind::Wall if frames.first() == Some(&self.awaiting_frame) => SpanCost {
                    awaiting_nanos: value,
                    ..SpanCost::default()
                },
                ProfileKind::Wall => SpanCost {
                    off_cpu_nanos: value,
                    ..SpanCost::default()
                },
                ProfileKind::Memory => SpanCost {
                    alloc_bytes: value,
                    ..SpanCost::default()
                },
            }
        }

        /// Allocation samples since the last drain into the memory
        /// profile; returns how many entries.
        fn drain_allocations(&mut self, builders: &mut Builders) -> usize {
            let (Some((allocs, with_allocs)), Some(memory)) =
                (&self.settings.allocations, builders.memory.as_mut())
            else {
                return 0;
            };
            let (tally, spans) = (self.index, &mut self.span_samples);
            let mut n = 0;
            allocs.drain(|labels, frames, values| {
                if !*with_allocs {
                    return;
                }
                n += 1;
                let labels = memory.add_values(labels, frames, values);
                if tally && labels.span_id != 0 {
                    let cost = SpanCost {
                        alloc_bytes: u64::try_from(values[1]).unwrap_or(0),
                        ..SpanCost::default()
                    };
                    spans.add(labels.span_id, cost);
                }
            });
            let stats = allocs.stats();
            Counters::set(&self.counters.allocation_samples, stats.samples);
            Counters::set(&self.counters.dropped_allocation_samples, stats.dropped);
            n
        }

        /// The live heap at the interval's end into its memory profile.
        fn allocations_in_use(&mut self, builders: &mut Builders) {
            if let (Some((allocs, _)), Some(memory)) =
                (&self.settings.allocations, builders.memory.as_mut())
            {
                allocs.in_use(|labels, frames, values| {
                    memory.add_values(labels, frames, values);
                });
            }
        }

        fn emit(&mut self, builders: Builders, end: SystemTime, symbolizer: &mut Symbolizer) {
            let mut builders = builders;
            self.allocations_in_use(&mut builders);
            self.id_overflows += builders.span_id_overflows();
            let mut profiles = Vec::new();
            for builder in [Some(builders.cpu), builders.wall, builders.memory]
                .into_iter()
                .flatten()
            {
                if !builder.is_empty() {
                    profiles.extend(builder.finish(end, symbolizer));
                }
            }
            // The debug info of the objects used last is kept, within a
            // bound (`Symbolizer::end_interval`); the rest is let go. The
            // host's heap is left to its allocator (no `malloc_trim`: it
            // locks and walks every glibc arena of the process).
            symbolizer.end_interval();
            Counters::set(
                &self.counters.symbol_mismatches,
                symbolizer.symbol_mismatches(),
            );
            for profile in profiles {
                tracing::debug!(
                    target: "tracing_pyroscope",
                    kind = profile.kind.name(),
                    samples = profile.samples,
                    bytes = profile.gzipped.len(),
                    seconds = profile
                        .end
                        .duration_since(profile.start)
                        .unwrap_or_default()
                        .as_secs_f64(),
                    stats = ?self.counters.snapshot(),
                    "profile encoded"
                );
                for sink in &mut self.sinks {
                    sink.send(&profile);
                }
                // Counted once the sinks hold it (queued, written or
                // dropped), so `profiles` never runs ahead of what they
                // account for.
                Counters::bump(&self.counters.profiles);
            }
        }
    }
}

#[cfg(test)]
mod tests;
