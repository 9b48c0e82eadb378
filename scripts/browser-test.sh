#!/usr/bin/env bash
# The playground's browser test: starts `visits-gateway demo` on a free
# loopback port, opens GET /graphql in Debian's chromium (driven by
# playwright-core from tests/browser), runs the default query with GraphiQL's
# run button, checks that visits appear, saves a screenshot, then runs an
# anonymous query pasted over the example at once.
#
#   scripts/browser-test.sh            # screenshot: target/playground.png
#
# Installs what is missing: Debian's chromium and a CJK font (apt-get; sudo
# when not root) and tests/browser's node_modules (npm ci from its lockfile).
# Builds the debug binary unless VISITS_GATEWAY_BIN names one; honours
# CARGO_TARGET_DIR. SCREENSHOT and CHROMIUM override the defaults.
# Needs: bash, curl, Node.js >= 20 and npm. Exits non-zero on failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SCREENSHOT=${SCREENSHOT:-$ROOT/target/playground.png}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
export CHROMIUM
# shellcheck source=scripts/lib/demo.sh
source "$ROOT/scripts/lib/demo.sh"

# --- chromium, and a font for the simulated visitors' Chinese nicknames ------
PACKAGES=()
[[ -x "$CHROMIUM" ]] || PACKAGES+=(chromium)
# Without a CJK font the screenshot shows boxes instead of the nicknames.
fc-list :lang=zh 2>/dev/null | grep -q . || PACKAGES+=(fonts-wqy-microhei)
if [[ ${#PACKAGES[@]} -gt 0 ]]; then
    log "installing Debian's ${PACKAGES[*]}"
    SUDO=()
    [[ $(id -u) -eq 0 ]] || SUDO=(sudo)
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes apt-get install -y -qq \
        "${PACKAGES[@]}" >/dev/null
fi
log "$("$CHROMIUM" --version 2>/dev/null | head -n 1)"

# --- playwright-core, and the gateway ----------------------------------------
npm_ci_once tests/browser
# shellcheck disable=SC2119  # no settings to pass
start_demo

# --- the test -----------------------------------------------------------------
log "node tests/browser/playground.mjs $BASE/graphql"
status=0
node tests/browser/playground.mjs "$BASE/graphql" "$SCREENSHOT" || status=$?
finish "$status"
