//! Shared test helpers. Each test binary uses a different subset.
#![allow(dead_code, unreachable_pub)]

pub mod pprof;
pub mod pyroscope_double;
