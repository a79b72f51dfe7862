//! The parent process: starts one process per region plus the load
//! generator (each profiled by `tracing_pyroscope::from_env()` from the
//! environment it is given), shows live progress from their counters, stops
//! them, and writes the report. Also the `--compare` overhead measurement.
//!
//! - [`fleet`]: starting and stopping the child processes, reading their
//!   lines;
//! - [`demo`](mod@demo): the default run, its progress line and report;
//! - [`compare`](mod@compare): `--compare`, profiling off vs on.
//!
//! Here: what both modes share (the output directory, Ctrl-C).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::args::Args;

mod compare;
mod demo;
mod fleet;

pub(crate) use compare::compare;
pub(crate) use demo::demo;

type BoxError = Box<dyn std::error::Error>;

/// Set on Ctrl-C: stop early, still write the report.
fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
            f.store(true, Ordering::Relaxed);
        }
    });
    flag
}

/// `--out`, or `<target dir>/ride-sharing-demo` (the directory holding
/// `release/ride-sharing-demo`), or `./target/ride-sharing-demo`.
fn out_dir(args: &Args) -> PathBuf {
    if let Some(out) = &args.out {
        return out.clone();
    }
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        let profile_dir = exe.parent()?;
        let name = profile_dir.file_name()?.to_str()?;
        matches!(name, "release" | "debug")
            .then(|| profile_dir.parent().map(|t| t.join("ride-sharing-demo")))?
    });
    from_exe.unwrap_or_else(|| PathBuf::from("target").join("ride-sharing-demo"))
}

/// Creates `out` and removes what a previous run left there (only the
/// files this demo writes).
fn prepare_out(out: &Path) -> Result<usize, BoxError> {
    std::fs::create_dir_all(out).map_err(|e| format!("creating --out {}: {e}", out.display()))?;
    let mut removed = 0;
    for entry in std::fs::read_dir(out)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name.ends_with(".pb.gz")
            || (name.starts_with('.') && name.ends_with(".tmp"))
            || name == "spans.jsonl"
            || name == "report.html";
        if ours && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_out_removes_only_demo_files() {
        let dir = std::env::temp_dir().join(format!("rsd-out-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for f in [
            "a-1-2-3.pb.gz",
            "spans.jsonl",
            "report.html",
            ".x.tmp",
            "keep.txt",
        ] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        assert_eq!(prepare_out(&dir).unwrap(), 4);
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["keep.txt"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
