#!/usr/bin/env python3
"""Checks one `helm template` rendering of the visits-gateway chart.

Usage: check_rendered.py PROFILE RENDERED.yaml CORE_OUT.yaml

1. Custom resources (ServiceMonitor) are validated against
   helm/ci/servicemonitor-v1.schema.json, since kubernetes-validate has no CRD
   schemas (it would only print a warning and pass them).
2. Every other document is written to CORE_OUT.yaml, for
   `kubernetes-validate --strict`.
3. The chart's contract is asserted for PROFILE (default, all-on or
   existing-secret): hardening, probes, env names, mounts, which optional
   objects exist.

Needs PyYAML and jsonschema (both come with kubernetes-validate).
"""

import json
import os
import sys

import jsonschema
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-v1.schema.json",
}
SECRET_DIR = "/var/run/secrets/visits-gateway"

failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)


def by_kind(docs, kind, hook=None):
    out = []
    for d in docs:
        if d["kind"] != kind:
            continue
        is_hook = "helm.sh/hook" in (d["metadata"].get("annotations") or {})
        if hook is None or hook == is_hook:
            out.append(d)
    return out


def one(docs, kind, hook=False):
    found = by_kind(docs, kind, hook)
    check(len(found) == 1, f"expected exactly one {kind}, found {len(found)}")
    return found[0] if found else None


def assert_hardened(pod_spec, container, what):
    psc = pod_spec.get("securityContext") or {}
    csc = container.get("securityContext") or {}
    check(psc.get("runAsNonRoot") is True or csc.get("runAsNonRoot") is True, f"{what}: runAsNonRoot")
    check(65532 in (psc.get("runAsUser"), csc.get("runAsUser")), f"{what}: runAsUser 65532")
    check(csc.get("allowPrivilegeEscalation") is False, f"{what}: allowPrivilegeEscalation false")
    check(csc.get("readOnlyRootFilesystem") is True, f"{what}: readOnlyRootFilesystem")
    check((csc.get("capabilities") or {}).get("drop") == ["ALL"], f"{what}: capabilities drop ALL")
    seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    check(seccomp == "RuntimeDefault", f"{what}: seccompProfile RuntimeDefault")
    check(pod_spec.get("automountServiceAccountToken") is False, f"{what}: automountServiceAccountToken false")


def assert_contract(profile, docs):
    dep = one(docs, "Deployment")
    cm = one(docs, "ConfigMap")
    svc = one(docs, "Service")
    sa = one(docs, "ServiceAccount")
    if not (dep and cm and svc and sa):
        return
    env = cm["data"]
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    (ctr,) = pod["containers"]

    # Hardening, service account.
    assert_hardened(pod, ctr, "gateway")
    check(sa.get("automountServiceAccountToken") is False, "ServiceAccount: automountServiceAccountToken false")
    check(pod.get("serviceAccountName") == sa["metadata"]["name"], "pod runs as the chart's ServiceAccount")

    # Probes on the real endpoints, on the main port.
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        get = (ctr.get(probe) or {}).get("httpGet") or {}
        check(get.get("path") == path and get.get("port") == "http", f"{probe}: GET {path} on port http")
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    check(env["LISTEN_ADDR"] == f"0.0.0.0:{ports['http']}", "LISTEN_ADDR matches the http container port")
    check(ctr.get("resources", {}).get("requests"), "resources.requests set")
    check(ctr.get("args") == ["serve"], "container args: serve")

    # Shutdown: the kubelet waits longer than drain + shutdown timeout.
    drain = int(env["SHUTDOWN_DRAIN_SECONDS"])
    timeout = int(env["SHUTDOWN_TIMEOUT_SECONDS"])
    check(pod["terminationGracePeriodSeconds"] > drain + timeout,
          "terminationGracePeriodSeconds > SHUTDOWN_DRAIN_SECONDS + SHUTDOWN_TIMEOUT_SECONDS")

    # Config and secrets.
    annotations = spec["template"]["metadata"].get("annotations") or {}
    check(len(annotations.get("checksum/config", "")) == 64, "checksum/config annotation on the pod template")
    check(ctr.get("envFrom") == [{"configMapRef": {"name": cm["metadata"]["name"]}}], "env from the ConfigMap")
    for name in ("UPSTREAM_BASE_URL", "UPSTREAM_TOKEN_FILE", "ALLOW_UNAUTHENTICATED", "PLAYGROUND_ENABLED",
                 "INTROSPECTION_ENABLED", "LOG_FORMAT", "RUST_LOG"):
        check(name in env, f"ConfigMap sets {name}")
    check(env["UPSTREAM_TOKEN_FILE"] == f"{SECRET_DIR}/upstream-token", "UPSTREAM_TOKEN_FILE path")
    check("UPSTREAM_TOKEN" not in env, "no plaintext token in the ConfigMap")
    mounts = {m["name"]: m for m in ctr["volumeMounts"]}
    check(mounts.get("secrets", {}).get("mountPath") == SECRET_DIR and "subPath" not in mounts.get("secrets", {}),
          f"Secret mounted as a directory at {SECRET_DIR} (no subPath, so rotation reaches the pod)")
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret_name = volumes["secrets"]["secret"]["secretName"]
    secrets = by_kind(docs, "Secret", hook=False)

    # The helm test pod: hardened, not matched by the Deployment's selector.
    test_pods = by_kind(docs, "Pod", hook=True)
    check(len(test_pods) == 1, "one helm test pod")
    for tp in test_pods:
        check(tp["metadata"]["annotations"]["helm.sh/hook"] == "test", "test pod is a test hook")
        (tc,) = tp["spec"]["containers"]
        assert_hardened(tp["spec"], tc, "test pod")
        selector = spec["selector"]["matchLabels"]
        labels = tp["metadata"]["labels"]
        check(not all(labels.get(k) == v for k, v in selector.items()),
              "test pod must not match the Deployment's selector")
        script = tc["command"][-1]
        check('{"query":"{ __typename }"}' in script and "/graphql" in json.dumps(tc["env"]),
              "test pod POSTs { __typename } to /graphql")

    hpa = by_kind(docs, "HorizontalPodAutoscaler")
    pdb = by_kind(docs, "PodDisruptionBudget")
    kinds = {d["kind"] for d in docs}

    if profile == "default":
        check(spec.get("replicas") == 2, "default: 2 replicas")
        check(not hpa, "default: no HPA")
        check(len(pdb) == 1, "default: PDB with 2 replicas")
        check(len(secrets) == 1 and secrets[0]["metadata"]["name"] == secret_name, "default: chart-made Secret is mounted")
        check(env.get("API_KEYS_FILE") == f"{SECRET_DIR}/api-keys", "default: API_KEYS_FILE")
        check(env["ALLOW_UNAUTHENTICATED"] == "false", "default: ALLOW_UNAUTHENTICATED=false")
        check("METRICS_LISTEN_ADDR" not in env, "default: metrics on the main port")
        check(not kinds & {"Ingress", "ServiceMonitor", "NetworkPolicy"}, "default: no optional objects")
        check(not {"REDIS_URL", "REDIS_PASSWORD_FILE", "EXPECTED_REPLICAS"} & set(env) and "env" not in ctr,
              "default: no Redis settings")
    elif profile == "all-on":
        check("replicas" not in spec, "all-on: no replicas in the Deployment when the HPA is on")
        check(len(hpa) == 1 and hpa[0]["apiVersion"] == "autoscaling/v2", "all-on: autoscaling/v2 HPA")
        check(len(pdb) == 1, "all-on: PDB")
        for kind in ("Ingress", "ServiceMonitor", "NetworkPolicy"):
            check(kind in kinds, f"all-on: {kind} rendered")
        check(env.get("METRICS_LISTEN_ADDR") == f"0.0.0.0:{ports.get('metrics')}", "all-on: METRICS_LISTEN_ADDR")
        check(any(p["name"] == "metrics" for p in svc["spec"]["ports"]), "all-on: Service has a metrics port")
        sm = by_kind(docs, "ServiceMonitor")[0]
        check(sm["spec"]["endpoints"][0]["port"] == "metrics" and sm["spec"]["endpoints"][0]["path"] == "/metrics",
              "all-on: ServiceMonitor scrapes /metrics on the metrics port")
        check(len(secrets) == 1
              and set(secrets[0]["data"]) == {"upstream-token", "api-keys", "jwt-hs256-secret", "redis-password"},
              "all-on: Secret holds upstream-token, api-keys, jwt-hs256-secret, redis-password")
        check(env.get("JWT_HS256_SECRET_FILE") == f"{SECRET_DIR}/jwt-hs256-secret", "all-on: JWT_HS256_SECRET_FILE")
        for name in ("JWT_ISSUER", "JWT_AUDIENCE", "CORS_ALLOWED_ORIGINS", "CACHE_MAX_BYTES",
                     "UPSTREAM_RATE_PER_SECOND", "UPSTREAM_BURST"):
            check(name in env, f"all-on: {name} set")
        check(env.get("CACHE_MAX_BYTES") == "134217728", "all-on: integers are rendered without exponent")
        np = by_kind(docs, "NetworkPolicy")[0]["spec"]
        egress_ports = [(p.get("port"), p.get("protocol")) for rule in np["egress"] for p in rule.get("ports", [])]
        check((53, "UDP") in egress_ports and (53, "TCP") in egress_ports, "all-on: egress to DNS on 53 UDP+TCP")
        check((443, "TCP") in egress_ports, "all-on: egress to the platform on 443")
        check(len(by_kind(docs, "Secret", hook=True)) == 1, "all-on: test API key in a hook Secret")
        check(env.get("REDIS_URL", "").startswith("rediss://") and "@" not in env["REDIS_URL"],
              "all-on: REDIS_URL from values, without credentials")
        check(env.get("REDIS_PASSWORD_FILE") == f"{SECRET_DIR}/redis-password", "all-on: REDIS_PASSWORD_FILE")
        check(env.get("EXPECTED_REPLICAS") == "8", "all-on: EXPECTED_REPLICAS defaults to autoscaling.maxReplicas")
        redis_rules = [r for r in np["egress"] if any(p.get("port") == 6380 for p in r.get("ports", []))]
        check(len(redis_rules) == 1 and redis_rules[0].get("to"), "all-on: egress to Redis on its port, to its peers")
    elif profile == "existing-secret":
        check(not secrets, "existing-secret: the chart creates no Secret")
        check(secret_name == "visits-gateway-credentials", "existing-secret: the existing Secret is mounted")
        check(not pdb, "existing-secret: no PDB for a single replica")
        check("API_KEYS_FILE" not in env, "existing-secret: API keys off")
        check(env.get("JWT_PUBLIC_KEY_FILE") == f"{SECRET_DIR}/jwt-public-key", "existing-secret: JWT_PUBLIC_KEY_FILE")
        sm = by_kind(docs, "ServiceMonitor")
        check(sm and sm[0]["spec"]["endpoints"][0]["port"] == "http", "existing-secret: metrics scraped on the http port")
        check("REDIS_URL" not in env and ctr.get("env") == [{"name": "REDIS_URL", "valueFrom": {"secretKeyRef": {
              "name": "visits-gateway-redis", "key": "url"}}}], "existing-secret: REDIS_URL from its Secret")
        check(env.get("EXPECTED_REPLICAS") == "1", "existing-secret: EXPECTED_REPLICAS defaults to replicaCount")
        np = by_kind(docs, "NetworkPolicy")[0]["spec"]
        check(any("to" not in r and [p.get("port") for p in r["ports"]] == [6379] for r in np["egress"]),
              "existing-secret: egress to Redis on 6379")
    else:
        failures.append(f"unknown profile {profile}")


def main():
    profile, rendered, core_out = sys.argv[1:4]
    with open(rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    core = []
    for d in docs:
        key = (d.get("apiVersion"), d.get("kind"))
        if key in CRD_SCHEMAS:
            with open(os.path.join(HERE, CRD_SCHEMAS[key])) as f:
                schema = json.load(f)
            validator = jsonschema.Draft202012Validator(schema)
            for err in validator.iter_errors(d):
                path = ".".join(str(p) for p in err.absolute_path)
                failures.append(f"{d['kind']}/{d['metadata'].get('name')}: {path}: {err.message}")
        else:
            core.append(d)
    with open(core_out, "w") as f:
        yaml.safe_dump_all(core, f, sort_keys=False)
    assert_contract(profile, docs)
    if failures:
        for msg in failures:
            print(f"FAIL [{profile}] {msg}", file=sys.stderr)
        sys.exit(1)
    n_crd = len(docs) - len(core)
    print(f"ok [{profile}] {len(docs)} documents: contract holds; {n_crd} custom resource(s) valid against their schema")


if __name__ == "__main__":
    main()
