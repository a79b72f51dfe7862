//! A `cdylib` that starts and stops tracing-pyroscope's profiler through two
//! C functions, for `tests/it/sampler_cdylib.rs`: the host (a C program) loads
//! it with `dlopen`, so the crate's thread locals are reached through
//! `__tls_get_addr` as in a Python or Node extension.

use std::sync::Mutex;
use std::time::Duration;

use tracing_pyroscope::ProfilerGuard;

static GUARD: Mutex<Option<ProfilerGuard>> = Mutex::new(None);

/// Starts the profiler at 1000 Hz, writing profiles to the directory named
/// by `TP_FIXTURE_PROFILES`. Returns 0 on success.
#[no_mangle]
pub extern "C" fn tp_fixture_start() -> i32 {
    let Some(dir) = std::env::var_os("TP_FIXTURE_PROFILES") else {
        eprintln!("tp_fixture_start: TP_FIXTURE_PROFILES is not set");
        return 1;
    };
    match tracing_pyroscope::Builder::new("cdylib-test")
        .profiles_dir(std::path::PathBuf::from(dir))
        .sample_rate(1000)
        .upload_interval(Duration::from_secs(1))
        .build()
    {
        Ok((_layer, guard)) => {
            *GUARD.lock().unwrap_or_else(|p| p.into_inner()) = Some(guard);
            0
        }
        Err(e) => {
            eprintln!("tp_fixture_start: {e}");
            2
        }
    }
}

/// Stops the profiler (its last profile is written) and returns the number
/// of samples it took.
#[no_mangle]
pub extern "C" fn tp_fixture_stop() -> u64 {
    let Some(guard) = GUARD.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return 0;
    };
    let stats = guard.stats();
    drop(guard);
    eprintln!("tp_fixture_stop: {stats:?}");
    stats.samples
}
