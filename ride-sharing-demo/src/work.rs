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

/// Points of a car's route: a few hundred KiB of short-lived vectors per
/// request (an allocation profile shows them under `/car`).
const ROUTE_POINTS: usize = 2048;
/// Legs a route is planned in: each leg's points are a new vector.
const ROUTE_LEGS: usize = 8;

/// Plans a car's route: builds each leg's points and the candidate
/// routes, all dropped before the request returns.
#[inline(never)]
pub(crate) fn build_route(seed: u64) -> u64 {
    let mut legs: Vec<Vec<[u64; 2]>> = Vec::new();
    for leg in 0..ROUTE_LEGS as u64 {
        let points: Vec<[u64; 2]> = (0..ROUTE_POINTS as u64)
            .map(|i| [seed ^ i, leg.wrapping_mul(i)])
            .collect();
        legs.push(points);
    }
    let labels: Vec<String> = (0..64).map(|i| format!("leg-{seed}-{i}")).collect();
    black_box(legs.iter().map(Vec::len).sum::<usize>() as u64 ^ labels.len() as u64)
}

/// Recently planned routes, kept by a region: grows with every request and
/// is trimmed to its newest half when full (an in-use profile shows what
/// it holds).
#[derive(Default)]
pub(crate) struct RouteCache {
    routes: std::collections::VecDeque<Vec<u64>>,
}

/// Routes a [`RouteCache`] holds before it is trimmed (about 16 MiB).
const CACHE_ROUTES: usize = 512;

/// Keeps this request's route (32 KiB) in the cache, trimming it when full.
#[inline(never)]
pub(crate) fn cache_route(cache: &Mutex<RouteCache>, seed: u64) -> u64 {
    let route: Vec<u64> = (0..4096).map(|i| seed.wrapping_mul(i)).collect();
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    cache.routes.push_back(route);
    if cache.routes.len() > CACHE_ROUTES {
        let keep = CACHE_ROUTES / 2;
        while cache.routes.len() > keep {
            cache.routes.pop_front();
        }
    }
    cache.routes.len() as u64
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
    fn the_route_cache_is_trimmed() {
        let cache = Mutex::new(RouteCache::default());
        for i in 0..(CACHE_ROUTES as u64 * 3) {
            assert!(cache_route(&cache, i) <= CACHE_ROUTES as u64);
        }
        assert_eq!(build_route(1), build_route(1));
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
