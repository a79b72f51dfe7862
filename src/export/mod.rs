//! Sinks: where encoded profiles go.
//!
//! - [`upload`]: the Pyroscope uploader. A background thread named
//!   `pyroscope-upload` takes profiles from a bounded queue and pushes each
//!   one to `{server}/push.v1.PusherService/Push` with retries, backoff and
//!   a shutdown deadline. Nothing here blocks the collector: a full queue
//!   drops the profile and counts it.
//! - [`dir`]: the local directory (`PYROSCOPE_PROFILES_DIR`): one gzipped
//!   pprof file per interval, written atomically, plus the span index
//!   `spans.jsonl`.
//!
//! A new sink (e.g. OTLP profiles) is a new submodule here with the same
//! shape as [`upload::Uploader`]: `start`, a non-blocking `send`, and a
//! `shutdown(deadline)`.

pub(crate) mod dir;
pub(crate) mod upload;

pub(crate) use dir::DirSink;
pub(crate) use upload::Uploader;
