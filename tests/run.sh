#!/usr/bin/env bash
# trustgate's whole test suite: the README's test command, and what CI runs.
# Installs what it needs (the wasm32-wasip2 target, rustfmt, clippy) so a fresh machine passes.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> toolchain"
rustup target add wasm32-wasip2
rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "==> format"
cargo fmt --all -- --check

echo "==> lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> tests"
cargo test --workspace --locked
