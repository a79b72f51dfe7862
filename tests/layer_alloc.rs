//! The layer makes no allocations on span enter/exit.
//!
//! A counting global allocator (its own test binary) counts the allocations
//! made by the current thread while a warmed-up span is entered and exited many
//! times, with and without our layer (wall time off and on), with and
//! without an OTel layer, and
//! spans with two span-label fields (`vehicle`, `region`) and a child
//! overriding one.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing::Dispatch;
use tracing_pyroscope::{SpanProfileLayer, SpanScope};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Registry;

struct Counting;

thread_local! {
    // const, no destructor: safe to touch from inside the allocator.
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to `System` unchanged; only bumps a thread-local counter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

const ROUNDS: u64 = 1_000;

/// Allocations made by `ROUNDS` enter/exit pairs of a warmed-up root span and
/// of a child span inside it. With `fields`, the root has two span-label
/// fields and the child overrides one. (Which labels the child then
/// carries is checked by the layer's unit tests, `src/layer/tests.rs`.)
fn measure(dispatch: &Dispatch, fields: bool) -> u64 {
    tracing::dispatcher::with_default(dispatch, || {
        let (root, child) = if fields {
            let root = tracing::info_span!("alloc-root", vehicle = "car", region = "eu-north");
            let child = root.in_scope(|| tracing::info_span!("alloc-child", vehicle = "bike"));
            (root, child)
        } else {
            let root = tracing::info_span!("alloc-root");
            let child = root.in_scope(|| tracing::info_span!("alloc-child"));
            (root, child)
        };
        // Warm up: first enters settle ids, thread-local stacks grow.
        for _ in 0..10 {
            root.in_scope(|| child.in_scope(|| {}));
        }
        let before = allocs();
        for _ in 0..ROUNDS {
            root.in_scope(|| {
                child.in_scope(|| {});
            });
        }
        allocs() - before
    })
}

/// An active layer from a real profiler writing into a temporary directory.
/// With `wall`, wall time is on: the layer also measures awaiting time.
fn profiling(scope: SpanScope, wall: bool) -> (SpanProfileLayer, tracing_pyroscope::ProfilerGuard) {
    let dir = std::env::temp_dir().join(format!("tp-alloc-{}", std::process::id()));
    let (layer, guard) = tracing_pyroscope::Builder::new("alloc-test")
        .profiles_dir(&dir)
        .span_scope(scope)
        .span_labels(["vehicle", "region"])
        .wall_time(wall)
        .build()
        .expect("start profiling");
    assert!(guard.is_active());
    (layer, guard)
}

fn otel_provider() -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_simple_exporter(InMemorySpanExporter::default())
        .build()
}

#[test]
fn enter_and_exit_do_not_allocate() {
    for (scope, fields, wall) in [SpanScope::Root, SpanScope::All, SpanScope::None]
        .into_iter()
        .flat_map(|s| [(s, false), (s, true)])
        .flat_map(|(s, f)| [(s, f, false), (s, f, true)])
    {
        // Registry alone, and with our layer.
        let registry = measure(&Dispatch::new(Registry::default()), fields);
        // A real profiler, as users get it; one at a time in a process.
        let (layer, guard) = profiling(scope, wall);
        let ours = measure(
            &Dispatch::new(Registry::default().with(layer.clone())),
            fields,
        );
        assert_eq!(registry, 0, "the Registry alone allocates");
        assert_eq!(
            ours, 0,
            "{scope:?} wall {wall}: our layer allocated on enter/exit"
        );

        // With tracing-opentelemetry: ours adds nothing to what it does.
        let provider = otel_provider();
        let otel = measure(
            &Dispatch::new(
                Registry::default()
                    .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("a"))),
            ),
            fields,
        );
        let otel_ours = measure(
            &Dispatch::new(
                Registry::default()
                    .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("b")))
                    .with(layer),
            ),
            fields,
        );
        // The layer measured was a live profiler's.
        assert!(guard.is_active(), "{scope:?}: the layer was active");
        drop(guard);
        eprintln!(
            "{scope:?} (label fields: {fields}, wall: {wall}): allocations per {ROUNDS} root+child enter/exit rounds: \
             registry {registry}, +ours {ours}, +otel {otel}, +otel+ours {otel_ours}"
        );
        // Once per span, at the first exit after its first sample (if the
        // 100 Hz sampler hits the loop), the layer sets
        // `pyroscope.profile.id`, which allocates in tracing-opentelemetry:
        // at most the root and the child, a few allocations each.
        assert!(
            otel_ours <= otel + 8,
            "{scope:?} wall {wall}: our layer changed the allocation count with OTel \
             ({otel_ours} vs {otel} for {ROUNDS} rounds)"
        );
    }
}

#[test]
fn the_counter_sees_allocations() {
    // Guards against a counter that never counts (the test above would pass).
    let before = allocs();
    let v = std::hint::black_box(vec![1u8; 64]);
    assert!(allocs() > before);
    drop(v);
}
