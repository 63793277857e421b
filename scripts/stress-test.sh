#!/usr/bin/env bash
# Runs the test suite, or a part of it, N times while the machine is busy: a CPU hog on every
# core and a writer that syncs to disk all the time (Debian's stress-ng), as on a loaded CI
# machine. A test that fails only here assumes timing it was never promised.
#
#   scripts/stress-test.sh [-n RUNS] [CARGO TEST ARGS...]
#
#   scripts/stress-test.sh -n 3                          # the whole workspace, three times
#   scripts/stress-test.sh -n 10 -p nexus-sqlite         # one crate
#   scripts/stress-test.sh -n 20 -p nexus-server --test api -- subscriptions
#
# The backends' URLs come from the environment as in .ci/run (PostgreSQL, NATS, RabbitMQ on
# 127.0.0.1 by default). Each run's output is kept in target/stress/run-N.log; the summary lists
# the tests that failed in any run.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=3
if [ "${1:-}" = "-n" ]; then
  runs=$2
  shift 2
fi
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--workspace)

if ! command -v stress-ng >/dev/null; then
  apt-get install -y --no-install-recommends stress-ng >/dev/null 2>&1 ||
    (apt-get update -qq && apt-get install -y --no-install-recommends stress-ng >/dev/null)
fi

export NEXUS_TEST_POSTGRES_URL=${NEXUS_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
export NEXUS_TEST_NATS_URL=${NEXUS_TEST_NATS_URL:-nats://127.0.0.1:4222}
export NEXUS_TEST_AMQP_URL=${NEXUS_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}

echo "== building the tests once, before the load starts"
cargo test --locked --no-run "${args[@]}" >/dev/null 2>&1 || cargo test --locked --no-run "${args[@]}"

logs=target/stress
mkdir -p "$logs"
scratch=$(mktemp -d)
# Every core busy, and a writer that fsyncs each write, for as long as the runs take.
stress-ng --cpu "$(nproc)" --hdd 1 --hdd-opts fsync --hdd-bytes 64m --temp-path "$scratch" --quiet &
hog=$!
trap 'kill $hog 2>/dev/null; wait $hog 2>/dev/null; rm -rf "$scratch"' EXIT

failed_runs=0
for run in $(seq 1 "$runs"); do
  log=$logs/run-$run.log
  started=$(date +%s)
  if cargo test --locked "${args[@]}" >"$log" 2>&1; then
    echo "run $run of $runs: passed in $(($(date +%s) - started)) s"
  else
    failed_runs=$((failed_runs + 1))
    echo "run $run of $runs: FAILED in $(($(date +%s) - started)) s ($log)"
    grep -E '^test .* FAILED$|^---- .* stdout ----$' "$log" | sed 's/^/  /' || true
  fi
done

echo "$((runs - failed_runs)) passed, $failed_runs failed"
[ "$failed_runs" -eq 0 ]
