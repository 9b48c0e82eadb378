//! The page cache: one moka entry per upstream request, bounded by bytes.
//! - Concurrent identical misses wait for one upstream call (coalescing).
//! - Freshness depends on the window's age: short for windows that touch the
//!   last hour, long for settled ones.
//! - A page past its TTL is kept for a grace period: a settled one is served
//!   at once and refreshed in the background (stale-while-revalidate); a
//!   recent one is refreshed first, and served stale only if the platform
//!   fails (stale-if-error), which the response then says.
//! - Transient errors are never cached; definitive refusals of an activity
//!   (404, the feature switched off) are remembered for a short while.
//! - Each lookup returns the page with its [`Freshness`], a value the caller
//!   folds into the response's own.
//!
//! Freshness is computed on tokio's clock (so tests can pause it); moka's own
//! expiry only drops pages once their grace period is over too.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use moka::Expiry;
use moka::future::Cache;
use tokio::time::Instant;

use crate::error::{ErrorCode, GatewayError};
use crate::page::{Page, PageRequest, PageSource};
use crate::paging::ActivityId;
use crate::telemetry::Metrics;

#[derive(Debug, Clone, Copy)]
pub struct TtlPolicy {
    /// For windows that end within the last hour: their data still moves.
    pub recent: Duration,
    /// For settled windows.
    pub settled: Duration,
    /// How long a page is kept after its TTL, to serve if the platform fails.
    pub grace: Duration,
    /// The deadline of background refreshes.
    pub refresh_deadline: Duration,
    /// How long a definitive refusal of an activity is remembered; zero for never.
    pub negative: Duration,
}

impl TtlPolicy {
    pub fn is_recent(window_end: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        window_end > now - chrono::Duration::hours(1)
    }

    pub fn ttl_for(&self, window_end: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
        if Self::is_recent(window_end, now) {
            self.recent
        } else {
            self.settled
        }
    }
}

#[derive(Debug)]
pub struct CachedPage {
    pub page: Page,
    pub fetched_at: Instant,
    pub ttl: Duration,
}

impl CachedPage {
    pub fn is_fresh(&self) -> bool {
        self.fetched_at.elapsed() < self.ttl
    }

    fn freshness(&self) -> Freshness {
        Freshness {
            fresh_for: self.ttl.saturating_sub(self.fetched_at.elapsed()),
            stale_age: None,
        }
    }

    fn stale(&self) -> Freshness {
        Freshness {
            fresh_for: Duration::ZERO,
            stale_age: Some(self.fetched_at.elapsed()),
        }
    }
}

/// How long what was served stays fresh, and how old the oldest stale page
/// in it is: what decides whether a response may be cached, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    pub fresh_for: Duration,
    /// Set when a page past its TTL was served.
    pub stale_age: Option<Duration>,
}

impl Freshness {
    /// Nothing served yet: fresh for ever.
    pub const FOREVER: Self = Self {
        fresh_for: Duration::MAX,
        stale_age: None,
    };

    /// Fresh no longer, yet not stale: a page fetched without the cache, or
    /// a settled page being refreshed. Keeps a response out of the response
    /// cache without `extensions.stale`.
    pub const NONE: Self = Self {
        fresh_for: Duration::ZERO,
        stale_age: None,
    };

    /// The freshness of a response built from both.
    pub fn and(self, other: Self) -> Self {
        Self {
            fresh_for: self.fresh_for.min(other.fresh_for),
            stale_age: self.stale_age.max(other.stale_age),
        }
    }
}

/// A page as served to one caller.
#[derive(Debug, Clone)]
pub struct Served {
    pub page: Arc<CachedPage>,
    pub freshness: Freshness,
}

struct KeepThroughGrace(Duration);

impl Expiry<PageRequest, Arc<CachedPage>> for KeepThroughGrace {
    fn expire_after_create(
        &self,
        _: &PageRequest,
        v: &Arc<CachedPage>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(v.ttl + self.0)
    }

    fn expire_after_update(
        &self,
        _: &PageRequest,
        v: &Arc<CachedPage>,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.ttl + self.0)
    }
}

#[derive(Clone)]
pub struct PageCache {
    /// False when `CACHE_MAX_BYTES=0`: no caching, no coalescing.
    enabled: bool,
    pages: Cache<PageRequest, Arc<CachedPage>>,
    /// Coalesces refreshes of pages that are still in `pages`.
    refreshes: Cache<PageRequest, Arc<CachedPage>>,
    /// Definitive refusals (404, feature off) by activity, for `ttl.negative`.
    /// Each with when it was learnt, checked on tokio's clock (moka's own
    /// expiry is coarse and runs on another clock).
    refusals: Option<Cache<ActivityId, (GatewayError, Instant)>>,
    /// Where pages come from on a miss: the next level (Redis, when
    /// replicas share pages), down to the platform.
    source: Arc<dyn PageSource>,
    ttl: TtlPolicy,
    metrics: Arc<Metrics>,
}

impl PageCache {
    pub fn new(
        source: Arc<dyn PageSource>,
        max_bytes: u64,
        ttl: TtlPolicy,
        metrics: Arc<Metrics>,
    ) -> Self {
        let pages = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &PageRequest, v: &Arc<CachedPage>| {
                u32::try_from(v.page.weight).unwrap_or(u32::MAX)
            })
            .expire_after(KeepThroughGrace(ttl.grace))
            .build();
        let refreshes = Cache::builder()
            .max_capacity(10_000)
            .time_to_live(Duration::from_secs(30))
            .build();
        let refusals = (!ttl.negative.is_zero()).then(|| {
            Cache::builder()
                .max_capacity(10_000)
                .time_to_live(ttl.negative)
                .build()
        });
        Self {
            enabled: max_bytes > 0,
            pages,
            refreshes,
            refusals,
            source,
            ttl,
            metrics,
        }
    }

    /// The page for `req`: fresh from the cache, or from one upstream call
    /// shared by every concurrent caller, or stale as described above.
    /// `now` is the caller's clock (a request's pinned one), which decides
    /// whether the window is recent: one request sees one clock.
    pub async fn page(
        &self,
        req: PageRequest,
        deadline: Instant,
        now: DateTime<Utc>,
    ) -> Result<Served, GatewayError> {
        if let Some(refusal) = self.remembered_refusal(req.activity).await {
            return Err(refusal);
        }
        if !self.enabled {
            self.metrics.cache_lookup("miss");
            let page = self.fetch(req, deadline, now).await?;
            return Ok(Served {
                page,
                freshness: Freshness::NONE,
            });
        }
        if let Some(cached) = self.pages.get(&req).await {
            if cached.is_fresh() {
                self.metrics.cache_lookup("hit");
                return Ok(Served {
                    freshness: cached.freshness(),
                    page: cached,
                });
            }
            if !TtlPolicy::is_recent(req.window.to, now) {
                self.metrics.cache_lookup("stale-while-revalidate");
                self.refresh_in_background(req, now);
                // Served at once and not reported stale: a settled window's
                // page is a moment from being refreshed and unlikely to differ;
                // zero freshness keeps the response out of the response cache.
                return Ok(Served {
                    freshness: Freshness::NONE,
                    page: cached,
                });
            }
            return match self.refresh(req, deadline, now).await {
                Ok(fresh) => {
                    self.metrics.cache_lookup("miss");
                    Ok(Served {
                        freshness: fresh.freshness(),
                        page: fresh,
                    })
                }
                Err(e) if serves_stale(&e) => {
                    self.metrics.cache_lookup("stale-if-error");
                    self.metrics.cache_stale_served.inc();
                    let freshness = cached.stale();
                    tracing::warn!(
                        code = e.code.as_str(),
                        age_ms = cached.fetched_at.elapsed().as_millis() as u64,
                        "platform failed; serving a stale page"
                    );
                    Ok(Served {
                        freshness,
                        page: cached,
                    })
                }
                Err(e) => Err(e),
            };
        }
        // The caller whose future filled the entry sees it as fresh; those
        // who waited on it were coalesced.
        let entry = self
            .pages
            .entry(req)
            .or_try_insert_with(self.fetch(req, deadline, now))
            .await
            .map_err(|e: Arc<GatewayError>| (*e).clone())?;
        self.metrics.cache_lookup(if entry.is_fresh() {
            "miss"
        } else {
            "coalesced"
        });
        let page = entry.into_value();
        Ok(Served {
            freshness: page.freshness(),
            page,
        })
    }

    /// Whether `req` would be served without a platform request on the
    /// caller's path: a fresh page, or a settled window's page (served while
    /// it is refreshed in the background). A recent window's page past its
    /// TTL is not: it is refreshed first. Recent as of `now`, the caller's
    /// clock, as in [`Self::page`].
    pub async fn contains(&self, req: &PageRequest, now: DateTime<Utc>) -> bool {
        self.peek(req, now).await.is_some()
    }

    /// The page `contains` finds, without asking anyone for it.
    pub async fn peek(&self, req: &PageRequest, now: DateTime<Utc>) -> Option<Served> {
        if !self.enabled {
            return None;
        }
        let page = self.pages.get(req).await?;
        if page.is_fresh() {
            Some(Served {
                freshness: page.freshness(),
                page,
            })
        } else if !TtlPolicy::is_recent(req.window.to, now) {
            Some(Served {
                freshness: Freshness::NONE,
                page,
            })
        } else {
            None
        }
    }

    /// What the platform budget can give within `within`: `None` when it
    /// is unbounded or when there is no cache (pages read ahead would not
    /// be kept, so there is nothing to plan).
    pub fn reach(&self, within: Duration) -> Option<crate::page::Reach> {
        self.enabled.then(|| self.source.reach(within)).flatten()
    }

    async fn remembered_refusal(&self, activity: ActivityId) -> Option<GatewayError> {
        let (refusal, learnt) = self.refusals.as_ref()?.get(&activity).await?;
        if learnt.elapsed() >= self.ttl.negative {
            return None;
        }
        self.metrics.cache_lookup("refusal");
        Some(refusal)
    }

    /// A page from the next level; a definitive refusal is remembered.
    async fn fetch(
        &self,
        req: PageRequest,
        deadline: Instant,
        now: DateTime<Utc>,
    ) -> Result<Arc<CachedPage>, GatewayError> {
        let fetched = self.source.fetch_aged(req, deadline).await;
        let ttl = self.ttl.ttl_for(req.window.to, now);
        let (page, age) = match fetched {
            Ok(fetched) => fetched,
            Err(e) => {
                if let Some(refusals) = &self.refusals
                    && e.code.is_definitive_refusal()
                {
                    refusals
                        .insert(req.activity, (e.clone(), Instant::now()))
                        .await;
                }
                return Err(e);
            }
        };
        Ok(Arc::new(CachedPage {
            page,
            // A page another replica fetched is as old as it says.
            fetched_at: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            ttl,
        }))
    }

    /// Fetches a page that is in the cache but stale; concurrent refreshes of
    /// one page make one upstream call.
    async fn refresh(
        &self,
        req: PageRequest,
        deadline: Instant,
        now: DateTime<Utc>,
    ) -> Result<Arc<CachedPage>, GatewayError> {
        // One refresh for all its callers (and none if another has just
        // landed). A page that fails its checks is an error, so the stale
        // page stays.
        let refresh_once = async {
            if let Some(page) = self.pages.get(&req).await.filter(|p| p.is_fresh()) {
                return Ok(page);
            }
            let fresh = self.fetch(req, deadline, now).await?;
            self.pages.insert(req, fresh.clone()).await;
            Ok(fresh)
        };
        let result = self
            .refreshes
            .try_get_with(req, refresh_once)
            .await
            .map_err(|e: Arc<GatewayError>| (*e).clone());
        self.refreshes.invalidate(&req).await;
        result
    }

    fn refresh_in_background(&self, req: PageRequest, now: DateTime<Utc>) {
        let this = self.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + this.ttl.refresh_deadline;
            if let Err(e) = this.refresh(req, deadline, now).await {
                tracing::warn!(
                    code = e.code.as_str(),
                    "background refresh failed; the stale page stays"
                );
            }
        });
    }

    /// Publishes entry count and size to the metrics.
    pub async fn report(&self) {
        // moka counts lazily; settle pending work so the figures are current.
        self.pages.run_pending_tasks().await;
        self.metrics
            .cache_entries
            .set(self.pages.entry_count() as i64);
        self.metrics
            .cache_bytes
            .set(self.pages.weighted_size() as i64);
    }
}

/// The platform is down or unreadable: better an old page than none. A clear
/// answer (404, 401, feature off) is passed on instead.
fn serves_stale(e: &GatewayError) -> bool {
    e.code.is_transient() || e.code == ErrorCode::UpstreamBadResponse
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::{ActivityId, Window};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A scripted platform: answers from a queue, counts calls.
    #[derive(Default)]
    struct Script {
        calls: AtomicUsize,
        failures: Mutex<Vec<ErrorCode>>,
        /// How many of the next answers are shorter than their pager says.
        broken: AtomicUsize,
        delay: Duration,
    }

    impl Script {
        fn fail(&self, code: ErrorCode) {
            self.failures.lock().unwrap().push(code);
        }
    }

    impl PageSource for Script {
        fn fetch(
            &self,
            req: PageRequest,
            _: Instant,
        ) -> futures::future::BoxFuture<'_, Result<Page, GatewayError>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(self.delay).await;
                if let Some(code) = self.failures.lock().unwrap().pop() {
                    return Err(GatewayError::new(code, "scripted"));
                }
                let broken = self
                    .broken
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
                    .is_ok();
                // `total` tells the answers apart; page 5 of them is empty.
                let total = if broken {
                    4 * req.page_size + 1
                } else {
                    n as u64
                };
                let body = format!(
                    r#"{{"pager":{{"pageSize":{},"total":{total}}},"items":[]}}"#,
                    req.page_size
                );
                crate::page::parse(body.as_bytes(), 5, req.page_size)
            })
        }
    }

    fn request(window_end: DateTime<Utc>) -> PageRequest {
        PageRequest {
            activity: ActivityId::parse("7").unwrap(),
            window: Window {
                from: window_end - chrono::Duration::days(7),
                to: window_end,
            },
            page: 5,
            page_size: 100,
        }
    }

    const POLICY: TtlPolicy = TtlPolicy {
        recent: Duration::from_secs(10),
        settled: Duration::from_secs(100),
        grace: Duration::from_secs(3600),
        refresh_deadline: Duration::from_secs(5),
        negative: Duration::from_secs(30),
    };

    fn cache(script: Arc<Script>) -> PageCache {
        PageCache::new(script, 1 << 20, POLICY, Metrics::new())
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[tokio::test(start_paused = true)]
    async fn it_should_only_call_the_platform_once_per_key() {
        let script = Arc::new(Script {
            delay: Duration::from_millis(100),
            ..Default::default()
        });
        let cache = cache(script.clone());
        let req = request(Utc::now());
        let calls = (0..100).map(|_| cache.page(req, far(), Utc::now()));
        let results = futures::future::join_all(calls).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(script.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_are_not_cached() {
        let script = Arc::new(Script::default());
        script.fail(ErrorCode::UpstreamUnavailable);
        let cache = cache(script.clone());
        let req = request(Utc::now());
        assert!(cache.page(req, far(), Utc::now()).await.is_err());
        assert!(cache.page(req, far(), Utc::now()).await.is_ok());
        assert_eq!(script.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_recent_page_is_refetched_after_its_short_ttl() {
        let script = Arc::new(Script::default());
        let cache = cache(script.clone());
        let req = request(Utc::now());
        cache.page(req, far(), Utc::now()).await.unwrap();
        tokio::time::advance(Duration::from_secs(9)).await;
        cache.page(req, far(), Utc::now()).await.unwrap();
        assert_eq!(
            script.calls.load(Ordering::SeqCst),
            1,
            "fresh within its TTL"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        let page = cache.page(req, far(), Utc::now()).await.unwrap();
        assert_eq!(script.calls.load(Ordering::SeqCst), 2);
        assert!(page.page.is_fresh());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_recent_page_is_served_when_the_platform_fails() {
        let script = Arc::new(Script::default());
        let cache = cache(script.clone());
        let req = request(Utc::now());
        let first = cache.page(req, far(), Utc::now()).await.unwrap();
        tokio::time::advance(Duration::from_secs(30)).await;
        script.fail(ErrorCode::UpstreamUnavailable);
        let stale = cache.page(req, far(), Utc::now()).await.unwrap();
        assert!(Arc::ptr_eq(&first.page, &stale.page));
        // A clear answer from the platform is passed on, not hidden.
        script.fail(ErrorCode::ActivityNotFound);
        assert_eq!(
            cache.page(req, far(), Utc::now()).await.unwrap_err().code,
            ErrorCode::ActivityNotFound
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_broken_past_its_head_keeps_the_stale_page() {
        let script = Arc::new(Script::default());
        let cache = cache(script.clone());
        let req = request(Utc::now());
        let first = cache.page(req, far(), Utc::now()).await.unwrap();
        tokio::time::advance(Duration::from_secs(30)).await;
        script.broken.store(1, Ordering::SeqCst);
        let stale = cache.page(req, far(), Utc::now()).await.unwrap();
        assert_eq!(script.calls.load(Ordering::SeqCst), 2);
        assert!(
            Arc::ptr_eq(&first.page, &stale.page),
            "the broken page replaced it"
        );
        let fresh = cache.page(req, far(), Utc::now()).await.unwrap();
        assert_eq!(script.calls.load(Ordering::SeqCst), 3);
        assert!(fresh.page.is_fresh());
    }

    #[tokio::test(start_paused = true)]
    async fn definitive_refusals_are_remembered_for_a_while_and_transient_errors_are_not() {
        let script = Arc::new(Script::default());
        let cache = cache(script.clone());
        let req = request(Utc::now());
        let other_window = request(Utc::now() - chrono::Duration::days(7));
        script.fail(ErrorCode::ActivityNotFound);
        for r in [req, req, other_window] {
            let e = cache.page(r, far(), Utc::now()).await.unwrap_err();
            assert_eq!(e.code, ErrorCode::ActivityNotFound);
        }
        assert_eq!(script.calls.load(Ordering::SeqCst), 1, "remembered");
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(
            cache.page(req, far(), Utc::now()).await.is_ok(),
            "forgotten after 30 s"
        );
        assert_eq!(script.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn freshness_says_how_long_a_page_stays_fresh_and_how_old_a_stale_one_is() {
        let script = Arc::new(Script::default());
        let cache = cache(script.clone());
        let req = request(Utc::now());
        let first = cache.page(req, far(), Utc::now()).await.unwrap();
        assert_eq!(first.freshness.fresh_for, Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(4)).await;
        let hit = cache.page(req, far(), Utc::now()).await.unwrap();
        assert_eq!(hit.freshness.fresh_for, Duration::from_secs(6));
        assert_eq!(hit.freshness.stale_age, None);
        tokio::time::advance(Duration::from_secs(20)).await;
        script.fail(ErrorCode::UpstreamTimeout);
        let stale = cache.page(req, far(), Utc::now()).await.unwrap();
        assert_eq!(stale.freshness.fresh_for, Duration::ZERO);
        assert_eq!(stale.freshness.stale_age, Some(Duration::from_secs(24)));
        let both = hit.freshness.and(stale.freshness);
        assert_eq!(both, stale.freshness);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_settled_page_is_served_at_once_and_refreshed_once_in_the_background() {
        let script = Arc::new(Script {
            delay: Duration::from_millis(50),
            ..Default::default()
        });
        let cache = cache(script.clone());
        let req = request(Utc::now() - chrono::Duration::days(3));
        let first = cache.page(req, far(), Utc::now()).await.unwrap();
        tokio::time::advance(Duration::from_secs(101)).await;
        let served =
            futures::future::join_all((0..20).map(|_| cache.page(req, far(), Utc::now()))).await;
        assert!(
            served
                .iter()
                .all(|p| Arc::ptr_eq(&p.as_ref().unwrap().page, &first.page)),
            "served stale at once"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            script.calls.load(Ordering::SeqCst),
            2,
            "one background refresh"
        );
        let after = cache.page(req, far(), Utc::now()).await.unwrap();
        assert!(after.page.is_fresh() && !Arc::ptr_eq(&after.page, &first.page));
    }

    #[tokio::test(start_paused = true)]
    async fn contains_says_whether_a_read_would_wait_on_the_platform() {
        let script = Arc::new(Script::default());
        let cache = cache(script.clone());
        let now = Utc::now();
        let recent = request(now);
        let settled = request(now - chrono::Duration::days(3));
        assert!(!cache.contains(&recent, now).await && !cache.contains(&settled, now).await);
        cache.page(recent, far(), now).await.unwrap();
        cache.page(settled, far(), now).await.unwrap();
        assert!(cache.contains(&recent, now).await && cache.contains(&settled, now).await);
        // Past their TTLs: a recent page is refreshed first, a settled one
        // is served while it is refreshed in the background.
        tokio::time::advance(Duration::from_secs(101)).await;
        assert!(!cache.contains(&recent, now).await);
        assert!(cache.contains(&settled, now).await);
        // Recent as of the caller's clock: two hours on, the same page is
        // settled and served while it is refreshed.
        assert!(
            cache
                .contains(&recent, now + chrono::Duration::hours(2))
                .await
        );
        assert_eq!(script.calls.load(Ordering::SeqCst), 2, "asking is free");
        let off = PageCache::new(script, 0, POLICY, Metrics::new());
        assert!(!off.contains(&settled, now).await);
    }

    /// Whether a window is recent is judged on the caller's `now`, never
    /// on a clock of the cache's own: a window that ended a moment ago is
    /// settled for a caller whose clock reads two hours later.
    #[tokio::test(start_paused = true)]
    async fn recency_is_judged_on_the_callers_clock() {
        let cache = cache(Arc::new(Script::default()));
        let end = Utc::now();
        let recent = cache.page(request(end), far(), end).await.unwrap();
        assert_eq!(recent.freshness.fresh_for, POLICY.recent);
        let other = request(end - chrono::Duration::seconds(1));
        let later = end + chrono::Duration::hours(2);
        let settled = cache.page(other, far(), later).await.unwrap();
        assert_eq!(settled.freshness.fresh_for, POLICY.settled);
    }

    #[test]
    fn recent_windows_get_the_short_ttl() {
        let now = Utc::now();
        assert_eq!(
            POLICY.ttl_for(now - chrono::Duration::minutes(59), now),
            POLICY.recent
        );
        assert_eq!(
            POLICY.ttl_for(now - chrono::Duration::minutes(61), now),
            POLICY.settled
        );
    }
}
