#!/usr/bin/env bash
# Target 6, the slow consumer: the same load WITHOUT and WITH stalled
# subscribers (connections that subscribe, then never read), alternating
# (A B A B ...), each run against a fresh tickcast with a tcp feed. Samples the
# server's RSS (VmRSS) during every run, then prints the medians of the normal
# clients' latency per case, the p99 ratio WITH/WITHOUT, the largest RSS of
# each case, and the server's slow-consumer counters from /stats.
#
#   scripts/slow-consumer.sh                  # 1000 clients, 1 channel, 100 updates/s, 10 s, 1 stalled, 3 runs
#   RUNS=5 STALLED=10 scripts/slow-consumer.sh
#   OUTBOX_BYTES=262144 DURATION=30s scripts/slow-consumer.sh    # a smaller outbox bound
#
# OUTBOX_BYTES, when set, goes to the server as limits.outbox_bytes in a config
# file (otherwise the server's default, 4 MiB). TICKCAST_ARGS are added to
# `tickcast serve`. Results (per-run loadgen output, result.json, server logs,
# /stats, RSS samples, summary.json) go to results/slow-consumer/<time>/.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh

RUNS=${RUNS:-3}
CLIENTS=${CLIENTS:-1000}
RATE=${RATE:-100}
DURATION=${DURATION:-10s}
STALLED=${STALLED:-1}
CHANNELS=${CHANNELS:-1}
PER_CLIENT=${PER_CLIENT:-1}
OUTBOX_BYTES=${OUTBOX_BYTES:-}
TICKCAST_ARGS=${TICKCAST_ARGS:-}
READY_TIMEOUT=${READY_TIMEOUT:-20}
OUT=${OUT:-results/slow-consumer/$(date +%Y%m%d-%H%M%S)}
BIN=${CARGO_TARGET_DIR:-target}/release

[ "$STALLED" -ge 1 ] || { echo "STALLED must be at least 1" >&2; exit 2; }
cargo build --release -q -p tickcast -p tickcast-loadgen
mkdir -p "$OUT"

server_args=()
if [ -n "$OUTBOX_BYTES" ]; then
  printf '[limits]\noutbox_bytes = %s\n' "$OUTBOX_BYTES" > "$OUT/tickcast.toml"
  server_args+=(--config "$OUT/tickcast.toml")
fi

SERVER=""
SAMPLER=""
cleanup() {
  if [ -n "$SAMPLER" ]; then kill "$SAMPLER" 2>/dev/null || true; wait "$SAMPLER" 2>/dev/null || true; fi
  if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi
  SAMPLER=""; SERVER=""
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_ready WS_PORT FEED_PORT LOG: until /healthz answers and the feed port
# accepts, or READY_TIMEOUT seconds pass, or the server exits.
wait_ready() {
  local deadline=$((SECONDS + READY_TIMEOUT))
  while :; do
    if ! kill -0 "$SERVER" 2>/dev/null; then
      echo "tickcast exited during start-up; see $3" >&2; return 1
    fi
    if curl -sf -m 1 "http://127.0.0.1:$1/healthz" >/dev/null 2>&1 \
      && (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then
      return 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "tickcast not ready after ${READY_TIMEOUT}s; see $3" >&2; return 1
    fi
    sleep 0.05
  done
}

# sample_rss PID FILE: one "unix_seconds rss_kb" line every 100 ms while PID
# lives (bash builtins only, so sampling adds no processes to the machine).
sample_rss() {
  local key value rest found
  while :; do
    found=""
    { while read -r key value rest; do
        if [ "$key" = "VmRSS:" ]; then found=$value; break; fi
      done < "/proc/$1/status"; } 2>/dev/null || true
    [ -n "$found" ] || return 0
    echo "$EPOCHREALTIME $found" >> "$2"
    sleep 0.1
  done
}

one_run() { # NAME STALLED_COUNT
  local name=$1 stalled=$2 ws feed status=0
  ws=$(free_port); feed=$(free_port)
  # shellcheck disable=SC2086
  "$BIN/tickcast" serve --listen "127.0.0.1:$ws" --feed "tcp:127.0.0.1:$feed" \
    --stats-interval 0 --log warn ${server_args[@]+"${server_args[@]}"} $TICKCAST_ARGS > "$OUT/$name.server.log" 2>&1 &
  SERVER=$!
  wait_ready "$ws" "$feed" "$OUT/$name.server.log"
  : > "$OUT/$name.rss"
  sample_rss "$SERVER" "$OUT/$name.rss" &
  SAMPLER=$!
  "$BIN/tickcast-loadgen" --url "ws://127.0.0.1:$ws/ws" --publish "tcp:127.0.0.1:$feed" \
    --rate "$RATE" --clients "$CLIENTS" --channels "$CHANNELS" --per-client "$PER_CLIENT" \
    --pick uniform --channel-prefix bench.c --duration "$DURATION" --stalled "$stalled" \
    --label "$name" --no-progress --out "$OUT/$name" > "$OUT/$name.txt" 2>&1 || status=$?
  curl -sf -m 5 "http://127.0.0.1:$ws/stats" > "$OUT/$name.stats.json" || echo '{}' > "$OUT/$name.stats.json"
  cleanup
  echo "  $name: loadgen exit $status, $(grep -E '^ +latency \(us, CO' "$OUT/$name.txt" | sed 's/^ *//' || echo 'no latency line')"
}

echo "slow consumer: $CLIENTS clients at $RATE updates/s over $CHANNELS channel(s), $DURATION, $STALLED stalled; $RUNS runs each"
for i in $(seq 1 "$RUNS"); do
  echo "run $i"
  one_run "without-$i" 0
  one_run "with-$i" "$STALLED"
done

python3 - "$OUT" "${OUTBOX_BYTES:-4194304}" <<'PY'
import json, os, statistics, sys
out, outbox = sys.argv[1], int(sys.argv[2])
runs = {"without": [], "with": []}
for name in sorted(os.listdir(out)):
    path = os.path.join(out, name, "result.json")
    if not os.path.isfile(path):
        continue
    case = name.rsplit("-", 1)[0]
    r = json.load(open(path))
    lat = r["latency"]["corrected"]
    pub = r.get("publisher") or {}
    try:
        stats = json.load(open(os.path.join(out, name + ".stats.json")))
    except ValueError:
        stats = {}
    rss = [int(line.split()[1]) for line in open(os.path.join(out, name + ".rss")) if line.strip()]
    st = r.get("stalled") or {}
    runs[case].append({
        "run": name,
        "p50_us": lat["p50"], "p99_us": lat["p99"], "p99_9_us": lat["p99_9"], "max_us": lat["max"],
        "delivered_pct": pub.get("delivered_pct", float("nan")),
        "gaps": r["chains"]["gaps"], "exit": r["exit_code"],
        "rss_max_mb": max(rss) / 1024 if rss else float("nan"),
        "slow_consumer_holds": stats.get("slow_consumer_holds"),
        "coalesced_diffs": stats.get("coalesced_diffs"),
        "slow_consumer_closes": stats.get("slow_consumer_closes"),
        "stalled": st,
    })

print(f"\nper run ({out})")
print(f"{'run':>10} {'p50_us':>9} {'p99_us':>9} {'p99.9_us':>9} {'deliv%':>8} {'gaps':>5} {'rss_MB':>8} "
      f"{'holds':>6} {'coalesced':>9} {'sc_closes':>9}  stalled at the end")
for case in ("without", "with"):
    for x in runs[case]:
        st = x["stalled"]
        end = "-"
        if st:
            closes = ",".join(f"{n}x{c}" for c, n in st.get("closed_by_server", {}).items()) or "none"
            end = (f"{st['subscribed']}/{st['requested']} subscribed, {st['kept_open']} kept open, "
                   f"closed: {closes}, {st['dropped']} dropped, {st['drained_bytes'] / 1e6:.2f} MB unread")
        print(f"{x['run']:>10} {x['p50_us']:>9.1f} {x['p99_us']:>9.1f} {x['p99_9_us']:>9.1f} "
              f"{x['delivered_pct']:>8.3f} {x['gaps']:>5} {x['rss_max_mb']:>8.1f} "
              f"{str(x['slow_consumer_holds']):>6} {str(x['coalesced_diffs']):>9} {str(x['slow_consumer_closes']):>9}  {end}")

def med(case, key):
    vals = [x[key] for x in runs[case] if x[key] is not None]
    return statistics.median(vals) if vals else float("nan")

print(f"\nmedians over runs; latency of the normal clients only (CO-corrected, us)")
print(f"{'case':>10} {'runs':>5} {'p50':>9} {'p99':>9} {'p99.9':>9} {'max RSS MB':>11}")
summary = {"outbox_bytes": outbox, "cases": {}}
for case in ("without", "with"):
    rss_max = max((x["rss_max_mb"] for x in runs[case]), default=float("nan"))
    summary["cases"][case] = {
        "runs": runs[case],
        "median": {k: med(case, k) for k in ("p50_us", "p99_us", "p99_9_us")},
        "rss_max_mb": rss_max,
    }
    print(f"{case:>10} {len(runs[case]):>5} {med(case, 'p50_us'):>9.1f} {med(case, 'p99_us'):>9.1f} "
          f"{med(case, 'p99_9_us'):>9.1f} {rss_max:>11.1f}")
p99_without, p99_with = med("without", "p99_us"), med("with", "p99_us")
ratio = p99_with / p99_without if p99_without > 0 else float("nan")
summary["p99_ratio"] = ratio
print(f"\np99 WITH/WITHOUT: {ratio:.3f} ({'within' if ratio <= 1.10 else 'NOT within'} the 10 % of target 6)")
growth = summary["cases"]["with"]["rss_max_mb"] - summary["cases"]["without"]["rss_max_mb"]
summary["rss_growth_mb"] = growth
print(f"max RSS WITH - WITHOUT: {growth:+.1f} MB (outbox bound per connection: {outbox} bytes = {outbox / 2**20:.2f} MiB)")
for key in ("slow_consumer_holds", "coalesced_diffs", "slow_consumer_closes"):
    vals = {case: [x[key] for x in runs[case]] for case in runs}
    print(f"{key:>21}: without {vals['without']}, with {vals['with']}")
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
print(f"results in {out}")
PY
