#!/usr/bin/env bash
# Instructions the server executes per delivery of a market-board quote
# update, plain and with every subscriber compressed (benches/fanout_count.rs
# under callgrind): applying the update, encoding (and compressing) its
# frame once, queueing it to every subscriber and the writers' take. Each
# count is taken at N and 2N updates; the difference divided by the extra
# deliveries is the cost of one delivery, without set-up and exit.
#
#   scripts/deflate-instructions.sh         # N=1000 updates, SESSIONS="100 1000 8000"
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
N=${N:-1000}
SESSIONS=${SESSIONS:-"100 1000 8000"}
cargo bench --bench fanout_count --no-run -q 2>/dev/null
bin=$(ls -t target/release/deps/fanout_count-* | grep -v '\.d$' | head -1)
count() { callgrind_count "$bin" "$@"; } # SESSIONS UPDATES MODE
printf '%9s %8s %16s %16s %24s\n' sessions mode "Ir at $N" "Ir at $((2 * N))" "instructions/delivery"
for s in $SESSIONS; do
  for mode in plain deflate; do
    one=$(count "$s" "$N" "$mode"); two=$(count "$s" $((2 * N)) "$mode")
    printf '%9s %8s %16s %16s %24s\n' "$s" "$mode" "$one" "$two" \
      "$(python3 -c "print(f'{($two - $one) / ($N * $s):.1f}')")"
  done
done
