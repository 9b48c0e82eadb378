#!/usr/bin/env python3
"""Checks one `helm template` rendering of the visits-gateway chart.

Usage: check_rendered.py PROFILE RENDERED.yaml CORE_OUT.yaml

1. Custom resources (ServiceMonitor, PrometheusRule) are validated against
   helm/ci/servicemonitor-v1.schema.json and prometheusrule-v1.schema.json,
   since kubernetes-validate has no CRD schemas (it would only print a warning
   and pass them).
2. Every other document is written to CORE_OUT.yaml, for
   `kubernetes-validate --strict`; a PrometheusRule's groups are written as a
   Prometheus rules file next to it (CORE_OUT with -rules.yaml), for
   `promtool check rules`.
3. The chart's contract is asserted for PROFILE (default, all-on or
   existing-secret): hardening, probes, env names, mounts, which optional
   objects exist.
4. Every setting of src/config.rs reaches the chart: the default rendering
   sets each one that has a default to that default (so values.yaml keeps the
   gateway's defaults), and the all-on rendering sets every one (so a new
   setting without a value in the chart fails here).
5. The Grafana dashboard is JSON, and it and the alert rules query only
   metrics the gateway exports (the `metrics!` table in src/telemetry.rs, with
   the suffixes Prometheus gives counters and histograms) or a few well-known
   ones of Prometheus and kube-state-metrics.

Needs PyYAML and jsonschema (both come with kubernetes-validate).
"""

import json
import math
import os
import re
import sys

import jsonschema
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-v1.schema.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-v1.schema.json",
}
SECRET_DIR = "/var/run/secrets/visits-gateway"
TELEMETRY_RS = os.path.join(HERE, "..", "..", "src", "telemetry.rs")
CONFIG_RS = os.path.join(HERE, "..", "..", "src", "config.rs")
# Settings the default rendering leaves to the gateway on purpose.
UNSET_BY_DEFAULT = {
    # Without Redis, UPSTREAM_RATE_PER_SECOND is each pod's own (1 replica).
    "EXPECTED_REPLICAS",
}
# Settings the all-on rendering cannot set.
NOT_ALL_ON = {
    "UPSTREAM_TOKEN",  # a secret: the chart sets UPSTREAM_TOKEN_FILE
    "JWT_PUBLIC_KEY_FILE",  # exclusive with HS256 (all-on); existing-secret sets it
}
# Series other exporters provide, which the alerts may use.
EXTERNAL_METRICS = {
    "up",  # Prometheus, per target
    "kube_deployment_status_replicas_available",  # kube-state-metrics
    "kube_deployment_spec_replicas",  # kube-state-metrics
}

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


def exported_metrics():
    """Series names the gateway exports, from the `metrics!` table: the
    registry prefix, then `_total` for counters and `_bucket`/`_sum`/`_count`
    for histograms, as Prometheus reads them."""
    with open(TELEMETRY_RS) as f:
        src = f.read()
    prefix = re.search(r'Registry::with_prefix\("([a-z_]+)"\)', src).group(1)
    table = re.search(r"^metrics! \{\n(.*?)^\}", src, re.S | re.M).group(1)
    names = set()
    for ty, name in re.findall(r'^\s*\w+:\s*(.+?)\s*=.*?,\s*"(\w+)",\s*"', table, re.M):
        full = f"{prefix}_{name}"
        if "Histogram" in ty:
            names |= {f"{full}_bucket", f"{full}_sum", f"{full}_count"}
        elif "Counter" in ty:
            names.add(f"{full}_total")
        elif "Gauge" in ty:
            names.add(full)
        else:
            failures.append(f"src/telemetry.rs: metric {name} has an unknown type {ty}")
    check(len(names) > 20, f"src/telemetry.rs: only {len(names)} series found in the metrics! table")
    return names


def gateway_settings():
    """Each setting of src/config.rs (an argument's `id`) and its default as
    text, or None when it has none: `default_value = "..."`, or a
    `default_value_t` of a number, a product of numbers, a boolean or an
    enum variant (clap prints those lower case)."""
    with open(CONFIG_RS) as f:
        src = f.read()
    settings = {}
    for arg in re.findall(r"#\[arg\((.*?)\)\]\s*pub ", src, re.S):
        name = re.search(r'\bid = "([A-Z][A-Z0-9_]*)"', arg).group(1)
        quoted = re.search(r'\bdefault_value = "([^"]*)"', arg)
        typed = re.search(r"\bdefault_value_t = ([^,]+)", arg)
        default = None
        if quoted:
            default = quoted.group(1)
        elif typed:
            expr = typed.group(1).strip().replace("_", "")
            if re.fullmatch(r"[0-9]+( \* [0-9]+)*", expr):
                default = str(math.prod(int(n) for n in expr.split(" * ")))
            elif re.fullmatch(r"[0-9]+\.[0-9]+|true|false", expr):
                default = expr
            elif m := re.fullmatch(r"\w+::(\w+)", expr):
                default = m.group(1).lower()
            else:
                failures.append(f"src/config.rs: cannot read the default of {name}: {expr!r}")
        settings[name] = default
    check(len(settings) > 50, f"src/config.rs: only {len(settings)} settings found")
    return settings


def same_value(rendered, default):
    try:
        return float(rendered) == float(default)
    except ValueError:
        return rendered == default


def assert_settings(profile, env, ctr):
    """The chart's side of every setting in src/config.rs (docstring, 4)."""
    names = set(env) | {e["name"] for e in ctr.get("env") or []}
    for name, default in sorted(gateway_settings().items()):
        if profile == "default" and default is not None and name not in UNSET_BY_DEFAULT:
            if name not in names:
                failures.append(f"default: {name} (src/config.rs) is not set: give it a value in values.yaml, "
                                "the gateway's default, and wire it in templates/_helpers.tpl")
            elif not same_value(env.get(name), default):
                failures.append(f"default: {name}={env.get(name)!r}, but the gateway's default is {default!r}")
        elif profile == "all-on" and name not in NOT_ALL_ON:
            check(name in names, f"all-on: {name} (src/config.rs) is not set: expose it in the chart and set it in helm/ci/all-on-values.yaml")


def queried_metrics(expr):
    """Metric names in a PromQL expression: names before a selector `{`, and
    anything with the gateway's prefix. Label names (before `=`), functions
    (before `(`), `by`/`le` and Grafana's $variables are not followed by `{`."""
    names = set(re.findall(r"(?<![\w$\"])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", expr))
    names |= set(re.findall(r"\bvisits_gateway_[a-zA-Z0-9_]+", expr))
    return names


def assert_known_metrics(what, exprs):
    known = exported_metrics() | EXTERNAL_METRICS
    check(exprs, f"{what}: no expressions found")
    for expr in exprs:
        names = queried_metrics(expr)
        check(names, f"{what}: no metric in {expr!r}")
        for name in sorted(names - known):
            failures.append(f"{what}: {name} is not a metric the gateway exports (src/telemetry.rs) in {expr!r}")


def dashboard_exprs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "expr" and isinstance(v, str):
                yield v
            else:
                yield from dashboard_exprs(v)
    elif isinstance(node, list):
        for v in node:
            yield from dashboard_exprs(v)


def assert_dashboard(cm):
    check(cm["metadata"].get("labels", {}).get("grafana_dashboard") == "1",
          "dashboard ConfigMap: label grafana_dashboard=\"1\" for the Grafana sidecar")
    (key, text), = cm["data"].items()
    check(key.endswith(".json"), "dashboard ConfigMap: its key ends in .json (the sidecar writes it as a file)")
    try:
        dash = json.loads(text)
    except ValueError as e:
        failures.append(f"dashboard ConfigMap: not JSON: {e}")
        return
    with open(os.path.join(HERE, "..", "visits-gateway", "files", "dashboard.json")) as f:
        check(json.load(f) == dash, "dashboard ConfigMap: holds files/dashboard.json unchanged")
    check(dash.get("uid") and dash.get("title"), "dashboard: uid and title")
    panels = [p for p in dash.get("panels", []) if p.get("type") != "row"]
    check(len(panels) >= 10, f"dashboard: {len(panels)} panels")
    ids = [p["id"] for p in dash.get("panels", [])]
    check(len(ids) == len(set(ids)), "dashboard: panel ids are unique")
    for p in panels:
        check(p.get("targets"), f"dashboard panel {p.get('title')!r}: no query")
    assert_known_metrics("dashboard", list(dashboard_exprs(dash)))
    queried = set().union(*(queried_metrics(e) for e in dashboard_exprs(dash)))
    for needed in ("visits_gateway_http_requests_total", "visits_gateway_http_request_duration_seconds_bucket",
                   "visits_gateway_upstream_requests_total", "visits_gateway_upstream_budget_wait_seconds_bucket",
                   "visits_gateway_cache_lookups_total", "visits_gateway_cache_stale_served_total",
                   "visits_gateway_live_subscriptions", "visits_gateway_graphql_errors_total"):
        check(needed in queried, f"dashboard: a panel over {needed}")


def assert_rules(rule):
    groups = rule["spec"]["groups"]
    names = [g["name"] for g in groups]
    check(len(names) == len(set(names)), "PrometheusRule: group names are unique (the CRD's list-map key)")
    alerts = {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}
    for name, r in alerts.items():
        check(r.get("labels", {}).get("severity") in ("critical", "warning", "info"), f"alert {name}: severity label")
        ann = r.get("annotations", {})
        check(ann.get("summary") and len(ann.get("description", "")) > 80, f"alert {name}: summary and a description that says what to do")
        check(ann.get("runbook_url", "").startswith("https://"), f"alert {name}: runbook_url (all-on sets runbookBaseUrl)")
    for needed in ("VisitsGatewayDown", "VisitsGatewayNotReady", "VisitsGatewayPlatformErrors",
                   "VisitsGatewayPlatformThrottled", "VisitsGatewayBudgetWaits", "VisitsGatewayServingStale"):
        check(needed in alerts, f"PrometheusRule: alert {needed}")
    assert_known_metrics("PrometheusRule", [str(r["expr"]) for g in groups for r in g["rules"]])


def assert_contract(profile, docs):
    dep = one(docs, "Deployment")
    # The gateway's settings; the dashboard and the manifest have their own.
    settings = [c for c in by_kind(docs, "ConfigMap", hook=False)
                if c["metadata"]["name"] == (dep_name := (dep or {}).get("metadata", {}).get("name"))]
    check(len(settings) == 1, f"expected exactly one settings ConfigMap named {dep_name}, found {len(settings)}")
    cm = settings[0] if settings else None
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

    assert_settings(profile, env, ctr)

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
        check(not kinds & {"Ingress", "ServiceMonitor", "NetworkPolicy", "PrometheusRule"}, "default: no optional objects")
        check(len(by_kind(docs, "ConfigMap")) == 1, "default: one ConfigMap (no dashboard, no manifest)")
        check("PERSISTED_QUERIES_FILE" not in env and env["PERSISTED_QUERIES_ONLY"] == "false", "default: no trusted documents")
        check(not any(name.startswith("OTEL_") for name in env), "default: no tracing")
        check(not {"REDIS_URL", "REDIS_PASSWORD_FILE", "EXPECTED_REPLICAS"} & set(env) and "env" not in ctr,
              "default: no Redis settings")
    elif profile == "all-on":
        check("replicas" not in spec, "all-on: no replicas in the Deployment when the HPA is on")
        check(len(hpa) == 1 and hpa[0]["apiVersion"] == "autoscaling/v2", "all-on: autoscaling/v2 HPA")
        check(len(pdb) == 1, "all-on: PDB")
        for kind in ("Ingress", "ServiceMonitor", "NetworkPolicy", "PrometheusRule"):
            check(kind in kinds, f"all-on: {kind} rendered")
        cms = {c["metadata"]["name"]: c for c in by_kind(docs, "ConfigMap")}
        dash = [c for c in cms.values() if "grafana_dashboard" in c["metadata"].get("labels", {})]
        check(len(dash) == 1, "all-on: a Grafana dashboard ConfigMap")
        for c in dash:
            check(c["metadata"].get("namespace") == "monitoring", "all-on: dashboard in metrics.grafanaDashboard.namespace")
            assert_dashboard(c)
        for r in by_kind(docs, "PrometheusRule"):
            check(r["metadata"].get("namespace") == "monitoring", "all-on: PrometheusRule in its namespace")
            assert_rules(r)
        manifest_dir = "/etc/visits-gateway/persisted-queries"
        check(env.get("PERSISTED_QUERIES_FILE") == f"{manifest_dir}/manifest.json", "all-on: PERSISTED_QUERIES_FILE")
        check(env.get("PERSISTED_QUERIES_ONLY") == "true", "all-on: PERSISTED_QUERIES_ONLY")
        pq = volumes.get("persisted-queries", {}).get("configMap", {}).get("name")
        check(pq in cms and "manifest.json" in cms[pq]["data"], "all-on: the manifest ConfigMap is mounted")
        check(mounts.get("persisted-queries", {}).get("mountPath") == manifest_dir, f"all-on: manifest mounted at {manifest_dir}")
        if pq in cms:
            manifest = json.loads(cms[pq]["data"]["manifest.json"])
            check(manifest.get("format") == "apollo-persisted-query-manifest", "all-on: the manifest is Apollo's format")
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
        check(env.get("MAX_RANGE_DAYS") == "31", "all-on: `config` overrides gateway.*")
        check(env.get("TRUSTED_PROXIES") == "10.0.0.0/8,fd00::/8", "all-on: TRUSTED_PROXIES joined with commas")
        check(env.get("LIVE_MAX_CONNECTIONS_PER_CLIENT") == "20" and env.get("HEADER_READ_TIMEOUT_SECONDS") == "60",
              "all-on: gateway.* settings rendered")
        check(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") == "http://otel-collector.observability.svc:4318"
              and env.get("OTEL_EXPORTER_OTLP_PROTOCOL") == "http/json"
              and env.get("OTEL_SERVICE_NAME") == "visits-gateway-eu"
              and env.get("OTEL_RESOURCE_ATTRIBUTES") == "deployment.environment.name=production,service.namespace=streaming"
              and env.get("OTEL_TRACES_SAMPLER") == "parentbased_traceidratio"
              and env.get("OTEL_TRACES_SAMPLER_ARG") == "0.25", "all-on: opentelemetry.* rendered")
        check("OTEL_EXPORTER_OTLP_HEADERS" not in env and ctr.get("env") == [{"name": "OTEL_EXPORTER_OTLP_HEADERS",
              "valueFrom": {"secretKeyRef": {"name": "otlp-credentials", "key": "headers"}}}],
              "all-on: the collector's headers from their Secret, not the ConfigMap")
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
    rule_groups = []
    for d in docs:
        if d.get("kind") == "PrometheusRule":
            rule_groups += d.get("spec", {}).get("groups", [])
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
    if rule_groups:
        with open(re.sub(r"\.yaml$", "", core_out) + "-rules.yaml", "w") as f:
            yaml.safe_dump({"groups": rule_groups}, f, sort_keys=False)
    assert_contract(profile, docs)
    if failures:
        for msg in failures:
            print(f"FAIL [{profile}] {msg}", file=sys.stderr)
        sys.exit(1)
    n_crd = len(docs) - len(core)
    print(f"ok [{profile}] {len(docs)} documents: contract holds; {n_crd} custom resource(s) valid against their schema")


if __name__ == "__main__":
    main()
