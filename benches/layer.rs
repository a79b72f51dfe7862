//! Cost of a span enter+exit pair, the layer's hot path.
//!
//! One group, five stacks, in one run:
//! - `registry`: `Registry` alone (the baseline);
//! - `registry+profiling`: with an active `SpanProfileLayer` (scope root),
//!   from a real profiler started with `Builder` (100 Hz, local directory,
//!   span labels `vehicle` and `region` listed), on a span without fields;
//! - `registry+profiling+fields`: the same layer, on a span with two label
//!   fields (`vehicle`, `region`);
//! - `registry+profiling+wall`: the active layer with wall time on
//!   (awaiting time measured on every enter and exit);
//! - `registry+otel`: with tracing-opentelemetry (in-memory exporter);
//! - `registry+otel+profiling`: both;
//! - `registry+inert`: with an inert `SpanProfileLayer` (profiling off);
//! - `registry+flag`: with a minimal layer whose `on_enter`/`on_exit` only
//!   test a `bool` field, the least any layer with enter/exit callbacks can
//!   cost (the floor for an inert layer);
//! - `registry+identity`: with tracing-subscriber's empty `Identity` layer,
//!   i.e. the cost of being a layer at all (`Layered` plumbing).
//!
//! Targets: profiling/registry ≤ 2.0, fields/registry ≤ 2.0, wall/registry ≤ 2.5,
//! otel+profiling/otel ≤ 1.15, inert/registry ≤ 1.05.
//!
//! The machine these run on is shared, so per-benchmark times drift between
//! benchmarks. Before the criterion group, `interleaved` times all stacks in
//! alternating short rounds and prints the ratios of the per-stack minimum,
//! which interference barely moves.
//!
//! ```text
//! cargo bench --bench layer -- --warm-up-time 1 --measurement-time 3
//! ```

use criterion::{criterion_group, criterion_main, Criterion};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tracing::Dispatch;
use tracing_pyroscope::{SpanProfileLayer, SpanScope};
use tracing_subscriber::layer::{Identity, SubscriberExt};
use tracing_subscriber::Registry;

fn inert_layer() -> SpanProfileLayer {
    // Nothing configured (profiling off): the layer users get by default.
    match tracing_pyroscope::Builder::new("bench")
        .enabled(false)
        .build()
    {
        Ok((layer, guard)) => {
            assert!(
                !guard.is_active(),
                "a disabled builder gives an inert layer"
            );
            drop(guard);
            layer
        }
        Err(e) => panic!("building an inert layer failed: {e}"),
    }
}

/// The active layer with wall time on (`Builder::wall_time(true)`): it
/// measures awaiting time on every enter and exit. Only one profiler runs
/// at a time, so this one is built and stopped before the one
/// [`active_layer`] keeps running; the layer's enter and exit do the same
/// work either way (its emissions, off the hot path, are then refused).
fn wall_layer() -> SpanProfileLayer {
    static LAYER: OnceLock<SpanProfileLayer> = OnceLock::new();
    LAYER
        .get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("tp-bench-wall-{}", std::process::id()));
            match tracing_pyroscope::Builder::new("bench")
                .profiles_dir(&dir)
                .span_scope(SpanScope::Root)
                .span_labels(["vehicle", "region"])
                .wall_time(true)
                .build()
            {
                Ok((layer, guard)) => {
                    assert!(guard.is_active(), "profiling should be on");
                    drop(guard);
                    layer
                }
                Err(e) => panic!("starting the profiler failed: {e}"),
            }
        })
        .clone()
}

/// The active layer users get: a real profiler (100 Hz, local directory)
/// runs while the benchmarks do. Started once; its guard lives until exit.
fn active_layer() -> SpanProfileLayer {
    static LAYER: OnceLock<SpanProfileLayer> = OnceLock::new();
    wall_layer();
    LAYER
        .get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("tp-bench-{}", std::process::id()));
            match tracing_pyroscope::Builder::new("bench")
                .profiles_dir(&dir)
                .span_scope(SpanScope::Root)
                .span_labels(["vehicle", "region"])
                .build()
            {
                Ok((layer, guard)) => {
                    assert!(guard.is_active(), "profiling should be on");
                    // Keep profiling for the whole run.
                    std::mem::forget(guard);
                    layer
                }
                Err(e) => panic!("starting the profiler failed: {e}"),
            }
        })
        .clone()
}

/// A layer that does nothing but test a flag on enter and exit.
struct FlagLayer(bool);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for FlagLayer {
    fn on_enter(&self, _: &tracing::span::Id, _: tracing_subscriber::layer::Context<'_, S>) {
        if self.0 {
            std::hint::black_box(());
        }
    }
    fn on_exit(&self, _: &tracing::span::Id, _: tracing_subscriber::layer::Context<'_, S>) {
        if self.0 {
            std::hint::black_box(());
        }
    }
}

/// The benchmarked span: with two span-label fields on the `+fields` stack.
fn bench_span(stack: &str) -> tracing::Span {
    if stack.ends_with("+fields") {
        tracing::info_span!("bench-root", vehicle = "car", region = "eu-north")
    } else {
        tracing::info_span!("bench-root")
    }
}

fn stacks(provider: &SdkTracerProvider) -> Vec<(&'static str, Dispatch)> {
    let otel = || tracing_opentelemetry::layer().with_tracer(provider.tracer("bench"));
    let profiling = active_layer;
    // Built first: it stops its profiler before the one that keeps running.
    wall_layer();
    vec![
        ("registry", Dispatch::new(Registry::default())),
        (
            "registry+profiling",
            Dispatch::new(Registry::default().with(profiling())),
        ),
        (
            "registry+profiling+fields",
            Dispatch::new(Registry::default().with(profiling())),
        ),
        (
            "registry+profiling+wall",
            Dispatch::new(Registry::default().with(wall_layer())),
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
        (
            "registry+flag",
            Dispatch::new(Registry::default().with(FlagLayer(std::hint::black_box(false)))),
        ),
        (
            "registry+identity",
            Dispatch::new(Registry::default().with(Identity::new())),
        ),
    ]
}

/// Nanoseconds per enter+exit pair: the minimum over alternating rounds.
fn interleaved(_c: &mut Criterion) {
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(InMemorySpanExporter::default())
        .build();
    let stacks = stacks(&provider);
    let spans: Vec<tracing::Span> = stacks
        .iter()
        .map(|(name, dispatch)| {
            tracing::dispatcher::with_default(dispatch, || {
                let span = bench_span(name);
                span.in_scope(|| {});
                span
            })
        })
        .collect();
    const ROUNDS: usize = 60;
    let mut best = vec![f64::INFINITY; stacks.len()];
    for round in 0..ROUNDS {
        for (i, span) in spans.iter().enumerate() {
            // Fewer iterations for the slow OTel stacks.
            let n: u32 = if stacks[i].0.contains("otel") {
                5_000
            } else {
                100_000
            };
            let start = Instant::now();
            for _ in 0..n {
                span.in_scope(|| std::hint::black_box(()));
            }
            let ns = start.elapsed().as_nanos() as f64 / f64::from(n);
            if round > 0 {
                best[i] = best[i].min(ns);
            }
        }
    }
    let t = |name: &str| best[stacks.iter().position(|(n, _)| *n == name).unwrap()];
    for (i, (name, _)) in stacks.iter().enumerate() {
        println!("interleaved/{name}: {:.2} ns", best[i]);
    }
    println!(
        "interleaved wall ratios: wall/registry = {:.2} (target <= 2.5), \
         wall/profiling = {:.2}",
        t("registry+profiling+wall") / t("registry"),
        t("registry+profiling+wall") / t("registry+profiling"),
    );
    println!(
        "interleaved ratios: profiling/registry = {:.2} (target <= 2.0), \
         profiling+fields/registry = {:.2} (target <= 2.0), \
         otel+profiling/otel = {:.3} (target <= 1.15), inert/registry = {:.3} \
         (target <= 1.05), inert/identity = {:.3}, flag/registry = {:.3}, inert/flag = {:.3}",
        t("registry+profiling") / t("registry"),
        t("registry+profiling+fields") / t("registry"),
        t("registry+otel+profiling") / t("registry+otel"),
        t("registry+inert") / t("registry"),
        t("registry+inert") / t("registry+identity"),
        t("registry+flag") / t("registry"),
        t("registry+inert") / t("registry+flag"),
    );
}

/// A root span's whole life (new, enter, exit, close) with and without the
/// active layer, which on close hands the span to the span index queue.
/// Rounds of 4,000 spans, a pause after each so the collector drains the
/// queue (16,384) and no record is dropped; best round of each.
fn span_lifecycle(_c: &mut Criterion) {
    let stacks = [
        ("registry", Dispatch::new(Registry::default())),
        (
            "registry+profiling",
            Dispatch::new(Registry::default().with(active_layer())),
        ),
    ];
    const ROUNDS: usize = 30;
    const SPANS: u32 = 4_000;
    let mut best = [f64::INFINITY; 2];
    for round in 0..ROUNDS {
        for (i, (_, dispatch)) in stacks.iter().enumerate() {
            tracing::dispatcher::with_default(dispatch, || {
                let start = Instant::now();
                for _ in 0..SPANS {
                    tracing::info_span!("bench-lifecycle").in_scope(|| std::hint::black_box(()));
                }
                let ns = start.elapsed().as_nanos() as f64 / f64::from(SPANS);
                if round > 0 {
                    best[i] = best[i].min(ns);
                }
            });
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    for (i, (name, _)) in stacks.iter().enumerate() {
        println!("span_lifecycle/{name}: {:.1} ns", best[i]);
    }
    println!(
        "span_lifecycle ratio: profiling/registry = {:.2}",
        best[1] / best[0]
    );
}

fn enter_exit(c: &mut Criterion) {
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(InMemorySpanExporter::default())
        .build();
    let stacks = stacks(&provider);

    let mut group = c.benchmark_group("enter_exit");
    for (name, dispatch) in &stacks {
        tracing::dispatcher::with_default(dispatch, || {
            let span = bench_span(name);
            // The first enter settles the span's ids; measure the steady state.
            span.in_scope(|| {});
            group.bench_function(*name, |b| {
                b.iter(|| span.in_scope(|| std::hint::black_box(())));
            });
        });
    }
    group.finish();
}

criterion_group!(benches, interleaved, span_lifecycle, enter_exit);
criterion_main!(benches);
