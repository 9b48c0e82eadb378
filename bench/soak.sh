#!/usr/bin/env bash
# The soak run: the simulated platform, the gateway and ~32 client
# tasks in one process, with platform faults switched on and off in a 60 s
# cycle. Prints a line every 10 s and a summary (errors by code, platform
# requests per client request, peak RSS, RSS at each minute); exits non-zero
# if any answer is not GraphQL JSON or carries an unexpected code.
#
#   bench/soak.sh                  # 5 minutes
#   bench/soak.sh --seconds 60     # any option of examples/soak.rs (--clients, --think-ms, ...)
#
# Output is also written to bench/out/soak.txt. Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
cargo build --release --locked --features test-hooks --example soak
mkdir -p bench/out
"${CARGO_TARGET_DIR:-target}/release/examples/soak" "$@" 2>&1 | tee bench/out/soak.txt
exit "${PIPESTATUS[0]}"
