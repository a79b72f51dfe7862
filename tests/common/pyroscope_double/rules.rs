//! What the Pyroscope server accepts, rule by rule, for the test double.
//!
//! Each rule cites `docs/PYROSCOPE-PROTOCOL.md` ("PROTOCOL" below), the
//! project's notes on the server's source (grafana/pyroscope v1.13.4, the
//! version the compose file ships, v1.21.1 and main), and the server file
//! the fact comes from. Where the server silently drops data instead of
//! answering 400, the double answers 400 anyway and says so: a test must
//! see data loss, not a `<missing location>` frame.
//!
//! Error bodies are what the server sends: Connect's JSON
//! `{"code":"invalid_argument","message":…}` with the server's message
//! texts (pkg/validation/validate.go), status 400.

use std::collections::BTreeSet;
use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;

use super::super::pprof::Profile;
use super::ApiError;

/// PROTOCOL, limits table: label names per series.
pub const MAX_LABELS: usize = 30;
/// PROTOCOL, limits table: label name length.
pub const MAX_NAME_LEN: usize = 1024;
/// PROTOCOL, limits table and "Sample labels become series": label value
/// length; a longer value gets the whole push rejected.
pub const MAX_VALUE_LEN: usize = 2048;
/// PROTOCOL, limits table: profile size, uncompressed.
pub const MAX_PROFILE_BYTES: usize = 4 << 20;
/// PROTOCOL, limits table: stack-trace samples per profile.
pub const MAX_SAMPLES: usize = 16000;
/// PROTOCOL, limits table: sample labels per sample.
pub const MAX_SAMPLE_LABELS: usize = 100;
/// PROTOCOL, limits table and "Deep stacks": deeper stacks are cut at the
/// leaf end, not rejected.
pub const MAX_STACK_DEPTH: usize = 1000;
/// PROTOCOL, limits table and "Ingestion window": rejected if older.
pub const REJECT_OLDER_THAN_NANOS: i64 = 3_600_000_000_000;
/// PROTOCOL, limits table: rejected if newer than now plus this.
pub const REJECT_NEWER_THAN_NANOS: i64 = 600_000_000_000;
/// PROTOCOL, "The query Grafana makes" and "Profile type": the type id
/// Grafana's "Profiles for this span" queries.
pub const GRAFANA_PROFILE_TYPE: &str = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";
/// The wall profile type Pyroscope derives for Java's wall profiles.
pub const GRAFANA_WALL_TYPE: &str = "wall:wall:nanoseconds:wall:nanoseconds";
/// Go's allocation profile type, which Grafana's UI knows.
pub const GRAFANA_ALLOC_TYPE: &str = "memory:alloc_space:bytes:space:bytes";

/// The type Grafana queries for a series `__name__`, for the names this
/// crate sends; `None` for any other name.
pub fn grafana_type_for(name: &str) -> Option<&'static str> {
    match name {
        "process_cpu" => Some(GRAFANA_PROFILE_TYPE),
        "wall" => Some(GRAFANA_WALL_TYPE),
        "memory" => Some(GRAFANA_ALLOC_TYPE),
        _ => None,
    }
}

/// Which server's sample-label rules to apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServerVersion {
    /// v1.13.4, what the compose file ships: `trace_id` is a series label
    /// (PROTOCOL, "`trace_id` on servers before 2.1").
    #[default]
    V1_13,
    /// 2.1 and later: `trace_id` (32 hex digits) goes to its own column.
    V2_1,
}

// ---- The request: Content-Type and Content-Encoding ----

/// PROTOCOL, "Upload: Push API": `Content-Type: application/proto`. The
/// server's Connect handler (connect-go handler.go) answers any type it
/// has no codec for with 415 and an `Accept-Post` header, before reading
/// the body. The double speaks the proto codec only, so
/// `application/json` (which the server also takes) is 415 here too.
pub fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let value = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if value.trim().eq_ignore_ascii_case("application/proto") {
        Ok(())
    } else {
        Err(ApiError(
            415,
            format!("content type {value:?} is not application/proto"),
        ))
    }
}

/// PROTOCOL, "Upload: Push API": optionally `Content-Encoding: gzip`.
/// Connect decompresses what the header declares: a body that is not gzip
/// is `invalid_argument` (400, connect-go compression.go, "decompress:"),
/// an encoding it does not know is `unimplemented` (501, connect-go
/// protocol.go). No header, or `identity`, is the raw body.
pub fn decode_body(headers: &HeaderMap, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let encoding = headers
        .get("content-encoding")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    match encoding.as_deref() {
        None | Some("") | Some("identity") => Ok(body.to_vec()),
        Some("gzip") => {
            if !body.starts_with(&[0x1f, 0x8b]) {
                return Err(ApiError::bad("decompress: gzip: invalid header"));
            }
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .map_err(|e| ApiError::bad(format!("decompress: gzip: {e}")))?;
            Ok(out)
        }
        Some(other) => Err(ApiError(
            501,
            format!("unknown compression {other:?}: supported encodings are gzip"),
        )),
    }
}

// ---- Series labels ----

/// `{a="x", b="y"}` like the server's `LabelPairsString`, for messages.
pub fn label_pairs_string(labels: &[(String, String)]) -> String {
    let pairs: Vec<String> = labels
        .iter()
        .map(|(n, v)| format!("{n}={}", go_quote(v)))
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// PROTOCOL, "Label-name sanitization": `.` becomes `_`. A name is
/// `[a-zA-Z_.][a-zA-Z0-9_.]*` (validate.go `SanitizeLabelName`); anything
/// else is invalid (`None`).
pub fn sanitize_label_name(name: &str) -> Option<String> {
    let valid = !name.is_empty()
        && name.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphabetic() || b == b'_' || b == b'.' || (i > 0 && b.is_ascii_digit())
        });
    valid.then(|| name.replace('.', "_"))
}

/// A legacy Prometheus metric name, `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn is_valid_metric_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphabetic() || b == b'_' || b == b':' || (i > 0 && b.is_ascii_digit())
        })
}

/// Validates one series' labels as `ValidateLabels` does (validate.go) and
/// returns them sorted, with sanitized names. In the server's order:
/// - PROTOCOL limits table: at most [`MAX_LABELS`] names;
/// - PROTOCOL "Upload: Push API": `__name__` required (a valid metric
///   name) and `service_name` non-empty;
/// - PROTOCOL limits table: name ≤ [`MAX_NAME_LEN`], value ≤
///   [`MAX_VALUE_LEN`] bytes;
/// - PROTOCOL "Upload: /ingest": names use `[a-zA-Z0-9_.]` only, `__` is
///   reserved (only `__name__` may use it);
/// - PROTOCOL "Label-name sanitization": names are sanitized (`.`→`_`),
///   then two labels with the same name are rejected. v1.13.4 rejects
///   such a pair whatever the values (when they sort next to each other);
///   v1.21.1 merges a pair with equal values and rejects different ones.
///   The double rejects every collision: what it accepts, both accept.
pub fn validate_labels(
    mut labels: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, ApiError> {
    labels.sort();
    let shown = || label_pairs_string(&labels);
    if labels.len() > MAX_LABELS {
        return Err(ApiError::bad(format!(
            "profile series '{}' has {} label names; limit {MAX_LABELS}",
            shown(),
            labels.len()
        )));
    }
    let get = |name: &str| {
        labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    if !get("__name__").is_some_and(is_valid_metric_name) {
        return Err(ApiError::bad(format!(
            "invalid labels '{}' with error: invalid metric name",
            shown()
        )));
    }
    if get("service_name").unwrap_or("").is_empty() {
        return Err(ApiError::bad(format!(
            "invalid labels '{}' with error: service name is not provided",
            shown()
        )));
    }
    let mut sanitized: Vec<(String, String, &str)> = Vec::with_capacity(labels.len());
    for (name, value) in &labels {
        if name.len() > MAX_NAME_LEN {
            return Err(ApiError::bad(format!(
                "profile with labels '{}' has label name too long: '{name}'",
                shown()
            )));
        }
        if value.len() > MAX_VALUE_LEN {
            return Err(ApiError::bad(format!(
                "profile with labels '{}' has label value too long: '{value}'",
                shown()
            )));
        }
        let reserved = name.starts_with("__") && name != "__name__";
        let Some(clean) = sanitize_label_name(name).filter(|_| !reserved) else {
            return Err(ApiError::bad(format!(
                "invalid labels '{}' with error: invalid label name '{name}'",
                shown()
            )));
        };
        sanitized.push((clean, value.clone(), name));
    }
    sanitized.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.2.cmp(b.2)));
    for pair in sanitized.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a.0 != b.0 {
            continue;
        }
        let message = if a.2 == b.2 {
            format!(
                "profile with labels '{}' has duplicate label name: '{}'",
                shown(),
                a.0
            )
        } else {
            let from = if a.2 != a.0 { a.2 } else { b.2 };
            format!(
                "profile with labels '{}' has duplicate label name '{}' after label name sanitization from '{from}'",
                shown(),
                a.0
            )
        };
        return Err(ApiError::bad(message));
    }
    Ok(sanitized.into_iter().map(|(n, v, _)| (n, v)).collect())
}

/// What the split takes out of one sample's labels.
pub struct SampleSplit {
    /// The series labels plus the sample labels that become series labels
    /// (not yet validated).
    pub labels: Vec<(String, String)>,
    /// 0 = no span.
    pub span_id: u64,
    pub trace_id: Option<String>,
}

/// PROTOCOL, "What the server does with sample labels" and "Sample labels
/// become series" (pkg/model/pprof_split):
/// - `profile_id` is renamed `span_id`; `span_id` is taken out, exactly 16
///   hex digits or 0;
/// - `trace_id` is taken out from 2.1 on (32 hex digits); before 2.1 it is
///   a series label like any other;
/// - every other string label with a non-empty value becomes a series
///   label; a series label of the same name wins (pprof_split.go
///   `addSampleLabelsToLabelsBuilder`).
pub fn split_sample(
    version: ServerVersion,
    series: &[(String, String)],
    sample_labels: Vec<(String, String)>,
) -> SampleSplit {
    let mut split = SampleSplit {
        labels: series.to_vec(),
        span_id: 0,
        trace_id: None,
    };
    for (key, value) in sample_labels {
        let key = if key == "profile_id" {
            "span_id".to_string()
        } else {
            key
        };
        match key.as_str() {
            "span_id" => split.span_id = parse_span_id(&value),
            "trace_id" if version == ServerVersion::V2_1 => {
                split.trace_id = is_hex(&value, 32).then_some(value);
            }
            _ if value.is_empty() => {}
            _ => {
                if !split.labels.iter().any(|(n, _)| *n == key) {
                    split.labels.push((key, value));
                }
            }
        }
    }
    split
}

/// Exactly 16 hex digits, else 0 ("no span").
pub fn parse_span_id(value: &str) -> u64 {
    if is_hex(value, 16) {
        u64::from_str_radix(value, 16).unwrap_or(0)
    } else {
        0
    }
}

pub fn is_hex(value: &str, len: usize) -> bool {
    value.len() == len && value.bytes().all(|b| b.is_ascii_hexdigit())
}

// ---- The profile ----

/// `ValidateProfile` (validate.go), in its order, for one decoded pprof
/// whose series labels (for messages) are `labels`:
/// - no sample type: "empty profile";
/// - PROTOCOL "Ingestion window": `time_nanos` (when > 0) must be within
///   [now − 1 h, now + 10 min] (exclusive, in ms);
/// - PROTOCOL limits table: ≤ 4 MiB uncompressed, ≤ 16000 samples, ≤ 100
///   labels per sample;
/// - location and function ids are not 0; every sample has one value per
///   sample type; string indexes are in range and string 0 is "";
///   sample types contain no `-`.
///
/// All answer 400 (the distributor wraps them as `invalid_argument`).
pub fn validate_profile(
    profile: &Profile,
    uncompressed_len: usize,
    labels: &[(String, String)],
    time_nanos: i64,
    now: SystemTime,
) -> Result<(), ApiError> {
    let shown = || label_pairs_string(labels);
    let malformed = |m: &str| Err(ApiError::bad(m.to_string()));
    if profile.sample_type.is_empty() {
        return malformed("empty profile");
    }
    if time_nanos > 0 {
        check_ingestion_window(time_nanos, now, &shown())?;
    }
    if uncompressed_len > MAX_PROFILE_BYTES {
        return Err(ApiError::bad(format!(
            "the profile with labels '{}' exceeds the size limit (max_profile_size_byte, actual: {uncompressed_len}, limit: {MAX_PROFILE_BYTES})",
            shown()
        )));
    }
    if profile.sample.len() > MAX_SAMPLES {
        return Err(ApiError::bad(format!(
            "the profile with labels '{}' exceeds the samples count limit (max_profile_stacktrace_samples, actual: {}, limit: {MAX_SAMPLES})",
            shown(),
            profile.sample.len()
        )));
    }
    if let Some(s) = profile
        .sample
        .iter()
        .find(|s| s.label.len() > MAX_SAMPLE_LABELS)
    {
        return Err(ApiError::bad(format!(
            "the profile with labels '{}' exceeds the sample labels limit (max_profile_stacktrace_sample_labels, actual: {}, limit: {MAX_SAMPLE_LABELS})",
            shown(),
            s.label.len()
        )));
    }
    if profile.location.iter().any(|l| l.id == 0) {
        return malformed("location id is 0");
    }
    if profile.function.iter().any(|f| f.id == 0) {
        return malformed("function id is 0");
    }
    if profile
        .sample
        .iter()
        .any(|s| s.value.len() != profile.sample_type.len())
    {
        return malformed("sample value length mismatch");
    }
    check_string_indexes(profile)?;
    if profile
        .sample_type
        .iter()
        .any(|t| profile.string(t.r#type).contains('-'))
    {
        return malformed("sample type contains -");
    }
    Ok(())
}

/// validate.go `validateStringTableAccess`, extended to every string
/// reference the pprof carries (the server's `Normalize` turns the others
/// into "", losing names silently).
fn check_string_indexes(p: &Profile) -> Result<(), ApiError> {
    if p.string_table.first().map(String::as_str) != Some("") {
        return Err(ApiError::bad("string 0 should be empty string"));
    }
    let n = p.string_table.len() as i64;
    let bad = |i: i64| i < 0 || i >= n;
    let out_of_range = |what: &str, i: i64| {
        Err(ApiError::bad(format!(
            "{what} string index {i} out of range (the string table has {n})"
        )))
    };
    let types = p.sample_type.iter().chain(p.period_type.iter());
    for t in types {
        for i in [t.r#type, t.unit] {
            if bad(i) {
                return out_of_range("sample or period type", i);
            }
        }
    }
    for s in &p.sample {
        for l in &s.label {
            for i in [l.key, l.str, l.num_unit] {
                if bad(i) {
                    return out_of_range("sample label", i);
                }
            }
        }
    }
    for f in &p.function {
        for i in [f.name, f.system_name, f.filename] {
            if bad(i) {
                return out_of_range("function", i);
            }
        }
    }
    for m in &p.mapping {
        for i in [m.filename, m.build_id] {
            if bad(i) {
                return out_of_range("mapping", i);
            }
        }
    }
    Ok(())
}

/// Dangling and ambiguous ids. The server's `Normalize` (pkg/pprof) drops
/// a sample whose location does not exist, a location whose function or
/// mapping does not exist, and lets the last of two equal ids win: data
/// lost without an error. The double answers 400 instead, so a test sees
/// the loss (PROTOCOL, "Upload: Push API": `raw_profile` is a pprof
/// `Profile`, whose ids must resolve).
pub fn check_references(p: &Profile) -> Result<(), ApiError> {
    let bad = |m: String| Err(ApiError::bad(format!("malformed profile: {m}")));
    let mut mappings = BTreeSet::new();
    for m in &p.mapping {
        if m.id == 0 || !mappings.insert(m.id) {
            return bad(format!("mapping id {} is 0 or defined twice", m.id));
        }
    }
    let mut functions = BTreeSet::new();
    for f in &p.function {
        if !functions.insert(f.id) {
            return bad(format!("function id {} is defined twice", f.id));
        }
    }
    let mut locations = BTreeSet::new();
    for l in &p.location {
        if !locations.insert(l.id) {
            return bad(format!("location id {} is defined twice", l.id));
        }
        if l.mapping_id != 0 && !mappings.contains(&l.mapping_id) {
            return bad(format!(
                "location {} references mapping {}, which does not exist",
                l.id, l.mapping_id
            ));
        }
        if let Some(line) = l.line.iter().find(|x| !functions.contains(&x.function_id)) {
            return bad(format!(
                "location {} references function {}, which does not exist",
                l.id, line.function_id
            ));
        }
    }
    for (i, s) in p.sample.iter().enumerate() {
        if let Some(id) = s.location_id.iter().find(|id| !locations.contains(id)) {
            return bad(format!(
                "sample {i} references location {id}, which does not exist"
            ));
        }
    }
    Ok(())
}

/// PROTOCOL, "Profile type": one id per sample type,
/// `__name__:type:unit:period_type:period_unit` (pkg/phlaredb/labels).
pub fn profile_type_ids(name: &str, p: &Profile) -> Vec<String> {
    let (period_type, period_unit) = p
        .period_type
        .map(|t| (p.string(t.r#type), p.string(t.unit)))
        .unwrap_or(("", ""));
    p.sample_type
        .iter()
        .map(|t| {
            format!(
                "{name}:{}:{}:{period_type}:{period_unit}",
                p.string(t.r#type),
                p.string(t.unit)
            )
        })
        .collect()
}

/// The double's own rule (the server stores any type): an upload must
/// carry the profile type Grafana queries (PROTOCOL, "The query Grafana
/// makes" and "Profile type"), or "Profiles for this span" finds nothing.
pub fn check_profile_type(name: &str, p: &Profile, required: &str) -> Result<(), ApiError> {
    let ids = profile_type_ids(name, p);
    if ids.iter().any(|id| id == required) {
        Ok(())
    } else {
        Err(ApiError::bad(format!(
            "profile types {ids:?} do not include {required:?}, the type Grafana queries \
             (__name__, a sample type and the period type must match it)"
        )))
    }
}

/// PROTOCOL, "Ingestion window" (validate.go `ingestionWindow.valid`):
/// strictly after now − 1 h and strictly before now + 10 min, in ms.
pub fn check_ingestion_window(
    time_nanos: i64,
    now: SystemTime,
    labels: &str,
) -> Result<(), ApiError> {
    let now_ms = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let t_ms = time_nanos.div_euclid(1_000_000);
    let from = now_ms - REJECT_OLDER_THAN_NANOS / 1_000_000;
    let to = now_ms + REJECT_NEWER_THAN_NANOS / 1_000_000;
    if t_ms > from && t_ms < to {
        return Ok(());
    }
    Err(ApiError::bad(format!(
        "profile with labels '{labels}' is outside of ingestion window (profile timestamp: {}, the ingestion window starts at {} and ends at {})",
        format_time_millis(t_ms),
        format_time_millis(from),
        format_time_millis(to)
    )))
}

/// Go's `time.Time.String()` in UTC with ms precision:
/// `2023-02-17 11:12:14.123 +0000 UTC`.
pub fn format_time_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let frac = if millis == 0 {
        String::new()
    } else {
        format!(".{millis:03}").trim_end_matches('0').to_string()
    };
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}{frac} +0000 UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
