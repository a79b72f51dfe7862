//! Where the ride-sharing handlers wait rather than compute, so the wall
//! profile has something to show beside the CPU one:
//! - [`dispatch`]: `/car` awaits a dispatcher (an async timer of a few tens
//!   of milliseconds) inside its own `dispatch` span, the await site;
//! - [`quote_fare`]: every order asks the fare service for a price with a
//!   blocking socket `read`, on the blocking thread that carries the
//!   request's span;
//! - eu-north's region lock is a blocking `std::sync::Mutex`
//!   ([`crate::work::mutex_lock`]), which a roster sync ([`every`]) holds
//!   for [`ROSTER_SYNC`] at a time while it waits on I/O, so most requests
//!   block on it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Sender};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::work::Vehicle;

/// How long `/car` waits for a driver to be dispatched.
pub(crate) const DISPATCH: Duration = Duration::from_millis(30);

/// How long the fare service takes to answer.
pub(crate) const FARE_DELAY: Duration = Duration::from_millis(8);

/// How long eu-north's roster sync holds the region lock at a time.
pub(crate) const ROSTER_SYNC: Duration = Duration::from_millis(45);

/// How long the roster sync then leaves the lock free.
pub(crate) const ROSTER_PAUSE: Duration = Duration::from_millis(15);

/// Runs `f` on a thread of its own, again and again, [`ROSTER_PAUSE`] apart.
pub(crate) fn every(name: &str, f: impl Fn() + Send + 'static) {
    let _ = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || loop {
            f();
            std::thread::sleep(ROSTER_PAUSE);
        });
}

/// `/car` waits for the dispatcher: the request's task is idle (entered on
/// no thread) for [`DISPATCH`], under the `dispatch` span.
pub(crate) async fn dispatch(vehicle: Vehicle) {
    tokio::time::sleep(DISPATCH)
        .instrument(tracing::info_span!("dispatch", vehicle = vehicle.name()))
        .await;
}

/// A request to the fare service: the socket to answer, and when.
type FareRequest = (UnixStream, Instant);

/// The fare service's queue (`None` if its thread could not start).
fn fare_service() -> Option<&'static Sender<FareRequest>> {
    static SERVICE: OnceLock<Option<Sender<FareRequest>>> = OnceLock::new();
    SERVICE
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<FareRequest>();
            let spawned = std::thread::Builder::new()
                .name("fare-service".into())
                .spawn(move || {
                    // Requests arrive in due order (each is due FARE_DELAY after
                    // it came), so answering in turn never delays a later one.
                    for (mut stream, due) in rx {
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        let _ = stream.write_all(&42u64.to_le_bytes());
                    }
                });
            spawned.ok().map(|_| tx)
        })
        .as_ref()
}

/// Asks the fare service for a price: a blocking `read` on a socket that
/// the service answers after [`FARE_DELAY`]. Call it from a blocking
/// thread (`spawn_blocking`) that carries the request's span.
#[inline(never)]
pub(crate) fn quote_fare() -> u64 {
    let Ok((mine, theirs)) = UnixStream::pair() else {
        return 0;
    };
    let sent =
        fare_service().is_some_and(|tx| tx.send((theirs, Instant::now() + FARE_DELAY)).is_ok());
    if !sent {
        return 0;
    }
    read_fare(mine)
}

/// The blocking read itself, its own frame in the wall flame graph.
#[inline(never)]
fn read_fare(mut stream: UnixStream) -> u64 {
    let mut buf = [0u8; 8];
    match stream.read_exact(&mut buf) {
        Ok(()) => u64::from_le_bytes(buf),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fare_service_answers_after_its_delay() {
        let t = Instant::now();
        assert_eq!(quote_fare(), 42);
        assert!(t.elapsed() >= FARE_DELAY);
    }
}
