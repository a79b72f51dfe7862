//! One region's ride-sharing service: axum routes `/bike`, `/scooter` and
//! `/car`. Each request gets a server span whose parent is the caller's
//! `traceparent` (a remote parent), so it is a local root span with its own
//! profile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::args::Args;
use crate::telemetry;
use crate::work::{self, Vehicle};

/// In eu-north, every Nth request holds the region lock for long.
const LONG_LOCK_EVERY: u64 = 5;

struct App {
    region: String,
    requests: AtomicU64,
    /// Contended in eu-north (see [`work::mutex_lock`]).
    lock: Mutex<u64>,
}

pub(crate) fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let region = args.region.clone().unwrap_or_default();
    let telemetry = telemetry::init("ride-sharing-app", Some(&region))?;
    let app = Arc::new(App {
        region,
        requests: AtomicU64::new(0),
        lock: Mutex::new(1),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(serve(args, app.clone(), &telemetry));
    runtime.shutdown_timeout(Duration::from_secs(5));
    let stats = telemetry.profiler.stats();
    telemetry.shutdown();
    if args.child {
        crate::report_line(&format!(
            "EXIT requests={} samples={} cpu_ms={}",
            app.requests.load(Ordering::Relaxed),
            stats.samples,
            telemetry::process_cpu_time().map_or(0, |d| d.as_millis())
        ));
    }
    result
}

async fn serve(
    args: &Args,
    app: Arc<App>,
    telemetry: &telemetry::Telemetry,
) -> Result<(), Box<dyn std::error::Error>> {
    let router = Router::new()
        .route(
            "/",
            get(|| async { "ride-sharing-app: GET /bike, /scooter or /car\n" }),
        )
        .route("/bike", get(|s, h| order(s, h, Vehicle::Bike)))
        .route("/scooter", get(|s, h| order(s, h, Vehicle::Scooter)))
        .route("/car", get(|s, h| order(s, h, Vehicle::Car)))
        .with_state(app.clone());
    let listener = tokio::net::TcpListener::bind((args.bind.as_str(), args.port)).await?;
    let port = listener.local_addr()?.port();
    if args.child {
        crate::report_line(&format!("READY {port}"));
        // Progress for the parent: the profiler's counters every 500 ms.
        let app = app.clone();
        let profiler = telemetry.profiler.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let requests = app.requests.load(Ordering::Relaxed);
                crate::report_line(&crate::stats_line(
                    "requests",
                    requests,
                    0,
                    &profiler.stats(),
                ));
            }
        });
    } else {
        eprintln!(
            "ride-sharing-app region {} listening on {}:{port}",
            app.region, args.bind
        );
    }
    axum::serve(listener, router)
        .with_graceful_shutdown(crate::shutdown_signal(args.child))
        .await?;
    Ok(())
}

/// `GET /bike|/scooter|/car`: the request span (a local root with the
/// caller's span as remote parent) wraps the CPU work.
async fn order(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    vehicle: Vehicle,
) -> (StatusCode, String) {
    let region = app.region.as_str();
    let span = match vehicle {
        Vehicle::Bike => tracing::info_span!(
            "GET /bike",
            otel.kind = "server",
            http.request.method = "GET",
            http.route = "/bike",
            region
        ),
        Vehicle::Scooter => tracing::info_span!(
            "GET /scooter",
            otel.kind = "server",
            http.request.method = "GET",
            http.route = "/scooter",
            region
        ),
        Vehicle::Car => tracing::info_span!(
            "GET /car",
            otel.kind = "server",
            http.request.method = "GET",
            http.route = "/car",
            region
        ),
    };
    // Before the span is first entered: the OTel span starts with this parent.
    let _ = span.set_parent(telemetry::extract(&headers));
    let n = app.requests.fetch_add(1, Ordering::Relaxed);
    let work_span = span.clone();
    let work_app = app.clone();
    // The work runs on a blocking thread, inside the same span.
    let done =
        tokio::task::spawn_blocking(move || work_span.in_scope(|| handle(&work_app, vehicle, n)))
            .instrument(span)
            .await;
    match done {
        Ok(eta) => (
            StatusCode::OK,
            format!(
                "{{\"vehicle\":\"{}\",\"region\":\"{}\",\"eta_s\":{}}}\n",
                vehicle.name(),
                app.region,
                eta % 600
            ),
        ),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

fn handle(app: &App, vehicle: Vehicle, n: u64) -> u64 {
    let mut eta = work::find_nearest_vehicle(vehicle.search_radius(), vehicle);
    if vehicle == Vehicle::Car {
        eta ^= work::check_driver_availability(vehicle.search_radius() / 2);
    }
    if app.region == "eu-north" {
        // Every request takes the region lock; every Nth holds it long, so
        // concurrent requests spin in mutex_lock.
        let hold = if n.is_multiple_of(LONG_LOCK_EVERY) {
            100
        } else {
            5
        };
        eta ^= work::mutex_lock(&app.lock, hold);
    }
    eta
}
