//! The span index: one JSON line per profiled span, `spans.jsonl`.
//!
//! The layer emits a [`SpanIndexRecord`] when a profiled span closes: a
//! local root under scope `root`, every span that has its own `span_id`
//! under scope `all` (a child's record has `"root":false` and its local
//! parent's id in `parent_span_id`). It hands a [`ClosedSpan`] (numbers
//! and the name as the span has it: nothing is formatted on the
//! application's thread) to a [`SpanIndexQueue`] (bounded, never blocks,
//! drops counted). The collector makes the record, adds what only it knows (the span's CPU samples,
//! the service and its static labels) and gives the batch to the sinks that
//! keep an index; the directory sink appends it to [`SPANS_FILE`]. The local
//! report reads the same type back. Ids are lowercase hex, as in the
//! profiles' labels.
//!
//! ```json
//! {"span_id":"00f067aa0ba902b7","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736",
//!  "parent_span_id":null,"name":"GET /car","service":"ride-sharing-app",
//!  "labels":{"region":"eu-north"},"start_unix_nanos":1,"end_unix_nanos":2,
//!  "cpu_samples":12,"pid":4242}
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::context::{span_id_hex, trace_id_hex};
use crate::stats::Counters;

/// Name of the span index inside the profiles directory.
pub(crate) const SPANS_FILE: &str = "spans.jsonl";

/// `true` for the live span index and for the older parts the directory
/// sink rotated out of it (`spans-<unix_ms>-<pid>-<seq>.jsonl`).
pub(crate) fn is_span_index_file(name: &str) -> bool {
    name == SPANS_FILE || (name.starts_with("spans-") && name.ends_with(".jsonl"))
}

/// What one span's samples add up to, for its span index record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(not(tp_sampler), allow(dead_code))]
pub(crate) struct SpanCost {
    /// CPU samples (each one period of CPU time).
    pub(crate) cpu_samples: u64,
    /// Wall time off CPU: blocked and runnable.
    pub(crate) off_cpu_nanos: u64,
    /// Wall time awaiting (the span's task polled on no thread).
    pub(crate) awaiting_nanos: u64,
    /// Sampled bytes allocated (weighted).
    pub(crate) alloc_bytes: u64,
}

#[cfg_attr(not(tp_sampler), allow(dead_code))]
impl SpanCost {
    pub(crate) fn add(&mut self, other: SpanCost) {
        self.cpu_samples = self.cpu_samples.saturating_add(other.cpu_samples);
        self.off_cpu_nanos = self.off_cpu_nanos.saturating_add(other.off_cpu_nanos);
        self.awaiting_nanos = self.awaiting_nanos.saturating_add(other.awaiting_nanos);
        self.alloc_bytes = self.alloc_bytes.saturating_add(other.alloc_bytes);
    }
}

/// One line of the span index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SpanIndexRecord {
    /// 16 lowercase hex digits.
    pub(crate) span_id: String,
    /// 32 lowercase hex digits; `None` without an OpenTelemetry layer.
    #[serde(default)]
    pub(crate) trace_id: Option<String>,
    /// The parent's span id, when known: a child span's local parent (scope
    /// `all`); for a local root, its remote parent (not known today).
    #[serde(default)]
    pub(crate) parent_span_id: Option<String>,
    /// A local root. Absent in lines written before scope `all` indexed
    /// child spans, which were all local roots.
    #[serde(default = "yes")]
    pub(crate) root: bool,
    /// The span's name (`otel.name` if set).
    #[serde(default)]
    pub(crate) name: String,
    /// `service_name`.
    #[serde(default)]
    pub(crate) service: String,
    /// The static series labels.
    #[serde(default)]
    pub(crate) labels: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) start_unix_nanos: Option<u64>,
    #[serde(default)]
    pub(crate) end_unix_nanos: Option<u64>,
    /// CPU samples that carried this span's id.
    #[serde(default)]
    pub(crate) cpu_samples: u64,
    /// The CPU sampling period, so that `cpu_samples` reads as time.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) cpu_period_nanos: u64,
    /// Wall time off CPU (blocked and runnable), from the `wall` profile.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) off_cpu_nanos: u64,
    /// Wall time awaiting (the span's task polled on no thread).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) awaiting_nanos: u64,
    /// Bytes allocated, from the `memory` profile's samples (weighted).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) alloc_bytes: u64,
    /// The process that wrote the line.
    #[serde(default)]
    pub(crate) pid: u32,
}

impl Default for SpanIndexRecord {
    fn default() -> Self {
        SpanIndexRecord {
            span_id: String::new(),
            trace_id: None,
            parent_span_id: None,
            root: true,
            name: String::new(),
            service: String::new(),
            labels: BTreeMap::new(),
            start_unix_nanos: None,
            end_unix_nanos: None,
            cpu_samples: 0,
            cpu_period_nanos: 0,
            off_cpu_nanos: 0,
            awaiting_nanos: 0,
            alloc_bytes: 0,
            pid: 0,
        }
    }
}

/// A closed span as the layer knows it, sent to the collector as it is:
/// it becomes a [`SpanIndexRecord`] there.
#[derive(Clone, Debug)]
pub(crate) struct ClosedSpan {
    pub(crate) span_id: u64,
    /// 0 without OpenTelemetry.
    pub(crate) trace_id: u128,
    /// A local root.
    pub(crate) root: bool,
    /// The local parent's span id (scope `all`), 0 if none or unknown.
    pub(crate) parent_span_id: u64,
    pub(crate) name: Cow<'static, str>,
    pub(crate) start: SystemTime,
    pub(crate) end: SystemTime,
}

impl From<ClosedSpan> for SpanIndexRecord {
    /// The record of a closed span; the collector fills the rest.
    fn from(span: ClosedSpan) -> Self {
        SpanIndexRecord {
            span_id: span_id_hex(span.span_id),
            trace_id: (span.trace_id != 0).then(|| trace_id_hex(span.trace_id)),
            parent_span_id: (span.parent_span_id != 0).then(|| span_id_hex(span.parent_span_id)),
            root: span.root,
            name: span.name.into_owned(),
            start_unix_nanos: Some(unix_nanos(span.start)),
            end_unix_nanos: Some(unix_nanos(span.end)),
            ..SpanIndexRecord::default()
        }
    }
}

impl SpanIndexRecord {
    /// The span id as a number; `None` if the line holds no valid id.
    pub(crate) fn span_id(&self) -> Option<u64> {
        normalize_hex(&self.span_id, 16).and_then(|h| u64::from_str_radix(&h, 16).ok())
    }

    /// Fills in what the span's samples add up to.
    #[cfg_attr(not(tp_sampler), allow(dead_code))]
    pub(crate) fn set_cost(&mut self, cost: SpanCost, period_nanos: u64) {
        self.cpu_samples = cost.cpu_samples;
        self.cpu_period_nanos = period_nanos;
        self.off_cpu_nanos = cost.off_cpu_nanos;
        self.awaiting_nanos = cost.awaiting_nanos;
        self.alloc_bytes = cost.alloc_bytes;
    }

    /// `true` if the span got a sample of any profile type.
    #[cfg_attr(not(tp_sampler), allow(dead_code))]
    pub(crate) fn has_samples(&self) -> bool {
        self.cpu_samples > 0
            || self.off_cpu_nanos > 0
            || self.awaiting_nanos > 0
            || self.alloc_bytes > 0
    }

    /// One JSON line, without the newline.
    pub(crate) fn to_line(&self) -> String {
        // Strings and numbers only: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses one line; `None` if it is not a record with a valid span id.
    #[cfg_attr(not(feature = "report"), allow(dead_code))]
    pub(crate) fn from_line(line: &[u8]) -> Option<Self> {
        let mut record: SpanIndexRecord = serde_json::from_slice(line).ok()?;
        record.span_id = normalize_hex(&record.span_id, 16)?;
        record.trace_id = record
            .trace_id
            .as_deref()
            .and_then(|t| normalize_hex(t, 32));
        record.parent_span_id = record
            .parent_span_id
            .as_deref()
            .and_then(|p| normalize_hex(p, 16));
        Some(record)
    }
}

/// `s` as lowercase hex of exactly `len` digits, not all zero (the form of
/// `span_id` and `trace_id` labels).
pub(crate) fn normalize_hex(s: &str, len: usize) -> Option<String> {
    let ok = s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    let lower = s.to_ascii_lowercase();
    (ok && lower.bytes().any(|b| b != b'0')).then_some(lower)
}

fn yes() -> bool {
    true
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Where the layer sends closed spans: a bounded queue to the collector.
#[derive(Clone, Debug)]
pub(crate) struct SpanIndexQueue {
    tx: SyncSender<ClosedSpan>,
    counters: Arc<Counters>,
}

impl SpanIndexQueue {
    pub(crate) fn new(tx: SyncSender<ClosedSpan>, counters: Arc<Counters>) -> Self {
        SpanIndexQueue { tx, counters }
    }

    /// Never blocks: a full queue drops the record and counts it.
    pub(crate) fn record(&self, span: ClosedSpan) {
        if self.tx.try_send(span).is_err() {
            Counters::bump(&self.counters.dropped_spans);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn records_round_trip_through_a_line() {
        let start = UNIX_EPOCH + Duration::from_nanos(5);
        let mut r = SpanIndexRecord::from(ClosedSpan {
            span_id: 0xab,
            trace_id: 0xcd,
            root: true,
            parent_span_id: 0,
            name: "GET /car".into(),
            start,
            end: start + Duration::from_nanos(7),
        });
        assert_eq!(r.parent_span_id, None);
        r.cpu_samples = 3;
        r.labels.insert("region".into(), "eu-north".into());
        let line = r.to_line();
        assert!(!line.contains('\n'));
        assert!(line.contains(r#""span_id":"00000000000000ab""#), "{line}");
        assert_eq!(SpanIndexRecord::from_line(line.as_bytes()), Some(r.clone()));
        assert_eq!(r.span_id(), Some(0xab));
        assert_eq!(r.end_unix_nanos, Some(12));
    }

    #[test]
    fn a_line_without_root_is_a_local_root() {
        let r = SpanIndexRecord::from_line(br#"{"span_id":"00000000000000ab"}"#).unwrap();
        assert!(r.root);
        let child = SpanIndexRecord {
            span_id: "00000000000000ac".into(),
            parent_span_id: Some("00000000000000ab".into()),
            root: false,
            ..SpanIndexRecord::default()
        };
        let back = SpanIndexRecord::from_line(child.to_line().as_bytes()).unwrap();
        assert!(!back.root);
        assert_eq!(back.parent_span_id.as_deref(), Some("00000000000000ab"));
    }

    #[test]
    fn bad_lines_and_ids_are_refused() {
        assert_eq!(SpanIndexRecord::from_line(b"{"), None);
        assert_eq!(SpanIndexRecord::from_line(br#"{"span_id":"xyz"}"#), None);
        assert_eq!(
            SpanIndexRecord::from_line(br#"{"span_id":"0000000000000000"}"#),
            None
        );
        let upper =
            SpanIndexRecord::from_line(br#"{"span_id":"00000000000000AB","trace_id":"bad"}"#)
                .unwrap();
        assert_eq!(upper.span_id, "00000000000000ab");
        assert_eq!(upper.trace_id, None);
    }

    #[test]
    fn hex_ids_are_normalized_and_checked() {
        assert_eq!(
            normalize_hex("00F067AA0BA902B7", 16).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_eq!(normalize_hex("00f067aa0ba902b", 16), None);
        assert_eq!(normalize_hex("0000000000000000", 16), None);
        assert_eq!(normalize_hex("zzf067aa0ba902b7", 16), None);
    }

    #[test]
    fn a_full_queue_counts_drops() {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let counters = Arc::new(Counters::default());
        let q = SpanIndexQueue::new(tx, counters.clone());
        let span = ClosedSpan {
            span_id: 1,
            trace_id: 0,
            root: true,
            parent_span_id: 0,
            name: "a".into(),
            start: UNIX_EPOCH,
            end: UNIX_EPOCH,
        };
        q.record(span.clone());
        q.record(span);
        assert_eq!(rx.try_iter().count(), 1);
        assert_eq!(counters.snapshot().dropped_spans, 1);
    }
}
