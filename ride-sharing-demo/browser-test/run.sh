#!/usr/bin/env bash
# Usage: ride-sharing-demo/browser-test/run.sh REPORT.html
# Opens the report in headless Chromium (Debian's `chromium` package, at
# /usr/bin/chromium or $CHROMIUM) and checks a span's flame graph.
# Installs playwright-core from the lock file on first use.
set -euo pipefail
if [ $# -ne 1 ] || [ ! -f "$1" ]; then
  echo "usage: $0 REPORT.html" >&2
  exit 2
fi
REPORT="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
export REPORT
cd "$(dirname "$0")"
if [ ! -d node_modules/playwright-core ]; then
  npm ci --no-audit --no-fund
fi
exec node --test report.test.mjs
