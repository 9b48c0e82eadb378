# shellcheck shell=bash
# Sourced by the CI scripts that drive a running `visits-gateway demo` with
# npm clients (the browser test, the HTTP audit): their node_modules, the
# gateway binary, and the demo on a free loopback port until the script exits.
# Expects ROOT (the repository) and the current directory to be it.

log() { printf '==> %s\n' "$*"; }

# npm_ci_once DIR: `npm ci` in DIR from its lockfile, unless already done.
npm_ci_once() {
    local dir=$1
    command -v npm >/dev/null || { echo "FAIL: npm is missing: install Node.js and npm (apt install nodejs npm)" >&2; exit 1; }
    if [[ ! -f "$dir/node_modules/.package-lock.json" \
          || "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]]; then
        log "npm ci in $dir"
        (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    fi
}

# start_demo [VAR=value ...]: builds the debug binary unless VISITS_GATEWAY_BIN
# names one (honours CARGO_TARGET_DIR), starts `demo` with these settings and
# waits for /readyz. Sets BASE and LOG (the demo's output); the demo is
# stopped when the script exits.
start_demo() {
    local bin port
    if [[ -n "${VISITS_GATEWAY_BIN:-}" ]]; then
        bin=$VISITS_GATEWAY_BIN
    else
        log "cargo build --bin visits-gateway"
        cargo build --locked --quiet --bin visits-gateway
        bin=${CARGO_TARGET_DIR:-$ROOT/target}/debug/visits-gateway
    fi
    [[ -x "$bin" ]] || { echo "FAIL: no gateway binary at $bin" >&2; exit 1; }
    port=$(node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })')
    BASE="http://127.0.0.1:$port"
    LOG=$(mktemp "${TMPDIR:-/tmp}/visits-gateway-demo.XXXXXX.log")
    trap stop_demo EXIT
    log "starting visits-gateway demo on $BASE"
    env LISTEN_ADDR="127.0.0.1:$port" LOG_FORMAT=text RUST_LOG=warn "$@" "$bin" demo >"$LOG" 2>&1 &
    GATEWAY_PID=$!
    for _ in $(seq 1 100); do
        curl -fsS -o /dev/null "$BASE/readyz" 2>/dev/null && return 0
        if ! kill -0 "$GATEWAY_PID" 2>/dev/null; then
            echo "FAIL: visits-gateway demo exited:" >&2; cat "$LOG" >&2; exit 1
        fi
        sleep 0.1
    done
    echo "FAIL: $BASE/readyz never answered" >&2; cat "$LOG" >&2; exit 1
}

# shellcheck disable=SC2317  # run by the EXIT trap
stop_demo() {
    if [[ -n "${GATEWAY_PID:-}" ]]; then
        kill "$GATEWAY_PID" 2>/dev/null || true
        wait "$GATEWAY_PID" 2>/dev/null || true
    fi
    rm -f "${LOG:-}"
}

# finish STATUS: the demo's log on failure, then exit with STATUS.
finish() {
    if [[ $1 -ne 0 ]]; then
        echo "--- visits-gateway demo log" >&2
        cat "$LOG" >&2
    fi
    exit "$1"
}
