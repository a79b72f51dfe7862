//! Configuration: [`Builder`] and [`from_env`](crate::from_env).
//!
//! (Module docs and the full environment-variable table: see README.)

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::{Error, ProfilerGuard, SpanProfileLayer};

/// Which spans get their own `span_id` label.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SpanScope {
    /// Local root spans only (no parent, or a remote parent): samples in all
    /// descendants carry the root's id. Like the Go SDK. The default.
    #[default]
    Root,
    /// Every span carries its own id.
    All,
    /// No ids: only `span_name` and static labels.
    None,
}

/// A secret string: never shown by `Debug` or `Display`.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Secret(pub(crate) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// Everything the profiler needs. Built by [`Builder`] or `from_env`.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// `false` forces everything off (inert layer, no-op guard).
    pub(crate) enabled: bool,
    /// `service_name` series label.
    pub(crate) application_name: String,
    /// Pyroscope base URL; switches uploading on.
    pub(crate) server_address: Option<String>,
    /// Local directory for pprof files and the span index; switches profiling on.
    pub(crate) profiles_dir: Option<PathBuf>,
    pub(crate) basic_auth_user: Option<String>,
    pub(crate) basic_auth_password: Option<Secret>,
    /// `X-Scope-OrgID`.
    pub(crate) tenant_id: Option<String>,
    /// Static series labels, validated.
    pub(crate) labels: Vec<(String, String)>,
    /// Samples per CPU-second per thread.
    pub(crate) sample_rate: u32,
    pub(crate) upload_interval: Duration,
    pub(crate) span_scope: SpanScope,
    pub(crate) span_name_label: bool,
    pub(crate) trace_id_label: bool,
    /// Bound on how long dropping the guard may take.
    pub(crate) shutdown_timeout: Duration,
}

impl Config {
    pub(crate) fn new(application_name: impl Into<String>) -> Self {
        Config {
            enabled: true,
            application_name: application_name.into(),
            server_address: None,
            profiles_dir: None,
            basic_auth_user: None,
            basic_auth_password: None,
            tenant_id: None,
            labels: Vec::new(),
            sample_rate: 100,
            upload_interval: Duration::from_secs(10),
            span_scope: SpanScope::Root,
            span_name_label: true,
            trace_id_label: false,
            shutdown_timeout: Duration::from_secs(5),
        }
    }

    /// Profiling runs only if enabled and there is somewhere to send profiles.
    pub(crate) fn profiling_on(&self) -> bool {
        self.enabled && (self.server_address.is_some() || self.profiles_dir.is_some())
    }
}

/// Configures and starts span profiling in code.
///
/// ```no_run
/// let (layer, guard) = tracing_pyroscope::Builder::new("ride-sharing-app")
///     .server_address("http://localhost:4040")
///     .build()?;
/// # drop((layer, guard));
/// # Ok::<(), tracing_pyroscope::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    pub(crate) config: Config,
    /// Errors found by setters, reported by `build`.
    pub(crate) errors: Vec<String>,
}

impl Builder {
    /// A builder for the service `application_name` (Pyroscope's
    /// `service_name`; make it equal to OTel's `service.name`).
    pub fn new(application_name: impl Into<String>) -> Self {
        Builder {
            config: Config::new(application_name),
            errors: Vec::new(),
        }
    }

    /// Upload to the Pyroscope server at `address` (`http(s)://host:port`).
    pub fn server_address(mut self, address: impl Into<String>) -> Self {
        self.config.server_address = Some(address.into());
        self
    }

    /// Write every profile (and the local span index) into `dir`.
    pub fn profiles_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.profiles_dir = Some(dir.into());
        self
    }

    /// Samples per CPU-second per thread (Hz). Default 100.
    pub fn sample_rate(mut self, hz: u32) -> Self {
        self.config.sample_rate = hz;
        self
    }

    /// How often a profile is cut and sent. Default 10 s.
    pub fn upload_interval(mut self, interval: Duration) -> Self {
        self.config.upload_interval = interval;
        self
    }

    /// Which spans get their own `span_id`. Default [`SpanScope::Root`].
    pub fn span_scope(mut self, scope: SpanScope) -> Self {
        self.config.span_scope = scope;
        self
    }

    /// Add the `span_name` label (a series label on the server). Default on.
    pub fn span_name_label(mut self, on: bool) -> Self {
        self.config.span_name_label = on;
        self
    }

    /// Add the `trace_id` label. Default off.
    pub fn trace_id_label(mut self, on: bool) -> Self {
        self.config.trace_id_label = on;
        self
    }

    /// `false` turns everything off: an inert layer and a no-op guard.
    pub fn enabled(mut self, on: bool) -> Self {
        self.config.enabled = on;
        self
    }

    /// Starts the profiler (if configured) and returns the layer and guard.
    pub fn build(self) -> Result<(SpanProfileLayer, ProfilerGuard), Error> {
        if let Some(first) = self.errors.into_iter().next() {
            return Err(Error::new(crate::ErrorKind::Config, first));
        }
        crate::profiler::start(self.config)
    }
}

/// Reads the environment and starts profiling. See the crate docs.
pub fn from_env() -> Result<(SpanProfileLayer, ProfilerGuard), Error> {
    let mut config = Config::new(default_application_name());
    if let Some(dir) = std::env::var_os("PYROSCOPE_PROFILES_DIR") {
        config.profiles_dir = Some(PathBuf::from(dir));
    }
    if let Ok(addr) = std::env::var("PYROSCOPE_SERVER_ADDRESS") {
        config.server_address = Some(addr);
    }
    crate::profiler::start(config)
}

fn default_application_name() -> String {
    if let Ok(name) = std::env::var("OTEL_SERVICE_NAME") {
        if !name.is_empty() {
            return name;
        }
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "unknown_service".to_string())
}
