//! Aggregation, symbolization and pprof encoding.

pub mod proto;
