//! One arm in its own process: start the profiler (or not), run the
//! workload, stop and flush, and report what was measured on one line.
//!
//! Each arm runs in a fresh process because both profilers own the
//! process's `SIGPROF` handler, and so that peak RSS is the arm's own.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use pyroscope::backend::{pprof_backend, BackendConfig, PprofConfig};
use pyroscope::pyroscope::PyroscopeAgentBuilder;
use tracing_subscriber::layer::SubscriberExt;

use crate::arms::{Arm, TagLayer, TagMode};
use crate::measure::{max_rss_kib, process_cpu, quantile};
use crate::workload::{self, Params};

/// Settings every child gets from the parent.
#[derive(Clone, Debug)]
pub struct Settings {
    pub params: Params,
    pub rate: u32,
    pub interval: Duration,
    pub workers: usize,
    /// Build the runtime after starting the profiler (its worker threads
    /// then start under profiling).
    pub late_runtime: bool,
}

impl Settings {
    pub fn to_args(&self) -> Vec<String> {
        let p = &self.params;
        vec![
            format!("clients={}", p.clients),
            format!("requests={}", p.requests),
            format!("bursts={}", p.bursts),
            format!("burst_us={}", p.burst.as_micros()),
            format!("rate={}", self.rate),
            format!("interval_ms={}", self.interval.as_millis()),
            format!("workers={}", self.workers),
            format!("late_runtime={}", self.late_runtime),
        ]
    }

    pub fn from_args(args: &[String]) -> Settings {
        let kv: BTreeMap<&str, &str> = args.iter().filter_map(|a| a.split_once('=')).collect();
        let num = |k: &str| -> u64 {
            kv.get(k)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("child argument {k}"))
        };
        Settings {
            params: Params {
                clients: num("clients") as usize,
                requests: num("requests") as usize,
                bursts: num("bursts") as usize,
                burst: Duration::from_micros(num("burst_us")),
            },
            rate: num("rate") as u32,
            interval: Duration::from_millis(num("interval_ms")),
            workers: num("workers") as usize,
            late_runtime: kv.get("late_runtime") == Some(&"true"),
        }
    }
}

/// A running profiler of one arm.
enum Running {
    None,
    Ours(tracing_pyroscope::ProfilerGuard),
    Pyroscope(Box<pyroscope::PyroscopeAgent<pyroscope::pyroscope::PyroscopeAgentRunning>>),
}

/// Runs `arm` uploading to `url`, writes the ground truth into `out`, and
/// prints `RESULT key=value ...` on stdout.
pub fn run(arm: Arm, url: &str, out: &Path, s: &Settings) {
    let build_runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(s.workers)
            .enable_time()
            .build()
            .expect("tokio runtime")
    };
    // As under `#[tokio::main]`: the runtime first, then the profiler.
    let early = (!s.late_runtime).then(build_runtime);

    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("compare"));
    let cpu_before_start = process_cpu();
    let mut ours_layer = None;
    let mut tag_layer = None;
    let mut tag_calls = None;
    let running = match arm {
        Arm::None => Running::None,
        Arm::TracingPyroscope => {
            let (layer, guard) = tracing_pyroscope::Builder::new("compare")
                .server_address(url)
                .sample_rate(s.rate)
                .upload_interval(s.interval)
                .build()
                .expect("start tracing-pyroscope");
            ours_layer = Some(layer);
            Running::Ours(guard)
        }
        Arm::PyroscopeEvery | Arm::PyroscopeRoot | Arm::PyroscopeUntagged => {
            let agent = PyroscopeAgentBuilder::new(
                url,
                "compare",
                s.rate,
                "pyroscope-rs",
                "2.1.5",
                pprof_backend(
                    PprofConfig {
                        sample_rate: s.rate,
                    },
                    BackendConfig::default(),
                ),
            )
            .upload_interval(s.interval)
            .build()
            .expect("build pyroscope agent")
            .start()
            .expect("start pyroscope agent");
            let mode = match arm {
                Arm::PyroscopeEvery => Some(TagMode::Every),
                Arm::PyroscopeRoot => Some(TagMode::Root),
                _ => None,
            };
            if let Some(mode) = mode {
                let layer = TagLayer::new(agent.backend.backend.clone(), mode);
                tag_calls = Some(layer.calls.clone());
                tag_layer = Some(layer);
            }
            Running::Pyroscope(Box::new(agent))
        }
    };
    let subscriber = tracing_subscriber::registry()
        .with(otel)
        .with(ours_layer)
        .with(tag_layer);
    tracing::subscriber::set_global_default(subscriber).expect("set the subscriber");
    let runtime = early.unwrap_or_else(build_runtime);

    let (cpu0, t0) = (process_cpu(), Instant::now());
    let outcome = workload::run(&runtime, s.params);
    let (wall, cpu_work) = (t0.elapsed(), process_cpu() - cpu0);
    // Let the collectors drain what the last bursts left (same pause for
    // every arm), so that tracing-pyroscope's counters are complete.
    std::thread::sleep(Duration::from_millis(500));

    let mut taken = 0;
    let mut dropped = 0;
    let mut degraded = 0;
    let mut threads = 0;
    match running {
        Running::None => {}
        Running::Ours(guard) => {
            let st = guard.stats();
            drop(guard);
            // Samples the handler took, counted (not weighted by timer
            // overruns as the profiles' values are).
            taken = st.samples;
            dropped = st.dropped_samples;
            degraded = st.degraded_samples;
            threads = st.sampled_threads;
        }
        Running::Pyroscope(agent) => {
            agent.stop().expect("stop pyroscope agent").shutdown();
        }
    }
    let cpu_total = process_cpu() - cpu_before_start;
    drop(runtime);

    let mut truth = String::new();
    for (sid, client) in &outcome.truth {
        truth.push_str(&format!("{sid:016x}\t{client}\n"));
    }
    std::fs::create_dir_all(out).expect("create the arm's directory");
    std::fs::write(out.join("truth.tsv"), truth).expect("write truth.tsv");

    let mut lat: Vec<f64> = outcome
        .latencies
        .iter()
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    let p50 = quantile(&mut lat, 0.5);
    let p99 = quantile(&mut lat, 0.99);
    let calls = tag_calls.map_or(0, |c| c.load(std::sync::atomic::Ordering::Relaxed));
    let line = format!(
        "RESULT arm={} wall_s={:.6} cpu_work_s={:.6} cpu_total_s={:.6} burn_cpu_s={:.6} \
         requests={} p50_ms={p50:.3} p99_ms={p99:.3} max_rss_kib={} taken={taken} \
         dropped={dropped} degraded={degraded} threads={threads} tag_calls={calls}",
        arm.letter(),
        wall.as_secs_f64(),
        cpu_work.as_secs_f64(),
        cpu_total.as_secs_f64(),
        outcome.burn_cpu.as_secs_f64(),
        outcome.latencies.len(),
        max_rss_kib(),
    );
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}
