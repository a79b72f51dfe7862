//! Awaiting time measured by the layer: real tokio sleeps, read back from
//! what the layer emits for the `wall` profile.

use std::collections::HashMap;
use std::time::Duration;

use tracing::Instrument;
use tracing_subscriber::prelude::*;

use super::wall::{self, Awaiting};
use crate::config::SpanScope;
use crate::context;
use crate::SpanProfileLayer;

fn subscriber(scope: SpanScope) -> impl tracing::Subscriber + Send + Sync {
    tracing_subscriber::registry().with(SpanProfileLayer::with_scope(scope).with_wall(true))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

/// Nanoseconds per awaiting stack (frame names, leaf first), of at least
/// a millisecond: the microseconds between a future's last poll and its
/// drop (`Instrumented` enters its span once more to drop it) are left out.
fn by_stack(emitted: &[Awaiting]) -> HashMap<Vec<String>, u64> {
    let mut stacks = HashMap::new();
    for a in emitted {
        *stacks.entry(wall::stack_names(a.site)).or_insert(0) += a.nanos;
    }
    stacks.retain(|_, nanos| *nanos >= 1_000_000);
    stacks
}

/// Awaits `f`, returning its output and how long it took.
async fn timed<F: std::future::Future>(f: F) -> (F::Output, Duration) {
    let start = std::time::Instant::now();
    let out = f.await;
    (out, start.elapsed())
}

fn site(name: &str, line: u32) -> String {
    format!("{name} (src/layer/wall_tests.rs:{line})")
}

fn assert_near(nanos: u64, want: Duration, tolerance: f64, what: &str) {
    let want = want.as_nanos() as f64;
    let ratio = nanos as f64 / want;
    assert!(
        (1.0 - tolerance..=1.0 + tolerance).contains(&ratio),
        "{what}: {:.3} ms, want {:.3} ms ±{}%",
        nanos as f64 / 1e6,
        want / 1e6,
        tolerance * 100.0
    );
}

#[test]
fn a_sleep_awaited_in_a_child_is_awaiting_time_under_that_await_site() {
    let (root_id, root_line, dispatch_line, took) =
        tracing::subscriber::with_default(subscriber(SpanScope::Root), || {
            let root_line = line!() + 1;
            let root = tracing::info_span!("wall-root");
            runtime().block_on(
                async move {
                    let dispatch_line = line!() + 1;
                    let dispatch = tracing::info_span!("dispatch");
                    let id = context::current().span_id;
                    let ((), took) =
                        timed(tokio::time::sleep(Duration::from_millis(300)).instrument(dispatch))
                            .await;
                    (id, root_line, dispatch_line, took)
                }
                .instrument(root),
            )
        });
    assert_ne!(root_id, 0);
    let emitted = wall::take_emitted(root_id);
    let stacks = by_stack(&emitted);
    let want = vec![
        "[awaiting]".to_string(),
        site("dispatch", dispatch_line),
        site("wall-root", root_line),
    ];
    assert_eq!(stacks.keys().collect::<Vec<_>>(), [&want], "{stacks:?}");
    // Exactly the time awaited (the sleep itself may overshoot on a busy
    // machine), and 300 ms within 2% on an idle one.
    assert_near(stacks[&want], took, 0.02, "[awaiting] against the await");
    assert!(took >= Duration::from_millis(300));
    // One idle episode at the await site: one sample of `samples/count`.
    let episodes: u64 = emitted
        .iter()
        .filter(|a| wall::stack_names(a.site) == want)
        .map(|a| a.episodes)
        .sum();
    assert_eq!(episodes, 1);
}

#[test]
fn an_uninstrumented_await_after_a_finished_child_goes_to_the_enclosing_span() {
    let (root_id, root_line, took) =
        tracing::subscriber::with_default(subscriber(SpanScope::Root), || {
            let root_line = line!() + 1;
            let root = tracing::info_span!("wall-enclosing");
            runtime().block_on(
                async move {
                    let id = context::current().span_id;
                    tracing::info_span!("finished-child").in_scope(|| std::hint::black_box(1));
                    let ((), took) = timed(tokio::time::sleep(Duration::from_millis(100))).await;
                    (id, root_line, took)
                }
                .instrument(root),
            )
        });
    let stacks = by_stack(&wall::take_emitted(root_id));
    let want = vec!["[awaiting]".to_string(), site("wall-enclosing", root_line)];
    assert_eq!(stacks.keys().collect::<Vec<_>>(), [&want], "{stacks:?}");
    assert_near(stacks[&want], took, 0.02, "[awaiting]");
}

#[test]
fn join_credits_the_branches_and_the_total_is_the_wait() {
    let (root_id, names, took) =
        tracing::subscriber::with_default(subscriber(SpanScope::Root), || {
            let root_line = line!() + 1;
            let root = tracing::info_span!("wall-join");
            runtime().block_on(
                async move {
                    let id = context::current().span_id;
                    let (a_line, b_line) = (line!() + 1, line!() + 2);
                    let a = tracing::info_span!("branch-a");
                    let b = tracing::info_span!("branch-b");
                    let (_, took) = timed(async {
                        tokio::join!(
                            tokio::time::sleep(Duration::from_millis(50)).instrument(a),
                            tokio::time::sleep(Duration::from_millis(150)).instrument(b),
                        )
                    })
                    .await;
                    let names = [
                        site("branch-a", a_line),
                        site("branch-b", b_line),
                        site("wall-join", root_line),
                    ];
                    (id, names, took)
                }
                .instrument(root),
            )
        });
    let stacks = by_stack(&wall::take_emitted(root_id));
    let total = stacks.values().sum::<u64>();
    assert_near(total, took, 0.02, "awaiting in join!");
    for stack in stacks.keys() {
        assert!(names.contains(&stack[1]), "{stack:?}");
        assert_eq!(stack.last(), Some(&names[2]), "{stack:?}");
    }
}

#[test]
fn a_span_entered_throughout_awaits_nothing_and_scope_all_counts_each_span() {
    tracing::subscriber::with_default(subscriber(SpanScope::Root), || {
        let root = tracing::info_span!("wall-busy");
        let id = root.in_scope(|| {
            std::thread::sleep(Duration::from_millis(20));
            context::current().span_id
        });
        drop(root);
        assert!(wall::take_emitted(id).is_empty(), "no awaiting");
    });
    // Scope all: the child that awaits and its parent each get the time,
    // under their own ids.
    let (root_id, child_id, took) =
        tracing::subscriber::with_default(subscriber(SpanScope::All), || {
            let root = tracing::info_span!("wall-all-root");
            runtime().block_on(
                async move {
                    let root_id = context::current().span_id;
                    let child = tracing::info_span!("wall-all-child");
                    let (child_id, took) = timed(
                        async {
                            let id = context::current().span_id;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            id
                        }
                        .instrument(child),
                    )
                    .await;
                    (root_id, child_id, took)
                }
                .instrument(root),
            )
        });
    assert_ne!(root_id, child_id);
    for id in [root_id, child_id] {
        let stacks = by_stack(&wall::take_emitted(id));
        assert_eq!(stacks.len(), 1, "{stacks:?}");
        let (stack, nanos) = stacks.into_iter().next().unwrap_or_default();
        assert!(stack[1].starts_with("wall-all-child ("), "{stack:?}");
        assert_near(nanos, took, 0.02, "scope all");
    }
}

#[test]
fn records_are_freed_when_spans_close() {
    let before = wall::records_live();
    tracing::subscriber::with_default(subscriber(SpanScope::Root), || {
        for _ in 0..100 {
            tracing::info_span!("wall-short").in_scope(|| {});
        }
    });
    // Other tests run at once: allow for their open spans.
    assert!(wall::records_live() <= before + 8);
}
