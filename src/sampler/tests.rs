//! The sampler's own tests (they start samplers in this process).
use super::*;

/// Tests that start a sampler in this process, or use the grace-period
/// counters, take turns.
pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `f` in a forked child and returns its exit status (or 100 +
/// the signal that killed it).
fn in_child(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only runs `f` and then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = f();
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        100 + libc::WTERMSIG(status)
    }
}

#[test]
fn a_forked_child_starts_from_a_clean_sampler_state() {
    // In a first child (so this process's state is untouched), leave the
    // state a fork can catch mid-flight: a running sampler, a handler
    // counted as running, a slot being written and a cache in use on
    // threads that the second fork will not copy.
    let status = in_child(|| {
        let mut sampler = match Sampler::start(1000) {
            Ok(s) => s,
            Err(_) => return 1,
        };
        let state = shared();
        // SAFETY: the running sampler's buffer, alive while it runs.
        let buffer = unsafe { &*BUFFER.load(Ordering::SeqCst) };
        // Claimed and never published: a handler caught mid-write.
        let _ = buffer.claim();
        state.caches[0].busy.store(true, Ordering::SeqCst);
        let parity = reclaim::enter();
        let status = in_child(|| {
            let shared = shared();
            if !reclaim::quiescent()
                || ACTIVE.load(Ordering::SeqCst)
                || !BUFFER.load(Ordering::SeqCst).is_null()
                || shared.caches.iter().any(|c| c.busy.load(Ordering::SeqCst))
            {
                return 2;
            }
            // The child's own sampler starts and samples this thread.
            let Ok(mut own) = Sampler::start(1000) else {
                return 3;
            };
            let mut x = 1u64;
            let mut samples = 0;
            for _ in 0..2000 {
                for i in 0..100_000u64 {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                }
                samples += own.drain(|_, _, _| {});
                if samples > 0 {
                    break;
                }
            }
            own.stop();
            if samples == 0 {
                return 4;
            }
            0
        });
        reclaim::exit(parity);
        state.caches[0].busy.store(false, Ordering::SeqCst);
        sampler.stop();
        status
    });
    assert_eq!(
        status, 0,
        "1: start, 2: dirty state, 3: AlreadyRunning, 4: no samples"
    );
}

/// Spinning threads for the reclamation test. 64 by default: on a
/// 2-core machine 512 spinners starve the manager thread itself, which
/// then scans (and retires) only a few times in the whole run. Set
/// `SAMPLER_TEST_SPINNERS=512` on a bigger machine.
fn spinners() -> usize {
    std::env::var("SAMPLER_TEST_SPINNERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

/// This thread's CPU time in nanoseconds.
fn thread_cpu_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Spins for 20 ms of its own CPU time, then hands over to a new thread
/// and exits, until `stop`: constant CPU load with constant churn, so
/// every scan finds new threads and retires the maps snapshot.
fn relay(stop: Arc<AtomicBool>, live: Arc<AtomicU64>, exits: Arc<AtomicU64>) {
    let end = thread_cpu_nanos() + 20_000_000;
    let mut x = 1u64;
    while thread_cpu_nanos() < end && !stop.load(Ordering::Relaxed) {
        for _ in 0..1000 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
    }
    if !stop.load(Ordering::Relaxed) {
        let (s, l, e) = (stop.clone(), live.clone(), exits.clone());
        let next = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || relay(s, l, e));
        if next.is_ok() {
            live.fetch_add(1, Ordering::SeqCst);
        }
    }
    exits.fetch_add(1, Ordering::Relaxed);
    live.fetch_sub(1, Ordering::SeqCst);
}

#[test]
fn retired_snapshots_stay_bounded_under_many_spinning_threads_with_churn() {
    let _serial = serial();
    let stop = Arc::new(AtomicBool::new(false));
    let live = Arc::new(AtomicU64::new(0));
    let exits = Arc::new(AtomicU64::new(0));
    for _ in 0..spinners() {
        let (s, l, e) = (stop.clone(), live.clone(), exits.clone());
        live.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || relay(s, l, e));
        if spawned.is_err() {
            live.fetch_sub(1, Ordering::SeqCst);
            break; // the machine's thread limit
        }
    }
    let spinning = live.load(Ordering::SeqCst);
    let mut sampler = Sampler::start(1000).expect("start");
    // On a machine with hundreds of cores, some handler is always in
    // flight, some of them preempted mid-way for a scheduling round.
    // Two cores rarely show that, so two threads play such handlers,
    // each counted in for 30 ms, staggered: at every instant at least
    // one is in flight, as the single-counter scheme could not bear.
    let stalls: Vec<_> = (0..2u64)
        .map(|k| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(15 * k));
                while !stop.load(Ordering::Relaxed) {
                    let parity = reclaim::enter();
                    std::thread::sleep(Duration::from_millis(30));
                    reclaim::exit(parity);
                }
            })
        })
        .collect();
    let mut peak = 0;
    let mut samples = 0;
    let started = std::time::Instant::now();
    // 8 s, or longer (up to 40 s) on a busy machine until there has
    // been enough churn to judge.
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = sampler.stats();
        peak = peak.max(now.retired);
        samples += sampler.drain(|_, _, _| {});
        let elapsed = started.elapsed();
        let churned = now.reclaimed + now.retired >= 20;
        if (elapsed >= Duration::from_secs(8) && churned) || elapsed >= Duration::from_secs(40) {
            break;
        }
    }
    let stats = sampler.stats();
    stop.store(true, Ordering::Relaxed);
    for stall in stalls {
        let _ = stall.join();
    }
    sampler.stop();
    while live.load(Ordering::SeqCst) > 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "{spinning} spinning threads, {} thread exits: retired peak {peak}, reclaimed {}, samples {samples}, {stats:?}",
        exits.load(Ordering::Relaxed),
        stats.reclaimed
    );
    assert!(
        stats.reclaimed + stats.retired >= 20,
        "too little churn to test: {stats:?}"
    );
    assert!(peak <= 16, "retired snapshots piled up: peak {peak}");
}

#[test]
fn samples_wait_in_the_heap_queue_while_the_collector_is_busy() {
    // The collector does slow work (a first debug-info load, a big
    // encode) and does not drain for seconds: the drain thread moves
    // samples out of the signal buffer meanwhile. The stall is long
    // enough to fill the signal buffer several times over (on 2 CPUs
    // CPU-time timers fire at most ~500 times a second).
    let _serial = serial();
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..8u64)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let begin = thread_cpu_nanos();
                let mut x = t;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..1000 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                }
                thread_cpu_nanos() - begin
            })
        })
        .collect();
    let mut sampler = Sampler::start(1000).expect("start");
    let slots = sampler.stats().buffer_slots;
    let started = std::time::Instant::now();
    // The stalled collector: no drain until the signals taken exceed
    // two buffers' worth (or 30 s pass).
    let signals = |s: SamplerStats| s.taken + s.dropped;
    while signals(sampler.stats()) < 2 * slots && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let cpu: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    sampler.stop();
    let mut periods = 0u64;
    let samples = sampler.drain(|_, _, weight| periods += u64::from(weight));
    let stats = sampler.stats();
    println!(
        "stalled {:?}: {samples} samples ({periods} periods) for {:.2} CPU-s; {stats:?}",
        started.elapsed(),
        cpu as f64 / 1e9
    );
    assert!(
        signals(stats) >= 2 * slots,
        "too few signals to test: {stats:?}"
    );
    assert_eq!(
        stats.dropped, 0,
        "samples lost while the collector was busy"
    );
    assert_eq!(
        samples as u64, stats.taken,
        "every sample taken reaches the collector"
    );
}

#[test]
fn stopping_a_manager_asleep_on_cpu_time_spins_no_core() {
    let _serial = serial();
    let mut sampler = Sampler::start(100).expect("start");
    // Idle: the manager goes to sleep until the process uses CPU time
    // (unless other tests keep the process busy: then there is nothing
    // to test).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sampler.manager_asleep_on_cpu.load(Ordering::SeqCst)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !sampler.manager_asleep_on_cpu.load(Ordering::SeqCst) {
        println!("skipped: the manager never slept (a busy process)");
        sampler.stop();
        return;
    }
    let (cpu, wall) = (thread_cpu_nanos(), std::time::Instant::now());
    sampler.stop();
    let (cpu, wall) = (thread_cpu_nanos() - cpu, wall.elapsed());
    println!("stop: {cpu} ns of this thread's CPU, {wall:?}");
    assert!(wall < Duration::from_secs(2), "stop took {wall:?}");
    // Burning the CPU time the manager waits for would take about
    // `IDLE_WAKE_CPU` (1 ms) of it.
    assert!(cpu < 500_000, "stop used {cpu} ns of CPU");
}

#[test]
fn a_steady_busy_process_is_scanned_less_often_until_something_changes() {
    let mut period = scan_period(8);
    let mut seen = vec![];
    for _ in 0..5 {
        period = busy_scan_period(period, 8, false);
        seen.push(period.as_millis());
    }
    assert_eq!(seen, [40, 80, 160, 160, 160]);
    assert_eq!(busy_scan_period(period, 8, true), SCAN_PERIOD);
    // Many threads: never below their own period, whether or not it
    // changed.
    assert_eq!(
        busy_scan_period(SCAN_PERIOD, 6400, false),
        Duration::from_secs(1)
    );
    assert_eq!(
        busy_scan_period(STEADY_SCAN_PERIOD, 6400, true),
        Duration::from_secs(1)
    );
}

#[test]
fn scan_period_grows_with_threads_and_is_capped() {
    assert_eq!(scan_period(0), SCAN_PERIOD);
    assert_eq!(scan_period(64), SCAN_PERIOD);
    assert_eq!(scan_period(640), SCAN_PERIOD * 10);
    assert_eq!(scan_period(1_000_000), Duration::from_secs(1));
}

#[test]
fn headroom_is_measured_on_fixed_size_thread_stacks() {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| {
            let maps = MapsSnapshot::read().expect("read /proc/self/maps");
            let local = 0u64;
            let sp = &local as *const u64 as u64;
            let range = maps
                .readable_range(sp)
                .expect("the stack is mapped")
                .clone();
            // Near the top of a fresh thread stack: plenty of room.
            assert!(maps.has_headroom(sp, 16 * 1024));
            // A stack pointer 1 KiB above the mapping's start has none.
            assert!(!maps.has_headroom(range.start + 1024, 16 * 1024));
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn headroom_is_measured_from_the_handlers_frame_not_the_interrupted_sp() {
    // A 256 KiB thread stack. The interrupted code's sp has 20 KiB left,
    // but the kernel's signal frame (with AVX-512 or AMX state) and the
    // handler's own frames took 14 KiB of it: the handler's frame is 6
    // KiB above the stack's bottom. Unwinding (~9 KiB) would overflow.
    let base = 0x7f00_0000_0000u64;
    let maps = MapsSnapshot::from_ranges(std::iter::once(base..base + 256 * 1024).collect());
    let sp = base + 20 * 1024;
    assert!(!handler::plan(
        handler::InHandler::for_test(),
        &maps,
        None,
        sp,
        base + 6 * 1024
    )
    .unwinds());
    // The handler's frame just above the headroom it needs (16 KiB in
    // release): room to unwind.
    let frame = base + handler::HANDLER_HEADROOM + 1024;
    assert!(handler::plan(
        handler::InHandler::for_test(),
        &maps,
        None,
        frame - 4096,
        frame
    )
    .unwinds());
}

#[test]
fn an_sp_outside_the_snapshot_gets_the_leaf_only_and_a_maps_reread() {
    // A stack mapped after the snapshot (a new thread, a fiber, the
    // main stack grown): nothing is known about its bounds.
    let base = 0x7f00_0000_0000u64;
    let maps = MapsSnapshot::from_ranges(std::iter::once(base..base + 256 * 1024).collect());
    let elsewhere = 0x7e00_0000_0000u64;
    let stale = unwind::STALE_MAPS.load(Ordering::Relaxed);
    assert!(!handler::plan(
        handler::InHandler::for_test(),
        &maps,
        None,
        elsewhere,
        base + 128 * 1024
    )
    .unwinds());
    assert!(unwind::STALE_MAPS.load(Ordering::Relaxed) > stale);
    // A handler frame outside the snapshot has no known headroom.
    assert!(!handler::plan(
        handler::InHandler::for_test(),
        &maps,
        None,
        base + 64 * 1024,
        elsewhere
    )
    .unwinds());
}

#[test]
fn maps_snapshot_bounds_reads_to_mapped_memory() {
    let maps = MapsSnapshot::read().expect("read /proc/self/maps");
    let local = 0u64;
    let addr = &local as *const u64 as u64;
    let end = maps.readable_range(addr).expect("the stack is mapped").end;
    assert!(end > addr);
    assert_eq!(maps.readable_range(8), None, "page zero is never mapped");
}
