//! The sampler's stress test (`tests/it/sampler_stress.rs`: fork,
//! dlopen/dlclose, thread churn, malloc-heavy workers) again, with the
//! allocator wrapper installed and allocation and heap profiling on at a
//! 1 KiB sample distance: no crash, no deadlock, drops only counted.

#[macro_use]
#[path = "it/isolate.rs"]
mod isolate;

#[path = "dl_fixture/mod.rs"]
mod dl_fixture;
#[path = "pprof_tool/mod.rs"]
mod pprof_tool;
#[path = "it/sampler_stress.rs"]
mod sampler_stress;

#[global_allocator]
static GLOBAL: tracing_pyroscope::Allocator = tracing_pyroscope::Allocator::system();

/// Allocation profiling at 1 KiB.
const ALLOCATION_SAMPLE_BYTES: Option<u64> = Some(1024);
