#!/usr/bin/env bash
# Where an idle connection's heap bytes go, by allocation site (target 5;
# scripts/memory.sh measures the RSS). tickcast is built with the system
# allocator (`--features system-alloc`: heaptrack sees malloc's calls, not
# mimalloc's) and run under heaptrack; CLIENTS idle connections subscribe
# to one quiet channel, as in scripts/memory.sh; once all are established
# the server is killed, so what heaptrack reports as leaked is the live
# heap with every connection up. Prints the sites that hold at least 8
# bytes per connection, in bytes per connection.
#
#   scripts/memory-profile.sh                  # 2,000 connections
#   CLIENTS=5000 scripts/memory-profile.sh
#
# Results: results/memory-profile/<time>/ (heaptrack data and report).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh

CLIENTS=${CLIENTS:-2000}
OUT=${OUT:-results/memory-profile/$(date +%Y%m%d-%H%M%S)}
command -v heaptrack >/dev/null || { echo "needs heaptrack (apt-get install heaptrack)" >&2; exit 1; }

if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release -q -p tickcast --features system-alloc
  cp target/release/tickcast target/release/tickcast-system-alloc
  cargo build --release -q -p tickcast -p tickcast-loadgen # put the usual binary back
fi
mkdir -p "$OUT"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

established() { ss -Htn state established "( sport = :$1 )" | wc -l; }

ws=$(free_port); feed=$(free_port)
heaptrack -o "$OUT/heaptrack" target/release/tickcast-system-alloc serve \
  --listen "127.0.0.1:$ws" --feed "tcp:127.0.0.1:$feed" --stats-interval 0 --log warn \
  > "$OUT/server.log" 2>&1 &
wait_port "$ws"
sleep 1
target/release/tickcast-loadgen --url "ws://127.0.0.1:$ws/ws" --clients "$CLIENTS" \
  --subscribe idle.c0 --warmup 0s --duration 20s --no-progress --no-files \
  > "$OUT/loadgen.txt" 2>&1 &
lg=$!
for _ in $(seq 1 600); do
  [ "$(established "$ws")" -ge "$CLIENTS" ] && break
  sleep 0.1
done
sleep 2 # every subscribe answered
server=$(pgrep -n -f "tickcast-system-alloc serve --listen 127.0.0.1:$ws")
kill -9 "$server"
wait || true
kill "$lg" 2>/dev/null || true

data=$(ls "$OUT"/heaptrack.* | head -1)
heaptrack_print -f "$data" --print-leaks 1 -n 1000 --print-peaks 0 --print-allocators 0 \
  --print-temporary 0 --merge-backtraces 0 > "$OUT/report.txt" 2>&1 || true
python3 - "$OUT/report.txt" "$CLIENTS" <<'PY' | tee "$OUT/sites.txt"
# heaptrack_print lists each backtrace as "<size> leaked over <n> calls
# from" and its frames; group them by their first three frames outside the
# allocator and the standard library, and print bytes per connection.
import re, sys
text, clients = open(sys.argv[1]).read(), int(sys.argv[2])
unit = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
plumbing = re.compile(r"^(_RNv|_ZN|alloc::|core::|std::|hashbrown::|bytes::bytes_mut|__rust"
                      r"|_\$LT\$(alloc|core|std|hashbrown|bytes))")
def tidy(name):
    name = re.sub(r"::h[0-9a-f]{16}$", "", name)
    for a, b in [("$LT$", "<"), ("$GT$", ">"), ("$u7b$$u7b$closure$u7d$$u7d$", "{closure}"),
                 ("..", "::"), ("$u20$", " "), ("$C$", ",")]:
        name = name.replace(a, b)
    return name[-90:]
sites = {}
for block in re.split(r"\n(?=[\d.]+[KMG]?B? leaked over)", text):
    m = re.match(r"([\d.]+)([KMG]?)B? leaked over (\d+) calls from", block)
    if not m:
        continue
    frames = [l.strip() for l in block.splitlines()[1:]
              if l.startswith("  ") and not l.startswith("    ")]
    key = tuple(tidy(f) for f in frames if not plumbing.match(f))[:3]
    site = sites.setdefault(key, [0.0, 0])
    site[0] += float(m.group(1)) * unit[m.group(2)]
    site[1] += int(m.group(3))
total = sum(s[0] for s in sites.values())
for key, (size, calls) in sorted(sites.items(), key=lambda kv: -kv[1][0]):
    if size / clients >= 4:
        print(f"{size / clients:7.0f} B/conn {calls / clients:5.2f} allocs/conn "
              f"avg {size / calls:7.0f} B | " + " <- ".join(key))
print(f"{total / clients:7.0f} B/conn live heap in all (the process's own baseline included: "
      "large allocations at about 0 allocs/conn are not per connection)")
PY
