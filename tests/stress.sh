#!/usr/bin/env bash
# Runs the whole test command (tests/run.sh) repeatedly while a CPU hog keeps every core busy,
# to shake out tests that depend on timing. Usage: tests/stress.sh [RUNS] (default 5).
# Each run's output goes to target/stress/run-N.log; the summary says how many passed.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
out=${CARGO_TARGET_DIR:-target}/stress
mkdir -p "$out"
cores=$(nproc)

# Build everything once without the hog, so the runs measure the tests, not the compiler.
./tests/run.sh >"$out/warmup.log" 2>&1 || { echo "warm-up run failed: see $out/warmup.log"; exit 1; }

# Tests that assert a latency goal (tests/abuse.rs) keep their functional checks and skip the
# latency bound while the hog holds every core: no software can promise a p99 then.
export TRUSTGATE_STARVED=1
hogs=()
for _ in $(seq "$cores"); do
  ( while :; do :; done ) &
  hogs+=($!)
done
trap 'kill "${hogs[@]}" 2>/dev/null' EXIT
echo "CPU hog: ${#hogs[@]} busy loops on $cores cores"

passed=0
for i in $(seq "$runs"); do
  started=$(date +%s)
  if ./tests/run.sh >"$out/run-$i.log" 2>&1; then
    passed=$((passed + 1))
    echo "run $i: passed in $(( $(date +%s) - started )) s"
  else
    echo "run $i: FAILED in $(( $(date +%s) - started )) s (see $out/run-$i.log)"
    grep -E '^(test .* FAILED|---- |thread .* panicked|FAILED|ERROR)' "$out/run-$i.log" | head -20
  fi
done
echo "stress: $passed of $runs runs passed under a CPU hog"
[ "$passed" -eq "$runs" ]
