//! The top of the crate: [`Builder`] and [`from_env`] read a checked
//! [`Config`], build the sinks it names, start the sampler and the
//! collector, and hand back the layer and the guard.
//!
//! Everything is wired here and nowhere else, as console-subscriber's
//! `Builder` does: each sink, the sampler, the collector and the layer get
//! their own settings, never the crate's [`Config`] (the layer takes only
//! the [`SpanScope`] type from `config`). The modules still share the
//! crate's common types (the thread slot in `context`, `profile`, `stats`,
//! `error`; see the module map in `lib.rs`). Profiling is on exactly when
//! at least one sink is configured.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::collector::ProfilerGuard;
use crate::config::{self, Config, SpanScope, BUILDER_NAMES};
use crate::error::{Error, ErrorKind};
use crate::export::dir::DirLimits;
use crate::export::span_index::SpanIndexQueue;
use crate::export::{DirSink, Sink};
#[cfg(feature = "upload")]
use crate::export::{UploadSettings, Uploader};
use crate::layer::{LayerConfig, SpanProfileLayer};
use crate::secret::Secret;
use crate::stats::Counters;

/// Configures and starts span profiling in code.
///
/// Setters never fail; [`build`](Builder::build) checks everything with the
/// same rules as [`from_env`] (see its table and label rules) and returns
/// the first problem.
///
/// ```no_run
/// use std::time::Duration;
///
/// let (layer, guard) = tracing_pyroscope::Builder::new("ride-sharing-app")
///     .server_address("https://profiles-prod-001.grafana.net")
///     .basic_auth("123456", "glc_...")
///     .tenant_id("tenant-a")
///     .label("region", "eu-north")
///     .sample_rate(100)
///     .upload_interval(Duration::from_secs(10))
///     .shutdown_timeout(Duration::from_secs(5))
///     .build()?;
/// # drop((layer, guard));
/// # Ok::<(), tracing_pyroscope::Error>(())
/// ```
///
/// [`Builder::from_env`] starts from the environment instead, and code then
/// overrides what it must:
///
/// ```no_run
/// let (layer, guard) = tracing_pyroscope::Builder::from_env()
///     .span_labels(["vehicle"])
///     .build()?;
/// # drop((layer, guard));
/// # Ok::<(), tracing_pyroscope::Error>(())
/// ```
///
/// A bad value is reported by `build`, never by the setter:
///
/// ```
/// let err = tracing_pyroscope::Builder::new("app")
///     .label("__private", "x")
///     .build()
///     .unwrap_err();
/// assert_eq!(err.kind(), tracing_pyroscope::ErrorKind::Config);
/// assert!(err.to_string().contains("Builder::label"));
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    pub(crate) config: Config,
    /// An environment variable [`Builder::from_env`] could not parse:
    /// reported by `build`.
    env_error: Option<String>,
}

impl Builder {
    /// Default of [`sample_rate`](Builder::sample_rate), in Hz.
    pub const DEFAULT_SAMPLE_RATE: u32 = 100;
    /// Default of [`upload_interval`](Builder::upload_interval).
    pub const DEFAULT_UPLOAD_INTERVAL: Duration = Duration::from_secs(10);
    /// Default of [`shutdown_timeout`](Builder::shutdown_timeout).
    pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default of [`span_scope`](Builder::span_scope).
    pub const DEFAULT_SPAN_SCOPE: SpanScope = SpanScope::Root;
    /// Default of [`span_name_label`](Builder::span_name_label).
    pub const DEFAULT_SPAN_NAME_LABEL: bool = true;
    /// Default of [`trace_id_label`](Builder::trace_id_label).
    pub const DEFAULT_TRACE_ID_LABEL: bool = false;
    /// Default of [`max_span_names`](Builder::max_span_names).
    pub const DEFAULT_MAX_SPAN_NAMES: usize = crate::context::DEFAULT_MAX_NAMES;
    /// Default of [`max_span_label_values`](Builder::max_span_label_values).
    pub const DEFAULT_MAX_SPAN_LABEL_VALUES: usize = crate::context::DEFAULT_MAX_LABEL_VALUES;
    /// Default of [`max_span_ids`](Builder::max_span_ids).
    pub const DEFAULT_MAX_SPAN_IDS: usize = config::DEFAULT_MAX_SPAN_IDS;
    /// Default of [`profiles_dir_max_size`](Builder::profiles_dir_max_size),
    /// in bytes (512 MiB).
    pub const DEFAULT_PROFILES_DIR_MAX_SIZE: u64 = config::DEFAULT_PROFILES_DIR_MAX_SIZE;
    /// Default of [`profiles_dir_max_age`](Builder::profiles_dir_max_age)
    /// (24 h).
    pub const DEFAULT_PROFILES_DIR_MAX_AGE: Duration = config::DEFAULT_PROFILES_DIR_MAX_AGE;
    /// Default mean bytes between sampled allocations (Go's `MemProfileRate`).
    pub const DEFAULT_ALLOCATION_SAMPLE_BYTES: u64 = config::DEFAULT_ALLOCATION_SAMPLE_BYTES;

    /// A builder for the service `application_name` (Pyroscope's
    /// `service_name`; make it equal to OTel's `service.name`), with every
    /// other setting at its default.
    pub fn new(application_name: impl Into<String>) -> Self {
        Builder {
            config: Config::new(application_name),
            env_error: None,
        }
    }

    /// A builder holding what the environment sets (the variables of
    /// [`from_env`]), which code can then override; like
    /// console-subscriber's `with_default_env`. `Builder::from_env().build()`
    /// is [`from_env`]. A variable that cannot be parsed is reported by
    /// [`build`](Builder::build); an error in a value a setter replaced
    /// names the setter.
    ///
    /// ```
    /// // Whatever PYROSCOPE_SAMPLE_RATE says, this process samples at 250 Hz.
    /// let builder = tracing_pyroscope::Builder::from_env().sample_rate(250);
    /// # drop(builder);
    /// ```
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`Builder::from_env`] over `lookup` instead of the process
    /// environment.
    pub(crate) fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        match config::parse_env(lookup) {
            Ok(config) => Builder {
                config,
                env_error: None,
            },
            Err(e) => Builder {
                config: Config::new(String::new()),
                env_error: Some(e.to_string()),
            },
        }
    }

    /// Upload to the Pyroscope server at `address`
    /// (`http(s)://host[:port][/path]`; `https` needs the `tls` feature,
    /// and uploading at all the default `upload` feature). Default: none.
    pub fn server_address(mut self, address: impl Into<String>) -> Self {
        self.config.server_address = Some(address.into());
        self.config.names.server_address = BUILDER_NAMES.server_address;
        self
    }

    /// Write every profile (and the local span index) into `dir`. Default:
    /// none.
    pub fn profiles_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.profiles_dir = Some(dir.into());
        self.config.names.profiles_dir = BUILDER_NAMES.profiles_dir;
        self
    }

    /// Basic auth for every upload (Grafana Cloud: user id and token). The
    /// password is never logged or shown by `Debug`.
    pub fn basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.config.basic_auth_user = Some(user.into());
        self.config.basic_auth_password = Some(Secret(password.into()));
        self.config.names.basic_auth_user = BUILDER_NAMES.basic_auth_user;
        self.config.names.basic_auth_password = BUILDER_NAMES.basic_auth_password;
        self
    }

    /// Send `X-Scope-OrgID: tenant` with every upload.
    pub fn tenant_id(mut self, tenant: impl Into<String>) -> Self {
        self.config.tenant_id = Some(tenant.into());
        self.config.names.tenant_id = BUILDER_NAMES.tenant_id;
        self
    }

    /// Add a static series label `name=value` to every profile.
    pub fn label(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.labels.push((name.into(), value.into()));
        self
    }

    /// Add several static series labels.
    pub fn labels<K, V>(mut self, labels: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        self.config
            .labels
            .extend(labels.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Samples per CPU-second per thread (Hz), 1 to 1000. Default
    /// [`DEFAULT_SAMPLE_RATE`](Builder::DEFAULT_SAMPLE_RATE) (100).
    pub fn sample_rate(mut self, hz: u32) -> Self {
        self.config.sample_rate = hz;
        self.config.names.sample_rate = BUILDER_NAMES.sample_rate;
        self
    }

    /// How often a profile is cut and sent, 100 ms to 10 min (the server
    /// rejects profiles older than its 1 h ingestion window, and an upload
    /// may be retried). Default
    /// [`DEFAULT_UPLOAD_INTERVAL`](Builder::DEFAULT_UPLOAD_INTERVAL) (10 s).
    pub fn upload_interval(mut self, interval: Duration) -> Self {
        self.config.upload_interval = interval;
        self.config.names.upload_interval = BUILDER_NAMES.upload_interval;
        self
    }

    /// The most that dropping the guard may take to flush the last profile,
    /// even if the server is down or hangs (at most 5 min). Default
    /// [`DEFAULT_SHUTDOWN_TIMEOUT`](Builder::DEFAULT_SHUTDOWN_TIMEOUT) (5 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// Which spans get their own `span_id`. Default
    /// [`DEFAULT_SPAN_SCOPE`](Builder::DEFAULT_SPAN_SCOPE)
    /// ([`SpanScope::Root`]).
    pub fn span_scope(mut self, scope: SpanScope) -> Self {
        self.config.span_scope = scope;
        self
    }

    /// Add the `span_name` label (a series label on the server). Default
    /// [`DEFAULT_SPAN_NAME_LABEL`](Builder::DEFAULT_SPAN_NAME_LABEL) (on).
    pub fn span_name_label(mut self, on: bool) -> Self {
        self.config.span_name_label = on;
        self
    }

    /// The most distinct `span_name` values this process sends, 1 to 500.
    /// Each is a series on the server; later names become `other` and are
    /// counted in [`Stats::span_name_overflows`](crate::Stats). Default
    /// [`DEFAULT_MAX_SPAN_NAMES`](Builder::DEFAULT_MAX_SPAN_NAMES) (200).
    ///
    /// With [`span_labels`](Builder::span_labels) this is the budget of
    /// label sets: span names and combinations of a name with span-label
    /// values count together; a combination past it keeps its span name and
    /// loses its span labels (counted in
    /// [`Stats::label_set_overflows`](crate::Stats)).
    pub fn max_span_names(mut self, max: usize) -> Self {
        self.config.max_span_names = max;
        self.config.names.max_span_names = BUILDER_NAMES.max_span_names;
        self
    }

    /// Span fields that become sample labels of the same name, like
    /// `PYROSCOPE_SPAN_LABELS=vehicle,region`: a span created with
    /// `info_span!("order", vehicle = %kind)` labels the samples taken while
    /// it or any descendant runs with `vehicle=<kind>`. Adds to the names
    /// given before. Names follow the label rules (see
    /// [`SpanProfileLayer`]'s "Labels from span fields").
    ///
    /// ```no_run
    /// let (layer, guard) = tracing_pyroscope::Builder::new("ride-sharing-app")
    ///     .server_address("http://localhost:4040")
    ///     .label("region", "eu-north") // static: the same for the whole process
    ///     .span_labels(["vehicle"]) // per span: from the span's `vehicle` field
    ///     .build()?;
    /// # drop((layer, guard));
    /// # Ok::<(), tracing_pyroscope::Error>(())
    /// ```
    pub fn span_labels<N: Into<String>>(mut self, names: impl IntoIterator<Item = N>) -> Self {
        self.config
            .span_labels
            .extend(names.into_iter().map(Into::into));
        self
    }

    /// The most distinct values of each span label, 1 to 500; later values
    /// are sent as `other` and counted in
    /// [`Stats::span_label_overflows`](crate::Stats). Default
    /// [`DEFAULT_MAX_SPAN_LABEL_VALUES`](Builder::DEFAULT_MAX_SPAN_LABEL_VALUES)
    /// (50).
    pub fn max_span_label_values(mut self, max: usize) -> Self {
        self.config.max_span_label_values = max;
        self.config.names.max_span_label_values = BUILDER_NAMES.max_span_label_values;
        self
    }

    /// The most distinct `span_id` values one profile interval keeps, 1 to
    /// 1,000,000. Past it, samples keep their stacks and `span_name` but lose
    /// `span_id` (and `trace_id`), counted in
    /// [`Stats::span_id_overflows`](crate::Stats). Default
    /// [`DEFAULT_MAX_SPAN_IDS`](Builder::DEFAULT_MAX_SPAN_IDS) (10,000).
    pub fn max_span_ids(mut self, max: usize) -> Self {
        self.config.max_span_ids = max;
        self.config.names.max_span_ids = BUILDER_NAMES.max_span_ids;
        self
    }

    /// The most bytes the profiles directory may hold (at least 64 KiB): the
    /// oldest files are deleted to stay below it. Default
    /// [`DEFAULT_PROFILES_DIR_MAX_SIZE`](Builder::DEFAULT_PROFILES_DIR_MAX_SIZE)
    /// (512 MiB).
    pub fn profiles_dir_max_size(mut self, bytes: u64) -> Self {
        self.config.profiles_dir_max_size = bytes;
        self.config.names.profiles_dir_max_size = BUILDER_NAMES.profiles_dir_max_size;
        self
    }

    /// Files in the profiles directory older than this are deleted (at
    /// least 1 s). Default
    /// [`DEFAULT_PROFILES_DIR_MAX_AGE`](Builder::DEFAULT_PROFILES_DIR_MAX_AGE)
    /// (24 h).
    pub fn profiles_dir_max_age(mut self, age: Duration) -> Self {
        self.config.profiles_dir_max_age = age;
        self.config.names.profiles_dir_max_age = BUILDER_NAMES.profiles_dir_max_age;
        self
    }

    /// Add the `trace_id` label. Default
    /// [`DEFAULT_TRACE_ID_LABEL`](Builder::DEFAULT_TRACE_ID_LABEL) (off).
    pub fn trace_id_label(mut self, on: bool) -> Self {
        self.config.trace_id_label = on;
        self
    }

    /// The `wall` profile, beside the CPU profile: each span's wall time
    /// split into running (the CPU samples), blocked (one stack per
    /// blocking episode, read without a signal), `[runnable]` and
    /// `[awaiting]` (an async span's task waiting to be polled). Off by
    /// default; `PYROSCOPE_PROFILING_WALLTIME_ENABLED`.
    pub fn wall_time(mut self, on: bool) -> Self {
        self.config.wall_time = on;
        self
    }

    /// The `memory` profile's allocations (`alloc_objects`, `alloc_space`),
    /// sampled every [`allocation_sample_bytes`](Builder::allocation_sample_bytes)
    /// on average by `tracing_pyroscope::Allocator`, which must be the
    /// `#[global_allocator]`. Off by default;
    /// `PYROSCOPE_PROFILING_ALLOCATION_ENABLED`.
    pub fn allocations(mut self, on: bool) -> Self {
        self.config.allocations = on;
        self
    }

    /// The `memory` profile's live heap (`inuse_objects`, `inuse_space`):
    /// sampled allocations not yet freed. Off by default;
    /// `PYROSCOPE_PROFILING_HEAP_ENABLED`.
    pub fn heap(mut self, on: bool) -> Self {
        self.config.heap = on;
        self
    }

    /// Mean bytes between sampled allocations, 512 B to 1 GiB. Default
    /// [`DEFAULT_ALLOCATION_SAMPLE_BYTES`](Builder::DEFAULT_ALLOCATION_SAMPLE_BYTES)
    /// (512 KiB, Go's `MemProfileRate`); `PYROSCOPE_ALLOCATION_SAMPLE_BYTES`.
    pub fn allocation_sample_bytes(mut self, bytes: u64) -> Self {
        self.config.allocation_sample_bytes = bytes;
        self.config.names.allocation_sample_bytes = BUILDER_NAMES.allocation_sample_bytes;
        self
    }

    /// Set `pyroscope.profile.id` on every sampled root span at its first
    /// enter, as the Go and Java SDKs do, instead of only on spans that got
    /// at least one sample (so that Grafana never offers an empty
    /// profile). Default off; `PYROSCOPE_PROFILE_ID_ALWAYS`.
    pub fn profile_id_always(mut self, on: bool) -> Self {
        self.config.profile_id_always = on;
        self
    }

    /// `false` turns everything off: an inert layer and a no-op guard.
    pub fn enabled(mut self, on: bool) -> Self {
        self.config.enabled = on;
        self
    }

    /// Checks the settings, starts the profiler (if configured) and returns
    /// the layer and guard.
    pub fn build(self) -> Result<(SpanProfileLayer, ProfilerGuard), Error> {
        if let Some(message) = self.env_error {
            return Err(Error::new(ErrorKind::Config, message));
        }
        start(self.config.validate()?)
    }
}

/// Reads the environment and starts profiling. With nothing configured it
/// returns an inert layer and a no-op guard. To change some settings in
/// code on top of the environment, use [`Builder::from_env`].
///
/// # Settings
///
#[doc = include_str!("../docs/environment.md")]
pub fn from_env() -> Result<(SpanProfileLayer, ProfilerGuard), Error> {
    Builder::from_env().build()
}

/// Queue of closed root spans waiting for the collector.
const SPAN_QUEUE: usize = 16 * 1024;

/// Builds the configured sinks and starts profiling; an inert layer and
/// guard when profiling is off.
fn start(config: Config) -> Result<(SpanProfileLayer, ProfilerGuard), Error> {
    let off = || Ok((SpanProfileLayer::inert(), ProfilerGuard::inert()));
    if !config.enabled {
        return off();
    }
    let counters = Arc::new(Counters::default());
    let sinks = sinks(&config, &counters)?;
    if sinks.is_empty() {
        return off();
    }
    if (config.allocations || config.heap) && !crate::alloc::installed() {
        return Err(Error::new(ErrorKind::Config, crate::alloc::NOT_INSTALLED));
    }
    start_platform(config, sinks, counters)
}

/// One line per sink: each is built from its own settings.
fn sinks(config: &Config, counters: &Arc<Counters>) -> Result<Vec<Box<dyn Sink>>, Error> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if let Some(dir) = &config.profiles_dir {
        let limits = DirLimits {
            max_bytes: config.profiles_dir_max_size,
            max_age: config.profiles_dir_max_age,
        };
        let sink =
            DirSink::new(dir, &config.application_name, limits, counters.clone()).map_err(|e| {
                Error::config(
                    config.names.profiles_dir,
                    &dir.display().to_string(),
                    "a directory that exists or can be created",
                )
                .with_source(e)
            })?;
        sinks.push(Box::new(sink));
    }
    #[cfg(feature = "upload")]
    if let Some(server_address) = &config.server_address {
        let settings = UploadSettings {
            server_address: server_address.clone(),
            service_name: config.application_name.clone(),
            labels: config.labels.clone(),
            basic_auth: config
                .basic_auth_user
                .clone()
                .zip(config.basic_auth_password.clone()),
            tenant_id: config.tenant_id.clone(),
            shutdown_timeout: config.shutdown_timeout,
        };
        sinks.push(Box::new(Uploader::start(settings, counters.clone())?));
    }
    Ok(sinks)
}

#[cfg(not(tp_sampler))]
fn start_platform(
    _config: Config,
    sinks: Vec<Box<dyn Sink>>,
    _counters: Arc<Counters>,
) -> Result<(SpanProfileLayer, ProfilerGuard), Error> {
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
    for sink in sinks {
        sink.shutdown(std::time::Instant::now());
    }
    Ok((SpanProfileLayer::inert(), ProfilerGuard::inert()))
}

#[cfg(tp_sampler)]
fn start_platform(
    config: Config,
    sinks: Vec<Box<dyn Sink>>,
    counters: Arc<Counters>,
) -> Result<(SpanProfileLayer, ProfilerGuard), Error> {
    use crate::collector;
    use crate::sampler::Sampler;

    let (records_tx, records_rx) = std::sync::mpsc::sync_channel(SPAN_QUEUE);
    let records = sinks
        .iter()
        .any(|s| s.keeps_span_index())
        .then(|| SpanIndexQueue::new(records_tx, counters.clone()));
    // Process-wide limits only once this profiler is the one running: a
    // second `build` (`AlreadyRunning`) leaves the first one's alone.
    let sampler = Sampler::start_with(crate::sampler::Options {
        rate_hz: config.sample_rate,
        wall: config.wall_time,
    })?;
    // Allocation sampling, once the sampler's unwinder is published.
    let allocations = (config.allocations || config.heap)
        .then(|| crate::alloc::AllocProfiler::start(config.allocation_sample_bytes, config.heap))
        .transpose()?;
    crate::context::set_max_names(config.max_span_names);
    crate::context::set_max_label_values(config.max_span_label_values);
    let layer = SpanProfileLayer::new(LayerConfig {
        scope: config.span_scope,
        span_name_label: config.span_name_label,
        trace_id_label: config.trace_id_label,
        span_labels: crate::context::configure_span_labels(&config.span_labels),
        records,
        wall: config.wall_time,
        profile_id_always: config.profile_id_always,
    });
    let settings = collector::Settings {
        upload_interval: config.upload_interval,
        shutdown_timeout: config.shutdown_timeout,
        service: config.application_name,
        labels: config.labels,
        records: records_rx,
        max_span_ids: config.max_span_ids,
        wall_time: config.wall_time,
        flush_awaiting: config
            .wall_time
            .then_some(crate::layer::wall::flush as fn()),
        memory_period: (config.allocations || config.heap)
            .then_some(config.allocation_sample_bytes),
        allocations: allocations.map(|a| (a, config.allocations)),
    };
    let guard = collector::start(sampler, sinks, settings, counters).map_err(|e| {
        Error::new(ErrorKind::Os, "could not spawn the collector thread").with_source(e)
    })?;
    Ok((layer, guard))
}
