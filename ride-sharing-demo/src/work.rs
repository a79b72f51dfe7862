//! The CPU work the ride-sharing handlers do. Each function burns a fixed
//! amount of computation (not wall time), so profiling overhead shows up as
//! lower throughput, and each is `#[inline(never)]` so it is its own frame
//! in the flame graphs.

use std::hint::black_box;
use std::sync::{Mutex, PoisonError};

/// Iterations of [`spin`] per work unit; one unit is roughly 0.1–0.3 ms of
/// CPU on current machines.
const ITERATIONS_PER_UNIT: u64 = 100_000;

/// The vehicles one can order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Vehicle {
    Bike,
    Scooter,
    Car,
}

impl Vehicle {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Vehicle::Bike => "bike",
            Vehicle::Scooter => "scooter",
            Vehicle::Car => "car",
        }
    }

    /// Search radius: the work `find_nearest_vehicle` does (bike < scooter < car).
    pub(crate) fn search_radius(self) -> u64 {
        match self {
            Vehicle::Bike => 100,
            Vehicle::Scooter => 200,
            Vehicle::Car => 300,
        }
    }
}

/// A little integer hashing, `units × ITERATIONS_PER_UNIT` rounds.
#[inline(always)]
fn spin(units: u64, seed: u64) -> u64 {
    let mut x = seed | 1;
    for i in 0..units * ITERATIONS_PER_UNIT {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = x.wrapping_add(black_box(i));
    }
    x
}

/// Searches the map for the nearest free vehicle: CPU proportional to the
/// vehicle's search radius.
#[inline(never)]
pub(crate) fn find_nearest_vehicle(search_radius: u64, vehicle: Vehicle) -> u64 {
    black_box(spin(search_radius, vehicle as u64 + 7))
}

/// Cars also need a driver.
#[inline(never)]
pub(crate) fn check_driver_availability(search_radius: u64) -> u64 {
    black_box(spin(search_radius, 11))
}

/// Takes the region's shared lock, a blocking `std::sync::Mutex` (waiters
/// sleep in the kernel: blocked time in the wall profile, none in the CPU
/// profile), then holds it for `hold` units of work.
#[inline(never)]
pub(crate) fn mutex_lock(lock: &Mutex<u64>, hold: u64) -> u64 {
    let mut guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
    *guard = spin(hold, *guard);
    *guard
}

/// The client's share: preparing an order before sending it.
#[inline(never)]
pub(crate) fn prepare_order(seed: u64) -> u64 {
    black_box(spin(10, seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_grows_with_the_vehicle() {
        // The search spins `search_radius` work units: the order of the
        // radii is the order of the work (not timed: the machine is shared).
        assert!(Vehicle::Bike.search_radius() < Vehicle::Scooter.search_radius());
        assert!(Vehicle::Scooter.search_radius() < Vehicle::Car.search_radius());
        // Same inputs, same result: the work is deterministic.
        assert_eq!(
            find_nearest_vehicle(3, Vehicle::Car),
            find_nearest_vehicle(3, Vehicle::Car)
        );
    }

    #[test]
    fn mutex_lock_survives_poison() {
        let lock = std::sync::Arc::new(Mutex::new(1));
        let l = lock.clone();
        let _ = std::thread::spawn(move || {
            let _g = l.lock();
            panic!("poison");
        })
        .join();
        assert!(lock.is_poisoned());
        mutex_lock(&lock, 1);
    }
}
