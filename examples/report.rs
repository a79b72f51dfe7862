//! Writes the span-profile report for a profiles directory.
//!
//! ```text
//! cargo run --release --example report -- DIR [OUT]
//! ```
//!
//! `DIR` is a `PYROSCOPE_PROFILES_DIR` (pprof files plus `spans.jsonl`);
//! `OUT` defaults to `DIR/report.html`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: report DIR [OUT]   (OUT defaults to DIR/report.html)");
        return ExitCode::from(2);
    };
    let out = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("report.html"));
    match tracing_pyroscope::report::write_report(&dir, &out) {
        Ok(summary) => {
            println!(
                "{} root spans in {} traces, {} pprof files, {} samples ({} with a span id), {} span flame graphs",
                summary.spans,
                summary.traces,
                summary.files,
                summary.samples,
                summary.samples_with_span,
                summary.span_flame_graphs,
            );
            if summary.skipped_files > 0 {
                println!("skipped {} unreadable pprof file(s)", summary.skipped_files);
            }
            println!("report: {}", summary.path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
