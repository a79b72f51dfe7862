//! Sinks: where encoded profiles go, behind one [`Sink`] trait.
//!
//! - `upload` (feature `upload`): the Pyroscope uploader. A background thread named
//!   `pyroscope-upload` takes profiles from a bounded queue and pushes each
//!   one to `{server}/push.v1.PusherService/Push` with retries, backoff and
//!   a shutdown deadline. Nothing here blocks the collector: a full queue
//!   drops the profile and counts it.
//! - [`dir`]: the local directory (`PYROSCOPE_PROFILES_DIR`): one gzipped
//!   pprof file per interval, written atomically, plus the span index.
//! - [`span_index`]: the record of a profiled root span (`spans.jsonl`), one
//!   serde type for the layer that emits it, the directory sink that writes
//!   it and the report that reads it.
//!
//! Each sink is built from its own settings, never from the crate's
//! configuration, and counts its own successes and failures in the shared
//! [`Counters`](crate::stats::Counters). A new sink (e.g. OTLP profiles) is
//! one new file here that implements [`Sink`], plus the line in
//! `builder.rs` that creates it when its setting is present. The collector
//! loops over whatever sinks it was given; profiling is on exactly when
//! there is at least one.

use std::fmt;
use std::time::Instant;

use crate::profile::EncodedProfile;

pub(crate) mod dir;
pub(crate) mod span_index;
#[cfg(feature = "upload")]
pub(crate) mod upload;

pub(crate) use dir::DirSink;
pub(crate) use span_index::{SpanCost, SpanIndexRecord};
#[cfg(feature = "upload")]
pub(crate) use upload::{UploadSettings, Uploader};

/// Somewhere encoded profiles go.
///
/// Called only from the collector thread. No method may block for long:
/// a sink that talks to the network hands the profile to its own thread
/// through a bounded queue and counts what it drops.
pub(crate) trait Sink: Send + fmt::Debug {
    /// Takes one encoded profile (one interval, or part of one).
    fn send(&mut self, profile: &EncodedProfile);

    /// `true` if this sink keeps a span index: the collector then tallies
    /// CPU samples per span and hands it closed profiled root spans.
    fn keeps_span_index(&self) -> bool {
        false
    }

    /// Closed profiled root spans, with their CPU sample counts.
    fn index_spans(&mut self, _records: &[SpanIndexRecord]) {}

    /// Flushes what is pending and stops, returning by `deadline` whatever
    /// the other side does.
    fn shutdown(self: Box<Self>, deadline: Instant);
}
