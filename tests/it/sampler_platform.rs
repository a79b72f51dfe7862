//! Where the sampler cannot run (not Linux, an architecture other than
//! x86_64 and aarch64, or forced with `--cfg tracing_pyroscope_unsupported`)
//! the crate still builds and starts: an inert layer, and a guard that says
//! profiling is off and counts nothing. Where it runs, the same call starts
//! it. CI runs this file both ways. (That an inert layer leaves the thread
//! slot alone is a unit test of the layer.)

use tracing_subscriber::prelude::*;

/// The platforms the sampler supports, as the crate decides it.
const SUPPORTED: bool = cfg!(tp_sampler);

#[test]
fn the_guard_tells_whether_profiling_runs_on_this_platform() {
    isolated!();
    let dir =
        std::env::temp_dir().join(format!("tracing-pyroscope-platform-{}", std::process::id()));
    let (layer, guard) = tracing_pyroscope::Builder::new("platform-test")
        .profiles_dir(&dir)
        .build()
        .expect("build succeeds on every platform");
    assert_eq!(guard.is_active(), SUPPORTED, "{guard:?}");
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("platform");
        span.in_scope(|| std::hint::black_box((0..1000u64).sum::<u64>()));
    });
    if !SUPPORTED {
        assert_eq!(guard.stats(), tracing_pyroscope::Stats::default());
    }
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
}
