#!/usr/bin/env bash
# Issue 16's growth figures on one store, in one run: throughput and p99 at
# saturation on an empty store, then again once FILL_SECONDS of load have
# filled it (360 s: about 700,000 payments on --store lsm on the 2-core
# machine); the store's size on disk per stored
# payment; and the time from a `kill -9` under load (the bank slow, so
# thousands of payments wait for it) to serving again.
#
#   PAYVISOR_STORE=lsm bash benches/growth.sh [FILL_SECONDS]
#
# FILL_SECONDS (default 360) of closed-loop load fill the store. Every load
# run verifies that nothing was lost, doubled, left unsettled or
# unbalanced; the run cut by the kill cannot be verified by its own client
# (the crash tests show what a kill loses: nothing acknowledged).
set -euo pipefail
cd "$(dirname "$0")/.."
FILL="${1:-360}"
STORE="${PAYVISOR_STORE:-sqlite}"
cargo build --release --quiet -p payvisor -p payvisor-bench
BIN=target/release/payvisor
BENCH=target/release/payvisor-bench
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
PORT=53011

serve() { # the rest: extra server flags; the data directory is kept
  : > "$WORK/server.out"
  RUST_LOG=warn "$BIN" serve --store "$STORE" --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" \
    "$@" > "$WORK/server.out" 2>> "$WORK/server.err" &
  SERVER=$!
}
wait_listening() {
  for _ in $(seq 6000); do grep -q listening "$WORK/server.out" && return; sleep 0.01; done
  echo "server did not start" >&2; tail "$WORK/server.err" >&2; exit 1
}
bench() { # $1: label; the rest: bench's arguments
  local label="$1"; shift
  if ! "$BENCH" --server "127.0.0.1:$PORT" --server-pid "$SERVER" --echo-duration 0 "$@" \
      > "$WORK/bench.out" 2> "$WORK/bench.err"; then
    echo "payvisor-bench failed ($label):" >&2; tail -20 "$WORK/bench.err" >&2; exit 1
  fi
  tail -1 "$WORK/bench.out" > "$WORK/$label"
  echo "$label $(cat "$WORK/$label")"
}
SATURATION=(--duration 30 --rate max --concurrency 256 --accounts 1000)

echo "# store $STORE: saturation on an empty store, 30 s"
serve --bank-latency-ms 0..0; wait_listening
bench empty "${SATURATION[@]}"
echo "# filling: ${FILL} s of closed-loop load"
bench fill --duration "$FILL" --rate max --concurrency 256 --accounts 1000 \
  --e2e-sample-per-mille 0 --settle-timeout 600 --seed 2
echo "# saturation with the store filled, 30 s"
bench full "${SATURATION[@]}" --seed 3
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
DISK_KIB=$(du -sk "$WORK/data" | awk '{print $1}')

echo "# kill -9 under load, the bank answering in 2-4 s, then restart"
serve --bank-latency-ms 2000..4000; wait_listening
"$BENCH" --server "127.0.0.1:$PORT" --echo-duration 0 --duration 30 --rate max \
  --concurrency 256 --accounts 1000 --seed 4 > /dev/null 2>&1 &
LOAD=$!
sleep 15
kill -9 "$SERVER"; wait "$SERVER" 2>/dev/null || true
KILLED_AT=$(date +%s.%N)
kill "$LOAD" 2>/dev/null || true; wait "$LOAD" 2>/dev/null || true
serve --bank-latency-ms 0..0; wait_listening
SERVING_AT=$(date +%s.%N)
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true

python3 - "$WORK" "$DISK_KIB" "$KILLED_AT" "$SERVING_AT" "$STORE" <<'PY'
import json, sys
work, disk_kib, killed, serving, store = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
run = lambda name: json.loads(open(f"{work}/{name}").read())
empty, fill, full = run("empty"), run("fill"), run("full")
stored = empty["acknowledged"] + fill["acknowledged"]
print(f"\n# issue 16's growth figures, store {store}")
print(f"payments stored before the second run           {stored:>12,}")
print(f"saturation, empty store (payments/s)            {empty['payments_per_sec']:>12,.0f}")
print(f"saturation, store filled (payments/s)           {full['payments_per_sec']:>12,.0f}   ratio {full['payments_per_sec'] / empty['payments_per_sec']:.2f} (target >= 0.8)")
print(f"create p99, empty / filled (ms)                 {empty['create_p99_ms']:>8,.1f} / {full['create_p99_ms']:,.1f}   ratio {full['create_p99_ms'] / empty['create_p99_ms']:.2f} (target <= 1.2)")
print(f"fill: payments/s over the fill, first / last fifth {fill['payments_per_sec']:,.0f}, {fill['first_fifth_per_sec']:,.0f} / {fill['last_fifth_per_sec']:,.0f}")
print(f"bytes written per payment, empty / fill / filled {empty['server_write_bytes_per_payment']:,.0f} / {fill['server_write_bytes_per_payment']:,.0f} / {full['server_write_bytes_per_payment']:,.0f}")
print(f"server CPU per payment (us), empty / filled     {empty['server_cpu_us_per_payment']:,.0f} / {full['server_cpu_us_per_payment']:,.0f}")
print(f"disk per stored payment (bytes)                 {disk_kib * 1024 / (stored + full['acknowledged']):>12,.0f}")
print(f"kill -9 under load to serving again (s)         {serving - killed:>12.2f}")
PY
