//! `--compare`: the same closed-loop load with profiling off and on, in
//! rounds; prints throughput and CPU per order of each and their ratios.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::fleet::{Fleet, Pace, Profiling};
use super::{interrupt_flag, out_dir, prepare_out, BoxError};
use crate::args::Args;

/// One phase of `--compare`: one fleet's figures.
#[derive(Debug, Default, Clone, Copy)]
struct Phase {
    orders: f64,
    errors: f64,
    secs: f64,
    cpu_ms: f64,
    samples: f64,
}

impl Phase {
    fn add(&mut self, p: &Phase) {
        self.orders += p.orders;
        self.errors += p.errors;
        self.secs += p.secs;
        self.cpu_ms += p.cpu_ms;
        self.samples += p.samples;
    }

    /// Orders per second.
    fn throughput(&self) -> f64 {
        self.orders / self.secs.max(0.001)
    }

    /// CPU milliseconds per order, all of the fleet's processes together.
    fn cpu_per_order(&self) -> f64 {
        self.cpu_ms / self.orders.max(1.0)
    }
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
                p.throughput(),
                p.cpu_per_order(),
                p.errors,
                p.samples
            );
            pair[usize::from(mode == Profiling::On)] = p;
            if mode == Profiling::On {
                on.add(&p);
            } else {
                off.add(&p);
            }
        }
        tput_ratios.push(pair[1].throughput() / pair[0].throughput().max(0.001));
        cpu_ratios.push(pair[1].cpu_per_order() / pair[0].cpu_per_order().max(0.001));
    }
    let ratio = on.throughput() / off.throughput().max(0.001);
    println!(
        "throughput profiling off: {:.1} orders/s ({:.2} ms CPU/order)",
        off.throughput(),
        off.cpu_per_order()
    );
    println!(
        "throughput profiling on:  {:.1} orders/s ({:.2} ms CPU/order, {} samples)",
        on.throughput(),
        on.cpu_per_order(),
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
        off.cpu_per_order() / on.cpu_per_order().max(0.001),
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
    let mut fleets = Vec::new();
    for &mode in modes {
        let mut fleet = Fleet::new(out)?;
        let servers = fleet.spawn_regions(mode)?;
        fleets.push((fleet, servers, mode));
    }
    for (fleet, servers, _) in &mut fleets {
        fleet.wait_ready(servers, interrupted)?;
    }
    let mut loads = Vec::new();
    for (fleet, servers, mode) in &mut fleets {
        loads.push(fleet.spawn_load(servers, duration, Pace::Clients(clients), *mode)?);
    }
    while !interrupted.load(Ordering::Relaxed)
        && fleets
            .iter()
            .zip(&loads)
            .any(|((fleet, _, _), &load)| !fleet.is_closed(load))
    {
        for (fleet, _, _) in &mut fleets {
            fleet.pump(Duration::from_millis(20));
        }
    }
    let mut phases = Vec::new();
    for ((fleet, servers, _), load) in fleets.iter_mut().zip(loads) {
        fleet.stop(&[load])?;
        fleet.stop(servers)?;
        let all: Vec<usize> = servers.iter().copied().chain([load]).collect();
        let exit = fleet.totals(load);
        phases.push(Phase {
            orders: exit.count as f64,
            errors: exit.errors.unwrap_or(0) as f64,
            secs: exit.secs.unwrap_or(0.0),
            cpu_ms: all.iter().map(|&i| fleet.totals(i).cpu_ms as f64).sum(),
            samples: all.iter().map(|&i| fleet.totals(i).samples as f64).sum(),
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
    fn phases_add_up_and_divide_safely() {
        let mut sum = Phase::default();
        assert_eq!((sum.throughput(), sum.cpu_per_order()), (0.0, 0.0));
        let p = Phase {
            orders: 100.0,
            errors: 1.0,
            secs: 2.0,
            cpu_ms: 300.0,
            samples: 7.0,
        };
        sum.add(&p);
        sum.add(&p);
        assert_eq!((sum.orders, sum.errors, sum.samples), (200.0, 2.0, 14.0));
        assert_eq!((sum.throughput(), sum.cpu_per_order()), (50.0, 3.0));
    }
}
