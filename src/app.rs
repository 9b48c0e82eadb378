//! Builds the gateway from its settings, and serves it on a bound listener
//! until a shutdown future resolves (so tests run the real server on port 0).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use chrono::Duration as ChronoDuration;
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::cache::{PageCache, TtlPolicy};
use crate::config::Settings;
use crate::graphql::documents::Documents;
use crate::graphql::{self, GatewaySchema, Resolver};
use crate::limits::ClientLimiter;
use crate::paging::RangePolicy;
use crate::playground::{self, Playground};
use crate::response_cache::ResponseCache;
use crate::secret::TokenSource;
use crate::stats::load::StatsLoader;
use crate::telemetry::Metrics;
use crate::upstream::UpstreamClient;
use crate::visits::FetchPolicy;

pub struct AppState {
    pub schema: GatewaySchema,
    /// Also read before execution, to plan a request's cost.
    pub resolver: Arc<Resolver>,
    /// Parsed documents by query text.
    pub documents: Documents,
    pub cache: PageCache,
    /// False until the listener is up, and again once shutdown starts.
    pub ready: AtomicBool,
    /// `None` when `PLAYGROUND_ENABLED=false`.
    pub playground: Option<Playground>,
    pub auth: Authenticator,
    pub metrics: Arc<Metrics>,
    pub responses: ResponseCache,
    pub client_limiter: ClientLimiter,
    pub limits: RequestLimits,
}

pub struct RequestLimits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub secrets_reload: Duration,
    /// The range policy's, for the response cache's pin buckets.
    pub pin_granularity: ChronoDuration,
    /// Platform requests one GraphQL request may need, at worst.
    pub max_platform_requests: u64,
    /// Platform requests one GraphQL request may have in flight.
    pub window_concurrency: usize,
}

pub struct App {
    pub state: Arc<AppState>,
    pub router: Router,
    /// `/metrics` on its own port, when `METRICS_LISTEN_ADDR` is set.
    pub metrics_router: Option<Router>,
    shutdown: ShutdownPolicy,
    /// The platform token, followed while serving like the other secrets.
    token: TokenSource,
}

#[derive(Debug, Clone, Copy)]
struct ShutdownPolicy {
    drain: Duration,
    timeout: Duration,
}

impl App {
    pub fn build(settings: &Settings, token: TokenSource) -> Result<Self, String> {
        let auth = Authenticator::from_settings(settings)?;
        let metrics = Metrics::new();
        let upstream =
            UpstreamClient::new(settings.upstream_config(), token.clone(), metrics.clone())
                .map_err(|e| format!("cannot build the upstream HTTP client: {e}"))?;
        let cache = PageCache::new(
            Arc::new(upstream),
            settings.cache_max_bytes,
            TtlPolicy {
                recent: Duration::from_secs(settings.cache_ttl_recent_seconds),
                settled: Duration::from_secs(settings.cache_ttl_settled_seconds),
                grace: Duration::from_secs(settings.stale_grace_seconds),
                refresh_deadline: Duration::from_millis(settings.upstream_deadline_ms),
                negative: Duration::from_secs(30),
            },
            metrics.clone(),
        );
        let range_policy = RangePolicy {
            max_range: ChronoDuration::days(i64::from(settings.max_range_days)),
            pin_granularity: ChronoDuration::seconds(i64::from(settings.pin_granularity_seconds)),
            default_range: ChronoDuration::days(7),
        };
        let resolver = Resolver {
            cache: cache.clone(),
            range_policy,
            fetch_policy: FetchPolicy {
                upstream_page_size: settings.upstream_page_size,
                window_concurrency: settings.window_concurrency as usize,
                deadline: Duration::from_millis(settings.upstream_deadline_ms),
            },
            default_page_size: settings.default_page_size,
            max_page_size: settings.max_page_size,
            stats: StatsLoader::new(
                settings.stats_cache_max_bytes,
                settings.stats_max_platform_requests,
            ),
        };
        let resolver = Arc::new(resolver);
        let state = Arc::new(AppState {
            schema: graphql::build_schema(Some(resolver.clone()), settings),
            resolver,
            documents: Documents::new(8 * 1024 * 1024),
            cache,
            ready: AtomicBool::new(false),
            playground: settings
                .playground_enabled
                .then(|| Playground::new(&playground_defaults(settings))),
            auth,
            metrics,
            responses: ResponseCache::new(
                settings.response_cache_max_bytes,
                Duration::from_secs(settings.response_cache_max_ttl_seconds),
            ),
            client_limiter: ClientLimiter::new(
                settings.client_rate_per_second,
                settings.client_burst,
            ),
            limits: RequestLimits {
                max_body_bytes: settings.max_body_bytes as usize,
                request_timeout: Duration::from_millis(settings.request_timeout_ms),
                secrets_reload: Duration::from_secs(settings.secrets_reload_seconds),
                pin_granularity: range_policy.pin_granularity,
                max_platform_requests: u64::from(settings.max_range_days).div_ceil(7)
                    + u64::from(settings.max_page_size).div_ceil(settings.upstream_page_size)
                    + 1,
                window_concurrency: settings.window_concurrency as usize,
            },
        });
        let router = crate::http::router(state.clone(), settings.metrics_listen_addr.is_none())
            .layer(cors(&settings.cors_allowed_origins)?);
        let metrics_router = settings
            .metrics_listen_addr
            .map(|_| crate::http::metrics_router(state.clone()));
        let shutdown = ShutdownPolicy {
            drain: Duration::from_secs(settings.shutdown_drain_seconds),
            timeout: Duration::from_secs(settings.shutdown_timeout_seconds),
        };
        Ok(Self {
            state,
            router,
            metrics_router,
            shutdown,
            token,
        })
    }

    /// Serves until `shutdown` resolves, then shuts down like a pod should:
    /// readiness goes false at once, requests are still served for the drain
    /// delay (load balancers take a moment to notice), then in-flight requests
    /// get until the shutdown timeout to finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = self.state.clone();
        self.token
            .spawn_reload(state.limits.secrets_reload, "upstream token");
        state.auth.spawn_reload(state.limits.secrets_reload);
        let limiter_state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                limiter_state.client_limiter.forget_idle();
            }
        });
        let policy = self.shutdown;
        let draining = Arc::new(tokio::sync::Notify::new());
        let drained = draining.clone();
        let shutdown_state = state.clone();
        state.ready.store(true, Ordering::Release);
        let server = axum::serve(
            listener,
            self.router
                .into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            shutdown_state.ready.store(false, Ordering::Release);
            tracing::info!(
                drain_s = policy.drain.as_secs(),
                "shutting down: readiness off, draining"
            );
            tokio::time::sleep(policy.drain).await;
            drained.notify_one();
        });
        let deadline = async move {
            draining.notified().await;
            tokio::time::sleep(policy.timeout).await;
        };
        tokio::select! {
            result = server => {
                tracing::info!("all requests finished; bye");
                result
            }
            () = deadline => {
                tracing::warn!("in-flight requests outlived SHUTDOWN_TIMEOUT_SECONDS; exiting anyway");
                Ok(())
            }
        }
    }
}
/// The playground's opening examples: a query for an activity that exists,
/// and its statistics in a second tab.
fn playground_defaults(settings: &Settings) -> playground::Defaults {
    playground::Defaults {
        query: format!(
            "# The newest visits: press the run button.\n{}",
            crate::graphql::EXAMPLE_QUERY
        ),
        variables: serde_json::json!({ "activityId": settings.playground_activity_id.to_string(), "last": 10 })
            .to_string(),
        headers: if settings.client_auth_configured() {
            r#"{"Authorization": "Bearer <your API key or JWT>"}"#.to_owned()
        } else {
            "{}".to_owned()
        },
        stats_query: crate::graphql::stats::example_query(settings.playground_activity_id),
    }
}

/// CORS for the configured origins only; no CORS headers at all by default,
/// so browsers on other origins cannot read answers.
fn cors(origins: &[String]) -> Result<tower_http::cors::CorsLayer, String> {
    use axum::http::{HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let list = origins
        .iter()
        .map(|o| {
            HeaderValue::from_str(o)
                .map_err(|_| format!("CORS_ALLOWED_ORIGINS: {o:?} is not a valid origin"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CorsLayer::new()
        .allow_origin(AllowOrigin::list(list))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            crate::telemetry::REQUEST_ID.clone(),
        ])
        .max_age(Duration::from_secs(600)))
}
