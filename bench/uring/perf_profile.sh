#!/bin/bash
# Where a loopback send's CPU goes: perf on the sending process, one way of
# writing a round at a time, 1,000 sockets at 100 rounds/s. Needs perf
# (Debian: linux-perf) and root (or perf_event_paranoid <= 1).
#   bench/uring/perf_profile.sh [OUTDIR]   (default /tmp/uring-perf)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-/tmp/uring-perf}
mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
for v in py-transport c-send uring; do
  "$py" bench/uring/round_bench.py --variants $v --modes steady --repeats 1 \
      --steady-seconds 10 > "$out/bench-$v.txt" 2>&1 &
  pid=$!
  sleep 4  # past the 1,000 connects, into the phase
  perf record -F 499 -g -p $pid -o "$out/perf-$v.data" -- sleep 5 > /dev/null 2>&1
  wait $pid
  echo "== $v"
  perf script -i "$out/perf-$v.data" -F comm,tid,ip,sym 2>/dev/null | "$py" bench/uring/perf_split.py
done
