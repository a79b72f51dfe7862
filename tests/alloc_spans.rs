//! Allocation profiles per span with the wrapper around the system
//! allocator (its own test binary: its own `#[global_allocator]`).

#[path = "alloc_common/mod.rs"]
mod alloc_common;

#[global_allocator]
static GLOBAL: tracing_pyroscope::Allocator = tracing_pyroscope::Allocator::system();

#[test]
#[cfg_attr(
    any(debug_assertions, not(target_os = "linux")),
    ignore = "needs a release build on Linux (scripts/test.sh runs it in release)"
)]
fn each_span_gets_what_it_allocated() {
    alloc_common::exact_per_span("alloc-spans");
}

#[test]
#[cfg_attr(
    any(debug_assertions, not(target_os = "linux")),
    ignore = "needs a release build on Linux (scripts/test.sh runs it in release)"
)]
fn in_use_follows_what_a_span_keeps() {
    alloc_common::live_heap("alloc-heap");
}
