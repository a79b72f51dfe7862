//! Wall time of blocked threads, end to end through Google's pprof tool: a
//! sync span sleeping 200 ms gets 200 ms (±5%) of blocked wall time on a
//! stack through `clock_nanosleep` and the test's function; a CPU-bound
//! span gets next to none.

use crate::cpu_clock::thread_cpu_nanos;
use crate::pprof_tool;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tracing_subscriber::layer::SubscriberExt;

/// One `-traces` entry of a wall profile: labels, nanoseconds, stack.
#[derive(Debug)]
pub(crate) struct WallTrace {
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) nanos: f64,
    pub(crate) frames: Vec<String>,
}

/// A pprof value with its unit (`1.50ms`, `200ms`, `2s`, `350us`).
fn nanos_of(text: &str) -> f64 {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().unwrap_or_else(|_| panic!("value {text:?}"));
    let scale = match unit {
        "ns" | "" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "mins" => 60e9,
        "hrs" => 3600e9,
        other => panic!("unit {other:?} in {text:?}"),
    };
    number * scale
}

/// The traces of every wall profile in `dir`, valued in nanoseconds.
pub(crate) fn wall_traces(dir: &Path) -> Vec<WallTrace> {
    let files: Vec<PathBuf> = pprof_tool::profile_files(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".wall.pb.gz"))
        .collect();
    assert!(!files.is_empty(), "no wall profile in {}", dir.display());
    let mut out = Vec::new();
    for file in files {
        let run = Command::new(pprof_tool::pprof())
            .args(["-traces", "-sample_index=wall"])
            .arg(&file)
            .output()
            .expect("run pprof");
        assert!(
            run.status.success(),
            "pprof rejected {}: {}",
            file.display(),
            String::from_utf8_lossy(&run.stderr)
        );
        let text = String::from_utf8_lossy(&run.stdout);
        for block in text
            .split("-----------+-------------------------------------------------------")
            .skip(1)
        {
            let mut labels = BTreeMap::new();
            let mut nanos = None;
            let mut frames = Vec::new();
            for line in block.lines().filter(|l| !l.trim().is_empty()) {
                let trimmed = line.trim_start();
                if nanos.is_none() {
                    if let Some((k, v)) = trimmed.split_once(":  ") {
                        if !k.contains(' ') {
                            labels.insert(k.to_string(), v.trim().to_string());
                            continue;
                        }
                    }
                    let mut parts = trimmed.splitn(2, char::is_whitespace);
                    nanos = Some(nanos_of(parts.next().unwrap_or("")));
                    if let Some(f) = parts.next() {
                        frames.push(f.trim().to_string());
                    }
                } else {
                    frames.push(trimmed.trim().to_string());
                }
            }
            if let Some(nanos) = nanos {
                out.push(WallTrace {
                    labels,
                    nanos,
                    frames,
                });
            }
        }
    }
    out
}

#[inline(never)]
fn wall_test_sleeps_200_ms() {
    // Work after the call: not a tail call, so this frame stays.
    let start = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    black_box(start.elapsed());
}

#[inline(never)]
fn wall_test_burns_200_ms() -> u64 {
    let end = thread_cpu_nanos() + 200_000_000;
    let mut x = 3u64;
    while thread_cpu_nanos() < end {
        for _ in 0..2000 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(7));
        }
    }
    x
}

#[test]
fn a_sleeping_span_is_blocked_for_its_sleep_and_a_busy_one_is_not() {
    isolated!();
    let dir = std::env::temp_dir().join(format!("tracing-pyroscope-wall-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (layer, guard) = tracing_pyroscope::Builder::new("wall-test")
        .profiles_dir(&dir)
        .sample_rate(1000)
        .wall_time(true)
        .upload_interval(Duration::from_secs(60))
        .build()
        .expect("start profiler");
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
        .expect("global subscriber");
    let sleeper = std::thread::spawn(|| {
        tracing::info_span!("sleepy").in_scope(wall_test_sleeps_200_ms);
    });
    let busy = std::thread::spawn(|| {
        tracing::info_span!("busy").in_scope(wall_test_burns_200_ms);
    });
    sleeper.join().unwrap();
    busy.join().unwrap();
    drop(guard);

    let traces = wall_traces(&dir);
    let blocked = |name: &str| -> f64 {
        traces
            .iter()
            .filter(|t| t.labels.get("span_name").map(String::as_str) == Some(name))
            .filter(|t| t.frames.first().is_some_and(|f| f.starts_with("[blocked")))
            .map(|t| t.nanos)
            .sum()
    };
    let slept = blocked("sleepy");
    println!("sleepy: blocked {:.1} ms", slept / 1e6);
    assert!(
        (190e6..=210e6).contains(&slept),
        "a 200 ms sleep got {:.1} ms blocked: {traces:#?}",
        slept / 1e6
    );
    let through = traces.iter().any(|t| {
        t.labels.get("span_name").map(String::as_str) == Some("sleepy")
            && t.frames.first().map(String::as_str) == Some("[blocked: clock_nanosleep]")
            && t.frames.iter().any(|f| f.contains("nanosleep"))
            && t.frames
                .iter()
                .any(|f| f.contains("wall_test_sleeps_200_ms"))
    });
    assert!(
        through,
        "no blocked stack through clock_nanosleep and the test's function: {traces:#?}"
    );
    let busy_blocked = blocked("busy");
    println!("busy: blocked {:.1} ms", busy_blocked / 1e6);
    assert!(
        busy_blocked < 10e6,
        "a CPU-bound span got {:.1} ms blocked",
        busy_blocked / 1e6
    );
    let _ = std::fs::remove_dir_all(&dir);
}
