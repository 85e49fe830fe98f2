#!/usr/bin/env bash
# The operator console tests drive headless Chromium (Debian's chromium) through Playwright: install it if missing.
set -euo pipefail

command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && exit 0
echo "chromium/chromedriver are not installed; installing chromium and chromium-driver from Debian" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq chromium chromium-driver >/dev/null
