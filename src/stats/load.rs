//! Reads a range's visits for statistics, through the page cache, and keeps
//! each settled window's [`WindowStats`], so that asking again, or for a
//! longer range with the same `from` (whose windows start alike), costs no
//! platform request and no page read for those windows. The newest window,
//! whose visits still change, is built again each time from the page cache
//! (whose short TTL refreshes it).
//!
//! Statistics read every page of the range, so they have their own bound
//! (`STATS_MAX_PLATFORM_REQUESTS`, SPEC §2): the pages a request's
//! statistics need that are not cached, all its fields together. Once the
//! windows' first pages show the counts, a request over it is refused with
//! `QUERY_TOO_EXPENSIVE` before any further platform request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use moka::Expiry;
use moka::sync::Cache;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::WindowStats;
use crate::cache::{Freshness, PageCache, Served, TtlPolicy};
use crate::error::{ErrorCode, GatewayError};
use crate::page::PageRequest;
use crate::paging::{self, ActivityId, ResolvedRange, Window};
use crate::reader::Reader;
use crate::visits::FetchPolicy;

/// A settled window's statistics, by everything that makes its pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    activity: ActivityId,
    window: Window,
    /// The page size asked of the platform.
    page_size: u64,
}

struct Kept {
    stats: Arc<WindowStats>,
    built: Instant,
    /// How long the pages it was built from stayed fresh, then.
    fresh_for: Duration,
}

impl Kept {
    /// Its freshness now, if it has any left.
    fn freshness(&self) -> Option<Freshness> {
        let fresh_for = self.fresh_for.saturating_sub(self.built.elapsed());
        (!fresh_for.is_zero()).then_some(Freshness {
            fresh_for,
            stale_age: None,
        })
    }
}

/// Dropped once its pages would have been refreshed.
struct WhileFresh;

impl Expiry<Key, Arc<Kept>> for WhileFresh {
    fn expire_after_create(
        &self,
        _: &Key,
        kept: &Arc<Kept>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(kept.fresh_for)
    }
}

/// A range's statistics, and how fresh the pages they come from are.
#[derive(Debug)]
pub struct Loaded {
    pub stats: Arc<WindowStats>,
    pub freshness: Freshness,
}

pub struct StatsLoader {
    /// `None` when `STATS_CACHE_MAX_BYTES=0`.
    kept: Option<Cache<Key, Arc<Kept>>>,
    /// `STATS_MAX_PLATFORM_REQUESTS`.
    pub max_platform_requests: u64,
}

impl StatsLoader {
    pub fn new(max_bytes: u64, max_platform_requests: u64) -> Self {
        let kept = (max_bytes > 0).then(|| {
            Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_: &Key, kept: &Arc<Kept>| {
                    u32::try_from(kept.stats.weight()).unwrap_or(u32::MAX)
                })
                .expire_after(WhileFresh)
                .build()
        });
        Self {
            kept,
            max_platform_requests,
        }
    }

    /// The statistics of `range`: settled windows kept from earlier requests,
    /// the others read whole through the page cache. `spent` counts the
    /// platform requests this GraphQL request's statistics were allowed.
    #[allow(clippy::too_many_arguments)]
    pub async fn load(
        &self,
        pages: &PageCache,
        policy: FetchPolicy,
        slots: &Semaphore,
        spent: &AtomicU64,
        activity: ActivityId,
        range: ResolvedRange,
        now: DateTime<Utc>,
    ) -> Result<Loaded, GatewayError> {
        let deadline = Instant::now() + policy.deadline;
        let page_size = policy.upstream_page_size;
        let windows = paging::split_windows(range);
        let key = |window| Key {
            activity,
            window,
            page_size,
        };
        let mut parts: Vec<Option<(Arc<WindowStats>, Freshness)>> =
            windows.iter().map(|w| self.kept(key(*w), now)).collect();
        let missing: Vec<usize> = (0..windows.len()).filter(|&i| parts[i].is_none()).collect();

        // The missing windows' first pages: their counts and the page size
        // the platform serves.
        let firsts: Vec<PageRequest> = missing
            .iter()
            .map(|&i| PageRequest {
                activity,
                window: windows[i],
                page: 1,
                page_size,
            })
            .collect();
        self.spend(spent, uncached(pages, &firsts).await)?;
        let firsts = read_firsts(pages, slots, firsts, deadline).await?;

        // Then every other page of theirs, in units of the served size.
        let later: Vec<PageRequest> = firsts
            .iter()
            .flat_map(|(req, first)| {
                let size = first.page.page.page_size.max(1);
                let count = first.page.page.total.div_ceil(size);
                (2..=count).map(move |page| PageRequest {
                    page,
                    page_size: size,
                    ..*req
                })
            })
            .collect();
        self.spend(spent, uncached(pages, &later).await)?;
        let mut later = read_all(pages, slots, later, deadline).await?.into_iter();

        for (&i, (_, first)) in missing.iter().zip(&firsts) {
            let total = first.page.page.total;
            let size = first.page.page.page_size.max(1);
            let mut served = vec![first.clone()];
            served.extend(
                later
                    .by_ref()
                    .take(total.div_ceil(size).saturating_sub(1) as usize),
            );
            let mut freshness = Freshness::FOREVER;
            let mut visits = Vec::with_capacity(total as usize);
            for (p, page) in served.iter().enumerate() {
                freshness = freshness.and(page.freshness);
                let expected = total.saturating_sub(p as u64 * size).min(size) as usize;
                if page.page.page.visits.len() < expected {
                    return Err(GatewayError::bad_response(
                        "the platform's list changed while it was being read (a page is shorter than the first page promised); try again",
                    ));
                }
                visits.extend(page.page.page.visits[..expected].iter());
            }
            let stats = Arc::new(WindowStats::from_visits(visits));
            self.keep(key(windows[i]), &stats, freshness, now);
            parts[i] = Some((stats, freshness));
        }

        let parts: Vec<(Arc<WindowStats>, Freshness)> = parts.into_iter().flatten().collect();
        let freshness = parts
            .iter()
            .fold(Freshness::FOREVER, |f, (_, part)| f.and(*part));
        let stats = match parts.as_slice() {
            [(one, _)] => one.clone(),
            many => Arc::new(WindowStats::merge(
                &many.iter().map(|(s, _)| s.as_ref()).collect::<Vec<_>>(),
            )),
        };
        Ok(Loaded { stats, freshness })
    }

    /// A settled window's statistics, while they are fresh.
    fn kept(&self, key: Key, now: DateTime<Utc>) -> Option<(Arc<WindowStats>, Freshness)> {
        if TtlPolicy::is_recent(key.window.to, now) {
            return None;
        }
        let kept = self.kept.as_ref()?.get(&key)?;
        Some((kept.stats.clone(), kept.freshness()?))
    }

    /// Keeps a settled window's statistics built from fresh pages only.
    fn keep(&self, key: Key, stats: &Arc<WindowStats>, freshness: Freshness, now: DateTime<Utc>) {
        let Some(kept) = &self.kept else { return };
        if TtlPolicy::is_recent(key.window.to, now)
            || freshness.fresh_for.is_zero()
            || freshness.stale_age.is_some()
        {
            return;
        }
        kept.insert(
            key,
            Arc::new(Kept {
                stats: stats.clone(),
                built: Instant::now(),
                fresh_for: freshness.fresh_for,
            }),
        );
    }

    /// Counts `cost` more platform requests against the request's bound, or
    /// refuses them all.
    fn spend(&self, spent: &AtomicU64, cost: u64) -> Result<(), GatewayError> {
        let limit = self.max_platform_requests;
        spent
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
                s.checked_add(cost).filter(|&total| total <= limit)
            })
            .map(|_| ())
            .map_err(|already| {
                GatewayError::new(
                    ErrorCode::QueryTooExpensive,
                    format!(
                        "these statistics need {} platform requests (pages not cached); one request's \
                         statistics may need at most {limit} (STATS_MAX_PLATFORM_REQUESTS): ask for a shorter range",
                        already.saturating_add(cost)
                    ),
                )
            })
    }
}

/// How many of these pages the platform would be asked for.
async fn uncached(pages: &PageCache, reqs: &[PageRequest]) -> u64 {
    let mut n = 0;
    for req in reqs {
        if !pages.contains(req).await {
            n += 1;
        }
    }
    n
}

/// First pages, the oldest alone first: when the platform refuses the
/// activity, one request learns it, not one per window.
async fn read_firsts(
    pages: &PageCache,
    slots: &Semaphore,
    reqs: Vec<PageRequest>,
    deadline: Instant,
) -> Result<Vec<(PageRequest, Served)>, GatewayError> {
    let Some((&oldest, rest)) = reqs.split_first() else {
        return Ok(Vec::new());
    };
    let reader = Reader::new(pages, oldest.activity, oldest.page_size, deadline).with_slots(slots);
    let mut served = vec![(oldest, reader.page(oldest).await?)];
    let rest_served = read_all(pages, slots, rest.to_vec(), deadline).await?;
    served.extend(rest.iter().copied().zip(rest_served));
    Ok(served)
}

/// Pages in order, as many at a time as the request's platform slots allow.
async fn read_all(
    pages: &PageCache,
    slots: &Semaphore,
    reqs: Vec<PageRequest>,
    deadline: Instant,
) -> Result<Vec<Served>, GatewayError> {
    let n = reqs.len().max(1);
    futures::stream::iter(reqs.into_iter().map(|req| {
        Reader::new(pages, req.activity, req.page_size, deadline)
            .with_slots(slots)
            .page(req)
    }))
    .buffered(n)
    .try_collect()
    .await
}
