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
use crate::config::{ClientSettings, ServerSettings, Settings};
use crate::graphql::documents::Documents;
use crate::graphql::manifest::Manifest;
use crate::graphql::persisted::PersistedQueries;
use crate::graphql::{self, Resolver};
use crate::http::{AppState, RequestLimits};
use crate::limits::{ClientLimiter, Rate, TrustedProxies};
use crate::page::PageSource;
use crate::paging::RangePolicy;
use crate::playground::{self, Playground};
use crate::response_cache::ResponseCache;
use crate::secret::TokenSource;
use crate::shared::pages::SharedPages;
use crate::shared::{Redis, RedisConfig};
use crate::stats::load::StatsLoader;
use crate::telemetry::Metrics;
use crate::upstream::{BudgetFront, UpstreamClient, UpstreamConfig};
use crate::visits::FetchPolicy;

pub struct App {
    pub state: Arc<AppState>,
    pub router: Router,
    /// `/metrics` on its own port, when `METRICS_LISTEN_ADDR` is set.
    pub metrics_router: Option<Router>,
    shutdown: ShutdownPolicy,
    /// The platform token, followed while serving like the other secrets.
    token: TokenSource,
    /// Shared state, when `REDIS_URL` is set; connected once serving.
    pub redis: Option<Redis>,
}

#[derive(Debug, Clone, Copy)]
struct ShutdownPolicy {
    drain: Duration,
    timeout: Duration,
}

impl App {
    /// Wires each part to its own group of settings; `manifest` is the
    /// trusted documents of `PERSISTED_QUERIES_FILE`, read at start
    /// ([`Manifest::from_setting`]).
    pub fn build(
        settings: &Settings,
        token: TokenSource,
        manifest: Option<Arc<Manifest>>,
    ) -> Result<Self, String> {
        let Settings {
            server,
            upstream,
            paging,
            cache,
            client,
            shared,
        } = settings;
        let auth = Authenticator::from_settings(client)?;
        let metrics = Metrics::new();
        let redis = RedisConfig::from_settings(shared)
            .map(|config| Redis::new(&config, metrics.clone()))
            .transpose()?;
        let upstream_client = {
            let config = UpstreamConfig::from_settings(upstream);
            let budget = BudgetFront::new(
                &config,
                redis.as_ref(),
                shared.expected_replicas,
                metrics.clone(),
            );
            UpstreamClient::new(config, token.clone(), budget, metrics.clone())
                .map_err(|e| format!("cannot build the upstream HTTP client: {e}"))?
        };
        let ttl = TtlPolicy {
            recent: cache.ttl_recent,
            settled: cache.ttl_settled,
            grace: cache.stale_grace,
            refresh_deadline: upstream.deadline,
            negative: cache.negative_ttl,
        };
        // Page sources as layers, each over the next: moka, then (with Redis,
        // unless caching is off: that setting measures the platform path)
        // the level shared by the replicas, then the budget and the client.
        let mut source: Arc<dyn PageSource> = Arc::new(upstream_client);
        if let Some(redis) = redis.as_ref().filter(|_| cache.page_cache_max_bytes > 0) {
            source = Arc::new(SharedPages::new(
                redis.clone(),
                &upstream.base_url,
                ttl,
                metrics.clone(),
                source,
            ));
        }
        let page_cache = PageCache::new(source, cache.page_cache_max_bytes, ttl, metrics.clone());
        let pin_granularity = ChronoDuration::from_std(paging.pin_granularity)
            .map_err(|e| format!("PIN_GRANULARITY_SECONDS: {e}"))?;
        let range_policy = RangePolicy {
            max_range: ChronoDuration::days(i64::from(paging.max_range_days)),
            pin_granularity,
            default_range: ChronoDuration::days(7),
        };
        let resolver = Resolver {
            cache: page_cache.clone(),
            range_policy,
            fetch_policy: FetchPolicy {
                upstream_page_size: paging.upstream_page_size,
                window_concurrency: paging.window_concurrency as usize,
                deadline: upstream.deadline,
            },
            default_page_size: paging.default_page_size,
            max_page_size: paging.max_page_size,
            stats: StatsLoader::new(
                cache.stats_cache_max_bytes,
                paging.stats_max_platform_requests,
            )
            .with_metrics(metrics.clone()),
        };
        let resolver = Arc::new(resolver);
        let shared_live = redis.as_ref().map(|r| {
            crate::shared::live::SharedLive::new(r.clone(), &upstream.base_url, upstream.live_poll)
        });
        let live = crate::live::Live::new(
            page_cache.clone(),
            shared_live,
            crate::live::LivePolicy {
                poll: upstream.live_poll,
                buffer: server.live_subscriber_buffer as usize,
                ping: server.live_ping,
                max_per_client: client.live_max_subscriptions_per_client as usize,
                max_connections_per_client: client.live_max_connections_per_client as usize,
                max_total: server.live_max_subscriptions as usize,
                page_size: paging.upstream_page_size,
                deadline: upstream.deadline,
                max_requests_per_poll: u64::from(paging.max_platform_requests_per_query()),
            },
            metrics.clone(),
        );
        let persisted = PersistedQueries::new(
            crate::graphql::persisted::MAX_BYTES,
            manifest,
            server.persisted_queries_only,
        );
        let state = Arc::new(AppState {
            schema: graphql::build_schema(Some(resolver.clone()), server),
            resolver,
            documents: Documents::new(8 * 1024 * 1024),
            persisted,
            cache: page_cache,
            ready: AtomicBool::new(false),
            playground: server
                .playground_enabled
                .then(|| Playground::new(&playground_defaults(server, client))),
            auth,
            metrics,
            responses: ResponseCache::new(
                cache.response_cache_max_bytes,
                cache.response_cache_max_ttl,
            ),
            client_limiter: ClientLimiter::new(Rate::new(client.rate_per_second, client.burst)),
            trusted_proxies: TrustedProxies::new(client.trusted_proxies.clone()),
            limits: RequestLimits {
                max_body_bytes: server.max_body_bytes as usize,
                request_timeout: server.request_timeout,
                header_read_timeout: server.header_read_timeout,
                body_read_timeout: server.body_read_timeout,
                secrets_reload: client.secrets_reload,
                pin_granularity: range_policy.pin_granularity,
                max_platform_requests: u64::from(paging.max_platform_requests_per_query()),
                window_concurrency: paging.window_concurrency as usize,
            },
            live,
        });
        let router = crate::http::router(state.clone(), server.metrics_listen_addr.is_none())
            .layer(cors(&server.cors_allowed_origins)?);
        let metrics_router = server
            .metrics_listen_addr
            .map(|_| crate::http::metrics_router(state.clone()));
        let shutdown = ShutdownPolicy {
            drain: server.shutdown_drain,
            timeout: server.shutdown_timeout,
        };
        Ok(Self {
            state,
            router,
            metrics_router,
            shutdown,
            token,
            redis,
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
        if let Some(redis) = &self.redis {
            redis.start(state.limits.secrets_reload);
        }
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
        let server = serve_http(
            listener,
            self.router,
            state.limits.header_read_timeout,
            async move {
                shutdown.await;
                shutdown_state.ready.store(false, Ordering::Release);
                tracing::info!(
                    drain_s = policy.drain.as_secs(),
                    "shutting down: readiness off, draining"
                );
                tokio::time::sleep(policy.drain).await;
                // Subscriptions end with `complete`, their sockets with 1001.
                shutdown_state.live.shut_down();
                drained.notify_one();
            },
        );
        let deadline = async move {
            draining.notified().await;
            tokio::time::sleep(policy.timeout).await;
        };
        // Upgraded sockets outlive axum's connections: wait for their close.
        let server = async move {
            let result = server.await;
            state.live.sockets_closed().await;
            result
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

/// Serves `router` on `listener` (HTTP/1, upgrades for WebSocket, each
/// request with its `ConnectInfo<SocketAddr>`) until `shutdown` resolves:
/// then stops accepting, lets each connection finish its request and waits
/// for them all, as `axum::serve`'s graceful shutdown does. Unlike it, with
/// a timer, so a connection that has not sent a request's headers within
/// `header_read_timeout` (a first request, or the next on an idle
/// keep-alive connection) is closed (a slow client must not hold the process open).
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    use tokio::sync::watch;
    use tower::Service;

    let mut make_service: IntoMakeServiceWithConnectInfo<Router, std::net::SocketAddr> =
        router.into_make_service_with_connect_info();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    // Connections hold `signal` (closed once shutdown starts) and `close_rx`
    // (dropped when they end): `close_tx.closed()` is all of them ended.
    let (signal, shutting_down) = watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        drop(shutting_down);
    });
    let (close_tx, close_rx) = watch::channel(());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // A connection gone before it was accepted.
                Err(e) if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                ) => continue,
                // Out of file descriptors, say: wait for some to close.
                Err(e) => {
                    tracing::error!(error = %e, "accept error");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = signal.closed() => break,
        };
        let Ok(service) = make_service.call(peer).await;
        let connection = http
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
            .with_upgrades();
        let (signal, close_rx) = (signal.clone(), close_rx.clone());
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended in error");
                    }
                    return;
                }
                () = signal.closed() => connection.as_mut().graceful_shutdown(),
            }
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended in error");
            }
            drop(close_rx);
        });
    }
    drop((close_rx, listener));
    close_tx.closed().await;
    Ok(())
}

/// The playground's opening examples: a query for an activity that exists,
/// and its statistics in a second tab.
fn playground_defaults(server: &ServerSettings, client: &ClientSettings) -> playground::Defaults {
    playground::Defaults {
        query: format!(
            "# The newest visits: press the run button.\n{}",
            crate::graphql::EXAMPLE_QUERY
        ),
        variables: serde_json::json!({ "activityId": server.playground_activity_id.to_string(), "last": 10 })
            .to_string(),
        headers: if client.auth_configured() {
            r#"{"Authorization": "Bearer <your API key or JWT>"}"#.to_owned()
        } else {
            "{}".to_owned()
        },
        stats_query: crate::graphql::stats::example_query(server.playground_activity_id),
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
