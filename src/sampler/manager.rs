//! The manager thread (`pyroscope-timer`): arms the timers of new threads,
//! rebuilds the unwinder after `dlopen`/`dlclose`, re-reads the maps when
//! stacks moved, notices a foreign `SIGPROF` handler, and retires what the
//! handler no longer reads; plus the drain thread's loop and shutdown.

use super::handler::on_sigprof;
use super::*;

/// With wall time on: how long no thread may be seen inside a span before
/// the manager stops ticking at the sample rate.
const WALL_IDLE_AFTER: Duration = Duration::from_secs(1);

/// Installs our handler unless a foreign one is installed.
pub(super) fn install_handler() -> Result<(), Error> {
    let ours = on_sigprof as *const () as libc::sighandler_t;
    // SAFETY: sigaction is plain data; zeroed is valid.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: querying the current action with a valid out-pointer.
    if unsafe { libc::sigaction(libc::SIGPROF, ptr::null(), &mut old) } != 0 {
        return Err(Error::new(ErrorKind::Os, "sigaction(SIGPROF) query failed")
            .with_source(std::io::Error::last_os_error()));
    }
    if old.sa_sigaction == ours {
        return Ok(());
    }
    if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN {
        return Err(Error::new(
            ErrorKind::SignalInUse,
            "another SIGPROF handler is installed (another profiler?); tracing-pyroscope will not replace it",
        ));
    }
    // SAFETY: as above.
    let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
    new.sa_sigaction = ours;
    new.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: valid pointers; the handler is async-signal-safe (module docs).
    let rc = unsafe {
        libc::sigemptyset(&mut new.sa_mask);
        libc::sigaction(libc::SIGPROF, &new, ptr::null_mut())
    };
    if rc != 0 {
        return Err(
            Error::new(ErrorKind::Os, "sigaction(SIGPROF) install failed")
                .with_source(std::io::Error::last_os_error()),
        );
    }
    Ok(())
}

/// The `SIGPROF` action installed now, if it is not ours: one `sigaction`
/// query, no allocation.
pub(super) fn foreign_handler() -> Option<libc::sighandler_t> {
    let ours = on_sigprof as *const () as libc::sighandler_t;
    // SAFETY: sigaction is plain data; zeroed is valid.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: querying the current action with a valid out-pointer.
    if unsafe { libc::sigaction(libc::SIGPROF, ptr::null(), &mut current) } != 0 {
        return None;
    }
    (current.sa_sigaction != ours).then_some(current.sa_sigaction)
}

/// Names a signal action for a log line: `SIG_DFL`, `SIG_IGN`, or the
/// handler's address with its symbol and object when the loader knows them.
fn describe_handler(handler: libc::sighandler_t) -> String {
    match handler {
        libc::SIG_DFL => return "SIG_DFL".into(),
        libc::SIG_IGN => return "SIG_IGN".into(),
        _ => {}
    }
    // SAFETY: Dl_info is plain data; zeroed is valid.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the loader's tables (manager thread, not a
    // signal handler); the strings it returns are owned by the loader.
    let found = unsafe { libc::dladdr(handler as *const libc::c_void, &mut info) } != 0;
    let text = |p: *const libc::c_char| {
        (!p.is_null())
            // SAFETY: non-null dladdr strings are NUL-terminated.
            .then(|| {
                unsafe { std::ffi::CStr::from_ptr(p) }
                    .to_string_lossy()
                    .into_owned()
            })
    };
    let mut out = format!("{handler:#x}");
    if found {
        if let Some(symbol) = text(info.dli_sname) {
            out.push_str(&format!(" ({symbol})"));
        }
        if let Some(object) = text(info.dli_fname) {
            out.push_str(&format!(" in {object}"));
        }
    }
    out
}

pub(super) fn publish_unwinder(state: UnwindState, retired: &mut Retired) {
    let old = UNWIND.swap(Box::into_raw(Box::new(state)), Ordering::SeqCst);
    if !old.is_null() {
        // SAFETY: `old` came from Box::into_raw in this function.
        retired.push(Retiree::Unwinder(unsafe { Box::from_raw(old) }));
    }
}

pub(super) fn publish_maps(maps: MapsSnapshot, retired: &mut Retired) {
    let old = MAPS.swap(Box::into_raw(Box::new(maps)), Ordering::SeqCst);
    if !old.is_null() {
        // SAFETY: `old` came from Box::into_raw in this function.
        retired.push(Retiree::Maps(unsafe { Box::from_raw(old) }));
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn manage(
    mut timers: timers::Timers,
    mut tables: unwind::TablesCache,
    mut retired: Retired,
    stop: StopSignal,
    counters: Arc<RunCounters>,
    buffer: Arc<SampleBuffer>,
    asleep_on_cpu: Arc<AtomicBool>,
    mut wall: Option<(wall::Wall<wall::Os>, Duration)>,
) {
    let mut loader_generation = {
        let p = UNWIND.load(Ordering::SeqCst);
        // SAFETY: only this thread replaces or frees UNWIND while running.
        if p.is_null() {
            0
        } else {
            unsafe { (*p).loader_generation }
        }
    };
    let mut period = SCAN_PERIOD;
    let mut stale_maps = unwind::STALE_MAPS.load(Ordering::Relaxed);
    let mut activity = activity::Activity::new(buffer.taken.load(Ordering::Relaxed));
    let mut listed_claims = context::slot_claims();
    let mut recycled_checked = std::time::Instant::now();
    // Set once another SIGPROF handler replaced ours: nothing left to do
    // but wait for `stop`.
    let mut displaced = false;
    // Idle for long enough: sleep until the process uses CPU (see
    // `activity`), unless the kernel refuses such sleeps.
    let mut cpu_sleep = false;
    let mut cpu_sleep_refused = false;
    let mut idle_looks = 0u32;
    // Wall time on: while a thread was inside a span within
    // `WALL_IDLE_AFTER`, the manager also ticks at the sample rate (see
    // `wall`), the thread scans keeping their own period. Otherwise it
    // keeps its usual cadence (no wakes at idle) and looks for threads in
    // spans whenever it wakes.
    let mut next_scan = std::time::Instant::now();
    let mut wall_seen = std::time::Instant::now();
    loop {
        let wall_hot = wall_seen.elapsed() < WALL_IDLE_AFTER;
        if let Some((w, tick)) = wall.as_mut().filter(|_| wall_hot) {
            let now = std::time::Instant::now();
            if stop.wait((*tick).min(next_scan.saturating_duration_since(now))) {
                break;
            }
            if w.tick() {
                wall_seen = std::time::Instant::now();
            }
            if std::time::Instant::now() < next_scan {
                continue;
            }
        } else {
            if cpu_sleep {
                asleep_on_cpu.store(true, Ordering::SeqCst);
                if !stop.is_stopped() {
                    cpu_sleep_refused = !activity::sleep_until_cpu_used(activity::IDLE_WAKE_CPU);
                }
                asleep_on_cpu.store(false, Ordering::SeqCst);
                if stop.is_stopped() {
                    break;
                }
            } else if stop.wait(period) {
                break;
            }
            if let Some((w, _)) = wall.as_mut() {
                if w.tick() {
                    wall_seen = std::time::Instant::now();
                }
            }
        }
        cpu_sleep = false;
        if displaced {
            period = Duration::from_secs(1);
            next_scan = std::time::Instant::now() + period;
            continue;
        }
        // Code loaded or unloaded (dlopen, dlclose)? Rebuild the unwinder.
        // Checked every wake: one allocation-free dl_iterate_phdr step.
        if unwind::loader_generation() != loader_generation {
            let state = unwind::build_unwinder(&mut tables);
            loader_generation = state.loader_generation;
            publish_unwinder(state, &mut retired);
            if let Some(maps) = MapsSnapshot::read() {
                publish_maps(maps, &mut retired);
            }
        }
        // Listing the threads costs in proportion to their number: do it
        // only when the thread count moved (a new thread: it is armed
        // within one period), when a sample's stack lay outside the maps
        // snapshot, or, while the process uses CPU, every
        // `RECYCLED_CHECK_PERIOD` (a thread that replaced one that exited
        // within the same period leaves the count unchanged; recycled tids),
        // or when a thread registered with the label arena.
        // A look costs one or a few system calls (see `activity`).
        let look = activity.look(buffer.taken.load(Ordering::Relaxed));
        let stale = unwind::STALE_MAPS.load(Ordering::Relaxed);
        let stale_moved = stale != stale_maps;
        let recycled_due = look.busy && recycled_checked.elapsed() >= RECYCLED_CHECK_PERIOD;
        // A thread that registered with the label arena (its first span
        // enter) since the last listing: new, even if the count did not move.
        let claims = context::slot_claims();
        let scanned = look.threads_changed || stale_moved || claims != listed_claims;
        if scanned || recycled_due {
            // Someone installed another SIGPROF handler over ours (another
            // profiler, a crash reporter): our timers would now feed it. Stop
            // them, say so once, and leave that handler alone. Checked when
            // there is work: a process that uses no CPU fires no timers.
            if let Some(foreign) = foreign_handler() {
                timers.clear();
                ACTIVE.store(false, Ordering::SeqCst);
                counters.threads.store(0, Ordering::Relaxed);
                counters.handler_conflicts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    target: "tracing_pyroscope",
                    handler = %describe_handler(foreign),
                    "another SIGPROF handler replaced tracing-pyroscope's (another profiler?); CPU sampling stopped"
                );
                displaced = true;
                continue;
            }
            // New threads (read before their timers are armed, so their
            // stacks are known by their first sample), or samples whose
            // stack lay outside the snapshot: read the maps again.
            // Recycled tids are looked for at most every
            // `RECYCLED_CHECK_PERIOD` (one `timer_gettime` per thread).
            let check_recycled = recycled_checked.elapsed() >= RECYCLED_CHECK_PERIOD;
            if check_recycled {
                recycled_checked = std::time::Instant::now();
            }
            let mut refreshed = false;
            timers.scan(check_recycled, || {
                if let Some(maps) = MapsSnapshot::read() {
                    publish_maps(maps, &mut retired);
                }
                refreshed = true;
            });
            if !refreshed && stale_moved {
                if let Some(maps) = MapsSnapshot::read() {
                    publish_maps(maps, &mut retired);
                }
            }
            stale_maps = stale;
            // Entries the scan claimed itself count as seen.
            listed_claims = context::slot_claims();
            activity.scanned(&look);
            counters
                .threads
                .store(timers.len() as u64, Ordering::Relaxed);
            counters
                .timer_errors
                .store(timers.create_errors, Ordering::Relaxed);
        }
        // Busy: look again soon (less often in processes with many
        // threads, up to once a second). Idle for `IDLE_LOOKS` looks: sleep
        // until the process uses CPU (no wakes while it stays idle), or,
        // where the kernel refuses that, back off up to once a second.
        if look.busy || look.threads_changed || stale_moved {
            idle_looks = 0;
            // A scan this time: something changed, look again soon. Else
            // back off towards `STEADY_SCAN_PERIOD`.
            period = busy_scan_period(period, timers.len(), scanned);
        } else if cpu_sleep_refused {
            period = activity::back_off(period);
        } else {
            idle_looks = idle_looks.saturating_add(1);
            cpu_sleep = idle_looks >= activity::IDLE_LOOKS;
        }
        retired.collect();
        counters
            .retired
            .store(retired.len() as u64, Ordering::Relaxed);
        counters.reclaimed.store(retired.freed(), Ordering::Relaxed);
        next_scan = std::time::Instant::now() + period;
    }
    if let Some((w, _)) = wall.as_mut() {
        w.flush();
    }
    timers.clear();
    shut_down(&mut retired, buffer);
}

/// Moves samples from the signal buffer to the heap queue whenever the
/// buffer's wake mark is reached, and sleeps otherwise (no polling: at idle
/// it never wakes). Nothing slow happens here.
pub(super) fn drain_loop(buffer: &SampleBuffer, queue: &Queue) {
    while !buffer.stopping() {
        queue.move_from(buffer);
        buffer.sleep(None);
    }
    queue.move_from(buffer);
}

/// Stops sampling (after the caller deleted the timers): unpublishes the
/// unwinder, maps and signal buffer, then waits out the handlers still
/// running before freeing them (or leaks them if one seems stuck).
pub(super) fn shut_down(retired: &mut Retired, buffer: Arc<SampleBuffer>) {
    ACTIVE.store(false, Ordering::SeqCst);
    let u = UNWIND.swap(ptr::null_mut(), Ordering::SeqCst);
    let m = MAPS.swap(ptr::null_mut(), Ordering::SeqCst);
    // Only ours: a later sampler may have published its own meanwhile.
    let _ = BUFFER.compare_exchange(
        Arc::as_ptr(&buffer).cast_mut(),
        ptr::null_mut(),
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    // SAFETY: both came from Box::into_raw and are no longer published.
    unsafe {
        if !u.is_null() {
            retired.push(Retiree::Unwinder(Box::from_raw(u)));
        }
        if !m.is_null() {
            retired.push(Retiree::Maps(Box::from_raw(m)));
        }
    }
    retired.push(Retiree::Buffer(buffer));
    if !retired.collect_all(Duration::from_secs(2)) {
        // A handler preempted for seconds: leak rather than risk a use
        // after free.
        std::mem::forget(std::mem::take(retired));
    }
}
