#!/usr/bin/env bash
# Cost on the wire (issue 14): bytes per update a subscriber receives from
# recorded NDJSON feeds, for full-state push (computed), tickcast's diffs,
# diffs under a typical field filter, and each with permessage-deflate at
# the default settings. The feeds go through tickcast's own engine to
# outboxes as fast as it applies them (examples/wire_cost.rs); byte counts
# are deterministic, so any machine, busy or not, gives the same table.
#
#   scripts/wire-cost.sh                          # feeds/, tests/fixtures/ and tests/fixtures/browser/ NDJSON
#   scripts/wire-cost.sh a.ndjson b.ndjson.gz     # any feeds (.gz: gunzipped first)
#   FIELDS="quotes=bid,ask book=bids" scripts/wire-cost.sh ...   # other filters
#   MEASURE=1 scripts/wire-cost.sh                # also what the compression defaults
#                                                 # come from (timings: a quiet machine)
#
# Prints markdown tables; writes the bar chart to $SVG (docs/wire-cost.svg)
# and the figures to results/wire-cost/<time>/.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-results/wire-cost/$(date +%Y%m%d-%H%M%S)}
SVG=${SVG:-docs/wire-cost.svg}
mkdir -p "$OUT"

feeds=("$@")
if [ ${#feeds[@]} -eq 0 ]; then
  feeds=(feeds/*.ndjson tests/fixtures/*.ndjson tests/fixtures/browser/*.ndjson)
fi
inputs=()
for feed in "${feeds[@]}"; do
  case "$feed" in
    *.gz) plain="$OUT/$(basename "${feed%.gz}")"; gunzip -c "$feed" > "$plain"; inputs+=("$plain") ;;
    *) inputs+=("$feed") ;;
  esac
done
args=(--json "$OUT/wire-cost.json")
for f in ${FIELDS:-}; do args+=(--fields "$f"); done
if [ -n "${MEASURE:-}" ]; then args+=(--measure); fi

cargo build --release -q --example wire_cost
"${CARGO_TARGET_DIR:-target}/release/examples/wire_cost" "${args[@]}" "${inputs[@]}" | tee "$OUT/wire-cost.md"

# Grouped horizontal bars, wire bytes per update on a log scale.
python3 - "$OUT/wire-cost.json" "$SVG" <<'PY'
import json, math, sys
rows = json.load(open(sys.argv[1]))
colors = ["#9e9e9e", "#d0d0d0", "#1f77b4", "#9ecae1", "#2ca02c", "#a1d99b"]
bar, gap, left, width = 9, 12, 300, 560
lo, hi = 10, 10 ** math.ceil(math.log10(max(
    m["wire_per_update"] for r in rows for m in r["modes"] if m["available"]) + 1))
def x(v):
    return left + width * (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
top = 60
height = top + len(rows) * (6 * bar + gap) + 40
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 120}" height="{height}" '
       'font-family="sans-serif" font-size="11">',
       f'<text x="10" y="20" font-size="14">Wire bytes per update a subscriber receives (log scale)</text>']
modes = [m["mode"] for m in rows[0]["modes"]]
for i, mode in enumerate(modes):
    lx = 10 + (i % 3) * 190
    ly = 34 + (i // 3) * 14
    out.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{colors[i]}"/>'
               f'<text x="{lx + 14}" y="{ly}">{mode}</text>')
y = top
for r in rows:
    label = f'{r["feed"][:28]} {r["namespace"]}'
    out.append(f'<text x="{left - 6}" y="{y + 3 * bar + 4}" text-anchor="end">{label}</text>')
    for i, m in enumerate(r["modes"]):
        if m["available"]:
            v = m["wire_per_update"]
            out.append(f'<rect x="{left}" y="{y}" width="{x(v) - left:.1f}" height="{bar - 1}" fill="{colors[i]}"/>'
                       f'<text x="{x(v) + 3:.1f}" y="{y + bar - 1}" font-size="9">{v:.0f}</text>')
        y += bar
    y += gap
for p in range(int(math.log10(lo)), int(math.log10(hi)) + 1):
    gx = x(10 ** p)
    out.append(f'<line x1="{gx:.1f}" y1="{top - 4}" x2="{gx:.1f}" y2="{y}" stroke="#ccc" stroke-width="0.5"/>'
               f'<text x="{gx:.1f}" y="{y + 14}" text-anchor="middle">{10 ** p:,}</text>')
out.append('</svg>')
open(sys.argv[2], "w").write("\n".join(out) + "\n")
print(f"\nchart: {sys.argv[2]}")
PY
