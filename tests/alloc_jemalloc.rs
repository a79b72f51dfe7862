//! Allocation profiles per span with the wrapper around jemalloc.

#[path = "alloc_common/mod.rs"]
mod alloc_common;

#[cfg(target_os = "linux")]
#[global_allocator]
static GLOBAL: tracing_pyroscope::Allocator<tikv_jemallocator::Jemalloc> =
    tracing_pyroscope::Allocator::new(tikv_jemallocator::Jemalloc);

#[test]
#[cfg_attr(
    any(debug_assertions, not(target_os = "linux")),
    ignore = "needs a release build on Linux (scripts/test.sh runs it in release)"
)]
fn each_span_gets_what_it_allocated_over_jemalloc() {
    alloc_common::exact_per_span("alloc-jemalloc");
}
