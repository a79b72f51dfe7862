//! The parent process: starts one process per region plus the load
//! generator (each profiled by `tracing_pyroscope::from_env()` from the
//! environment it is given), shows live progress from their counters, stops
//! them, and writes the report. Also the `--compare` overhead measurement.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::args::Args;

type BoxError = Box<dyn std::error::Error>;

/// The regions, one service process each.
pub(crate) const REGIONS: [&str; 3] = ["us-east", "eu-north", "ap-south"];

/// Environment variables that switch profiling on; removed when it is off.
const PROFILING_VARS: [&str; 2] = ["PYROSCOPE_PROFILES_DIR", "PYROSCOPE_SERVER_ADDRESS"];

enum Msg {
    Line(usize, String),
    Closed(usize),
}

/// `KEY=VALUE` fields of a child's `STATS`/`EXIT` line.
type Fields = HashMap<String, f64>;

struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stats: Fields,
    exit: Option<Fields>,
    ready: Option<u16>,
    closed: bool,
}

/// Whether profiling is on for the processes of a run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Profiling {
    Off,
    On,
}

struct Fleet {
    procs: Vec<Proc>,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    exe: PathBuf,
    out: PathBuf,
}

impl Fleet {
    fn new(out: &Path) -> Result<Self, BoxError> {
        let (tx, rx) = mpsc::channel();
        Ok(Fleet {
            procs: Vec::new(),
            tx,
            rx,
            exe: std::env::current_exe()?,
            out: out.to_path_buf(),
        })
    }

    /// Starts one service process per region; returns their indices.
    fn spawn_regions(
        &mut self,
        service: &str,
        profiling: Profiling,
    ) -> Result<Vec<usize>, BoxError> {
        REGIONS
            .iter()
            .map(|region| {
                self.spawn(
                    region,
                    &server_args(region),
                    service,
                    Some(region),
                    profiling,
                )
            })
            .collect()
    }

    /// Starts `exe args --child` with profiling configured by environment.
    fn spawn(
        &mut self,
        name: &str,
        args: &[String],
        service: &str,
        region: Option<&str>,
        profiling: Profiling,
    ) -> Result<usize, BoxError> {
        let mut cmd = Command::new(&self.exe);
        cmd.args(args)
            .arg("--child")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // Static labels: the user's, plus this instance's region.
        let mut labels: Vec<String> = std::env::var("PYROSCOPE_LABELS")
            .unwrap_or_default()
            .split(',')
            .filter(|kv| !kv.trim().is_empty() && !kv.trim_start().starts_with("region="))
            .map(str::to_string)
            .collect();
        if let Some(region) = region {
            labels.push(format!("region={region}"));
        }
        cmd.env("PYROSCOPE_LABELS", labels.join(","));
        cmd.env("OTEL_SERVICE_NAME", service);
        match profiling {
            Profiling::On => {
                cmd.env("PYROSCOPE_PROFILES_DIR", &self.out);
                cmd.env_remove("PYROSCOPE_PROFILING_ENABLED");
            }
            Profiling::Off => {
                for var in PROFILING_VARS {
                    cmd.env_remove(var);
                }
                cmd.env("PYROSCOPE_PROFILING_ENABLED", "false");
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting {} ({name}): {e}", self.exe.display()))?;
        let index = self.procs.len();
        let stdout = child.stdout.take().ok_or("child without stdout")?;
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(Msg::Line(index, line)).is_err() {
                    return;
                }
            }
            let _ = tx.send(Msg::Closed(index));
        });
        self.procs.push(Proc {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            stats: Fields::new(),
            exit: None,
            ready: None,
            closed: false,
        });
        Ok(index)
    }

    /// Handles messages for up to `timeout`; returns false on timeout.
    fn pump(&mut self, timeout: Duration) -> bool {
        let msg = match self.rx.recv_timeout(timeout) {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => return false,
        };
        match msg {
            Msg::Line(i, line) => {
                let Some(p) = self.procs.get_mut(i) else {
                    return true;
                };
                if let Some(rest) = line.strip_prefix("STATS ") {
                    p.stats = fields(rest);
                } else if let Some(rest) = line.strip_prefix("EXIT ") {
                    p.exit = Some(fields(rest));
                } else if let Some(port) = line.strip_prefix("READY ") {
                    p.ready = port.trim().parse().ok();
                }
            }
            Msg::Closed(i) => {
                if let Some(p) = self.procs.get_mut(i) {
                    p.closed = true;
                }
            }
        }
        true
    }

    /// Waits until every process in `which` printed READY.
    fn wait_ready(&mut self, which: &[usize], interrupted: &AtomicBool) -> Result<(), BoxError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while which.iter().any(|&i| self.procs[i].ready.is_none()) {
            if let Some(p) = which.iter().map(|&i| &self.procs[i]).find(|p| p.closed) {
                return Err(format!("{} exited before it was ready", p.name).into());
            }
            if Instant::now() > deadline || interrupted.load(Ordering::Relaxed) {
                return Err("the services did not start within 60 s".into());
            }
            self.pump(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Closes the stdin of `which` (they stop), then waits for them to exit.
    fn stop(&mut self, which: &[usize]) -> Result<(), BoxError> {
        for &i in which {
            self.procs[i].stdin.take();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while which.iter().any(|&i| !self.procs[i].closed) && Instant::now() < deadline {
            self.pump(Duration::from_millis(100));
        }
        let mut failed = Vec::new();
        for &i in which {
            let p = &mut self.procs[i];
            let status = loop {
                match p.child.try_wait()? {
                    Some(status) => break Some(status),
                    None if Instant::now() > deadline => {
                        let _ = p.child.kill();
                        let _ = p.child.wait();
                        break None;
                    }
                    None => std::thread::sleep(Duration::from_millis(50)),
                }
            };
            if !status.is_some_and(|s| s.success()) {
                failed.push(format!(
                    "{} ({})",
                    p.name,
                    status.map_or("killed after 20 s".to_string(), |s| s.to_string())
                ));
            }
        }
        // Drain what is left so late lines are not lost.
        while self.pump(Duration::from_millis(1)) {}
        if failed.is_empty() {
            Ok(())
        } else {
            Err(format!("process(es) failed: {}", failed.join(", ")).into())
        }
    }

    /// Sum of a counter over `which`: the final (`EXIT`) value where a
    /// process has exited, else its latest `STATS`.
    fn sum(&self, which: &[usize], key: &str) -> f64 {
        which
            .iter()
            .map(|&i| {
                let p = &self.procs[i];
                p.exit
                    .as_ref()
                    .and_then(|e| e.get(key))
                    .or_else(|| p.stats.get(key))
                    .copied()
                    .unwrap_or(0.0)
            })
            .sum()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.stdin.take();
            if p.child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(200));
                if p.child.try_wait().ok().flatten().is_none() {
                    let _ = p.child.kill();
                }
                let _ = p.child.wait();
            }
        }
    }
}

fn fields(s: &str) -> Fields {
    s.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

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

fn server_args(region: &str) -> Vec<String> {
    [
        "--serve",
        "--region",
        region,
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn load_args(fleet: &Fleet, servers: &[usize], duration: Duration, load: &[String]) -> Vec<String> {
    let targets: Vec<String> = servers
        .iter()
        .zip(REGIONS)
        .map(|(&i, region)| {
            format!(
                "{region}=http://127.0.0.1:{}",
                fleet.procs[i].ready.unwrap_or(0)
            )
        })
        .collect();
    let mut args: Vec<String> = vec![
        "--load".into(),
        "--targets".into(),
        targets.join(","),
        "--duration".into(),
        format!("{}ms", duration.as_millis().max(1)),
    ];
    args.extend(load.iter().cloned());
    args
}

fn service_name() -> String {
    crate::telemetry::service_name("ride-sharing-app")
}

/// The default mode: run, show progress, write the report.
pub(crate) fn demo(args: &Args) -> Result<(), BoxError> {
    let out = out_dir(args);
    let removed = prepare_out(&out)?;
    let duration = args.duration.unwrap_or(Duration::from_secs(30));
    let interrupted = interrupt_flag();
    let mut fleet = Fleet::new(&out)?;
    let upload = std::env::var("PYROSCOPE_SERVER_ADDRESS")
        .ok()
        .filter(|s| !s.is_empty());
    eprintln!(
        "ride-sharing-demo: 3 regions ({}) + load generator for {:.0} s at {} orders/s; profiles in {}{}{}",
        REGIONS.join(", "),
        duration.as_secs_f64(),
        args.rate,
        out.display(),
        upload.map(|u| format!(", uploading to {u}")).unwrap_or_default(),
        if removed > 0 { format!(" (cleared {removed} files of an earlier run)") } else { String::new() },
    );
    let servers = fleet.spawn_regions(&service_name(), Profiling::On)?;
    fleet.wait_ready(&servers, &interrupted)?;
    let load = fleet.spawn(
        "load-generator",
        &load_args(
            &fleet,
            &servers,
            duration,
            &["--rate".to_string(), args.rate.to_string()],
        ),
        "load-generator",
        None,
        Profiling::On,
    )?;
    let all: Vec<usize> = servers.iter().copied().chain([load]).collect();

    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    let mut last_print = Instant::now() - Duration::from_secs(10);
    let print_every = if tty {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    };
    while !fleet.procs[load].closed {
        fleet.pump(Duration::from_millis(100));
        if interrupted.load(Ordering::Relaxed) {
            eprintln!("\ninterrupted: stopping and writing the report");
            break;
        }
        if last_print.elapsed() >= print_every {
            last_print = Instant::now();
            let line = progress(&fleet, &servers, load, &all, start.elapsed(), duration);
            if tty {
                eprint!("\r{line}\x1b[K");
            } else {
                eprintln!("{line}");
            }
        }
    }
    let load_result = fleet.stop(&[load]);
    let servers_result = fleet.stop(&servers);
    let line = progress(&fleet, &servers, load, &all, start.elapsed(), duration);
    if tty {
        eprintln!("\r{line}\x1b[K");
    } else {
        eprintln!("{line}");
    }
    load_result?;
    servers_result?;

    let summary = tracing_pyroscope::report::write_report(&out, &out.join("report.html"))?;
    eprintln!(
        "report: {} root spans in {} traces, {} pprof files, {} samples ({} with a span id), {} span flame graphs",
        summary.spans,
        summary.traces,
        summary.files,
        summary.samples,
        summary.samples_with_span,
        summary.span_flame_graphs
    );
    if summary.samples == 0 {
        eprintln!(
            "note: no samples were recorded. Is profiling available on this platform? (PYROSCOPE_PROFILING_ENABLED={:?})",
            std::env::var("PYROSCOPE_PROFILING_ENABLED").unwrap_or_default()
        );
    }
    let path = std::fs::canonicalize(&summary.path).unwrap_or(summary.path);
    println!("{}", path.display());
    Ok(())
}

fn progress(
    fleet: &Fleet,
    servers: &[usize],
    load: usize,
    all: &[usize],
    elapsed: Duration,
    total: Duration,
) -> String {
    let orders = fleet.sum(&[load], "orders");
    let secs = elapsed.as_secs_f64().max(0.001);
    format!(
        "{:>5.1}s/{:.0}s  orders {:.0} ({:.1}/s)  requests {:.0}  profiled spans {:.0}  samples {:.0}  files {:.0}  errors: requests {:.0}, write {:.0}, upload {:.0}  dropped {:.0}",
        secs.min(total.as_secs_f64()),
        total.as_secs_f64(),
        orders,
        orders / secs,
        fleet.sum(servers, "requests"),
        fleet.sum(all, "spans"),
        fleet.sum(all, "samples"),
        fleet.sum(all, "files"),
        fleet.sum(&[load], "errors"),
        fleet.sum(all, "write_errors"),
        fleet.sum(all, "upload_errors"),
        fleet.sum(all, "dropped"),
    )
}

/// One phase of `--compare`.
#[derive(Debug, Default, Clone, Copy)]
struct Phase {
    orders: f64,
    errors: f64,
    secs: f64,
    cpu_ms: f64,
    samples: f64,
}

/// `--compare`: the same closed-loop load with profiling off and on. By
/// default the two fleets run side by side in each round, so the machine's
/// other load hits both alike and they share the CPU fairly: profiling's cost
/// then shows as lower throughput. `--sequential` runs them one after the
/// other instead (alternating which goes first). Prints throughput and CPU
/// per order for each, pooled and as the median of the per-round ratios.
pub(crate) fn compare(args: &Args) -> Result<(), BoxError> {
    let rounds = args.rounds;
    let out = out_dir(args);
    prepare_out(&out)?;
    let total = args.duration.unwrap_or(Duration::from_secs(30));
    let phase_len = if args.sequential {
        total / (2 * rounds)
    } else {
        total / rounds
    }
    .max(Duration::from_secs(1));
    let clients = args.concurrency.unwrap_or(4);
    let interrupted = interrupt_flag();
    eprintln!(
        "ride-sharing-demo --compare: {rounds} rounds × (off, on) {} × {:.1} s, {clients} closed-loop clients each; profiles in {}",
        if args.sequential { "one after the other" } else { "side by side" },
        phase_len.as_secs_f64(),
        out.display()
    );
    let tput = |p: &Phase| p.orders / p.secs.max(0.001);
    let cpu = |p: &Phase| p.cpu_ms / p.orders.max(1.0);
    let (mut off, mut on) = (Phase::default(), Phase::default());
    let (mut tput_ratios, mut cpu_ratios) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if interrupted.load(Ordering::Relaxed) {
            return Err("interrupted".into());
        }
        let order = if round % 2 == 0 {
            [Profiling::Off, Profiling::On]
        } else {
            [Profiling::On, Profiling::Off]
        };
        // Side by side: both fleets in the same window, so the machine's
        // other load hits both alike; or one after the other.
        let results: Vec<(Profiling, Phase)> = if args.sequential {
            let mut results = Vec::new();
            for mode in order {
                let p = run_fleets(&out, &[mode], phase_len, clients, &interrupted)?;
                results.push((mode, p.first().copied().unwrap_or_default()));
            }
            results
        } else {
            let p = run_fleets(&out, &order, phase_len, clients, &interrupted)?;
            order.into_iter().zip(p).collect()
        };
        let mut pair = [Phase::default(); 2];
        for (mode, p) in results {
            let key = if mode == Profiling::On { "on" } else { "off" };
            eprintln!(
                "  round {} profiling {key:<3}: {:>6.0} orders in {:.2} s = {:>6.1}/s, CPU {:>5.2} ms/order, {} errors, {} samples",
                round + 1,
                p.orders,
                p.secs,
                tput(&p),
                cpu(&p),
                p.errors,
                p.samples
            );
            pair[usize::from(mode == Profiling::On)] = p;
            let acc = if mode == Profiling::On {
                &mut on
            } else {
                &mut off
            };
            acc.orders += p.orders;
            acc.errors += p.errors;
            acc.secs += p.secs;
            acc.cpu_ms += p.cpu_ms;
            acc.samples += p.samples;
        }
        tput_ratios.push(tput(&pair[1]) / tput(&pair[0]).max(0.001));
        cpu_ratios.push(cpu(&pair[1]) / cpu(&pair[0]).max(0.001));
    }
    let ratio = tput(&on) / tput(&off).max(0.001);
    println!(
        "throughput profiling off: {:.1} orders/s ({:.2} ms CPU/order)",
        tput(&off),
        cpu(&off)
    );
    println!(
        "throughput profiling on:  {:.1} orders/s ({:.2} ms CPU/order, {} samples)",
        tput(&on),
        cpu(&on),
        on.samples
    );
    println!(
        "throughput ratio on/off: {ratio:.3} pooled, {:.3} median of {rounds} rounds ({:+.1}%)",
        median(&mut tput_ratios),
        (median(&mut tput_ratios) - 1.0) * 100.0,
    );
    // Orders per CPU-second of the demo's own processes: what profiling
    // costs, whatever else runs on the machine.
    println!(
        "orders per CPU-second ratio on/off: {:.3} pooled, {:.3} median ({:+.1}% CPU per order, incl. profiler start-up and final flush)",
        cpu(&off) / cpu(&on).max(0.001),
        1.0 / median(&mut cpu_ratios),
        (median(&mut cpu_ratios) - 1.0) * 100.0,
    );
    if off.errors + on.errors > 0.0 {
        eprintln!("warning: {} orders failed", off.errors + on.errors);
    }
    let summary = tracing_pyroscope::report::write_report(&out, &out.join("report.html"))?;
    eprintln!("report of the profiled phases: {}", summary.path.display());
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Runs one fleet (three regions + a closed-loop load generator) per entry
/// of `modes`, all at the same time, and returns each fleet's figures.
fn run_fleets(
    out: &Path,
    modes: &[Profiling],
    duration: Duration,
    clients: usize,
    interrupted: &AtomicBool,
) -> Result<Vec<Phase>, BoxError> {
    let service = service_name();
    let mut fleets = Vec::new();
    for &mode in modes {
        let mut fleet = Fleet::new(out)?;
        let servers = fleet.spawn_regions(&service, mode)?;
        fleets.push((fleet, servers, mode));
    }
    for (fleet, servers, _) in &mut fleets {
        fleet.wait_ready(servers, interrupted)?;
    }
    let mut loads = Vec::new();
    for (fleet, servers, mode) in &mut fleets {
        let args = load_args(
            fleet,
            servers,
            duration,
            &["--concurrency".to_string(), clients.to_string()],
        );
        loads.push(fleet.spawn("load-generator", &args, "load-generator", None, *mode)?);
    }
    while !interrupted.load(Ordering::Relaxed)
        && fleets
            .iter()
            .zip(&loads)
            .any(|((fleet, _, _), &load)| !fleet.procs[load].closed)
    {
        for (fleet, _, _) in &mut fleets {
            fleet.pump(Duration::from_millis(20));
        }
    }
    let mut phases = Vec::new();
    for ((fleet, servers, _), load) in fleets.iter_mut().zip(loads) {
        fleet.stop(&[load])?;
        fleet.stop(servers)?;
        let exit = |i: usize, k: &str| {
            fleet.procs[i]
                .exit
                .as_ref()
                .and_then(|f| f.get(k).copied())
                .unwrap_or(0.0)
        };
        let all: Vec<usize> = servers.iter().copied().chain([load]).collect();
        phases.push(Phase {
            orders: exit(load, "orders"),
            errors: exit(load, "errors"),
            secs: exit(load, "secs"),
            cpu_ms: all.iter().map(|&i| exit(i, "cpu_ms")).sum(),
            samples: all.iter().map(|&i| exit(i, "samples")).sum(),
        });
    }
    Ok(phases)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn parses_child_fields() {
        let f = fields("orders=12 errors=0 secs=1.5 junk x=y");
        assert_eq!(f["orders"], 12.0);
        assert_eq!(f["secs"], 1.5);
        assert!(!f.contains_key("x"));
    }

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
