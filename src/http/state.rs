//! What every door of the HTTP surface shares: built once by
//! [`crate::app::App::build`] from the settings, read by the handlers.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use chrono::Duration as ChronoDuration;

use crate::auth::Authenticator;
use crate::cache::PageCache;
use crate::graphql::documents::Documents;
use crate::graphql::persisted::PersistedQueries;
use crate::graphql::{GatewaySchema, Resolver};
use crate::limits::{ClientLimiter, TrustedProxies};
use crate::playground::Playground;
use crate::response_cache::ResponseCache;
use crate::telemetry::Metrics;

pub struct AppState {
    pub schema: GatewaySchema,
    /// Also read before execution, to plan a request's cost.
    pub resolver: Arc<Resolver>,
    /// Parsed documents by query text.
    pub documents: Documents,
    /// Automatic persisted queries by hash.
    pub persisted: PersistedQueries,
    pub cache: PageCache,
    /// False until the listener is up, and again once shutdown starts.
    pub ready: AtomicBool,
    /// `None` when `PLAYGROUND_ENABLED=false`.
    pub playground: Option<Playground>,
    pub auth: Authenticator,
    pub metrics: Arc<Metrics>,
    pub responses: ResponseCache,
    pub client_limiter: ClientLimiter,
    /// Whose `X-Forwarded-For` names an anonymous client (TRUSTED_PROXIES).
    pub trusted_proxies: TrustedProxies,
    pub limits: RequestLimits,
    /// Live subscriptions: pollers, limits, the shutdown signal.
    pub live: Arc<crate::live::Live>,
}

pub struct RequestLimits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub secrets_reload: Duration,
    /// The range policy's, for the response cache's pin buckets.
    pub pin_granularity: ChronoDuration,
    /// Platform requests one GraphQL request may need, at worst.
    pub max_platform_requests: u64,
    /// Platform requests one GraphQL request may have in flight.
    pub window_concurrency: usize,
}
