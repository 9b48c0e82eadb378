//! Settings: every one a flag with an environment fallback
//! (docs/configuration.md),
//! checked at start so a bad value stops the process with its name.
//!
//! They come in groups by concern, each handed to the part that needs it
//! (`App::build` wires them): [`ServerSettings`] (the HTTP surface),
//! [`UpstreamSettings`] (the platform client), [`PagingSettings`] (ranges
//! and pages), [`CacheSettings`] (page and response caches),
//! [`ClientSettings`] (client authentication and rate limits) and
//! [`SharedSettings`] (Redis, shared by the replicas).
//!
//! Each argument's `id` is its environment variable, which clap also shows
//! as the value's placeholder, so an error names the variable (`invalid
//! value '0' for '--max-page-size <MAX_PAGE_SIZE>'`); the flag is spelled
//! out beside it. Fields are named for their group and hold parsed types
//! (durations are [`Duration`]s).

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::{Args, FromArgMatches, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use reqwest::Url;

use crate::secret::{Secret, TokenSource};

#[derive(Debug, Parser)]
#[command(
    name = "visits-gateway",
    version,
    about = "GraphQL gateway for an activity's user visits"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the production gateway.
    Serve(Settings),
    /// Run the gateway in front of a built-in simulated platform.
    Demo(Settings),
    /// Print the GraphQL schema (SDL).
    Schema,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Surrounding whitespace ignored and empty refused, as in secret files.
fn secret(s: &str) -> Result<Secret, String> {
    match s.trim() {
        "" => Err("must not be empty".into()),
        s => Ok(Secret::new(s)),
    }
}

fn base_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() || url.host().is_none() {
        return Err("must be an http(s) URL such as https://shangzhibo.tv".into());
    }
    if url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err("must have no query, fragment or credentials".into());
    }
    Ok(url)
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 100_000.0 => Ok(r),
        _ => Err("must be a number of requests per second above 0, such as 2 or 0.25".into()),
    }
}

fn origin(s: &str) -> Result<String, String> {
    let url = Url::parse(s.trim()).map_err(|e| format!("not an origin: {e}"))?;
    let origin = url.origin().ascii_serialization();
    if !matches!(url.scheme(), "http" | "https") || format!("{origin}/") != url.as_str() {
        return Err(format!(
            "{s:?} is not an origin such as https://app.example.com"
        ));
    }
    Ok(origin)
}

/// A network in CIDR notation; a bare address is a network of one (/32 or
/// /128). IPv4-mapped IPv6 addresses are taken as the IPv4 ones.
fn proxy_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    let net = match s.parse::<IpNet>() {
        Ok(net) => net.trunc(),
        Err(_) => match s.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip.to_canonical()),
            Err(_) => {
                return Err(format!(
                    "{s:?} is not an IP address or network such as 10.0.0.0/8, 192.0.2.7 or fd00::/8"
                ));
            }
        },
    };
    Ok(net)
}

/// Whole milliseconds in `range`, as a [`Duration`]; clap's range check
/// and message are kept.
fn millis(range: RangeInclusive<u64>) -> impl TypedValueParser<Value = Duration> {
    clap::value_parser!(u64)
        .range(range)
        .map(Duration::from_millis)
}

/// Whole seconds in `range`, as a [`Duration`].
fn seconds(range: RangeInclusive<u64>) -> impl TypedValueParser<Value = Duration> {
    clap::value_parser!(u64)
        .range(range)
        .map(Duration::from_secs)
}

/// A group's defaults: its arguments parsed from an empty command line with
/// the environment switched off, so defaults are written once (in the
/// attributes) and never depend on the caller's shell.
fn defaults_of<T: Args + FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults").no_binary_name(true))
        .mut_args(|arg| arg.env(None));
    let matches = command
        .try_get_matches_from(std::iter::empty::<String>())
        .unwrap_or_else(|e| panic!("the built-in defaults parse: {e}"));
    T::from_arg_matches(&matches).unwrap_or_else(|e| panic!("the built-in defaults parse: {e}"))
}

/// Every setting, by group.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    #[command(flatten)]
    pub server: ServerSettings,
    #[command(flatten)]
    pub upstream: UpstreamSettings,
    #[command(flatten)]
    pub paging: PagingSettings,
    #[command(flatten)]
    pub cache: CacheSettings,
    #[command(flatten)]
    pub client: ClientSettings,
    #[command(flatten)]
    pub shared: SharedSettings,
}

/// The HTTP surface: listeners, shutdown, request limits, CORS, GraphQL
/// limits, the playground and logs.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Server")]
pub struct ServerSettings {
    /// Address the gateway listens on.
    #[arg(
        id = "LISTEN_ADDR",
        long = "listen-addr",
        env,
        default_value = "0.0.0.0:8080"
    )]
    pub listen_addr: SocketAddr,

    /// Serve `/metrics` on this address instead of the main one.
    #[arg(id = "METRICS_LISTEN_ADDR", long = "metrics-listen-addr", env)]
    pub metrics_listen_addr: Option<SocketAddr>,

    /// After SIGTERM, seconds to keep serving while readiness is false, so
    /// load balancers stop sending new requests first.
    #[arg(id = "SHUTDOWN_DRAIN_SECONDS", long = "shutdown-drain-seconds", env, default_value = "5", value_parser = seconds(0..=300))]
    pub shutdown_drain: Duration,

    /// Then, seconds in-flight requests get to finish before the process exits.
    #[arg(id = "SHUTDOWN_TIMEOUT_SECONDS", long = "shutdown-timeout-seconds", env, default_value = "20", value_parser = seconds(1..=600))]
    pub shutdown_timeout: Duration,

    /// Largest request body, in bytes.
    #[arg(id = "MAX_BODY_BYTES", long = "max-body-bytes", env, default_value_t = 32 * 1024, value_parser = clap::value_parser!(u32).range(256..=16_777_216))]
    pub max_body_bytes: u32,

    /// Deadline of one whole GraphQL request, in milliseconds.
    #[arg(id = "REQUEST_TIMEOUT_MS", long = "request-timeout-ms", env, default_value = "15000", value_parser = millis(100..=300_000))]
    pub request_timeout: Duration,

    /// Seconds a connection gets to send a request's headers, all of them
    /// (also an idle keep-alive connection's next request); then it is closed.
    #[arg(id = "HEADER_READ_TIMEOUT_SECONDS", long = "header-read-timeout-seconds", env, default_value = "30", value_parser = seconds(1..=300))]
    pub header_read_timeout: Duration,

    /// Seconds a request gets to send its whole body once its headers are
    /// in; then it is answered 408 and the connection closed.
    #[arg(id = "BODY_READ_TIMEOUT_SECONDS", long = "body-read-timeout-seconds", env, default_value = "30", value_parser = seconds(1..=300))]
    pub body_read_timeout: Duration,

    /// Browser origins allowed by CORS, comma separated (none by default).
    #[arg(id = "CORS_ALLOWED_ORIGINS", long = "cors-allowed-origins", env, value_delimiter = ',', value_parser = origin)]
    pub cors_allowed_origins: Vec<String>,

    /// Deepest GraphQL selection accepted (GraphiQL's schema query needs 15).
    #[arg(id = "MAX_QUERY_DEPTH", long = "max-query-depth", env, default_value_t = 16, value_parser = clap::value_parser!(u32).range(2..=100))]
    pub max_query_depth: u32,

    /// Largest GraphQL complexity (fields selected) accepted (GraphiQL's
    /// schema query needs about 250; one full userVisits selection is 36).
    #[arg(id = "MAX_QUERY_COMPLEXITY", long = "max-query-complexity", env, default_value_t = 260, value_parser = clap::value_parser!(u32).range(10..=100_000))]
    pub max_query_complexity: u32,

    /// Answer GraphQL introspection queries (tools and the playground need it).
    #[arg(id = "INTROSPECTION_ENABLED", long = "introspection-enabled", env, default_value_t = true, action = clap::ArgAction::Set)]
    pub introspection_enabled: bool,

    /// Trusted documents: a manifest of the operations clients may name by
    /// id, from Apollo's `generate-persisted-query-manifest` or
    /// relay-compiler's persisted-query output (read once, at start).
    #[arg(id = "PERSISTED_QUERIES_FILE", long = "persisted-queries-file", env)]
    pub persisted_queries_file: Option<PathBuf>,

    /// Run only the operations of PERSISTED_QUERIES_FILE: any other query
    /// text, and APQ registration, is PERSISTED_QUERY_NOT_ALLOWED.
    #[arg(id = "PERSISTED_QUERIES_ONLY", long = "persisted-queries-only", env, default_value_t = false, action = clap::ArgAction::Set)]
    pub persisted_queries_only: bool,

    /// Serve the GraphiQL playground on `GET /graphql`.
    #[arg(id = "PLAYGROUND_ENABLED", long = "playground-enabled", env, default_value_t = true, action = clap::ArgAction::Set)]
    pub playground_enabled: bool,

    /// The activity the playground's example query asks for.
    #[arg(
        id = "PLAYGROUND_ACTIVITY_ID",
        long = "playground-activity-id",
        env,
        default_value_t = 10024069
    )]
    pub playground_activity_id: u64,

    /// Subscriptions (`userVisitAdded`) the gateway serves at once, all
    /// clients together; more are refused with RATE_LIMITED.
    #[arg(id = "LIVE_MAX_SUBSCRIPTIONS", long = "live-max-subscriptions", env, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub live_max_subscriptions: u32,

    /// Poll results a subscriber may fall behind by before it is closed
    /// with SUBSCRIBER_TOO_SLOW (each holds the visits one poll found).
    #[arg(id = "LIVE_SUBSCRIBER_BUFFER", long = "live-subscriber-buffer", env, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub live_subscriber_buffer: u32,

    /// Seconds between the server's graphql-transport-ws `ping` messages on
    /// subscription sockets; a client silent for three of them is closed.
    /// Under the usual 60 s idle timeout of load balancers and proxies.
    #[arg(id = "LIVE_PING_SECONDS", long = "live-ping-seconds", env, default_value = "15", value_parser = seconds(1..=3600))]
    pub live_ping: Duration,

    /// Log format: json (default) or text.
    #[arg(id = "LOG_FORMAT", long = "log-format", env, value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

/// The platform client: where, with which token, how patiently, how often.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Platform")]
pub struct UpstreamSettings {
    /// The platform's base URL.
    #[arg(id = "UPSTREAM_BASE_URL", long = "upstream-base-url", env, default_value = "https://shangzhibo.tv", value_parser = base_url)]
    pub base_url: Url,

    /// The platform token (prefer UPSTREAM_TOKEN_FILE: a flag shows in `ps`).
    #[arg(id = "UPSTREAM_TOKEN", long = "upstream-token", env, hide_env_values = true, value_parser = secret)]
    pub token: Option<Secret>,

    /// A file holding the platform token; re-read when it changes.
    #[arg(
        id = "UPSTREAM_TOKEN_FILE",
        long = "upstream-token-file",
        env,
        conflicts_with = "UPSTREAM_TOKEN"
    )]
    pub token_file: Option<PathBuf>,

    /// Upstream connect timeout, in milliseconds.
    #[arg(id = "UPSTREAM_CONNECT_TIMEOUT_MS", long = "upstream-connect-timeout-ms", env, default_value = "2000", value_parser = millis(1..=60_000))]
    pub connect_timeout: Duration,

    /// Upstream total timeout per request, in milliseconds.
    #[arg(id = "UPSTREAM_TIMEOUT_MS", long = "upstream-timeout-ms", env, default_value = "10000", value_parser = millis(1..=120_000))]
    pub timeout: Duration,

    /// Time one GraphQL request may spend on the platform, retries and
    /// budget waits included, in milliseconds.
    #[arg(id = "UPSTREAM_DEADLINE_MS", long = "upstream-deadline-ms", env, default_value = "8000", value_parser = millis(10..=300_000))]
    pub deadline: Duration,

    /// The platform request budget: sustained requests per second (may be
    /// fractional, e.g. 0.2 for 12 a minute), shared by the whole process.
    #[arg(id = "UPSTREAM_RATE_PER_SECOND", long = "upstream-rate-per-second", env, default_value_t = 2.0, value_parser = positive_rate)]
    pub rate_per_second: f64,

    /// Requests the budget lets through at once after a quiet spell.
    #[arg(id = "UPSTREAM_BURST", long = "upstream-burst", env, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub burst: u32,

    /// How long an upstream call may queue for the budget, in milliseconds.
    #[arg(id = "UPSTREAM_MAX_BUDGET_WAIT_MS", long = "upstream-max-budget-wait-ms", env, default_value = "3000", value_parser = millis(0..=600_000))]
    pub max_budget_wait: Duration,

    /// Platform requests one client may have queued for the budget; beyond
    /// it, its own requests get UPSTREAM_RATE_LIMITED at once. At least
    /// WINDOW_CONCURRENCY (what one request may have in flight).
    #[arg(id = "UPSTREAM_MAX_QUEUED_PER_CLIENT", long = "upstream-max-queued-per-client", env, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_queued_per_client: u32,

    /// Upstream requests in flight at once, for the whole process.
    #[arg(id = "UPSTREAM_MAX_CONCURRENCY", long = "upstream-max-concurrency", env, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_concurrency: u32,

    /// Retries of a failed upstream request (connection errors, 429, 5xx).
    #[arg(id = "UPSTREAM_MAX_RETRIES", long = "upstream-max-retries", env, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub max_retries: u32,

    /// First retry backoff in milliseconds; doubled each retry, jittered.
    #[arg(id = "UPSTREAM_RETRY_BASE_MS", long = "upstream-retry-base-ms", env, default_value = "200", value_parser = millis(1..=60_000))]
    pub retry_base: Duration,

    /// The longest pause a platform's Retry-After may impose, in seconds.
    #[arg(id = "UPSTREAM_RETRY_AFTER_CAP_SECONDS", long = "upstream-retry-after-cap-seconds", env, default_value = "30", value_parser = seconds(1..=3600))]
    pub retry_after_cap: Duration,

    /// Seconds between two polls of an activity with live subscribers
    /// (one poller per activity, whatever the number of subscribers).
    #[arg(id = "LIVE_POLL_SECONDS", long = "live-poll-seconds", env, default_value = "5", value_parser = seconds(1..=3600))]
    pub live_poll: Duration,

    /// The largest platform response body read, in bytes (4 MiB by default).
    #[arg(id = "UPSTREAM_MAX_BODY_BYTES", long = "upstream-max-body-bytes", env, default_value_t = 4 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=268_435_456))]
    pub max_body_bytes: u64,
}

/// Ranges and pages: what a client may ask for and how it maps onto the
/// platform's pages (the platform page size is here because paging plans
/// are made of it).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Paging")]
pub struct PagingSettings {
    /// `first`/`last` when the client gives neither.
    #[arg(id = "DEFAULT_PAGE_SIZE", long = "default-page-size", env, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub default_page_size: u32,

    /// The largest `first`/`last` a client may ask for.
    #[arg(id = "MAX_PAGE_SIZE", long = "max-page-size", env, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_page_size: u32,

    /// The page size the gateway asks the platform for.
    #[arg(id = "UPSTREAM_PAGE_SIZE", long = "upstream-page-size", env, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub upstream_page_size: u64,

    /// The longest range a client may ask for, in days.
    #[arg(id = "MAX_RANGE_DAYS", long = "max-range-days", env, default_value_t = 92, value_parser = clap::value_parser!(u32).range(1..=3660))]
    pub max_range_days: u32,

    /// Open ranges end at now truncated to this many seconds.
    #[arg(id = "PIN_GRANULARITY_SECONDS", long = "pin-granularity-seconds", env, default_value = "60", value_parser = seconds(1..=3600))]
    pub pin_granularity: Duration,

    /// Upstream requests one client request may have in flight.
    #[arg(id = "WINDOW_CONCURRENCY", long = "window-concurrency", env, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub window_concurrency: u32,

    /// Platform requests one GraphQL request may need; by default what the
    /// largest single `userVisits` needs (see `max_platform_requests_per_query`).
    #[arg(id = "MAX_PLATFORM_REQUESTS_PER_QUERY", long = "max-platform-requests-per-query", env, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_platform_requests: Option<u32>,

    /// Platform requests (pages not cached) one request's statistics may need.
    #[arg(id = "STATS_MAX_PLATFORM_REQUESTS", long = "stats-max-platform-requests", env, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub stats_max_platform_requests: u64,
}

/// The page cache (upstream pages) and the response cache (whole answers).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Caches")]
pub struct CacheSettings {
    /// Page cache capacity in bytes; 0 turns the page cache off (every
    /// request goes to the platform: for benchmarks and debugging only).
    #[arg(id = "CACHE_MAX_BYTES", long = "cache-max-bytes", env, default_value_t = 64 * 1024 * 1024)]
    pub page_cache_max_bytes: u64,

    /// TTL of pages of windows that end within the last hour, in seconds.
    #[arg(id = "CACHE_TTL_RECENT_SECONDS", long = "cache-ttl-recent-seconds", env, default_value = "30", value_parser = seconds(1..=86_400))]
    pub ttl_recent: Duration,

    /// TTL of pages of settled windows, in seconds.
    #[arg(id = "CACHE_TTL_SETTLED_SECONDS", long = "cache-ttl-settled-seconds", env, default_value = "3600", value_parser = seconds(1..=604_800))]
    pub ttl_settled: Duration,

    /// How long a page is kept past its TTL, to serve when the platform
    /// fails, in seconds.
    #[arg(id = "STALE_GRACE_SECONDS", long = "stale-grace-seconds", env, default_value = "600", value_parser = seconds(0..=604_800))]
    pub stale_grace: Duration,

    /// How long a platform answer that there is nothing (an unknown
    /// activity) is remembered, in seconds; 0 turns it off.
    #[arg(id = "NEGATIVE_CACHE_SECONDS", long = "negative-cache-seconds", env, default_value = "30", value_parser = seconds(0..=3600))]
    pub negative_ttl: Duration,

    /// Response cache capacity in bytes; 0 turns the response cache off.
    #[arg(id = "RESPONSE_CACHE_MAX_BYTES", long = "response-cache-max-bytes", env, default_value_t = 32 * 1024 * 1024)]
    pub response_cache_max_bytes: u64,

    /// The longest a whole response is reused, in seconds.
    #[arg(id = "RESPONSE_CACHE_MAX_TTL_SECONDS", long = "response-cache-max-ttl-seconds", env, default_value = "30", value_parser = seconds(1..=3600))]
    pub response_cache_max_ttl: Duration,

    /// Capacity in bytes of the settled windows' statistics; 0 turns it off.
    #[arg(id = "STATS_CACHE_MAX_BYTES", long = "stats-cache-max-bytes", env, default_value_t = 32 * 1024 * 1024)]
    pub stats_cache_max_bytes: u64,
}

/// Clients: who may ask (API keys, JWT) and how often.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Clients")]
pub struct ClientSettings {
    /// File of API keys: `<name> <sha256-hex> <activity ids or *>
    /// [rate=<per second>[/<burst>]]` per line.
    #[arg(id = "API_KEYS_FILE", long = "api-keys-file", env)]
    pub api_keys_file: Option<PathBuf>,

    /// File holding the HS256 secret of client JWTs (at least 32 bytes).
    #[arg(
        id = "JWT_HS256_SECRET_FILE",
        long = "jwt-hs256-secret-file",
        env,
        conflicts_with = "JWT_PUBLIC_KEY_FILE"
    )]
    pub jwt_hs256_secret_file: Option<PathBuf>,

    /// PEM public key (RSA for RS256, P-256 for ES256) of client JWTs.
    #[arg(id = "JWT_PUBLIC_KEY_FILE", long = "jwt-public-key-file", env)]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Required `iss` of client JWTs.
    #[arg(id = "JWT_ISSUER", long = "jwt-issuer", env)]
    pub jwt_issuer: Option<String>,

    /// Required `aud` of client JWTs.
    #[arg(id = "JWT_AUDIENCE", long = "jwt-audience", env)]
    pub jwt_audience: Option<String>,

    /// How often mounted secret files (token, API keys, JWT key) are
    /// re-read, in seconds.
    #[arg(id = "SECRETS_RELOAD_SECONDS", long = "secrets-reload-seconds", env, default_value = "10", value_parser = seconds(1..=3600))]
    pub secrets_reload: Duration,

    /// Let clients without credentials in, with access to every activity.
    #[arg(id = "ALLOW_UNAUTHENTICATED", long = "allow-unauthenticated", env, default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_unauthenticated: bool,

    /// Requests per second one client (key, JWT subject, else IP) may make.
    #[arg(id = "CLIENT_RATE_PER_SECOND", long = "client-rate-per-second", env, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub rate_per_second: u32,

    /// Burst above the client rate.
    #[arg(id = "CLIENT_BURST", long = "client-burst", env, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub burst: u32,

    /// Subscriptions one client (key, JWT subject, else IP) may hold at once.
    #[arg(id = "LIVE_MAX_SUBSCRIPTIONS_PER_CLIENT", long = "live-max-subscriptions-per-client", env, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub live_max_subscriptions_per_client: u32,

    /// Subscription connections (WebSockets, SSE and multipart streams) one
    /// client (key, JWT subject, else IP, an IPv6 one by its /64) may hold open.
    #[arg(id = "LIVE_MAX_CONNECTIONS_PER_CLIENT", long = "live-max-connections-per-client", env, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub live_max_connections_per_client: u32,

    /// Proxies whose `X-Forwarded-For` is believed, comma-separated CIDRs
    /// or addresses (none by default).
    #[arg(id = "TRUSTED_PROXIES", long = "trusted-proxies", env, value_delimiter = ',', value_parser = proxy_net)]
    pub trusted_proxies: Vec<IpNet>,
}

/// `redis://` or `rediss://` URL; its password never shows in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(Url);

impl RedisUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let url = Url::parse(s.trim()).map_err(|_| {
            "not a URL: expected redis://host:6379 or rediss://host:6379".to_owned()
        })?;
        if !matches!(url.scheme(), "redis" | "rediss") || url.host().is_none() {
            return Err("must be a redis:// or rediss:// URL with a host".into());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("must have no query or fragment".into());
        }
        Ok(Self(url))
    }

    /// The URL with any password replaced, for logs.
    pub fn redacted(&self) -> String {
        let mut url = self.0.clone();
        if url.password().is_some() {
            let _ = url.set_password(Some("redacted"));
        }
        url.to_string()
    }

    pub fn host(&self) -> Option<String> {
        self.0.host_str().map(str::to_owned)
    }

    pub fn port(&self) -> u16 {
        self.0.port().unwrap_or(6379)
    }

    /// The URL as given, password included: to connect, never to show.
    pub fn with_password(&self) -> &str {
        self.0.as_str()
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisUrl({})", self.redacted())
    }
}

/// Parses REDIS_URL without ever echoing the value: it may hold a password.
#[derive(Clone)]
struct RedisUrlParser;

impl TypedValueParser for RedisUrlParser {
    type Value = RedisUrl;

    fn parse_ref(
        &self,
        _: &clap::Command,
        _: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<RedisUrl, clap::Error> {
        let text = value.to_str().unwrap_or_default();
        RedisUrl::parse(text).map_err(|e| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value for '--redis-url <REDIS_URL>': {e} (value not shown: it may hold a password)\n"),
            )
        })
    }
}

/// State shared by replicas through Redis: optional.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Shared state (Redis)")]
pub struct SharedSettings {
    /// Redis shared by the replicas (redis:// or rediss://): the platform
    /// budget, a second page cache level and coalescing. None: each replica
    /// works alone.
    #[arg(id = "REDIS_URL", long = "redis-url", env, hide_env_values = true, value_parser = RedisUrlParser)]
    pub redis_url: Option<RedisUrl>,

    /// A file holding the Redis password (re-read like the token file).
    #[arg(id = "REDIS_PASSWORD_FILE", long = "redis-password-file", env)]
    pub redis_password_file: Option<PathBuf>,

    /// Replicas expected to run: each takes 1/N of the platform budget when
    /// it cannot share it through Redis.
    #[arg(id = "EXPECTED_REPLICAS", long = "expected-replicas", env, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub expected_replicas: u32,
}

impl Settings {
    /// The defaults, without reading the environment (for tests and tools;
    /// the same as `Settings::default()`).
    pub fn defaults() -> Self {
        Self::default()
    }

    /// Checks that need more than one setting. The message names them.
    pub fn validate(&self) -> Result<(), String> {
        let (paging, cache, upstream, client) =
            (&self.paging, &self.cache, &self.upstream, &self.client);
        if paging.default_page_size > paging.max_page_size {
            return Err(format!(
                "DEFAULT_PAGE_SIZE ({}) must not exceed MAX_PAGE_SIZE ({})",
                paging.default_page_size, paging.max_page_size
            ));
        }
        if cache.ttl_recent > cache.ttl_settled {
            return Err(
                "CACHE_TTL_RECENT_SECONDS must not exceed CACHE_TTL_SETTLED_SECONDS".into(),
            );
        }
        let jwt_key =
            client.jwt_hs256_secret_file.is_some() || client.jwt_public_key_file.is_some();
        if (client.jwt_issuer.is_some() || client.jwt_audience.is_some()) && !jwt_key {
            return Err(
                "JWT_ISSUER / JWT_AUDIENCE need JWT_HS256_SECRET_FILE or JWT_PUBLIC_KEY_FILE"
                    .into(),
            );
        }
        if self.server.persisted_queries_only && self.server.persisted_queries_file.is_none() {
            return Err(
                "PERSISTED_QUERIES_ONLY needs PERSISTED_QUERIES_FILE (the operations to run)"
                    .into(),
            );
        }
        if upstream.deadline >= self.server.request_timeout {
            return Err("UPSTREAM_DEADLINE_MS must be below REQUEST_TIMEOUT_MS".into());
        }
        if self.shared.redis_password_file.is_some() && self.shared.redis_url.is_none() {
            return Err("REDIS_PASSWORD_FILE needs REDIS_URL".into());
        }
        if upstream.connect_timeout > upstream.timeout {
            return Err("UPSTREAM_CONNECT_TIMEOUT_MS must not exceed UPSTREAM_TIMEOUT_MS".into());
        }
        if upstream.max_queued_per_client < paging.window_concurrency {
            return Err(format!(
                "UPSTREAM_MAX_QUEUED_PER_CLIENT ({}) must be at least WINDOW_CONCURRENCY ({}): one request may queue that many platform requests",
                upstream.max_queued_per_client, paging.window_concurrency
            ));
        }
        Ok(())
    }
}

impl UpstreamSettings {
    /// The platform token from UPSTREAM_TOKEN or UPSTREAM_TOKEN_FILE.
    pub fn token_source(&self) -> Result<TokenSource, String> {
        match (&self.token, &self.token_file) {
            (Some(t), _) => Ok(TokenSource::fixed(t.clone())),
            (None, Some(path)) => TokenSource::from_file(path.clone())
                .map_err(|e| format!("UPSTREAM_TOKEN_FILE: {e}")),
            (None, None) => Err(
                "set UPSTREAM_TOKEN_FILE (or UPSTREAM_TOKEN) to the platform's access token".into(),
            ),
        }
    }
}

impl PagingSettings {
    /// `MAX_PLATFORM_REQUESTS_PER_QUERY`, or when unset what the largest
    /// legitimate `userVisits` needs: a first page per 7-day window of a
    /// longest range, plus the platform pages of a largest slice (one more,
    /// as a slice need not start on a page boundary). 16 with the defaults.
    pub fn max_platform_requests_per_query(&self) -> u32 {
        self.max_platform_requests.unwrap_or_else(|| {
            let windows = self.max_range_days.div_ceil(7);
            let slice = u64::from(self.max_page_size).div_ceil(self.upstream_page_size) + 1;
            // At most 523 + 1001: no overflow.
            windows + slice as u32
        })
    }
}

impl ClientSettings {
    /// Whether any client authentication is configured.
    pub fn auth_configured(&self) -> bool {
        self.api_keys_file.is_some()
            || self.jwt_hs256_secret_file.is_some()
            || self.jwt_public_key_file.is_some()
    }
}

/// `Default` for each group (and the whole): the built-in defaults, never
/// the environment.
macro_rules! defaults_from_clap {
    ($($group:ty),*) => {$(
        impl Default for $group {
            fn default() -> Self {
                defaults_of()
            }
        }
    )*};
}
defaults_from_clap!(
    Settings,
    ServerSettings,
    UpstreamSettings,
    PagingSettings,
    CacheSettings,
    ClientSettings,
    SharedSettings
);

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `serve` with these flags and no environment (so the developer's shell
    /// cannot change the outcome), validated.
    fn parse(args: &[&str]) -> Result<Settings, String> {
        let command =
            Cli::command().mut_subcommand("serve", |serve| serve.mut_args(|a| a.env(None)));
        let matches = command
            .try_get_matches_from([&["visits-gateway", "serve"], args].concat())
            .map_err(|e| e.to_string())?;
        let cli = Cli::from_arg_matches(&matches).map_err(|e| e.to_string())?;
        let Command::Serve(s) = cli.command else {
            unreachable!()
        };
        s.validate()?;
        Ok(s)
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_follow_the_spec() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.server.listen_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(s.upstream.base_url.as_str(), "https://shangzhibo.tv/");
        let p = &s.paging;
        assert_eq!(
            (p.default_page_size, p.max_page_size, p.upstream_page_size),
            (20, 100, 100)
        );
        assert_eq!(
            (p.max_range_days, p.pin_granularity),
            (92, Duration::from_secs(60))
        );
        assert_eq!(s.server.log_format, LogFormat::Json);
        assert_eq!(
            (
                s.upstream.timeout,
                s.upstream.deadline,
                s.server.request_timeout
            ),
            (
                Duration::from_secs(10),
                Duration::from_secs(8),
                Duration::from_secs(15)
            )
        );
        assert_eq!((s.client.rate_per_second, s.client.burst), (100, 200));
        assert_eq!(
            format!("{s:?}"),
            format!("{:?}", Settings::defaults()),
            "Settings::defaults() is what an empty command line gives"
        );
    }

    #[test]
    fn the_new_settings_have_their_defaults_and_bounds() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.paging.max_platform_requests, None);
        assert_eq!(s.paging.max_platform_requests_per_query(), 14 + 2);
        assert_eq!(s.cache.negative_ttl, Duration::from_secs(30));
        assert_eq!(s.upstream.max_body_bytes, 4 * 1024 * 1024);
        assert!(s.client.trusted_proxies.is_empty());

        for (flag, ok, bad) in [
            (
                "--max-platform-requests-per-query",
                ["1", "10000"],
                ["0", "10001"],
            ),
            ("--negative-cache-seconds", ["0", "3600"], ["-1", "3601"]),
            (
                "--upstream-max-body-bytes",
                ["1024", "268435456"],
                ["1023", "268435457"],
            ),
        ] {
            for v in ok {
                parse(&[flag, v]).unwrap_or_else(|e| panic!("{flag} {v}: {e}"));
            }
            let name = flag
                .trim_start_matches("--")
                .replace('-', "_")
                .to_uppercase();
            for v in bad {
                let e = parse(&[&format!("{flag}={v}")]).unwrap_err();
                assert!(e.contains(&name), "{flag} {v}: {e}");
            }
        }
        let s = parse(&["--negative-cache-seconds", "0"]).unwrap();
        assert_eq!(s.cache.negative_ttl, Duration::ZERO);
        let s = parse(&["--max-platform-requests-per-query", "40"]).unwrap();
        assert_eq!(s.paging.max_platform_requests_per_query(), 40);
        // 1 window of 7 days; 250 items over pages of 100: 3 pages, plus 1.
        let s = parse(&[
            "--max-range-days",
            "7",
            "--max-page-size",
            "250",
            "--upstream-page-size",
            "100",
        ])
        .unwrap();
        assert_eq!(s.paging.max_platform_requests_per_query(), 1 + 3 + 1);
        // The largest figures still fit.
        let s = parse(&[
            "--max-range-days",
            "3660",
            "--max-page-size",
            "1000",
            "--upstream-page-size",
            "1",
        ])
        .unwrap();
        assert_eq!(s.paging.max_platform_requests_per_query(), 523 + 1001);
    }

    #[test]
    fn trusted_proxies_are_networks_or_addresses() {
        let s = parse(&[
            "--trusted-proxies",
            "10.0.0.0/8, 192.0.2.7,fd00::/8,::1,10.1.2.3/16,::ffff:198.51.100.1",
        ])
        .unwrap();
        let nets: Vec<String> = s
            .client
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            nets,
            [
                "10.0.0.0/8",
                "192.0.2.7/32",
                "fd00::/8",
                "::1/128",
                "10.1.0.0/16",
                "198.51.100.1/32"
            ]
        );
        for bad in ["10.0.0.0/33", "proxy.internal", "10.0.0.0/8;", "1.2.3"] {
            let e = parse(&["--trusted-proxies", bad]).unwrap_err();
            assert!(e.contains("TRUSTED_PROXIES"), "{bad}: {e}");
        }
    }

    #[test]
    fn durations_are_parsed_with_their_ranges() {
        let s = parse(&[
            "--upstream-timeout-ms",
            "250",
            "--upstream-connect-timeout-ms",
            "100",
            "--shutdown-drain-seconds",
            "0",
            "--secrets-reload-seconds",
            "2",
        ])
        .unwrap();
        assert_eq!(s.upstream.timeout, Duration::from_millis(250));
        assert_eq!(s.upstream.connect_timeout, Duration::from_millis(100));
        assert_eq!(s.server.shutdown_drain, Duration::ZERO);
        assert_eq!(s.client.secrets_reload, Duration::from_secs(2));
        for (flag, bad) in [
            ("--upstream-timeout-ms", "0"),
            ("--request-timeout-ms", "99"),
            ("--shutdown-timeout-seconds", "601"),
            ("--pin-granularity-seconds", "x"),
            ("--stale-grace-seconds", "-1"),
        ] {
            let name = flag
                .trim_start_matches("--")
                .replace('-', "_")
                .to_uppercase();
            let e = parse(&[&format!("{flag}={bad}")]).unwrap_err();
            assert!(e.contains(&name), "{flag} {bad}: {e}");
        }
    }

    #[test]
    fn a_bad_value_names_its_setting() {
        let e = parse(&["--max-page-size", "0"]).unwrap_err();
        assert!(e.contains("MAX_PAGE_SIZE"), "{e}");
        let e = parse(&["--upstream-base-url", "ftp://x"]).unwrap_err();
        assert!(e.contains("UPSTREAM_BASE_URL"), "{e}");
        let e = parse(&[
            "--cors-allowed-origins",
            "https://a.example.com,https://b.example.com/path",
        ])
        .unwrap_err();
        assert!(e.contains("CORS_ALLOWED_ORIGINS"), "{e}");
        let ok = parse(&[
            "--cors-allowed-origins",
            "https://a.example.com,http://localhost:3000",
        ])
        .unwrap();
        assert_eq!(
            ok.server.cors_allowed_origins,
            ["https://a.example.com", "http://localhost:3000"]
        );
        let e = parse(&["--default-page-size", "200", "--max-page-size", "100"]).unwrap_err();
        assert!(e.contains("DEFAULT_PAGE_SIZE"), "{e}");
        let e = parse(&["--upstream-deadline-ms", "15000"]).unwrap_err();
        assert!(e.contains("UPSTREAM_DEADLINE_MS"), "{e}");
        let e = parse(&["--cache-ttl-recent-seconds", "7200"]).unwrap_err();
        assert!(e.contains("CACHE_TTL_RECENT_SECONDS"), "{e}");
    }

    #[test]
    fn urls_are_redis_ones_and_their_password_never_shows() {
        let url = RedisUrl::parse("rediss://:hunter2@redis.internal:6380/2").unwrap();
        assert!(!format!("{url:?}").contains("hunter2"));
        assert!(url.redacted().contains("redis.internal:6380"));
        assert_eq!(url.port(), 6380);
        for bad in [
            "http://redis:6379",
            "redis://",
            "unix:///tmp/redis.sock",
            "redis://h:1/?x=1",
            "not a url",
        ] {
            assert!(RedisUrl::parse(bad).is_err(), "{bad}");
        }
        assert!(RedisUrl::parse("redis://127.0.0.1:6379").is_ok());
    }

    #[test]
    fn redis_settings_are_optional_checked_and_redacted() {
        let s = parse(&[]).unwrap();
        assert!(s.shared.redis_url.is_none());
        assert_eq!(s.shared.expected_replicas, 1);
        let s = parse(&[
            "--redis-url",
            "rediss://:hunter2@redis.internal:6380/1",
            "--expected-replicas",
            "3",
        ])
        .unwrap();
        assert!(s.shared.redis_url.is_some());
        assert_eq!(s.shared.expected_replicas, 3);
        assert!(!format!("{s:?}").contains("hunter2"));
        for (flag, bad, name) in [
            ("--redis-url", "http://:hunter2@redis:6379", "REDIS_URL"),
            ("--expected-replicas", "0", "EXPECTED_REPLICAS"),
            (
                "--redis-password-file",
                "/run/secrets/redis",
                "REDIS_PASSWORD_FILE",
            ),
        ] {
            let e = parse(&[flag, bad]).unwrap_err();
            assert!(e.contains(name), "{flag} {bad}: {e}");
            assert!(!e.contains("hunter2"));
        }
    }

    #[test]
    fn the_token_is_required_and_redacted() {
        let s = parse(&[]).unwrap();
        assert!(
            s.upstream
                .token_source()
                .unwrap_err()
                .contains("UPSTREAM_TOKEN_FILE")
        );
        let s = parse(&["--upstream-token", "hunter2-token"]).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(
            s.upstream.token_source().unwrap().get().expose(),
            "hunter2-token"
        );
        let s = parse(&["--upstream-token-file", "/nonexistent/token"]).unwrap();
        assert!(
            s.upstream
                .token_source()
                .unwrap_err()
                .contains("UPSTREAM_TOKEN_FILE")
        );
    }
}
