//! An axum service as it is usually set up: OpenTelemetry traces over OTLP,
//! tower-http's `TraceLayer`, logs through `fmt`, and span profiles.
//!
//! ```text
//! OTEL_SERVICE_NAME=users PYROSCOPE_SERVER_ADDRESS=http://localhost:4040 \
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 \
//!     cargo run --release --example axum_otel          # serves on 127.0.0.1:3000
//! curl -H 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' \
//!     localhost:3000/users/42
//! cargo run --release --example axum_otel -- --once    # sends itself one request, exits
//! ```
//!
//! What it shows:
//! - `make_span_with` continues the caller's trace (its `traceparent`), so
//!   the request span is a local root whose profile Grafana links to;
//! - `otel.name` is the route (`GET /users/{id}`), not tower-http's
//!   `request`: it names the span in Tempo and the `span_name` label;
//! - `spawn_blocking` work runs inside the request span, so its CPU time
//!   carries the request's `span_id`.

use axum::extract::{MatchedPath, Path, Request};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::Router;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tower_http::trace::TraceLayer;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{fmt, EnvFilter};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let once = std::env::args().skip(1).any(|a| a == "--once");
    run(once)
}

#[tokio::main]
async fn run(once: bool) -> Result<(), Box<dyn std::error::Error>> {
    // Traces: exported over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    // `service.name` comes from OTEL_SERVICE_NAME, as the profiles' does.
    let mut traces = SdkTracerProvider::builder();
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()?;
        traces = traces.with_batch_exporter(exporter);
    }
    let traces = traces.build();

    // Profiles: configured by PYROSCOPE_* and OTEL_SERVICE_NAME. Keep the
    // guard until the server has stopped.
    let (profiling, guard) = tracing_pyroscope::from_env()?;
    tracing_subscriber::registry()
        .with(fmt::layer().with_filter(EnvFilter::from_default_env()))
        .with(tracing_opentelemetry::layer().with_tracer(traces.tracer("axum-example")))
        .with(profiling)
        .init();

    let app = Router::new()
        .route("/users/{id}", get(get_user))
        .layer(TraceLayer::new_for_http().make_span_with(request_span));

    let port = if once { 0 } else { 3000 };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                tokio::select! {
                    _ = stopped => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            })
            .await
    });
    if once {
        let response = get_once(addr, "/users/42").await?;
        println!("{}", response.lines().next().unwrap_or(""));
        let _ = stop.send(());
    }
    server.await??;

    drop(guard); // the last profile
    traces.shutdown()?; // the last spans
    Ok(())
}

/// The request span: named by its route, child of the caller's trace.
fn request_span(request: &Request) -> Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(request.uri().path(), MatchedPath::as_str);
    let span = tracing::info_span!(
        "request",
        otel.name = format!("{} {route}", request.method()),
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = route,
    );
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
    // Fails only when no OpenTelemetry layer is installed.
    let _ = span.set_parent(parent);
    span
}

async fn get_user(Path(id): Path<u64>) -> String {
    // Blocking work runs on another thread: take the span along.
    let span = Span::current();
    let rows = tokio::task::spawn_blocking(move || span.in_scope(|| query_database(id)))
        .await
        .unwrap_or(0);
    format!("user {id}: {rows} rows\n")
}

/// Stands for a blocking call (SQLite, a file, a compression step): about
/// 300 ms of this thread's CPU time, however busy the machine is.
fn query_database(id: u64) -> u64 {
    let start = thread_cpu_time();
    let mut x = id;
    while thread_cpu_time().saturating_sub(start) < std::time::Duration::from_millis(300) {
        for i in 0..100_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    x % 100
}

/// This thread's CPU time on Linux (`/proc/thread-self/schedstat`), else
/// the time since the first call.
fn thread_cpu_time() -> std::time::Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map(std::time::Duration::from_nanos)
        .unwrap_or_else(|| {
            static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
            START.get_or_init(std::time::Instant::now).elapsed()
        })
}

/// Reads the W3C `traceparent` from the request's headers.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// `--once`: one plain HTTP/1.1 request with a `traceparent`, as an
/// instrumented caller would send it.
async fn get_once(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\
         traceparent: 00-{TRACE_ID}-{PARENT_ID}-01\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

// Run by `cargo test` (the example is declared with `test = true`).
#[cfg(test)]
mod tests {
    /// One request: its span continues the caller's trace, is named by its
    /// route, and holds the CPU time of its `spawn_blocking` work.
    #[test]
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    fn one_request_is_profiled_under_its_route() {
        let dir = std::env::temp_dir().join(format!("tp-axum-otel-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // The binary's only test: nothing reads the environment meanwhile.
        std::env::set_var("RUST_LOG", "info");
        std::env::set_var("PYROSCOPE_PROFILES_DIR", &dir);
        std::env::set_var("OTEL_SERVICE_NAME", "axum-otel-example");
        std::env::remove_var("OTEL_EXPORTER_OTLP_ENDPOINT");
        super::run(true).expect("run");
        let index = std::fs::read_to_string(dir.join("spans.jsonl")).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        let line = index
            .lines()
            .find(|l| l.contains(r#""name":"GET /users/{id}""#))
            .unwrap_or_else(|| panic!("no `GET /users/{{id}}` span in the index:\n{index}"));
        assert!(
            line.contains(&format!(r#""trace_id":"{}""#, super::TRACE_ID)),
            "not the caller's trace: {line}"
        );
        let samples: u64 = line
            .split(r#""cpu_samples":"#)
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        // 300 ms of CPU in `spawn_blocking` at 100 Hz: about 30 samples; the
        // handler's own few microseconds would get none.
        assert!(
            samples >= 10,
            "spawn_blocking's CPU not in the span: {line}"
        );
    }
}
