//! Clear errors instead of silent breakage: a second profiler in the same
//! process, or a foreign `SIGPROF` handler, is refused with an error; the
//! foreign handler is left untouched.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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
