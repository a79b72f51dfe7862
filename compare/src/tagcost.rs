//! The cost on the application's threads, in one process and one table:
//! tracing-pyroscope's layer against pyroscope 2.x's `span_id` tags as the
//! adapter layer of arms (c) and (d) sets them.
//!
//! Phase 1 runs tracing-pyroscope's profiler (100 Hz, local directory) and
//! times `Registry` alone and `Registry` + the layer. Phase 2 stops it,
//! starts pyroscope (pprof backend, 100 Hz) and times `Registry` alone
//! again, + the (c) adapter and + the (d) adapter. Each phase alternates
//! its stacks in short rounds and keeps each stack's minimum, which the
//! machine's other load barely moves; ratios are to `Registry` of the same
//! phase.

use std::hint::black_box;
use std::time::Instant;

use pyroscope::backend::{pprof_backend, BackendConfig, PprofConfig};
use pyroscope::pyroscope::PyroscopeAgentBuilder;
use tracing::Dispatch;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Registry;

use crate::arms::{TagLayer, TagMode};
use crate::{receiver, Options};

/// A root span with the `sid` field the adapter reads.
fn root(dispatch: &Dispatch, sid: u64) -> tracing::Span {
    tracing::dispatcher::with_default(dispatch, || {
        tracing::info_span!("root", sid = format!("{sid:016x}").as_str())
    })
}

/// Nanoseconds per warm enter+exit of one root span.
fn enter_exit(dispatch: &Dispatch, span: &tracing::Span, n: u32) -> f64 {
    tracing::dispatcher::with_default(dispatch, || {
        let start = Instant::now();
        for _ in 0..n {
            span.in_scope(|| black_box(()));
        }
        start.elapsed().as_nanos() as f64 / f64::from(n)
    })
}

/// Nanoseconds per root span life: create, enter, exit, close.
fn lifecycle(dispatch: &Dispatch, n: u32) -> f64 {
    tracing::dispatcher::with_default(dispatch, || {
        let start = Instant::now();
        for i in 0..u64::from(n) {
            let span = tracing::info_span!("root", sid = format!("{:016x}", i + 1).as_str());
            span.in_scope(|| black_box(()));
            drop(span);
        }
        start.elapsed().as_nanos() as f64 / f64::from(n)
    })
}

/// Per-stack minimum of `measure(stack)` over `rounds` alternating rounds
/// (the first round warms up and is not counted).
fn interleaved(stacks: usize, rounds: usize, mut measure: impl FnMut(usize) -> f64) -> Vec<f64> {
    let mut best = vec![f64::INFINITY; stacks];
    for round in 0..rounds {
        for (i, b) in best.iter_mut().enumerate() {
            let ns = measure(i);
            if round > 0 {
                *b = b.min(ns);
            }
        }
    }
    best
}

pub fn run(o: &Options) {
    let rounds: usize = o.get("rounds", 40);
    let dir =
        std::env::temp_dir().join(format!("tracing-pyroscope-tagcost-{}", std::process::id()));

    // Phase 1: tracing-pyroscope.
    let (layer, guard) = tracing_pyroscope::Builder::new("tagcost")
        .profiles_dir(&dir)
        .build()
        .expect("start tracing-pyroscope");
    let stacks1 = [
        Dispatch::new(Registry::default()),
        Dispatch::new(Registry::default().with(layer)),
    ];
    let spans1: Vec<tracing::Span> = stacks1.iter().map(|d| root(d, 1)).collect();
    let warm1 = interleaved(2, rounds, |i| enter_exit(&stacks1[i], &spans1[i], 100_000));
    let life1 = interleaved(2, rounds.min(20), |i| lifecycle(&stacks1[i], 20_000));
    drop(spans1);
    drop(guard);

    // Phase 2: pyroscope 2.x with the adapters.
    let url = receiver::start(&dir).expect("start the receiver");
    let agent = PyroscopeAgentBuilder::new(
        format!("{url}/tagcost"),
        "tagcost",
        100,
        "pyroscope-rs",
        "2.1.5",
        pprof_backend(PprofConfig { sample_rate: 100 }, BackendConfig::default()),
    )
    .build()
    .expect("build pyroscope agent")
    .start()
    .expect("start pyroscope agent");
    let every = TagLayer::new(agent.backend.backend.clone(), TagMode::Every);
    let at_root = TagLayer::new(agent.backend.backend.clone(), TagMode::Root);
    let stacks2 = [
        Dispatch::new(Registry::default()),
        Dispatch::new(Registry::default().with(every)),
        Dispatch::new(Registry::default().with(at_root)),
    ];
    let spans2: Vec<tracing::Span> = stacks2.iter().map(|d| root(d, 2)).collect();
    let warm2 = interleaved(3, rounds, |i| {
        let n = if i == 1 { 500 } else { 100_000 };
        enter_exit(&stacks2[i], &spans2[i], n)
    });
    let life2 = interleaved(3, rounds.min(20), |i| {
        let n = if i == 0 { 20_000 } else { 500 };
        lifecycle(&stacks2[i], n)
    });
    // (c) on two threads at once: the tag calls share one global lock.
    let contended = {
        let d = stacks2[1].clone();
        let mut best = f64::INFINITY;
        for _ in 0..rounds.min(10) {
            let per_thread: Vec<f64> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..2u64)
                    .map(|t| {
                        let d = d.clone();
                        s.spawn(move || {
                            let span = root(&d, 100 + t);
                            enter_exit(&d, &span, 300)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            best = best.min(per_thread.iter().cloned().fold(0.0, f64::max));
        }
        best
    };
    drop(spans2);
    drop(stacks2);
    if let Ok(ready) = agent.stop() {
        ready.shutdown();
    }
    let _ = std::fs::remove_dir_all(&dir);

    println!("\nper operation on the application's thread, minimum of {rounds} alternating rounds; ratios to Registry alone in the same phase\n");
    println!(
        "| stack | warm enter+exit | ratio | root span life (new, enter, exit, close) | ratio |"
    );
    println!("|---|---:|---:|---:|---:|");
    let row = |name: &str, warm: f64, wbase: f64, life: f64, lbase: f64| {
        println!(
            "| {name} | {} | {:.2}× | {} | {:.2}× |",
            show(warm),
            warm / wbase,
            show(life),
            life / lbase
        );
    };
    row(
        "Registry alone (phase 1)",
        warm1[0],
        warm1[0],
        life1[0],
        life1[0],
    );
    row(
        "Registry + tracing-pyroscope layer",
        warm1[1],
        warm1[0],
        life1[1],
        life1[0],
    );
    row(
        "Registry alone (phase 2)",
        warm2[0],
        warm2[0],
        life2[0],
        life2[0],
    );
    row(
        "Registry + (c) tag on every root enter/exit",
        warm2[1],
        warm2[0],
        life2[1],
        life2[0],
    );
    row(
        "Registry + (d) tag at root start/end",
        warm2[2],
        warm2[0],
        life2[2],
        life2[0],
    );
    println!(
        "| (c) on 2 threads at once | {} | {:.0}× | | |",
        show(contended),
        contended / warm2[0]
    );
}

fn show(ns: f64) -> String {
    if ns >= 10_000.0 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}
