#!/usr/bin/env bash
# The test suite: starts RabbitMQ and Redis if needed, runs every test against them, then
# the tests that stop and restart the services or measure request timing, one at a time in
# their own step (they would disturb, or be disturbed by, every other test).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/services.sh
# Some tests start the worker binaries as processes: build them (cargo test does not).
cargo build --workspace --bins
cargo test --workspace
cargo test -p tributary-tests --test e2e -- --ignored --test-threads=1
