#!/usr/bin/env bash
# Retakes docs/screenshots/{overview,job,dlq}.png from a real run: the dashboard's browser
# test (a live pipeline, headless Chromium) with TRIBUTARY_SCREENSHOTS set.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/services.sh
scripts/browser.sh
TRIBUTARY_SCREENSHOTS="$PWD/docs/screenshots" \
    cargo test -p tributary-tests --test e2e -- --exact \
    browser::an_operator_watches_a_job_and_replays_its_dead_tasks_in_a_browser
ls -l docs/screenshots
