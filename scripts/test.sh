#!/usr/bin/env bash
# Runs every test of the project: the README's test command, and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== test tools: Confluent's schema registry client (the registry interop test uses it)"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'confluent-kafka[schemaregistry]==2.16.*'

echo "== test tools: promtool (Debian's prometheus package) for the alert rules"
if ! command -v promtool >/dev/null; then
  (apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1 ||
    (apt-get update -qq && apt-get install -y --no-install-recommends prometheus >/dev/null))
fi

echo "== Markdown links: every link stays inside the repository and points at a file that exists"
scripts/check-links.sh

echo "== cargo test (all crates and examples/ticketing, all backends configured in the environment)"
cargo test --workspace --locked

echo "== deployment topology: 2 command, 1 query, 1 router process behind nginx (deploy/nginx/nexus.conf)"
scripts/test-proxy-topology.sh

echo "== architecture policies: unit tests, then the service graph this build serves"
cargo run --locked -q -p nexus -- policy test policies
cargo run --locked -q -p nexus -- graph --out build-artifacts/service-graph.json
cargo run --locked -q -p nexus -- policy check --input build-artifacts/service-graph.json

echo "== alert rules: syntax, then their unit tests"
promtool check rules deploy/prometheus/nexus-alerts.yml
promtool test rules deploy/prometheus/nexus-alerts.test.yml

echo "== API fuzzing: schemathesis against a real nexus serve (no 5xx, every error in the contract's shape)"
scripts/fuzz-api.sh

echo "== nexus bench smoke run (completes and reports; no speed assertion)"
cargo run --locked -q -p nexus -- bench --duration 3 --concurrency 8 --mix place=70,ship=10,get=15,list=5 --lag-samples 20 --compare-raw
