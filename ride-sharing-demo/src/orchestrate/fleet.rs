//! A fleet: the region service processes and the load generator of one
//! run, started from this executable with `--child`. Their stdout lines
//! (see [`crate::protocol`]) come in on one channel; the fleet keeps each
//! process's latest figures, and stops them by closing their stdin.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use super::BoxError;
use crate::protocol::{self, Message, Progress, Totals};

/// The regions, one service process each.
pub(super) const REGIONS: [&str; 3] = ["us-east", "eu-north", "ap-south"];

/// Turns the wall profile on (the demo's default: on).
const WALL_TIME_VAR: &str = "PYROSCOPE_PROFILING_WALLTIME_ENABLED";

/// Environment variables that switch profiling on; removed when it is off.
const PROFILING_VARS: [&str; 2] = ["PYROSCOPE_PROFILES_DIR", "PYROSCOPE_SERVER_ADDRESS"];

/// Whether profiling is on for the processes of a fleet.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Profiling {
    Off,
    On,
}

/// How the load generator paces its orders.
pub(super) enum Pace {
    /// Open loop: this many orders per second.
    Rate(f64),
    /// Closed loop: this many clients, each ordering again at an answer.
    Clients(usize),
}

/// What a process's reader thread sends.
enum Event {
    Line(usize, String),
    Closed(usize),
}

struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    /// The latest `STATS`.
    progress: Progress,
    exit: Option<Totals>,
    ready: Option<u16>,
    closed: bool,
}

pub(super) struct Fleet {
    procs: Vec<Proc>,
    tx: Sender<Event>,
    rx: Receiver<Event>,
    exe: PathBuf,
    out: PathBuf,
}

impl Fleet {
    /// An empty fleet whose processes profile into `out` (when profiling
    /// is on).
    pub(super) fn new(out: &Path) -> Result<Self, BoxError> {
        let (tx, rx) = mpsc::channel();
        Ok(Fleet {
            procs: Vec::new(),
            tx,
            rx,
            exe: std::env::current_exe()?,
            out: out.to_path_buf(),
        })
    }

    /// Starts one service process per region (in the order of [`REGIONS`]);
    /// returns their indices.
    pub(super) fn spawn_regions(&mut self, profiling: Profiling) -> Result<Vec<usize>, BoxError> {
        let service = crate::telemetry::service_name("ride-sharing-app");
        REGIONS
            .iter()
            .map(|region| {
                let args = [
                    "--serve",
                    "--region",
                    region,
                    "--port",
                    "0",
                    "--bind",
                    "127.0.0.1",
                ];
                self.spawn(
                    region,
                    &args.map(String::from),
                    &service,
                    Some(region),
                    profiling,
                )
            })
            .collect()
    }

    /// Starts the load generator against the regions `servers` (from
    /// [`Fleet::spawn_regions`], ready) for `duration`; returns its index.
    pub(super) fn spawn_load(
        &mut self,
        servers: &[usize],
        duration: Duration,
        pace: Pace,
        profiling: Profiling,
    ) -> Result<usize, BoxError> {
        let targets: Vec<String> = servers
            .iter()
            .zip(REGIONS)
            .map(|(&i, region)| {
                format!(
                    "{region}=http://127.0.0.1:{}",
                    self.procs[i].ready.unwrap_or(0)
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
        args.extend(match pace {
            Pace::Rate(rate) => ["--rate".to_string(), rate.to_string()],
            Pace::Clients(n) => ["--concurrency".to_string(), n.to_string()],
        });
        let name = "load-generator";
        self.spawn(name, &args, name, None, profiling)
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
        if region.is_some() {
            // The region services label each request's samples with its
            // vehicle (the request span's field), besides the user's.
            let mut span_labels: Vec<String> = std::env::var("PYROSCOPE_SPAN_LABELS")
                .unwrap_or_default()
                .split(',')
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect();
            if !span_labels.iter().any(|n| n == "vehicle") {
                span_labels.push("vehicle".to_string());
            }
            cmd.env("PYROSCOPE_SPAN_LABELS", span_labels.join(","));
            allocation_profiles(&mut cmd);
        }
        cmd.env("OTEL_SERVICE_NAME", service);
        match profiling {
            Profiling::On => {
                cmd.env("PYROSCOPE_PROFILES_DIR", &self.out);
                cmd.env_remove("PYROSCOPE_PROFILING_ENABLED");
                // Wall time (CPU, blocked, awaiting per span) is on in the
                // demo unless the user says otherwise.
                if std::env::var_os(WALL_TIME_VAR).is_none() {
                    cmd.env(WALL_TIME_VAR, "true");
                }
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
                if tx.send(Event::Line(index, line)).is_err() {
                    return;
                }
            }
            let _ = tx.send(Event::Closed(index));
        });
        self.procs.push(Proc {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            progress: Progress::default(),
            exit: None,
            ready: None,
            closed: false,
        });
        Ok(index)
    }

    /// Handles events for up to `timeout`; returns false on timeout.
    pub(super) fn pump(&mut self, timeout: Duration) -> bool {
        let Ok(event) = self.rx.recv_timeout(timeout) else {
            return false;
        };
        match event {
            Event::Line(i, line) => {
                let Some(p) = self.procs.get_mut(i) else {
                    return true;
                };
                match protocol::parse(&line) {
                    Ok(Message::Ready { port }) => p.ready = Some(port),
                    Ok(Message::Stats(progress)) => p.progress = progress,
                    Ok(Message::Exit(totals)) => p.exit = Some(totals),
                    Err(e) => eprintln!("ride-sharing-demo: {}: {e}", p.name),
                }
            }
            Event::Closed(i) => {
                if let Some(p) = self.procs.get_mut(i) {
                    p.closed = true;
                }
            }
        }
        true
    }

    /// Whether process `i`'s stdout has closed (it has exited or is about to).
    pub(super) fn is_closed(&self, i: usize) -> bool {
        self.procs[i].closed
    }

    /// Waits until every process in `which` printed READY.
    pub(super) fn wait_ready(
        &mut self,
        which: &[usize],
        interrupted: &AtomicBool,
    ) -> Result<(), BoxError> {
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
    pub(super) fn stop(&mut self, which: &[usize]) -> Result<(), BoxError> {
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

    /// The `EXIT` figures of process `i` (all zero if it sent none).
    pub(super) fn totals(&self, i: usize) -> Totals {
        self.procs[i].exit.unwrap_or_default()
    }

    /// Sum of a counter over `which`: each process's latest `STATS`, with
    /// the final values of its `EXIT` where it has exited.
    pub(super) fn sum(&self, which: &[usize], counter: impl Fn(&Progress) -> u64) -> u64 {
        which
            .iter()
            .map(|&i| {
                let p = &self.procs[i];
                let mut latest = p.progress;
                if let Some(exit) = &p.exit {
                    latest.count = exit.count;
                    latest.errors = exit.errors.unwrap_or(latest.errors);
                    latest.samples = exit.samples;
                }
                counter(&latest)
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

/// The region services also send allocation and in-use profiles
/// (`memory`), unless the user's environment says otherwise.
fn allocation_profiles(cmd: &mut Command) {
    for var in [
        "PYROSCOPE_PROFILING_ALLOCATION_ENABLED",
        "PYROSCOPE_PROFILING_HEAP_ENABLED",
    ] {
        if std::env::var_os(var).is_none() {
            cmd.env(var, "true");
        }
    }
}
