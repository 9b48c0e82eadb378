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

log() { printf '==> %s\n' "$*"; }

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

# --- playwright-core ----------------------------------------------------------
command -v npm >/dev/null || { echo "FAIL: npm is missing: install Node.js and npm (apt install nodejs npm)" >&2; exit 1; }
if [[ ! -f tests/browser/node_modules/.package-lock.json \
      || tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]]; then
    log "npm ci in tests/browser"
    (cd tests/browser && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi

# --- the gateway --------------------------------------------------------------
if [[ -n "${VISITS_GATEWAY_BIN:-}" ]]; then
    BIN=$VISITS_GATEWAY_BIN
else
    log "cargo build --bin visits-gateway"
    cargo build --locked --quiet --bin visits-gateway
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/visits-gateway
fi
[[ -x "$BIN" ]] || { echo "FAIL: no gateway binary at $BIN" >&2; exit 1; }

PORT=$(node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })')
BASE="http://127.0.0.1:$PORT"
LOG=$(mktemp "${TMPDIR:-/tmp}/visits-gateway-demo.XXXXXX.log")
GATEWAY_PID=
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
    if [[ -n "$GATEWAY_PID" ]]; then
        kill "$GATEWAY_PID" 2>/dev/null || true
        wait "$GATEWAY_PID" 2>/dev/null || true
    fi
    rm -f "$LOG"
}
trap cleanup EXIT

log "starting visits-gateway demo on $BASE"
LISTEN_ADDR="127.0.0.1:$PORT" LOG_FORMAT=text RUST_LOG=warn "$BIN" demo >"$LOG" 2>&1 &
GATEWAY_PID=$!
for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$BASE/readyz" 2>/dev/null && break
    if ! kill -0 "$GATEWAY_PID" 2>/dev/null; then
        echo "FAIL: visits-gateway demo exited:" >&2; cat "$LOG" >&2; exit 1
    fi
    sleep 0.1
done
curl -fsS -o /dev/null "$BASE/readyz" || { echo "FAIL: $BASE/readyz never answered" >&2; cat "$LOG" >&2; exit 1; }

# --- the test -----------------------------------------------------------------
log "node tests/browser/playground.mjs $BASE/graphql"
status=0
node tests/browser/playground.mjs "$BASE/graphql" "$SCREENSHOT" || status=$?
if [[ $status -ne 0 ]]; then
    echo "--- visits-gateway demo log" >&2
    cat "$LOG" >&2
fi
exit "$status"
