//! The local span-profile report: one self-contained HTML page, modelled on
//! Grafana's trace view, built from a profiles directory.
//!
//! A service that runs with `PYROSCOPE_PROFILES_DIR=DIR` leaves there one
//! gzipped pprof file per interval and profile type
//! (`DIR/<service>-<start_ms>-<pid>-<seq>.pb.gz` for CPU, `….wall.pb.gz`
//! and `….memory.pb.gz` for the others; the report tells them apart by
//! their sample types) and an index
//! of its profiled spans (`DIR/spans.jsonl`: local roots, and under scope
//! `all` every span with its own id).
//! [`write_report`] turns that directory into a single HTML file that needs no
//! network, no CDN and no server:
//!
//! - **Traces as rows.** Root spans that share a trace id (for example a
//!   client's `OrderVehicle` span and the server's request span) form one row
//!   with a small waterfall. Each span shows its name, service, region,
//!   duration, CPU time, trace id and span id, and a bar that splits its
//!   duration into CPU, blocked and awaiting (the last two from the wall
//!   profile). CPU is never drawn longer than the span; with fewer than five
//!   samples it is marked as an estimate, with its sample count.
//! - **Lost attribution, said out loud.** The header gives the share of CPU
//!   that ran outside any span, its top functions and threads, and the fix
//!   when most of it ran in tokio's blocking pool.
//! - **A flame graph per span.** The "profile" toggle opens, in place, an
//!   interactive [inferno](https://docs.rs/inferno) flame graph (zoom and
//!   search) built **only** from the samples whose `span_id` label is that
//!   span's id, like Grafana's embedded flame graph, with a switch between
//!   the profile types present: CPU, wall, allocations (`alloc_space`) and
//!   in-use (`inuse_space`). Each graph lives in its
//!   own `<iframe srcdoc>` so the graphs' scripts and element ids cannot clash,
//!   and it is created only when opened. To keep the page small, only the
//!   200 heaviest spans get one (the page says so).
//! - **A flame graph per service**, from all of that service's samples.
//! - **A flame graph per span-label value** (`vehicle=car`, `vehicle=bike`,
//!   …), for each span field listed in `PYROSCOPE_SPAN_LABELS`.
//! - **Sort and filter** by CPU time, duration or start, by name and service.
//! - **The pprof files**, each with a `pprof -http=: FILE` command.
//!
//! ```no_run
//! use std::path::Path;
//!
//! let summary = tracing_pyroscope::report::write_report(
//!     Path::new("target/profiles"),
//!     Path::new("target/profiles/report.html"),
//! )?;
//! println!("{} spans in {} traces: {}", summary.spans, summary.traces, summary.path.display());
//! # Ok::<(), tracing_pyroscope::Error>(())
//! ```
//!
//! From a shell, the `tracing-pyroscope-report DIR` command (feature `cli`:
//! `cargo install tracing-pyroscope --features cli`) does the same and
//! writes `DIR/report.html`.
//!
//! The report tolerates what a live directory may hold: a partial last line
//! in `spans.jsonl` (the service may still be writing), temporary files, and
//! unreadable profiles, which are skipped and listed on the page.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::{Error, ErrorKind};

mod html;
mod load;

/// At most this many spans (the heaviest by CPU samples) get their own flame
/// graph in the report; the page says how many were left out.
pub(crate) const MAX_SPAN_FLAME_GRAPHS: usize = 200;

/// At most this many trace rows are written (the heaviest by CPU); the page
/// says how many were left out.
pub(crate) const MAX_TRACE_ROWS: usize = 5000;

/// What [`write_report`] found and wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReportSummary {
    /// Spans shown: those in `spans.jsonl` plus span ids that occur only in
    /// samples.
    pub spans: usize,
    /// Rows: traces (spans grouped by trace id; a span without a trace
    /// id is a row of its own).
    pub traces: usize,
    /// pprof files read.
    pub files: usize,
    /// pprof files skipped because they could not be read or decoded.
    pub skipped_files: usize,
    /// Lines of `spans.jsonl` skipped (partial or malformed).
    pub skipped_span_lines: usize,
    /// CPU samples in all files (sum of the `samples` values).
    pub samples: u64,
    /// CPU samples that carry a `span_id` label.
    pub samples_with_span: u64,
    /// Per-span flame graphs written (at most 200, the heaviest spans).
    pub span_flame_graphs: usize,
    /// The HTML file written.
    pub path: PathBuf,
}

/// Reads `profiles_dir` (`*.pb.gz` and `spans.jsonl`) and writes the report
/// to `out`, a single self-contained HTML file.
///
/// An empty directory gives an (empty) report. Errors: the directory cannot
/// be listed, or `out` cannot be written (kind [`ErrorKind::Os`]).
pub fn write_report(profiles_dir: &Path, out: &Path) -> Result<ReportSummary, Error> {
    let data = load::load(profiles_dir)?;
    let page = html::render(&data, profiles_dir);
    write_atomically(out, page.html.as_bytes()).map_err(|e| {
        Error::new(
            ErrorKind::Os,
            format!("writing the report to {}", out.display()),
        )
        .with_source(e)
    })?;
    Ok(ReportSummary {
        spans: data.spans.len(),
        traces: page.traces,
        files: data.files.len(),
        skipped_files: data.skipped_files.len(),
        skipped_span_lines: data.skipped_span_lines,
        samples: data.total_samples,
        samples_with_span: data.samples_with_span,
        span_flame_graphs: page.span_flame_graphs,
        path: out.to_path_buf(),
    })
}

/// Writes `bytes` to a temporary file beside `out`, then renames it.
fn write_atomically(out: &Path, bytes: &[u8]) -> io::Result<()> {
    let file_name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report.html".to_string());
    let tmp = out.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, out).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}
