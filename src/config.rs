//! Configuration: [`Builder`] and [`from_env`](crate::from_env).
//!
//! Both paths end in the same validation, so a value that is wrong in code is
//! wrong in the environment too, and every bad value is an
//! [`Error`](crate::Error) of kind [`Config`](crate::ErrorKind::Config) that
//! names the variable (or builder method), shows the value (secrets
//! redacted) and says what is expected. Nothing here panics.
//!
//! The variable table and label rules are on [`from_env`](crate::from_env);
//! the builder's example on [`Builder`](crate::Builder).

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

/// Shown instead of a secret value in error messages.
const REDACTED: &str = "<redacted>";

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
    /// Bound on how long dropping the guard may take.
    pub(crate) shutdown_timeout: Duration,
}

/// Bounds, shared by the docs, the checks and the tests.
pub(crate) const SAMPLE_RATE_MAX: u32 = 1000;
pub(crate) const UPLOAD_INTERVAL_MIN: Duration = Duration::from_millis(100);
pub(crate) const UPLOAD_INTERVAL_MAX: Duration = Duration::from_secs(3600);
pub(crate) const SHUTDOWN_TIMEOUT_MAX: Duration = Duration::from_secs(300);
/// The server's default limits (`PYROSCOPE-PROTOCOL.md`).
pub(crate) const MAX_SERIES_LABELS: usize = 30;
pub(crate) const MAX_LABEL_NAME_LEN: usize = 1024;
pub(crate) const MAX_LABEL_VALUE_LEN: usize = 2048;
/// Series labels the uploader always sends (see `export::upload`).
pub(crate) const FIXED_SERIES_LABELS: [&str; 3] =
    ["__name__", "service_name", "process.runtime.name"];
/// Label names the crate sets itself, so a static label may not use them.
const RESERVED_LABELS: [&str; 7] = [
    "__name__",
    "service_name",
    "process.runtime.name",
    "span_id",
    "span_name",
    "trace_id",
    "profile_id",
];

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

    /// Checks every field and normalizes the server address. `names` says
    /// how to call each field in an error (env variable or builder method).
    fn validate(mut self, names: &Names) -> Result<Config, Error> {
        if !self.enabled {
            return Ok(self);
        }
        check_application_name(names.application_name, &self.application_name)?;
        if let Some(address) = self.server_address.take() {
            self.server_address = Some(parse_server_address(names.server_address, &address)?);
        }
        if let Some(dir) = &self.profiles_dir {
            if dir.as_os_str().is_empty() {
                return Err(Error::config(
                    names.profiles_dir,
                    "",
                    "a directory path (created if missing)",
                ));
            }
        }
        match (&self.basic_auth_user, &self.basic_auth_password) {
            (Some(user), Some(_)) => check_basic_auth_user(names.basic_auth_user, user)?,
            (None, Some(_)) => {
                return Err(Error::config(
                    names.basic_auth_password,
                    REDACTED,
                    &format!(
                        "{} to be set too (a password needs a user)",
                        names.basic_auth_user
                    ),
                ))
            }
            (Some(user), None) => {
                return Err(Error::config(
                    names.basic_auth_user,
                    user,
                    &format!(
                        "{} to be set too (basic auth needs both)",
                        names.basic_auth_password
                    ),
                ))
            }
            (None, None) => {}
        }
        if let Some(tenant) = &self.tenant_id {
            check_tenant_id(names.tenant_id, tenant)?;
        }
        check_labels(names.labels, &self.labels, &self)?;
        if !(1..=SAMPLE_RATE_MAX).contains(&self.sample_rate) {
            return Err(Error::config(
                names.sample_rate,
                &self.sample_rate.to_string(),
                &format!(
                    "an integer from 1 to {SAMPLE_RATE_MAX} (samples per CPU-second per thread)"
                ),
            ));
        }
        if !(UPLOAD_INTERVAL_MIN..=UPLOAD_INTERVAL_MAX).contains(&self.upload_interval) {
            return Err(Error::config(
                names.upload_interval,
                &format_duration(self.upload_interval),
                "a duration from 100ms to 1h, e.g. 10s",
            ));
        }
        if self.shutdown_timeout > SHUTDOWN_TIMEOUT_MAX {
            return Err(Error::config(
                "Builder::shutdown_timeout",
                &format_duration(self.shutdown_timeout),
                "a duration of at most 5m",
            ));
        }
        Ok(self)
    }
}

/// What each field is called in error messages.
struct Names {
    application_name: &'static str,
    server_address: &'static str,
    profiles_dir: &'static str,
    basic_auth_user: &'static str,
    basic_auth_password: &'static str,
    tenant_id: &'static str,
    labels: &'static str,
    sample_rate: &'static str,
    upload_interval: &'static str,
}

const ENV_NAMES: Names = Names {
    application_name: "PYROSCOPE_APPLICATION_NAME",
    server_address: "PYROSCOPE_SERVER_ADDRESS",
    profiles_dir: "PYROSCOPE_PROFILES_DIR",
    basic_auth_user: "PYROSCOPE_BASIC_AUTH_USER",
    basic_auth_password: "PYROSCOPE_BASIC_AUTH_PASSWORD",
    tenant_id: "PYROSCOPE_TENANT_ID",
    labels: "PYROSCOPE_LABELS",
    sample_rate: "PYROSCOPE_SAMPLE_RATE",
    upload_interval: "PYROSCOPE_UPLOAD_INTERVAL",
};

const BUILDER_NAMES: Names = Names {
    application_name: "Builder::new",
    server_address: "Builder::server_address",
    profiles_dir: "Builder::profiles_dir",
    basic_auth_user: "Builder::basic_auth (user)",
    basic_auth_password: "Builder::basic_auth (password)",
    tenant_id: "Builder::tenant_id",
    labels: "Builder::label",
    sample_rate: "Builder::sample_rate",
    upload_interval: "Builder::upload_interval",
};

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
}

impl Builder {
    /// A builder for the service `application_name` (Pyroscope's
    /// `service_name`; make it equal to OTel's `service.name`).
    pub fn new(application_name: impl Into<String>) -> Self {
        Builder {
            config: Config::new(application_name),
        }
    }

    /// Upload to the Pyroscope server at `address`
    /// (`http(s)://host[:port][/path]`; `https` needs the `tls` feature).
    pub fn server_address(mut self, address: impl Into<String>) -> Self {
        self.config.server_address = Some(address.into());
        self
    }

    /// Write every profile (and the local span index) into `dir`.
    pub fn profiles_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.profiles_dir = Some(dir.into());
        self
    }

    /// Basic auth for every upload (Grafana Cloud: user id and token). The
    /// password is never logged or shown by `Debug`.
    pub fn basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.config.basic_auth_user = Some(user.into());
        self.config.basic_auth_password = Some(Secret(password.into()));
        self
    }

    /// Send `X-Scope-OrgID: tenant` with every upload.
    pub fn tenant_id(mut self, tenant: impl Into<String>) -> Self {
        self.config.tenant_id = Some(tenant.into());
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

    /// Samples per CPU-second per thread (Hz), 1 to 1000. Default 100.
    pub fn sample_rate(mut self, hz: u32) -> Self {
        self.config.sample_rate = hz;
        self
    }

    /// How often a profile is cut and sent, 100 ms to 1 h. Default 10 s.
    pub fn upload_interval(mut self, interval: Duration) -> Self {
        self.config.upload_interval = interval;
        self
    }

    /// The most that dropping the guard may take to flush the last profile,
    /// even if the server is down or hangs (at most 5 min). Default 5 s.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
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

    /// Checks the settings, starts the profiler (if configured) and returns
    /// the layer and guard.
    pub fn build(self) -> Result<(SpanProfileLayer, ProfilerGuard), Error> {
        let config = self.config.validate(&BUILDER_NAMES)?;
        crate::profiler::start(config)
    }
}

/// Reads the environment and starts profiling. With nothing configured it
/// returns an inert layer and a no-op guard.
///
/// # Environment variables
///
/// Names follow the Go/Python Pyroscope SDKs and the OpenTelemetry
/// specification. An empty variable counts as unset.
///
/// | variable | meaning | default |
/// |---|---|---|
/// | `PYROSCOPE_SERVER_ADDRESS` | `http(s)://host[:port][/path]` of Pyroscope; switches uploading on. `https` needs the crate feature `tls`. | unset (no upload) |
/// | `PYROSCOPE_PROFILES_DIR` | write every profile (`<service>-<start_ms>-<pid>-<seq>.pb.gz`) and the span index `spans.jsonl` here; switches profiling on | unset |
/// | `PYROSCOPE_PROFILING_ENABLED` | `false` forces everything off (the other variables are then not checked) | `true` |
/// | `PYROSCOPE_APPLICATION_NAME` | the `service_name` series label; make it equal to OTel `service.name` | `OTEL_SERVICE_NAME`, else `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, else the binary's name |
/// | `PYROSCOPE_BASIC_AUTH_USER` | basic-auth user (Grafana Cloud: the stack's numeric user id) | none |
/// | `PYROSCOPE_BASIC_AUTH_PASSWORD` | basic-auth password (Grafana Cloud: an access-policy token); never logged or shown | none |
/// | `PYROSCOPE_TENANT_ID` | sent as `X-Scope-OrgID` (multi-tenant Pyroscope) | none |
/// | `PYROSCOPE_LABELS` | static series labels `k=v,k2=v2` | none |
/// | `PYROSCOPE_SAMPLE_RATE` | samples per CPU-second per thread, `1..=1000` Hz | `100` |
/// | `PYROSCOPE_UPLOAD_INTERVAL` | how often a profile is cut and sent: `10s`, `500ms`, `1m`, `1m30s`; `100ms..=1h` | `10s` |
/// | `PYROSCOPE_SPAN_SCOPE` | `root` (local roots only, like Go), `all` or `none` | `root` |
/// | `PYROSCOPE_SPAN_NAME_LABEL` | add the `span_name` sample label (a series label on the server) | `true` |
/// | `PYROSCOPE_TRACE_ID_LABEL` | add the `trace_id` sample label (a series label on servers before 2.1) | `false` |
///
/// Booleans are `true`/`false`, `1`/`0` or `yes`/`no`, in any case.
///
/// # Label rules
///
/// Static labels must pass the server's checks, or every upload would be
/// rejected: names use only `[a-zA-Z0-9_.]`, do not start with a digit or
/// `__`, are at most 1024 bytes, values at most 2048 bytes and not empty, no
/// name twice, and none of the names the crate sets itself (`__name__`,
/// `service_name`, `process.runtime.name`, `span_id`, `span_name`,
/// `trace_id`, `profile_id`). A series may have at most 30 labels in all,
/// counting `__name__`, `service_name`, `process.runtime.name` and, when
/// enabled, `span_name` and `trace_id`; so at most 25 static labels with the
/// defaults.
pub fn from_env() -> Result<(SpanProfileLayer, ProfilerGuard), Error> {
    let config = config_from_lookup(|name| std::env::var(name).ok())?;
    crate::profiler::start(config)
}

/// `from_env` without the process environment: `lookup` returns a
/// variable's value. Empty values count as unset.
pub(crate) fn config_from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, Error> {
    let get = |name: &str| lookup(name).filter(|v| !v.is_empty());

    let mut config = Config::new(String::new());
    if let Some(v) = get("PYROSCOPE_PROFILING_ENABLED") {
        config.enabled = parse_bool("PYROSCOPE_PROFILING_ENABLED", &v)?;
    }
    if !config.enabled {
        return Ok(config);
    }

    let (name_var, name) = application_name_from(&get);
    config.application_name = name;
    config.server_address = get("PYROSCOPE_SERVER_ADDRESS").map(|v| v.trim().to_string());
    config.profiles_dir = get("PYROSCOPE_PROFILES_DIR").map(PathBuf::from);
    config.basic_auth_user = get("PYROSCOPE_BASIC_AUTH_USER");
    config.basic_auth_password = get("PYROSCOPE_BASIC_AUTH_PASSWORD").map(Secret);
    config.tenant_id = get("PYROSCOPE_TENANT_ID");
    if let Some(v) = get("PYROSCOPE_LABELS") {
        config.labels = parse_labels("PYROSCOPE_LABELS", &v)?;
    }
    if let Some(v) = get("PYROSCOPE_SAMPLE_RATE") {
        config.sample_rate = v.trim().parse().map_err(|_| {
            Error::config(
                "PYROSCOPE_SAMPLE_RATE",
                &v,
                &format!(
                    "an integer from 1 to {SAMPLE_RATE_MAX} (samples per CPU-second per thread)"
                ),
            )
        })?;
    }
    if let Some(v) = get("PYROSCOPE_UPLOAD_INTERVAL") {
        config.upload_interval = parse_duration(&v).ok_or_else(|| {
            Error::config(
                "PYROSCOPE_UPLOAD_INTERVAL",
                &v,
                "a duration from 100ms to 1h such as 10s, 500ms, 1m or 1m30s",
            )
        })?;
    }
    if let Some(v) = get("PYROSCOPE_SPAN_SCOPE") {
        config.span_scope = match v.trim().to_ascii_lowercase().as_str() {
            "root" => SpanScope::Root,
            "all" => SpanScope::All,
            "none" => SpanScope::None,
            _ => {
                return Err(Error::config(
                    "PYROSCOPE_SPAN_SCOPE",
                    &v,
                    "one of root, all, none",
                ))
            }
        };
    }
    if let Some(v) = get("PYROSCOPE_SPAN_NAME_LABEL") {
        config.span_name_label = parse_bool("PYROSCOPE_SPAN_NAME_LABEL", &v)?;
    }
    if let Some(v) = get("PYROSCOPE_TRACE_ID_LABEL") {
        config.trace_id_label = parse_bool("PYROSCOPE_TRACE_ID_LABEL", &v)?;
    }

    let names = Names {
        application_name: name_var,
        ..ENV_NAMES
    };
    config.validate(&names)
}

/// `PYROSCOPE_APPLICATION_NAME`, else `OTEL_SERVICE_NAME`, else
/// `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, else the binary's name.
/// Returns the variable it came from (for error messages) and the name.
fn application_name_from(get: &impl Fn(&str) -> Option<String>) -> (&'static str, String) {
    for var in ["PYROSCOPE_APPLICATION_NAME", "OTEL_SERVICE_NAME"] {
        if let Some(v) = get(var) {
            return (var, v.trim().to_string());
        }
    }
    if let Some(attrs) = get("OTEL_RESOURCE_ATTRIBUTES") {
        if let Some(name) = service_name_from_resource_attributes(&attrs) {
            return ("OTEL_RESOURCE_ATTRIBUTES", name);
        }
    }
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown_service".to_string());
    ("PYROSCOPE_APPLICATION_NAME", binary)
}

/// `service.name` from OTel's `key1=value1,key2=value2` list (values
/// percent-encoded, per the OTel SDK environment specification).
fn service_name_from_resource_attributes(attrs: &str) -> Option<String> {
    attrs.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == "service.name")
            .then(|| percent_decode(v.trim()))
            .filter(|v| !v.is_empty())
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(Ok(b)) = s.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16)) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_bool(var: &str, value: &str) -> Result<bool, Error> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(Error::config(
            var,
            value,
            "true or false (also 1/0, yes/no)",
        )),
    }
}

/// `10s`, `500ms`, `1m`, `1h`, `1m30s`: integers with units ms, s, m, h.
fn parse_duration(value: &str) -> Option<Duration> {
    let s = value.trim();
    if s.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(part)?;
    }
    Some(total)
}

fn format_duration(d: Duration) -> String {
    if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{d:?}")
    }
}

/// `k=v,k2=v2`; blank items (e.g. a trailing comma) are skipped. The
/// label rules are checked later, in `check_labels`.
fn parse_labels(var: &str, value: &str) -> Result<Vec<(String, String)>, Error> {
    let mut labels = Vec::new();
    for item in value.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let Some((k, v)) = item.split_once('=') else {
            return Err(Error::config(
                var,
                value,
                &format!("comma-separated name=value pairs, e.g. region=eu-north,env=prod (item {item:?} has no '=')"),
            ));
        };
        labels.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(labels)
}

fn check_application_name(var: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > MAX_LABEL_VALUE_LEN || name.chars().any(char::is_control) {
        return Err(Error::config(
            var,
            name,
            &format!(
                "a non-empty service name of at most {MAX_LABEL_VALUE_LEN} bytes without control characters (it must equal OTel service.name)"
            ),
        ));
    }
    Ok(())
}

/// `http(s)://host[:port][/path]`, returned without a trailing `/`.
fn parse_server_address(var: &str, address: &str) -> Result<String, Error> {
    const EXPECTED: &str = "an http:// or https:// URL such as http://localhost:4040 (host, optional port and path; no query, fragment or credentials)";
    let trimmed = address.trim();
    let url = match reqwest::Url::parse(trimmed) {
        Ok(url) => url,
        Err(_) => return Err(Error::config(var, &redact_url_userinfo(trimmed), EXPECTED)),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::config(
            var,
            &redact_url_userinfo(trimmed),
            "a URL without credentials: set the user and password with PYROSCOPE_BASIC_AUTH_USER/_PASSWORD (or Builder::basic_auth)",
        ));
    }
    let scheme_ok = matches!(url.scheme(), "http" | "https");
    let host_ok = url.host_str().is_some_and(|h| !h.is_empty());
    if !scheme_ok || !host_ok || url.query().is_some() || url.fragment().is_some() {
        return Err(Error::config(var, trimmed, EXPECTED));
    }
    if url.scheme() == "https" && !cfg!(feature = "tls") {
        return Err(Error::config(
            var,
            trimmed,
            "an http:// URL: this build has no TLS support; enable the `tls` feature of tracing-pyroscope for https",
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// `scheme://user:pass@host` → `scheme://<redacted>@host`, so a password
/// pasted into the address never reaches an error message.
fn redact_url_userinfo(address: &str) -> String {
    let (scheme, rest) = match address.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, address),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let tail = &rest[at + 1..];
            match scheme {
                Some(s) => format!("{s}://{REDACTED}@{tail}"),
                None => format!("{REDACTED}@{tail}"),
            }
        }
        None => address.to_string(),
    }
}

fn check_basic_auth_user(var: &str, user: &str) -> Result<(), Error> {
    if user.contains(':') || user.chars().any(char::is_control) {
        return Err(Error::config(
            var,
            user,
            "a user name without ':' or control characters",
        ));
    }
    Ok(())
}

/// The tenant-id rules of Pyroscope/Mimir: at most 150 of
/// `[a-zA-Z0-9!-_.*'()]`, not `.` or `..`.
fn check_tenant_id(var: &str, tenant: &str) -> Result<(), Error> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "!-_.*'()".contains(c);
    if tenant.len() > 150 || tenant == "." || tenant == ".." || !tenant.chars().all(ok_char) {
        return Err(Error::config(
            var,
            tenant,
            "a tenant id of at most 150 characters from a-z A-Z 0-9 ! - _ . * ' ( ), not \".\" or \"..\"",
        ));
    }
    Ok(())
}

/// Whether `name` is a label name the server accepts: `[a-zA-Z0-9_.]`, no
/// leading digit, no `__` prefix (reserved).
pub(crate) fn is_valid_label_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with("__")
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

fn check_labels(var: &str, labels: &[(String, String)], config: &Config) -> Result<(), Error> {
    let shown = |labels: &[(String, String)]| {
        labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let fail = |what: String| Err(Error::config(var, &shown(labels), &what));
    for (i, (name, value)) in labels.iter().enumerate() {
        if RESERVED_LABELS.contains(&name.as_str()) {
            return fail(format!(
                "label names other than the reserved {RESERVED_LABELS:?} (label {name:?} is set by tracing-pyroscope)"
            ));
        }
        if !is_valid_label_name(name) {
            return fail(format!(
                "label names of [a-zA-Z0-9_.] not starting with a digit or \"__\" (label {name:?} is invalid)"
            ));
        }
        if name.len() > MAX_LABEL_NAME_LEN {
            return fail(format!(
                "label names of at most {MAX_LABEL_NAME_LEN} bytes (a name has {})",
                name.len()
            ));
        }
        if value.is_empty() || value.len() > MAX_LABEL_VALUE_LEN {
            return fail(format!(
                "label values of 1 to {MAX_LABEL_VALUE_LEN} bytes (label {name:?} has {})",
                value.len()
            ));
        }
        if labels[..i].iter().any(|(n, _)| n == name) {
            return fail(format!("each label name once (label {name:?} is repeated)"));
        }
    }
    let fixed = FIXED_SERIES_LABELS.len()
        + usize::from(config.span_name_label)
        + usize::from(config.trace_id_label);
    let max = MAX_SERIES_LABELS - fixed;
    if labels.len() > max {
        return fail(format!(
            "at most {max} static labels (the server allows {MAX_SERIES_LABELS} series labels and tracing-pyroscope uses {fixed}), got {}",
            labels.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<Config, Error> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        config_from_lookup(move |k| map.get(k).cloned())
    }

    fn err(vars: &[(&str, &str)]) -> String {
        let e = env(vars).expect_err("expected an error");
        assert_eq!(e.kind(), ErrorKind::Config);
        e.to_string()
    }

    #[test]
    fn defaults_and_nothing_configured() {
        let c = env(&[]).unwrap();
        assert!(c.enabled);
        assert!(!c.profiling_on());
        assert_eq!(c.sample_rate, 100);
        assert_eq!(c.upload_interval, Duration::from_secs(10));
        assert_eq!(c.span_scope, SpanScope::Root);
        assert!(c.span_name_label && !c.trace_id_label);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
        assert!(!c.application_name.is_empty());
    }

    #[test]
    fn full_table() {
        let c = env(&[
            ("PYROSCOPE_SERVER_ADDRESS", "http://pyro:4040/prefix/"),
            ("PYROSCOPE_PROFILES_DIR", "/tmp/p"),
            ("PYROSCOPE_APPLICATION_NAME", "ride-sharing-app"),
            ("OTEL_SERVICE_NAME", "ignored"),
            ("PYROSCOPE_BASIC_AUTH_USER", "123"),
            ("PYROSCOPE_BASIC_AUTH_PASSWORD", "s3cr3t"),
            ("PYROSCOPE_TENANT_ID", "tenant-a"),
            ("PYROSCOPE_LABELS", " region = eu-north, env=prod ,"),
            ("PYROSCOPE_SAMPLE_RATE", "250"),
            ("PYROSCOPE_UPLOAD_INTERVAL", "1m30s"),
            ("PYROSCOPE_SPAN_SCOPE", "ALL"),
            ("PYROSCOPE_SPAN_NAME_LABEL", "no"),
            ("PYROSCOPE_TRACE_ID_LABEL", "Yes"),
        ])
        .unwrap();
        assert_eq!(c.server_address.as_deref(), Some("http://pyro:4040/prefix"));
        assert_eq!(c.profiles_dir, Some(PathBuf::from("/tmp/p")));
        assert_eq!(c.application_name, "ride-sharing-app");
        assert_eq!(c.basic_auth_user.as_deref(), Some("123"));
        assert_eq!(c.basic_auth_password, Some(Secret("s3cr3t".into())));
        assert_eq!(c.tenant_id.as_deref(), Some("tenant-a"));
        assert_eq!(
            c.labels,
            vec![
                ("region".to_string(), "eu-north".to_string()),
                ("env".to_string(), "prod".to_string())
            ]
        );
        assert_eq!(c.sample_rate, 250);
        assert_eq!(c.upload_interval, Duration::from_secs(90));
        assert_eq!(c.span_scope, SpanScope::All);
        assert!(!c.span_name_label && c.trace_id_label);
        assert!(c.profiling_on());
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn service_name_fallbacks() {
        let c = env(&[("OTEL_SERVICE_NAME", "svc")]).unwrap();
        assert_eq!(c.application_name, "svc");
        let c = env(&[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "a=b, service.name=my%20svc ,x=y",
        )])
        .unwrap();
        assert_eq!(c.application_name, "my svc");
        let c = env(&[
            ("OTEL_SERVICE_NAME", "svc"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=other"),
        ])
        .unwrap();
        assert_eq!(c.application_name, "svc");
        let c = env(&[
            ("PYROSCOPE_APPLICATION_NAME", ""),
            ("OTEL_SERVICE_NAME", "svc"),
        ])
        .unwrap();
        assert_eq!(c.application_name, "svc", "empty counts as unset");
        let exe = std::env::current_exe().unwrap();
        let stem = exe.file_stem().unwrap().to_string_lossy();
        assert_eq!(env(&[]).unwrap().application_name, stem);
    }

    #[test]
    fn disabled_skips_the_rest() {
        let c = env(&[
            ("PYROSCOPE_PROFILING_ENABLED", "FALSE"),
            ("PYROSCOPE_SAMPLE_RATE", "banana"),
            ("PYROSCOPE_SERVER_ADDRESS", "http://x:1"),
        ])
        .unwrap();
        assert!(!c.enabled && !c.profiling_on());
        let m = err(&[("PYROSCOPE_PROFILING_ENABLED", "maybe")]);
        assert!(
            m.contains("PYROSCOPE_PROFILING_ENABLED") && m.contains("maybe"),
            "{m}"
        );
    }

    #[test]
    fn durations() {
        let d = |s| parse_duration(s);
        assert_eq!(d("10s"), Some(Duration::from_secs(10)));
        assert_eq!(d("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(d("1m"), Some(Duration::from_secs(60)));
        assert_eq!(d("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(d("1m30s"), Some(Duration::from_secs(90)));
        for bad in [
            "10",
            "s",
            "1.5s",
            "-1s",
            "10 s",
            "1d",
            "ms10",
            "99999999999999999999h",
        ] {
            assert_eq!(d(bad), None, "{bad}");
        }
        let m = err(&[("PYROSCOPE_UPLOAD_INTERVAL", "10")]);
        assert!(
            m.contains("PYROSCOPE_UPLOAD_INTERVAL=\"10\"") && m.contains("10s"),
            "{m}"
        );
        let m = err(&[("PYROSCOPE_UPLOAD_INTERVAL", "50ms")]);
        assert!(m.contains("50ms") && m.contains("100ms to 1h"), "{m}");
        let m = err(&[("PYROSCOPE_UPLOAD_INTERVAL", "2h")]);
        assert!(m.contains("7200000ms") && m.contains("100ms to 1h"), "{m}");
    }

    #[test]
    fn bad_values_name_the_variable_value_and_expectation() {
        let cases: &[(&str, &str, &str)] = &[
            ("PYROSCOPE_SERVER_ADDRESS", "localhost:4040", "http://"),
            ("PYROSCOPE_SERVER_ADDRESS", "ftp://x", "http://"),
            ("PYROSCOPE_SERVER_ADDRESS", "http://x:4040/?q=1", "no query"),
            ("PYROSCOPE_SERVER_ADDRESS", "http://x:99999", "http://"),
            ("PYROSCOPE_SAMPLE_RATE", "0", "1 to 1000"),
            ("PYROSCOPE_SAMPLE_RATE", "1001", "1 to 1000"),
            ("PYROSCOPE_SAMPLE_RATE", "fast", "1 to 1000"),
            ("PYROSCOPE_SPAN_SCOPE", "leaf", "root, all, none"),
            ("PYROSCOPE_SPAN_NAME_LABEL", "maybe", "true or false"),
            ("PYROSCOPE_TRACE_ID_LABEL", "2", "true or false"),
            ("PYROSCOPE_TENANT_ID", "a/b", "tenant id"),
            ("PYROSCOPE_LABELS", "region", "name=value"),
            ("PYROSCOPE_LABELS", "__x=1", "\"__\""),
            ("PYROSCOPE_LABELS", "a-b=1", "[a-zA-Z0-9_.]"),
            ("PYROSCOPE_LABELS", "1a=1", "digit"),
            ("PYROSCOPE_LABELS", "span_id=1", "reserved"),
            ("PYROSCOPE_LABELS", "service_name=x", "reserved"),
            ("PYROSCOPE_LABELS", "a=", "1 to 2048"),
            ("PYROSCOPE_LABELS", "a=1,a=2", "repeated"),
            ("PYROSCOPE_APPLICATION_NAME", "a\nb", "service name"),
            ("PYROSCOPE_BASIC_AUTH_USER", "a:b", "without ':'"),
        ];
        for (var, value, expected) in cases {
            let mut vars = vec![(*var, *value)];
            if *var == "PYROSCOPE_BASIC_AUTH_USER" {
                vars.push(("PYROSCOPE_BASIC_AUTH_PASSWORD", "pw"));
            }
            let m = err(&vars);
            assert!(m.contains(var), "{var}: {m}");
            assert!(
                m.contains(&format!("{value:?}")) || m.contains(value),
                "{var}: {m}"
            );
            assert!(m.contains(expected), "{var}={value}: {m}");
        }
    }

    #[test]
    fn too_many_labels_counts_fixed_series_labels() {
        let labels = |n: usize| {
            (0..n)
                .map(|i| format!("l{i}=v"))
                .collect::<Vec<_>>()
                .join(",")
        };
        // Defaults: __name__, service_name, process.runtime.name, span_name.
        assert!(env(&[("PYROSCOPE_LABELS", &labels(26))]).is_ok());
        let m = err(&[("PYROSCOPE_LABELS", &labels(27))]);
        assert!(m.contains("at most 26 static labels"), "{m}");
        let m = err(&[
            ("PYROSCOPE_LABELS", &labels(26)),
            ("PYROSCOPE_TRACE_ID_LABEL", "1"),
        ]);
        assert!(m.contains("at most 25"), "{m}");
        assert!(env(&[
            ("PYROSCOPE_LABELS", &labels(27)),
            ("PYROSCOPE_SPAN_NAME_LABEL", "0")
        ])
        .is_ok());
        let long = format!("a={}", "x".repeat(2049));
        assert!(err(&[("PYROSCOPE_LABELS", &long)]).contains("1 to 2048"));
        let long = format!("{}=1", "a".repeat(1025));
        assert!(err(&[("PYROSCOPE_LABELS", &long)]).contains("at most 1024"));
    }

    #[test]
    fn secrets_never_shown() {
        let m = err(&[("PYROSCOPE_BASIC_AUTH_PASSWORD", "hunter2")]);
        assert!(
            m.contains("PYROSCOPE_BASIC_AUTH_PASSWORD") && m.contains("PYROSCOPE_BASIC_AUTH_USER"),
            "{m}"
        );
        assert!(!m.contains("hunter2") && m.contains("<redacted>"), "{m}");
        let m = err(&[("PYROSCOPE_BASIC_AUTH_USER", "u")]);
        assert!(m.contains("PYROSCOPE_BASIC_AUTH_PASSWORD"), "{m}");
        let m = err(&[("PYROSCOPE_SERVER_ADDRESS", "http://u:hunter2@host:4040")]);
        assert!(
            !m.contains("hunter2") && m.contains("<redacted>@host:4040"),
            "{m}"
        );
        assert!(m.contains("PYROSCOPE_BASIC_AUTH_USER"), "{m}");
        let b = Builder::new("x").basic_auth("u", "hunter2");
        assert!(!format!("{b:?}").contains("hunter2"));
    }

    #[test]
    fn https_needs_tls_feature() {
        let r = env(&[("PYROSCOPE_SERVER_ADDRESS", "https://profiles.example.net")]);
        if cfg!(feature = "tls") {
            assert_eq!(
                r.unwrap().server_address.as_deref(),
                Some("https://profiles.example.net")
            );
        } else {
            let m = r.unwrap_err().to_string();
            assert!(
                m.contains("PYROSCOPE_SERVER_ADDRESS") && m.contains("`tls` feature"),
                "{m}"
            );
        }
    }

    #[test]
    fn builder_validates_at_build() {
        let check = |b: Builder, name: &str, expected: &str| {
            let m = b.config.validate(&BUILDER_NAMES).unwrap_err().to_string();
            assert!(m.contains(name) && m.contains(expected), "{m}");
        };
        check(Builder::new(""), "Builder::new", "non-empty");
        check(
            Builder::new("a").sample_rate(0),
            "Builder::sample_rate",
            "1 to 1000",
        );
        check(
            Builder::new("a").upload_interval(Duration::from_millis(1)),
            "Builder::upload_interval",
            "100ms",
        );
        check(
            Builder::new("a").shutdown_timeout(Duration::from_secs(301)),
            "Builder::shutdown_timeout",
            "at most 5m",
        );
        check(Builder::new("a").label("a b", "1"), "Builder::label", "a b");
        check(
            Builder::new("a").tenant_id("x y"),
            "Builder::tenant_id",
            "x y",
        );
        check(
            Builder::new("a").server_address("nope"),
            "Builder::server_address",
            "http://",
        );
        let c = Builder::new("a")
            .labels([("k", "v"), ("k2", "v2")])
            .server_address("http://127.0.0.1:4040/")
            .config
            .validate(&BUILDER_NAMES)
            .unwrap();
        assert_eq!(c.labels.len(), 2);
        assert_eq!(c.server_address.as_deref(), Some("http://127.0.0.1:4040"));
    }
}
