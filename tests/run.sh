#!/usr/bin/env bash
# trustgate's whole test suite: the README's test command, and what CI runs.
# Installs what it needs (the wasm32-wasip2 target, rustfmt, clippy, Chromium, a Python venv
# with the Helm library, Kubernetes schemas and componentize-py, the npm packages of the
# JavaScript SDK) so a fresh machine passes.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> toolchain"
rustup target add wasm32-wasip2
rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "==> headless browser (operator page test)"
if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

echo "==> python environment (deployment tests, the Python plugin toolchain, nats-server)"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check \
  -r tests/deploy/requirements.txt -r plugins/sdk-python/requirements.txt \
  -r tests/cluster-requirements.txt

echo "==> JavaScript plugin toolchain (componentize-js, rolldown; pinned by package-lock.json)"
npm ci --prefix plugins/sdk-js --no-audit --no-fund --loglevel=error

echo "==> format"
cargo fmt --all -- --check

echo "==> lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> tests"
node --test plugins/sdk-js/test/
# --no-fail-fast: one failing test binary must not hide the others' results.
cargo test --workspace --locked --no-fail-fast

echo "==> deployment (Helm rendering, Kubernetes 1.37 strict schemas, policy, config check)"
# The binary `cargo test` built for the CLI tests (same features, no second build).
TRUSTGATE_BIN="${CARGO_TARGET_DIR:-target}/debug/trustgate" .venv/bin/python -m pytest -q tests/deploy
