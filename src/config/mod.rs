//! Configuration as plain data: [`Config`], its parsing from the
//! environment (`env.rs`) and its checks (`validate.rs`).
//!
//! Both the environment and [`Builder`] end in the same
//! validation, so a value that is wrong in code is wrong in the environment
//! too, and every bad value is an [`Error`](crate::Error) of kind
//! [`Config`](crate::ErrorKind::Config) that names the variable (or builder
//! method), shows the value (secrets redacted) and says what is expected.
//! Nothing here panics, starts anything or calls into the rest of the crate:
//! the builder reads a checked `Config` and wires the pieces.
//!
//! A new environment variable is a field here, its line in `env.rs` (and
//! its check in `validate.rs`), and the line in `builder.rs` that uses it.

use std::path::PathBuf;
use std::time::Duration;

use crate::secret::Secret;
use crate::Builder;

mod env;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
mod validate;

#[cfg(test)]
pub(crate) use env::from_lookup;
pub(crate) use env::parse as parse_env;
use validate::Names;
pub(crate) use validate::BUILDER_NAMES;

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

/// Everything the profiler needs. Built by [`Builder`] or `from_env`.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// `false` forces everything off (inert layer, no-op guard).
    pub(crate) enabled: bool,
    /// `service_name` series label.
    pub(crate) application_name: String,
    /// Pyroscope base URL without a trailing `/`; switches uploading on.
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
    /// Cap on distinct label sets: `span_name` values, plus combinations of
    /// a name with span-label values (each is a series on the server).
    pub(crate) max_span_names: usize,
    /// Span fields that become sample labels of the same name, validated.
    pub(crate) span_labels: Vec<String>,
    /// Cap on distinct values per span label.
    pub(crate) max_span_label_values: usize,
    /// Cap on distinct `span_id` values per profile interval.
    pub(crate) max_span_ids: usize,
    /// Most bytes the profiles directory may hold (local mode).
    pub(crate) profiles_dir_max_size: u64,
    /// Oldest file the profiles directory keeps (local mode).
    pub(crate) profiles_dir_max_age: Duration,
    /// Bound on how long dropping the guard may take.
    pub(crate) shutdown_timeout: Duration,
    /// The `wall` profile (running, blocked, runnable and awaiting time of
    /// spans).
    pub(crate) wall_time: bool,
    /// The `memory` profile's allocations (needs [`crate::Allocator`]).
    pub(crate) allocations: bool,
    /// The `memory` profile's live heap (`inuse_*`).
    pub(crate) heap: bool,
    /// Mean bytes between sampled allocations.
    pub(crate) allocation_sample_bytes: u64,
    /// `pyroscope.profile.id` on every sampled root span at its first
    /// enter, not only on spans that got a sample.
    pub(crate) profile_id_always: bool,
    /// What each field is called in error messages (environment variables
    /// or builder methods).
    pub(crate) names: Names,
}

/// Bounds, shared by the docs, the checks and the tests.
pub(crate) const SAMPLE_RATE_MAX: u32 = 1000;
pub(crate) const UPLOAD_INTERVAL_MIN: Duration = Duration::from_millis(100);
/// The server rejects profiles whose timestamp (the start of their
/// interval) is older than its ingestion window, 1 h by default
/// (pkg/validation/validate.go). An interval, plus the retries of its
/// upload (up to about 2 min), plus clock skew must stay well inside it.
pub(crate) const UPLOAD_INTERVAL_MAX: Duration = Duration::from_secs(600);
/// The most distinct span names a process may be allowed to send: the
/// crate's series budget per process (10% of the server's default of 5000
/// series per tenant).
pub(crate) const MAX_SPAN_NAMES_MAX: usize = 500;
pub(crate) const SHUTDOWN_TIMEOUT_MAX: Duration = Duration::from_secs(300);
/// Default mean distance between sampled allocations: Go's `MemProfileRate`.
pub(crate) const DEFAULT_ALLOCATION_SAMPLE_BYTES: u64 = 512 * 1024;
/// Bounds of the mean distance between sampled allocations.
pub(crate) const ALLOCATION_SAMPLE_BYTES_MIN: u64 = 512;
pub(crate) const ALLOCATION_SAMPLE_BYTES_MAX: u64 = 1 << 30;
/// Default cap on distinct span ids per interval
/// ([`Builder::DEFAULT_MAX_SPAN_IDS`]). At the
/// default 100 Hz and 10 s interval a busy thread takes 1000 samples per
/// interval, so the default only bites with many busy threads each switching
/// spans between samples; it keeps a profile within the server's 16000
/// samples and the interval's memory bounded at any span rate.
pub(crate) const DEFAULT_MAX_SPAN_IDS: usize = 10_000;
/// Largest cap on distinct span ids per interval.
pub(crate) const MAX_SPAN_IDS_MAX: usize = 1_000_000;
/// Default size limit of the profiles directory.
pub(crate) const DEFAULT_PROFILES_DIR_MAX_SIZE: u64 = 512 * 1024 * 1024;
/// Smallest allowed size limit: room for a few profiles.
pub(crate) const PROFILES_DIR_MAX_SIZE_MIN: u64 = 64 * 1024;
/// Default age limit of files in the profiles directory.
pub(crate) const DEFAULT_PROFILES_DIR_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Shortest allowed age limit.
pub(crate) const PROFILES_DIR_MAX_AGE_MIN: Duration = Duration::from_secs(1);
/// The server's default limits (`docs/PYROSCOPE-PROTOCOL.md`).
pub(crate) const MAX_SERIES_LABELS: usize = 30;
pub(crate) const MAX_LABEL_NAME_LEN: usize = 1024;
pub(crate) const MAX_LABEL_VALUE_LEN: usize = 2048;
/// Series labels the uploader always sends (see `export::upload`).
pub(crate) const FIXED_SERIES_LABELS: [&str; 3] =
    ["__name__", "service_name", "process.runtime.name"];

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
            sample_rate: Builder::DEFAULT_SAMPLE_RATE,
            upload_interval: Builder::DEFAULT_UPLOAD_INTERVAL,
            span_scope: Builder::DEFAULT_SPAN_SCOPE,
            span_name_label: Builder::DEFAULT_SPAN_NAME_LABEL,
            trace_id_label: Builder::DEFAULT_TRACE_ID_LABEL,
            max_span_names: Builder::DEFAULT_MAX_SPAN_NAMES,
            span_labels: Vec::new(),
            max_span_label_values: Builder::DEFAULT_MAX_SPAN_LABEL_VALUES,
            max_span_ids: Builder::DEFAULT_MAX_SPAN_IDS,
            profiles_dir_max_size: Builder::DEFAULT_PROFILES_DIR_MAX_SIZE,
            profiles_dir_max_age: Builder::DEFAULT_PROFILES_DIR_MAX_AGE,
            shutdown_timeout: Builder::DEFAULT_SHUTDOWN_TIMEOUT,
            wall_time: false,
            allocations: false,
            heap: false,
            allocation_sample_bytes: Builder::DEFAULT_ALLOCATION_SAMPLE_BYTES,
            profile_id_always: false,
            names: BUILDER_NAMES,
        }
    }
}
