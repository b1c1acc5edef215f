#!/usr/bin/env bash
# Target 4: raise the update rate on one channel with 4,000 clients and find,
# for tickcast and for the uWebSockets.js reference server, the highest rate
# at which at least 99.9 % of deliveries arrive and p99 stays under 100 ms.
# Each rate is a scripts/compare-uws.sh set (A B A B ..., medians of RUNS).
#
#   scripts/saturation.sh                            # rates 25 50 75 100 150 200
#   RATES="50 100" RUNS=3 scripts/saturation.sh
#
# Results: results/saturation/<time>/rate-<R>/ and summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

RATES=${RATES:-"25 50 75 100 150 200"}
export CLIENTS=${CLIENTS:-4000}
export RUNS=${RUNS:-3}
export DURATION=${DURATION:-10s}
OUT=${OUT:-results/saturation/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"

for rate in $RATES; do
  echo "== rate $rate/s ($CLIENTS clients, $((rate * CLIENTS)) deliveries/s)"
  RATE=$rate OUT="$OUT/rate-$rate" scripts/compare-uws.sh | tail -3
done

python3 - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import json, os, sys
out = sys.argv[1]
rates = sorted(int(d.split("-")[1]) for d in os.listdir(out) if d.startswith("rate-"))
best = {}
print(f"{'rate/s':>7} {'server':>9} {'delivered %':>12} {'p99 ms':>9} {'ok':>4}")
for rate in rates:
    path = os.path.join(out, f"rate-{rate}", "summary.json")
    if not os.path.isfile(path):
        continue
    for server, s in sorted(json.load(open(path)).items()):
        m = s["median"]
        ok = m["delivered_pct"] >= 99.9 and m["p99_ms"] < 100
        if ok:
            best[server] = max(best.get(server, 0), rate)
        print(f"{rate:>7} {server:>9} {m['delivered_pct']:>12.3f} {m['p99_ms']:>9.1f} {'yes' if ok else 'no':>4}")
for server in sorted(best):
    print(f"{server}: highest passing rate {best[server]}/s")
PY
