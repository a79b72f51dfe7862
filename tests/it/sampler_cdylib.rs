//! The crate inside a shared library: a `cdylib` that links tracing-pyroscope
//! (tests/cdylib_fixture) is loaded with `dlopen` by a C host
//! (tests/fixtures/cdylib_host.c, compiled here with `cc`, or `$CC`). The
//! host's threads, created after the `dlopen` and never entering a span,
//! loop on `malloc`/`free` while the library's profiler samples them at
//! 1000 Hz. The host interposes `malloc` and counts the calls made on those
//! threads from inside the `SIGPROF` handler (`SIGPROF` blocked in the
//! thread's mask): there must be none. A handler that reached a thread
//! local of the library through `__tls_get_addr` would allocate there on
//! each thread's first sample (the library's TLS block), and could deadlock
//! against the `malloc` it interrupted.

use crate::pprof_tool;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Builds the fixture library for this test's profile (cargo's build lock
/// is free while tests run) and returns its path. Always through cargo, so
/// it is never older than the crate's sources.
fn build_fixture() -> PathBuf {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "-p", "tp-cdylib-fixture", "--lib"])
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit());
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("run cargo");
    assert!(out.status.success(), "building the cdylib fixture failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| {
            m["reason"] == "compiler-artifact" && m["target"]["name"] == "tp_cdylib_fixture"
        })
        .flat_map(|m| {
            m["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|f| f.as_str().map(PathBuf::from))
        })
        .find(|f| f.extension().is_some_and(|e| e == "so"))
        .expect("cargo named no .so for the fixture")
}

fn build_host(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cdylib_host.c");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = dir.join("cdylib_host");
    let status = Command::new(&cc)
        .args(["-O2", "-g", "-pthread", "-o"])
        .arg(&out)
        .arg(&source)
        .arg("-ldl")
        .status()
        .unwrap_or_else(|e| panic!("this test needs a C compiler ({cc}): {e}"));
    assert!(status.success(), "{cc} failed on {}", source.display());
    out
}

/// `key=N` from the host's report line.
fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

#[test]
fn the_handler_never_allocates_on_threads_of_a_host_that_loaded_the_crate() {
    isolated!();
    let dir = std::env::temp_dir().join(format!("tracing-pyroscope-cdylib-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let library = build_fixture();
    let host = build_host(&dir);
    let profiles = dir.join("profiles");

    let mut child = Command::new(&host)
        .arg(&library)
        .args(["4", "400"]) // 4 threads, 400 ms of CPU each
        .env("TP_FIXTURE_PROFILES", &profiles)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run the host");
    // A handler that allocates can deadlock the host: a hang fails the test.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the host") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the host hung for 120 s (a deadlock in the SIGPROF handler?)");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(status.success(), "host failed: {status}; {stdout}");
    println!("{stdout}");
    let line = stdout.lines().last().unwrap_or_default();
    // `samples` is what the guard had counted at stop (the collector's
    // last tick): informative; the profiles below are the check.
    let (checked, in_handler) = (field(line, "checked"), field(line, "in_handler"));

    // The host's threads were sampled: their stacks are in the profiles.
    let host_samples: u64 = pprof_tool::profile_files(&profiles)
        .iter()
        .flat_map(|f| pprof_tool::traces(f))
        .filter(|t| t.frames.iter().any(|f| f.contains("host_worker")))
        .map(|t| t.count)
        .sum();
    let _ = std::fs::remove_dir_all(&dir);
    println!("{host_samples} samples in the host's threads");
    assert!(checked > 10_000, "too few allocations checked: {line}");
    assert!(
        host_samples >= 100,
        "too few samples of the host's threads: {host_samples}"
    );
    assert_eq!(
        in_handler, 0,
        "the SIGPROF handler called malloc on the host's threads"
    );
}
