#!/usr/bin/env bash
# Installs what the Chromium tests need when it is missing: Debian's chromium, coturn (the real
# TURN server of turn_relay.test.mjs) and the playwright-core npm package (never a downloaded
# browser). Idempotent and quiet when all is there.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"

need_apt=()
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v "${TURNSERVER:-turnserver}" >/dev/null || need_apt+=(coturn)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "browser-deps: ${need_apt[*]} missing; run: sudo apt-get install -y --no-install-recommends ${need_apt[*]}" >&2
    exit 1
  fi
  echo "browser-deps: installing ${need_apt[*]} (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2
fi

if [ ! -d "$here/browser/node_modules/playwright-core" ]; then
  echo "browser-deps: installing playwright-core (npm ci)" >&2
  (cd "$here/browser" && npm ci --no-audit --no-fund --loglevel=error) >&2
fi
