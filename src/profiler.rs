//! Ties the pieces together: starts the sampler, runs the collector thread
//! (drain → aggregate → encode → sinks) and owns shutdown.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::export::{DirSink, Uploader};
use crate::layer::LayerConfig;
use crate::profile::{ProfileBuilder, Symbolizer};
use crate::{Error, SpanProfileLayer};

/// Counters describing what the profiler did. See [`ProfilerGuard::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Samples taken by the signal handler.
    pub samples: u64,
    /// Samples dropped (buffer full, unwinder busy).
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
}

/// Shared atomic counters behind [`Stats`]; sinks and the layer bump them.
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
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

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
        }
    }
}

/// A profiled root span, recorded when it closes, for the local span index
/// (`spans.jsonl` in the profiles directory).
#[derive(Clone, Debug)]
pub(crate) struct SpanRecord {
    pub(crate) span_id: u64,
    /// 0 if unknown (no OTel layer).
    pub(crate) trace_id: u128,
    /// The remote parent's span id, 0 if none.
    pub(crate) parent_span_id: u64,
    pub(crate) name: String,
    pub(crate) start: SystemTime,
    pub(crate) end: SystemTime,
}

/// Where the layer sends [`SpanRecord`]s: a bounded queue, drops counted.
#[derive(Clone, Debug)]
pub(crate) struct SpanRecordSink {
    pub(crate) tx: SyncSender<SpanRecord>,
    pub(crate) counters: Arc<Counters>,
}

impl SpanRecordSink {
    /// Never blocks: a full queue drops the record and counts it.
    pub(crate) fn record(&self, record: SpanRecord) {
        if self.tx.try_send(record).is_err() {
            Counters::bump(&self.counters.dropped_spans);
        }
    }
}

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

type StopSignal = Arc<(Mutex<bool>, Condvar)>;

impl ProfilerGuard {
    fn inert() -> Self {
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
            let (lock, cvar) = &*running.stop;
            match lock.lock() {
                Ok(mut g) => *g = true,
                Err(p) => *p.into_inner() = true,
            }
            cvar.notify_all();
            let _ = running.collector.join();
        }
    }
}

/// The symbol cache outlives a profiler, so a restart in the same process
/// does not load debug info again.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(tracing_pyroscope_unsupported)
))]
static SYMBOLIZER: Mutex<Option<Symbolizer>> = Mutex::new(None);

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(tracing_pyroscope_unsupported)
))]
fn lock_ignoring_poison<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Headroom kept inside the shutdown timeout for the steps around the
/// upload flush.
const SHUTDOWN_MARGIN: Duration = Duration::from_millis(250);

/// How often the collector drains the sample buffer.
const DRAIN_PERIOD: Duration = Duration::from_millis(100);
/// Queue of closed root spans waiting for the collector.
const SPAN_QUEUE: usize = 16 * 1024;
/// Most span ids whose CPU samples are tallied for the span index.
const MAX_TALLIED_SPANS: usize = 100_000;

pub(crate) fn start(config: Config) -> Result<(SpanProfileLayer, ProfilerGuard), Error> {
    if !config.profiling_on() {
        return Ok((SpanProfileLayer::inert(), ProfilerGuard::inert()));
    }
    start_platform(config)
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(tracing_pyroscope_unsupported)
)))]
fn start_platform(config: Config) -> Result<(SpanProfileLayer, ProfilerGuard), Error> {
    // A bad directory is a configuration error on every platform.
    if let Some(path) = &config.profiles_dir {
        DirSink::new(path)?;
    }
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        let forced = if cfg!(tracing_pyroscope_unsupported) {
            " (forced by --cfg tracing_pyroscope_unsupported)"
        } else {
            ""
        };
        eprintln!(
            "tracing-pyroscope: CPU profiling is not supported on {}/{}{forced}; it runs on Linux on x86_64 and aarch64. Profiling is off.",
            std::env::consts::OS,
            std::env::consts::ARCH,
        )
    });
    Ok((SpanProfileLayer::inert(), ProfilerGuard::inert()))
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(tracing_pyroscope_unsupported)
))]
fn start_platform(config: Config) -> Result<(SpanProfileLayer, ProfilerGuard), Error> {
    use crate::sampler::Sampler;

    let counters = Arc::new(Counters::default());
    let dir = match &config.profiles_dir {
        Some(path) => Some(DirSink::new(path)?),
        None => None,
    };
    let uploader = match &config.server_address {
        Some(_) => Some(Uploader::start(&config, counters.clone())?),
        None => None,
    };
    let (records_tx, records_rx) = std::sync::mpsc::sync_channel(SPAN_QUEUE);
    let records = dir.as_ref().map(|_| SpanRecordSink {
        tx: records_tx,
        counters: counters.clone(),
    });
    let sampler = Sampler::start(config.sample_rate)?;
    // The sampler's counters are process-wide; report this run's share.
    let sampler_base = sampler.stats();
    let layer = SpanProfileLayer::new(LayerConfig {
        scope: config.span_scope,
        span_name_label: config.span_name_label,
        trace_id_label: config.trace_id_label,
        records,
    });
    let stop: StopSignal = Arc::new((Mutex::new(false), Condvar::new()));
    let collector = Collector {
        period_nanos: sampler.period_nanos(),
        sampler,
        config,
        counters: counters.clone(),
        dir,
        uploader,
        records: records_rx,
        pending: Vec::new(),
        span_samples: HashMap::new(),
        base: sampler_base,
    };
    let collector = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("pyroscope-collect".into())
            .spawn(move || collector.run(stop))
            .map_err(|e| {
                Error::new(crate::ErrorKind::Os, "could not spawn the collector thread")
                    .with_source(e)
            })?
    };
    Ok((
        layer,
        ProfilerGuard {
            running: Some(Running {
                stop,
                collector,
                pid: std::process::id(),
            }),
            counters,
        },
    ))
}

/// The background thread: drain → aggregate → encode → sinks.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(tracing_pyroscope_unsupported)
))]
struct Collector {
    sampler: crate::sampler::Sampler,
    period_nanos: u64,
    config: Config,
    counters: Arc<Counters>,
    dir: Option<DirSink>,
    uploader: Option<Uploader>,
    records: Receiver<SpanRecord>,
    /// Closed spans received last tick: their samples may still have been
    /// in the buffer, so they are written one drain later.
    pending: Vec<SpanRecord>,
    /// CPU samples per span id, for the span index.
    span_samples: HashMap<u64, u64>,
    /// Sampler counters when this run started.
    base: crate::sampler::SamplerStats,
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(tracing_pyroscope_unsupported)
))]
impl Collector {
    fn run(mut self, stop: StopSignal) {
        // Symbols resolved by an earlier profiler in this process are kept.
        let mut symbolizer = lock_ignoring_poison(&SYMBOLIZER).take().unwrap_or_default();
        let mut interval_start = SystemTime::now();
        let mut interval_clock = Instant::now();
        let mut builder = ProfileBuilder::new(interval_start, self.period_nanos as i64);
        loop {
            let stopping = {
                let (lock, cvar) = &*stop;
                let guard = match lock.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                match cvar.wait_timeout_while(guard, DRAIN_PERIOD, |s| !*s) {
                    Ok((g, _)) => *g,
                    Err(p) => *p.into_inner().0,
                }
            };
            if stopping {
                break;
            }
            self.drain(&mut builder);
            self.write_span_records(false);
            if interval_clock.elapsed() >= self.config.upload_interval {
                let now = SystemTime::now();
                let full = std::mem::replace(
                    &mut builder,
                    ProfileBuilder::new(now, self.period_nanos as i64),
                );
                self.emit(full, now, &mut symbolizer);
                interval_start = now;
                interval_clock = Instant::now();
            }
        }
        // Shutdown: stop timers, take the last samples, flush everything.
        // The uploader may overrun its deadline by a little while its thread
        // winds down; keep the whole drop within the configured bound.
        let deadline =
            Instant::now() + self.config.shutdown_timeout.saturating_sub(SHUTDOWN_MARGIN);
        self.sampler.stop();
        self.drain(&mut builder);
        self.write_span_records(true);
        let _ = interval_start;
        self.emit(builder, SystemTime::now(), &mut symbolizer);
        if let Some(uploader) = self.uploader.take() {
            uploader.shutdown(deadline);
        }
        *lock_ignoring_poison(&SYMBOLIZER) = Some(symbolizer);
    }

    fn drain(&mut self, builder: &mut ProfileBuilder) {
        let span_samples = &mut self.span_samples;
        let tally = self.dir.is_some();
        self.sampler.drain(|labels, frames, weight| {
            builder.add(labels, frames, u64::from(weight));
            if tally && labels.span_id != 0 {
                if span_samples.len() >= MAX_TALLIED_SPANS
                    && !span_samples.contains_key(&labels.span_id)
                {
                    return;
                }
                *span_samples.entry(labels.span_id).or_insert(0) += u64::from(weight);
            }
        });
        let stats = self.sampler.stats();
        self.counters.samples.store(
            stats.taken.saturating_sub(self.base.taken),
            Ordering::Relaxed,
        );
        self.counters.dropped_samples.store(
            stats.dropped.saturating_sub(self.base.dropped),
            Ordering::Relaxed,
        );
        self.counters
            .sampled_threads
            .store(stats.threads, Ordering::Relaxed);
        self.counters.degraded_samples.store(
            stats.unwind_busy.saturating_sub(self.base.unwind_busy) + stats.timer_errors,
            Ordering::Relaxed,
        );
    }

    /// Writes closed root spans to `spans.jsonl`, one drain after they
    /// arrived (or all of them when `all`).
    fn write_span_records(&mut self, all: bool) {
        let Some(dir) = &self.dir else { return };
        let mut ready = std::mem::take(&mut self.pending);
        let fresh: Vec<SpanRecord> = self.records.try_iter().collect();
        if all {
            ready.extend(fresh);
        } else {
            self.pending = fresh;
        }
        if ready.is_empty() {
            return;
        }
        let pid = std::process::id();
        let labels: serde_json::Map<String, serde_json::Value> = self
            .config
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let lines: Vec<String> = ready
            .iter()
            .map(|r| {
                let cpu_samples = self.span_samples.remove(&r.span_id).unwrap_or(0);
                serde_json::json!({
                    "span_id": format!("{:016x}", r.span_id),
                    "trace_id": (r.trace_id != 0).then(|| format!("{:032x}", r.trace_id)),
                    "parent_span_id": (r.parent_span_id != 0).then(|| format!("{:016x}", r.parent_span_id)),
                    "name": r.name,
                    "service": self.config.application_name,
                    "labels": labels,
                    "start_unix_nanos": unix_nanos(r.start),
                    "end_unix_nanos": unix_nanos(r.end),
                    "cpu_samples": cpu_samples,
                    "pid": pid,
                })
                .to_string()
            })
            .collect();
        match dir.append_spans(&lines) {
            Ok(()) => {
                self.counters
                    .spans_recorded
                    .fetch_add(lines.len() as u64, Ordering::Relaxed);
            }
            Err(_) => Counters::bump(&self.counters.write_errors),
        }
    }

    fn emit(&mut self, builder: ProfileBuilder, end: SystemTime, symbolizer: &mut Symbolizer) {
        if builder.is_empty() {
            return;
        }
        for profile in builder.finish(end, symbolizer) {
            Counters::bump(&self.counters.profiles);
            tracing::debug!(
                target: "tracing_pyroscope",
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
            if let Some(dir) = &self.dir {
                match dir.write_profile(&self.config.application_name, &profile) {
                    Ok(_) => Counters::bump(&self.counters.files_written),
                    Err(_) => Counters::bump(&self.counters.write_errors),
                }
            }
            if let Some(uploader) = &self.uploader {
                uploader.send(profile);
            }
        }
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
