//! What operators see: Prometheus metrics, one access-log line per request
//! with a request id, and per-request cache outcomes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header::HeaderName};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::error::ErrorCode;

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// The HTTP status, or `timeout` / `error` when there was none.
    pub status: std::borrow::Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    /// What was asked of Redis (`budget`, `page_get`, `connect`...).
    pub op: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~26 s.
    Histogram::new(exponential_buckets(0.0001, 2.5, 14))
}

/// Declares [`Metrics`] from a table: field, type, initial value, name and
/// help, one metric a line.
macro_rules! metrics {
    ($($field:ident: $ty:ty = $init:expr, $name:literal, $help:literal;)*) => {
        /// Every metric of the process. Cheap to update: atomics behind labels.
        pub struct Metrics {
            registry: Registry,
            $(pub $field: $ty,)*
        }

        impl Metrics {
            pub fn new() -> Arc<Self> {
                let mut registry = Registry::with_prefix("visits_gateway");
                $(
                    let $field: $ty = $init;
                    registry.register($name, $help, $field.clone());
                )*
                Arc::new(Self { registry, $($field,)* })
            }
        }
    };
}

metrics! {
    http_requests: Family<HttpLabels, Counter> = Family::default(), "http_requests", "HTTP requests by route, method and status";
    http_duration: Family<RouteLabel, Histogram> = Family::new_with_constructor(latency_histogram), "http_request_duration_seconds", "HTTP request latency by route";
    http_in_flight: Gauge = Gauge::default(), "http_requests_in_flight", "HTTP requests being served";
    graphql_errors: Family<CodeLabel, Counter> = Family::default(), "graphql_errors", "GraphQL errors by code";
    upstream_requests: Family<StatusLabel, Counter> = Family::default(), "upstream_requests", "Platform requests by HTTP status (or timeout/error)";
    upstream_duration: Histogram = latency_histogram(), "upstream_request_duration_seconds", "Platform request latency";
    upstream_retries: Counter = Counter::default(), "upstream_retries", "Platform requests retried";
    upstream_budget_wait: Histogram = latency_histogram(), "upstream_budget_wait_seconds", "Time spent waiting for the platform request budget";
    upstream_budget_refusals: Family<ReasonLabel, Counter> = Family::default(), "upstream_budget_refusals", "Platform requests refused UPSTREAM_RATE_LIMITED before being sent, by reason (budget: the slot was further than the wait allowed; client_queue_full: UPSTREAM_MAX_QUEUED_PER_CLIENT)";
    cache_lookups: Family<OutcomeLabel, Counter> = Family::default(), "cache_lookups", "Page cache lookups by outcome (hit, miss, coalesced, stale-while-revalidate, stale-if-error, refusal)";
    cache_stale_served: Counter = Counter::default(), "cache_stale_served", "Stale pages served because the platform failed";
    panics: Counter = Counter::default(), "panics", "Requests whose handling panicked (answered 500 INTERNAL)";
    response_cache_lookups: Family<OutcomeLabel, Counter> = Family::default(), "response_cache_lookups", "Response cache lookups by outcome";
    cache_entries: Gauge = Gauge::default(), "cache_entries", "Pages in the cache";
    cache_bytes: Gauge = Gauge::default(), "cache_bytes", "Approximate bytes of pages in the cache";
    response_cache_entries: Gauge = Gauge::default(), "response_cache_entries", "Responses in the response cache";
    response_cache_bytes: Gauge = Gauge::default(), "response_cache_bytes", "Approximate bytes of the response cache";
    live_subscriptions: Gauge = Gauge::default(), "live_subscriptions", "Open userVisitAdded subscriptions";
    live_pollers: Gauge = Gauge::default(), "live_pollers", "Activities polled for live subscribers (one poller each)";
    live_leases_held: Gauge = Gauge::default(), "live_leases_held", "Live activities this replica polls for all replicas (it holds their lease in Redis)";
    live_lease_takeovers: Counter = Counter::default(), "live_lease_takeovers", "Live activities this replica took over from a replica that stopped or was cut off, continuing from the last visit published";
    live_polls_alone: Counter = Counter::default(), "live_polls_alone", "Live polls made for this replica's subscribers only because Redis was unavailable (with Redis up, one replica polls each activity for all)";
    live_events_sent: Counter = Counter::default(), "live_events_sent", "Visits sent to subscribers (a visit sent to 3 subscribers counts 3)";
    redis_up: Gauge = Gauge::default(), "redis_up", "1 while replicas share the platform budget and page cache through Redis, 0 while this replica works alone (Redis down, slow or not configured)";
    redis_errors: Family<OpLabel, Counter> = Family::default(), "redis_errors", "Redis commands that failed or timed out, by operation (connect counts failed probes)";
    shared_cache_lookups: Family<OutcomeLabel, Counter> = Family::default(), "shared_cache_lookups", "Second-level (Redis) page lookups on a moka miss by outcome (hit, coalesced: waited for another replica's fetch, miss, garbage: unreadable value, deleted)";
    shared_budget_waits: Counter = Counter::default(), "shared_budget_waits", "Platform requests that queued for the budget shared by the replicas";
    stats_jobs: Gauge = Gauge::default(), "stats_jobs", "Statistics jobs reading a range's pages in the background (STATS_LOADING)";
    stats_jobs_ended: Family<OutcomeLabel, Counter> = Family::default(), "stats_jobs_ended", "Statistics jobs ended, by outcome (done, the error code that ended one, abandoned)";
    live_closed_slow: Counter = Counter::default(), "live_subscribers_closed_slow", "Subscriptions closed because their client fell behind (SUBSCRIBER_TOO_SLOW or a stuck socket)";
}

impl Metrics {
    pub fn graphql_error(&self, code: &str) {
        let code = ErrorCode::ALL
            .iter()
            .map(|c| c.as_str())
            .find(|c| *c == code)
            .unwrap_or("INTERNAL");
        self.graphql_errors.get_or_create(&CodeLabel { code }).inc();
    }

    pub fn cache_lookup(&self, outcome: &'static str) {
        crate::otel::cache_event("page", outcome);
        self.cache_lookups
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        RequestStats::with(|s| match outcome {
            "hit" => s.page_hits.fetch_add(1, Ordering::Relaxed),
            _ => s.page_misses.fetch_add(1, Ordering::Relaxed),
        });
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// What one HTTP request did, for its access-log line only: page cache
/// outcomes and platform requests, counted from anywhere in its task. What
/// decides caching travels as values instead ([`crate::response_cache::Facts`]):
/// a count lost to a spawned task costs a log figure, never a wrong answer.
#[derive(Debug, Default)]
pub struct RequestStats {
    pub page_hits: AtomicU32,
    pub page_misses: AtomicU32,
    pub upstream_requests: AtomicU32,
    /// Set when the whole response came from the response cache.
    pub response_cached: AtomicBool,
}

tokio::task_local! {
    static STATS: Arc<RequestStats>;
}

impl RequestStats {
    /// Runs `f` on the current request's stats, if inside one.
    pub fn with<R>(f: impl FnOnce(&RequestStats) -> R) -> Option<R> {
        STATS.try_with(|s| f(s)).ok()
    }

    /// `response-hit`, `hit` (every page from the cache), `miss` or `none`.
    fn cache_outcome(&self) -> &'static str {
        if self.response_cached.load(Ordering::Relaxed) {
            "response-hit"
        } else if self.page_misses.load(Ordering::Relaxed) > 0 {
            "miss"
        } else if self.page_hits.load(Ordering::Relaxed) > 0 {
            "hit"
        } else {
            "none"
        }
    }
}

/// Bounded label values: the known routes, else `other`.
pub fn route_of(path: &str) -> &'static str {
    match path {
        "/graphql" => "/graphql",
        "/" => "/",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        p if p.starts_with("/playground/") => "/playground",
        _ => "other",
    }
}

/// The path of a known route as it was asked; any other path is `other`, so
/// nothing a client invents (or pastes by mistake) lands in a span.
fn path_of(path: &str) -> &str {
    match route_of(path) {
        "other" => "other",
        _ => path,
    }
}

/// Bounded label values: a client can send any method name, and each would
/// otherwise be a new metric series.
fn method_of(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// A client's `x-request-id` when it is short and printable, else a new one.
fn request_id(req: &Request) -> HeaderValue {
    req.headers()
        .get(&REQUEST_ID)
        .filter(|v| v.len() <= 64 && v.as_bytes().iter().all(|b| b.is_ascii_graphic()))
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&format!("{:016x}", fastrand::u64(..)))
                .expect("hex is a valid header")
        })
}

/// The outermost middleware: request id, access log, HTTP metrics.
pub async fn observe(
    State(metrics): State<Arc<Metrics>>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = request_id(&req);
    req.headers_mut().insert(REQUEST_ID.clone(), id.clone());
    let route = route_of(req.uri().path());
    let method = method_of(req.method());
    let stats = Arc::new(RequestStats::default());
    // Probes and scrapes are neither logged nor traced: a trace every few
    // seconds per kubelet would bury the requests.
    let quiet = matches!(route, "/healthz" | "/readyz" | "/metrics");
    let traced = crate::otel::enabled() && !quiet;
    let span = if crate::otel::enabled() && quiet {
        tracing::Span::none()
    } else {
        tracing::info_span!(
            "request",
            request_id = id.to_str().unwrap_or("-"),
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
        )
    };
    if traced {
        // The server span: a child of the client's `traceparent`.
        crate::otel::adopt_parent(&span, req.headers());
        span.record("otel.kind", "server");
        span.record("otel.name", format!("{method} {route}"));
        crate::otel::attributes(
            &span,
            [
                ("http.request.method", method.into()),
                ("http.route", route.into()),
                ("url.path", path_of(req.uri().path()).to_owned().into()),
            ],
        );
    }
    metrics.http_in_flight.inc();
    let mut response = STATS
        .scope(stats.clone(), next.run(req).instrument(span.clone()))
        .await;
    metrics.http_in_flight.dec();
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    metrics
        .http_requests
        .get_or_create(&HttpLabels {
            route,
            method,
            status,
        })
        .inc();
    metrics
        .http_duration
        .get_or_create(&RouteLabel { route })
        .observe(elapsed.as_secs_f64());
    response.headers_mut().insert(REQUEST_ID.clone(), id);
    let cache = stats.cache_outcome();
    // `trace_id` is in the access log only while traces are exported: an id
    // that leads nowhere would only mislead.
    let trace_id = if traced {
        crate::otel::attributes(
            &span,
            [
                ("http.response.status_code", i64::from(status).into()),
                ("cache.outcome", cache.into()),
            ],
        );
        if status >= 500 {
            span.set_status(opentelemetry::trace::Status::error(""));
        }
        crate::otel::trace_id(&span)
    } else {
        None
    };
    if !quiet {
        span.in_scope(|| {
            tracing::info!(
                trace_id,
                method,
                route,
                status,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                cache,
                upstream_requests = stats.upstream_requests.load(Ordering::Relaxed),
                "request"
            )
        });
    }
    response
}
