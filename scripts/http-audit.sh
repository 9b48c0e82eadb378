#!/usr/bin/env bash
# The GraphQL-over-HTTP audit (docs/api.md): starts `visits-gateway demo` on a
# free loopback port, with a client rate high enough for the suite's burst of
# requests from one address, and runs every audit of the npm package
# graphql-http (its serverAudits, from tests/http-audit) against /graphql.
# Fails when any MUST or SHOULD is not ok; prints the MAYs' results. Then
# exercises automatic persisted queries with Apollo Client's
# createPersistedQueryLink (tests/http-audit/apq.mjs), over POST and GET,
# live visits with the npm graphql-ws client (tests/http-audit/live.mjs), and
# over plain HTTP with graphql-sse (distinct connections) and Apollo Client's
# HttpLink (multipart subscriptions) (tests/http-audit/live-http.mjs).
# Last, trusted documents: Apollo's generate-persisted-query-manifest writes
# the manifest of tests/http-audit/trusted/operations.graphql, a second demo
# runs with it and PERSISTED_QUERIES_ONLY, and tests/http-audit/trusted.mjs
# runs the operation by id with Apollo Client's persisted query link (ids from
# the manifest) and sees anything else refused.
#
#   scripts/http-audit.sh
#
# Installs tests/http-audit's node_modules (npm ci from its lockfile) when
# missing. Builds the debug binary unless VISITS_GATEWAY_BIN names one;
# honours CARGO_TARGET_DIR. Needs: bash, curl, Node.js >= 20 and npm.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# shellcheck source=scripts/lib/demo.sh
source "$ROOT/scripts/lib/demo.sh"

npm_ci_once tests/http-audit
# The suite sends its requests back to back from one address.
start_demo CLIENT_RATE_PER_SECOND=10000 CLIENT_BURST=10000 LIVE_POLL_SECONDS=1

log "node tests/http-audit/audit.mjs $BASE/graphql"
status=0
node tests/http-audit/audit.mjs "$BASE/graphql" || status=$?
log "node tests/http-audit/apq.mjs $BASE/graphql"
node tests/http-audit/apq.mjs "$BASE/graphql" || status=$?
log "node tests/http-audit/live.mjs $BASE/graphql"
node tests/http-audit/live.mjs "$BASE/graphql" || status=$?
log "node tests/http-audit/live-http.mjs $BASE/graphql"
node tests/http-audit/live-http.mjs "$BASE/graphql" || status=$?
if [[ $status -ne 0 ]]; then finish "$status"; fi

log "generate-persisted-query-manifest (tests/http-audit/trusted/operations.graphql)"
(cd tests/http-audit && npx --no-install generate-persisted-query-manifest \
    --config persisted-query-manifest.config.json)
manifest="$ROOT/tests/http-audit/trusted/persisted-query-manifest.json"
stop_demo
start_demo PERSISTED_QUERIES_FILE="$manifest" PERSISTED_QUERIES_ONLY=true
log "node tests/http-audit/trusted.mjs $BASE/graphql (PERSISTED_QUERIES_ONLY)"
node tests/http-audit/trusted.mjs "$BASE/graphql" "$manifest" || status=$?
finish "$status"
