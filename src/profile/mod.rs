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
//! - each `Function`'s `name` without generic arguments, types kept
//!   (`<F as core::ops::function::FnOnce>::call_once`), its `system_name`
//!   the full name, or empty when the two are the same (`names.rs`);
//! - within Pyroscope's default limits: at most 16000 samples and 4 MiB
//!   uncompressed per profile (more samples are split over several profiles
//!   of the same interval) and 1000 frames per stack (the leaf side is kept).
//!
//! An interval without samples produces no profile.
//!
//! [`proto`] holds the pprof message types, for the crate alone (the
//! report reads profiles with them); tests decode with their own.

use std::time::SystemTime;

mod aggregate;
#[cfg(tp_sampler)]
mod dwarf;
mod encode;
pub(crate) mod extra;
mod kind;
mod names;
#[cfg(test)]
mod proptests;
pub(crate) mod proto;
mod symbolize;
mod synthetic;
#[cfg(test)]
mod tests;

pub(crate) use aggregate::ProfileBuilder;
pub(crate) use extra::AWAITING_FRAME;
pub(crate) use kind::{ProfileKind, Values};
pub(crate) use symbolize::{LoadedImage, Symbolizer};
pub(crate) use synthetic::synthetic_frame;

/// What [`encode_synthetic`] measured.
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct SyntheticEncoding {
    /// Symbolizing, encoding and gzipping the interval.
    pub(crate) elapsed: std::time::Duration,
    /// Gzipped bytes of all its profiles.
    pub(crate) bytes: usize,
    /// Profiles it was split into.
    pub(crate) profiles: usize,
}

/// For the by-hand measurement of encoding against the number of distinct
/// (stack, labels) pairs in one interval (`tests.rs`, `pairs_curve`).
///
/// Adds `pairs` samples, each with its own span id, over `stacks` distinct
/// stacks of `depth` frames (addresses inside this crate's code, so that
/// symbolization looks them up), then times [`ProfileBuilder::finish`].
/// The symbol cache is kept across calls, as the collector keeps it across
/// intervals: only the first call loads debug info.
#[cfg(test)]
pub(crate) fn encode_synthetic(pairs: usize, stacks: usize, depth: usize) -> SyntheticEncoding {
    let base = encode_synthetic as *const () as u64;
    let stacks = stacks.max(1);
    let mut builder = ProfileBuilder::new(
        crate::profile::ProfileKind::Cpu,
        SystemTime::now(),
        10_000_000,
        pairs.max(1),
    );
    let mut frames = Vec::with_capacity(depth);
    for i in 0..pairs {
        frames.clear();
        let s = (i % stacks) as u64;
        frames.extend((0..depth as u64).map(|k| base + ((s * 31 + k * 7) % 4096) * 4));
        let labels = crate::context::SpanLabels::new(i as u64 + 1, 0, 0);
        builder.add(labels, &frames, 1);
    }
    static SYMBOLIZER: std::sync::Mutex<Option<Symbolizer>> = std::sync::Mutex::new(None);
    let mut cache = crate::sync::lock(&SYMBOLIZER);
    let symbolizer = cache.get_or_insert_with(Symbolizer::default);
    let start = std::time::Instant::now();
    let out = builder.finish(SystemTime::now(), symbolizer);
    SyntheticEncoding {
        elapsed: start.elapsed(),
        bytes: out.iter().map(|p| p.gzipped.len()).sum(),
        profiles: out.len(),
    }
}

/// One gzipped pprof profile, ready for a sink.
#[derive(Clone, Debug)]
pub(crate) struct EncodedProfile {
    /// Its profile type (`__name__`, sample types).
    pub(crate) kind: ProfileKind,
    /// gzip of an encoded `proto::Profile`.
    pub(crate) gzipped: Vec<u8>,
    /// Start of the interval (`time_nanos`).
    pub(crate) start: SystemTime,
    /// End of the interval (`time_nanos + duration_nanos`).
    pub(crate) end: SystemTime,
    /// Number of samples (sum of `samples/count`).
    pub(crate) samples: u64,
}
