//! Decides once whether the sampler is compiled, and names the answer
//! `cfg(tp_sampler)` for the rest of the crate.
//!
//! The sampler runs on Linux on x86_64 and aarch64. `--cfg
//! tracing_pyroscope_unsupported` (in `RUSTFLAGS`) forces the unsupported
//! path on a supported machine, so CI can test what other platforms get: an
//! inert layer and a guard that says profiling is off.

use std::env;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rustc-check-cfg=cfg(tp_sampler)");
    println!("cargo::rustc-check-cfg=cfg(tracing_pyroscope_unsupported)");
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let forced_off = env::var_os("CARGO_CFG_TRACING_PYROSCOPE_UNSUPPORTED").is_some();
    if os == "linux" && (arch == "x86_64" || arch == "aarch64") && !forced_off {
        println!("cargo::rustc-cfg=tp_sampler");
    }
}
