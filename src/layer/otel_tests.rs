//! The layer on a real stack: `Registry`, a real tracing-opentelemetry layer
//! and the SDK's in-memory exporter. Every test compares the slot values seen
//! inside spans (`context::current()`) with the exported spans' ids and their
//! `pyroscope.profile.id` attribute.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context as TaskContext, Poll};

use crate::config::SpanScope;
use crate::context::{self, SpanLabels};
use crate::SpanProfileLayer;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler, SdkTracerProvider, SpanData};
use tracing::{Dispatch, Instrument};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Registry;

const ATTR: &str = "pyroscope.profile.id";

#[derive(Clone, Copy, Debug)]
enum Order {
    /// Registry, then OTel, then ours.
    OtelFirst,
    /// Registry, then ours, then OTel.
    OursFirst,
    /// No OTel layer at all.
    NoOtel,
}

struct Stack {
    dispatch: Dispatch,
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
}

impl Stack {
    fn new(order: Order, layer: SpanProfileLayer, sampler: Sampler) -> Stack {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .with_sampler(sampler)
            .build();
        let tracer = provider.tracer("layer-test");
        let dispatch = match order {
            Order::OtelFirst => Dispatch::new(
                Registry::default()
                    .with(tracing_opentelemetry::layer().with_tracer(tracer))
                    .with(layer),
            ),
            Order::OursFirst => Dispatch::new(
                Registry::default()
                    .with(layer)
                    .with(tracing_opentelemetry::layer().with_tracer(tracer)),
            ),
            Order::NoOtel => Dispatch::new(Registry::default().with(layer)),
        };
        Stack {
            dispatch,
            exporter,
            provider,
        }
    }

    fn root(order: Order) -> Stack {
        Stack::new(
            order,
            SpanProfileLayer::with_scope(SpanScope::Root),
            Sampler::AlwaysOn,
        )
    }

    fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        tracing::dispatcher::with_default(&self.dispatch, f)
    }

    fn spans(&self) -> Vec<SpanData> {
        let _ = self.provider.force_flush();
        self.exporter.get_finished_spans().expect("finished spans")
    }

    fn span(&self, name: &str) -> SpanData {
        let mut found: Vec<SpanData> = self
            .spans()
            .into_iter()
            .filter(|s| s.name == name)
            .collect();
        assert_eq!(found.len(), 1, "exactly one exported span named {name}");
        found.remove(0)
    }
}

fn attr(span: &SpanData) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == ATTR)
        .map(|kv| kv.value.as_str().into_owned())
}

fn span_id(span: &SpanData) -> u64 {
    u64::from_be_bytes(span.span_context.span_id().to_bytes())
}

fn trace_id(span: &SpanData) -> u128 {
    u128::from_be_bytes(span.span_context.trace_id().to_bytes())
}

fn hex(id: u64) -> String {
    format!("{id:016x}")
}

fn name_of(labels: SpanLabels) -> Option<String> {
    context::name_of(labels.name_id).map(|n| n.to_string())
}

const OTEL_ORDERS: [Order; 2] = [Order::OtelFirst, Order::OursFirst];

#[test]
fn nested_spans_carry_the_root_id_and_restore() {
    for order in OTEL_ORDERS {
        let stack = Stack::root(order);
        let before = SpanLabels::new(0xdead, 0, 0);
        let prior = context::replace(before);
        let (in_root, in_child, in_grandchild, after_child) = stack.run(|| {
            let root = tracing::info_span!("nested-root");
            root.in_scope(|| {
                let in_root = context::current();
                let child = tracing::info_span!("nested-child");
                let (in_child, in_grandchild) = child.in_scope(|| {
                    let grandchild = tracing::info_span!("nested-grandchild");
                    (context::current(), grandchild.in_scope(context::current))
                });
                (in_root, in_child, in_grandchild, context::current())
            })
        });
        assert_eq!(context::current(), before, "{order:?}: restored after root");
        context::replace(prior);

        let root = stack.span("nested-root");
        assert_eq!(in_root.span_id, span_id(&root), "{order:?}");
        assert_eq!(in_root.trace_id, 0, "trace_id label is off by default");
        assert_eq!(name_of(in_root).as_deref(), Some("nested-root"));
        assert_eq!(attr(&root), Some(hex(in_root.span_id)), "{order:?}");
        assert_eq!(in_child, in_root, "{order:?}");
        assert_eq!(in_grandchild, in_root, "{order:?}");
        assert_eq!(after_child, in_root, "{order:?}");
        assert_eq!(attr(&stack.span("nested-child")), None, "{order:?}");
        assert_eq!(attr(&stack.span("nested-grandchild")), None, "{order:?}");
        assert_eq!(stack.spans().len(), 3);
    }
}

#[test]
fn child_entered_before_its_root() {
    for order in OTEL_ORDERS {
        let stack = Stack::root(order);
        let in_child = stack.run(|| {
            let root = tracing::info_span!("early-root");
            let child = tracing::info_span!(parent: &root, "early-child");
            // The root itself is never entered.
            child.in_scope(context::current)
        });
        let root = stack.span("early-root");
        assert_eq!(in_child.span_id, span_id(&root), "{order:?}");
        assert_eq!(attr(&root), Some(hex(span_id(&root))), "{order:?}");
        assert_eq!(attr(&stack.span("early-child")), None, "{order:?}");
    }
}

#[test]
fn scope_all_gives_every_span_its_own_id() {
    for order in OTEL_ORDERS {
        let stack = Stack::new(
            order,
            SpanProfileLayer::with_scope(SpanScope::All),
            Sampler::AlwaysOn,
        );
        let (in_root, in_child, back_in_root) = stack.run(|| {
            let root = tracing::info_span!("all-root");
            root.in_scope(|| {
                let in_root = context::current();
                let child = tracing::info_span!("all-child");
                (
                    in_root,
                    child.in_scope(context::current),
                    context::current(),
                )
            })
        });
        let root = stack.span("all-root");
        let child = stack.span("all-child");
        assert_eq!(in_root.span_id, span_id(&root), "{order:?}");
        assert_eq!(in_child.span_id, span_id(&child), "{order:?}");
        assert_ne!(in_root.span_id, in_child.span_id);
        assert_eq!(name_of(in_child).as_deref(), Some("all-child"));
        assert_eq!(back_in_root, in_root, "{order:?}: parent restored");
        assert_eq!(attr(&root), Some(hex(span_id(&root))));
        assert_eq!(attr(&child), Some(hex(span_id(&child))));
        assert_eq!(context::current(), SpanLabels::NONE);
    }
}

#[test]
fn scope_none_labels_the_root_name_only() {
    for order in OTEL_ORDERS {
        let stack = Stack::new(
            order,
            SpanProfileLayer::with_scope(SpanScope::None),
            Sampler::AlwaysOn,
        );
        let (in_root, in_child) = stack.run(|| {
            let root = tracing::info_span!("none-root");
            root.in_scope(|| {
                let child = tracing::info_span!("none-child");
                (context::current(), child.in_scope(context::current))
            })
        });
        assert_eq!(in_root.span_id, 0);
        assert_eq!(in_root.trace_id, 0);
        assert_eq!(name_of(in_root).as_deref(), Some("none-root"));
        assert_eq!(in_child, in_root);
        assert!(stack.spans().iter().all(|s| attr(s).is_none()));
        assert_eq!(stack.spans().len(), 2);
    }
}

#[test]
fn label_switches_and_otel_name() {
    let stack = Stack::new(
        Order::OtelFirst,
        SpanProfileLayer::with_scope(SpanScope::Root).with_trace_id_label(true),
        Sampler::AlwaysOn,
    );
    let seen = stack.run(|| {
        let span = tracing::info_span!("handler", otel.name = "GET /car/{id}");
        span.in_scope(context::current)
    });
    let exported = stack.span("GET /car/{id}");
    assert_eq!(seen.span_id, span_id(&exported));
    assert_eq!(seen.trace_id, trace_id(&exported));
    assert_eq!(name_of(seen).as_deref(), Some("GET /car/{id}"));

    // otel.name recorded after creation, before the first enter.
    let stack = Stack::new(
        Order::OursFirst,
        SpanProfileLayer::with_scope(SpanScope::Root).with_span_name_label(false),
        Sampler::AlwaysOn,
    );
    let seen = stack.run(|| {
        let span = tracing::info_span!("late", otel.name = tracing::field::Empty);
        span.record("otel.name", "POST /order");
        span.in_scope(context::current)
    });
    let exported = stack.span("POST /order");
    assert_eq!(seen.span_id, span_id(&exported));
    assert_eq!(seen.name_id, 0, "span_name label switched off");
    assert_eq!(seen.trace_id, 0);
}

#[test]
fn reentering_a_span_restores_each_level() {
    for order in OTEL_ORDERS {
        let stack = Stack::new(
            order,
            SpanProfileLayer::with_scope(SpanScope::All),
            Sampler::AlwaysOn,
        );
        stack.run(|| {
            let a = tracing::info_span!("reenter-a");
            let b = tracing::info_span!(parent: None, "reenter-b");
            let ga = a.enter();
            let la = context::current();
            assert_ne!(la.span_id, 0);
            let gb = b.enter();
            let lb = context::current();
            assert_ne!(lb.span_id, la.span_id);
            {
                // Re-enter a while b is entered (a is already on the stack).
                let _ga2 = a.enter();
                assert_eq!(context::current(), la);
            }
            assert_eq!(context::current(), lb, "{order:?}: back to b");
            drop(gb);
            assert_eq!(context::current(), la);
            drop(ga);
            assert_eq!(context::current(), SpanLabels::NONE);
            // Enter again later: the cached labels, the same id.
            a.in_scope(|| assert_eq!(context::current(), la));
            assert_eq!(context::current(), SpanLabels::NONE);
        });
        let a = stack.span("reenter-a");
        assert_eq!(attr(&a), Some(hex(span_id(&a))));
        // Exactly one attribute, despite four enters.
        assert_eq!(
            a.attributes
                .iter()
                .filter(|kv| kv.key.as_str() == ATTR)
                .count(),
            1
        );
    }
}

#[test]
fn out_of_order_exits_restore_correctly() {
    for order in [Order::OtelFirst, Order::OursFirst, Order::NoOtel] {
        let stack = Stack::new(
            order,
            SpanProfileLayer::with_scope(SpanScope::Root),
            Sampler::AlwaysOn,
        );
        let base = SpanLabels::new(0xba5e, 0, 0);
        let prior = context::replace(base);
        stack.run(|| {
            let a = tracing::info_span!(parent: None, "ooo-a").entered();
            let la = context::current();
            let b = tracing::info_span!(parent: None, "ooo-b").entered();
            let lb = context::current();
            let c = tracing::info_span!(parent: None, "ooo-c").entered();
            let lc = context::current();
            assert!(la.span_id != lb.span_id && lb.span_id != lc.span_id);
            // Exit the middle one first: c is still running.
            drop(b);
            assert_eq!(context::current(), lc, "{order:?}");
            // Exit the oldest: c still running.
            drop(a);
            assert_eq!(context::current(), lc, "{order:?}");
            // Last one out: back to what was there before a.
            drop(c);
            assert_eq!(context::current(), base, "{order:?}");

            // a, b; exit a, enter d, exit b, exit d.
            let a = tracing::info_span!(parent: None, "ooo-a2").entered();
            let b = tracing::info_span!(parent: None, "ooo-b2").entered();
            let lb = context::current();
            drop(a);
            assert_eq!(context::current(), lb);
            let d = tracing::info_span!(parent: None, "ooo-d2").entered();
            let ld = context::current();
            drop(b);
            assert_eq!(context::current(), ld);
            drop(d);
            assert_eq!(context::current(), base, "{order:?}");
        });
        context::replace(prior);
    }
}

#[test]
fn same_span_on_two_threads() {
    for order in OTEL_ORDERS {
        let stack = Stack::root(order);
        let span = stack.run(|| tracing::info_span!("shared"));
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = (0..2u64)
            .map(|t| {
                let span = span.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let own = SpanLabels::new(0x1000 + t, 0, 0);
                    context::replace(own);
                    let guard = span.enter();
                    barrier.wait(); // both threads inside the span at once
                    let inside = context::current();
                    barrier.wait();
                    drop(guard);
                    let after = context::current();
                    (own, inside, after)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        drop(span);
        let exported = stack.span("shared");
        for (own, inside, after) in results {
            assert_eq!(inside.span_id, span_id(&exported), "{order:?}");
            assert_eq!(after, own, "{order:?}: each thread restores its own value");
        }
        assert_eq!(attr(&exported), Some(hex(span_id(&exported))));
    }
}

/// Checks that the slot is empty whenever a worker polls the task from outside
/// its spans, i.e. every exit restored the worker's slot.
struct SlotChecked<F> {
    inner: Pin<Box<F>>,
    dirty: Arc<Mutex<u32>>,
}

impl<F: Future> Future for SlotChecked<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let dirty = self.dirty.clone();
        if context::current() != SpanLabels::NONE {
            *dirty.lock().unwrap() += 1;
        }
        let out = self.inner.as_mut().poll(cx);
        if context::current() != SpanLabels::NONE {
            *dirty.lock().unwrap() += 1;
        }
        out
    }
}

#[inline(never)]
fn burn(n: u64) -> u64 {
    let mut x = n;
    for i in 0..50_000 {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
    }
    x
}

#[test]
fn instrumented_futures_hopping_tokio_workers() {
    for order in OTEL_ORDERS {
        let stack = Stack::root(order);
        let dispatch = stack.dispatch.clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .on_thread_start(move || {
                // Child spans created on workers need the dispatcher there.
                std::mem::forget(tracing::dispatcher::set_default(&dispatch));
            })
            .build()
            .unwrap();
        let dirty = Arc::new(Mutex::new(0u32));
        const TASKS: usize = 24;
        let results = stack.run(|| {
            rt.block_on(async {
                let mut handles = Vec::new();
                for task in 0..TASKS {
                    let root = tracing::info_span!(parent: None, "task-root", task);
                    let fut = async move {
                        let mut seen = Vec::new();
                        let mut threads = HashSet::new();
                        for round in 0..20u64 {
                            if task % 2 == 0 {
                                let child = tracing::info_span!("burst");
                                async {
                                    burn(round);
                                    seen.push(context::current());
                                }
                                .instrument(child)
                                .await;
                            } else {
                                burn(round);
                                seen.push(context::current());
                            }
                            threads.insert(std::thread::current().id());
                            tokio::task::yield_now().await;
                        }
                        (task, seen, threads.len())
                    }
                    .instrument(root);
                    handles.push(tokio::spawn(SlotChecked {
                        inner: Box::pin(fut),
                        dirty: dirty.clone(),
                    }));
                }
                let mut results = Vec::new();
                for h in handles {
                    results.push(h.await.unwrap());
                }
                results
            })
        });
        drop(rt);
        assert_eq!(*dirty.lock().unwrap(), 0, "{order:?}: a worker slot leaked");

        let exported: HashMap<i64, SpanData> = stack
            .spans()
            .into_iter()
            .filter(|s| s.name == "task-root")
            .map(|s| {
                let task = s
                    .attributes
                    .iter()
                    .find(|kv| kv.key.as_str() == "task")
                    .and_then(|kv| kv.value.as_str().parse::<i64>().ok())
                    .expect("task attribute");
                (task, s)
            })
            .collect();
        assert_eq!(exported.len(), TASKS);
        let mut hopped = 0;
        let mut ids = HashSet::new();
        for (task, seen, threads) in results {
            let span = &exported[&(task as i64)];
            let id = span_id(span);
            assert_eq!(attr(span), Some(hex(id)), "{order:?} task {task}");
            assert_eq!(seen.len(), 20);
            for labels in seen {
                assert_eq!(labels.span_id, id, "{order:?} task {task}");
            }
            ids.insert(id);
            if threads > 1 {
                hopped += 1;
            }
        }
        assert_eq!(ids.len(), TASKS);
        eprintln!("{order:?}: {hopped} of {TASKS} tasks ran on both workers");
        assert!(hopped > 0, "{order:?}: no task moved between workers");
        // Children carry no attribute.
        assert!(stack
            .spans()
            .iter()
            .filter(|s| s.name == "burst")
            .all(|s| attr(s).is_none()));
    }
}

#[test]
fn spawn_blocking_with_an_entered_span() {
    for order in OTEL_ORDERS {
        let stack = Stack::root(order);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let (outer, blocking, after_blocking) = stack.run(|| {
            let root = tracing::info_span!("blocking-root");
            let _entered = root.enter();
            let outer = context::current();
            let span = root.clone();
            let (blocking, after) = rt.block_on(async move {
                tokio::task::spawn_blocking(move || {
                    let inside = span.in_scope(context::current);
                    (inside, context::current())
                })
                .await
                .unwrap()
            });
            assert_eq!(context::current(), outer);
            (outer, blocking, after)
        });
        let root = stack.span("blocking-root");
        assert_eq!(outer.span_id, span_id(&root), "{order:?}");
        assert_eq!(blocking, outer, "{order:?}");
        assert_eq!(after_blocking, SpanLabels::NONE, "{order:?}");
        assert_eq!(context::current(), SpanLabels::NONE);
    }
}

fn remote_context(flags: &str) -> (opentelemetry::Context, u128, u64) {
    let trace = 0x4bf92f3577b34da6a3ce929d0e0e4736u128;
    let parent = 0x00f067aa0ba902b7u64;
    let mut carrier = HashMap::new();
    carrier.insert(
        "traceparent".to_string(),
        format!("00-{trace:032x}-{parent:016x}-{flags}"),
    );
    (
        TraceContextPropagator::new().extract(&carrier),
        trace,
        parent,
    )
}

#[test]
fn remote_parent_roots() {
    for order in OTEL_ORDERS {
        let stack = Stack::new(
            order,
            SpanProfileLayer::with_scope(SpanScope::Root).with_trace_id_label(true),
            Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        );
        let (remote_cx, trace, parent) = remote_context("01");
        let (in_local, in_server, in_server_child) = stack.run(|| {
            let local = tracing::info_span!("local-root");
            local.in_scope(|| {
                let in_local = context::current();
                // A span inside a local trace, re-parented into the caller's
                // trace: a local root of its own.
                let server = tracing::info_span!("server-request");
                server.set_parent(remote_cx).unwrap();
                let (in_server, in_server_child) = server.in_scope(|| {
                    let child = tracing::info_span!("server-child");
                    (context::current(), child.in_scope(context::current))
                });
                (in_local, in_server, in_server_child)
            })
        });
        let local = stack.span("local-root");
        let server = stack.span("server-request");
        let server_child = stack.span("server-child");
        assert_eq!(
            trace_id(&server),
            trace,
            "{order:?}: set_parent took effect"
        );
        assert_eq!(
            u64::from_be_bytes(server.parent_span_id.to_bytes()),
            parent,
            "{order:?}"
        );
        assert_eq!(in_server.span_id, span_id(&server), "{order:?}");
        assert_eq!(in_server.trace_id, trace, "{order:?}");
        assert_eq!(name_of(in_server).as_deref(), Some("server-request"));
        assert_eq!(in_server_child, in_server, "{order:?}");
        assert_eq!(attr(&server), Some(hex(span_id(&server))), "{order:?}");
        assert_eq!(attr(&server_child), None);
        assert_eq!(in_local.span_id, span_id(&local), "{order:?}");
        assert_eq!(in_local.trace_id, trace_id(&local));
        assert_eq!(attr(&local), Some(hex(span_id(&local))));
    }
}

#[test]
fn remote_parent_without_tracing_parent() {
    let stack = Stack::root(Order::OursFirst);
    let (remote_cx, trace, _) = remote_context("01");
    let seen = stack.run(|| {
        let span = tracing::info_span!("incoming");
        span.set_parent(remote_cx).unwrap();
        span.in_scope(context::current)
    });
    let exported = stack.span("incoming");
    assert_eq!(trace_id(&exported), trace);
    assert_eq!(seen.span_id, span_id(&exported));
    assert_eq!(attr(&exported), Some(hex(seen.span_id)));
}

#[test]
fn unsampled_spans_get_no_labels() {
    for order in OTEL_ORDERS {
        // Everything off.
        let stack = Stack::new(
            order,
            SpanProfileLayer::with_scope(SpanScope::Root),
            Sampler::AlwaysOff,
        );
        let base = SpanLabels::new(0x77, 0, 0);
        let prior = context::replace(base);
        let seen = stack.run(|| {
            let root = tracing::info_span!("off-root");
            root.in_scope(|| {
                let child = tracing::info_span!("off-child");
                (context::current(), child.in_scope(context::current))
            })
        });
        assert_eq!(seen, (SpanLabels::NONE, SpanLabels::NONE), "{order:?}");
        assert_eq!(context::current(), base, "{order:?}: slot restored");
        context::replace(prior);
        assert!(stack.spans().is_empty());

        // Parent-based: an unsampled caller makes an unsampled root, a
        // sampled one a labelled root, side by side.
        let stack = Stack::new(
            order,
            SpanProfileLayer::with_scope(SpanScope::All),
            Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        );
        let (unsampled_cx, _, _) = remote_context("00");
        let (sampled_cx, _, _) = remote_context("01");
        let (in_unsampled, in_sampled, in_unsampled_again) = stack.run(|| {
            let unsampled = tracing::info_span!("unsampled");
            unsampled.set_parent(unsampled_cx).unwrap();
            let sampled = tracing::info_span!("sampled");
            sampled.set_parent(sampled_cx).unwrap();
            unsampled.in_scope(|| {
                let in_unsampled = context::current();
                let in_sampled = sampled.in_scope(context::current);
                (in_unsampled, in_sampled, context::current())
            })
        });
        assert_eq!(in_unsampled, SpanLabels::NONE, "{order:?}");
        assert_eq!(in_unsampled_again, SpanLabels::NONE, "{order:?}");
        let sampled = stack.span("sampled");
        assert_eq!(in_sampled.span_id, span_id(&sampled));
        assert_eq!(attr(&sampled), Some(hex(span_id(&sampled))));
        assert!(stack.spans().iter().all(|s| s.name != "unsampled"));
    }
}

#[test]
fn without_otel_the_layer_mints_its_own_ids() {
    let stack = Stack::root(Order::NoOtel);
    let (a, a_child, b, a_again) = stack.run(|| {
        let a = tracing::info_span!("mint-a");
        let b = tracing::info_span!("mint-b");
        let (la, la_child) = a.in_scope(|| {
            let child = tracing::info_span!("mint-child");
            (context::current(), child.in_scope(context::current))
        });
        (
            la,
            la_child,
            b.in_scope(context::current),
            a.in_scope(context::current),
        )
    });
    assert_ne!(a.span_id, 0);
    assert_ne!(b.span_id, 0);
    assert_ne!(a.span_id, b.span_id);
    assert_eq!(a.trace_id, 0);
    assert_eq!(a_child, a);
    assert_eq!(a_again, a);
    assert_eq!(name_of(b).as_deref(), Some("mint-b"));
}

/// A layer that records what it sees, to check ours does not disturb it.
#[derive(Default, Clone)]
struct Recorder {
    log: Arc<Mutex<Vec<String>>>,
}

impl<S> tracing_subscriber::Layer<S> for Recorder
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_enter(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let name = ctx.span(id).map(|s| s.name()).unwrap_or("?");
        self.log.lock().unwrap().push(format!("enter {name}"));
    }

    fn on_exit(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let name = ctx.span(id).map(|s| s.name()).unwrap_or("?");
        self.log.lock().unwrap().push(format!("exit {name}"));
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let span = ctx.event_span(event).map(|s| s.name()).unwrap_or("none");
        self.log
            .lock()
            .unwrap()
            .push(format!("event {} in {span}", event.metadata().name()));
    }
}

#[test]
fn other_layers_and_events_still_work() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let recorder = Recorder::default();
    let subscriber = Registry::default()
        .with(recorder.clone())
        .with(SpanProfileLayer::with_scope(SpanScope::Root))
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("t")));
    let seen = tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("with-events");
        span.in_scope(|| {
            tracing::info!(name: "hello", answer = 42, "inside");
            context::current()
        })
    });
    let log = recorder.log.lock().unwrap().clone();
    assert_eq!(
        log,
        [
            "enter with-events",
            "event hello in with-events",
            "exit with-events"
        ]
    );
    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1);
    assert_eq!(
        spans[0].events.events.len(),
        1,
        "the OTel event is exported"
    );
    assert_eq!(attr(&spans[0]), Some(hex(seen.span_id)));
    assert_eq!(seen.span_id, span_id(&spans[0]));
}

/// 100 sub-millisecond root spans without a sample and 10 long ones with
/// samples (counted as the signal handler counts them, some inside a
/// child): with the default, exactly the 10 carry `pyroscope.profile.id`.
fn profile_id_runs(layer: impl Fn() -> SpanProfileLayer) -> Vec<(Order, Vec<SpanData>)> {
    OTEL_ORDERS
        .into_iter()
        .map(|order| {
            let stack = Stack::new(order, layer(), Sampler::AlwaysOn);
            stack.run(|| {
                for i in 0..100u64 {
                    tracing::info_span!("short").in_scope(|| std::hint::black_box(i));
                }
                for i in 0..10u64 {
                    let root = tracing::info_span!("long");
                    root.in_scope(|| {
                        burn(i);
                        if i % 2 == 0 {
                            context::count_own_sample();
                        } else {
                            // A sample inside a child names the root.
                            tracing::info_span!("long-child").in_scope(|| {
                                burn(i);
                                context::count_own_sample();
                            });
                        }
                    });
                    // A later enter without a sample changes nothing.
                    root.in_scope(|| burn(i));
                }
            });
            (order, stack.spans())
        })
        .collect()
}

#[test]
fn profile_id_only_on_spans_with_samples() {
    for scope in [SpanScope::Root, SpanScope::All] {
        let runs =
            profile_id_runs(|| SpanProfileLayer::with_scope(scope).with_profile_id_always(false));
        for (order, spans) in runs {
            let short: Vec<_> = spans.iter().filter(|s| s.name == "short").collect();
            let long: Vec<_> = spans.iter().filter(|s| s.name == "long").collect();
            assert_eq!((short.len(), long.len()), (100, 10));
            let short_with = short.iter().filter(|s| attr(s).is_some()).count();
            assert_eq!(
                short_with, 0,
                "{scope:?} {order:?}: short spans without samples"
            );
            for span in long {
                assert_eq!(attr(span), Some(hex(span_id(span))), "{scope:?} {order:?}");
            }
            for child in spans.iter().filter(|s| s.name == "long-child") {
                // Under scope all the child has its own id and the sample.
                let want = (scope == SpanScope::All).then(|| hex(span_id(child)));
                assert_eq!(attr(child), want, "{scope:?} {order:?}");
            }
        }
    }
}

#[test]
fn profile_id_always_restores_every_sampled_root() {
    let runs = profile_id_runs(|| {
        SpanProfileLayer::with_scope(SpanScope::Root).with_profile_id_always(true)
    });
    for (order, spans) in runs {
        let roots: Vec<_> = spans.iter().filter(|s| s.name != "long-child").collect();
        assert_eq!(roots.len(), 110);
        for span in roots {
            assert_eq!(attr(span), Some(hex(span_id(span))), "{order:?}");
        }
    }
}

#[test]
fn awaiting_time_counts_as_a_sample() {
    for order in OTEL_ORDERS {
        let layer = SpanProfileLayer::with_scope(SpanScope::Root)
            .with_profile_id_always(false)
            .with_wall(true);
        let stack = Stack::new(order, layer, Sampler::AlwaysOn);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        stack.run(|| {
            rt.block_on(
                async {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                .instrument(tracing::info_span!("awaits")),
            );
            tracing::info_span!("runs").in_scope(|| burn(1));
        });
        let awaits = stack.span("awaits");
        assert_eq!(attr(&awaits), Some(hex(span_id(&awaits))), "{order:?}");
        assert_eq!(attr(&stack.span("runs")), None, "{order:?}");
    }
}
