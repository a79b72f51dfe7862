//! # tracing-pyroscope: span profiles for Rust
//!
//! A [`tracing-subscriber`](tracing_subscriber) layer notes which span runs on
//! each thread; a sampling CPU profiler reads that note inside its signal
//! handler at the moment it takes each sample; profiles go to Grafana
//! Pyroscope (or a local directory) with a `span_id` label per sample, and the
//! same id is set as `pyroscope.profile.id` on the exported OpenTelemetry
//! span. In Grafana, a span then has "Profiles for this span".
//!
//! ```no_run
//! use tracing_subscriber::prelude::*;
//!
//! let (profiling, _guard) = tracing_pyroscope::from_env()?;
//! tracing_subscriber::registry().with(profiling).init();
//! # Ok::<(), tracing_pyroscope::Error>(())
//! ```
//!
//! # The API
//!
//! [`from_env`] (or [`Builder`], [`Builder::from_env`] to start from the
//! environment and override in code) returns a [`SpanProfileLayer`] and a
//! [`ProfilerGuard`] (whose [`Stats`] count what happened); every failure is
//! an [`Error`]. [`context::with_labels`] labels code outside spans,
//! [`report::write_report`] turns a profiles directory into an HTML page,
//! and [`Allocator`], installed as the `#[global_allocator]`, samples
//! allocations for per-span allocation and in-use profiles.
//! Nothing else is public: the thread slot the sampler reads and the pprof
//! types stay inside the crate.
//!
//! ```compile_fail
//! // The sampler's slot cannot be written from outside the crate.
//! use tracing_pyroscope::context::replace;
//! ```
//!
//! ```compile_fail
//! // The pprof message types are not part of the API.
//! use tracing_pyroscope::profile::proto;
//! ```
//!
//! # Features
//!
//! - `upload` (default): uploads to a Pyroscope server (reqwest). Without
//!   it the crate writes local pprof files only (`PYROSCOPE_PROFILES_DIR`),
//!   and a server address is an error that says to enable it.
//! - `otel` (default): OpenTelemetry ids and `pyroscope.profile.id`
//!   (tracing-opentelemetry).
//! - `report` (default): [`report::write_report`] (inferno).
//! - `tls`: HTTPS uploads (rustls); implies `upload`.
//! - `cli`: the `tracing-pyroscope-report DIR` command, which writes the
//!   HTML report of a profiles directory; implies `report`.

#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]
#![deny(unsafe_op_in_unsafe_fn)]
// Unsafe code lives in the sampler only (signal handler, timers, unwinding)
// and the global allocator wrapper;
// everything else is checked by the compiler.
#![deny(unsafe_code)]
// Where the sampler cannot run, the collector and exporters are never
// started: their code is compiled (and type-checked) but unused.
#![cfg_attr(not(tp_sampler), allow(dead_code, unused_imports))]

// Imports run one way, top to bottom (see README's module map):
// builder → {config, collector, export, layer, sampler} → {profile, stats,
// sync, secret, context, error}. `report` reads what `export` writes.
// The global allocator wrapper: `unsafe` to implement `GlobalAlloc`, each
// block says why it is sound.
#[allow(unsafe_code)]
mod alloc;
mod builder;
mod collector;
mod config;
pub mod context;
mod error;
mod export;
mod layer;
mod maps;
mod profile;
#[cfg(feature = "report")]
pub mod report;
#[cfg(tp_sampler)]
// The one module allowed `unsafe`: each block says why it is sound.
#[allow(unsafe_code)]
mod sampler;
mod secret;
mod stats;
mod sync;

pub use alloc::Allocator;
pub use builder::{from_env, Builder};
pub use collector::ProfilerGuard;
pub use config::SpanScope;
pub use error::{Error, ErrorKind};
pub use layer::SpanProfileLayer;
pub use stats::Stats;
