{{/*
Chart name, overridable by nameOverride (63 chars: DNS label limit).
*/}}
{{- define "visits-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's resources.
*/}}
{{- define "visits-gateway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "visits-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every resource.
*/}}
{{- define "visits-gateway.labels" -}}
helm.sh/chart: {{ include "visits-gateway.chart" . }}
{{ include "visits-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: visits-gateway
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels of the gateway pods. The helm test pod deliberately does not
carry them (a ReplicaSet would adopt an orphan pod that matches its selector).
*/}}
{{- define "visits-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "visits-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of the helm test pod (and what the NetworkPolicy lets in).
*/}}
{{- define "visits-gateway.testSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-test" (include "visits-gateway.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
{{- end }}

{{- define "visits-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "visits-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference: repository@digest when a digest is given, else repository:tag
(tag defaulting to the chart's appVersion).
*/}}
{{- define "visits-gateway.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Name of the Secret that is mounted (existing or created by the chart).
*/}}
{{- define "visits-gateway.secretName" -}}
{{- default (include "visits-gateway.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/*
Directory the Secret is mounted at, and the files the gateway reads there.
*/}}
{{- define "visits-gateway.secretDir" -}}
/var/run/secrets/visits-gateway
{{- end }}

{{/*
The ConfigMap holding the trusted documents manifest (existing or made by the
chart); empty when there is none.
*/}}
{{- define "visits-gateway.persistedQueriesConfigMap" -}}
{{- if .Values.persistedQueries.existingConfigMap }}
{{- .Values.persistedQueries.existingConfigMap }}
{{- else if .Values.persistedQueries.manifest }}
{{- printf "%s-persisted-queries" (include "visits-gateway.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
Directory the manifest is mounted at.
*/}}
{{- define "visits-gateway.persistedQueriesDir" -}}
/etc/visits-gateway/persisted-queries
{{- end }}

{{/*
Number as the gateway expects it in an environment variable: integral values
without exponent or decimal point (YAML numbers reach templates as float64).
*/}}
{{- define "visits-gateway.number" -}}
{{- if eq (float64 .) (floor .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- end }}

{{/*
Pods the workload is meant to run at least: replicaCount, or the HPA's minimum.
*/}}
{{- define "visits-gateway.minPods" -}}
{{- if .Values.autoscaling.enabled }}{{ int64 .Values.autoscaling.minReplicas }}{{ else }}{{ int64 .Values.replicaCount }}{{ end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: explicit, or drain + shutdown timeout + 10 s.
It must exceed drain + timeout, or the kubelet kills requests the gateway was
still finishing.
*/}}
{{- define "visits-gateway.terminationGracePeriodSeconds" -}}
{{- $needed := add (int64 .Values.gateway.shutdownDrainSeconds) (int64 .Values.gateway.shutdownTimeoutSeconds) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $needed 10 }}
{{- else }}
{{- if le (int64 .Values.terminationGracePeriodSeconds) $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be larger than gateway.shutdownDrainSeconds + gateway.shutdownTimeoutSeconds (%d)" (int64 .Values.terminationGracePeriodSeconds) $needed) }}
{{- end }}
{{- int64 .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
The gateway's environment (ConfigMap data), as YAML. Well-known settings first,
then `config` merged over them. Secrets never go through here.
*/}}
{{- define "visits-gateway.env" -}}
{{- $dir := include "visits-gateway.secretDir" . }}
{{- $g := .Values.gateway }}
{{- $env := dict
  "LISTEN_ADDR" (printf "0.0.0.0:%d" (int64 $g.port))
  "UPSTREAM_BASE_URL" $g.upstreamBaseUrl
  "UPSTREAM_TOKEN_FILE" (printf "%s/upstream-token" $dir)
  "ALLOW_UNAUTHENTICATED" (toString .Values.auth.allowUnauthenticated)
  "PLAYGROUND_ENABLED" (toString $g.playgroundEnabled)
  "INTROSPECTION_ENABLED" (toString $g.introspectionEnabled)
  "SHUTDOWN_DRAIN_SECONDS" (toString (int64 $g.shutdownDrainSeconds))
  "SHUTDOWN_TIMEOUT_SECONDS" (toString (int64 $g.shutdownTimeoutSeconds))
  "LOG_FORMAT" $g.logFormat
  "RUST_LOG" $g.logLevel
}}
{{- if .Values.metrics.dedicatedPort.enabled }}
{{- $_ := set $env "METRICS_LISTEN_ADDR" (printf "0.0.0.0:%d" (int64 .Values.metrics.dedicatedPort.port)) }}
{{- end }}
{{- if $g.corsAllowedOrigins }}
{{- $_ := set $env "CORS_ALLOWED_ORIGINS" (join "," $g.corsAllowedOrigins) }}
{{- end }}
{{- with $g.trustedProxies }}
{{- $_ := set $env "TRUSTED_PROXIES" (join "," .) }}
{{- end }}
{{- range $key, $name := include "visits-gateway.numberSettings" . | fromYaml }}
{{- $v := index $g $key }}
{{- if not (kindIs "invalid" $v) }}
{{- $_ := set $env $name (include "visits-gateway.number" $v) }}
{{- end }}
{{- end }}
{{- if .Values.auth.apiKeys.enabled }}
{{- $_ := set $env "API_KEYS_FILE" (printf "%s/api-keys" $dir) }}
{{- end }}
{{- if .Values.auth.jwt.hs256 }}
{{- $_ := set $env "JWT_HS256_SECRET_FILE" (printf "%s/jwt-hs256-secret" $dir) }}
{{- end }}
{{- if .Values.auth.jwt.publicKey }}
{{- $_ := set $env "JWT_PUBLIC_KEY_FILE" (printf "%s/jwt-public-key" $dir) }}
{{- end }}
{{- with .Values.auth.jwt.issuer }}
{{- $_ := set $env "JWT_ISSUER" . }}
{{- end }}
{{- with .Values.auth.jwt.audience }}
{{- $_ := set $env "JWT_AUDIENCE" . }}
{{- end }}
{{- if include "visits-gateway.persistedQueriesConfigMap" . }}
{{- $_ := set $env "PERSISTED_QUERIES_FILE" (printf "%s/manifest.json" (include "visits-gateway.persistedQueriesDir" .)) }}
{{- end }}
{{- $_ := set $env "PERSISTED_QUERIES_ONLY" (toString .Values.persistedQueries.only) }}
{{- $r := .Values.redis }}
{{- with $r.url }}
{{- $_ := set $env "REDIS_URL" . }}
{{- end }}
{{- if $r.passwordFile }}
{{- $_ := set $env "REDIS_PASSWORD_FILE" (printf "%s/redis-password" $dir) }}
{{- end }}
{{- if include "visits-gateway.redis" . }}
{{- $_ := set $env "EXPECTED_REPLICAS" (include "visits-gateway.expectedReplicas" .) }}
{{- end }}
{{- $o := .Values.opentelemetry }}
{{- if $o.endpoint }}
{{- $_ := set $env "OTEL_EXPORTER_OTLP_ENDPOINT" $o.endpoint }}
{{- $_ := set $env "OTEL_EXPORTER_OTLP_PROTOCOL" $o.protocol }}
{{- $_ := set $env "OTEL_SERVICE_NAME" $o.serviceName }}
{{- $_ := set $env "OTEL_TRACES_SAMPLER" $o.sampler }}
{{- with $o.samplerArg }}
{{- $_ := set $env "OTEL_TRACES_SAMPLER_ARG" . }}
{{- end }}
{{- with $o.resourceAttributes }}
{{- $attributes := list }}
{{- range $k, $v := . }}
{{- $attributes = append $attributes (printf "%s=%s" $k $v) }}
{{- end }}
{{- $_ := set $env "OTEL_RESOURCE_ATTRIBUTES" (join "," $attributes) }}
{{- end }}
{{- end }}
{{- range $k, $v := .Values.config }}
{{- if and (eq $k "REDIS_URL") (contains "@" (toString $v)) }}
{{- fail "config.REDIS_URL holds credentials and would put them into a ConfigMap: use redis.urlSecret or redis.passwordFile" }}
{{- end }}
{{- if has $k (list "OTEL_EXPORTER_OTLP_HEADERS" "OTEL_EXPORTER_OTLP_TRACES_HEADERS") }}
{{- fail (printf "config.%s would put the collector's credential into a ConfigMap: use opentelemetry.headersSecret" $k) }}
{{- end }}
{{- if has $k (list "UPSTREAM_TOKEN" "JWT_HS256_SECRET") }}
{{- fail (printf "config.%s would put a secret into a ConfigMap: use the secrets.* values (mounted files) instead" $k) }}
{{- end }}
{{- $_ := set $env $k (toString $v) }}
{{- end }}
{{- toYaml $env }}
{{- end }}

{{/*
The numeric settings under `gateway` and their variables, as YAML. A null
value is left out: the gateway's own default applies.
*/}}
{{- define "visits-gateway.numberSettings" -}}
cacheMaxBytes: CACHE_MAX_BYTES
upstreamRatePerSecond: UPSTREAM_RATE_PER_SECOND
upstreamBurst: UPSTREAM_BURST
maxBodyBytes: MAX_BODY_BYTES
requestTimeoutMs: REQUEST_TIMEOUT_MS
headerReadTimeoutSeconds: HEADER_READ_TIMEOUT_SECONDS
bodyReadTimeoutSeconds: BODY_READ_TIMEOUT_SECONDS
maxQueryDepth: MAX_QUERY_DEPTH
maxQueryComplexity: MAX_QUERY_COMPLEXITY
playgroundActivityId: PLAYGROUND_ACTIVITY_ID
upstreamConnectTimeoutMs: UPSTREAM_CONNECT_TIMEOUT_MS
upstreamTimeoutMs: UPSTREAM_TIMEOUT_MS
upstreamDeadlineMs: UPSTREAM_DEADLINE_MS
upstreamMaxBudgetWaitMs: UPSTREAM_MAX_BUDGET_WAIT_MS
upstreamMaxQueuedPerClient: UPSTREAM_MAX_QUEUED_PER_CLIENT
upstreamMaxConcurrency: UPSTREAM_MAX_CONCURRENCY
upstreamMaxRetries: UPSTREAM_MAX_RETRIES
upstreamRetryBaseMs: UPSTREAM_RETRY_BASE_MS
upstreamRetryAfterCapSeconds: UPSTREAM_RETRY_AFTER_CAP_SECONDS
upstreamMaxBodyBytes: UPSTREAM_MAX_BODY_BYTES
upstreamPageSize: UPSTREAM_PAGE_SIZE
defaultPageSize: DEFAULT_PAGE_SIZE
maxPageSize: MAX_PAGE_SIZE
maxRangeDays: MAX_RANGE_DAYS
pinGranularitySeconds: PIN_GRANULARITY_SECONDS
windowConcurrency: WINDOW_CONCURRENCY
maxPlatformRequestsPerQuery: MAX_PLATFORM_REQUESTS_PER_QUERY
statsMaxPlatformRequests: STATS_MAX_PLATFORM_REQUESTS
cacheTtlRecentSeconds: CACHE_TTL_RECENT_SECONDS
cacheTtlSettledSeconds: CACHE_TTL_SETTLED_SECONDS
staleGraceSeconds: STALE_GRACE_SECONDS
negativeCacheSeconds: NEGATIVE_CACHE_SECONDS
responseCacheMaxBytes: RESPONSE_CACHE_MAX_BYTES
responseCacheMaxTtlSeconds: RESPONSE_CACHE_MAX_TTL_SECONDS
statsCacheMaxBytes: STATS_CACHE_MAX_BYTES
clientRatePerSecond: CLIENT_RATE_PER_SECOND
clientBurst: CLIENT_BURST
secretsReloadSeconds: SECRETS_RELOAD_SECONDS
livePollSeconds: LIVE_POLL_SECONDS
liveMaxSubscriptions: LIVE_MAX_SUBSCRIPTIONS
liveMaxSubscriptionsPerClient: LIVE_MAX_SUBSCRIPTIONS_PER_CLIENT
liveMaxConnectionsPerClient: LIVE_MAX_CONNECTIONS_PER_CLIENT
liveSubscriberBuffer: LIVE_SUBSCRIBER_BUFFER
livePingSeconds: LIVE_PING_SECONDS
{{- end }}

{{/*
"true" when the pods share state through Redis (a URL in values or in a Secret).
*/}}
{{- define "visits-gateway.redis" -}}
{{- if or .Values.redis.url .Values.redis.urlSecret.name }}true{{ end }}
{{- end }}

{{/*
EXPECTED_REPLICAS: as given, else the most pods that may run (so the pods'
fallback shares never add up to more than the platform's allowance).
*/}}
{{- define "visits-gateway.expectedReplicas" -}}
{{- if not (kindIs "invalid" .Values.redis.expectedReplicas) }}
{{- int64 .Values.redis.expectedReplicas }}
{{- else if .Values.autoscaling.enabled }}
{{- int64 .Values.autoscaling.maxReplicas }}
{{- else }}
{{- int64 .Values.replicaCount }}
{{- end }}
{{- end }}

{{/*
Render-time checks of combinations the schema cannot express.
*/}}
{{- define "visits-gateway.validate" -}}
{{- if and (not .Values.auth.allowUnauthenticated) (not .Values.auth.apiKeys.enabled) (not .Values.auth.jwt.hs256) (not .Values.auth.jwt.publicKey) }}
{{- fail "no client authentication is configured: enable auth.apiKeys, auth.jwt.hs256 or auth.jwt.publicKey, or set auth.allowUnauthenticated=true on purpose (the gateway refuses to start otherwise)" }}
{{- end }}
{{- if and .Values.auth.jwt.hs256 .Values.auth.jwt.publicKey }}
{{- fail "auth.jwt.hs256 and auth.jwt.publicKey are exclusive: choose one JWT verification method" }}
{{- end }}
{{- if not .Values.secrets.existingSecret }}
{{- if and .Values.auth.jwt.hs256 (not .Values.secrets.jwtHs256Secret) }}
{{- fail "auth.jwt.hs256 is true but secrets.jwtHs256Secret is empty (or use secrets.existingSecret)" }}
{{- end }}
{{- if and .Values.auth.jwt.publicKey (not .Values.secrets.jwtPublicKey) }}
{{- fail "auth.jwt.publicKey is true but secrets.jwtPublicKey is empty (or use secrets.existingSecret)" }}
{{- end }}
{{- end }}
{{- if and .Values.persistedQueries.only (not (include "visits-gateway.persistedQueriesConfigMap" .)) }}
{{- fail "persistedQueries.only needs a manifest: persistedQueries.manifest (--set-file) or persistedQueries.existingConfigMap (the gateway refuses to start otherwise)" }}
{{- end }}
{{- if and .Values.persistedQueries.manifest .Values.persistedQueries.existingConfigMap }}
{{- fail "persistedQueries.manifest and persistedQueries.existingConfigMap are exclusive" }}
{{- end }}
{{- if and .Values.redis.url .Values.redis.urlSecret.name }}
{{- fail "redis.url and redis.urlSecret.name are exclusive: give the URL in one place" }}
{{- end }}
{{- if and .Values.redis.passwordFile (not (include "visits-gateway.redis" .)) }}
{{- fail "redis.passwordFile needs redis.url or redis.urlSecret.name" }}
{{- end }}
{{- if and .Values.redis.passwordFile (not .Values.secrets.existingSecret) (not .Values.secrets.redisPassword) }}
{{- fail "redis.passwordFile is true but secrets.redisPassword is empty (or use secrets.existingSecret)" }}
{{- end }}
{{- /* The gateway's checks of one setting against another, at render time rather than as a crash loop. */}}
{{- range list (list "upstreamDeadlineMs" "below" "requestTimeoutMs") (list "upstreamConnectTimeoutMs" "at most" "upstreamTimeoutMs") (list "defaultPageSize" "at most" "maxPageSize") (list "cacheTtlRecentSeconds" "at most" "cacheTtlSettledSeconds") (list "windowConcurrency" "at most" "upstreamMaxQueuedPerClient") }}
{{- $a := index $.Values.gateway (index . 0) }}
{{- $b := index $.Values.gateway (index . 2) }}
{{- if and (not (kindIs "invalid" $a)) (not (kindIs "invalid" $b)) }}
{{- if or (gt (float64 $a) (float64 $b)) (and (eq (index . 1) "below") (eq (float64 $a) (float64 $b))) }}
{{- fail (printf "gateway.%s (%v) must be %s gateway.%s (%v): the gateway refuses to start otherwise" (index . 0) $a (index . 1) (index . 2) $b) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.metrics.dedicatedPort.enabled (eq (int64 .Values.metrics.dedicatedPort.port) (int64 .Values.gateway.port)) }}
{{- fail "metrics.dedicatedPort.port must differ from gateway.port" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int64 .Values.autoscaling.maxReplicas) (int64 .Values.autoscaling.minReplicas)) }}
{{- fail "autoscaling.maxReplicas must be at least autoscaling.minReplicas" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (kindIs "invalid" .Values.autoscaling.targetCPUUtilizationPercentage) (kindIs "invalid" .Values.autoscaling.targetMemoryUtilizationPercentage) }}
{{- fail "autoscaling needs targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" }}
{{- end }}
{{- end }}
