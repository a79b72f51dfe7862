//! `dlopen`/`dlclose` under fire: shared libraries of different sizes
//! (tests/fixtures/dlopen_fixture.c, compiled here with `cc`, or `$CC`) are
//! loaded, run and unloaded in a loop while the profiler samples at 1000 Hz,
//! so that each copy lands over the address range another one left. A
//! sample taken in a fresh copy before the unwinder is rebuilt must not read
//! the unwind tables of the copy that was there before (unmapped, or now
//! something else). And the profiler must not keep unloaded libraries
//! mapped.

use crate::dl_fixture;

use dl_fixture::{build_fixtures, load_run_unload};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The loader's mappings of the fixtures (private ones: the symbolizer may
/// map the files shared, to read their debug info).
fn fixtures_loaded(dir: &Path) -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let dir = dir.to_string_lossy();
    maps.lines()
        .filter(|l| l.contains(&*dir))
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|p| p.ends_with('p'))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn libraries_unloaded_and_reloaded_over_each_other_while_sampling() {
    isolated!();
    // Watchdog: a hang fails the test instead of hanging CI.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(120));
        eprintln!("sampler_dlclose: watchdog fired");
        std::process::abort();
    });
    let dir =
        std::env::temp_dir().join(format!("tracing-pyroscope-dlclose-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let libs = Arc::new(build_fixtures(&dir));
    let profiles = dir.join("profiles");
    let (_layer, guard) = tracing_pyroscope::Builder::new("dlclose-test")
        .profiles_dir(&profiles)
        .sample_rate(1000)
        .upload_interval(Duration::from_secs(1))
        .build()
        .expect("start profiler");
    let stop = Arc::new(AtomicBool::new(false));
    let cycles = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..2usize)
        .map(|w| {
            let (stop, cycles, libs) = (stop.clone(), cycles.clone(), libs.clone());
            std::thread::spawn(move || {
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    // 5 ms of CPU per copy: several samples in each, some
                    // of them before the unwinder knows the copy.
                    load_run_unload(&libs[i % libs.len()], 5_000_000);
                    cycles.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(6));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker panicked");
    }
    let stats = guard.stats();
    // The last copies were closed; give the profiler a scan to let go.
    std::thread::sleep(Duration::from_millis(200));
    let still_mapped = fixtures_loaded(&dir);
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{} load/run/unload cycles in {:?}: {stats:?}",
        cycles.load(Ordering::Relaxed),
        started.elapsed()
    );
    assert!(cycles.load(Ordering::Relaxed) >= 100, "too few cycles");
    assert!(stats.samples >= 100, "too few samples: {stats:?}");
    assert_eq!(stats.dropped_samples, 0, "{stats:?}");
    assert!(
        still_mapped.is_empty(),
        "unloaded libraries are still mapped: {still_mapped:#?}"
    );
}
