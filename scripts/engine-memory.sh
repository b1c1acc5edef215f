#!/usr/bin/env bash
# Memory independent of shards (issue 10): the server's RSS with CHANNELS
# channels, each with its history full (HISTORY updates kept), at 1 shard
# and at 16 shards. Channel state and history are kept once, by the state
# stage, so the two should be within 10 % of each other. No client is
# connected: what is measured is what the engine holds for the channels.
#
# For each shard count and run: start the release server with a tcp feed
# and `history = HISTORY`, let it settle, read its RSS, publish
# CHANNELS x (HISTORY + 1) records from one producer, wait (bounded) until
# /stats says every record was applied, let it settle, read the RSS again.
# Prints each run and the median growth per shard count. Run it on a quiet
# machine (no build or test running).
#
#   scripts/engine-memory.sh                         # 10,000 channels, 64 kept, 3 runs
#   RUNS=1 CHANNELS=2000 SHARDS="1 4 16" scripts/engine-memory.sh
#
# Results: results/engine-memory/<time>/ (server logs and rss.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh

RUNS=${RUNS:-3}
CHANNELS=${CHANNELS:-10000}
HISTORY=${HISTORY:-64}
SHARDS=${SHARDS:-"1 16"}
OUT=${OUT:-results/engine-memory/$(date +%Y%m%d-%H%M%S)}

cargo build --release -q -p tickcast
mkdir -p "$OUT"
# Room for every channel's full history: the budget must not trim it.
cat > "$OUT/config.toml" <<TOML
[limits]
max_channels = $((CHANNELS * 2))
max_history_bytes = 4294967296
[namespace_defaults]
history = $HISTORY
TOML

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# Sends CHANNELS x (HISTORY + 1) quote-sized records to the feed at $1.
produce() {
  python3 - "$1" "$CHANNELS" "$HISTORY" <<'PY'
import json, socket, sys
port, channels, history = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
sock = socket.create_connection(("127.0.0.1", port))
for round_ in range(history + 1):
    lines = []
    for c in range(channels):
        data = {"bid": 100 + round_ / 100, "ask": 100.5 + round_ / 100,
                "bid_size": c % 97, "ask_size": round_, "last": 100.25, "volume": c * round_}
        lines.append(json.dumps({"channel": f"mem.c{c}", "data": data}, separators=(",", ":")))
    sock.sendall(("\n".join(lines) + "\n").encode())
sock.close()
PY
}

# Waits (up to 120 s) until the server at port $1 has applied $2 records.
wait_applied() {
  for _ in $(seq 1 1200); do
    local applied
    applied=$(python3 -c 'import json,sys,urllib.request; print(json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/stats"))["updates_in"])' "$1" 2>/dev/null || echo 0)
    [ "$applied" -ge "$2" ] && return 0
    sleep 0.1
  done
  echo "the server at port $1 did not apply $2 records within 120 s" >&2; return 1
}

pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null || true' EXIT

total=$((CHANNELS * (HISTORY + 1)))
for i in $(seq 1 "$RUNS"); do
  for shards in $SHARDS; do
    ws=$(free_port); feed=$(free_port)
    target/release/tickcast serve --config "$OUT/config.toml" --listen "127.0.0.1:$ws" \
      --feed "tcp:127.0.0.1:$feed" --engine-shards "$shards" --stats-interval 0 --log warn \
      > "$OUT/tickcast-s$shards-$i.log" 2>&1 &
    pid=$!
    wait_port "$ws"
    sleep 1 # let start-up allocations settle before the baseline
    before=$(rss_kb "$pid")
    produce "$feed"
    wait_applied "$ws" "$total"
    sleep 2
    after=$(rss_kb "$pid")
    echo "shards=$shards run=$i before_kb=$before after_kb=$after growth_kb=$((after - before))" | tee -a "$OUT/rss.txt"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    pid=""
  done
done

python3 - "$OUT/rss.txt" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    kv = dict(x.split("=") for x in line.split())
    rows.setdefault(int(kv["shards"]), []).append((int(kv["after_kb"]), int(kv["growth_kb"])))
base = None
for shards in sorted(rows):
    after = statistics.median(a for a, _ in rows[shards])
    growth = statistics.median(g for _, g in rows[shards])
    base = base or after
    print(f"{shards:>4} shards: median RSS {after / 1024:,.1f} MB "
          f"(growth {growth / 1024:,.1f} MB; {100 * (after - base) / base:+.1f} % vs the first)")
PY
