//! Unit tests of the layer: its stack, cache, resolution and span records.

use super::resolve::mint_span_id;
use super::stack::Track;
use super::*;
use crate::context::{self, SpanLabels};
use crate::export::SpanIndexRecord;
use crate::stats::Counters;
use std::sync::mpsc;
use std::sync::Arc;
use tracing_subscriber::prelude::*;

fn labels(span_id: u64) -> SpanLabels {
    SpanLabels::new(span_id, 0, 0)
}

#[test]
fn stack_in_order_and_out_of_order() {
    let base = context::replace(labels(1));
    stack::enter(10, labels(2), Track::NONE, false);
    stack::enter(11, labels(3), Track::NONE, false);
    assert_eq!(context::current(), labels(3));
    // Out of order: 10 exits while 11 runs.
    stack::exit(10, false);
    assert_eq!(context::current(), labels(3));
    stack::exit(11, false);
    assert_eq!(context::current(), labels(1));
    assert_eq!(stack::depth(), 0);
    // Re-entering the same span.
    stack::enter(10, labels(2), Track::NONE, false);
    stack::enter(10, labels(2), Track::NONE, false);
    stack::exit(10, false);
    assert_eq!(context::current(), labels(2));
    stack::exit(10, false);
    assert_eq!(context::current(), labels(1));
    // Unknown exits change nothing.
    stack::exit(99, false);
    assert_eq!(context::current(), labels(1));
    context::replace(base);
}

#[test]
fn stack_overflow_is_bounded_and_recovers() {
    let base = context::current();
    for i in 0..(stack::CAPACITY as u64 + 10) {
        stack::enter(100 + i, labels(100 + i), Track::NONE, false);
    }
    assert_eq!(context::current(), labels(100 + stack::CAPACITY as u64 - 1));
    for i in (0..(stack::CAPACITY as u64 + 10)).rev() {
        stack::exit(100 + i, false);
    }
    assert_eq!(context::current(), base);
    assert_eq!(stack::depth(), 0);
}

#[test]
fn out_of_order_exit_while_overflowed_restores_the_slot() {
    let base = context::current();
    let cap = stack::CAPACITY as u64;
    for i in 0..cap {
        stack::enter(200 + i, labels(200 + i), Track::NONE, false);
    }
    // One enter beyond the capacity, then the topmost stacked span exits
    // before it (out of order).
    stack::enter(900, labels(900), Track::NONE, false);
    stack::exit(200 + cap - 1, false);
    assert_eq!(context::current(), labels(200 + cap - 2));
    stack::exit(900, false);
    for i in (0..cap - 1).rev() {
        stack::exit(200 + i, false);
    }
    assert_eq!(context::current(), base);
    assert_eq!(stack::depth(), 0);
}

#[test]
fn cache_entries_die_with_their_span() {
    let base = context::current();
    let epoch = stack::epoch(42);
    stack::remember(7, 42, epoch, labels(5), Track::NONE);
    assert!(stack::enter_cached(7, 42, false));
    assert_eq!(context::current(), labels(5));
    stack::exit(42, false);
    assert!(
        !stack::enter_cached(8, 42, false),
        "another subscriber's id 42"
    );
    stack::closed(42);
    assert!(!stack::enter_cached(7, 42, false), "span 42 closed");
    assert_eq!(context::current(), base);
}

#[test]
fn reused_span_ids_get_fresh_labels() {
    // The Registry reuses span ids (slab slot + wrapping generation). A
    // worker thread enters span X, caching its labels; X closes; once a
    // new span gets X's id, the worker enters it: it must see new labels.
    let subscriber =
        tracing_subscriber::registry().with(SpanProfileLayer::with_scope(SpanScope::All));
    let (to_worker, work) = mpsc::channel::<tracing::Span>();
    let (to_main, results) = mpsc::channel::<SpanLabels>();
    let worker = std::thread::spawn(move || {
        for span in work {
            let labels = span.in_scope(context::current);
            drop(span);
            to_main.send(labels).unwrap();
        }
    });
    tracing::subscriber::with_default(subscriber, || {
        let first = tracing::info_span!("reuse");
        let first_id = first.id().unwrap();
        to_worker.send(first.clone()).unwrap();
        let first_labels = results.recv().unwrap();
        assert_ne!(first_labels.span_id, 0);
        // The worker has dropped its handle; close X here, so its slab slot
        // is the next one this thread reuses.
        drop(first);
        for _ in 0..1_000_000 {
            let span = tracing::info_span!("reuse");
            if span.id() == Some(first_id.clone()) {
                to_worker.send(span).unwrap();
                let labels = results.recv().unwrap();
                assert_ne!(labels.span_id, 0);
                assert_ne!(labels, first_labels, "stale labels for a reused id");
                return;
            }
        }
        panic!("the Registry never reused a span id; the test proves nothing");
    });
    drop(to_worker);
    worker.join().unwrap();
}

#[test]
fn minted_ids_are_distinct_and_nonzero() {
    let ids: std::collections::HashSet<u64> = (0..10_000).map(|_| mint_span_id()).collect();
    assert_eq!(ids.len(), 10_000);
    assert!(!ids.contains(&0));
}

#[test]
fn records_profiled_local_roots_on_close() {
    let (tx, rx) = mpsc::sync_channel(16);
    let counters = Arc::new(Counters::default());
    let layer = SpanProfileLayer::new(LayerConfig {
        scope: SpanScope::Root,
        span_name_label: true,
        trace_id_label: false,
        span_labels: Arc::new([]),
        records: Some(SpanIndexQueue::new(tx, counters.clone())),
        wall: false,
        profile_id_always: false,
    });
    let subscriber = tracing_subscriber::registry().with(layer);
    let root_id = tracing::subscriber::with_default(subscriber, || {
        let root = tracing::info_span!("record-root", otel.name = "GET /car");
        let root_id = root.in_scope(|| {
            let root_labels = context::current();
            let child = tracing::info_span!("record-child");
            // Scope root: the child carries the root's labels.
            child.in_scope(|| assert_eq!(context::current(), root_labels));
            root_labels.span_id
        });
        drop(root);
        // A root that is never entered has no id and no record.
        drop(tracing::info_span!("never-entered"));
        root_id
    });
    assert_ne!(root_id, 0);
    let records: Vec<SpanIndexRecord> = rx.try_iter().map(SpanIndexRecord::from).collect();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].span_id(), Some(root_id));
    assert_eq!(records[0].trace_id, None);
    assert_eq!(records[0].name, "GET /car");
    assert!(records[0].end_unix_nanos >= records[0].start_unix_nanos);
    assert_eq!(counters.snapshot().dropped_spans, 0);
}

#[test]
fn records_carry_otel_ids() {
    use opentelemetry::trace::TracerProvider as _;
    let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let (tx, rx) = mpsc::sync_channel(16);
    let layer = SpanProfileLayer::new(LayerConfig {
        scope: SpanScope::All,
        span_name_label: false,
        trace_id_label: false,
        span_labels: Arc::new([]),
        records: Some(SpanIndexQueue::new(tx, Arc::new(Counters::default()))),
        wall: false,
        profile_id_always: false,
    });
    let subscriber = tracing_subscriber::registry()
        .with(layer)
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("t")));
    tracing::subscriber::with_default(subscriber, || {
        let root = tracing::info_span!("otel-record-root");
        root.in_scope(|| tracing::info_span!("otel-record-child").in_scope(|| {}));
    });
    let spans = exporter.get_finished_spans().unwrap();
    let root = spans.iter().find(|s| s.name == "otel-record-root").unwrap();
    let child = spans
        .iter()
        .find(|s| s.name == "otel-record-child")
        .unwrap();
    let mut records: Vec<SpanIndexRecord> = rx.try_iter().map(SpanIndexRecord::from).collect();
    // Scope all: every span with its own id is recorded, the child (closed
    // first) with its local parent.
    assert_eq!(records.len(), 2, "{records:?}");
    let child_record = records.remove(0);
    let root_id = u64::from_be_bytes(root.span_context.span_id().to_bytes());
    assert_eq!(
        child_record.span_id(),
        Some(u64::from_be_bytes(child.span_context.span_id().to_bytes()))
    );
    assert!(!child_record.root);
    assert_eq!(child_record.name, "otel-record-child");
    assert_eq!(
        child_record.parent_span_id,
        Some(context::span_id_hex(root_id))
    );
    assert!(records[0].root);
    assert_eq!(records[0].span_id(), Some(root_id));
    assert_eq!(
        records[0].trace_id,
        Some(context::trace_id_hex(u128::from_be_bytes(
            root.span_context.trace_id().to_bytes()
        )))
    );
    assert_eq!(records[0].name, "otel-record-root");
}

#[test]
fn inert_layer_leaves_the_slot_alone() {
    let subscriber = tracing_subscriber::registry().with(SpanProfileLayer::inert());
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("inert");
        let before = context::current();
        span.in_scope(|| assert_eq!(context::current(), before));
    });
}

/// The span-field labels in this thread's slot, as `key=value` strings.
fn field_labels() -> Vec<String> {
    context::fields_of(context::current().fields_id)
        .map(|set| set.iter().map(|(k, v)| format!("{k}={v}")).collect())
        .unwrap_or_default()
}

fn labelled(scope: SpanScope) -> impl tracing::Subscriber + Send + Sync {
    tracing_subscriber::registry()
        .with(SpanProfileLayer::with_scope(scope).with_span_labels(&["vehicle", "region"]))
}

#[test]
fn span_fields_label_the_span_and_its_descendants_nearest_wins() {
    for scope in [SpanScope::Root, SpanScope::All, SpanScope::None] {
        tracing::subscriber::with_default(labelled(scope), || {
            let root = tracing::info_span!("order", vehicle = "car", region = %"eu", other = 3);
            root.in_scope(|| {
                assert_eq!(field_labels(), ["region=eu", "vehicle=car"], "{scope:?}");
                let root_labels = context::current();
                // A child without fields inherits them.
                tracing::info_span!("plain").in_scope(|| {
                    assert_eq!(field_labels(), ["region=eu", "vehicle=car"]);
                    if scope != SpanScope::All {
                        assert_eq!(context::current(), root_labels, "{scope:?}");
                    }
                    // The nearest span wins; a number is formatted.
                    tracing::info_span!("inner", vehicle = 7).in_scope(|| {
                        assert_eq!(field_labels(), ["region=eu", "vehicle=7"]);
                        // With scope root the child keeps the root's ids.
                        let now = context::current();
                        assert_eq!(now.span_id == root_labels.span_id, scope != SpanScope::All);
                        assert_eq!(now.name_id == root_labels.name_id, scope != SpanScope::All);
                    });
                    assert_eq!(field_labels(), ["region=eu", "vehicle=car"]);
                });
            });
            // Unlisted fields and spans without fields: no set.
            tracing::info_span!("unlisted", other = "x").in_scope(|| {
                assert_eq!(context::current().fields_id, 0);
            });
            tracing::info_span!("debug", vehicle = ?"bike", region = true)
                .in_scope(|| assert_eq!(field_labels(), ["region=true", "vehicle=\"bike\""]));
        });
    }
}

#[test]
fn record_applies_before_the_first_enter_at_once_when_innermost_and_to_descendants() {
    tracing::subscriber::with_default(labelled(SpanScope::Root), || {
        let root = tracing::info_span!("rec", vehicle = tracing::field::Empty);
        root.record("vehicle", "scooter");
        root.in_scope(|| {
            assert_eq!(field_labels(), ["vehicle=scooter"]);
            // The innermost span: at once, and again.
            root.record("vehicle", "truck");
            assert_eq!(field_labels(), ["vehicle=truck"]);
            root.record("vehicle", "car");
            assert_eq!(field_labels(), ["vehicle=car"]);
            // Under `with_labels` the slot is not the span's own: left as
            // it is until the block ends and the span is entered again.
            context::with_labels(&[("region", "x")], || {
                root.record("vehicle", "van");
                assert_eq!(field_labels(), ["region=x", "vehicle=car"]);
            });
            assert_eq!(field_labels(), ["vehicle=car"], "restored by the block");
            root.in_scope(|| assert_eq!(field_labels(), ["vehicle=van"]));
            root.record("vehicle", "car");
            let child = tracing::info_span!("rec-child", region = "us");
            child.in_scope(|| {
                assert_eq!(field_labels(), ["region=us", "vehicle=car"]);
                // Not the innermost: at the child's next enter.
                root.record("vehicle", "bike");
                assert_eq!(field_labels(), ["region=us", "vehicle=car"]);
            });
            // Back in the root, still entered since before the record: the
            // value its enter wrote, until its next enter.
            assert_eq!(field_labels(), ["vehicle=car"]);
            root.in_scope(|| assert_eq!(field_labels(), ["vehicle=bike"]));
            child.in_scope(|| assert_eq!(field_labels(), ["region=us", "vehicle=bike"]));
            // An empty value unsets the span's own value.
            child.record("region", "");
            child.in_scope(|| assert_eq!(field_labels(), ["vehicle=bike"]));
        });
        // Exit restores exactly: no labels outside.
        assert_eq!(context::current(), SpanLabels::NONE);
        // Other threads see the change at their next enter.
        let seen = std::thread::scope(|s| s.spawn(|| root.in_scope(field_labels)).join().unwrap());
        assert_eq!(seen, ["vehicle=bike"]);
    });
}

#[test]
fn with_labels_merges_and_restores_on_return_and_panic() {
    tracing::subscriber::with_default(labelled(SpanScope::Root), || {
        let base = context::current();
        context::with_labels(&[("vehicle", "car"), ("unlisted", "x")], || {
            assert_eq!(field_labels(), ["vehicle=car"]);
            tracing::info_span!("wl", region = "eu").in_scope(|| {
                assert_eq!(field_labels(), ["region=eu"], "spans carry their own");
                let span_labels = context::current();
                context::with_labels(&[("vehicle", "bike")], || {
                    assert_eq!(field_labels(), ["region=eu", "vehicle=bike"]);
                    assert_eq!(context::current().span_id, span_labels.span_id);
                });
                assert_eq!(context::current(), span_labels);
            });
            assert_eq!(field_labels(), ["vehicle=car"]);
        });
        assert_eq!(context::current(), base);
        let caught = std::panic::catch_unwind(|| {
            context::with_labels(&[("vehicle", "truck")], || {
                assert_eq!(field_labels(), ["vehicle=truck"]);
                panic!("inside with_labels");
            })
        });
        assert!(caught.is_err());
        assert_eq!(context::current(), base, "restored on panic");
    });
}
