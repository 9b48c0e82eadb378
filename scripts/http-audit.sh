#!/usr/bin/env bash
# The GraphQL-over-HTTP audit (SPEC §6): starts `visits-gateway demo` on a
# free loopback port, with a client rate high enough for the suite's burst of
# requests from one address, and runs every audit of the npm package
# graphql-http (its serverAudits, from tests/http-audit) against /graphql.
# Fails when any MUST or SHOULD is not ok; prints the MAYs' results. Then
# exercises automatic persisted queries with Apollo Client's
# createPersistedQueryLink (tests/http-audit/apq.mjs), over POST and GET,
# and live visits with the npm graphql-ws client (tests/http-audit/live.mjs).
#
#   scripts/http-audit.sh
#
# Installs tests/http-audit's node_modules (npm ci from its lockfile) when
# missing. Builds the debug binary unless VISITS_GATEWAY_BIN names one;
# honours CARGO_TARGET_DIR. Needs: bash, curl, Node.js >= 20 and npm.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

log() { printf '==> %s\n' "$*"; }

command -v npm >/dev/null || { echo "FAIL: npm is missing: install Node.js and npm (apt install nodejs npm)" >&2; exit 1; }
if [[ ! -f tests/http-audit/node_modules/.package-lock.json \
      || tests/http-audit/package-lock.json -nt tests/http-audit/node_modules/.package-lock.json ]]; then
    log "npm ci in tests/http-audit"
    (cd tests/http-audit && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi

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
LOG=$(mktemp "${TMPDIR:-/tmp}/visits-gateway-audit.XXXXXX.log")
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
LISTEN_ADDR="127.0.0.1:$PORT" CLIENT_RATE_PER_SECOND=10000 CLIENT_BURST=10000 LIVE_POLL_SECONDS=1 \
    LOG_FORMAT=text RUST_LOG=warn "$BIN" demo >"$LOG" 2>&1 &
GATEWAY_PID=$!
for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$BASE/readyz" 2>/dev/null && break
    if ! kill -0 "$GATEWAY_PID" 2>/dev/null; then
        echo "FAIL: visits-gateway demo exited:" >&2; cat "$LOG" >&2; exit 1
    fi
    sleep 0.1
done
curl -fsS -o /dev/null "$BASE/readyz" || { echo "FAIL: $BASE/readyz never answered" >&2; cat "$LOG" >&2; exit 1; }

log "node tests/http-audit/audit.mjs $BASE/graphql"
status=0
node tests/http-audit/audit.mjs "$BASE/graphql" || status=$?
log "node tests/http-audit/apq.mjs $BASE/graphql"
node tests/http-audit/apq.mjs "$BASE/graphql" || status=$?
log "node tests/http-audit/live.mjs $BASE/graphql"
node tests/http-audit/live.mjs "$BASE/graphql" || status=$?
if [[ $status -ne 0 ]]; then
    echo "--- visits-gateway demo log" >&2
    cat "$LOG" >&2
fi
exit "$status"
