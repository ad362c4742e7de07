#!/usr/bin/env bash
# The browser of the dashboard test (tests/tests/e2e/browser.rs): Debian's chromium and
# chromium-driver, /usr/bin/chromium and /usr/bin/chromedriver. Installs them with apt-get
# when they are missing and this runs as root; otherwise says what to install and exits 1.
set -euo pipefail
if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "browser: chromium and chromedriver are missing: run 'sudo apt-get install chromium chromium-driver'" >&2
    exit 1
fi
echo "browser: installing chromium and chromium-driver (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q chromium chromium-driver >/dev/null ||
    { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }
