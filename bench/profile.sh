#!/usr/bin/env bash
# Where the time goes: a flat `perf` profile (cpu-clock samples, so it works
# without hardware counters) of the release gateway under wrk, for one of
# bench/run.sh's workloads: the hot query (response cache on), the same with
# an API key, the hot query with the response cache off, or the paging walk
# with the response cache off (every request executed).
#   bench/profile.sh [hot|hotkey|memory|walknc] [seconds]
# Prints the top symbols; the full report is in bench/out/profile-<mode>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-hot}; SECONDS_=${2:-8}
TARGET=${CARGO_TARGET_DIR:-target}
command -v perf >/dev/null || { apt-get install -y -qq linux-perf >/dev/null; }
command -v wrk >/dev/null || { apt-get install -y -qq wrk >/dev/null; }
# Two builds, so the gateway is built without the example's `test-hooks`.
cargo build --release --locked --quiet --bin visits-gateway
cargo build --release --locked --quiet --example bench_servers
BIN=$TARGET/release/visits-gateway; TOOLS=$TARGET/release/examples/bench_servers
WORK=$(mktemp -d); mkdir -p bench/out
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
taskset -c 1 "$TOOLS" platform --listen 127.0.0.1:19390 >/dev/null 2>&1 &
"$TOOLS" bodies --out-dir "$WORK" >/dev/null
KEY=vgk_bench_0123456789abcdef0123456789abcdef
printf 'bench %s *\n' "$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)" >"$WORK/api-keys"
AUTHORIZATION=
BODIES=$WORK/hot.json
case $MODE in
  hot) EXTRA=(ALLOW_UNAUTHENTICATED=true) ;;
  hotkey) EXTRA=(API_KEYS_FILE="$WORK/api-keys"); AUTHORIZATION="Bearer $KEY" ;;
  memory) EXTRA=(ALLOW_UNAUTHENTICATED=true RESPONSE_CACHE_MAX_BYTES=0) ;;
  walknc) EXTRA=(ALLOW_UNAUTHENTICATED=true RESPONSE_CACHE_MAX_BYTES=0); BODIES=$WORK/walk.txt ;;
  *) echo "mode: hot, hotkey, memory or walknc" >&2; exit 2 ;;
esac
export AUTHORIZATION BODIES
env LISTEN_ADDR=127.0.0.1:19391 UPSTREAM_BASE_URL=http://127.0.0.1:19390 UPSTREAM_TOKEN=bench \
  RUST_LOG=warn CLIENT_RATE_PER_SECOND=100000 CLIENT_BURST=100000 \
  UPSTREAM_RATE_PER_SECOND=100000 UPSTREAM_BURST=10000 SHUTDOWN_DRAIN_SECONDS=0 "${EXTRA[@]}" \
  taskset -c 0 "$BIN" serve >/dev/null 2>&1 &
GW=$!
for _ in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:19391/readyz && break; sleep 0.1; done
# The walk's bodies come from walking the range through this gateway.
if [ "$MODE" = walknc ]; then "$TOOLS" walk --url http://127.0.0.1:19391/graphql --out "$BODIES" >/dev/null; fi
taskset -c 1 wrk -t1 -c64 -d2s -s bench/requests.lua http://127.0.0.1:19391/graphql >/dev/null
perf record -q -e cpu-clock -F 2000 -p "$GW" -o "$WORK/perf.data" -- sleep "$SECONDS_" >/dev/null 2>&1 &
PERF=$!
taskset -c 1 wrk -t1 -c64 -d"${SECONDS_}s" -s bench/requests.lua http://127.0.0.1:19391/graphql | grep -E "Requests/sec"
wait $PERF || true
{
  echo "## by binary"
  perf report -i "$WORK/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | sed 's/ *$//'
  echo "## by symbol"
  perf report -i "$WORK/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | sed -E 's/ +-? *-? *$//; s/ +$//'
} >"bench/out/profile-$MODE.txt"
head -n 40 "bench/out/profile-$MODE.txt"
