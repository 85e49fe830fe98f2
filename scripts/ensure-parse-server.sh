#!/usr/bin/env bash
# Installs the pinned Parse Server e2e host (tests/e2e/parse_host) and deploy/parse-server with `npm ci`,
# skipped when node_modules was installed from the same lockfile (sha256 stamp), so CI pays ~25 s once.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "ensure-parse-server: $*" >&2; exit 1; }
command -v node >/dev/null || fail "node not found; tests/e2e/test_parse_server.py needs Node.js >= 20.19 and npm"
command -v npm >/dev/null || fail "npm not found; tests/e2e/test_parse_server.py needs npm (11.x tested)"
node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' \
  || fail "Node.js $(node --version) is too old: parse-server 9.10 needs >= 20.19"

install() {
  local dir=$1 stamp want
  stamp="$dir/node_modules/.pushgw-lock-sha256"
  want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
    return
  fi
  echo "ensure-parse-server: npm ci in $dir" >&2
  # No install scripts: none of the packages needs one (banner, core-js-pure, protobufjs, …).
  (cd "$dir" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error) >&2
  echo "$want" >"$stamp"
}

install deploy/parse-server
install tests/e2e/parse_host
