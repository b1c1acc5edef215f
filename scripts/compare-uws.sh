#!/usr/bin/env bash
# Side-by-side runs of tickcast and the uWebSockets.js reference server with
# the same loadgen on the same machine, alternating (A B A B ...), then the
# median of each figure per server.
#
#   scripts/compare-uws.sh                 # target 1: 2000 clients, 1 channel, 100 updates/s
#   RUNS=5 CLIENTS=8000 scripts/compare-uws.sh
#   CHANNELS=200 PER_CLIENT=10 PICK=zipf CLIENTS=4000 RATE=2000 scripts/compare-uws.sh
#   DEFLATE=1 RUNS=5 CLIENTS=8000 scripts/compare-uws.sh   # adds tickcast-deflate: the
#       same server with every client on permessage-deflate (loadgen --deflate)
#   PIN=1 ...   # server on CPU 0, loadgen on CPU 1 (taskset): neither takes the other's core
#   NO_UWS=1 ...  # tickcast runs only
#
# UWS_DIR is a writable copy of shared/peers/uws (made and set up on first
# use; never committed). Results: results/compare/<time>/.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh

RUNS=${RUNS:-3}
CLIENTS=${CLIENTS:-2000}
RATE=${RATE:-100}
DURATION=${DURATION:-15s}
CHANNELS=${CHANNELS:-1}
PER_CLIENT=${PER_CLIENT:-1}
PICK=${PICK:-uniform}
TICKCAST_ARGS=${TICKCAST_ARGS:-}
UWS_DIR=${UWS_DIR:-target/uws}
OUT=${OUT:-results/compare/$(date +%Y%m%d-%H%M%S)}

PIN_SERVER=""; PIN_LOADGEN=""
if [ -n "${PIN:-}" ]; then PIN_SERVER="taskset -c 0"; PIN_LOADGEN="taskset -c 1"; fi
[ -n "${NO_UWS:-}" ] || setup_uws
cargo build --release -q -p tickcast -p tickcast-loadgen
mkdir -p "$OUT"


# CPU seconds (user + system) a process has used so far, from /proc.
cpu_seconds() { # PID
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"
}

# Each run records, next to its result, the load average before it started
# and the CPU seconds of the server and of the loadgen: a comparison is only
# fair if both servers had the same machine and the loadgen was not the limit.
loadgen() { # URL FEED LABEL [LOADGEN ARGS...]
  cut -d' ' -f1-3 /proc/loadavg > "$OUT/$3.load"
  /usr/bin/time -f "%U %S" -o "$OUT/$3.loadgen-cpu" $PIN_LOADGEN target/release/tickcast-loadgen "${@:4}" --url "$1" --publish "tcp:$2" --rate "$RATE" --clients "$CLIENTS" \
    --channels "$CHANNELS" --per-client "$PER_CLIENT" --pick "$PICK" --channel-prefix bench.c \
    --duration "$DURATION" --no-progress --out "$OUT/$3" > "$OUT/$3.txt" 2>&1 || true
}

# One run of tickcast: a fresh server, the loadgen against it, its CPU.
run_tickcast() { # LABEL [LOADGEN ARGS...]
  ws=$(free_port); feed=$(free_port)
  # shellcheck disable=SC2086
  $PIN_SERVER target/release/tickcast serve --listen "127.0.0.1:$ws" --feed "tcp:127.0.0.1:$feed" \
    --stats-interval 0 --log warn $TICKCAST_ARGS > "$OUT/$1.log" 2>&1 &
  pid=$!
  wait_port "$ws"; wait_port "$feed"
  echo "run: $1 ${*:2}"
  loadgen "ws://127.0.0.1:$ws/ws" "127.0.0.1:$feed" "$@"
  cpu_seconds $pid > "$OUT/$1.server-cpu"
  # The server's own share: feed stamp to the socket taking the frame
  # (p99 since start, seconds), apart from the time the loadgen takes to read.
  curl -s "127.0.0.1:$ws/metrics" |
    awk '/^tickcast_stage_latency_quantile_seconds\{stage="end_to_end",quantile="0.99"\}/ { print $2 }' \
    > "$OUT/$1.server-p99" || true
  kill $pid; wait $pid 2>/dev/null || true
}

for i in $(seq 1 "$RUNS"); do
  run_tickcast "tickcast-$i"
  if [ -n "${DEFLATE:-}" ]; then
    run_tickcast "tickcast_deflate-$i" --deflate
  fi

  [ -z "${NO_UWS:-}" ] || continue
  ws=$(free_port); feed=$(free_port)
  (cd "$UWS_DIR" && exec $PIN_SERVER node uws.js --ws "127.0.0.1:$ws" --ingest "127.0.0.1:$feed") > "$OUT/uws-$i.log" 2>&1 &
  pid=$!
  wait_port "$ws"; wait_port "$feed"
  echo "run $i: uws"
  loadgen "ws://127.0.0.1:$ws/ws" "127.0.0.1:$feed" "uws-$i"
  cpu_seconds $pid > "$OUT/uws-$i.server-cpu"
  kill $pid; wait $pid 2>/dev/null || true
done

python3 - "$OUT" <<'PY'
import json, os, statistics, sys
out = sys.argv[1]
rows = {}
for name in sorted(os.listdir(out)):
    path = os.path.join(out, name, "result.json")
    if not os.path.isfile(path):
        continue
    server = name.rsplit("-", 1)[0]
    r = json.load(open(path))
    def first_number(suffix, combine=sum):
        try:
            return combine(float(x) for x in open(os.path.join(out, name + suffix)).read().split())
        except (OSError, ValueError):
            return float("nan")
    lat = r["latency"]["corrected"]
    pub = r.get("publisher") or {}
    rows.setdefault(server, []).append({
        "delivered_pct": pub.get("delivered_pct", float("nan")),
        "p50_ms": lat["p50"] / 1000, "p90_ms": lat["p90"] / 1000, "p99_ms": lat["p99"] / 1000,
        "p99_9_ms": lat["p99_9"] / 1000, "max_ms": lat["max"] / 1000,
        "deliveries_per_s": r["deliveries_per_s"], "gaps": r["chains"]["gaps"],
        "server_cpu_s": first_number(".server-cpu"),
        "server_p99_ms": first_number(".server-p99") * 1000,
        "loadgen_cpu_s": first_number(".loadgen-cpu"),
        "load1": first_number(".load", combine=lambda xs: next(iter(xs))),
    })
keys = ["delivered_pct", "deliveries_per_s", "p50_ms", "p90_ms", "p99_ms", "p99_9_ms", "max_ms", "gaps",
        "server_cpu_s", "loadgen_cpu_s", "load1", "server_p99_ms"]
print(f"\nmedians over runs ({out})")
print(f"{'server':>10} {'runs':>5} " + " ".join(f"{k:>16}" for k in keys))
summary = {}
for server, runs in rows.items():
    med = {k: statistics.median(r[k] for r in runs) for k in keys}
    summary[server] = {"runs": runs, "median": med}
    print(f"{server:>10} {len(runs):>5} " + " ".join(f"{med[k]:>16.2f}" for k in keys))
print("\nevery run (p99 ms / server CPU s / loadgen CPU s / load average before)")
for server, runs in rows.items():
    print(f"{server:>10} " + "  ".join(
        f"{r['p99_ms']:.2f}/{r['server_cpu_s']:.1f}/{r['loadgen_cpu_s']:.1f}/{r['load1']:.2f}" for r in runs))
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
PY
