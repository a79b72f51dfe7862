//! Scoring every arm's profiles the same way, through Google's pprof tool:
//! `pprof -traces -sample_index=cpu FILE` for each file an arm uploaded,
//! CPU values turned back into samples by the sampling period.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::workload::BURNERS;

/// What one arm's profiles hold.
#[derive(Debug, Default, Clone)]
pub struct Score {
    pub files: usize,
    pub bytes: u64,
    /// Every sample.
    pub samples: f64,
    /// Samples whose stack holds a burn function.
    pub burn: f64,
    /// … of those, with a `span_id` label.
    pub labelled: f64,
    /// … of those, whose `span_id` is a root span of the burning client.
    pub correct: f64,
    /// Samples without a burn function, by a short description of their
    /// stack (for the coverage accounting).
    pub elsewhere: BTreeMap<String, f64>,
}

/// The pprof binary: `$PPROF`, else what `scripts/install-pprof.sh` prints.
pub fn pprof() -> PathBuf {
    if let Some(p) = std::env::var_os("PPROF") {
        return PathBuf::from(p);
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/install-pprof.sh");
    let out = Command::new("bash")
        .arg(script)
        .output()
        .expect("run scripts/install-pprof.sh");
    assert!(
        out.status.success(),
        "install-pprof.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// One `-traces` entry.
struct Trace {
    labels: BTreeMap<String, String>,
    nanos: f64,
    frames: Vec<String>,
}

/// `10ms`, `1.50s`, `250us`, `3ns`, `2mins` as nanoseconds.
fn parse_time(s: &str) -> Option<f64> {
    let i = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (n, unit) = s.split_at(i);
    let n: f64 = n.parse().ok()?;
    let scale = match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "min" | "mins" => 60e9,
        "hr" | "hrs" => 3600e9,
        _ => return None,
    };
    Some(n * scale)
}

fn traces(pprof: &Path, file: &Path) -> Vec<Trace> {
    let out = Command::new(pprof)
        .args(["-traces", "-sample_index=cpu"])
        .arg(file)
        .output()
        .expect("run pprof");
    assert!(
        out.status.success(),
        "pprof rejected {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut traces = Vec::new();
    for block in text.split("-----------+-").skip(1) {
        let mut labels = BTreeMap::new();
        let mut nanos = None;
        let mut frames = Vec::new();
        for line in block.lines() {
            let t = line.trim();
            if t.is_empty() || t.starts_with("---") {
                continue;
            }
            if nanos.is_none() {
                if let Some((k, v)) = t.split_once(":  ") {
                    if !k.contains(' ') {
                        labels.insert(k.to_string(), v.trim().to_string());
                        continue;
                    }
                }
                let mut parts = t.splitn(2, char::is_whitespace);
                let Some(n) = parts.next().and_then(parse_time) else {
                    continue;
                };
                nanos = Some(n);
                if let Some(f) = parts.next() {
                    frames.push(f.trim().to_string());
                }
            } else {
                frames.push(t.to_string());
            }
        }
        if let Some(nanos) = nanos {
            traces.push(Trace {
                labels,
                nanos,
                frames,
            });
        }
    }
    traces
}

/// The client whose burn function is in `frames`.
fn burner(frames: &[String]) -> Option<usize> {
    frames
        .iter()
        .find_map(|f| BURNERS.iter().position(|(name, _)| f.contains(name)))
}

/// A short name for a stack without a burn function.
fn describe(frames: &[String]) -> String {
    let leaf = frames.first().map(String::as_str).unwrap_or("<no frames>");
    let leaf: String = leaf.chars().take(70).collect();
    if frames.len() <= 1 {
        format!("[leaf only] {leaf}")
    } else {
        leaf
    }
}

/// Scores every profile in `dir`: `truth` maps root span ids to clients,
/// `period_nanos` is the sampling period.
pub fn score(pprof: &Path, dir: &Path, truth: &HashMap<u64, usize>, period_nanos: f64) -> Score {
    let mut s = Score::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return s;
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".pb.gz"))
        .collect();
    files.sort();
    for file in &files {
        s.files += 1;
        s.bytes += std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        for t in traces(pprof, file) {
            let n = t.nanos / period_nanos;
            s.samples += n;
            match burner(&t.frames) {
                Some(client) => {
                    s.burn += n;
                    if let Some(id) = t.labels.get("span_id") {
                        s.labelled += n;
                        let id = u64::from_str_radix(id, 16).ok();
                        if id.and_then(|id| truth.get(&id)) == Some(&client) {
                            s.correct += n;
                        }
                    }
                }
                None => *s.elsewhere.entry(describe(&t.frames)).or_default() += n,
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn times() {
        assert_eq!(parse_time("10ms"), Some(1e7));
        assert_eq!(parse_time("1.50s"), Some(1.5e9));
        assert_eq!(parse_time("250us"), Some(2.5e5));
        assert_eq!(parse_time("x"), None);
    }
}
