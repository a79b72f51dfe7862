//! Clear errors instead of silent breakage: a second profiler in the same
//! process, or a foreign `SIGPROF` handler, is refused with an error; the
//! foreign handler is left untouched. A foreign handler installed while the
//! profiler runs stops sampling (our timers no longer feed it) and is
//! reported once.

use std::hint::black_box;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing_pyroscope::ErrorKind;

static SERIAL: Mutex<()> = Mutex::new(());
static FOREIGN_CALLS: AtomicU64 = AtomicU64::new(0);

extern "C" fn foreign_handler(_: libc::c_int) {
    FOREIGN_CALLS.fetch_add(1, Ordering::Relaxed);
}

fn builder(dir: &std::path::Path) -> tracing_pyroscope::Builder {
    tracing_pyroscope::Builder::new("errors-test").profiles_dir(dir)
}

fn tempdir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("tracing-pyroscope-{name}-{}", std::process::id()))
}

#[test]
fn starting_twice_is_an_error_and_restart_after_stop_works() {
    isolated!();
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempdir("twice");
    let (_layer, guard) = builder(&dir).build().expect("first start");
    let err = builder(&dir).build().expect_err("second start must fail");
    assert_eq!(err.kind(), ErrorKind::AlreadyRunning);
    assert!(err.to_string().contains("already running"), "{err}");
    drop(guard);
    // After the guard is dropped, a new profiler may start.
    let (_layer, guard) = builder(&dir).build().expect("restart after stop");
    assert!(guard.is_active());
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_foreign_sigprof_handler_is_never_replaced() {
    isolated!();
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempdir("foreign");
    // Only a handler we did not install counts as foreign; make sure ours is
    // not the current one by starting from a process state we control.
    let handler = foreign_handler as extern "C" fn(libc::c_int) as libc::sighandler_t;
    let previous = unsafe { libc::signal(libc::SIGPROF, handler) };
    let result = builder(&dir).build();
    let err = result.expect_err("must refuse to replace the foreign handler");
    assert_eq!(err.kind(), ErrorKind::SignalInUse);
    assert!(err.to_string().contains("SIGPROF"), "{err}");
    // Still installed, still called.
    unsafe { libc::raise(libc::SIGPROF) };
    assert_eq!(FOREIGN_CALLS.load(Ordering::Relaxed), 1);
    let current = unsafe { libc::signal(libc::SIGPROF, previous) };
    assert_eq!(current, handler, "the foreign handler was replaced");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dropping_the_guard_in_a_forked_child_returns() {
    isolated!();
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempdir("fork");
    let (_layer, guard) = builder(&dir).build().expect("start");
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // The child has no collector or timer thread: dropping must not wait
        // for them.
        drop(guard);
        unsafe { libc::_exit(0) };
    }
    let started = std::time::Instant::now();
    let mut status = 0;
    loop {
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if started.elapsed() > std::time::Duration::from_secs(20) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the forked child hung dropping the guard");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
}

static LATE_FOREIGN_CALLS: AtomicU64 = AtomicU64::new(0);

extern "C" fn late_foreign_handler(_: libc::c_int) {
    LATE_FOREIGN_CALLS.fetch_add(1, Ordering::Relaxed);
}

/// Everything the global subscriber logged.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn wait_until(timeout: Duration, mut what: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if what() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    what()
}

#[test]
fn a_sigprof_handler_installed_later_stops_sampling_and_is_reported_once() {
    isolated!();
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let log = Log::default();
    let writer = log.clone();
    // The profiler's own threads log, so the subscriber must be global.
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .init();
    let dir = tempdir("late-foreign");
    let (_layer, guard) = builder(&dir).sample_rate(1000).build().expect("start");
    let stop = Arc::new(AtomicBool::new(false));
    let spinner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut x = 1u64;
            while !stop.load(Ordering::Relaxed) {
                x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        })
    };
    assert!(
        wait_until(Duration::from_secs(10), || guard.stats().samples > 0),
        "no samples before the foreign handler: {:?}",
        guard.stats()
    );

    // Another library installs its own handler over ours.
    // SAFETY: sigaction is plain data; both pointers are valid.
    let mut ours: libc::sigaction = unsafe { std::mem::zeroed() };
    let mut theirs: libc::sigaction = unsafe { std::mem::zeroed() };
    theirs.sa_sigaction = late_foreign_handler as extern "C" fn(libc::c_int) as libc::sighandler_t;
    theirs.sa_flags = libc::SA_RESTART;
    assert_eq!(
        unsafe { libc::sigaction(libc::SIGPROF, &theirs, &mut ours) },
        0
    );
    let warned = wait_until(Duration::from_secs(10), || log.text().contains("SIGPROF"));
    // Let signals generated before the timers were deleted land.
    std::thread::sleep(Duration::from_millis(200));
    let calls_after_warning = LATE_FOREIGN_CALLS.load(Ordering::Relaxed);
    // The spinner keeps burning CPU: our timers would keep firing.
    std::thread::sleep(Duration::from_millis(800));
    let calls_later = LATE_FOREIGN_CALLS.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    spinner.join().unwrap();
    // Put our (now inert) handler back for the other tests, then stop.
    assert_eq!(
        unsafe { libc::sigaction(libc::SIGPROF, &ours, std::ptr::null_mut()) },
        0
    );
    drop(guard);
    let text = log.text();
    println!("log: {text}");
    println!(
        "foreign handler calls: {calls_after_warning} at the warning, {calls_later} 0.8 s later"
    );
    assert!(warned, "no warning about the foreign SIGPROF handler");
    assert_eq!(
        text.matches("another SIGPROF handler").count(),
        1,
        "warned more than once: {text}"
    );
    // Named by address (and symbol, when the loader exports one).
    let address = format!("{:#x}", theirs.sa_sigaction);
    assert!(
        text.contains(&address),
        "the warning does not name the handler at {address}: {text}"
    );
    assert_eq!(
        calls_later, calls_after_warning,
        "our timers still signal the foreign handler"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
