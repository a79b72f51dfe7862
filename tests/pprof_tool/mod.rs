//! Test helper: reads profiles through Google's pprof tool, the reference
//! reader of the format. `PPROF` names the binary (CI sets it); otherwise the
//! repository's `scripts/install-pprof.sh` builds it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// One `-traces` entry: labels, sample count and stack (leaf first).
#[derive(Debug, Clone)]
pub struct Trace {
    pub labels: BTreeMap<String, String>,
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
    let out = Command::new(pprof())
        .args(["-traces", "-sample_index=samples"])
        .arg(file)
        .output()
        .expect("run pprof");
    assert!(
        out.status.success(),
        "pprof rejected {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_traces(&String::from_utf8_lossy(&out.stdout))
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
                count = Some(
                    n.parse::<u64>()
                        .unwrap_or_else(|_| panic!("bad count line {line:?}")),
                );
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
