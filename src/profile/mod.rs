//! Aggregation, symbolization and pprof encoding.
//!
//! The collector thread drains raw samples (a stack of instruction
//! addresses plus the [`SpanLabels`](crate::context::SpanLabels) read in the
//! signal handler) into a `ProfileBuilder` (`aggregate.rs`), one per upload
//! interval. At the end of the interval `ProfileBuilder::finish` symbolizes
//! every distinct address once (`symbolize.rs`; a `Symbolizer` caches across
//! intervals) and encodes gzipped pprof ready for a sink (`encode.rs`):
//!
//! - sample types `samples/count` and `cpu/nanoseconds`, period type
//!   `cpu/nanoseconds`; `time_nanos`/`duration_nanos` cover the interval;
//! - string labels from [`SpanLabels::for_each_label`](crate::context::SpanLabels::for_each_label):
//!   `span_id` (16 lowercase hex digits), `span_name` and `trace_id` (32
//!   lowercase hex digits), each when present; samples outside any span
//!   carry no labels;
//! - one `Location` per distinct address, with inlined frames as several
//!   `Line`s (innermost first), and `Mapping`s marked as fully symbolized so
//!   that no tool tries to symbolize them again;
//! - within Pyroscope's default limits: at most 16000 samples and 4 MiB
//!   uncompressed per profile (more samples are split over several profiles
//!   of the same interval) and 1000 frames per stack (the leaf side is kept).
//!
//! An interval without samples produces no profile.
//!
//! [`proto`] holds the pprof message types; it is public so that tools and
//! tests can read what the crate writes.

use std::time::SystemTime;

mod aggregate;
mod encode;
#[cfg(test)]
mod proptests;
pub mod proto;
mod symbolize;
#[cfg(test)]
mod tests;

pub(crate) use aggregate::ProfileBuilder;
pub(crate) use symbolize::Symbolizer;

/// One gzipped pprof profile, ready for a sink.
#[derive(Clone, Debug)]
pub(crate) struct EncodedProfile {
    /// gzip of an encoded `proto::Profile`.
    pub(crate) gzipped: Vec<u8>,
    /// Start of the interval (`time_nanos`).
    pub(crate) start: SystemTime,
    /// End of the interval (`time_nanos + duration_nanos`).
    pub(crate) end: SystemTime,
    /// Number of samples (sum of `samples/count`).
    pub(crate) samples: u64,
}
