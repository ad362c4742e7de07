#!/usr/bin/env bash
# The demo: starts RabbitMQ and Redis if needed, then pushes a real job through the whole
# pipeline (local origin, four stages, progress bar) and prints the aggregate.
# Usage: scripts/demo.sh [--release] [demo arguments, see `scripts/demo.sh --help`]
#
# The demo builds with the dev profile: on a fresh clone the build is most of the demo's
# time, a dev build takes a third of an optimized one, and `scripts/test.sh` then reuses it
# (BENCHMARKS.md, "Build profiles"). `--release` builds and runs it optimized.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
profile=()
if [[ "${1:-}" == "--release" ]]; then
    profile=(--release)
    shift
fi
scripts/services.sh
exec cargo run "${profile[@]}" --quiet -p tributary-tests --bin demo -- "$@"
