//! The page cache: one moka entry per upstream request, bounded by bytes,
//! with request coalescing (concurrent identical misses wait for one upstream
//! call) and a TTL chosen by the window's age. Errors are never cached.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use moka::Expiry;
use moka::future::Cache;

use crate::error::GatewayError;
use crate::upstream::{PageRequest, UpstreamClient, UpstreamPage};

#[derive(Debug, Clone, Copy)]
pub struct TtlPolicy {
    /// For windows that end within the last hour: their data still moves.
    pub recent: Duration,
    /// For settled windows.
    pub settled: Duration,
}

impl TtlPolicy {
    pub fn ttl_for(&self, window_end: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
        if window_end > now - chrono::Duration::hours(1) {
            self.recent
        } else {
            self.settled
        }
    }
}

#[derive(Debug)]
pub struct CachedPage {
    pub page: UpstreamPage,
    pub ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<PageRequest, Arc<CachedPage>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &PageRequest,
        value: &Arc<CachedPage>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

#[derive(Clone)]
pub struct PageCache {
    cache: Cache<PageRequest, Arc<CachedPage>>,
    upstream: UpstreamClient,
    ttl: TtlPolicy,
}

impl PageCache {
    pub fn new(upstream: UpstreamClient, max_bytes: u64, ttl: TtlPolicy) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &PageRequest, v: &Arc<CachedPage>| {
                u32::try_from(v.page.weight()).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .build();
        Self {
            cache,
            upstream,
            ttl,
        }
    }

    /// The page for `req`, from the cache or from one upstream call shared by
    /// every concurrent caller asking for the same page.
    pub async fn page(&self, req: PageRequest) -> Result<Arc<CachedPage>, GatewayError> {
        self.cache
            .try_get_with(req, async {
                let page = self.upstream.fetch_page(&req).await?;
                let ttl = self.ttl.ttl_for(req.window.to, Utc::now());
                Ok::<_, GatewayError>(Arc::new(CachedPage { page, ttl }))
            })
            .await
            .map_err(|e: Arc<GatewayError>| (*e).clone())
    }

    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::{ActivityId, ResolvedRange};
    use crate::secret::{Secret, TokenSource};
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn request(page: u64) -> PageRequest {
        let t = |s| crate::time::parse_rfc3339(s).unwrap();
        PageRequest {
            activity: ActivityId::parse("7").unwrap(),
            window: ResolvedRange {
                from: t("2020-01-01T00:00:00Z"),
                to: t("2020-01-08T00:00:00Z"),
            },
            page,
            page_size: 100,
        }
    }

    async fn cache_against(server: &MockServer) -> PageCache {
        let upstream = UpstreamClient::new(
            server.uri().parse().unwrap(),
            TokenSource::fixed(Secret::new("server-token")),
            Duration::from_secs(1),
            Duration::from_secs(5),
        )
        .unwrap();
        PageCache::new(
            upstream,
            1 << 20,
            TtlPolicy {
                recent: Duration::from_secs(5),
                settled: Duration::from_secs(60),
            },
        )
    }

    #[tokio::test]
    async fn it_should_only_call_the_platform_once_per_key() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/api/activity/7/stats/user-visits"))
            .and(header("authorization", "Bearer server-token"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_string(r#"{"pager":{"page":1,"pageSize":100,"total":0},"items":[]}"#)
                    .set_delay(Duration::from_millis(100)),
            )
            .expect(1)
            .mount(&server)
            .await;
        let cache = cache_against(&server).await;
        let calls = (0..100).map(|_| cache.page(request(1)));
        let results = futures::future::join_all(calls).await;
        assert!(results.iter().all(Result::is_ok));
        server.verify().await;
    }

    #[tokio::test]
    async fn errors_are_not_cached() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(503))
            .expect(2)
            .mount(&server)
            .await;
        let cache = cache_against(&server).await;
        assert!(cache.page(request(1)).await.is_err());
        assert!(cache.page(request(1)).await.is_err());
        server.verify().await;
    }

    #[test]
    fn recent_windows_get_the_short_ttl() {
        let p = TtlPolicy {
            recent: Duration::from_secs(5),
            settled: Duration::from_secs(60),
        };
        let now = Utc::now();
        assert_eq!(
            p.ttl_for(now - chrono::Duration::minutes(59), now),
            p.recent
        );
        assert_eq!(
            p.ttl_for(now - chrono::Duration::minutes(61), now),
            p.settled
        );
    }
}
