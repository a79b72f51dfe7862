//! Safety under fire: profiling at 1000 Hz while threads hammer malloc,
//! threads are created and exit continuously, others block in pipe
//! reads/writes and sleeps, libraries are loaded, run and unloaded over each
//! other's ranges, and the process forks children that burn CPU and exit.
//! No crash, no deadlock (a watchdog aborts after 120 s), no EINTR from
//! restartable syscalls, no dropped sample, no child harmed, and every
//! stack read back from the profiles is unwound to its thread's root.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing_pyroscope::context;

use crate::dl_fixture;
use crate::pprof_tool;

/// The `mark` label of work running in just-loaded libraries: until the
/// next scan rebuilds the unwinder, its stacks may be cut (see
/// sampler::unwind).
const FRESH_CODE: &str = "fresh-code";

/// The `mark` labels the malloc-heavy workers switch between.
const CHURN: [&str; 7] = ["c0", "c1", "c2", "c3", "c4", "c5", "c6"];

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "needs a release build: unoptimized, the collector drains too rarely for the sample count; scripts/test.sh runs it in release"
)]
fn stress_malloc_thread_churn_and_blocking_syscalls() {
    isolated!();
    // Watchdog: a deadlock fails the test instead of hanging CI.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(120));
        eprintln!("sampler_stress: watchdog fired (deadlock?)");
        std::process::abort();
    });
    let dir = std::env::temp_dir().join(format!("tracing-pyroscope-stress-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let fixtures = dir.with_extension("fixtures");
    let _ = std::fs::remove_dir_all(&fixtures);
    std::fs::create_dir_all(&fixtures).unwrap();
    let libs = dl_fixture::build_fixtures(&fixtures);
    let (_layer, guard) = tracing_pyroscope::Builder::new("stress-test")
        .profiles_dir(&dir)
        .sample_rate(1000)
        .upload_interval(Duration::from_secs(1))
        .span_labels(["mark", "worker"])
        // The `alloc_stress` binary runs this test again with the
        // allocator wrapper installed and allocation profiling on.
        .allocations(crate::ALLOCATION_SAMPLE_BYTES.is_some())
        .heap(crate::ALLOCATION_SAMPLE_BYTES.is_some())
        .allocation_sample_bytes(crate::ALLOCATION_SAMPLE_BYTES.unwrap_or(512 * 1024))
        .build()
        .expect("start profiler");

    let stop = Arc::new(AtomicBool::new(false));
    let eintr = Arc::new(AtomicU64::new(0));
    let sleep_eintr = Arc::new(AtomicU64::new(0));
    let bytes_moved = Arc::new(AtomicU64::new(0));
    let threads_spawned = Arc::new(AtomicU64::new(0));
    let dl_cycles = Arc::new(AtomicU64::new(0));
    let forks = Arc::new(AtomicU64::new(0));
    let children_harmed = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();

    // dlopen/run/dlclose of libraries of different sizes, over each other.
    {
        let (stop, cycles) = (stop.clone(), dl_cycles.clone());
        handles.push(std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                context::with_labels(&[("mark", FRESH_CODE)], || {
                    dl_fixture::load_run_unload(&libs[i % libs.len()], 3_000_000);
                });
                cycles.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    // fork: children burn a little CPU and exit; none may be harmed.
    {
        let (stop, forks, harmed) = (stop.clone(), forks.clone(), children_harmed.clone());
        handles.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: the child only computes and `_exit`s.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    black_box((0..2_000_000u64).fold(0u64, |a, b| a.wrapping_add(b * b)));
                    // SAFETY: ends the child without the parent's teardown.
                    unsafe { libc::_exit(0) };
                }
                assert!(pid > 0, "fork failed");
                let mut status = 0;
                // SAFETY: waiting for our own child.
                while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 && errno() == libc::EINTR {}
                if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
                    harmed.fetch_add(1, Ordering::Relaxed);
                }
                forks.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        }));
    }

    // malloc-heavy workers, with a span label that changes all the time.
    for t in 0..4u64 {
        let stop = stop.clone();
        handles.push(std::thread::spawn(move || {
            let worker = t.to_string();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let labels = [("mark", CHURN[(n % 7) as usize]), ("worker", &*worker)];
                context::with_labels(&labels, || {
                    let mut v: Vec<Box<[u8]>> = Vec::with_capacity(64);
                    for i in 0..64 {
                        v.push(vec![i as u8; 16 + (i * 37 + n as usize) % 4000].into_boxed_slice());
                    }
                    let s: String = v.iter().map(|b| b.len().to_string()).collect();
                    black_box(&s);
                    drop(v);
                });
                n += 1;
            }
        }));
    }
    // Thread create/exit churn.
    {
        let stop = stop.clone();
        let spawned = threads_spawned.clone();
        handles.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<_> = (0..8)
                    .map(|i| {
                        std::thread::spawn(move || {
                            let v: Vec<u64> = (0..20_000u64).map(|x| x * i).collect();
                            black_box(v.iter().sum::<u64>())
                        })
                    })
                    .collect();
                for h in batch {
                    let _ = h.join();
                }
                spawned.fetch_add(8, Ordering::Relaxed);
            }
        }));
    }
    // Pipe writer and reader with raw syscalls: EINTR would surface here.
    let mut fds = [0i32; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (rfd, wfd) = (fds[0], fds[1]);
    {
        let stop = stop.clone();
        let eintr = eintr.clone();
        handles.push(std::thread::spawn(move || {
            let buf = [7u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                // Burn a little CPU so this thread gets signals too.
                black_box((0..20_000u64).fold(0u64, |a, b| a.wrapping_add(b * b)));
                let r = unsafe { libc::write(wfd, buf.as_ptr().cast(), buf.len()) };
                if r < 0 && errno() == libc::EINTR {
                    eintr.fetch_add(1, Ordering::Relaxed);
                }
            }
            unsafe { libc::close(wfd) };
        }));
    }
    {
        let eintr = eintr.clone();
        let moved = bytes_moved.clone();
        handles.push(std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            loop {
                black_box((0..5_000u64).fold(0u64, |a, b| a.wrapping_add(b ^ 3)));
                let r = unsafe { libc::read(rfd, buf.as_mut_ptr().cast(), buf.len()) };
                if r == 0 {
                    break;
                }
                if r < 0 {
                    if errno() == libc::EINTR {
                        eintr.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                moved.fetch_add(r as u64, Ordering::Relaxed);
            }
            unsafe { libc::close(rfd) };
        }));
    }
    // Sleepers: nanosleep is never restarted by SA_RESTART (signal(7)), so
    // it is counted and reported rather than asserted; std's sleep retries.
    for _ in 0..2 {
        let stop = stop.clone();
        let sleep_eintr = sleep_eintr.clone();
        handles.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                black_box((0..50_000u64).fold(0u64, |a, b| a.wrapping_add(b * 3)));
                let ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 200_000,
                };
                if unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) } != 0
                    && errno() == libc::EINTR
                {
                    sleep_eintr.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        }));
    }

    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(6));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("worker panicked");
    }
    let stats = guard.stats();
    let stop_started = Instant::now();
    drop(guard);
    let stop_took = stop_started.elapsed();
    println!(
        "ran {:?}: {stats:?}; dlopen/dlclose cycles {}, forks {} ({} children harmed), threads spawned {}, pipe bytes {}, EINTR read/write {}, nanosleep EINTR {}, guard drop {:?}",
        started.elapsed(),
        dl_cycles.load(Ordering::Relaxed),
        forks.load(Ordering::Relaxed),
        children_harmed.load(Ordering::Relaxed),
        threads_spawned.load(Ordering::Relaxed),
        bytes_moved.load(Ordering::Relaxed),
        eintr.load(Ordering::Relaxed),
        sleep_eintr.load(Ordering::Relaxed),
        stop_took,
    );
    assert_eq!(eintr.load(Ordering::Relaxed), 0, "EINTR reached read/write");
    assert_eq!(stats.dropped_samples, 0, "samples were lost: {stats:?}");
    if crate::ALLOCATION_SAMPLE_BYTES.is_some() {
        // Allocation samples may be dropped at 1 KiB, but only counted.
        assert!(
            stats.allocation_samples > 1000,
            "too few allocation samples: {stats:?}"
        );
    }
    assert!(stats.samples > 1000, "too few samples: {stats:?}");
    assert!(threads_spawned.load(Ordering::Relaxed) > 100);
    assert!(dl_cycles.load(Ordering::Relaxed) > 50);
    assert!(forks.load(Ordering::Relaxed) > 20);
    assert_eq!(
        children_harmed.load(Ordering::Relaxed),
        0,
        "forked children harmed"
    );
    assert!(bytes_moved.load(Ordering::Relaxed) > 0);
    assert!(
        stop_took < Duration::from_secs(6),
        "shutdown took {stop_took:?}"
    );
    // Read the profiles back. Every thread here is a std thread (the
    // harness's main thread included, through `main`): a stack unwound to
    // its root passes std's thread entry (`thread_start`) or `main`.
    // A sample in glibc's thread teardown after `thread_start` returned
    // (TLS destructors run by `__call_tls_dtors`, freeing the thread's own
    // memory) passes neither: it is rooted when its outermost frame is one
    // that stacks through `thread_start` end in (glibc's `clone3`, which
    // without libc's symbols has no name, only `libc.so.6+0x…`). One that
    // is neither (cut to the leaf, or stopped midway) is a failed unwind.
    let traces: Vec<_> = pprof_tool::profile_files(&dir)
        .iter()
        // CPU profiles (the allocation profiles' stacks start in the
        // allocator, and have another sample type).
        .filter(|file| !file.to_string_lossy().ends_with(".memory.pb.gz"))
        .flat_map(|file| pprof_tool::traces(file))
        .collect();
    let through_entry = |frames: &[String]| {
        frames.iter().any(|f| {
            f.contains("thread_start")
                || matches!(
                    f.as_str(),
                    "start_thread" | "clone3" | "__clone3" | "clone" | "__clone"
                )
                || f == "main"
                || f.ends_with("::main")
        })
    };
    let thread_roots: std::collections::HashSet<&String> = traces
        .iter()
        .filter(|tr| tr.frames.iter().any(|f| f.contains("thread_start")))
        .filter_map(|tr| tr.frames.last())
        // The profiler's own threads end in a frame naming the thread,
        // added whatever the unwind: not a root to judge by.
        .filter(|f| !f.starts_with("tracing-pyroscope: "))
        .collect();
    let (mut total, mut failed, mut fresh, mut fresh_cut) = (0u64, 0u64, 0u64, 0u64);
    let (mut teardown, mut failures) = (0u64, Vec::new());
    for tr in &traces {
        total += tr.count;
        let entry = through_entry(&tr.frames);
        let rooted = entry || tr.frames.last().is_some_and(|f| thread_roots.contains(f));
        if rooted && !entry {
            teardown += tr.count;
        }
        let in_fresh_code = tr.labels.get("mark").is_some_and(|v| v == FRESH_CODE);
        if in_fresh_code {
            fresh += tr.count;
            fresh_cut += if rooted { 0 } else { tr.count };
        } else if !rooted {
            failed += tr.count;
            if failures.len() < 5 {
                failures.push(tr.frames.clone());
            }
        }
    }
    println!(
        "profiles hold {total} timer periods ({teardown} in thread teardown, rooted at {thread_roots:?}); \
         {failed} in stacks not unwound to their root ({:.3}%): {failures:#?}; \
         around dlopen/dlclose: {fresh_cut} of {fresh} cut (code loaded since the last scan)",
        failed as f64 * 100.0 / total.max(1) as f64
    );
    assert!(total > 0);
    assert_eq!(failed, 0, "stacks not unwound to their root: {failures:#?}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&fixtures);
}
