#!/usr/bin/env bash
# The browser test's tools: Debian's Chromium (never a browser download) and playwright-core
# from tests/browser/package-lock.json. Installs what is missing, then prints
# `export VMPIPE_TEST_CHROMIUM=… VMPIPE_TEST_BROWSER_DIR=…` for `eval` (what scripts/test.sh does):
#
#   scripts/browser-env.sh
#
# Needs root (or sudo) for apt the first time, Node.js 20 or newer with npm.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "browser-env: $*" >&2; }
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root for: $*"; return 1; fi
}

chromium=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
  log "installing Debian's chromium"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
    || { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
         && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
fi
command -v node >/dev/null || { log "Node.js is missing (apt-get install nodejs npm)"; exit 1; }

dir=$PWD/tests/browser
# node_modules as the lock file pins it: installed again when the lock changes.
stamp=$dir/node_modules/.vmpipe-lock.sha256
want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing playwright-core (npm ci in tests/browser)"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
  echo "$want" >"$stamp"
fi
printf 'export VMPIPE_TEST_CHROMIUM=%q VMPIPE_TEST_BROWSER_DIR=%q\n' "$chromium" "$dir"
