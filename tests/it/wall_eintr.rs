//! No application system call fails with `EINTR` because of wall sampling:
//! blocked threads are read from `/proc` and from our own memory, never
//! signalled. 16 threads inside spans block for 10 s in the calls that
//! `SA_RESTART` does not restart (a socket `read` with `SO_RCVTIMEO`,
//! `clock_nanosleep`, a timed futex, `Condvar::wait_timeout`,
//! `epoll_wait`, `poll`, tokio's `epoll_wait`) and in a pipe `read`, with
//! wall time on at 1000 Hz: not one is interrupted. The same workload under
//! a plain per-tick signal to the blocked threads is interrupted: the test
//! can fail.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::wall_blocked::{wall_profiler, wall_traces};

const KINDS: [&str; 8] = [
    "socket_read",
    "clock_nanosleep",
    "futex",
    "condvar_wait_timeout",
    "epoll_wait",
    "poll",
    "tokio",
    "pipe_read",
];

/// Calls interrupted per kind, and calls made.
struct Counts {
    interrupted: [AtomicU64; 8],
    calls: AtomicU64,
}

fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Blocks in the call of `kind` until `end`, counting interruptions.
/// `wake` gets a pipe's write end to close at the end (pipe reads only).
fn block(kind: usize, end: Instant, counts: &Counts, wakes: &Mutex<Vec<i32>>) {
    let left = || end.saturating_duration_since(Instant::now());
    let interrupted = || counts.interrupted[kind].fetch_add(1, Ordering::Relaxed);
    let mut fds = [0i32; 2];
    // SAFETY: a valid array of two fds.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (read_end, write_end) = (fds[0], fds[1]);
    match KINDS[kind] {
        "socket_read" => {
            let (mut a, _b) = UnixStream::pair().unwrap();
            while !left().is_zero() {
                a.set_read_timeout(Some(left().min(Duration::from_secs(5))))
                    .unwrap();
                counts.calls.fetch_add(1, Ordering::Relaxed);
                match a.read(&mut [0u8; 8]) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                        interrupted();
                    }
                    _ => {}
                }
            }
        }
        "clock_nanosleep" => {
            while !left().is_zero() {
                let ts = timespec(left().min(Duration::from_millis(100)));
                counts.calls.fetch_add(1, Ordering::Relaxed);
                // SAFETY: a valid timespec; no remainder pointer.
                let rc = unsafe {
                    libc::clock_nanosleep(libc::CLOCK_MONOTONIC, 0, &ts, std::ptr::null_mut())
                };
                if rc == libc::EINTR {
                    interrupted();
                }
            }
        }
        "futex" => {
            let word = AtomicU64::new(0);
            while !left().is_zero() {
                let ts = timespec(left().min(Duration::from_millis(100)));
                counts.calls.fetch_add(1, Ordering::Relaxed);
                // SAFETY: a futex wait on our own word with a valid timeout.
                let rc = unsafe {
                    libc::syscall(
                        libc::SYS_futex,
                        word.as_ptr().cast::<u32>(),
                        libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                        0u32,
                        &ts,
                    )
                };
                if rc == -1 && errno() == libc::EINTR {
                    interrupted();
                }
            }
        }
        "condvar_wait_timeout" => {
            let (lock, cv) = (Mutex::new(()), Condvar::new());
            let mut guard = lock.lock().unwrap();
            while !left().is_zero() {
                counts.calls.fetch_add(1, Ordering::Relaxed);
                let wait = left().min(Duration::from_millis(200));
                let (g, result) = cv.wait_timeout(guard, wait).unwrap();
                guard = g;
                // Nobody notifies: a wake before the timeout is the futex
                // returning EINTR.
                if !result.timed_out() {
                    interrupted();
                }
            }
        }
        "epoll_wait" => {
            // SAFETY: plain epoll calls on fds we own.
            let epoll = unsafe { libc::epoll_create1(0) };
            let mut event = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: 0,
            };
            // SAFETY: as above.
            assert_eq!(
                unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, read_end, &mut event) },
                0
            );
            while !left().is_zero() {
                let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
                counts.calls.fetch_add(1, Ordering::Relaxed);
                let ms = left().min(Duration::from_millis(200)).as_millis() as i32;
                // SAFETY: a valid events array of 4.
                let rc = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), 4, ms.max(1)) };
                if rc == -1 && errno() == libc::EINTR {
                    interrupted();
                }
            }
            // SAFETY: our own fd.
            unsafe { libc::close(epoll) };
        }
        "poll" => {
            while !left().is_zero() {
                let mut pfd = libc::pollfd {
                    fd: read_end,
                    events: libc::POLLIN,
                    revents: 0,
                };
                counts.calls.fetch_add(1, Ordering::Relaxed);
                let ms = left().min(Duration::from_millis(200)).as_millis() as i32;
                // SAFETY: one valid pollfd.
                let rc = unsafe { libc::poll(&mut pfd, 1, ms.max(1)) };
                if rc == -1 && errno() == libc::EINTR {
                    interrupted();
                }
            }
        }
        "tokio" => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use tokio::io::AsyncReadExt;
                let (mut a, _b) = tokio::net::UnixStream::pair().unwrap();
                while !left().is_zero() {
                    counts.calls.fetch_add(1, Ordering::Relaxed);
                    let wait = left().min(Duration::from_millis(200));
                    let mut buf = [0u8; 8];
                    if let Ok(Err(e)) = tokio::time::timeout(wait, a.read(&mut buf)).await {
                        if e.kind() == std::io::ErrorKind::Interrupted {
                            interrupted();
                        }
                    }
                }
            });
        }
        "pipe_read" => {
            wakes.lock().unwrap().push(write_end);
            loop {
                counts.calls.fetch_add(1, Ordering::Relaxed);
                let mut byte = 0u8;
                // SAFETY: reads one byte into a valid buffer.
                let rc = unsafe { libc::read(read_end, (&mut byte as *mut u8).cast(), 1) };
                if rc == -1 && errno() == libc::EINTR {
                    interrupted();
                    continue;
                }
                break;
            }
        }
        _ => unreachable!(),
    }
    // SAFETY: our own fds (the write end of a pipe read is closed by the
    // caller's wake, after which closing it again fails harmlessly).
    unsafe {
        libc::close(read_end);
        if KINDS[kind] != "pipe_read" {
            libc::close(write_end);
        }
    }
}

/// Runs 16 threads, each inside a span, blocking for `duration`; `during`
/// runs meanwhile with their tids and returns when they are done.
fn workload(duration: Duration, during: impl FnOnce(&[i32], &dyn Fn() -> bool)) -> Arc<Counts> {
    let counts = Arc::new(Counts {
        interrupted: Default::default(),
        calls: AtomicU64::new(0),
    });
    let wakes = Arc::new(Mutex::new(Vec::new()));
    let end = Instant::now() + duration;
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let (counts, wakes, tid_tx) = (counts.clone(), wakes.clone(), tid_tx.clone());
            std::thread::spawn(move || {
                // SAFETY: gettid has no preconditions.
                tid_tx.send(unsafe { libc::gettid() }).unwrap();
                let kind = i % KINDS.len();
                tracing::info_span!("eintr", kind = KINDS[kind])
                    .in_scope(|| block(kind, end, &counts, &wakes));
            })
        })
        .collect();
    let tids: Vec<i32> = (0..16).map(|_| tid_rx.recv().unwrap()).collect();
    let finished = || Instant::now() >= end;
    during(&tids, &finished);
    while !finished() {
        std::thread::sleep(Duration::from_millis(10));
    }
    for fd in wakes.lock().unwrap().drain(..) {
        // SAFETY: our pipe's write end: the reader sees end of file.
        unsafe { libc::close(fd) };
    }
    for t in threads {
        t.join().unwrap();
    }
    counts
}

fn report(counts: &Counts) -> (u64, String) {
    let mut total = 0;
    let mut text = String::new();
    for (kind, n) in KINDS.iter().zip(&counts.interrupted) {
        let n = n.load(Ordering::Relaxed);
        total += n;
        text.push_str(&format!("{kind}: {n} "));
    }
    (total, text)
}

#[test]
fn wall_sampling_interrupts_no_blocked_call() {
    isolated!();
    let (dir, guard) = wall_profiler("eintr");
    let counts = workload(Duration::from_secs(10), |_, _| {});
    drop(guard);
    let (total, text) = report(&counts);
    println!(
        "wall on, 1000 Hz, 16 threads, 10 s: {} calls, interrupted: {text}",
        counts.calls.load(Ordering::Relaxed)
    );
    assert_eq!(total, 0, "calls interrupted with wall sampling on: {text}");
    // And wall sampling did look at them: their blocked time is there.
    let traces = wall_traces(&dir);
    let blocked: f64 = traces
        .iter()
        .filter(|t| t.labels.get("span_name").map(String::as_str) == Some("eintr"))
        .filter(|t| t.frames.first().is_some_and(|f| f.starts_with("[blocked")))
        .map(|t| t.count as f64)
        .sum();
    let mut leaves: Vec<&str> = traces
        .iter()
        .filter_map(|t| t.frames.first().map(String::as_str))
        .collect();
    leaves.sort_unstable();
    leaves.dedup();
    println!("blocked: {:.1} s; leaves {leaves:?}", blocked / 1e9);
    assert!(
        blocked > 100e9,
        "16 threads blocked for 10 s, {:.1} s blocked wall time",
        blocked / 1e9
    );
    for call in ["read", "clock_nanosleep", "futex", "epoll_wait", "poll"] {
        let leaf = format!("[blocked: {call}]");
        assert!(leaves.contains(&leaf.as_str()), "no {leaf} in {leaves:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

extern "C" fn ignore(_: libc::c_int) {}

/// Seen red: a signal to the blocked threads every tick (what a
/// signal-based wall sampler does, here with a no-op `SA_RESTART` handler)
/// makes these calls fail with `EINTR`.
#[test]
fn a_per_tick_signal_does_interrupt() {
    isolated!();
    // SAFETY: installs a no-op handler (async-signal-safe) for SIGUSR2,
    // which nothing else in this child process uses.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = ignore as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut()),
            0
        );
    }
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let counts = workload(Duration::from_secs(3), |tids, finished| {
        while !finished() {
            for &tid in tids {
                // SAFETY: signals a thread of this process, which handles it.
                unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGUSR2) };
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let (total, text) = report(&counts);
    println!("per-tick signal, 16 threads, 3 s: interrupted: {text}");
    assert!(total > 0, "a per-tick signal interrupted nothing: {text}");
    let interrupted = |kind: &str| {
        let i = KINDS.iter().position(|k| *k == kind).unwrap();
        counts.interrupted[i].load(Ordering::Relaxed)
    };
    for kind in [
        "socket_read",
        "clock_nanosleep",
        "futex",
        "epoll_wait",
        "poll",
    ] {
        assert!(interrupted(kind) > 0, "{kind} never interrupted: {text}");
    }
}
