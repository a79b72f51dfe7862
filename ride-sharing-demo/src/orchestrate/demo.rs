//! The default mode: one fleet with profiling on for `--duration`, a live
//! progress line on stderr, then `report.html` (its path on stdout).

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::fleet::{Fleet, Pace, Profiling, REGIONS};
use super::{interrupt_flag, out_dir, prepare_out, BoxError};
use crate::args::Args;

/// Runs the demo, shows progress, writes the report.
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
    let profiling = profiling_from_env();
    let servers = fleet.spawn_regions(profiling)?;
    fleet.wait_ready(&servers, &interrupted)?;
    let load = fleet.spawn_load(&servers, duration, Pace::Rate(args.rate), profiling)?;
    let all: Vec<usize> = servers.iter().copied().chain([load]).collect();
    let progress = ProgressLine {
        servers: &servers,
        load,
        all: &all,
        total: duration,
        tty: std::io::stderr().is_terminal(),
        start: Instant::now(),
    };

    let mut last_print = Instant::now() - Duration::from_secs(10);
    let print_every = if progress.tty {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    };
    while !fleet.is_closed(load) {
        fleet.pump(Duration::from_millis(100));
        if interrupted.load(Ordering::Relaxed) {
            eprintln!("\ninterrupted: stopping and writing the report");
            break;
        }
        if last_print.elapsed() >= print_every {
            last_print = Instant::now();
            progress.show(&fleet, false);
        }
    }
    let load_result = fleet.stop(&[load]);
    let servers_result = fleet.stop(&servers);
    progress.show(&fleet, true);
    load_result?;
    servers_result?;

    let summary = tracing_pyroscope::report::write_report(&out, &out.join("report.html"))?;
    eprintln!(
        "report: {} spans in {} traces, {} pprof files, {} CPU samples ({} with a span id), {} span flame graphs",
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

/// Profiling on, unless the user turned it off with
/// `PYROSCOPE_PROFILING_ENABLED` (e.g. to soak the demo without it).
fn profiling_from_env() -> Profiling {
    let off = std::env::var("PYROSCOPE_PROFILING_ENABLED")
        .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "false" | "0" | "no"));
    if off {
        Profiling::Off
    } else {
        Profiling::On
    }
}

/// The progress line: what the fleet's processes have counted so far.
struct ProgressLine<'a> {
    servers: &'a [usize],
    load: usize,
    all: &'a [usize],
    total: Duration,
    /// On a terminal the line is rewritten in place; elsewhere one line
    /// each time.
    tty: bool,
    start: Instant,
}

impl ProgressLine<'_> {
    fn line(&self, fleet: &Fleet) -> String {
        let (servers, load, all) = (self.servers, &[self.load], self.all);
        let orders = fleet.sum(load, |p| p.count);
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        format!(
            "{:>5.1}s/{:.0}s  orders {orders} ({:.1}/s)  requests {}  profiled spans {}  samples {}  files {}  errors: requests {}, write {}, upload {}  dropped {}",
            secs.min(self.total.as_secs_f64()),
            self.total.as_secs_f64(),
            orders as f64 / secs,
            fleet.sum(servers, |p| p.count),
            fleet.sum(all, |p| p.spans),
            fleet.sum(all, |p| p.samples),
            fleet.sum(all, |p| p.files),
            fleet.sum(load, |p| p.errors),
            fleet.sum(all, |p| p.write_errors),
            fleet.sum(all, |p| p.upload_errors),
            fleet.sum(all, |p| p.dropped),
        )
    }

    /// Prints the line; `last` ends it on a terminal too.
    fn show(&self, fleet: &Fleet, last: bool) {
        let line = self.line(fleet);
        match (self.tty, last) {
            (true, false) => eprint!("\r{line}\x1b[K"),
            (true, true) => eprintln!("\r{line}\x1b[K"),
            (false, _) => eprintln!("{line}"),
        }
    }
}
