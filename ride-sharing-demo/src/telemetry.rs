//! Instrumentation: tracing + tracing-opentelemetry (OTLP/HTTP export only
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set) and span profiling through
//! `tracing_pyroscope::from_env()` — nothing demo-specific.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use std::sync::Arc;

use tracing_pyroscope::ProfilerGuard;
use tracing_subscriber::prelude::*;

/// Keeps tracing and profiling running; [`Telemetry::run`] runs the service
/// and flushes both at the end.
pub(crate) struct Telemetry {
    pub(crate) profiler: Arc<ProfilerGuard>,
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Runs `work` on a tokio runtime with two worker threads, stops the
    /// runtime (its tasks get up to 5 s), then [shuts down](Self::shutdown).
    /// Returns what `work` returned and the profiler's last counters.
    pub(crate) fn run<T>(
        self,
        work: impl AsyncFnOnce(&Telemetry) -> T,
    ) -> std::io::Result<(T, tracing_pyroscope::Stats)> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let result = runtime.block_on(work(&self));
        runtime.shutdown_timeout(std::time::Duration::from_secs(5));
        Ok((result, self.shutdown()))
    }

    /// Stops profiling (writes/uploads the last interval, once the last
    /// clone of the guard is gone), then flushes spans. Returns the
    /// profiler's counters as they were just before.
    fn shutdown(self) -> tracing_pyroscope::Stats {
        let stats = self.profiler.stats();
        drop(self.profiler);
        if let Err(e) = self.provider.shutdown() {
            eprintln!("ride-sharing-demo: flushing spans: {e}");
        }
        stats
    }
}

/// The OTel `service.name` (= Pyroscope `service_name`).
pub(crate) fn service_name(default: &str) -> String {
    std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// Installs the global subscriber: OTel layer, then the span-profiling layer.
pub(crate) fn init(
    default_service: &str,
    region: Option<&str>,
) -> Result<Telemetry, Box<dyn std::error::Error>> {
    let service = service_name(default_service);
    let mut resource = Resource::builder().with_service_name(service);
    if let Some(region) = region {
        resource = resource.with_attribute(KeyValue::new("region", region.to_string()));
    }
    let mut builder = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource.build());
    let otlp = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_ok_and(|e| !e.is_empty());
    if otlp {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let tracer = provider.tracer("ride-sharing-demo");

    let (profiling, profiler) = tracing_pyroscope::from_env()?;
    tracing_subscriber::registry()
        // Spans and events at INFO and above: not the TRACE events of
        // hyper and friends, which would become OTel span events.
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .with(profiling)
        .try_init()?;
    Ok(Telemetry {
        profiler: Arc::new(profiler),
        provider,
    })
}

/// Writes the W3C `traceparent` of `cx` into HTTP headers.
pub(crate) fn inject(cx: &opentelemetry::Context, headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}

/// Reads the remote parent from HTTP headers.
pub(crate) fn extract(headers: &HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// CPU time (user + system) this process has used, in milliseconds, if the
/// platform says.
pub(crate) fn process_cpu_ms() -> Option<u64> {
    // /proc/self/stat: fields 14 and 15 (utime, stime) in clock ticks (100 Hz
    // on Linux builds: USER_HZ is fixed at 100 for the /proc interface).
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_comm = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 10)
}
