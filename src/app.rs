//! Builds the gateway from its settings, and serves it on a bound listener
//! until a shutdown future resolves (so tests run the real server on port 0).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use chrono::Duration as ChronoDuration;
use tokio::net::TcpListener;

use crate::cache::{PageCache, TtlPolicy};
use crate::config::Settings;
use crate::graphql::{self, GatewaySchema, Resolver};
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
}

pub struct App {
    pub state: Arc<AppState>,
    pub router: Router,
}

impl App {
    pub fn build(settings: &Settings, token: TokenSource) -> Result<Self, String> {
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
            schema: graphql::build_schema(Some(Arc::new(resolver)), settings.introspection_enabled),
            cache,
            ready: AtomicBool::new(false),
            playground: settings
                .playground_enabled
                .then(|| Playground::new(&playground_defaults(settings))),
        });
        let router = crate::http::router(state.clone());
        Ok(Self { state, router })
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = self.state.clone();
        state.ready.store(true, Ordering::Release);
        let shutdown_state = state.clone();
        axum::serve(listener, self.router)
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
        headers: "{}".to_owned(),
    }
}
