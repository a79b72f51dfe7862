//! The checks every setting passes, whatever its source: the server's
//! rules for labels, names and limits, and the crate's own bounds.

use std::time::Duration;

use super::{
    Config, ALLOCATION_SAMPLE_BYTES_MAX, ALLOCATION_SAMPLE_BYTES_MIN, FIXED_SERIES_LABELS,
    MAX_LABEL_NAME_LEN, MAX_LABEL_VALUE_LEN, MAX_SERIES_LABELS, MAX_SPAN_IDS_MAX,
    MAX_SPAN_NAMES_MAX, PROFILES_DIR_MAX_AGE_MIN, PROFILES_DIR_MAX_SIZE_MIN, SAMPLE_RATE_MAX,
    SHUTDOWN_TIMEOUT_MAX, UPLOAD_INTERVAL_MAX, UPLOAD_INTERVAL_MIN,
};
use crate::context::keys;
use crate::error::Error;
use crate::secret::REDACTED;

/// What each field is called in error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Names {
    pub(crate) application_name: &'static str,
    pub(crate) server_address: &'static str,
    pub(crate) profiles_dir: &'static str,
    pub(crate) basic_auth_user: &'static str,
    pub(crate) basic_auth_password: &'static str,
    pub(crate) tenant_id: &'static str,
    pub(crate) labels: &'static str,
    pub(crate) sample_rate: &'static str,
    pub(crate) upload_interval: &'static str,
    pub(crate) shutdown_timeout: &'static str,
    pub(crate) max_span_names: &'static str,
    pub(crate) span_labels: &'static str,
    pub(crate) max_span_label_values: &'static str,
    pub(crate) max_span_ids: &'static str,
    pub(crate) profiles_dir_max_size: &'static str,
    pub(crate) profiles_dir_max_age: &'static str,
    pub(crate) allocation_sample_bytes: &'static str,
}

pub(crate) const ENV_NAMES: Names = Names {
    application_name: "PYROSCOPE_APPLICATION_NAME",
    server_address: "PYROSCOPE_SERVER_ADDRESS",
    profiles_dir: "PYROSCOPE_PROFILES_DIR",
    basic_auth_user: "PYROSCOPE_BASIC_AUTH_USER",
    basic_auth_password: "PYROSCOPE_BASIC_AUTH_PASSWORD",
    tenant_id: "PYROSCOPE_TENANT_ID",
    labels: "PYROSCOPE_LABELS",
    sample_rate: "PYROSCOPE_SAMPLE_RATE",
    upload_interval: "PYROSCOPE_UPLOAD_INTERVAL",
    shutdown_timeout: "Builder::shutdown_timeout",
    max_span_names: "PYROSCOPE_MAX_SPAN_NAMES",
    span_labels: "PYROSCOPE_SPAN_LABELS",
    max_span_label_values: "PYROSCOPE_SPAN_LABEL_VALUES",
    max_span_ids: "PYROSCOPE_MAX_SPAN_IDS",
    profiles_dir_max_size: "PYROSCOPE_PROFILES_DIR_MAX_SIZE",
    profiles_dir_max_age: "PYROSCOPE_PROFILES_DIR_MAX_AGE",
    allocation_sample_bytes: "PYROSCOPE_ALLOCATION_SAMPLE_BYTES",
};

pub(crate) const BUILDER_NAMES: Names = Names {
    application_name: "Builder::new",
    server_address: "Builder::server_address",
    profiles_dir: "Builder::profiles_dir",
    basic_auth_user: "Builder::basic_auth (user)",
    basic_auth_password: "Builder::basic_auth (password)",
    tenant_id: "Builder::tenant_id",
    labels: "Builder::label",
    sample_rate: "Builder::sample_rate",
    upload_interval: "Builder::upload_interval",
    shutdown_timeout: "Builder::shutdown_timeout",
    max_span_names: "Builder::max_span_names",
    span_labels: "Builder::span_labels",
    max_span_label_values: "Builder::max_span_label_values",
    max_span_ids: "Builder::max_span_ids",
    profiles_dir_max_size: "Builder::profiles_dir_max_size",
    profiles_dir_max_age: "Builder::profiles_dir_max_age",
    allocation_sample_bytes: "Builder::allocation_sample_bytes",
};

/// Label names the crate sets itself (series labels and sample labels), so
/// a static label may not use them, nor a name the server turns into one of
/// them (it replaces `.` with `_`).
pub(crate) fn reserved_labels() -> impl Iterator<Item = &'static str> {
    FIXED_SERIES_LABELS
        .into_iter()
        .chain(keys::ALL)
        .chain(["profile_id"])
}

/// A label name as the server stores it: `.` becomes `_`
/// (pkg/validation/validate.go).
pub(crate) fn sanitize_label_name(name: &str) -> String {
    name.replace('.', "_")
}

impl Config {
    /// Checks every field and normalizes the server address. `names` says
    /// how to call each field in an error (env variable or builder method).
    pub(crate) fn validate(mut self) -> Result<Config, Error> {
        let names = self.names;
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
        check_span_labels(names.span_labels, &self)?;
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
                "a duration from 100ms to 10m, e.g. 10s (the server rejects profiles older than its 1 h ingestion window, counted from the start of their interval, and an upload may be retried for up to 2 min)",
            ));
        }
        if !(1..=MAX_SPAN_NAMES_MAX).contains(&self.max_span_names) {
            return Err(Error::config(
                names.max_span_names,
                &self.max_span_names.to_string(),
                &format!(
                    "an integer from 1 to {MAX_SPAN_NAMES_MAX}: each distinct span name is a series on the Pyroscope server, whose default limit is 5000 per tenant"
                ),
            ));
        }
        if !(1..=MAX_SPAN_NAMES_MAX).contains(&self.max_span_label_values) {
            return Err(Error::config(
                names.max_span_label_values,
                &self.max_span_label_values.to_string(),
                &format!(
                    "an integer from 1 to {MAX_SPAN_NAMES_MAX}: the most distinct values of each span label (each value is a series on the Pyroscope server)"
                ),
            ));
        }
        if !(1..=MAX_SPAN_IDS_MAX).contains(&self.max_span_ids) {
            return Err(Error::config(
                names.max_span_ids,
                &self.max_span_ids.to_string(),
                &format!("an integer from 1 to {MAX_SPAN_IDS_MAX} (distinct span ids per profile interval)"),
            ));
        }
        if self.profiles_dir_max_size < PROFILES_DIR_MAX_SIZE_MIN {
            return Err(Error::config(
                names.profiles_dir_max_size,
                &self.profiles_dir_max_size.to_string(),
                "a size of at least 64KiB, e.g. 512MiB, 2GiB or 100MB",
            ));
        }
        if !(ALLOCATION_SAMPLE_BYTES_MIN..=ALLOCATION_SAMPLE_BYTES_MAX)
            .contains(&self.allocation_sample_bytes)
        {
            return Err(Error::config(
                names.allocation_sample_bytes,
                &self.allocation_sample_bytes.to_string(),
                &format!(
                    "a size from {ALLOCATION_SAMPLE_BYTES_MIN} bytes to 1GiB, e.g. 512KiB or 32KiB"
                ),
            ));
        }
        if self.profiles_dir_max_age < PROFILES_DIR_MAX_AGE_MIN {
            return Err(Error::config(
                names.profiles_dir_max_age,
                &format_duration(self.profiles_dir_max_age),
                "a duration of at least 1s, e.g. 24h, 30m or 168h",
            ));
        }
        if self.shutdown_timeout > SHUTDOWN_TIMEOUT_MAX {
            return Err(Error::config(
                names.shutdown_timeout,
                &format_duration(self.shutdown_timeout),
                "a duration of at most 5m",
            ));
        }
        Ok(self)
    }
}

pub(super) fn format_duration(d: Duration) -> String {
    if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{d:?}")
    }
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

/// Without the `upload` feature nothing can be uploaded: a server address
/// is an error that says which feature to enable.
#[cfg(not(feature = "upload"))]
fn parse_server_address(var: &str, address: &str) -> Result<String, Error> {
    Err(Error::config(
        var,
        &redact_url_userinfo(address.trim()),
        "no server address: this build cannot upload; enable the `upload` feature of tracing-pyroscope (on by default) or write local files with PYROSCOPE_PROFILES_DIR",
    ))
}

/// `http(s)://host[:port][/path]`, returned without a trailing `/`.
#[cfg(feature = "upload")]
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
fn is_valid_label_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with("__")
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// Series labels the crate sends besides the static ones: the fixed ones,
/// `span_name` and `trace_id` when on.
fn crate_series_labels(config: &Config) -> usize {
    FIXED_SERIES_LABELS.len()
        + usize::from(config.span_name_label)
        + usize::from(config.trace_id_label)
}

/// Span labels: field names that become sample labels, hence series
/// labels, under the same rules as static labels, and distinct from them
/// (also after the server turns '.' into '_').
fn check_span_labels(var: &str, config: &Config) -> Result<(), Error> {
    let names = &config.span_labels;
    let fail = |what: String| Err(Error::config(var, &names.join(","), &what));
    for (i, name) in names.iter().enumerate() {
        let sanitized = sanitize_label_name(name);
        if let Some(taken) = reserved_labels().find(|r| sanitize_label_name(r) == sanitized) {
            let reserved: Vec<&str> = reserved_labels().collect();
            let why = if taken == name {
                format!("{name:?} is set by tracing-pyroscope")
            } else {
                format!("{name:?} becomes {sanitized:?} on the server, which turns '.' into '_', and collides with {taken:?} set by tracing-pyroscope")
            };
            return fail(format!(
                "span field names other than the reserved {reserved:?}, also after the server replaces '.' with '_' ({why})"
            ));
        }
        if !is_valid_label_name(name) {
            return fail(format!(
                "comma-separated span field names of [a-zA-Z0-9_.], not starting with a digit or \"__\" ({name:?} is invalid)"
            ));
        }
        if name.len() > MAX_LABEL_NAME_LEN {
            return fail(format!(
                "span field names of at most {MAX_LABEL_NAME_LEN} bytes (a name has {})",
                name.len()
            ));
        }
        if let Some((label, _)) = config
            .labels
            .iter()
            .find(|(l, _)| sanitize_label_name(l) == sanitized)
        {
            return fail(format!(
                "span field names distinct from the static labels (PYROSCOPE_LABELS / Builder::label), also after the server replaces '.' with '_' ({name:?} collides with the static label {label:?})"
            ));
        }
        if let Some(other) = names[..i]
            .iter()
            .find(|n| sanitize_label_name(n) == sanitized)
        {
            let why = if other == name {
                format!("{name:?} is repeated")
            } else {
                format!("{other:?} and {name:?} both become {sanitized:?}")
            };
            return fail(format!(
                "each span field name once, also after the server replaces '.' with '_' ({why})"
            ));
        }
    }
    let used = crate_series_labels(config) + config.labels.len();
    let max = MAX_SERIES_LABELS.saturating_sub(used);
    if names.len() > max {
        return fail(format!(
            "at most {max} span labels (the server allows {MAX_SERIES_LABELS} series labels; tracing-pyroscope uses {} and the static labels {}), got {}",
            crate_series_labels(config),
            config.labels.len(),
            names.len()
        ));
    }
    Ok(())
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
        let sanitized = sanitize_label_name(name);
        if let Some(taken) = reserved_labels().find(|r| sanitize_label_name(r) == sanitized) {
            let reserved: Vec<&str> = reserved_labels().collect();
            let why = if taken == name {
                format!("label {name:?} is set by tracing-pyroscope")
            } else {
                format!(
                    "label {name:?} becomes {sanitized:?} on the server, which turns '.' into '_', and collides with {taken:?} set by tracing-pyroscope"
                )
            };
            return fail(format!(
                "label names other than the reserved {reserved:?}, also after the server replaces '.' with '_' ({why})"
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
        if let Some((other, _)) = labels[..i]
            .iter()
            .find(|(n, _)| sanitize_label_name(n) == sanitized)
        {
            return fail(format!(
                "label names that stay distinct after the server replaces '.' with '_' (labels {other:?} and {name:?} both become {sanitized:?})"
            ));
        }
    }
    let fixed = crate_series_labels(config);
    let max = MAX_SERIES_LABELS - fixed;
    if labels.len() > max {
        return fail(format!(
            "at most {max} static labels (the server allows {MAX_SERIES_LABELS} series labels and tracing-pyroscope uses {fixed}), got {}",
            labels.len()
        ));
    }
    Ok(())
}
