#!/usr/bin/env bash
# The load-test figures of BENCHMARKS.md, in one run: a release server on the
# embedded store with the built-in bank at zero latency, and `payvisor-bench`
# on the same machine. Prints each run's JSON summary, and the server's peak
# resident memory for the 100,000-account run.
#
#   bash benches/load.sh [RUNS]      (default 3 runs of each measurement)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-3}"
cargo build --release --quiet --workspace --bins
BIN=target/release/payvisor
BENCH=target/release/payvisor-bench
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

serve() { # $1: port; a fresh data directory each time
  rm -rf "$WORK/data"
  RUST_LOG=warn "$BIN" serve --listen "127.0.0.1:$1" --data-dir "$WORK/data" \
    --bank-latency-ms 0..0 > "$WORK/server.out" 2> "$WORK/server.err" &
  SERVER=$!
  for _ in $(seq 100); do grep -q listening "$WORK/server.out" && return; sleep 0.1; done
  echo "server did not start" >&2; exit 1
}
stop() { kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; }
bench() { "$BENCH" "$@" 2>/dev/null | tail -1; }

echo "# saturation: closed loop, 256 in flight, 1,000 accounts, 30 s"
for _ in $(seq "$RUNS"); do
  serve 53001; bench --server 127.0.0.1:53001 --duration 30 --rate max --concurrency 256 --accounts 1000 --echo-duration 10; stop
done
echo "# one hot account: closed loop, 64 in flight, 20 s"
for _ in $(seq "$RUNS"); do
  serve 53002; bench --server 127.0.0.1:53002 --duration 20 --rate max --concurrency 64 --accounts 1 --echo-duration 0; stop
done
for rate in 1500 3000; do
  echo "# open loop at $rate/s, 1,000 accounts, 30 s"
  for _ in $(seq "$RUNS"); do
    serve 53003; bench --server 127.0.0.1:53003 --duration 30 --rate "$rate" --concurrency 8 --accounts 1000 --echo-duration 0; stop
  done
done
echo "# memory: 100,000 accounts, closed loop, 60 s (peak RSS of the server)"
serve 53004
bench --server 127.0.0.1:53004 --duration 60 --rate max --concurrency 256 --accounts 100000 --echo-duration 0 --settle-timeout 60
echo "{\"peak_rss_mib\": $(( $(grep VmHWM /proc/$SERVER/status | awk '{print $2}') / 1024 ))}"
stop
