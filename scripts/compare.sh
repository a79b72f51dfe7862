#!/usr/bin/env bash
# Side by side (issue 11): tracing-pyroscope against pyroscope 2.x with its
# pprof backend, on the same async workload, in one run. Builds the harness
# in compare/ (its own workspace and lock file, so pyroscope never enters
# the main workspace's dependency tree), installs Google's pprof tool if
# needed, and runs it:
#
#   bash scripts/compare.sh                 # arms (a)-(d), 3 rounds; see --help
#   bash scripts/compare.sh idle            # idle cost at 0/100/1000 threads
#   bash scripts/compare.sh tagcost         # layer cost vs pyroscope tag cost
#
# Extra arguments go to the harness (`bash scripts/compare.sh --help`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PPROF="${PPROF:-$(bash "$root/scripts/install-pprof.sh")}"
export PPROF
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/compare/target}"
cargo build --release --locked --manifest-path "$root/compare/Cargo.toml" >&2
exec "$CARGO_TARGET_DIR/release/tracing-pyroscope-compare" "$@"
