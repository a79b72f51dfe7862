#!/usr/bin/env bash
# Soak: the ride-sharing demo (three profiled region services and a
# profiled load generator) uploads to a loopback Pyroscope that cycles
# through faults (scripts/soak-server.py: ok, down, refusing, slow, 500,
# 429 with Retry-After), for a long time. Every --every it prints each
# process's RSS and the demo's Stats counters; at the end, the RSS series
# per process, its growth after --settle, and the crash count.
#
#   bash scripts/soak.sh [--duration 10m] [--every 30s] [--phase 20s]
#                        [--settle 60s] [--window 10s] [--max-growth PCT]
#                        [--rate N] [--bin PATH]
#
# --duration  how long the demo runs (default 10m)
# --every     how often RSS and the counters are printed (default 30s);
#             RSS is read every second for the growth figures
# --phase     how long each fault lasts (default 20s: a cycle is 2 min)
# --slow      how long a slow answer takes (default 5s)
# --settle    warm-up: growth is measured against the RSS at its end
#             (default 60s)
# --window    each side of the growth figure is the lowest per-second
#             RSS reading in a window this long: the last --window seconds
#             of --settle, and of the run (default 10s). The lowest, because
#             the profiler's RSS moves within each upload interval (debug
#             info read to symbolize, then released with the heap it used),
#             and the level it comes back to is what a leak raises; the
#             highest readings are printed too (max_pct).
# --max-growth  fail (exit 1) if any process's RSS, or its anonymous part,
#             grew by more than PCT percent after --settle (default: report
#             only)
# --rate      orders per second of the demo's load generator (default 10,
#             the demo's own default)
# --bin       the demo binary (default: builds it, release)
# Stress settings (each overridable from the environment): profiles are
# cut every PYROSCOPE_UPLOAD_INTERVAL=1s and sampled at
# PYROSCOPE_SAMPLE_RATE=1000 Hz, 10x the crate's defaults each: 10x more
# profiles through the faults, 10x larger ones, and caches (the
# symbolizer's) that warm up within the first minute.
#
# SOAK_RSS_PARTS=1 also prints each process's anonymous and file-backed RSS.
#
# Output lines (stable, for tests):
#   SOAK t=<s> phase=<fault> rss_kb=<name>:<kB>,... | <demo progress line>
#   SOAK_RSS <name> <kB> <kB> ...          (one reading per --every)
#   SOAK_GROWTH <name> base_kb=<kB> last_kb=<kB> last_pct=<p>
#       anon_base_kb=<kB> anon_last_kb=<kB> anon_pct=<p>
#       base_max_kb=<kB> max_kb=<kB> max_pct=<p>
#     (base, last: the lowest readings of a window at the end of --settle
#     and of the run;
#     anon_*: the same for anonymous RSS, the heap; max_pct: the highest
#     reading after --settle against the highest before)
#   SOAK_END crashes=<n> demo_exit=<code> growth_pct=<p> anon_growth_pct=<p>
#       peak_growth_pct=<p>
#     (the largest last_pct, anon_pct and max_pct over the processes)
set -euo pipefail
cd "$(dirname "$0")/.."

duration=10m every=30s phase=20s slow=5s settle=60s window=10s max_growth="" bin="" rate=10
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="$2"; shift 2 ;;
    --every) every="$2"; shift 2 ;;
    --phase) phase="$2"; shift 2 ;;
    --slow) slow="$2"; shift 2 ;;
    --settle) settle="$2"; shift 2 ;;
    --window) window="$2"; shift 2 ;;
    --max-growth) max_growth="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    -h|--help) sed -n '2,50p' "$0"; exit 0 ;;
    *) echo "soak.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

# Seconds from 90s / 10m / 1h / 45.
secs() {
  local v="$1"
  case "$v" in
    *h) echo $(( ${v%h} * 3600 )) ;;
    *m) echo $(( ${v%m} * 60 )) ;;
    *s) echo "${v%s}" ;;
    *) echo "$v" ;;
  esac
}
duration_s=$(secs "$duration") every_s=$(secs "$every") phase_s=$(secs "$phase")
slow_s=$(secs "$slow") settle_s=$(secs "$settle") window_s=$(secs "$window")

if [ -z "$bin" ]; then
  cargo build --release --quiet -p ride-sharing-demo
  bin="${CARGO_TARGET_DIR:-target}/release/ride-sharing-demo"
fi

work="$(mktemp -d)"
server_pid="" demo_pid=""
cleanup() {
  [ -n "$demo_pid" ] && kill "$demo_pid" 2>/dev/null || true
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The fault server; its stdin stays open until we close fd 3.
mkfifo "$work/server.in"
python3 scripts/soak-server.py "$phase_s" "$slow_s" <"$work/server.in" >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
exec 3>"$work/server.in"
for _ in $(seq 100); do
  port=$(awk '/^PORT /{print $2}' "$work/server.out")
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "${port:-}" ] || { echo "soak.sh: the fault server did not start" >&2; cat "$work/server.err" >&2; exit 1; }

echo "soak: demo for ${duration_s}s against 127.0.0.1:$port (faults of ${phase_s}s each), every ${every_s}s" >&2
PYROSCOPE_SERVER_ADDRESS="http://127.0.0.1:$port" \
PYROSCOPE_UPLOAD_INTERVAL="${PYROSCOPE_UPLOAD_INTERVAL:-1s}" \
PYROSCOPE_SAMPLE_RATE="${PYROSCOPE_SAMPLE_RATE:-1000}" \
  "$bin" --duration "${duration_s}s" --rate "$rate" --out "$work/profiles" >"$work/demo.out" 2>"$work/demo.err" &
demo_pid=$!

# The demo's children: name (region or load) per pid.
declare -A names=() series=() anon_series=()
find_children() {
  local pid args name
  for pid in $(pgrep -P "$demo_pid" 2>/dev/null || true); do
    [ -n "${names[$pid]:-}" ] && continue
    args=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
    case "$args" in
      *--region\ *) name=$(sed -E 's/.*--region ([^ ]+).*/\1/' <<<"$args") ;;
      *--load*) name=load ;;
      *) continue ;;
    esac
    names[$pid]=$name
  done
}
# Total and anonymous RSS (kB).
rss_kb() { awk '/^VmRSS:/{t=$2} /^RssAnon:/{a=$2} END{if (t != "") print t, a}' "/proc/$1/status" 2>/dev/null || true; }
# Anonymous and file-backed parts of RSS.
rss_parts() { awk '/^RssAnon:/{a=$2} /^RssFile:/{f=$2} END{print "anon=" a ",file=" f}' "/proc/$1/status" 2>/dev/null || true; }

start=$(date +%s)
crashes=0
declare -A gone=()
next=$every_s last_read=0
while kill -0 "$demo_pid" 2>/dev/null; do
  sleep 1
  now=$(( $(date +%s) - start ))
  find_children
  # A child that vanishes while the demo still runs has crashed (the
  # demo stops its children only at its end, after --duration).
  for pid in "${!names[@]}"; do
    if [ -z "${gone[$pid]:-}" ] && ! kill -0 "$pid" 2>/dev/null; then
      gone[$pid]=1
      if [ "$now" -lt "$duration_s" ]; then
        crashes=$((crashes + 1))
        echo "soak: ${names[$pid]} (pid $pid) died at ${now}s" >&2
      fi
    fi
  done
  # RSS is read every second (the growth figures use all of it: the
  # profiler's RSS moves within each upload interval, while it reads debug
  # info and encodes); it is printed every --every.
  if [ "$now" -le "$duration_s" ] && [ "$now" -gt "$last_read" ]; then
    last_read=$now
    for pid in $(printf '%s\n' "${!names[@]}" | sort -n); do
      [ -n "${gone[$pid]:-}" ] && continue
      kb="" anon=""; read -r kb anon < <(rss_kb "$pid") || true
      [ -z "${kb:-}" ] && continue
      series[${names[$pid]}]+=" $now:$kb"
      anon_series[${names[$pid]}]+=" $now:$anon"
    done
  fi
  if [ "$now" -ge "$next" ] && [ "$next" -le "$duration_s" ]; then
    at=$next
    next=$((next + every_s))
    rss_line=""
    for pid in $(printf '%s\n' "${!names[@]}" | sort -n); do
      [ -n "${gone[$pid]:-}" ] && continue
      kb="" anon=""; read -r kb anon < <(rss_kb "$pid") || true
      [ -z "${kb:-}" ] && continue
      name=${names[$pid]}
      rss_line+="${rss_line:+,}$name:$kb"
      [ -n "${SOAK_RSS_PARTS:-}" ] && echo "  $name $(rss_parts "$pid")" >&2
    done
    current_phase=$(awk '/^PHASE /{p=$2} END{print p}' "$work/server.err")
    progress=$(grep -v '^$' "$work/demo.err" | tail -n 1 | tr -d '\r')
    echo "SOAK t=$at phase=$current_phase rss_kb=$rss_line | $progress"
  fi
done
set +e
wait "$demo_pid"
demo_exit=$?
set -e
demo_pid=""
exec 3>&-
wait "$server_pid" 2>/dev/null || true
server_pid=""

# Growth after --settle. RSS moves within each upload interval (debug
# info read to symbolize, then released), so each side is the lowest of the
# per-second readings in a window: the last --window seconds up to
# --settle (base) against the last --window seconds of the run (last).
# max_pct compares the highest readings after --settle with the highest
# before.
window_min() { # series from to
  tr ' ' '\n' <<<"$1" | awk -F: -v a="$2" -v b="$3" 'NF == 2 && $1 > a && $1 <= b && (m == "" || $2 < m) { m = $2 } END { print m }'
}
window_max() {
  tr ' ' '\n' <<<"$1" | awk -F: -v a="$2" -v b="$3" 'NF == 2 && $1 > a && $1 <= b && $2 > m { m = $2 } END { print m }'
}
worst=0 peak=0 anon_worst=0
for name in $(printf '%s\n' "${!series[@]}" | sort); do
  # The series as printed: one reading per --every.
  echo "SOAK_RSS $name$(tr ' ' '\n' <<<"${series[$name]}" | awk -F: -v e="$every_s" 'NF == 2 && $1 % e == 0 { printf " %s", $2 }')"
  last_t=$(tr ' ' '\n' <<<"${series[$name]}" | awk -F: 'NF == 2 { t = $1 } END { print t }')
  base=$(window_min "${series[$name]}" $((settle_s - window_s)) "$settle_s")
  last=$(window_min "${series[$name]}" $((last_t - window_s)) "$last_t")
  anon_base=$(window_min "${anon_series[$name]}" $((settle_s - window_s)) "$settle_s")
  anon_last=$(window_min "${anon_series[$name]}" $((last_t - window_s)) "$last_t")
  base_max=$(window_max "${series[$name]}" 0 "$settle_s")
  max=$(window_max "${series[$name]}" "$settle_s" "$last_t")
  if [ -z "$base" ] || [ -z "$last" ] || [ "$last_t" -le "$settle_s" ]; then
    echo "SOAK_GROWTH $name no samples on both sides of ${settle_s}s"
    continue
  fi
  pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (a - b) * 100 / b }'; }
  last_pct=$(pct "$last" "$base") anon_pct=$(pct "$anon_last" "$anon_base") max_pct=$(pct "$max" "$base_max")
  echo "SOAK_GROWTH $name base_kb=$base last_kb=$last last_pct=$last_pct anon_base_kb=$anon_base anon_last_kb=$anon_last anon_pct=$anon_pct base_max_kb=$base_max max_kb=$max max_pct=$max_pct"
  worst=$(awk -v a="$worst" -v b="$last_pct" 'BEGIN { print (b > a ? b : a) }')
  anon_worst=$(awk -v a="$anon_worst" -v b="$anon_pct" 'BEGIN { print (b > a ? b : a) }')
  peak=$(awk -v a="$peak" -v b="$max_pct" 'BEGIN { print (b > a ? b : a) }')
done
echo "soak: demo output (last lines):" >&2
tail -n 3 "$work/demo.err" >&2 || true
echo "soak: the fault server's log:" >&2
cat "$work/server.err" >&2 || true
echo "SOAK_END crashes=$crashes demo_exit=$demo_exit growth_pct=$worst anon_growth_pct=$anon_worst peak_growth_pct=$peak"

[ "$crashes" -eq 0 ] && [ "$demo_exit" -eq 0 ] || exit 1
if [ -n "$max_growth" ] && awk -v w="$worst" -v a="$anon_worst" -v m="$max_growth" 'BEGIN { exit !(w > m || a > m) }'; then
  echo "soak: RSS grew ${worst}% (anonymous ${anon_worst}%) after the first ${settle_s}s (limit ${max_growth}%)" >&2
  exit 1
fi
