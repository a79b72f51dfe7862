//! Awaiting time end to end: an async root span whose child awaits
//! `tokio::time::sleep(300 ms)`, read back from the written `wall` profile
//! through Google's pprof tool (`-sample_index=wall`, in nanoseconds):
//! `[awaiting]` under the await site's span, within 2% of the time the
//! await took (and of 300 ms on an idle machine).

use crate::pprof_tool;
use crate::wall_blocked::wall_profiler;

use std::time::{Duration, Instant};

use tracing::Instrument;

#[test]
fn a_300ms_sleep_is_awaiting_time_under_the_await_site() {
    isolated!();
    let (dir, guard) = wall_profiler("wall-await");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let root_line = line!() + 1;
    let root = tracing::info_span!("wall_await_root");
    let (dispatch_line, took) = runtime.block_on(
        async {
            let dispatch_line = line!() + 1;
            let dispatch = tracing::info_span!("dispatch");
            let start = Instant::now();
            tokio::time::sleep(Duration::from_millis(300))
                .instrument(dispatch)
                .await;
            (dispatch_line, start.elapsed())
        }
        .instrument(root),
    );
    drop(runtime);
    drop(guard);

    let file = file!();
    let want = [
        "[awaiting]".to_string(),
        format!("dispatch ({file}:{dispatch_line})"),
        format!("wall_await_root ({file}:{root_line})"),
    ];
    let mut awaiting = 0u64;
    let mut other_awaiting = Vec::new();
    for tr in pprof_tool::dir_traces(&dir, ".wall.pb.gz", "wall", Some("ns")) {
        if tr.frames.first().map(String::as_str) != Some("[awaiting]")
            || tr.labels.get("span_name").map(String::as_str) != Some("wall_await_root")
        {
            continue;
        }
        if tr.frames[..] == want[..] {
            awaiting += tr.count;
        } else {
            other_awaiting.push((tr.frames.clone(), tr.count));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let ratio = awaiting as f64 / took.as_nanos() as f64;
    println!(
        "[awaiting] under dispatch: {:.3} ms; the await took {:.3} ms ({:.2}%); elsewhere: {other_awaiting:?}",
        awaiting as f64 / 1e6,
        took.as_secs_f64() * 1e3,
        ratio * 100.0
    );
    assert!(
        (0.98..=1.02).contains(&ratio),
        "{awaiting} ns awaiting for a {took:?} await"
    );
    // Elsewhere: at most the microseconds between the last poll and the drop.
    assert!(other_awaiting.iter().map(|(_, n)| n).sum::<u64>() < 1_000_000);
}
