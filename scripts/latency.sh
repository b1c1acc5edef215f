#!/usr/bin/env bash
# One command for an end-to-end latency run: builds tickcast and
# tickcast-loadgen (release), starts tickcast with a tcp feed on free loopback
# ports, drives it with the loadgen in publisher mode, then prints the
# loadgen's percentiles next to the server's own end-to-end histogram.
#
#   scripts/latency.sh                       # 1000 clients, 1 channel, 100 updates/s, 20 s
#   CLIENTS=2000 RATE=100 DURATION=30s scripts/latency.sh
#   CHANNELS=200 PER_CLIENT=10 CLIENTS=4000 RATE=2000 scripts/latency.sh
#
# Results (table, result.json, latency.hgrm, latency.svg, server-stats.json)
# go to results/latency/<time>/.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh

CLIENTS=${CLIENTS:-1000}
RATE=${RATE:-100}
DURATION=${DURATION:-20s}
CHANNELS=${CHANNELS:-1}
PER_CLIENT=${PER_CLIENT:-1}
OUT=${OUT:-results/latency/$(date +%Y%m%d-%H%M%S)}

cargo build --release -q -p tickcast -p tickcast-loadgen
WS_PORT=$(free_port)
FEED_PORT=$(free_port)
mkdir -p "$OUT"

target/release/tickcast serve --listen "127.0.0.1:$WS_PORT" --feed "tcp:127.0.0.1:$FEED_PORT" \
  --stats-interval 5 > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$WS_PORT/healthz" >/dev/null && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$WS_PORT/healthz" >/dev/null || { echo "tickcast did not start; see $OUT/server.log" >&2; exit 1; }

status=0
target/release/tickcast-loadgen --url "ws://127.0.0.1:$WS_PORT/ws" \
  --publish "tcp:127.0.0.1:$FEED_PORT" --rate "$RATE" --clients "$CLIENTS" \
  --channels "$CHANNELS" --per-client "$PER_CLIENT" --channel-prefix bench.c \
  --duration "$DURATION" --out "$OUT" --label tickcast | tee "$OUT/loadgen.txt" || status=$?
curl -sf "http://127.0.0.1:$WS_PORT/stats" > "$OUT/server-stats.json"

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
server = json.load(open(f"{out}/server-stats.json"))["latency"]["end_to_end"]
client = json.load(open(f"{out}/result.json"))
lat = client["latency"]["corrected"]
print("\nend-to-end latency, microseconds (loadgen: scheduled send -> client read; server: feed stamp -> socket write)")
print(f"{'':>10} {'p50':>10} {'p90':>10} {'p99':>10} {'p99.9':>10} {'max':>10} {'count':>10}")
def row(name, d, keys):
    print(f"{name:>10} " + " ".join(f"{d.get(k, float('nan')):>10.1f}" for k in keys[:-1]) + f" {d.get(keys[-1], 0):>10}")
row("server", server, ["p50_us", "p90_us", "p99_us", "p99_9_us", "max_us", "count"])
if lat:
    row("loadgen", lat, ["p50", "p90", "p99", "p99_9", "max", "count"])
PY
echo "results in $OUT"
exit $status
