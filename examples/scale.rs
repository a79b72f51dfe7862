//! Scale curves: how the profiler's costs grow with threads, span rate,
//! distinct (stack, labels) pairs and stack depth. Each curve compares
//! profiling on against off in the same run and prints a table.
//!
//! ```text
//! cargo run --release --example scale -- threads [1,8,64,512] [--cpu-s 4] [--rounds 5] [--late] [--rate 100]
//! cargo run --release --example scale -- spans [1000,100000,1000000] [--seconds 60]
//! cargo run --release --example scale -- pairs [1000,10000,100000,1000000]
//! cargo run --release --example scale -- depth [8,64,128,256,512] [--cpu-s 2] [--rounds 5] [--rate 1000]
//! ```
//!
//! - `threads`: N threads share a fixed amount of CPU-bound work (work
//!   units, not CPU time, so that the profiler's cost shows). Coverage is
//!   the samples in the profiles whose stack holds the work function
//!   against the work threads' CPU time × rate; the handler's cost per
//!   sample is the work threads' extra CPU time (on − off) per sample; the
//!   profiler's own threads are timed as the process's CPU time less the
//!   work threads' and the main thread's (so that a profiler thread that
//!   already exited counts too). The
//!   threads exist before the profiler
//!   starts (a thread pool); `--late` spawns them under profiling instead.
//! - `spans`: one thread opens and closes distinct root spans at a given
//!   rate per minute for `--seconds`, each doing a little work, in local
//!   directory mode. Each point runs in a child process, profiling off and
//!   on, for its peak RSS; it prints the RSS over time, the directory's
//!   size and the profiler threads' CPU.
//! - `pairs`: encodes one interval of N distinct (stack, labels) pairs
//!   through the crate's encoder (symbolize, encode, gzip) and prints its
//!   time and size.
//! - `depth`: like `threads` with one thread whose work runs D frames deep,
//!   at 1000 Hz so that the handler's cost stands out of the machine's
//!   noise; prints the handler's cost per sample and the frames kept per
//!   sample (the sampler keeps the 256 frames nearest the leaf).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use prost::Message;
// The pprof messages of the tests, not the crate's (which are private).
#[allow(dead_code, unreachable_pub)]
#[path = "../tests/common/pprof.rs"]
mod proto;
use tracing_subscriber::layer::SubscriberExt;

/// Sampling rate (Hz), `--rate` for `threads` and `depth`.
static RATE_HZ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(100);

fn rate() -> u32 {
    RATE_HZ.load(std::sync::atomic::Ordering::Relaxed)
}

fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(id, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn thread_cpu() -> Duration {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn process_cpu() -> Duration {
    clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn max_rss_kib() -> u64 {
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_maxrss as u64
}

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4
}

/// `(RssAnon, RssFile)` of this process in KiB, from `/proc/self/status`.
fn rss_parts_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("RssAnon:"), field("RssFile:"))
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tp-scale-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Every profile in `dir`, decoded.
fn profiles(dir: &Path) -> Vec<proto::Profile> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().ends_with(".pb.gz") {
            continue;
        }
        let raw = std::fs::read(e.path()).unwrap_or_default();
        let mut bytes = Vec::new();
        if flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut bytes)
            .is_err()
        {
            continue;
        }
        if let Ok(p) = proto::Profile::decode(&bytes[..]) {
            out.push(p);
        }
    }
    out
}

/// (samples whose stack holds a function named like `needle`, all
/// samples, the longest stack in frames).
fn count_samples(dir: &Path, needle: &str) -> (u64, u64, usize) {
    let (mut hit, mut all, mut deepest) = (0, 0, 0);
    for p in profiles(dir) {
        let names: Vec<&str> = p.string_table.iter().map(String::as_str).collect();
        let function_name = |id: u64| -> &str {
            p.function
                .get(id as usize - 1)
                .map(|f| names.get(f.name as usize).copied().unwrap_or(""))
                .unwrap_or("")
        };
        for s in &p.sample {
            let n = s.value.first().copied().unwrap_or(0) as u64;
            all += n;
            let mut frames = 0;
            let mut found = false;
            for id in &s.location_id {
                if let Some(loc) = p.location.get(*id as usize - 1) {
                    for line in &loc.line {
                        frames += 1;
                        found |= function_name(line.function_id).contains(needle);
                    }
                }
            }
            deepest = deepest.max(frames);
            if found {
                hit += n;
            }
        }
    }
    (hit, all, deepest)
}

#[inline(never)]
fn scale_work_unit(seed: u64) -> u64 {
    let mut x = seed | 1;
    for _ in 0..20_000 {
        x = black_box(x.wrapping_mul(0x5851_F42D_4C95_7F2D).rotate_left(17) ^ seed);
    }
    x
}

/// Runs `units` work units on `threads` threads (`depth` frames deep),
/// with `profiled` profiling; returns the work threads' total CPU time and
/// the wall time. The threads exist before the profiler starts, as a
/// service's thread pool does, unless `late`: then they are spawned under
/// profiling and armed by the sampler's thread scan.
fn work(
    units: u64,
    threads: usize,
    depth: usize,
    late: bool,
    start: impl FnOnce(),
) -> (Duration, Duration) {
    let per = units / threads as u64;
    let barrier = std::sync::Barrier::new(threads + 1);
    let mut start = Some(start);
    let mut t0 = Instant::now();
    let cpu = std::thread::scope(|s| {
        if late {
            if let Some(f) = start.take() {
                f();
            }
            t0 = Instant::now();
        }
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let c = thread_cpu();
                    black_box(nest(depth, per, t as u64));
                    thread_cpu() - c
                })
            })
            .collect();
        if let Some(f) = start.take() {
            f();
            t0 = Instant::now();
        }
        barrier.wait();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    (cpu, t0.elapsed())
}

/// Recurses `depth` frames, then runs the work.
#[inline(never)]
fn nest(depth: usize, units: u64, seed: u64) -> u64 {
    if depth > 1 {
        return black_box(nest(depth - 1, units, seed)).wrapping_add(1);
    }
    let mut acc = 0;
    for i in 0..units {
        acc ^= scale_work_unit(seed.wrapping_add(i));
    }
    acc
}

/// One profiled or unprofiled run of the fixed work.
struct Run {
    work_cpu: f64,
    wall: f64,
    profiler_cpu: f64,
    samples: u64,
    hit: u64,
    deepest: usize,
}

fn run_work(units: u64, threads: usize, depth: usize, profiled: bool, late: bool) -> Run {
    let dir = tempdir("work");
    let mut guard = None;
    let (process_before, main_before) = (process_cpu(), thread_cpu());
    let (work_cpu, wall) = work(units, threads, depth, late, || {
        if profiled {
            guard = Some(
                tracing_pyroscope::Builder::new("scale")
                    .profiles_dir(&dir)
                    .sample_rate(rate())
                    .build()
                    .expect("start profiler")
                    .1,
            );
        }
    });
    // Everything but the work threads and this one: the profiler's threads,
    // those that exited included.
    let others = (process_cpu() - process_before).saturating_sub(thread_cpu() - main_before);
    let profiler_cpu = others.saturating_sub(work_cpu).as_secs_f64();
    drop(guard);
    let (hit, samples, deepest) = count_samples(&dir, "scale_work_unit");
    let _ = std::fs::remove_dir_all(&dir);
    Run {
        work_cpu: work_cpu.as_secs_f64(),
        wall: wall.as_secs_f64(),
        profiler_cpu,
        samples,
        hit,
        deepest,
    }
}

/// Work units for about `cpu_s` seconds of CPU time.
fn calibrate(cpu_s: f64) -> u64 {
    let c = thread_cpu();
    for i in 0..200 {
        black_box(scale_work_unit(i));
    }
    let per = (thread_cpu() - c).as_secs_f64() / 200.0;
    (cpu_s / per) as u64
}

fn list(arg: Option<&String>, default: &[usize]) -> Vec<usize> {
    match arg {
        Some(a) if !a.starts_with("--") => a
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .filter_map(|x| x.trim().parse().ok())
            .collect(),
        _ => default.to_vec(),
    }
}

/// Sets the rate from `--rate`, else `default`.
fn set_rate(args: &[String], default: u32) {
    let hz = opt(args, "--rate", f64::from(default)) as u32;
    RATE_HZ.store(hz.clamp(1, 1000), std::sync::atomic::Ordering::Relaxed);
}

fn opt(args: &[String], name: &str, default: f64) -> f64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("threads") => threads(&args),
        Some("depth") => depth(&args),
        Some("spans") => spans(&args),
        Some("spans-child") => spans_child(&args),
        Some("pairs") => pairs(&args),
        _ => {
            eprintln!(
                "usage: scale threads|spans|pairs|depth [POINTS] [options] (see the file's docs)"
            );
            std::process::exit(2);
        }
    }
}

/// `threads`: coverage, handler cost per sample, profiler threads' CPU/s.
fn threads(args: &[String]) {
    let points = list(args.get(2), &[1, 8, 64, 512]);
    let cpu_s = opt(args, "--cpu-s", 4.0);
    let rounds = opt(args, "--rounds", 5.0) as usize;
    let late = args.iter().any(|a| a == "--late");
    set_rate(args, 100);
    let units = calibrate(cpu_s);
    println!(
        "{units} work units (about {cpu_s} s of CPU) shared by N threads {}, {} Hz, \
         {rounds} rounds of off/on; medians\n",
        if late {
            "spawned after the profiler started"
        } else {
            "that exist before the profiler starts"
        },
        rate()
    );
    println!("| busy threads | coverage | handler cost per sample | profiler threads' CPU per second | work CPU on/off |");
    println!("|---:|---:|---:|---:|---:|");
    for &n in &points {
        let (mut cov, mut per_sample, mut prof, mut ratio) = (vec![], vec![], vec![], vec![]);
        for round in 0..rounds {
            let mut off = None;
            let mut on = None;
            for profiled in [round % 2 == 1, round % 2 == 0] {
                let r = run_work(units, n, 1, profiled, late);
                if profiled {
                    on = Some(r);
                } else {
                    off = Some(r);
                }
            }
            let (off, on) = (off.unwrap(), on.unwrap());
            cov.push(on.hit as f64 / (on.work_cpu * f64::from(rate())));
            per_sample.push((on.work_cpu - off.work_cpu) / on.samples.max(1) as f64 * 1e9);
            prof.push(on.profiler_cpu / on.wall);
            ratio.push(on.work_cpu / off.work_cpu);
        }
        println!(
            "| {n} | {:.1}% | {:.1} µs | {:.2} ms/s ({:.3}% of a core) | {:.4} |",
            median(cov) * 100.0,
            median(per_sample) / 1e3,
            median(prof.clone()) * 1e3,
            median(prof) * 100.0,
            median(ratio)
        );
    }
}

/// `depth`: handler cost per sample and frames kept, by stack depth.
fn depth(args: &[String]) {
    let points = list(args.get(2), &[8, 64, 128, 256, 512]);
    let cpu_s = opt(args, "--cpu-s", 2.0);
    let rounds = opt(args, "--rounds", 5.0) as usize;
    set_rate(args, 1000);
    let units = calibrate(cpu_s);
    println!(
        "{units} work units (about {cpu_s} s of CPU) on one thread D frames deep, {} Hz, \
         {rounds} rounds of off/on; medians\n",
        rate()
    );
    println!(
        "| depth (frames) | handler cost per sample | deepest stack kept (frames) | coverage |"
    );
    println!("|---:|---:|---:|---:|");
    for &d in &points {
        let (mut per_sample, mut deepest, mut cov) = (vec![], 0, vec![]);
        for round in 0..rounds {
            let mut off = None;
            let mut on = None;
            for profiled in [round % 2 == 1, round % 2 == 0] {
                let r = run_work(units, 1, d, profiled, false);
                if profiled {
                    on = Some(r);
                } else {
                    off = Some(r);
                }
            }
            let (off, on) = (off.unwrap(), on.unwrap());
            per_sample.push((on.work_cpu - off.work_cpu) / on.samples.max(1) as f64 * 1e9);
            deepest = deepest.max(on.deepest);
            cov.push(on.hit as f64 / (on.work_cpu * f64::from(rate())));
        }
        println!(
            "| {d} | {:.1} µs | {deepest} | {:.1}% |",
            median(per_sample) / 1e3,
            median(cov) * 100.0
        );
    }
}

/// `pairs`: encode time and size by distinct (stack, labels) pairs. The
/// encoder is internal, so this curve is measured inside the crate.
fn pairs(_args: &[String]) {
    println!(
        "the pairs curve measures the crate's internal encoder; run:\n  cargo test --release --lib profile::tests::bench::pairs_curve -- --ignored --nocapture"
    );
}

/// `spans`: RSS, directory size and profiler CPU at a span rate.
fn spans(args: &[String]) {
    let points = list(args.get(2), &[1_000, 100_000, 1_000_000]);
    let seconds = opt(args, "--seconds", 60.0);
    let exe = std::env::current_exe().expect("current exe");
    println!("distinct root spans per minute on one thread, each with a little work; local directory mode at {} Hz, 10 s intervals; {seconds} s per run, each in its own process\n", rate());
    println!("| spans/min | peak RSS off | peak RSS on | on − off | RSS on at 10 s / end | of which anonymous / file-backed at end (on − off) | directory growth | per minute | profiles | profiler threads' CPU | spans indexed / unindexed |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &rate in &points {
        let mut result = BTreeMap::new();
        for mode in ["off", "on"] {
            let out = Command::new(&exe)
                .args(["spans-child", mode, &rate.to_string(), &seconds.to_string()])
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("run child");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let fields: BTreeMap<String, String> = text
                .lines()
                .find_map(|l| l.strip_prefix("RESULT "))
                .unwrap_or_else(|| panic!("child failed: {text}"))
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            result.insert(mode, fields);
        }
        let f = |m: &str, k: &str| -> f64 {
            result[m].get(k).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        };
        let mib = |kib: f64| kib / 1024.0;
        println!(
            "| {rate} | {:.1} MiB | {:.1} MiB | {:+.1} MiB | {:.1} / {:.1} MiB | {:+.1} / {:+.1} MiB | {:.2} MiB | {:.2} MiB/min | {:.0} ({:.0} KiB) | {:.2} s ({:.2}% of a core) | {:.0} / {:.0} |",
            mib(f("off", "max_rss_kib")),
            mib(f("on", "max_rss_kib")),
            mib(f("on", "max_rss_kib") - f("off", "max_rss_kib")),
            mib(f("on", "rss_10s_kib")),
            mib(f("on", "rss_end_kib")),
            mib(f("on", "anon_end_kib") - f("off", "anon_end_kib")),
            mib(f("on", "file_end_kib") - f("off", "file_end_kib")),
            f("on", "dir_bytes") / 1048576.0,
            f("on", "dir_bytes") / 1048576.0 / (seconds / 60.0),
            f("on", "profiles"),
            f("on", "profile_bytes") / 1024.0,
            f("on", "profiler_cpu_s"),
            f("on", "profiler_cpu_s") / seconds * 100.0,
            f("on", "spans_recorded"),
            f("on", "spans_unindexed"),
        );
    }
}

fn spans_child(args: &[String]) {
    let on = args[2] == "on";
    let per_minute: f64 = args[3].parse().expect("rate");
    let seconds: f64 = args[4].parse().expect("seconds");
    let dir = tempdir("spans");
    let mut guard = None;
    let subscriber = tracing_subscriber::registry();
    let layer = if on {
        let (layer, g) = tracing_pyroscope::Builder::new("scale")
            .profiles_dir(&dir)
            .sample_rate(rate())
            .build()
            .expect("start profiler");
        guard = Some(g);
        Some(layer)
    } else {
        None
    };
    let subscriber = subscriber.with(layer);
    let per_second = per_minute / 60.0;
    let start = Instant::now();
    let mut opened = 0u64;
    let mut rss_10s = 0;
    let mut profiler_cpu = Duration::ZERO;
    tracing::subscriber::with_default(subscriber, || {
        while start.elapsed().as_secs_f64() < seconds {
            let due = (start.elapsed().as_secs_f64() * per_second) as u64;
            while opened < due {
                let span = tracing::info_span!("request", n = opened);
                span.in_scope(|| black_box(scale_work_unit(opened) & 0xff));
                opened += 1;
            }
            if rss_10s == 0 && start.elapsed() >= Duration::from_secs(10) {
                rss_10s = rss_kib();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // Every thread but this one is the profiler's (one that exited
        // included: the kernel adds its time to the process's).
        profiler_cpu = process_cpu().saturating_sub(thread_cpu());
    });
    let rss_end = rss_kib();
    let (anon_end, file_end) = rss_parts_kib();
    let stats = guard.as_ref().map(|g| g.stats()).unwrap_or_default();
    drop(guard);
    let mut dir_bytes = 0;
    let mut profile_bytes = 0;
    let mut profiles = 0;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            dir_bytes += len;
            if e.file_name().to_string_lossy().ends_with(".pb.gz") {
                profile_bytes += len;
                profiles += 1;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "RESULT opened={opened} max_rss_kib={} rss_10s_kib={rss_10s} rss_end_kib={rss_end} \
         anon_end_kib={anon_end} file_end_kib={file_end} \
         dir_bytes={dir_bytes} profile_bytes={profile_bytes} profiles={profiles} \
         profiler_cpu_s={:.3} process_cpu_s={:.3} spans_recorded={} spans_unindexed={} samples={}",
        max_rss_kib(),
        profiler_cpu.as_secs_f64(),
        process_cpu().as_secs_f64(),
        stats.spans_recorded,
        stats.spans_unindexed,
        stats.samples,
    );
}
