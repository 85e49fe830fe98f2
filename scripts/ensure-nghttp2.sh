#!/usr/bin/env bash
# The HTTP/2 client tests and bench/providers.py run nghttpd/h2load (Debian's nghttp2): install them if missing.
set -euo pipefail

command -v nghttpd >/dev/null 2>&1 && command -v h2load >/dev/null 2>&1 && exit 0
echo "nghttpd/h2load are not installed; installing nghttp2 from Debian" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq nghttp2 >/dev/null
