//! One test, alone, in a child process of this test binary.
//!
//! `isolated!()` as the first statement of a test: in the test binary's own
//! process it runs the test binary again with only this test selected
//! (`--exact <module>::<test>`, one test thread) and an environment variable
//! naming the test, prints the child's output (shown like any test output),
//! and fails unless the child ran the test and it passed; then it returns
//! from the test. In that child it does nothing, and the test runs.
//!
//! The children run one at a time: the former test files ran one after
//! another, and the CPU-time and CPU-share bounds of the sampler tests were
//! set on a machine not also running another profiled test.

use std::process::Command;
use std::sync::{Mutex, PoisonError};

/// Names the test a child process is for.
const CHILD_ENV: &str = "TRACING_PYROSCOPE_ISOLATED_TEST";

/// Held while a child runs.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs the calling test in a child process and returns from it, unless
/// this is that child. Only at the start of a `#[test]` (or `#[tokio::test]`)
/// returning `()`.
macro_rules! isolated {
    () => {
        if $crate::isolate::in_parent(module_path!()) {
            return;
        }
    };
}

/// The calling test's name, as the harness knows it: the harness runs each
/// test on a thread named after it (`<module>::<test>`).
fn current_test(module: &str) -> String {
    let name = std::thread::current()
        .name()
        .expect("isolated!() outside a test thread")
        .to_owned();
    // `module_path!()` starts with this crate's name, test names do not.
    let module = module.split_once("::").map_or(module, |(_, m)| m);
    assert!(
        name.strip_prefix(module)
            .is_some_and(|rest| rest.starts_with("::")),
        "isolated!() in module {module} runs on thread {name:?}, not a test of that module"
    );
    name
}

/// True in the test binary's process, after the child ran the test (a
/// failed child fails the calling test here); false in the child.
pub(crate) fn in_parent(module: &str) -> bool {
    let test = current_test(module);
    if std::env::var_os(CHILD_ENV).is_some_and(|v| v == test.as_str()) {
        return false;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let exe = std::env::current_exe().expect("the test binary's path");
    let output = Command::new(exe)
        .args([
            &*test,
            "--exact",
            "--include-ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(CHILD_ENV, &test)
        .output()
        .expect("run the test binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "{test} failed in its child process ({})",
        output.status
    );
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "the child process ran no test named {test}"
    );
    true
}
