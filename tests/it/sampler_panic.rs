//! Panics that unwind through entered spans leave the thread's label slot
//! exactly as it was before those spans, so the CPU a thread burns after
//! the panic carries no stale label:
//! - a std thread enters nested spans and panics inside them under
//!   `catch_unwind`, then burns CPU with no span entered;
//! - a tokio task panics inside instrumented futures (a root span and a
//!   child) while other work continues on the same single worker thread,
//!   which then burns CPU outside spans.
//!
//! Checked through a real profile read back with Google's pprof tool: every
//! sample inside the spans is labelled, none after the panics.

use crate::cpu_clock;
use crate::pprof_tool;

use cpu_clock::thread_cpu_nanos;
use std::hint::black_box;
use std::time::Duration;

use tracing::Instrument;
use tracing_subscriber::prelude::*;

/// CPU each burn function spends: about 150 samples at 1000 Hz.
const BURN: u64 = 150_000_000;

macro_rules! burners {
    ($($name:ident = $salt:expr),* $(,)?) => {
        $(
            #[inline(never)]
            fn $name(nanos: u64) -> u64 {
                let end = thread_cpu_nanos() + nanos;
                let mut x: u64 = $salt;
                while thread_cpu_nanos() < end {
                    for _ in 0..1000 {
                        x = black_box(x.wrapping_mul(0x2545_F491_4F6C_DD1D).wrapping_add($salt));
                    }
                }
                x
            }
        )*
    };
}

burners!(
    burn_in_thread_span = 3,
    burn_after_thread_panic = 5,
    burn_in_task_span = 7,
    burn_beside_panicking_task = 11,
    burn_after_task_panic = 13,
);

/// Samples of each (function, has a `span_id` label) in the profiles.
fn samples(dir: &std::path::Path, function: &str) -> (u64, u64) {
    let (mut labelled, mut bare) = (0, 0);
    for file in pprof_tool::profile_files(dir) {
        for tr in pprof_tool::traces(&file) {
            if tr.frames.iter().any(|f| f.contains(function)) {
                if tr.labels.contains_key("span_id") {
                    labelled += tr.count;
                } else {
                    bare += tr.count;
                }
            }
        }
    }
    (labelled, bare)
}

#[test]
fn panics_through_entered_spans_leave_no_stale_label() {
    isolated!();
    let dir = std::env::temp_dir().join(format!("tracing-pyroscope-panic-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (layer, guard) = tracing_pyroscope::Builder::new("panic-test")
        .profiles_dir(&dir)
        .sample_rate(1000)
        .upload_interval(Duration::from_secs(1))
        .build()
        .expect("start profiler");
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
        .expect("the only subscriber");
    // The panics below are expected: keep their messages out of the log.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let expected = info
            .payload()
            .downcast_ref::<&str>()
            .is_some_and(|m| m.starts_with("expected panic"));
        if !expected {
            default_hook(info);
        }
    }));

    // 1. A std thread: nested spans, a panic inside them, caught.
    std::thread::spawn(|| {
        let caught = std::panic::catch_unwind(|| {
            let _root = tracing::info_span!("thread_root").entered();
            let _child = tracing::info_span!("thread_child").entered();
            let _grandchild = tracing::info_span!("thread_grandchild").entered();
            black_box(burn_in_thread_span(BURN));
            panic!("expected panic in nested spans");
        });
        assert!(caught.is_err());
        black_box(burn_after_thread_panic(BURN));
    })
    .join()
    .expect("thread part");

    // 2. One tokio worker: a task panics inside instrumented futures, the
    // next task runs on the same worker.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let panicked = runtime.block_on(async {
        let before_thread = tokio::spawn(async { std::thread::current().id() })
            .await
            .unwrap();
        let panicking = tokio::spawn(
            async {
                let inner = async {
                    black_box(burn_in_task_span(BURN));
                    tokio::task::yield_now().await;
                    panic!("expected panic in an instrumented future");
                };
                inner.instrument(tracing::info_span!("task_child")).await;
            }
            .instrument(tracing::info_span!("task_root")),
        );
        // Other work on the same worker meanwhile (outside spans).
        let beside = tokio::spawn(async {
            black_box(burn_beside_panicking_task(BURN / 3));
            tokio::task::yield_now().await;
            std::thread::current().id()
        });
        let panicked = panicking.await;
        let beside = beside.await.unwrap();
        let after = tokio::spawn(async {
            black_box(burn_after_task_panic(BURN));
            std::thread::current().id()
        })
        .await
        .unwrap();
        assert_eq!(beside, before_thread, "one worker");
        assert_eq!(after, before_thread, "one worker");
        panicked
    });
    drop(runtime);
    assert!(
        panicked.as_ref().is_err_and(|e| e.is_panic()),
        "the task panicked: {panicked:?}"
    );

    drop(guard);
    let in_thread_span = samples(&dir, "burn_in_thread_span");
    let after_thread = samples(&dir, "burn_after_thread_panic");
    let in_task_span = samples(&dir, "burn_in_task_span");
    let beside_task = samples(&dir, "burn_beside_panicking_task");
    let after_task = samples(&dir, "burn_after_task_panic");
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "(labelled, bare) samples: in thread span {in_thread_span:?}, after thread panic \
         {after_thread:?}, in task span {in_task_span:?}, beside the panicking task \
         {beside_task:?}, after task panic {after_task:?}"
    );
    // Labels were on inside the spans (exact: every sample)...
    assert!(
        in_thread_span.0 >= 50 && in_thread_span.1 == 0,
        "{in_thread_span:?}"
    );
    assert!(
        in_task_span.0 >= 50 && in_task_span.1 == 0,
        "{in_task_span:?}"
    );
    // ... and none is left after the panics.
    assert!(after_thread.1 >= 50, "{after_thread:?}");
    assert_eq!(after_thread.0, 0, "stale label after the thread's panic");
    assert!(after_task.1 >= 50, "{after_task:?}");
    assert_eq!(after_task.0, 0, "stale label after the task's panic");
    assert_eq!(beside_task.0, 0, "work beside the panicking task labelled");
}
