#!/usr/bin/env bash
# tests/deploy checks the alert rules with promtool (Debian's prometheus package): install it if missing.
set -euo pipefail

command -v promtool >/dev/null 2>&1 && exit 0
echo "promtool is not installed; installing prometheus from Debian" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
