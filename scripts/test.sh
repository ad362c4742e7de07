#!/usr/bin/env bash
# The test suite: starts RabbitMQ and Redis if needed, runs every test against them, runs the
# service-backed tests again against a Redis Cluster, then the tests that stop and restart
# services, lose cluster nodes or measure request timing, one at a time in their own step
# (they would disturb, or be disturbed by, every other test).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/services.sh
# The dashboard's browser test needs Debian's chromium and chromium-driver.
scripts/browser.sh
# Some tests start the worker binaries as processes: build them (cargo test does not).
cargo build --workspace --bins
cargo test --workspace
# The local clusters (3 RabbitMQ nodes, a Redis Cluster of 3 masters + 3 replicas) beside
# the single nodes; every feature that touches Redis runs once more against the cluster.
scripts/clusters.sh up
eval "$(scripts/clusters.sh urls)"
REDIS_URL="$REDIS_URLS" cargo test -p tributary-tests --test e2e
cargo test -p tributary-tests --test e2e -- --ignored --test-threads=1
