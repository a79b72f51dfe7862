//! The manager thread's CPU with many threads blocked inside spans and wall
//! time on: N threads each enter a span and wait on a `Condvar` that is
//! never notified; the profiler samples at `--rate` Hz for `--seconds`.
//! Prints the CPU time of the manager thread (`pyroscope-timer`, read
//! from its thread CPU clock) as a share of one core, with wall time on
//! and, for comparison, off.
//!
//! ```text
//! cargo run --release --example wall_blocked -- [--threads 1000] [--rate 100] [--seconds 20] [--settle 5]
//! ```

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tracing_subscriber::layer::SubscriberExt;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

/// The tid of this process's thread named `name`.
fn thread_named(name: &str) -> Option<i32> {
    std::fs::read_dir("/proc/self/task").ok()?.find_map(|e| {
        let e = e.ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == name).then(|| e.file_name().to_str()?.parse().ok())?
    })
}

/// CPU time of thread `tid` so far, in nanoseconds.
fn thread_cpu(tid: i32) -> u64 {
    let clock = ((!(tid as u32)) << 3 | 6) as libc::clockid_t;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; the clock names a thread of ours.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs one measurement in this process: the manager's share of a core.
fn measure(threads: u64, rate: u32, seconds: u64, wall: bool) -> f64 {
    let dir = std::env::temp_dir().join(format!("tp-wall-blocked-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (layer, guard) = tracing_pyroscope::Builder::new("wall-blocked")
        .profiles_dir(&dir)
        .sample_rate(rate)
        .wall_time(wall)
        .upload_interval(Duration::from_secs(10))
        .build()
        .expect("start profiler");
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let workers: Vec<_> = (0..threads)
        .map(|i| {
            let (gate, dispatch) = (gate.clone(), dispatch.clone());
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    tracing::dispatcher::with_default(&dispatch, || {
                        tracing::info_span!("blocked", i).in_scope(|| {
                            let (lock, cv) = &*gate;
                            let mut open = lock.lock().unwrap();
                            while !*open {
                                open = cv.wait(open).unwrap();
                            }
                        });
                    });
                })
                .expect("spawn")
        })
        .collect();
    // Let every thread block and the manager settle.
    std::thread::sleep(Duration::from_secs(arg("--settle", 5)));
    let manager = thread_named("pyroscope-timer").expect("the manager thread");
    let (cpu0, t0) = (thread_cpu(manager), Instant::now());
    std::thread::sleep(Duration::from_secs(seconds));
    let share = (thread_cpu(manager) - cpu0) as f64 / t0.elapsed().as_nanos() as f64;
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    for w in workers {
        w.join().unwrap();
    }
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
    share
}

fn main() {
    let threads = arg("--threads", 1000);
    let rate = arg("--rate", 100) as u32;
    let seconds = arg("--seconds", 20);
    // One profiler per process: each mode runs in a child.
    if let Ok(mode) = std::env::var("WALL_BLOCKED_MODE") {
        let share = measure(threads, rate, seconds, mode == "on");
        println!("{share}");
        return;
    }
    println!("{threads} threads blocked in spans, {rate} Hz, {seconds} s");
    for mode in ["on", "off"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(std::env::args().skip(1))
            .env("WALL_BLOCKED_MODE", mode)
            .output()
            .expect("run child");
        let text = String::from_utf8_lossy(&out.stdout);
        let share: f64 = text.trim().parse().unwrap_or(f64::NAN);
        println!(
            "wall {mode:>3}: manager thread {:.3} % of a core",
            share * 100.0
        );
    }
}
