#!/usr/bin/env bash
# The demo: starts RabbitMQ and Redis if needed, then pushes a real job through the whole
# pipeline (local origin, four stages, progress bar) and prints the aggregate.
# Extra arguments go to the demo (see `scripts/demo.sh --help`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/services.sh
# The release profile has no LTO and cargo's default codegen units: on a fresh clone the build
# is most of the demo's time (BENCHMARKS.md, "Build profiles").
exec cargo run --release --quiet -p tributary-tests --bin demo -- "$@"
