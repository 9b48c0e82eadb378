#!/usr/bin/env bash
# The gateway's benchmark (docs/performance.md). Builds release binaries, starts
# a stand-in platform that answers at once, the gateway in front of it and a
# reference axum endpoint answering the gateway's own response bytes (the HTTP
# floor), and drives each with the same load generator. Measures the page
# cache's memory per visit, then prints one markdown table, also written to
# bench/out/results.md.
#
#   bench/run.sh                 # 3 alternating rounds of 10 s per workload
#   bench/run.sh --short         # 1 round of 2 s: proves the bench still works
#   bench/run.sh --rounds 5 --duration 20 --rate 2000
#   bench/run.sh --only hot,hotkey    # some workloads only (see below)
#
# Workloads (--only names):
#   hot     the hot query, no credential (ALLOW_UNAUTHENTICATED=true)
#   hotkey  the hot query with an API key (API_KEYS_FILE, no unauthenticated
#           access; wrk and the pacer send Authorization: Bearer <key>)
#   mixed   64 different queries
#   walk    the paging walk (a new cursor on every request)
#   walknc  the paging walk with the response cache off: every request parsed,
#           validated and executed over the page cache
#   memory  the hot query with the response cache off (page cache warm)
#   live    10,000 userVisitAdded subscribers on one activity, each on its own
#           WebSocket (examples/live_bench.rs against the simulated platform):
#           platform requests per idle poll, RSS per idle subscriber, delay
#           from the poll to each subscriber (--short: 200 subscribers)
#   hotredis   the hot query on a gateway with REDIS_URL (shared state on; its
#              rounds interleaved with hot's)
#   walkredis  the paging walk on a gateway with REDIS_URL (interleaved with walk's)
#   walk3   platform requests of the paging walk on one gateway, then spread
#           over three gateways sharing one Redis (each a third of the requests)
#
# The Redis workloads start a redis-server of their own (installed when missing)
# on BENCH_PORT_BASE+40, on the load generator's core.
#
# Pinning: the server under test on core 0; wrk, the pacer and the stand-in
# platform on core 1. Needs wrk (installed when missing), taskset, curl.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=3
DURATION=10
PACE_SECONDS=
RATE=2000
CONNECTIONS=64
PACE_CONNECTIONS=16
LIVE_SUBSCRIBERS=10000
LIVE_ROUNDS=10
LIVE_IDLE_POLLS=10
PORT_BASE=${BENCH_PORT_BASE:-19180}
WORKLOADS=hot,hotkey,mixed,walk,walknc,memory,live,hotredis,walkredis,walk3
ONLY=$WORKLOADS

usage() {
  # The comment block at the top of this file.
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  cat <<EOF
Options:
  --short            1 round of 2 s per run (CI: proves the bench works)
  --rounds N         alternating rounds per workload (default $ROUNDS)
  --duration S       seconds per wrk run (default $DURATION)
  --pace-seconds S   seconds per fixed-rate latency run (default: --duration)
  --rate R           the fixed rate of the p50/p99 runs, req/s (default $RATE)
  --connections C    wrk connections (default $CONNECTIONS)
  --only LIST        comma-separated workloads: $WORKLOADS (default: all)
  --live-subscribers N   subscribers of the live workload (default $LIVE_SUBSCRIBERS)
Environment: CARGO_TARGET_DIR (honoured), BENCH_PORT_BASE (default 19180).
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --short) ROUNDS=1; DURATION=2; PACE_SECONDS=2; LIVE_SUBSCRIBERS=200; LIVE_ROUNDS=2; LIVE_IDLE_POLLS=3 ;;
    --live-subscribers) LIVE_SUBSCRIBERS=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --pace-seconds) PACE_SECONDS=$2; shift ;;
    --rate) RATE=$2; shift ;;
    --connections) CONNECTIONS=$2; shift ;;
    --only) ONLY=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
PACE_SECONDS=${PACE_SECONDS:-$DURATION}
IFS=, read -ra ONLY_LIST <<<"$ONLY"
[ "${#ONLY_LIST[@]}" -gt 0 ] || { echo "--only needs at least one workload" >&2; exit 2; }
for w in "${ONLY_LIST[@]}"; do
  [[ ",$WORKLOADS," == *",$w,"* ]] || { echo "unknown workload in --only: '$w' (known: $WORKLOADS)" >&2; exit 2; }
done
wanted() { [[ ",$ONLY," == *",$1,"* ]]; }

say() { printf '>>> %s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------ tools
apt_install() {
  if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && apt-get install -y -qq "$@"
  else sudo apt-get update -qq && sudo apt-get install -y -qq "$@"; fi
}
command -v wrk >/dev/null || { say "installing wrk"; apt_install wrk >/dev/null; }
command -v taskset >/dev/null || { say "installing util-linux (taskset)"; apt_install util-linux >/dev/null; }
command -v curl >/dev/null || { say "installing curl"; apt_install curl >/dev/null; }
if wanted hotredis || wanted walkredis || wanted walk3; then
  command -v redis-server >/dev/null || { say "installing redis-server"; apt_install redis-server >/dev/null; }
fi

if [ "$(nproc)" -ge 2 ]; then SERVER_CPU=0; LOAD_CPU=1
else SERVER_CPU=0; LOAD_CPU=0; say "WARNING: one core only: server and load share it; figures are not comparable"; fi

# ------------------------------------------------------------------ build
say "building release binaries"
# Two builds: built together, the example's dev-dependency on this crate with
# `test-hooks` would switch the hooks on in the gateway under test too.
cargo build --release --locked --bin visits-gateway
cargo build --release --locked --example bench_servers
if wanted live; then cargo build --release --locked --example live_bench; fi
TARGET_DIR=${CARGO_TARGET_DIR:-target}
GATEWAY_BIN=$TARGET_DIR/release/visits-gateway
TOOLS_BIN=$TARGET_DIR/release/examples/bench_servers
if [ ! -x "$GATEWAY_BIN" ] || [ ! -x "$TOOLS_BIN" ]; then die "binaries not found under $TARGET_DIR/release"; fi

OUT=bench/out
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/visits-bench.XXXXXX")
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  # Keep the servers' logs of the last run; drop the rest.
  rm -rf "$OUT/logs"; mkdir -p "$OUT/logs"
  cp "$WORK"/*.log "$OUT/logs/" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PLATFORM_PORT=$PORT_BASE
REFERENCE_PORT=$((PORT_BASE + 1))
NEXT_GATEWAY_PORT=$((PORT_BASE + 2))
for port in $PLATFORM_PORT $REFERENCE_PORT; do
  if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/"; then
    die "port $port is taken (set BENCH_PORT_BASE)"
  fi
done

# ------------------------------------------------------------------ helpers
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
platform_count() { curl -sf "http://127.0.0.1:$PLATFORM_PORT/count"; }
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }

wait_http() { # url pid
  local url=$1 pid=$2 _
  for _ in $(seq 1 150); do
    curl -sf -o /dev/null --max-time 1 "$url" && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

say "starting the stand-in platform on 127.0.0.1:$PLATFORM_PORT (core $LOAD_CPU)"
taskset -c "$LOAD_CPU" "$TOOLS_BIN" platform --listen "127.0.0.1:$PLATFORM_PORT" >"$WORK/platform.log" 2>&1 &
PLATFORM_PID=$!; PIDS+=("$PLATFORM_PID")
wait_http "http://127.0.0.1:$PLATFORM_PORT/count" "$PLATFORM_PID" || { cat "$WORK/platform.log" >&2; die "the stand-in platform did not start"; }

"$TOOLS_BIN" bodies --out-dir "$WORK" >/dev/null
HOT=$WORK/hot.json
MIXED=$WORK/mixed.txt

# The API key of the "hot, API key" workload: the keys file holds its sha256
# only, scoped to the bench's activities, as in production (docs/security.md).
BENCH_KEY=vgk_bench_0123456789abcdef0123456789abcdef
BENCH_AUTHORIZATION="Bearer $BENCH_KEY"
printf 'bench %s 10024069,10024070,10024072,20000001\n' "$(printf %s "$BENCH_KEY" | sha256sum | cut -d' ' -f1)" >"$WORK/api-keys"

REDIS_PORT=$((PORT_BASE + 40))
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
if wanted hotredis || wanted walkredis || wanted walk3; then
  say "starting redis-server on 127.0.0.1:$REDIS_PORT (core $LOAD_CPU)"
  taskset -c "$LOAD_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 1 100); do
    [ "$(redis-cli -p "$REDIS_PORT" PING 2>/dev/null)" = PONG ] && break
    sleep 0.1
  done
  [ "$(redis-cli -p "$REDIS_PORT" PING 2>/dev/null)" = PONG ] || { cat "$WORK/redis.log" >&2; die "redis-server did not start"; }
fi
# Waits until the gateway at $GATEWAY_URL shares through Redis.
wait_redis_up() {
  local _
  for _ in $(seq 1 100); do
    curl -sf "${GATEWAY_URL%/graphql}/metrics" | grep -q '^visits_gateway_redis_up 1' && return 0
    sleep 0.1
  done
  die "the gateway did not reach Redis"
}

say "measuring the page cache's memory per visit"
MEMORY_LINE=$("$TOOLS_BIN" memory) || die "the memory measurement failed"
say "  $MEMORY_LINE"

GATEWAY_PID=
GATEWAY_URL=
start_gateway() { # name VAR=value...
  local name=$1; shift
  local port=$NEXT_GATEWAY_PORT
  NEXT_GATEWAY_PORT=$((NEXT_GATEWAY_PORT + 1))
  env -i PATH="$PATH" HOME="${HOME:-/root}" \
    LISTEN_ADDR="127.0.0.1:$port" \
    UPSTREAM_BASE_URL="http://127.0.0.1:$PLATFORM_PORT" \
    UPSTREAM_TOKEN=bench ALLOW_UNAUTHENTICATED=true \
    LOG_FORMAT=json RUST_LOG=warn \
    CLIENT_RATE_PER_SECOND=10000000 CLIENT_BURST=10000000 \
    UPSTREAM_RATE_PER_SECOND=100000 UPSTREAM_BURST=10000 \
    SHUTDOWN_DRAIN_SECONDS=0 SHUTDOWN_TIMEOUT_SECONDS=5 \
    "$@" \
    taskset -c "$SERVER_CPU" "$GATEWAY_BIN" serve >"$WORK/gateway-$name.log" 2>&1 &
  GATEWAY_PID=$!; PIDS+=("$GATEWAY_PID")
  GATEWAY_URL="http://127.0.0.1:$port/graphql"
  if ! wait_http "http://127.0.0.1:$port/readyz" "$GATEWAY_PID"; then
    echo "---- gateway ($name) log:" >&2; cat "$WORK/gateway-$name.log" >&2
    die "the gateway ($name, settings: $*) did not start"
  fi
}
stop_gateway() {
  kill -TERM "$GATEWAY_PID" 2>/dev/null || true
  wait "$GATEWAY_PID" 2>/dev/null || true
}

# Per row "workload|target": accumulated figures.
declare -A RPS REQS TICKS ERRS P50 P99 PACE_NOTE HWM PLAT CLIENT
ROWS=()

add_row() { # key
  local k=$1
  [[ " ${ROWS[*]:-} " == *" $k "* ]] || ROWS+=("$k")
  : "${RPS[$k]:=}" "${REQS[$k]:=0}" "${TICKS[$k]:=0}" "${ERRS[$k]:=0}"
}

run_wrk() { # key url bodies pid authorization
  local k=$1 url=$2 bodies=$3 pid=$4 auth=$5 out t0 t1 reqs rps errs
  t0=$(cpu_ticks "$pid")
  out=$(BODIES="$bodies" AUTHORIZATION="$auth" taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 5s -s bench/requests.lua "$url" 2>&1) \
    || { echo "$out" >&2; die "wrk failed against $url"; }
  t1=$(cpu_ticks "$pid")
  reqs=$(awk '/ requests in / { print $1 }' <<<"$out")
  rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
  errs=$(awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' <<<"$out")
  if [ -z "$reqs" ] || [ -z "$rps" ]; then echo "$out" >&2; die "cannot read wrk's output"; fi
  add_row "$k"
  RPS[$k]="${RPS[$k]} $rps"
  REQS[$k]=$((REQS[$k] + reqs))
  TICKS[$k]=$((TICKS[$k] + t1 - t0))
  ERRS[$k]=$((ERRS[$k] + errs))
  LAST_REQS=$reqs
  say "  $k: $rps req/s ($reqs requests, $errs errors)"
}

run_pace() { # key url bodies authorization
  local k=$1 url=$2 bodies=$3 auth=$4 out
  local extra=()
  if [ -n "$auth" ]; then extra=(--authorization "$auth"); fi
  out=$(taskset -c "$LOAD_CPU" "$TOOLS_BIN" pace --url "$url" --rate "$RATE" --seconds "$PACE_SECONDS" \
    --bodies "$bodies" --connections "$PACE_CONNECTIONS" "${extra[@]}") || die "pace failed against $url"
  add_row "$k"
  P50[$k]=$(grep -o 'p50_us=[0-9]*' <<<"$out" | cut -d= -f2)
  P99[$k]=$(grep -o 'p99_us=[0-9]*' <<<"$out" | cut -d= -f2)
  local answered errors achieved
  answered=$(grep -o 'answered=[0-9]*' <<<"$out" | cut -d= -f2)
  errors=$(grep -o 'errors=[0-9]*' <<<"$out" | cut -d= -f2)
  achieved=$(grep -o 'achieved_rate=[0-9]*' <<<"$out" | cut -d= -f2)
  ERRS[$k]=$((ERRS[$k] + errors))
  LAST_REQS=$answered
  PACE_NOTE[$k]=""
  if [ "$achieved" -lt $((RATE * 95 / 100)) ]; then PACE_NOTE[$k]=" (saturated: $achieved/s)"; fi
  say "  $k paced at $RATE/s: $out"
}

# One run of a workload's gateway (wrk or the pacer), then the same on the
# reference, with the same requests (the reference ignores the credential).
# Platform requests are counted from before the gateway's run to after the
# reference's: requests still in flight when the load stops are counted, and
# the reference and the other gateways make none meanwhile.
#   gateway_run wrk|pace SPEC URL PID
gateway_run() {
  local kind=$1 spec=$2 url=$3 pid=$4 label bodies auth p0 client
  IFS='|' read -r label bodies _ auth _ <<<"$spec"
  p0=$(platform_count)
  if [ "$kind" = wrk ]; then run_wrk "$label|gateway" "$url" "$bodies" "$pid" "$auth"
  else run_pace "$label|gateway" "$url" "$bodies" "$auth"; fi
  client=$LAST_REQS
  if [ "$kind" = wrk ]; then run_wrk "$label|reference" "$REFERENCE_URL" "$bodies" "$REFERENCE_PID" "$auth"
  else run_pace "$label|reference" "$REFERENCE_URL" "$bodies" "$auth"; fi
  PLAT[$label|gateway]=$((PLAT[$label|gateway] + $(platform_count) - p0))
  CLIENT[$label|gateway]=$((CLIENT[$label|gateway] + client))
}

# One or more workloads, each on a fresh gateway of its own, their rounds
# interleaved: a comparison between two of them (the hot query with and
# without an API key) is then not skewed by the machine's speed drifting
# between them. Each SPEC is
#   "LABEL|BODIES|WARM|AUTHORIZATION|VAR=value VAR=value"
# WARM is a bodies file to check (and warm up) the gateway with, or "-";
# AUTHORIZATION the header value every request carries, or empty.
workloads() {
  local specs=("$@") n=$# i label bodies warm auth settings gk p0 code _
  local pids=() urls=() check_auth=()
  for ((i = 0; i < n; i++)); do
    IFS='|' read -r label bodies warm auth settings <<<"${specs[i]}"
    say "workload: $label"
    # shellcheck disable=SC2086 # settings are VAR=value words
    start_gateway "$(tr -cs 'a-z0-9' '-' <<<"$label" | sed 's/-$//')" $settings
    pids+=("$GATEWAY_PID"); urls+=("$GATEWAY_URL")
    gk="$label|gateway"
    add_row "$gk"; add_row "$label|reference"
    PLAT[$gk]=0; CLIENT[$gk]=0
    if [ -n "$auth" ]; then
      # The production setting: without the credential, a refusal.
      code=$(curl -s -o /dev/null -w '%{http_code}' "$GATEWAY_URL" -H 'content-type: application/json' --data-binary "@$bodies")
      [ "$code" = 401 ] || die "$label: a request without the credential got HTTP $code, not 401"
    fi
    if [ "$warm" != - ]; then
      p0=$(platform_count)
      check_auth=()
      if [ -n "$auth" ]; then check_auth=(--authorization "$auth"); fi
      "$TOOLS_BIN" check --url "$GATEWAY_URL" --bodies "$warm" "${check_auth[@]}" >/dev/null || die "$label: a request failed (above)"
      PLAT[$gk]=$((PLAT[$gk] + $(platform_count) - p0))
      CLIENT[$gk]=$((CLIENT[$gk] + $(grep -c . "$warm")))
    fi
  done
  for _ in $(seq 1 "$ROUNDS"); do
    for ((i = 0; i < n; i++)); do gateway_run wrk "${specs[i]}" "${urls[i]}" "${pids[i]}"; done
  done
  for ((i = 0; i < n; i++)); do gateway_run pace "${specs[i]}" "${urls[i]}" "${pids[i]}"; done
  for ((i = 0; i < n; i++)); do
    IFS='|' read -r label _ <<<"${specs[i]}"
    HWM[$label|gateway]=$(hwm_kib "${pids[i]}")
    HWM[$label|reference]=$(hwm_kib "$REFERENCE_PID")
    GATEWAY_PID=${pids[i]}; stop_gateway
  done
}

# ------------------------------------------------------------------ the reference
say "fetching the gateway's response to the hot query"
start_gateway probe
curl -sf "$GATEWAY_URL" -H 'content-type: application/json' --data-binary "@$HOT" -o "$WORK/hot-response.json" \
  || die "the hot query failed"
grep -q '"errors"' "$WORK/hot-response.json" && { cat "$WORK/hot-response.json" >&2; die "the hot query answered errors"; }
stop_gateway
say "starting the reference endpoint on 127.0.0.1:$REFERENCE_PORT (core $SERVER_CPU), $(wc -c <"$WORK/hot-response.json") bytes"
taskset -c "$SERVER_CPU" "$TOOLS_BIN" reference --listen "127.0.0.1:$REFERENCE_PORT" --body "$WORK/hot-response.json" >"$WORK/reference.log" 2>&1 &
REFERENCE_PID=$!; PIDS+=("$REFERENCE_PID")
REFERENCE_URL="http://127.0.0.1:$REFERENCE_PORT/graphql"
for _ in $(seq 1 100); do
  curl -sf -o /dev/null -X POST --data-binary '{}' "$REFERENCE_URL" && break
  kill -0 "$REFERENCE_PID" 2>/dev/null || die "the reference endpoint did not start"
  sleep 0.1
done

# ------------------------------------------------------------------ workloads
W_HOT="hot"
W_HOTKEY="hot, API key"
W_MIXED="mixed (64 queries)"
W_WALK="paging walk"
W_WALKNC="paging walk, response cache off"
W_MEMORY="hot, response cache off"
W_HOTREDIS="hot, Redis"
W_WALKREDIS="paging walk, Redis"

# The hot query without and with a credential: their rounds are interleaved.
# With a key, the gateway runs as in production: API_KEYS_FILE and no
# unauthenticated access.
SPEC_HOT="$W_HOT|$HOT|$HOT||"
SPEC_HOTKEY="$W_HOTKEY|$HOT|$HOT|$BENCH_AUTHORIZATION|API_KEYS_FILE=$WORK/api-keys ALLOW_UNAUTHENTICATED=false"
HOT_SPECS=()
if wanted hot; then HOT_SPECS+=("$SPEC_HOT"); fi
if wanted hotkey; then HOT_SPECS+=("$SPEC_HOTKEY"); fi
# With shared state on: moka answers first, so it should cost (almost) nothing.
if wanted hotredis; then HOT_SPECS+=("$W_HOTREDIS|$HOT|$HOT||REDIS_URL=$REDIS_URL"); fi
if [ "${#HOT_SPECS[@]}" -gt 0 ]; then workloads "${HOT_SPECS[@]}"; fi

if wanted mixed; then workloads "$W_MIXED|$MIXED|$MIXED||"; fi

if wanted walk || wanted walknc || wanted walkredis || wanted walk3; then
  say "building the paging walk through a scout gateway"
  start_gateway scout
  WALK_INFO=$("$TOOLS_BIN" walk --url "$GATEWAY_URL" --out "$WORK/walk.txt") || die "the paging walk failed (above)"
  stop_gateway
  DISTINCT_PAGES=$(grep -o 'distinct_pages=[0-9]*' <<<"$WALK_INFO" | cut -d= -f2)
  WALK_BODIES=$(grep -o 'bodies=[0-9]*' <<<"$WALK_INFO" | cut -d= -f2)
  # No warm-up: the first round meets a cold gateway with every connection
  # asking for pages of the same range at once.
  WALK_SPECS=()
  if wanted walk; then WALK_SPECS+=("$W_WALK|$WORK/walk.txt|-||"); fi
  if wanted walkredis; then WALK_SPECS+=("$W_WALKREDIS|$WORK/walk.txt|-||REDIS_URL=$REDIS_URL"); fi
  if [ "${#WALK_SPECS[@]}" -gt 0 ]; then workloads "${WALK_SPECS[@]}"; fi
  # Every request of the walk carries a cursor (or range) of its own, and
  # with the response cache off each is parsed, validated and executed over
  # the page cache (which stays on): the no-cache path.
  if wanted walknc; then workloads "$W_WALKNC|$WORK/walk.txt|-||RESPONSE_CACHE_MAX_BYTES=0"; fi
fi

# The walk's platform requests: one gateway alone, then three sharing Redis,
# each sent a third of the walk's requests (every third line), concurrently.
if wanted walk3; then
  say "paging walk: one gateway, then three sharing Redis"
  start_gateway walk-one
  p0=$(platform_count)
  "$TOOLS_BIN" check --url "$GATEWAY_URL" --bodies "$WORK/walk.txt" >/dev/null || die "walk3: a request failed (above)"
  WALK_ONE=$(($(platform_count) - p0))
  stop_gateway
  redis-cli -p "$REDIS_PORT" FLUSHALL >/dev/null
  W3_URLS=(); W3_PIDS=()
  for i in 0 1 2; do
    awk -v i="$i" 'NR % 3 == i' "$WORK/walk.txt" >"$WORK/walk-$i.txt"
    start_gateway "walk-replica-$i" REDIS_URL="$REDIS_URL"
    wait_redis_up
    W3_URLS+=("$GATEWAY_URL"); W3_PIDS+=("$GATEWAY_PID")
  done
  p0=$(platform_count)
  CHECKS=()
  for i in 0 1 2; do
    "$TOOLS_BIN" check --url "${W3_URLS[i]}" --bodies "$WORK/walk-$i.txt" >/dev/null &
    CHECKS+=("$!")
  done
  for c in "${CHECKS[@]}"; do wait "$c" || die "walk3: a request failed (above)"; done
  WALK_THREE=$(($(platform_count) - p0))
  for p in "${W3_PIDS[@]}"; do GATEWAY_PID=$p; stop_gateway; done
  say "  walk3: $WALK_ONE platform requests on one gateway, $WALK_THREE over three sharing Redis"
fi

# "From memory": the hot query, page cache warm, response cache off.
if wanted memory; then workloads "$W_MEMORY|$HOT|$HOT||RESPONSE_CACHE_MAX_BYTES=0"; fi

# Live visits: the example starts its own simulated platform (whose visits it
# adds) and the release gateway, pinned like the others. Both processes hold
# one socket per subscriber.
if wanted live; then
  say "workload: live ($LIVE_SUBSCRIBERS subscribers on one activity)"
  need=$((LIVE_SUBSCRIBERS + 1024))
  if [ "$(ulimit -n)" -lt "$need" ]; then
    ulimit -n "$need" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  fi
  [ "$(ulimit -n)" -ge "$need" ] || die "live: $need file descriptors needed, ulimit -n allows $(ulimit -n) (raise the hard limit)"
  LIVE_LINE=$(taskset -c "$LOAD_CPU" "$TARGET_DIR/release/examples/live_bench" --gateway "$GATEWAY_BIN" \
    --gateway-cpu "$SERVER_CPU" --gateway-log "$WORK/gateway-live.log" --subscribers "$LIVE_SUBSCRIBERS" \
    --rounds "$LIVE_ROUNDS" --idle-polls "$LIVE_IDLE_POLLS") \
    || { cat "$WORK/gateway-live.log" >&2; die "the live workload failed (above)"; }
  say "  $LIVE_LINE"
fi
live_field() { grep -o "$1=[0-9.]*" <<<"$LIVE_LINE" | cut -d= -f2; }

# ------------------------------------------------------------------ the table
us_per_req() { # key
  local k=$1
  if [ "${REQS[$k]}" -gt 0 ]; then calc "%.1f" "${TICKS[$k]} * 1000000 / $CLK_TCK / ${REQS[$k]}"; else echo "-"; fi
}
mib() { if [ -n "${1:-}" ]; then calc "%.1f MiB" "$1 / 1024"; else echo "-"; fi; }
ratio_between() { # label other: one gateway's median req/s over another's
  # shellcheck disable=SC2086
  calc "%.2f" "$(median ${RPS[$1|gateway]}) / $(median ${RPS[$2|gateway]})"
}
ratio_of() { # label: the gateway's median req/s over the reference's
  # shellcheck disable=SC2086
  calc "%.2f" "$(median ${RPS[$1|gateway]}) / $(median ${RPS[$1|reference]})"
}

{
  echo "## visits-gateway bench, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "$(git describe --always --dirty 2>/dev/null || echo unknown) · $(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)) · server on core $SERVER_CPU, load generator and stand-in platform on core $LOAD_CPU"
  echo "wrk -t1 -c$CONNECTIONS, $ROUNDS alternating round(s) of ${DURATION} s; p50/p99 paced at $RATE req/s over $PACE_CONNECTIONS connections for ${PACE_SECONDS} s"
  echo
  echo "| workload | target | req/s | p50 | p99 | CPU µs/req | peak RSS | platform req / client req | vs reference |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
  for k in "${ROWS[@]}"; do
    label=${k%|*}; tgt=${k#*|}
    # shellcheck disable=SC2086
    rps=$(median ${RPS[$k]})
    ratio="-"
    if [ "$tgt" = gateway ]; then
      # shellcheck disable=SC2086
      ref=$(median ${RPS[$label|reference]})
      ratio=$(calc "%.2f" "$rps / $ref")
      plat="$(awk -v p="${PLAT[$k]}" -v c="${CLIENT[$k]}" 'BEGIN { r = p / c; printf (r >= 0.1 ? "%.3f" : "%.2g"), r }') (${PLAT[$k]}/${CLIENT[$k]})"
    else
      plat="-"; ratio="1.00"
    fi
    p50=$(calc "%.0f µs" "${P50[$k]}"); p99=$(calc "%.0f µs" "${P99[$k]}")
    echo "| $label | $tgt | $(calc "%.0f" "$rps") | $p50 | $p99${PACE_NOTE[$k]} | $(us_per_req "$k") | $(mib "${HWM[$k]:-}") | $plat | $ratio |"
  done
  echo
  if wanted hotkey; then
    echo "- **Hot query with an API key vs. issue 12's target:** $(ratio_of "$W_HOTKEY") of the reference's req/s (target ≥ 0.75)$(if wanted hot; then echo "; $(ratio_of "$W_HOT") without a key, their rounds interleaved"; fi). The gateway has API_KEYS_FILE and no unauthenticated access; every request carries \`Authorization: Bearer <key>\` (to the reference too, which ignores it); p99 ${P99[$W_HOTKEY|gateway]} µs at $RATE req/s."
  fi
  if wanted walknc; then
    echo "- **Paging walk, response cache off, vs. issue 12's target:** $(ratio_of "$W_WALKNC") of the reference's req/s (target ≥ 0.10): the walk's requests (each with a cursor of its own) on a gateway with RESPONSE_CACHE_MAX_BYTES=0, so every one is parsed, validated and executed over the page cache; ${PLAT[$W_WALKNC|gateway]} platform requests for $DISTINCT_PAGES distinct upstream pages."
  fi
  if wanted walk; then
    echo "- **Paging walk:** ${PLAT[$W_WALK|gateway]} platform requests for $DISTINCT_PAGES distinct upstream pages ($WALK_BODIES page requests of 8 clients' walks over one 30-day range, \`first\` 7 to 100, rotated over $CONNECTIONS connections; the first round hits a cold gateway)."
  fi
  if wanted hot; then
    echo "- **Hot query vs. issue 7's targets:** $(ratio_of "$W_HOT") of the reference's req/s (target ≥ 0.35); p99 ${P99[$W_HOT|gateway]} µs at $RATE req/s (target < 1000); peak RSS $(mib "${HWM[$W_HOT|gateway]}") (target < 40 MiB)."
  fi
  if wanted live; then
    echo "- **Live visits vs. issue 14's targets:** $(live_field subscribers) subscribers on one activity, each on its own WebSocket, LIVE_POLL_SECONDS=$(live_field poll_seconds): $(live_field idle_platform_requests_per_poll) platform requests per poll interval with nothing new ($(live_field idle_platform_requests) over $(live_field idle_polls) polls; target ≤ 1); $(live_field rss_per_subscriber_kib) KiB of gateway RSS per idle subscriber (target < 16); delivery delay from the poll to each subscriber p50 $(live_field delay_p50_ms) ms, p99 $(live_field delay_p99_ms) ms (target < 100), to the last subscriber $(live_field last_subscriber_median_ms) ms (median of $(live_field rounds) visits), at worst $(live_field last_subscriber_max_ms) ms; connecting them all took $(live_field connect_seconds) s."
  fi
  if wanted hotredis && wanted hot; then
    echo "- **Hot query with Redis configured:** $(ratio_between "$W_HOTREDIS" "$W_HOT") of the req/s without it, their rounds interleaved (target ≥ 0.90: the first level, moka, answers first); p99 ${P99[$W_HOTREDIS|gateway]} µs vs ${P99[$W_HOT|gateway]} µs at $RATE req/s."
  fi
  if wanted walkredis && wanted walk; then
    echo "- **Paging walk with Redis configured:** $(ratio_between "$W_WALKREDIS" "$W_WALK") of the req/s without it, their rounds interleaved (target ≥ 0.90); ${PLAT[$W_WALKREDIS|gateway]} platform requests vs ${PLAT[$W_WALK|gateway]} for $DISTINCT_PAGES distinct upstream pages."
  fi
  if wanted walk3; then
    echo "- **Paging walk over three replicas sharing Redis:** $WALK_THREE platform requests, against $WALK_ONE on one gateway alone ($DISTINCT_PAGES distinct upstream pages; $WALK_BODIES requests, every third to each replica, the three concurrently)."
  fi
  echo "- **Page cache memory per visit** (\`bench_servers memory\`; issue 12's target: no larger than the JSON): ${MEMORY_LINE#page cache memory per visit: }."
  total_errs=0
  for k in "${ROWS[@]}"; do total_errs=$((total_errs + ERRS[$k])); done
  if [ "$total_errs" -gt 0 ]; then
    echo "- **Errors:** $(for k in "${ROWS[@]}"; do [ "${ERRS[$k]}" -gt 0 ] && printf '%s: %s; ' "$k" "${ERRS[$k]}"; done) (non-2xx answers, socket errors or timeouts)."
  fi
  echo
  echo "How to read it: req/s is wrk's, the median of the rounds (closed loop, $CONNECTIONS connections); p50/p99 come from \`bench_servers pace\`, which sends at a fixed rate and measures each request from its scheduled send time (a stall counts against every request it delays); CPU µs/req is the server process's utime+stime over the wrk runs divided by the requests wrk completed; peak RSS is the server's VmHWM at the end of the workload (the reference's covers its whole life); platform req / client req counts every request the gateway sent the stand-in platform while serving the workload, over the requests answered (warm-up included; requests in flight when a wrk run stops may reach the platform but are not counted as answered); vs reference is the gateway's req/s over the reference's in the same workload's alternating rounds. The reference endpoint always answers the hot query's response bytes ($(wc -c <"$WORK/hot-response.json") bytes)."
  echo
  echo "Per-round req/s:"
  echo
  for k in "${ROWS[@]}"; do echo "- $k:${RPS[$k]}"; done
} | tee "$OUT/results.md"
say "written to $OUT/results.md"
