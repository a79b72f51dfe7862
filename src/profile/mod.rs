//! Aggregation, symbolization and pprof encoding.

use std::time::SystemTime;

pub mod proto;

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
