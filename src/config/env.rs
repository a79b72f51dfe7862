//! Reading the configuration from environment variables (the table is in
//! the crate docs and README). Parsing only: every value then passes the
//! same checks as the builder's (`validate.rs`).

use std::path::PathBuf;

use percent_encoding::percent_decode_str;

use super::validate::{Names, ENV_NAMES};
use super::{
    Config, SpanScope, ALLOCATION_SAMPLE_BYTES_MIN, MAX_SPAN_IDS_MAX, MAX_SPAN_NAMES_MAX,
    SAMPLE_RATE_MAX,
};
use crate::error::Error;
use crate::secret::Secret;
use std::time::Duration;

/// `from_env` without the process environment: `lookup` returns a
/// variable's value. Empty values count as unset.
#[cfg(test)]
pub(crate) fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, Error> {
    parse(lookup)?.validate()
}

/// The environment's settings over the defaults, parsed but not yet
/// checked (`Builder::from_env`, whose setters may still change them).
pub(crate) fn parse(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, Error> {
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
                "a duration from 100ms to 10m such as 10s, 500ms, 1m or 1m30s",
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
    if let Some(v) = get("PYROSCOPE_MAX_SPAN_NAMES") {
        config.max_span_names = v.trim().parse().map_err(|_| {
            Error::config(
                "PYROSCOPE_MAX_SPAN_NAMES",
                &v,
                &format!("an integer from 1 to {MAX_SPAN_NAMES_MAX}"),
            )
        })?;
    }
    if let Some(v) = get("PYROSCOPE_SPAN_LABELS") {
        config.span_labels = v
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect();
    }
    if let Some(v) = get("PYROSCOPE_SPAN_LABEL_VALUES") {
        config.max_span_label_values = v.trim().parse().map_err(|_| {
            Error::config(
                "PYROSCOPE_SPAN_LABEL_VALUES",
                &v,
                &format!("an integer from 1 to {MAX_SPAN_NAMES_MAX}"),
            )
        })?;
    }
    if let Some(v) = get("PYROSCOPE_MAX_SPAN_IDS") {
        config.max_span_ids = v.trim().parse().map_err(|_| {
            Error::config(
                "PYROSCOPE_MAX_SPAN_IDS",
                &v,
                &format!("an integer from 1 to {MAX_SPAN_IDS_MAX} (distinct span ids per profile interval)"),
            )
        })?;
    }
    if let Some(v) = get("PYROSCOPE_PROFILES_DIR_MAX_SIZE") {
        config.profiles_dir_max_size = parse_size(&v).ok_or_else(|| {
            Error::config(
                "PYROSCOPE_PROFILES_DIR_MAX_SIZE",
                &v,
                "a size of at least 64KiB such as 512MiB, 2GiB, 100MB or a number of bytes",
            )
        })?;
    }
    if let Some(v) = get("PYROSCOPE_PROFILES_DIR_MAX_AGE") {
        config.profiles_dir_max_age = parse_duration(&v).ok_or_else(|| {
            Error::config(
                "PYROSCOPE_PROFILES_DIR_MAX_AGE",
                &v,
                "a duration of at least 1s such as 24h, 30m or 1h30m",
            )
        })?;
    }
    if let Some(v) = get("PYROSCOPE_TRACE_ID_LABEL") {
        config.trace_id_label = parse_bool("PYROSCOPE_TRACE_ID_LABEL", &v)?;
    }
    if let Some(v) = get("PYROSCOPE_PROFILING_WALLTIME_ENABLED") {
        config.wall_time = parse_bool("PYROSCOPE_PROFILING_WALLTIME_ENABLED", &v)?;
    }
    if let Some(v) = get("PYROSCOPE_PROFILING_ALLOCATION_ENABLED") {
        config.allocations = parse_bool("PYROSCOPE_PROFILING_ALLOCATION_ENABLED", &v)?;
    }
    if let Some(v) = get("PYROSCOPE_PROFILING_HEAP_ENABLED") {
        config.heap = parse_bool("PYROSCOPE_PROFILING_HEAP_ENABLED", &v)?;
    }
    if let Some(v) = get("PYROSCOPE_ALLOCATION_SAMPLE_BYTES") {
        config.allocation_sample_bytes = parse_size(&v).ok_or_else(|| {
            Error::config(
                "PYROSCOPE_ALLOCATION_SAMPLE_BYTES",
                &v,
                &format!(
                    "a size from {ALLOCATION_SAMPLE_BYTES_MIN} bytes to 1GiB such as 512KiB, 32KiB or a number of bytes"
                ),
            )
        })?;
    }
    if let Some(v) = get("PYROSCOPE_PROFILE_ID_ALWAYS") {
        config.profile_id_always = parse_bool("PYROSCOPE_PROFILE_ID_ALWAYS", &v)?;
    }

    config.names = Names {
        application_name: name_var,
        ..ENV_NAMES
    };
    Ok(config)
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
            .then(|| {
                percent_decode_str(v.trim())
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .filter(|v| !v.is_empty())
    })
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
pub(super) fn parse_duration(value: &str) -> Option<Duration> {
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

/// A size in bytes: a whole number with an optional unit, `B`, `KB`, `MB`,
/// `GB`, `TB` (powers of 1000) or `KiB`, `MiB`, `GiB`, `TiB` (powers of
/// 1024), in any case, with or without a space: `512MiB`, `100 MB`, `65536`.
pub(super) fn parse_size(value: &str) -> Option<u64> {
    let s = value.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n: u64 = s[..digits].parse().ok()?;
    let unit = s[digits..].trim().to_ascii_lowercase();
    let scale: u64 = match unit.as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000_u64.pow(2),
        "gb" => 1000_u64.pow(3),
        "tb" => 1000_u64.pow(4),
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(scale)
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
