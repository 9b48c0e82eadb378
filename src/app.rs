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
use crate::graphql::{self, GatewaySchema, Resolver};
use crate::limits::ClientLimiter;
use crate::paging::RangePolicy;
use crate::playground::{self, Playground};
use crate::secret::TokenSource;
use crate::upstream::UpstreamClient;
use crate::visits::FetchPolicy;

pub struct AppState {
    pub schema: GatewaySchema,
    pub cache: PageCache,
    /// False until the listener is up, and again once shutdown starts.
    pub ready: AtomicBool,
    /// `None` when `PLAYGROUND_ENABLED=false`.
    pub playground: Option<Playground>,
    pub auth: Authenticator,
    pub client_limiter: ClientLimiter,
    pub limits: RequestLimits,
}

pub struct RequestLimits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub secrets_reload: Duration,
}

pub struct App {
    pub state: Arc<AppState>,
    pub router: Router,
}

impl App {
    pub fn build(settings: &Settings, token: TokenSource) -> Result<Self, String> {
        let auth = Authenticator::from_settings(settings)?;
        let upstream = UpstreamClient::new(
            settings.upstream_base_url.clone(),
            token,
            settings.upstream_connect_timeout(),
            settings.upstream_timeout(),
        )
        .map_err(|e| format!("cannot build the upstream HTTP client: {e}"))?;
        let cache = PageCache::new(
            upstream,
            settings.cache_max_bytes,
            TtlPolicy {
                recent: Duration::from_secs(settings.cache_ttl_recent_seconds),
                settled: Duration::from_secs(settings.cache_ttl_settled_seconds),
            },
        );
        let resolver = Resolver {
            cache: cache.clone(),
            range_policy: RangePolicy {
                max_range: ChronoDuration::days(i64::from(settings.max_range_days)),
                pin_granularity: ChronoDuration::seconds(i64::from(
                    settings.pin_granularity_seconds,
                )),
                default_range: ChronoDuration::days(7),
            },
            fetch_policy: FetchPolicy {
                upstream_page_size: settings.upstream_page_size,
                window_concurrency: settings.window_concurrency as usize,
            },
            default_page_size: settings.default_page_size,
            max_page_size: settings.max_page_size,
        };
        let state = Arc::new(AppState {
            schema: graphql::build_schema(Some(Arc::new(resolver)), settings),
            cache,
            ready: AtomicBool::new(false),
            playground: settings
                .playground_enabled
                .then(|| Playground::new(&playground_defaults(settings))),
            auth,
            client_limiter: ClientLimiter::new(
                settings.client_rate_per_second,
                settings.client_burst,
            ),
            limits: RequestLimits {
                max_body_bytes: settings.max_body_bytes as usize,
                request_timeout: Duration::from_millis(settings.request_timeout_ms),
                secrets_reload: Duration::from_secs(settings.secrets_reload_seconds),
            },
        });
        let router =
            crate::http::router(state.clone()).layer(cors(&settings.cors_allowed_origins)?);
        Ok(Self { state, router })
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = self.state.clone();
        state.auth.spawn_reload(state.limits.secrets_reload);
        let limiter_state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                limiter_state.client_limiter.forget_idle();
            }
        });
        state.ready.store(true, Ordering::Release);
        let shutdown_state = state.clone();
        axum::serve(
            listener,
            self.router
                .into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            shutdown_state.ready.store(false, Ordering::Release);
        })
        .await
    }
}

/// The playground's opening example: a query for an activity that exists.
fn playground_defaults(settings: &Settings) -> playground::Defaults {
    playground::Defaults {
        query: format!(
            "# The newest visits of an activity. Run it with the button above.\n{}",
            crate::graphql::EXAMPLE_QUERY
        ),
        variables: serde_json::json!({ "activityId": settings.playground_activity_id.to_string(), "last": 10 })
            .to_string(),
        headers: if settings.client_auth_configured() {
            r#"{"Authorization": "Bearer <your API key or JWT>"}"#.to_owned()
        } else {
            "{}".to_owned()
        },
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
            header::HeaderName::from_static("x-request-id"),
        ])
        .max_age(Duration::from_secs(600)))
}
