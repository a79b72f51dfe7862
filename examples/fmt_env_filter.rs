//! Logging and profiling together: `fmt` with an `EnvFilter` as a
//! *per-layer* filter, the profiling layer unfiltered, the guard in `main`.
//!
//! ```text
//! RUST_LOG=info PYROSCOPE_PROFILES_DIR=/tmp/profiles \
//!     cargo run --release --example fmt_env_filter
//! ```
//!
//! `RUST_LOG` filters only what `fmt` prints. Given to the registry as a
//! global filter instead (`registry().with(EnvFilter::from_default_env())`),
//! `RUST_LOG=info` would switch off every DEBUG span for every layer, and
//! the profiler would see no span at all.

use tracing_subscriber::prelude::*;
use tracing_subscriber::{fmt, EnvFilter};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The guard lives as long as `main`: dropping it stops profiling and
    // flushes the last profile. Returning it from a setup function is fine;
    // letting it drop there (`let (layer, _) = …`) stops profiling at once.
    let (profiling, _guard) = tracing_pyroscope::from_env()?;
    tracing_subscriber::registry()
        .with(fmt::layer().with_filter(EnvFilter::from_default_env()))
        .with(profiling)
        .init();

    tracing::info!("serving");
    for id in 0..3 {
        handle_request(id);
    }
    Ok(())
}

/// A DEBUG span, as tower-http's `TraceLayer` makes by default.
#[tracing::instrument(level = "debug")]
fn handle_request(id: u64) -> u64 {
    burn_cpu(std::time::Duration::from_millis(150))
}

/// Busy work for about `d` of wall time.
fn burn_cpu(d: std::time::Duration) -> u64 {
    let start = std::time::Instant::now();
    let mut x = 0u64;
    while start.elapsed() < d {
        for i in 0..10_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    x
}

// Run by `cargo test` (the example is declared with `test = true`).
#[cfg(test)]
mod tests {
    /// With `RUST_LOG=info`, the DEBUG request spans still reach the
    /// profiler: the span index lists them.
    #[test]
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    fn debug_spans_reach_the_profiler_under_rust_log_info() {
        let dir = std::env::temp_dir().join(format!("tp-fmt-env-filter-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // The binary's only test: nothing reads the environment meanwhile.
        std::env::set_var("RUST_LOG", "info");
        std::env::set_var("PYROSCOPE_PROFILES_DIR", &dir);
        std::env::set_var("OTEL_SERVICE_NAME", "fmt-env-filter-example");
        super::main().expect("main");
        let index = std::fs::read_to_string(dir.join("spans.jsonl")).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        let requests = index
            .lines()
            .filter(|l| l.contains(r#""name":"handle_request""#))
            .count();
        assert!(
            requests >= 1,
            "no handle_request span in the span index:\n{index}"
        );
    }
}
