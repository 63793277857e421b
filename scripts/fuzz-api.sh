#!/usr/bin/env bash
# Bounded API fuzzing against the real server: starts `nexus serve` (embedded default, fresh data
# directory, a free port on 127.0.0.1), runs schemathesis against its /api/openapi.json and fails
# on any 5xx and on any non-2xx answer that is not JSON in the contract's error shape
# (scripts/fuzz_api_checks.py has the check). Deterministic (fixed seed, no example database);
# bounded by --max-examples and a hard timeout. All traffic stays on 127.0.0.1.
#
#   scripts/fuzz-api.sh                          # as CI runs it
#   FUZZ_MAX_EXAMPLES=50 FUZZ_SEED=7 scripts/fuzz-api.sh
#
# Reports (JUnit, and a VCR cassette of every request and answer) go to build-artifacts/fuzz-api/.
# `python3 -m schemathesis.cli` is the `st` command, whether or not pip's bin directory is on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
MAX_EXAMPLES=${FUZZ_MAX_EXAMPLES:-20}
SEED=${FUZZ_SEED:-20261207}
TIME_LIMIT=${FUZZ_TIME_LIMIT:-300} # seconds, the whole schemathesis run
REPORT_DIR=build-artifacts/fuzz-api

echo "== API fuzzing: schemathesis $SCHEMATHESIS_VERSION"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "schemathesis==$SCHEMATHESIS_VERSION"

cargo build --locked -q -p nexus

tmp=$(mktemp -d)
server_pid=
cleanup() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# A free port: bind to port 0 and read what the kernel picked.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
base=http://127.0.0.1:$port

target/debug/nexus serve --listen "127.0.0.1:$port" --data-dir "$tmp/data" >"$tmp/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 150); do
  curl -sf "$base/health/ready" >/dev/null 2>&1 && break
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "nexus serve exited before it was ready:" >&2
    cat "$tmp/server.log" >&2
    exit 1
  fi
  sleep 0.2
done
if ! curl -sf "$base/health/ready" >/dev/null; then
  echo "nexus serve was not ready after 30 s:" >&2
  tail -n 50 "$tmp/server.log" >&2
  exit 1
fi

# 504 PROJECTION_TIMEOUT is the documented answer to a wait for a version that never comes; the
# custom check still fails a 504 with any other code, and every other 5xx.
cat >"$tmp/schemathesis.toml" <<'EOF'
[checks.not_a_server_error]
expected-statuses = ["1XX", "2XX", "3XX", "4XX", "504"]
EOF

rm -rf "$REPORT_DIR"
mkdir -p "$REPORT_DIR"
status=0
# From the temporary directory: schemathesis keeps a crash cache in ./.schemathesis.
root=$PWD
(cd "$tmp" && SCHEMATHESIS_HOOKS="$root/scripts/fuzz_api_checks.py" timeout --signal=INT --kill-after=30 "$TIME_LIMIT" \
  python3 -m schemathesis.cli --no-color --config-file "$tmp/schemathesis.toml" run "$base/api/openapi.json" \
  --checks not_a_server_error,nexus_error_shape,response_schema_conformance,status_code_conformance,content_type_conformance \
  --phases examples,coverage,fuzzing \
  --max-examples "$MAX_EXAMPLES" \
  --seed "$SEED" \
  --generation-database none \
  --workers 1 \
  --request-timeout 10 \
  --max-redirects 0 \
  --suppress-health-check all \
  --output-truncate false \
  --report junit,vcr --report-dir "$root/$REPORT_DIR") || status=$?

if [[ $status -eq 124 || $status -eq 130 ]]; then
  echo "schemathesis did not finish within ${TIME_LIMIT}s" >&2
fi
# A handler that panics answers nothing (schemathesis sees the connection closed: a "Network
# Error"); a panic off the request path answers nothing at all. Both fail the run.
if grep -q 'panicked at' "$tmp/server.log"; then
  echo "== the server panicked during the run:" >&2
  grep -A1 'panicked at' "$tmp/server.log" | grep -v '^--$' | awk '!seen[$0]++' | head -n 30 >&2
  [[ $status -ne 0 ]] || status=1
fi
if [[ $status -ne 0 ]]; then
  echo "== API fuzzing failed (exit $status); ERROR and WARN lines of the server's log:" >&2
  grep -E ' (ERROR|WARN) ' "$tmp/server.log" | tail -n 30 >&2 || true
  echo "(every request and answer: the VCR cassette in $REPORT_DIR)" >&2
  exit "$status"
fi
echo "== API fuzzing: no server error, every error answer in the contract's shape"
