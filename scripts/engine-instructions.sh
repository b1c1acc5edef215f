#!/usr/bin/env bash
# Instructions the engine's state stage executes per applied update with
# nobody subscribed, at 1, 4 and 16 fanout shards (benches/engine_count.rs
# under callgrind). Each count is taken at N and 2N updates; the difference
# divided by N is the cost of one update, without set-up and exit.
#
#   scripts/engine-instructions.sh           # N=20000, shards "1 4 16"
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
N=${N:-20000}
SHARDS=${SHARDS:-"1 4 16"}
cargo bench --bench engine_count --no-run -q 2>/dev/null
bin=$(ls -t target/release/deps/engine_count-* | grep -v '\.d$' | head -1)
count() { callgrind_count "$bin" "$@"; } # SHARDS UPDATES
printf '%7s %16s %16s %22s\n' shards "Ir at $N" "Ir at $((2 * N))" "instructions/update"
for s in $SHARDS; do
  one=$(count "$s" "$N"); two=$(count "$s" $((2 * N)))
  printf '%7s %16s %16s %22s\n' "$s" "$one" "$two" "$(( (two - one) / N ))"
done
