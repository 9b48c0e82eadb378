//! Settings: every one a flag with an environment fallback (SPEC §5a),
//! checked at start so a bad value stops the process with its name.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
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

#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address the gateway listens on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen_addr: SocketAddr,

    /// Serve `/metrics` on this address instead of the main one.
    #[arg(long, env = "METRICS_LISTEN_ADDR")]
    pub metrics_listen_addr: Option<SocketAddr>,

    /// After SIGTERM, seconds to keep serving while readiness is false, so
    /// load balancers stop sending new requests first.
    #[arg(long, env = "SHUTDOWN_DRAIN_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=300))]
    pub shutdown_drain_seconds: u64,

    /// Then, seconds in-flight requests get to finish before the process exits.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECONDS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub shutdown_timeout_seconds: u64,

    /// The platform's base URL.
    #[arg(long, env = "UPSTREAM_BASE_URL", default_value = "https://shangzhibo.tv", value_parser = base_url)]
    pub upstream_base_url: Url,

    /// The platform token (prefer UPSTREAM_TOKEN_FILE: a flag shows in `ps`).
    #[arg(long, env = "UPSTREAM_TOKEN", hide_env_values = true, value_parser = secret)]
    pub upstream_token: Option<Secret>,

    /// A file holding the platform token; re-read when it changes.
    #[arg(long, env = "UPSTREAM_TOKEN_FILE", conflicts_with = "upstream_token")]
    pub upstream_token_file: Option<PathBuf>,

    /// `first`/`last` when the client gives neither.
    #[arg(long, env = "DEFAULT_PAGE_SIZE", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub default_page_size: u32,

    /// The largest `first`/`last` a client may ask for.
    #[arg(long, env = "MAX_PAGE_SIZE", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_page_size: u32,

    /// The page size the gateway asks the platform for.
    #[arg(long, env = "UPSTREAM_PAGE_SIZE", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub upstream_page_size: u64,

    /// The longest range a client may ask for, in days.
    #[arg(long, env = "MAX_RANGE_DAYS", default_value_t = 92, value_parser = clap::value_parser!(u32).range(1..=3660))]
    pub max_range_days: u32,

    /// Open ranges end at now truncated to this many seconds.
    #[arg(long, env = "PIN_GRANULARITY_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub pin_granularity_seconds: u32,

    /// Page cache capacity in bytes; 0 turns the page cache off (every
    /// request goes to the platform: for benchmarks and debugging only).
    #[arg(long, env = "CACHE_MAX_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub cache_max_bytes: u64,

    /// Response cache capacity in bytes; 0 turns the response cache off.
    #[arg(long, env = "RESPONSE_CACHE_MAX_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub response_cache_max_bytes: u64,

    /// The longest a whole response is reused, in seconds.
    #[arg(long, env = "RESPONSE_CACHE_MAX_TTL_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub response_cache_max_ttl_seconds: u64,

    /// TTL of pages of windows that end within the last hour.
    #[arg(long, env = "CACHE_TTL_RECENT_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub cache_ttl_recent_seconds: u64,

    /// TTL of pages of settled windows.
    #[arg(long, env = "CACHE_TTL_SETTLED_SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=604800))]
    pub cache_ttl_settled_seconds: u64,

    /// Upstream connect timeout, in milliseconds.
    #[arg(long, env = "UPSTREAM_CONNECT_TIMEOUT_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=60000))]
    pub upstream_connect_timeout_ms: u64,

    /// Upstream total timeout per request, in milliseconds.
    #[arg(long, env = "UPSTREAM_TIMEOUT_MS", default_value_t = 10000, value_parser = clap::value_parser!(u64).range(1..=120000))]
    pub upstream_timeout_ms: u64,

    /// The platform request budget: sustained requests per second (may be
    /// fractional, e.g. 0.2 for 12 a minute), shared by the whole process.
    #[arg(long, env = "UPSTREAM_RATE_PER_SECOND", default_value_t = 2.0, value_parser = positive_rate)]
    pub upstream_rate_per_second: f64,

    /// Requests the budget lets through at once after a quiet spell.
    #[arg(long, env = "UPSTREAM_BURST", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub upstream_burst: u32,

    /// How long an upstream call may queue for the budget, in milliseconds.
    #[arg(long, env = "UPSTREAM_MAX_BUDGET_WAIT_MS", default_value_t = 3000, value_parser = clap::value_parser!(u64).range(0..=600000))]
    pub upstream_max_budget_wait_ms: u64,

    /// Upstream requests in flight at once, for the whole process.
    #[arg(long, env = "UPSTREAM_MAX_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub upstream_max_concurrency: u32,

    /// Retries of a failed upstream request (connection errors, 429, 5xx).
    #[arg(long, env = "UPSTREAM_MAX_RETRIES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub upstream_max_retries: u32,

    /// First retry backoff in milliseconds; doubled each retry, jittered.
    #[arg(long, env = "UPSTREAM_RETRY_BASE_MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=60000))]
    pub upstream_retry_base_ms: u64,

    /// The longest pause a platform's Retry-After may impose, in seconds.
    #[arg(long, env = "UPSTREAM_RETRY_AFTER_CAP_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub upstream_retry_after_cap_seconds: u64,

    /// Time one GraphQL request may spend on the platform, retries and
    /// budget waits included, in milliseconds.
    #[arg(long, env = "UPSTREAM_DEADLINE_MS", default_value_t = 8000, value_parser = clap::value_parser!(u64).range(10..=300000))]
    pub upstream_deadline_ms: u64,

    /// How long a page is kept past its TTL, to serve when the platform fails.
    #[arg(long, env = "STALE_GRACE_SECONDS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(0..=604800))]
    pub stale_grace_seconds: u64,

    /// Upstream requests one client request may have in flight.
    #[arg(long, env = "WINDOW_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub window_concurrency: u32,

    /// Platform requests (pages not cached) one request's statistics may need.
    #[arg(long, env = "STATS_MAX_PLATFORM_REQUESTS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100000))]
    pub stats_max_platform_requests: u64,

    /// Capacity in bytes of the settled windows' statistics; 0 turns it off.
    #[arg(long, env = "STATS_CACHE_MAX_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub stats_cache_max_bytes: u64,

    /// File of API keys: `<name> <sha256-hex> <activity ids or *>` per line.
    #[arg(long, env = "API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// File holding the HS256 secret of client JWTs (at least 32 bytes).
    #[arg(
        long,
        env = "JWT_HS256_SECRET_FILE",
        conflicts_with = "jwt_public_key_file"
    )]
    pub jwt_hs256_secret_file: Option<PathBuf>,

    /// PEM public key (RSA for RS256, P-256 for ES256) of client JWTs.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Required `iss` of client JWTs.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` of client JWTs.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// How often mounted secret files (token, API keys) are re-read, in seconds.
    #[arg(long, env = "SECRETS_RELOAD_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub secrets_reload_seconds: u64,

    /// Let clients without credentials in, with access to every activity.
    #[arg(long, env = "ALLOW_UNAUTHENTICATED", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_unauthenticated: bool,

    /// Requests per second one client (key, JWT subject, else IP) may make.
    #[arg(long, env = "CLIENT_RATE_PER_SECOND", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100000))]
    pub client_rate_per_second: u32,

    /// Burst above the client rate.
    #[arg(long, env = "CLIENT_BURST", default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=100000))]
    pub client_burst: u32,

    /// Deepest GraphQL selection accepted (GraphiQL's schema query needs 15).
    #[arg(long, env = "MAX_QUERY_DEPTH", default_value_t = 16, value_parser = clap::value_parser!(u32).range(2..=100))]
    pub max_query_depth: u32,

    /// Largest GraphQL complexity (fields selected) accepted (GraphiQL's
    /// schema query needs about 250; one full userVisits selection is 36).
    #[arg(long, env = "MAX_QUERY_COMPLEXITY", default_value_t = 260, value_parser = clap::value_parser!(u32).range(10..=100000))]
    pub max_query_complexity: u32,

    /// Largest request body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 32 * 1024, value_parser = clap::value_parser!(u32).range(256..=16_777_216))]
    pub max_body_bytes: u32,

    /// Deadline of one whole GraphQL request, in milliseconds.
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 15000, value_parser = clap::value_parser!(u64).range(100..=300000))]
    pub request_timeout_ms: u64,

    /// Browser origins allowed by CORS, comma separated (none by default).
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", value_delimiter = ',', value_parser = origin)]
    pub cors_allowed_origins: Vec<String>,

    /// Serve the GraphiQL playground on `GET /graphql`.
    #[arg(long, env = "PLAYGROUND_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub playground_enabled: bool,

    /// The activity the playground's example query asks for.
    #[arg(long, env = "PLAYGROUND_ACTIVITY_ID", default_value_t = 10024069)]
    pub playground_activity_id: u64,

    /// Answer GraphQL introspection queries (tools and the playground need it).
    #[arg(long, env = "INTROSPECTION_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub introspection_enabled: bool,

    /// Log format: json (default) or text.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

impl Settings {
    /// Checks that need more than one setting. The message names them.
    pub fn validate(&self) -> Result<(), String> {
        if self.default_page_size > self.max_page_size {
            return Err(format!(
                "DEFAULT_PAGE_SIZE ({}) must not exceed MAX_PAGE_SIZE ({})",
                self.default_page_size, self.max_page_size
            ));
        }
        if self.cache_ttl_recent_seconds > self.cache_ttl_settled_seconds {
            return Err(
                "CACHE_TTL_RECENT_SECONDS must not exceed CACHE_TTL_SETTLED_SECONDS".into(),
            );
        }
        let jwt_key = self.jwt_hs256_secret_file.is_some() || self.jwt_public_key_file.is_some();
        if (self.jwt_issuer.is_some() || self.jwt_audience.is_some()) && !jwt_key {
            return Err(
                "JWT_ISSUER / JWT_AUDIENCE need JWT_HS256_SECRET_FILE or JWT_PUBLIC_KEY_FILE"
                    .into(),
            );
        }
        if self.upstream_deadline_ms >= self.request_timeout_ms {
            return Err("UPSTREAM_DEADLINE_MS must be below REQUEST_TIMEOUT_MS".into());
        }
        if self.upstream_connect_timeout_ms > self.upstream_timeout_ms {
            return Err("UPSTREAM_CONNECT_TIMEOUT_MS must not exceed UPSTREAM_TIMEOUT_MS".into());
        }
        Ok(())
    }

    /// The platform token from UPSTREAM_TOKEN or UPSTREAM_TOKEN_FILE.
    pub fn token_source(&self) -> Result<TokenSource, String> {
        match (&self.upstream_token, &self.upstream_token_file) {
            (Some(t), _) => Ok(TokenSource::fixed(t.clone())),
            (None, Some(path)) => TokenSource::from_file(path.clone())
                .map_err(|e| format!("UPSTREAM_TOKEN_FILE: {e}")),
            (None, None) => Err(
                "set UPSTREAM_TOKEN_FILE (or UPSTREAM_TOKEN) to the platform's access token".into(),
            ),
        }
    }

    /// Whether any client authentication is configured.
    pub fn client_auth_configured(&self) -> bool {
        self.api_keys_file.is_some()
            || self.jwt_hs256_secret_file.is_some()
            || self.jwt_public_key_file.is_some()
    }

    pub fn upstream_config(&self) -> crate::upstream::UpstreamConfig {
        crate::upstream::UpstreamConfig {
            base: self.upstream_base_url.clone(),
            connect_timeout: Duration::from_millis(self.upstream_connect_timeout_ms),
            max_body_bytes: 4 * 1024 * 1024,
            timeout: Duration::from_millis(self.upstream_timeout_ms),
            rate_per_second: self.upstream_rate_per_second,
            burst: self.upstream_burst,
            max_budget_wait: Duration::from_millis(self.upstream_max_budget_wait_ms),
            max_concurrency: self.upstream_max_concurrency as usize,
            max_retries: self.upstream_max_retries,
            retry_base: Duration::from_millis(self.upstream_retry_base_ms),
            retry_after_cap: Duration::from_secs(self.upstream_retry_after_cap_seconds),
        }
    }

    /// Defaults, for tests and the demo.
    pub fn defaults() -> Self {
        Cli::try_parse_from(["visits-gateway", "demo"])
            .ok()
            .and_then(|cli| match cli.command {
                Command::Demo(s) => Some(s),
                _ => None,
            })
            .expect("defaults parse")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, String> {
        let cli = Cli::try_parse_from([&["visits-gateway", "serve"], args].concat())
            .map_err(|e| e.to_string())?;
        let Command::Serve(s) = cli.command else {
            unreachable!()
        };
        s.validate()?;
        Ok(s)
    }

    #[test]
    fn defaults_follow_the_spec() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.listen_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(s.upstream_base_url.as_str(), "https://shangzhibo.tv/");
        assert_eq!(
            (s.default_page_size, s.max_page_size, s.upstream_page_size),
            (20, 100, 100)
        );
        assert_eq!((s.max_range_days, s.pin_granularity_seconds), (92, 60));
        assert_eq!(s.log_format, LogFormat::Json);
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
            ok.cors_allowed_origins,
            ["https://a.example.com", "http://localhost:3000"]
        );
        let e = parse(&["--default-page-size", "200", "--max-page-size", "100"]).unwrap_err();
        assert!(e.contains("DEFAULT_PAGE_SIZE"), "{e}");
    }

    #[test]
    fn the_token_is_required_and_redacted() {
        let s = parse(&[]).unwrap();
        assert!(
            s.token_source()
                .unwrap_err()
                .contains("UPSTREAM_TOKEN_FILE")
        );
        let s = parse(&["--upstream-token", "hunter2-token"]).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.token_source().unwrap().get().expose(), "hunter2-token");
        let s = parse(&["--upstream-token-file", "/nonexistent/token"]).unwrap();
        assert!(
            s.token_source()
                .unwrap_err()
                .contains("UPSTREAM_TOKEN_FILE")
        );
    }
}
