//! The load generator: each order is a client-side root span
//! `OrderVehicle` whose W3C `traceparent` goes out with the HTTP request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::args::Args;
use crate::protocol::{self, Message, Totals, Unit};
use crate::telemetry;
use crate::work::{self, Vehicle};

/// Open-loop orders in flight at most; beyond that an order is skipped (counted).
const MAX_IN_FLIGHT: usize = 256;

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    errors: AtomicU64,
    skipped: AtomicU64,
}

/// A tiny xorshift generator: which region and vehicle to order.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

pub(crate) fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let telemetry = telemetry::init("load-generator", None)?;
    let counters = Arc::new(Counters::default());
    let (result, stats) = telemetry.run(async |t| generate(args, counters.clone(), t).await)?;
    if args.child {
        protocol::write(&Message::Exit(Totals {
            unit: Unit::Orders,
            count: counters.ok.load(Ordering::Relaxed),
            errors: Some(counters.errors.load(Ordering::Relaxed)),
            secs: Some(result.as_ref().map_or(0.0, |d| d.as_secs_f64())),
            samples: stats.samples,
            cpu_ms: telemetry::process_cpu_ms().unwrap_or(0),
        }));
    }
    result.map(|_| ())
}

/// Runs until the duration is over (or a shutdown signal); returns the
/// time spent sending orders.
async fn generate(
    args: &Args,
    counters: Arc<Counters>,
    telemetry: &telemetry::Telemetry,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        .build()?;
    wait_for_targets(&client, &args.targets).await?;
    if args.child {
        protocol::write(&Message::Ready { port: 0 });
        let counters = counters.clone();
        protocol::report_progress(Unit::Orders, telemetry.profiler.clone(), move || {
            let errors =
                counters.errors.load(Ordering::Relaxed) + counters.skipped.load(Ordering::Relaxed);
            (counters.ok.load(Ordering::Relaxed), errors)
        });
    } else {
        eprintln!(
            "load generator: ordering from {} region(s)",
            args.targets.len()
        );
    }
    let targets = Arc::new(args.targets.clone());
    let start = Instant::now();
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let stop = crate::shutdown_signal(args.child);
    tokio::pin!(stop);
    let until_deadline = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until_deadline);

    match args.concurrency {
        // Closed loop: N clients, each orders again as soon as it has an answer.
        Some(clients) => {
            let mut tasks = tokio::task::JoinSet::new();
            for c in 0..clients {
                let (client, targets, counters) =
                    (client.clone(), targets.clone(), counters.clone());
                tasks.spawn(async move {
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1));
                    loop {
                        order(&client, &targets, &mut rng, &counters).await;
                    }
                });
            }
            tokio::select! {
                _ = &mut until_deadline => {}
                _ = &mut stop => {}
            }
            tasks.abort_all();
        }
        // Open loop: a fixed rate of orders, whatever the answers.
        None => {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
            let mut rng = Rng(0x2545_f491_4f6c_dd1d);
            let mut tasks = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut until_deadline => break,
                    _ = &mut stop => break,
                }
                while tasks.try_join_next().is_some() {}
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    counters.skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let mut order_rng = Rng(rng.next() | 1);
                let (client, targets, counters) =
                    (client.clone(), targets.clone(), counters.clone());
                tasks.spawn(async move {
                    order(&client, &targets, &mut order_rng, &counters).await;
                    drop(permit);
                });
            }
            // Let the orders in flight finish (bounded by the client timeout).
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
        }
    }
    Ok(start.elapsed())
}

/// One order: the client root span `OrderVehicle` around an HTTP GET that
/// carries the span's `traceparent`.
async fn order(
    client: &reqwest::Client,
    targets: &[(String, String)],
    rng: &mut Rng,
    counters: &Counters,
) {
    let r = rng.next();
    let Some((region, base)) = targets.get((r % targets.len().max(1) as u64) as usize) else {
        return;
    };
    // 40% bikes, 30% scooters, 30% cars.
    let vehicle = match (r >> 8) % 10 {
        0..=3 => Vehicle::Bike,
        4..=6 => Vehicle::Scooter,
        _ => Vehicle::Car,
    };
    let span = tracing::info_span!(
        "OrderVehicle",
        otel.kind = "client",
        vehicle = vehicle.name(),
        region = region.as_str()
    );
    let url = format!("{base}/{}", vehicle.name());
    let ok = async {
        work::prepare_order(r);
        let mut headers = HeaderMap::new();
        telemetry::inject(&tracing::Span::current().context(), &mut headers);
        match client.get(&url).headers(headers).send().await {
            Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
            Err(_) => false,
        }
    }
    .instrument(span)
    .await;
    let counter = if ok { &counters.ok } else { &counters.errors };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Waits (up to 60 s) until every target answers `GET /`.
async fn wait_for_targets(
    client: &reqwest::Client,
    targets: &[(String, String)],
) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for (region, base) in targets {
        loop {
            match client.get(format!("{base}/")).send().await {
                Ok(r) if r.status().is_success() => break,
                result => {
                    if Instant::now() > deadline {
                        return Err(format!(
                            "region {region} at {base} did not answer within 60 s: {:?}",
                            result.map(|r| r.status())
                        )
                        .into());
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_covers_all_vehicles_and_regions() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut seen = [[0u32; 3]; 3];
        for _ in 0..3000 {
            let r = rng.next();
            seen[(r % 3) as usize][match (r >> 8) % 10 {
                0..=3 => 0,
                4..=6 => 1,
                _ => 2,
            }] += 1;
        }
        assert!(seen.iter().flatten().all(|&n| n > 100), "{seen:?}");
    }
}
