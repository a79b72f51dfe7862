//! Idle cost: the application does nothing while profiling runs at
//! 100 Hz; the process's CPU time over a window is the profiler's own.
//! Arms (a) none, (b) tracing-pyroscope, (c) pyroscope 2.x with its pprof
//! backend (no tags: there are no spans), each in its own child process,
//! with 0, 100 and 1000 sleeping threads, rounds × thread counts × arms in
//! rotating order.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyroscope::backend::{pprof_backend, BackendConfig, PprofConfig};
use pyroscope::pyroscope::PyroscopeAgentBuilder;

use crate::arms::Arm;
use crate::measure::{median, process_cpu};
use crate::{receiver, run_child, Options};

/// `idle-child ARM THREADS SECONDS URL`: prints `RESULT cpu_pct=…`.
pub fn child(args: &[String]) {
    let arm = args[0]
        .chars()
        .next()
        .and_then(Arm::from_letter)
        .expect("arm");
    let threads: usize = args[1].parse().expect("threads");
    let seconds: f64 = args[2].parse().expect("seconds");
    let url = &args[3];
    let stop = Arc::new(AtomicBool::new(false));
    let sleepers: Vec<_> = (0..threads)
        .map(|_| {
            let stop = stop.clone();
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::park();
                    }
                })
                .expect("spawn a sleeping thread")
        })
        .collect();
    let mut ours = None;
    let mut theirs = None;
    match arm {
        Arm::None => {}
        Arm::TracingPyroscope => {
            ours = Some(
                tracing_pyroscope::Builder::new("idle")
                    .server_address(url.as_str())
                    // `PYROSCOPE_PROFILING_WALLTIME_ENABLED=true bash
                    // scripts/compare.sh idle`: the same with wall time on.
                    .wall_time(
                        std::env::var("PYROSCOPE_PROFILING_WALLTIME_ENABLED").as_deref()
                            == Ok("true"),
                    )
                    .build()
                    .expect("start tracing-pyroscope"),
            );
        }
        Arm::PyroscopeEvery | Arm::PyroscopeRoot | Arm::PyroscopeUntagged => {
            theirs = Some(
                PyroscopeAgentBuilder::new(
                    url,
                    "idle",
                    100,
                    "pyroscope-rs",
                    "2.1.5",
                    pprof_backend(PprofConfig { sample_rate: 100 }, BackendConfig::default()),
                )
                .build()
                .expect("build pyroscope agent")
                .start()
                .expect("start pyroscope agent"),
            );
        }
    }
    // Let start-up work (thread scans, arming, symbol loading) finish.
    std::thread::sleep(Duration::from_secs(1));
    let c0 = process_cpu();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let cpu = (process_cpu() - c0).as_secs_f64();
    println!(
        "RESULT arm={} threads={threads} cpu_pct={:.4}",
        arm.letter(),
        cpu / seconds * 100.0
    );
    drop(ours);
    if let Some(agent) = theirs {
        if let Ok(ready) = agent.stop() {
            ready.shutdown();
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in sleepers {
        t.thread().unpark();
        let _ = t.join();
    }
}

pub fn run(o: &Options) {
    let counts: Vec<usize> = o
        .text("threads", "0,100,1000")
        .split(',')
        .filter_map(|t| t.trim().parse().ok())
        .collect();
    let seconds: f64 = o.get("seconds", 10.0);
    let rounds: usize = o.get("rounds", 3);
    let arms: Vec<Arm> = o
        .text("arms", "abc")
        .chars()
        .filter_map(Arm::from_letter)
        .collect();
    let out: PathBuf =
        std::env::temp_dir().join(format!("tracing-pyroscope-idle-{}", std::process::id()));
    let url = receiver::start(&out).expect("start the receiver");
    let mut cpu: BTreeMap<(usize, char), Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        for &threads in &counts {
            for k in 0..arms.len() {
                let arm = arms[(k + round) % arms.len()];
                let f = run_child(&[
                    "idle-child".into(),
                    arm.letter().to_string(),
                    threads.to_string(),
                    seconds.to_string(),
                    format!("{url}/idle-{}-{threads}-r{round}", arm.letter()),
                ]);
                let pct: f64 = f.get("cpu_pct").and_then(|v| v.parse().ok()).unwrap_or(0.0);
                eprintln!(
                    "round {round}, {threads} sleeping threads, ({}) {}: {pct:.3}% of a core",
                    arm.letter(),
                    arm.name()
                );
                cpu.entry((threads, arm.letter())).or_default().push(pct);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    println!(
        "\nidle process CPU, % of one core over {seconds} s at 100 Hz, median of {rounds} rounds\n"
    );
    let header: Vec<String> = arms
        .iter()
        .map(|a| match a {
            Arm::None => "(a) none".to_string(),
            Arm::TracingPyroscope => "(b) tracing-pyroscope".to_string(),
            _ => format!("({}) pyroscope 2.1.5", a.letter()),
        })
        .collect();
    println!("| sleeping threads | {} | (b) / (c) |", header.join(" | "));
    println!("|---:|{}---:|", "---:|".repeat(arms.len()));
    for &threads in &counts {
        let m = |c: char| median(cpu.get(&(threads, c)).cloned().unwrap_or_default());
        let cells: Vec<String> = arms
            .iter()
            .map(|a| format!("{:.3}%", m(a.letter())))
            .collect();
        let has = |c: char| cpu.contains_key(&(threads, c));
        let ratio = if has('b') && has('c') {
            format!("{:.2}", m('b') / m('c'))
        } else {
            "—".to_string()
        };
        println!("| {threads} | {} | {ratio} |", cells.join(" | "));
    }
}
