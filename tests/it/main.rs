//! The integration tests, as one test binary (one link of tokio, axum and
//! OpenTelemetry instead of one per file). Each former test file is a module.
//!
//! Most tests touch process-wide state: the profiler (one per process, a
//! SIGPROF handler, timers), a global subscriber, environment variables, or
//! `fork`. Each such test starts with [`isolated!`]: it runs again, alone, in
//! a child process of this binary, and the test passes only if the child
//! does (see `isolate.rs`). Tests that only use their own values (the
//! Pyroscope double's rules, the report from synthetic profiles) run in this
//! process.
//!
//! Separate binaries remain for what cannot share one: `layer_alloc` (its
//! own counting `#[global_allocator]`), `sampler_main_thread` (no harness: it
//! runs on the process's main thread) and `tls_upload` (feature `tls`).

#[macro_use]
mod isolate;

#[path = "../common/mod.rs"]
mod common;
#[path = "../cpu_clock/mod.rs"]
#[macro_use]
mod cpu_clock;
#[path = "../dl_fixture/mod.rs"]
mod dl_fixture;
#[path = "../pprof_tool/mod.rs"]
mod pprof_tool;

mod alloc_not_installed;
mod build_twice;
mod config_env;
mod e2e_span_labels;
mod e2e_tokio_labels;
mod e2e_traces_to_profiles;
mod local_limits;
mod no_span_warning;
mod profile_id_sampled;
mod profiler_threads;
mod pyroscope_double;
mod report;
mod sampler_cdylib;
mod sampler_dlclose;
mod sampler_errors;
mod sampler_exit;
mod sampler_fork;
mod sampler_labels;
mod sampler_panic;
mod sampler_platform;
mod sampler_scale;
mod sampler_stack_pool;
mod sampler_stacks;
mod sampler_stress;
mod series_budget;
mod server_acceptance;
mod span_labels_budget;
mod symbols_replaced_library;
mod upload_faults;
mod wall_awaiting;
mod wall_blocked;
mod wall_eintr;
mod wall_sums;

/// The sample distance `sampler_stress` profiles allocations at: none here
/// (the `alloc_stress` binary installs the allocator wrapper and sets it).
const ALLOCATION_SAMPLE_BYTES: Option<u64> = None;
