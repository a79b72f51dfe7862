//! Test helper: reads profiles through Google's pprof tool, the reference
//! reader of the format. `PPROF` names the binary (CI sets it); otherwise the
//! repository's `scripts/install-pprof.sh` builds it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// One `-traces` entry: labels, value and stack (leaf first).
#[derive(Debug, Clone)]
pub struct Trace {
    pub labels: BTreeMap<String, String>,
    /// The sample count ([`traces`]), or the value of the sample type asked
    /// for in the unit asked for ([`traces_of`]).
    pub count: u64,
    pub frames: Vec<String>,
}

/// Path to the pprof binary.
pub fn pprof() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = std::env::var_os("PPROF") {
            return PathBuf::from(p);
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install-pprof.sh");
        let out = Command::new("bash")
            .arg(script)
            .output()
            .expect("run install-pprof.sh");
        assert!(
            out.status.success(),
            "install-pprof.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
    .clone()
}

/// Runs `pprof -traces -sample_index=samples FILE` and parses the output.
pub fn traces(file: &Path) -> Vec<Trace> {
    traces_of(file, "samples", None)
}

/// Runs `pprof -traces -sample_index=INDEX [-unit=UNIT] FILE` and parses the
/// output; with a unit (`ns`, `byte`) values are whole numbers of it.
pub fn traces_of(file: &Path, index: &str, unit: Option<&str>) -> Vec<Trace> {
    let mut cmd = Command::new(pprof());
    cmd.args(["-traces", &format!("-sample_index={index}")]);
    if let Some(unit) = unit {
        cmd.arg(format!("-unit={unit}"));
    }
    let out = cmd.arg(file).output().expect("run pprof");
    assert!(
        out.status.success(),
        "pprof rejected {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_traces(&String::from_utf8_lossy(&out.stdout))
}

/// [`traces_of`] every profile in `dir` whose name ends with `suffix`
/// (`.wall.pb.gz`), at least one.
pub fn dir_traces(dir: &Path, suffix: &str, index: &str, unit: Option<&str>) -> Vec<Trace> {
    let files: Vec<PathBuf> = profile_files(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    assert!(
        !files.is_empty(),
        "no {suffix} profile in {}",
        dir.display()
    );
    files
        .iter()
        .flat_map(|f| traces_of(f, index, unit))
        .collect()
}

/// A `-traces` value: a whole number, with the unit asked for (`1500ns`,
/// `1024B`) or none.
fn value_of(text: &str) -> Option<u64> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let unit = &text[digits..];
    if digits == 0 || !unit.chars().all(|c| c.is_ascii_alphabetic()) {
        return None;
    }
    text[..digits].parse().ok()
}

/// Parses pprof's `-traces` text.
pub fn parse_traces(text: &str) -> Vec<Trace> {
    let mut traces = Vec::new();
    for block in text
        .split("-----------+-------------------------------------------------------")
        .skip(1)
    {
        let mut labels = BTreeMap::new();
        let mut count = None;
        let mut frames = Vec::new();
        for line in block.lines() {
            if line.trim().is_empty() {
                continue;
            }
            let trimmed = line.trim_start();
            if count.is_none() {
                // Label lines look like "   span_id:  0123456789abcdef".
                if let Some((k, v)) = trimmed.split_once(":  ") {
                    if !k.contains(' ') {
                        labels.insert(k.to_string(), v.trim().to_string());
                        continue;
                    }
                }
                let mut parts = trimmed.splitn(2, char::is_whitespace);
                let n = parts.next().unwrap_or("");
                count = Some(value_of(n).unwrap_or_else(|| panic!("bad value line {line:?}")));
                if let Some(f) = parts.next() {
                    frames.push(f.trim().to_string());
                }
            } else {
                frames.push(trimmed.trim().to_string());
            }
        }
        if let Some(count) = count {
            traces.push(Trace {
                labels,
                count,
                frames,
            });
        }
    }
    traces
}

/// All `*.pb.gz` files in `dir`, sorted.
pub fn profile_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".pb.gz"))
        .collect();
    files.sort();
    files
}
