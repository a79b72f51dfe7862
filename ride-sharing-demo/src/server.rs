//! One region's ride-sharing service: axum routes `/bike`, `/scooter` and
//! `/car`. Each request gets a server span whose parent is the caller's
//! `traceparent` (a remote parent), so it is a local root span with its own
//! profile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::args::Args;
use crate::protocol::{self, Message, Totals, Unit};
use crate::telemetry;
use crate::wait;
use crate::work::{self, Vehicle};

/// In eu-north, every Nth request holds the region lock for long.
const LONG_LOCK_EVERY: u64 = 5;

struct App {
    region: String,
    requests: AtomicU64,
    /// Contended in eu-north (see [`work::mutex_lock`]), where a roster
    /// sync holds it three quarters of the time ([`wait::every`]).
    lock: Mutex<u64>,
    /// Routes eu-north keeps (see [`work::cache_route`]).
    routes: Mutex<work::RouteCache>,
}

pub(crate) fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let region = args.region.clone().unwrap_or_default();
    let telemetry = telemetry::init("ride-sharing-app", Some(&region))?;
    let app = Arc::new(App {
        region,
        requests: AtomicU64::new(0),
        lock: Mutex::new(1),
        routes: Mutex::default(),
    });
    if app.region == "eu-north" {
        // A roster sync holds the region lock while it waits on I/O: the
        // requests that want the lock meanwhile block in `mutex_lock`.
        let sync = app.clone();
        wait::every("roster-sync", move || {
            let _guard = sync.lock.lock();
            std::thread::sleep(wait::ROSTER_SYNC);
        });
    }
    let (result, stats) = telemetry.run(async |t| serve(args, app.clone(), t).await)?;
    if args.child {
        protocol::write(&Message::Exit(Totals {
            unit: Unit::Requests,
            count: app.requests.load(Ordering::Relaxed),
            errors: None,
            secs: None,
            samples: stats.samples,
            cpu_ms: telemetry::process_cpu_ms().unwrap_or(0),
        }));
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
        protocol::write(&Message::Ready { port });
        let app = app.clone();
        protocol::report_progress(Unit::Requests, telemetry.profiler.clone(), move || {
            (app.requests.load(Ordering::Relaxed), 0)
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
/// caller's span as remote parent) wraps the CPU work. Its `vehicle` field
/// labels the samples (the demo lists it in `PYROSCOPE_SPAN_LABELS`), as
/// Pyroscope's own ride-sharing example tags each request; `region` stays
/// a static label of the process (`PYROSCOPE_LABELS`).
async fn order(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    vehicle: Vehicle,
) -> (StatusCode, String) {
    // A span's name is static: one `info_span!` a route.
    macro_rules! request_span {
        ($route:literal) => {
            tracing::info_span!(
                concat!("GET ", $route),
                otel.kind = "server",
                http.request.method = "GET",
                http.route = $route,
                region = app.region.as_str(),
                // A span label (PYROSCOPE_SPAN_LABELS=vehicle): every
                // sample of this request carries vehicle="car", etc.
                vehicle = vehicle.name()
            )
        };
    }
    let span = match vehicle {
        Vehicle::Bike => request_span!("/bike"),
        Vehicle::Scooter => request_span!("/scooter"),
        Vehicle::Car => request_span!("/car"),
    };
    // Before the span is first entered: the OTel span starts with this parent.
    let _ = span.set_parent(telemetry::extract(&headers));
    let n = app.requests.fetch_add(1, Ordering::Relaxed);
    let work_span = span.clone();
    let work_app = app.clone();
    let done = async move {
        if vehicle == Vehicle::Car {
            // Cars wait for a dispatcher (awaiting, under `dispatch`).
            wait::dispatch(vehicle).await;
        }
        // The work runs on a blocking thread, inside the same span.
        tokio::task::spawn_blocking(move || work_span.in_scope(|| handle(&work_app, vehicle, n)))
            .await
    }
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
    // A blocking socket read (blocked, in `read`).
    let mut eta = wait::quote_fare();
    eta ^= work::find_nearest_vehicle(vehicle.search_radius(), vehicle);
    if vehicle == Vehicle::Car {
        eta ^= work::check_driver_availability(vehicle.search_radius() / 2);
    }
    if app.region == "eu-north" {
        // Every request takes the region lock; every Nth holds it long, so
        // concurrent requests block in mutex_lock.
        let hold = if n.is_multiple_of(LONG_LOCK_EVERY) {
            100
        } else {
            5
        };
        eta ^= work::mutex_lock(&app.lock, hold);
    }
    eta ^ allocate(app, vehicle, n)
}

/// The request's allocations: a car's route (short-lived vectors), and in
/// eu-north a route cache that grows and is trimmed.
fn allocate(app: &App, vehicle: Vehicle, n: u64) -> u64 {
    let mut x = 0;
    if vehicle == Vehicle::Car {
        x ^= work::build_route(n);
    }
    if app.region == "eu-north" {
        x ^= work::cache_route(&app.routes, n);
    }
    x
}
