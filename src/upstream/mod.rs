//! The platform's REST client: builds the one request we make, sends it with
//! the server's token and timeouts, and maps every answer onto the error codes of docs/api.md.

mod budget;
pub mod fair;
mod front;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use reqwest::{StatusCode, Url};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::error::{ErrorCode, GatewayError};
use crate::page::{self, Page, PageRequest, PageSource};
use crate::secret::TokenSource;
use crate::telemetry::{Metrics, ReasonLabel, RequestStats, StatusLabel};
use fair::Refused;
pub use front::BudgetFront;

/// How the client treats the platform (docs/operations.md).
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub base: Url,
    pub connect_timeout: Duration,
    /// Total timeout of one attempt.
    pub timeout: Duration,
    /// The request budget: sustained rate and burst, shared by the process.
    pub rate_per_second: f64,
    pub burst: u32,
    /// How long a call may queue for the budget before it gives up.
    pub max_budget_wait: Duration,
    /// Platform requests one client may have queued for the budget.
    pub max_queued_per_client: usize,
    /// Upstream requests in flight at once.
    pub max_concurrency: usize,
    /// Retries after the first attempt, for connection errors, 429 and 5xx.
    pub max_retries: u32,
    /// First backoff; doubled each retry, with full jitter.
    pub retry_base: Duration,
    /// The longest pause a `Retry-After` may impose.
    pub retry_after_cap: Duration,
    /// The largest answer read from the platform.
    pub max_body_bytes: usize,
}

impl UpstreamConfig {
    /// From the platform client's settings.
    pub fn from_settings(s: &crate::config::UpstreamSettings) -> Self {
        Self {
            base: s.base_url.clone(),
            connect_timeout: s.connect_timeout,
            max_body_bytes: usize::try_from(s.max_body_bytes).unwrap_or(usize::MAX),
            timeout: s.timeout,
            rate_per_second: s.rate_per_second,
            burst: s.burst,
            max_budget_wait: s.max_budget_wait,
            max_queued_per_client: s.max_queued_per_client as usize,
            max_concurrency: s.max_concurrency as usize,
            max_retries: s.max_retries,
            retry_base: s.retry_base,
            retry_after_cap: s.retry_after_cap,
        }
    }
}

#[derive(Clone)]
pub struct UpstreamClient {
    http: reqwest::Client,
    config: Arc<UpstreamConfig>,
    token: TokenSource,
    /// The platform budget's one front (fair turns, Redis or local share).
    budget: Arc<BudgetFront>,
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("base", &self.config.base.as_str())
            .finish_non_exhaustive()
    }
}

impl UpstreamClient {
    pub fn new(
        config: UpstreamConfig,
        token: TokenSource,
        budget: BudgetFront,
        metrics: Arc<Metrics>,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            // The attempt's timeout is ours (`attempt`): one timer, bounded
            // by the caller's deadline too.
            .user_agent(concat!("visits-gateway/", env!("CARGO_PKG_VERSION")))
            // A redirect would carry the token to wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            http,
            budget: Arc::new(budget),
            slots: Arc::new(Semaphore::new(config.max_concurrency.max(1))),
            config: Arc::new(config),
            token,
            metrics,
        })
    }

    /// `{base}/api/activity/{id}/stats/user-visits?page=..&pageSize=..&startedAt=..&endedAt=..`
    fn url(&self, req: &PageRequest) -> Url {
        // Path and query set as strings: every part is digits or a platform
        // timestamp, and the base (no query, checked at start) is not parsed
        // again per request.
        let base = &self.config.base;
        let mut url = base.clone();
        url.set_path(&format!(
            "{}/api/activity/{}/stats/user-visits",
            base.path().trim_end_matches('/'),
            req.activity
        ));
        let time = |t| crate::time::format(t).replace(':', "%3A");
        url.set_query(Some(&format!(
            "page={}&pageSize={}&startedAt={}&endedAt={}",
            req.page,
            req.page_size,
            time(req.window.from),
            time(req.window.to)
        )));
        url
    }

    /// One page, within the request budget, retrying transient failures with
    /// jittered exponential backoff until `deadline`.
    async fn fetch_page(&self, req: &PageRequest, deadline: Instant) -> Result<Page, GatewayError> {
        let mut attempt = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let max_wait = self.config.max_budget_wait.min(remaining);
            let waited = match self.budget.acquire(max_wait).await {
                Ok(waited) => waited,
                Err(refused) => {
                    self.metrics
                        .upstream_budget_refusals
                        .get_or_create(&ReasonLabel {
                            reason: refused.reason(),
                        })
                        .inc();
                    return Err(GatewayError::new(
                        ErrorCode::UpstreamRateLimited,
                        match refused {
                            Refused::Budget => {
                                "the gateway's platform request budget is exhausted; try again shortly"
                            }
                            Refused::ClientQueueFull => {
                                "this client has too many platform requests queued (UPSTREAM_MAX_QUEUED_PER_CLIENT); wait for them before asking for more"
                            }
                        },
                    ));
                }
            };
            self.metrics
                .upstream_budget_wait
                .observe(waited.as_secs_f64());
            let result = self.traced_attempt(req, deadline, attempt).await;
            if let Err(e) = &result
                && e.code == ErrorCode::UpstreamRateLimited
            {
                // The platform throttles us: slow everyone down (every
                // replica, through Redis), whether this request retries or not.
                self.budget
                    .pause(e.retry_after.unwrap_or(self.config.retry_base))
                    .await;
            }
            let error = match result {
                Ok(page) => return Ok(page),
                Err(e) if e.code.is_transient() && attempt < self.config.max_retries => e,
                Err(e) => return Err(e),
            };
            let ceiling = self.config.retry_base.saturating_mul(1 << attempt.min(16));
            let backoff = ceiling.mul_f64(0.5 + fastrand::f64() / 2.0);
            if Instant::now() + backoff >= deadline {
                return Err(error);
            }
            self.metrics.upstream_retries.inc();
            tracing::debug!(
                attempt,
                code = error.code.as_str(),
                backoff_ms = backoff.as_millis() as u64,
                "retrying the platform"
            );
            tokio::time::sleep(backoff).await;
            attempt += 1;
        }
    }

    /// One platform request: with tracing on, inside a client span of its own
    /// whose context goes to the platform (docs/operations.md, "OpenTelemetry"); `resends` before it.
    async fn traced_attempt(
        &self,
        req: &PageRequest,
        deadline: Instant,
        resends: u32,
    ) -> Result<Page, GatewayError> {
        if !crate::otel::enabled() {
            return self.attempt(req, deadline).await;
        }
        let span = tracing::info_span!(
            "platform request",
            otel.kind = "client",
            otel.name = "GET /api/activity/{activityId}/stats/user-visits"
        );
        let window = |t| crate::time::format(t).into();
        crate::otel::attributes(
            &span,
            [
                ("http.request.method", "GET".into()),
                (
                    "server.address",
                    self.config.base.host_str().unwrap_or("").to_owned().into(),
                ),
                ("http.request.resend_count", i64::from(resends).into()),
                ("visits.activity_id", req.activity.to_string().into()),
                ("visits.page", (req.page as i64).into()),
                ("visits.page_size", (req.page_size as i64).into()),
                ("visits.window.from", window(req.window.from)),
                ("visits.window.to", window(req.window.to)),
            ],
        );
        let result = self.attempt(req, deadline).instrument(span.clone()).await;
        match &result {
            Ok(_) => crate::otel::attributes(&span, [("http.response.status_code", 200i64.into())]),
            Err(e) => {
                if let Some(status) = e.status {
                    crate::otel::attributes(
                        &span,
                        [("http.response.status_code", i64::from(status).into())],
                    );
                }
                crate::otel::attributes(&span, [("error.type", e.code.as_str().into())]);
                span.set_status(opentelemetry::trace::Status::error(e.code.as_str()));
            }
        }
        result
    }

    /// One request: a concurrency slot, a timeout bounded by the deadline,
    /// metrics and a log line.
    async fn attempt(&self, req: &PageRequest, deadline: Instant) -> Result<Page, GatewayError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| GatewayError::internal("upstream slots closed"))?;
        let started = Instant::now();
        let limit = deadline
            .saturating_duration_since(started)
            .min(self.config.timeout);
        let result = match tokio::time::timeout(limit, self.send(req)).await {
            Ok(r) => r,
            Err(_) => Err(GatewayError::upstream_timeout()),
        };
        let elapsed = started.elapsed();
        self.metrics
            .upstream_duration
            .observe(elapsed.as_secs_f64());
        let status: std::borrow::Cow<'static, str> = match &result {
            Ok(_) => "200".into(),
            Err(e) => match e.status {
                Some(s) => s.to_string().into(),
                None if e.code == ErrorCode::UpstreamTimeout => "timeout".into(),
                None => "error".into(),
            },
        };
        self.metrics
            .upstream_requests
            .get_or_create(&StatusLabel { status })
            .inc();
        RequestStats::with(|s| {
            s.upstream_requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        });
        let elapsed_ms = elapsed.as_millis() as u64;
        match &result {
            Ok(page) => tracing::debug!(
                activity = %req.activity, page = req.page, page_size = req.page_size,
                total = page.total, elapsed_ms, "upstream page fetched"
            ),
            Err(e) => tracing::warn!(
                activity = %req.activity, page = req.page, code = e.code.as_str(),
                error = %e.message, elapsed_ms, "upstream request failed"
            ),
        }
        result
    }

    async fn send(&self, req: &PageRequest) -> Result<Page, GatewayError> {
        let mut request = self.http.get(self.url(req));
        if crate::otel::enabled() {
            let mut headers = reqwest::header::HeaderMap::new();
            crate::otel::inject(&tracing::Span::current(), &mut headers);
            request = request.headers(headers);
        }
        let mut response = request
            .bearer_auth(self.token.get().expose())
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // Bounded: a huge answer is the platform's fault, not our memory's.
        let limit = self.config.max_body_bytes;
        let too_large = || {
            GatewayError::bad_response(format!(
                "the platform's answer is larger than UPSTREAM_MAX_BODY_BYTES ({limit} bytes)"
            ))
        };
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(classify_failure(status, &body, retry_after));
        }
        page::parse(&body, req.page, req.page_size)
    }
}

impl PageSource for UpstreamClient {
    fn fetch(
        &self,
        req: PageRequest,
        deadline: Instant,
    ) -> BoxFuture<'_, Result<Page, GatewayError>> {
        Box::pin(async move { self.fetch_page(&req, deadline).await })
    }

    /// This process's bucket: with Redis the replicas share a larger
    /// budget, of which this is a fair share, so the estimate is cautious.
    fn reach(&self, within: Duration) -> Option<page::Reach> {
        Some(self.budget.reach(within))
    }
}

fn transport_error(e: reqwest::Error) -> GatewayError {
    // The error's Display may hold the URL; it holds no token (that travels
    // in a header), but keep the client message generic anyway.
    if e.is_timeout() {
        GatewayError::upstream_timeout()
    } else if e.is_decode() || e.is_body() {
        GatewayError::bad_response("the platform's answer could not be read")
    } else {
        GatewayError::new(
            ErrorCode::UpstreamUnavailable,
            "the platform cannot be reached",
        )
    }
}

/// The platform's error envelope `{name,message,status}`; only `message` is
/// ever passed on, and only when the body has this shape.
#[derive(Debug, serde::Deserialize)]
struct ErrorEnvelope {
    pub message: Option<String>,
}

/// Maps a non-2xx answer onto our error codes (docs/api.md). Status codes are the only reliable
/// signal; the envelope's `message` is kept for `extensions.upstreamMessage`.
/// The wait asked for is a 429 message's `请于xxx后重试`, else `Retry-After`.
fn classify_failure(
    status: StatusCode,
    body: &[u8],
    retry_after_header: Option<Duration>,
) -> GatewayError {
    let upstream_message = serde_json::from_slice::<ErrorEnvelope>(body)
        .ok()
        .and_then(|e| e.message)
        .filter(|m| !m.is_empty() && m.chars().count() <= 200);
    let feature_off = upstream_message
        .as_deref()
        .is_some_and(|m| m.contains("未开启") || m.contains("开通"));
    let (code, message) = match status.as_u16() {
        401 => (
            ErrorCode::UpstreamUnauthorized,
            "the platform rejected the gateway's token; an operator must check UPSTREAM_TOKEN",
        ),
        s if s == 403 || (s == 400 && feature_off) => (
            ErrorCode::UpstreamFeatureDisabled,
            "the platform refuses this report for the gateway's account: the user detail feature must be enabled by the platform",
        ),
        // Any other 400 means the platform refused a request the gateway built.
        400 => (
            ErrorCode::Internal,
            "the platform refused the gateway's request",
        ),
        404 => (
            ErrorCode::ActivityNotFound,
            "the platform has no such activity",
        ),
        429 => (
            ErrorCode::UpstreamRateLimited,
            "the platform is throttling the gateway; try again shortly",
        ),
        500..=599 => (
            ErrorCode::UpstreamUnavailable,
            "the platform is failing; try again shortly",
        ),
        _ => (
            ErrorCode::UpstreamBadResponse,
            "the platform answered with an unexpected status",
        ),
    };
    let mut e = GatewayError::new(code, message).with_upstream_message(upstream_message);
    e.status = Some(status.as_u16());
    let hint = e.upstream_message.as_deref().and_then(retry_hint);
    e.retry_after = hint
        .filter(|_| status == StatusCode::TOO_MANY_REQUESTS)
        .or(retry_after_header);
    e
}

/// The platform's `请于xxx后重试` hint: "请于 30 秒后重试", "请于30s后重试".
fn retry_hint(message: &str) -> Option<Duration> {
    let rest = &message[message.find("请于")? + "请于".len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let n: u64 = digits.parse().ok()?;
    let unit = rest.trim_start()[digits.len()..].trim_start();
    let secs = if unit.starts_with("分") || unit.starts_with("min") {
        n * 60
    } else if unit.starts_with("ms") || unit.starts_with("毫秒") {
        n.div_ceil(1000)
    } else {
        n
    };
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::parse as parse_page;
    use crate::paging::{ActivityId, Window};

    #[test]
    fn statuses_map_onto_the_spec_codes() {
        let env = |m: &str, s: u16| {
            format!(r#"{{"name":"X","message":"{m}","status":{s}}}"#).into_bytes()
        };
        let cases = [
            (
                401,
                env("请提供正确有效的 access_token 值", 401),
                ErrorCode::UpstreamUnauthorized,
            ),
            (
                403,
                env("无权访问该接口", 403),
                ErrorCode::UpstreamFeatureDisabled,
            ),
            (
                400,
                env("您未开启用户详情功能, 请先开通后再进行操作", 400),
                ErrorCode::UpstreamFeatureDisabled,
            ),
            (400, env("Invalid Date", 400), ErrorCode::Internal),
            (404, env("NotFound", 404), ErrorCode::ActivityNotFound),
            (
                429,
                env("请求速度太频繁了, 请于30秒后重试", 429),
                ErrorCode::UpstreamRateLimited,
            ),
            (
                502,
                b"<html>bad gateway</html>".to_vec(),
                ErrorCode::UpstreamUnavailable,
            ),
            (302, Vec::new(), ErrorCode::UpstreamBadResponse),
        ];
        for (status, body, code) in cases {
            let e = classify_failure(StatusCode::from_u16(status).unwrap(), &body, None);
            assert_eq!(e.code, code, "status {status}");
        }
    }

    #[test]
    fn the_envelope_message_is_kept_but_a_raw_body_never_is() {
        let e = classify_failure(
            StatusCode::NOT_FOUND,
            br#"{"name":"NotFound","message":"NotFound","status":404}"#,
            None,
        );
        assert_eq!(e.upstream_message.as_deref(), Some("NotFound"));
        let e = classify_failure(
            StatusCode::BAD_GATEWAY,
            b"<html>stack trace with secrets</html>",
            None,
        );
        assert_eq!(e.upstream_message, None);
        assert!(!e.message.contains("html"));
    }

    #[test]
    fn the_retry_hint_is_read_from_a_429_message() {
        assert_eq!(
            retry_hint("请求速度太频繁了, 请于30秒后重试"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_hint("请求速度太频繁了, 请于 2 分钟后重试"),
            Some(Duration::from_secs(120))
        );
        assert_eq!(retry_hint("请求速度太频繁了, 请于xxx后重试"), None);
    }

    #[test]
    fn a_capped_page_size_is_read_from_the_pager() {
        let parse = |body: &str| parse_page(body.as_bytes(), 1, 100);
        let page = parse(r#"{"pager":{"page":1,"pageSize":50,"total":0},"items":[]}"#).unwrap();
        assert_eq!((page.total, page.page_size), (0, 50));
        assert!(parse("not json").is_err());
        assert!(parse(r#"{"pager":{"page":1,"pageSize":0,"total":1},"items":[]}"#).is_err());
        let two = parse(r#"{"pager":{"page":1,"pageSize":1,"total":2},"items":[{},{}]}"#);
        assert_eq!(two.unwrap_err().code, ErrorCode::UpstreamBadResponse);
        let number = parse(r#"{"pager":{"page":1,"pageSize":5,"total":1},"items":[1]}"#);
        assert_eq!(number.unwrap_err().code, ErrorCode::UpstreamBadResponse);
    }

    fn item(user: u32) -> String {
        format!(
            r#"{{"userId":{user},"visitAt":"2019-06-21T01:52:12.736Z","lastOnlineAt":"2019-06-21T02:00:00.000Z","nickname":"小明"}}"#
        )
    }

    fn body(page_size: u64, total: u64, items: &[String]) -> String {
        format!(
            r#"{{"pager":{{"page":1,"pageSize":{page_size},"total":{total}}},"items":[{}]}}"#,
            items.join(",")
        )
    }

    #[test]
    fn one_unreadable_visit_refuses_the_whole_page() {
        let bad =
            r#"{"userId":8,"visitAt":"not a time","lastOnlineAt":"2019-06-21T02:00:00.000Z"}"#;
        let ok = body(5, 2, &[item(7), item(7)]);
        let page = parse_page(ok.as_bytes(), 1, 100).unwrap();
        assert_eq!(&*page.visits[0].nickname, "小明");
        assert!(Arc::ptr_eq(
            &page.visits[0].nickname,
            &page.visits[1].nickname
        ));
        let broken = body(5, 2, &[item(7), bad.to_owned()]);
        let e = parse_page(broken.as_bytes(), 1, 100).unwrap_err();
        assert_eq!(e.code, ErrorCode::UpstreamBadResponse);
    }

    #[test]
    fn a_page_shorter_than_its_pager_promises_is_refused() {
        let items: Vec<String> = (0..3).map(item).collect();
        // Page 1 of 10 items at 5 a page must hold 5; page 2 of 8 must hold 3.
        assert!(parse_page(body(5, 10, &items).as_bytes(), 1, 5).is_err());
        assert!(parse_page(body(5, 8, &items).as_bytes(), 2, 5).is_ok());
        assert!(parse_page(body(5, 9, &items).as_bytes(), 2, 5).is_err());
        // The last page may hold an item the pager's count missed (live data).
        assert!(parse_page(body(5, 7, &items).as_bytes(), 2, 5).is_ok());
        // Past the end: nothing promised.
        assert!(parse_page(body(5, 3, &[]).as_bytes(), 4, 5).is_ok());
    }

    #[test]
    fn the_url_is_built_from_a_validated_id_and_platform_timestamps() {
        let client = UpstreamClient::new(
            UpstreamConfig {
                base: Url::parse("https://example.test/base/").unwrap(),
                ..UpstreamConfig::from_settings(&crate::config::UpstreamSettings::default())
            },
            TokenSource::fixed(crate::secret::Secret::new("t")),
            BudgetFront::new(
                &UpstreamConfig::from_settings(&crate::config::UpstreamSettings::default()),
                None,
                1,
                Metrics::new(),
            ),
            Metrics::new(),
        )
        .unwrap();
        let t = |s| crate::time::parse_rfc3339(s).unwrap();
        let req = PageRequest {
            activity: ActivityId::parse("10024069").unwrap(),
            window: Window {
                from: t("2019-06-21T01:52:12.736Z"),
                to: t("2019-06-28T01:52:12.736Z"),
            },
            page: 2,
            page_size: 100,
        };
        assert_eq!(
            client.url(&req).as_str(),
            "https://example.test/base/api/activity/10024069/stats/user-visits?page=2&pageSize=100&startedAt=2019-06-21T01%3A52%3A12.736Z&endedAt=2019-06-28T01%3A52%3A12.736Z"
        );
    }
}
