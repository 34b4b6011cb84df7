#!/usr/bin/env bash
# Saturation of two builds in one run, alternating, so that the machine's
# state affects both alike: closed loop, 256 in flight, 1,000 accounts, on
# the embedded store with a zero-latency bank. Prints each run's JSON line.
#
# The load comes from this tree's `payvisor-bench` (built in release).
#
#   bash benches/compare.sh OLD_BINARY NEW_BINARY [RUNS] [SECONDS]
set -euo pipefail
OLD="$1"; NEW="$2"; RUNS="${3:-3}"; SECONDS_PER_RUN="${4:-20}"
cargo build --release --quiet -p payvisor-bench
BENCH="$(cd "$(dirname "$0")/.." && pwd)/target/release/payvisor-bench"
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
run() { # $1: label, $2: server binary
  rm -rf "$WORK/data"
  RUST_LOG=warn "$2" serve --listen 127.0.0.1:53101 --data-dir "$WORK/data" \
    --bank-latency-ms 0..0 > "$WORK/server.out" 2> "$WORK/server.err" &
  local server=$!
  for _ in $(seq 100); do grep -q listening "$WORK/server.out" && break; sleep 0.1; done
  printf '%s ' "$1"
  "$BENCH" --server 127.0.0.1:53101 --duration "$SECONDS_PER_RUN" --rate max \
    --concurrency 256 --accounts 1000 --echo-duration 0 2>/dev/null | tail -1
  kill "$server"; wait "$server" 2>/dev/null || true
}
for _ in $(seq "$RUNS"); do
  run old "$OLD"
  run new "$NEW"
done
