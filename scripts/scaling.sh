#!/usr/bin/env bash
# The figures of docs/scaling.md, on one machine: a nats-server with
# JetStream, one ingest and two edges (release build), then
#
#  1. throughput: the loadgen floods the ingest (RATE_FLOOD records/s over
#     100 channels for 20 s); records/s is what each edge applied from the
#     stream, from the flood's start to the last record it applied;
#  2. added latency: 1,000 clients x 3 of 100 channels at 2,000 records/s,
#     against an edge and against a single process, RUNS times each
#     (alternating), medians of p50 and p99.
#
#   scripts/scaling.sh                    # RUNS=3
# Results under results/scaling/<time>/; needs nats-server (apt-get install nats-server).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh

RUNS=${RUNS:-3}
RATE_FLOOD=${RATE_FLOOD:-50000}
OUT=${OUT:-results/scaling/$(date +%Y%m%d-%H%M%S)}
NATS_SERVER=$(command -v nats-server || echo /usr/sbin/nats-server)
[ -x "$NATS_SERVER" ] || { echo "needs nats-server (apt-get install nats-server)"; exit 1; }

cargo build --release -q -p tickcast -p tickcast-loadgen
mkdir -p "$OUT"
T=target/release/tickcast
L=target/release/tickcast-loadgen
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$OUT/nats-store"; }
trap cleanup EXIT

nats=$(free_port)
"$NATS_SERVER" -js -sd "$OUT/nats-store" -a 127.0.0.1 -p "$nats" > "$OUT/nats.log" 2>&1 &
pids+=($!)
wait_port "$nats"
ingest=$(free_port); feed=$(free_port); edge_a=$(free_port); edge_b=$(free_port)
$T --nats "nats://127.0.0.1:$nats" --role ingest --listen "127.0.0.1:$ingest" \
  --feed "tcp:127.0.0.1:$feed" --stats-interval 0 --log warn > "$OUT/ingest.log" 2>&1 &
pids+=($!)
for port in "$edge_a" "$edge_b"; do
  $T --nats "nats://127.0.0.1:$nats" --role edge --listen "127.0.0.1:$port" \
    --stats-interval 0 --log warn > "$OUT/edge-$port.log" 2>&1 &
  pids+=($!)
done
wait_port "$feed"; wait_port "$edge_a"; wait_port "$edge_b"
healthy() { curl -sf "127.0.0.1:$1/healthz" > /dev/null; }
for port in "$ingest" "$edge_a" "$edge_b"; do
  for _ in $(seq 1 100); do healthy "$port" && break; sleep 0.1; done
done

applied() { curl -s "127.0.0.1:$1/metrics" | awk '/^tickcast_nats_applied_total/ { print $2 }'; }

echo "throughput: flooding the ingest at $RATE_FLOOD records/s for 20 s (load: $(cut -d' ' -f1-3 /proc/loadavg))"
before_a=$(applied "$edge_a"); before_b=$(applied "$edge_b")
start=$(date +%s.%N)
$L --url "ws://127.0.0.1:$edge_a/ws" --publish "tcp:127.0.0.1:$feed" --rate "$RATE_FLOOD" \
  --channels 100 --per-client 1 --clients 10 --duration 20s --no-progress --out "$OUT/flood" \
  > "$OUT/flood.txt" 2>&1 || true
# Until both edges have stopped applying for 2 s: the drain.
last_a=$(applied "$edge_a"); last_b=$(applied "$edge_b"); at=$(date +%s.%N); quiet=0
while [ "$quiet" -lt 20 ]; do
  sleep 0.1
  a=$(applied "$edge_a"); b=$(applied "$edge_b")
  if [ "$a" != "$last_a" ] || [ "$b" != "$last_b" ]; then
    last_a=$a; last_b=$b; at=$(date +%s.%N); quiet=0
  else
    quiet=$((quiet + 1))
  fi
done
python3 - "$OUT" "$start" "$at" "$before_a" "$last_a" "$before_b" "$last_b" <<'PY' | tee "$OUT/throughput.txt"
import sys
out, start, end, a0, a1, b0, b1 = sys.argv[1], *map(float, sys.argv[2:])
secs = end - start
for name, n in (("edge a", a1 - a0), ("edge b", b1 - b0)):
    print(f"{name}: {n:,.0f} records applied in {secs:.1f} s = {n / secs:,.0f} records/s")
PY

single=$(free_port); single_feed=$(free_port)
$T --listen "127.0.0.1:$single" --feed "tcp:127.0.0.1:$single_feed" --stats-interval 0 --log warn \
  > "$OUT/single.log" 2>&1 &
pids+=($!)
wait_port "$single"; wait_port "$single_feed"
latency() { # LABEL URL FEED
  cut -d' ' -f1-3 /proc/loadavg > "$OUT/$1.load"
  /usr/bin/time -f "%U %S" -o "$OUT/$1.loadgen-cpu" \
    $L --url "$2" --publish "tcp:$3" --rate 2000 --channels 100 --per-client 3 --clients 1000 \
    --duration 30s --no-progress --out "$OUT/$1" > "$OUT/$1.txt" 2>&1 || true
  echo "  $1: $(grep -E 'latency \(us, CO' "$OUT/$1.txt" | cut -c1-90)"
}
for i in $(seq 1 "$RUNS"); do
  echo "latency run $i"
  latency "via-nats-$i" "ws://127.0.0.1:$edge_a/ws" "127.0.0.1:$feed"
  latency "single-$i" "ws://127.0.0.1:$single/ws" "127.0.0.1:$single_feed"
done
python3 - "$OUT" <<'PY' | tee "$OUT/latency.txt"
import json, os, statistics, sys
out = sys.argv[1]
rows = {}
for name in sorted(os.listdir(out)):
    path = os.path.join(out, name, "result.json")
    if not os.path.isfile(path) or name == "flood":
        continue
    r = json.load(open(path))
    lat = r["latency"]["corrected"]
    pub = r.get("publisher") or {}
    load = open(os.path.join(out, name + ".load")).read().split()[0]
    rows.setdefault(name.rsplit("-", 1)[0], []).append(
        (lat["p50"] / 1000, lat["p99"] / 1000, pub.get("delivered_pct", float("nan")),
         r["chains"]["gaps"], float(load)))
print(f"{'path':>10} {'runs':>5} {'p50 ms':>8} {'p99 ms':>8} {'delivered %':>12} {'gaps':>5}  p99 per run / load before")
med = {}
for path, runs in rows.items():
    p50 = statistics.median(r[0] for r in runs)
    p99 = statistics.median(r[1] for r in runs)
    med[path] = (p50, p99)
    each = ", ".join(f"{r[1]:.1f}/{r[4]:.2f}" for r in runs)
    print(f"{path:>10} {len(runs):>5} {p50:>8.1f} {p99:>8.1f} {min(r[2] for r in runs):>12.3f} "
          f"{max(r[3] for r in runs):>5}  {each}")
if "via-nats" in med and "single" in med:
    print(f"added by the NATS hop: p50 {med['via-nats'][0] - med['single'][0]:+.1f} ms, "
          f"p99 {med['via-nats'][1] - med['single'][1]:+.1f} ms")
PY
