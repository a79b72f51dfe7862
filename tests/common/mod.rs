//! Shared test helpers. Each test binary uses a different subset.
#![allow(dead_code, unreachable_pub)]

pub mod pprof;
pub mod pyroscope_double;

use std::time::{Duration, Instant};

/// Polls `what` every 20 ms until it holds or `timeout` passes; returns
/// whether it held.
pub fn wait_until(timeout: Duration, mut what: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if what() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    what()
}
