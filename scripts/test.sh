#!/usr/bin/env bash
# The project's test command (README): installs what the tests need on a
# fresh machine, then runs every check. CI (.ci/run) calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# Google's pprof tool: the reference reader the tests check profiles with.
PPROF="$(bash scripts/install-pprof.sh)"
export PPROF

# Headless Chromium for the report's browser test.
if ! command -v chromium >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq chromium; } >&2
fi

cargo fmt --all -- --check
# One version of every crate in the tree.
dups="$(cargo tree -d -e normal,dev,build --workspace --locked | grep -E '^[a-z]' || true)"
if [ -n "$dups" ]; then echo "duplicate crate versions:"; echo "$dups"; exit 1; fi
cargo clippy --workspace --all-targets --release -- -D warnings
# Local files only: no uploader, no OpenTelemetry, no report.
cargo build --release --no-default-features
cargo clippy --release --no-default-features -- -D warnings
# The report command (feature `cli`).
cargo clippy --release --features cli --bin tracing-pyroscope-report -- -D warnings
# Docs, private items included, without a broken link or a warning.
RUSTDOCFLAGS="-D warnings" cargo doc --release --no-deps --document-private-items
# The crate as published: packs and builds from its own files alone.
cargo package --locked -p tracing-pyroscope
cargo test --workspace --release

# HTTPS uploads (feature `tls`) against a TLS test double with a test CA
# (needs `openssl` and `python3`).
cargo clippy --release --all-targets --features tls -- -D warnings
cargo test --release --features tls --test tls_upload

# Where the sampler cannot run, the crate builds and is inert: forced here.
RUSTFLAGS="--cfg tracing_pyroscope_unsupported" CARGO_TARGET_DIR=target/unsupported \
  cargo test --release --test it -- config_env:: sampler_platform::

# loom models of the label slot's sequence lock and the reclamation grace
# period (`loom_models` in src/context/slot.rs and src/sampler/reclaim.rs).
RUSTFLAGS="--cfg tracing_pyroscope_loom" CARGO_TARGET_DIR=target/loom \
  cargo test --release --lib loom

# Stacks must also be right when the code has frame pointers.
RUSTFLAGS="-C force-frame-pointers=yes" CARGO_TARGET_DIR=target/frame-pointers \
  cargo test --release --test it -- sampler_stacks::

# The demo's report, as a person sees it, in headless Chromium.
report_dir="$(mktemp -d)"
cargo run --release -p ride-sharing-demo -- --duration 8s --out "$report_dir"
bash ride-sharing-demo/browser-test/run.sh "$report_dir/report.html"
