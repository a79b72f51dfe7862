//! Cost of a span enter+exit pair, the layer's hot path.
//!
//! One group, five stacks, in one run:
//! - `registry`: `Registry` alone (the baseline);
//! - `registry+profiling`: with an active `SpanProfileLayer` (scope root);
//! - `registry+otel`: with tracing-opentelemetry (in-memory exporter);
//! - `registry+otel+profiling`: both;
//! - `registry+inert`: with an inert `SpanProfileLayer` (profiling off).
//!
//! Targets: profiling/registry ≤ 2.0, otel+profiling/otel ≤ 1.15,
//! inert/registry ≤ 1.05.
//!
//! ```text
//! cargo bench --bench layer -- --warm-up-time 1 --measurement-time 3
//! ```

use criterion::{criterion_group, criterion_main, Criterion};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing::Dispatch;
use tracing_pyroscope::{SpanProfileLayer, SpanScope};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Registry;

fn inert_layer() -> SpanProfileLayer {
    // Nothing configured (profiling off): the layer users get by default.
    match tracing_pyroscope::Builder::new("bench")
        .enabled(false)
        .build()
    {
        Ok((layer, guard)) => {
            drop(guard);
            assert!(layer.is_inert(), "a disabled builder gives an inert layer");
            layer
        }
        Err(e) => panic!("building an inert layer failed: {e}"),
    }
}

fn enter_exit(c: &mut Criterion) {
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(InMemorySpanExporter::default())
        .build();
    let otel = || tracing_opentelemetry::layer().with_tracer(provider.tracer("bench"));
    let profiling = || SpanProfileLayer::with_scope(SpanScope::Root);

    let stacks: Vec<(&str, Dispatch)> = vec![
        ("registry", Dispatch::new(Registry::default())),
        (
            "registry+profiling",
            Dispatch::new(Registry::default().with(profiling())),
        ),
        (
            "registry+otel",
            Dispatch::new(Registry::default().with(otel())),
        ),
        (
            "registry+otel+profiling",
            Dispatch::new(Registry::default().with(otel()).with(profiling())),
        ),
        (
            "registry+inert",
            Dispatch::new(Registry::default().with(inert_layer())),
        ),
    ];

    let mut group = c.benchmark_group("enter_exit");
    for (name, dispatch) in &stacks {
        tracing::dispatcher::with_default(dispatch, || {
            let span = tracing::info_span!("bench-root");
            // The first enter settles the span's ids; measure the steady state.
            span.in_scope(|| {});
            group.bench_function(*name, |b| {
                b.iter(|| span.in_scope(|| std::hint::black_box(())));
            });
        });
    }
    group.finish();
}

criterion_group!(benches, enter_exit);
criterion_main!(benches);
