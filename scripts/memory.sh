#!/usr/bin/env bash
# Target 5: what an idle subscribed connection costs, tickcast beside the
# uWebSockets.js reference server. For each server and run: start it, read
# its RSS, open CLIENTS idle connections subscribed to one quiet channel,
# sample the RSS while they are all connected, and divide the growth by
# CLIENTS. Prints the median per server.
#
#   scripts/memory.sh                       # 10,000 connections, 3 runs each
#   RUNS=1 CLIENTS=2000 scripts/memory.sh
#   TICKCAST_ARGS="--engine-shards 1" scripts/memory.sh
#
# Results: results/memory/<time>/ (the loadgen's tables and rss.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh

RUNS=${RUNS:-3}
CLIENTS=${CLIENTS:-10000}
HOLD=${HOLD:-8s}
TICKCAST_ARGS=${TICKCAST_ARGS:-}
UWS_DIR=${UWS_DIR:-target/uws}
OUT=${OUT:-results/memory/$(date +%Y%m%d-%H%M%S)}

setup_uws
cargo build --release -q -p tickcast -p tickcast-loadgen
mkdir -p "$OUT"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
established() { # connections accepted on port $1
  ss -Htn state established "( sport = :$1 )" | wc -l
}

pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null || true' EXIT

measure() { # LABEL PORT
  local label=$1 port=$2 before peak lg
  sleep 1 # let start-up allocations settle before the baseline
  before=$(rss_kb "$pid")
  target/release/tickcast-loadgen --url "ws://127.0.0.1:$port/ws" --clients "$CLIENTS" \
    --subscribe idle.c0 --warmup 0s --duration "$HOLD" --no-progress --no-files \
    > "$OUT/$label.txt" 2>&1 &
  lg=$!
  # Wait (bounded) until every connection is up, then sample while they idle.
  for _ in $(seq 1 600); do
    [ "$(established "$port")" -ge "$CLIENTS" ] && break
    sleep 0.1
  done
  peak=0
  while kill -0 "$lg" 2>/dev/null; do
    local now; now=$(rss_kb "$pid")
    [ "$(established "$port")" -ge "$CLIENTS" ] && [ "$now" -gt "$peak" ] && peak=$now
    sleep 0.2
  done
  wait "$lg" || true
  echo "$label before_kb=$before peak_kb=$peak per_conn_bytes=$(( (peak - before) * 1024 / CLIENTS ))" | tee -a "$OUT/rss.txt"
}

for i in $(seq 1 "$RUNS"); do
  ws=$(free_port); feed=$(free_port)
  # shellcheck disable=SC2086
  target/release/tickcast serve --listen "127.0.0.1:$ws" --feed "tcp:127.0.0.1:$feed" \
    --stats-interval 0 --log warn $TICKCAST_ARGS > "$OUT/tickcast-$i.log" 2>&1 &
  pid=$!
  wait_port "$ws"
  measure "tickcast-$i" "$ws"
  kill "$pid"; wait "$pid" 2>/dev/null || true

  ws=$(free_port); feed=$(free_port)
  (cd "$UWS_DIR" && exec node uws.js --ws "127.0.0.1:$ws" --ingest "127.0.0.1:$feed") > "$OUT/uws-$i.log" 2>&1 &
  pid=$!
  wait_port "$ws"
  measure "uws-$i" "$ws"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
pid=""

python3 - "$OUT/rss.txt" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, *kv = line.split()
    server = label.rsplit("-", 1)[0]
    rows.setdefault(server, []).append(int(dict(x.split("=") for x in kv)["per_conn_bytes"]))
for server, values in rows.items():
    print(f"{server:>10}: median {statistics.median(values):,.0f} bytes per idle connection (runs: {values})")
PY
