#!/usr/bin/env bash
# Runs every check tickcast has, from a fresh Debian machine: installs what is
# missing, then formatting, lints, unit/integration/property tests, the loom
# model of the ring, the browser client's unit tests (node), a browser check
# of the live page and dashboard, and the fuzz targets.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }

apt_updated=0
need_apt() { # need_apt COMMAND PACKAGE...
  if ! command -v "$1" >/dev/null 2>&1; then
    shift
    if [ "$apt_updated" = 0 ]; then
      say "apt-get update"
      apt-get update -q >/dev/null
      apt_updated=1
    fi
    say "installing $*"
    apt-get install -y -q --no-install-recommends "$@" >/dev/null
  fi
}

need_apt chromium chromium
need_apt node nodejs
# tests/nats.rs starts a real nats-server with JetStream (-js) per test.
need_apt nats-server nats-server
command -v cargo >/dev/null || { echo "cargo is missing: install Rust (rustup) first" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy || true

say "browser client unit tests (node --test)"
node --test tests/js/*.test.mjs

say "cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check

say "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

say "cargo test (workspace)"
cargo test --workspace --all-targets

say "cargo test --doc"
cargo test --workspace --doc

say "loom model of the ring"
RUSTFLAGS="--cfg tickcast_loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom \
  cargo test --release --lib ring::loom -- --test-threads=2

# fuzz: replay the seed corpus, then fuzz each target for a bounded time.
# cargo-fuzz on stable Rust (`-s none`: coverage-guided, no sanitizer, which
# would need nightly); fuzz/README.md says why and how to run longer.
# TICKCAST_FUZZ_SECONDS is the time per target (0: replay only).
fuzz_seconds="${TICKCAST_FUZZ_SECONDS:-30}"
fuzz_targets=(frames protocol record merge)
say "fuzz: replay corpus, then ${fuzz_seconds} s per target (${fuzz_targets[*]})"
if ! command -v cargo-fuzz >/dev/null; then
  say "installing cargo-fuzz"
  cargo install --locked cargo-fuzz@0.13.2
fi
fuzz=(cargo fuzz run --sanitizer none --target-dir "$PWD/target/fuzz")
for t in "${fuzz_targets[@]}"; do
  echo "-- replay fuzz/seeds/$t"
  "${fuzz[@]}" "$t" "fuzz/seeds/$t" -- -runs=0
done
if [ "$fuzz_seconds" -gt 0 ]; then
  for t in "${fuzz_targets[@]}"; do
    dict=()
    [ "$t" = frames ] || dict=(-dict=fuzz/json.dict)
    # New inputs go to target/fuzz/corpus (kept between runs, not committed);
    # a crash is written to fuzz/artifacts/TARGET/ and fails the run.
    # A fixed seed (TICKCAST_FUZZ_SEED) makes CI's short run repeat the same
    # search, so a red run is a change's fault, not luck; long random runs
    # are for fuzz/README.md's commands.
    mkdir -p "target/fuzz/corpus/$t"
    echo "-- fuzz $t for ${fuzz_seconds} s"
    "${fuzz[@]}" "$t" "target/fuzz/corpus/$t" "fuzz/seeds/$t" -- \
      -max_total_time="$fuzz_seconds" -seed="${TICKCAST_FUZZ_SEED:-1}" -max_len=4096 -timeout=10 -print_final_stats=1 "${dict[@]}"
  done
fi

say "all checks passed"
