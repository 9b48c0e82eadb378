//! Reads a range's visits for statistics, through the page cache, and keeps
//! each settled window's [`WindowStats`], so that asking again, or for a
//! longer range with the same `from` (whose windows start alike), costs no
//! platform request and no page read for those windows. A range's settled
//! windows are also kept merged ([`Base`], with the index of their visitors
//! and keys) with the range last built on them; a recent window's
//! statistics are kept page by page while each page lives in the page cache
//! (whose short TTL refreshes it). So a warm query adds only the recent
//! pages that changed to what is kept, and hashes only their visitors.
//!
//! Statistics read every page of the range, so they have their own bound
//! (`STATS_MAX_PLATFORM_REQUESTS`, docs/api.md): the pages a request's
//! statistics need that are not cached, all its fields together. Once the
//! windows' first pages show the counts, a request over it is refused with
//! `QUERY_TOO_EXPENSIVE` before any further platform request.
//!
//! Long statistics fill in; they do not fail halfway. Before
//! asking the platform, the loader compares the pages not cached with what
//! the budget can give ([`PageCache::reach`]): the first pages within a
//! second, the others before the deadline (less a quarter of it, for the
//! platform's own answer time). When they do not fit, one background job
//! per activity and range reads them through the page cache, as the client
//! that started it at the statistics' priority, within
//! `STATS_MAX_PLATFORM_REQUESTS`, and keeps the settled windows' statistics;
//! the query is answered `STATS_LOADING` at once with the job's progress,
//! and so is every query for that range while it runs. Once it is done the
//! query is answered from the caches. A job that fails (a platform refusal,
//! the bound once its first pages show the counts) answers its range's
//! queries with its error for [`FAILED_JOB_KEPT`]; the next query after that
//! starts a new job, which goes on from the pages already cached.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use moka::Expiry;
use moka::sync::Cache;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{Base, WindowStats};
use crate::cache::{CachedPage, Freshness, PageCache, Served, TtlPolicy};
use crate::error::{ErrorCode, GatewayError};
use crate::page::PageRequest;
use crate::paging::{self, ActivityId, ResolvedRange, Window, WindowShape};
use crate::reader::{Reader, in_order, later_pages, oldest_first, page_count, shape, visits_of};
use crate::telemetry::{Metrics, OutcomeLabel};
use crate::upstream::fair::{Caller, Priority};
use crate::visits::FetchPolicy;

/// A settled window's statistics, by everything that makes its pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    activity: ActivityId,
    window: Window,
    /// The page size asked of the platform.
    page_size: u64,
}

struct Kept<T = Arc<WindowStats>> {
    stats: T,
    /// The pages it was built from.
    pages: u64,
    built: Instant,
    /// How long the pages it was built from stayed fresh, then.
    fresh_for: Duration,
}

impl<T> Kept<T> {
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

impl<K, T> Expiry<K, Arc<Kept<T>>> for WhileFresh {
    fn expire_after_create(
        &self,
        _: &K,
        kept: &Arc<Kept<T>>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(kept.fresh_for)
    }
}

/// A range's statistics, how fresh the pages they come from are, and how
/// many pages that is.
#[derive(Debug)]
pub struct Loaded {
    pub stats: Arc<WindowStats>,
    pub freshness: Freshness,
    pub pages: u64,
}

/// What the caches hold of a range now, read at no platform request: the
/// statistics of its windows whose every page is cached, and how many of
/// its pages are. A window whose first page is not cached counts as one
/// page, until its first page shows how many it has.
#[derive(Debug)]
pub struct Snapshot {
    pub stats: Arc<WindowStats>,
    pub read: u64,
    pub needed: u64,
}

/// One window's statistics (a settled window's in one piece, a recent
/// window's page by page), their pages' freshness and their page count.
#[derive(Debug, Clone)]
struct Part {
    stats: Vec<Arc<WindowStats>>,
    freshness: Freshness,
    pages: u64,
}

/// The settled windows of a range, merged, by everything that makes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct BaseKey {
    activity: ActivityId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    page_size: u64,
}

/// A range's settled windows merged, and the last range built on them:
/// while the recent pages added are the same, the range is not built again.
struct Merged {
    base: Base,
    /// The recent pages' statistics last added (held, so that no other
    /// statistics take their addresses), and the range they made.
    last: Mutex<Option<LastRange>>,
}

/// The recent pages' statistics added to a base, and the range they made.
type LastRange = (Vec<Arc<WindowStats>>, Arc<WindowStats>);

impl Merged {
    fn new(settled: &[&WindowStats]) -> Self {
        Self {
            base: Base::new(settled),
            last: Mutex::new(None),
        }
    }

    /// The base, and room for the last range built on it (about as large
    /// as the base's statistics).
    fn weight(&self) -> usize {
        self.base.weight() + self.base.stats().weight()
    }

    /// The settled windows with `added` (recent pages' statistics).
    fn with(&self, added: &[Arc<WindowStats>]) -> Arc<WindowStats> {
        if added.is_empty() {
            return self.base.stats().clone();
        }
        let same = |parts: &[Arc<WindowStats>]| {
            parts.len() == added.len() && parts.iter().zip(added).all(|(a, b)| Arc::ptr_eq(a, b))
        };
        let last = || self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((parts, range)) = &*last()
            && same(parts)
        {
            return range.clone();
        }
        // Built outside the lock: a concurrent query builds the same.
        let parts: Vec<&WindowStats> = added.iter().map(AsRef::as_ref).collect();
        let range = Arc::new(self.base.with(&parts));
        *last() = Some((added.to_vec(), range.clone()));
        range
    }
}

/// A recent page's statistics, by the page they were built from (its
/// address, held by the `Weak`, and the visits counted of it).
type PageKey = (usize, usize);
/// A recent page's statistics, and the page, held weakly.
type PageStats = (Weak<CachedPage>, Arc<WindowStats>);

/// The most statistics jobs reading pages in the background at once, for
/// the whole process and for one client. Beyond them a query that would
/// start one is refused with `RATE_LIMITED` (see [`Jobs::start`]).
pub const MAX_JOBS: usize = 16;
pub const MAX_JOBS_PER_CLIENT: usize = 4;
/// How long a failed job's error answers the queries for its range; after
/// it, a query starts a new job, which goes on from the pages cached.
pub const FAILED_JOB_KEPT: Duration = Duration::from_secs(10);
/// A query reads its windows' first pages itself only when the budget can
/// give them within this time: the answer comes at once either way.
const FIRST_PAGES_WITHIN: Duration = Duration::from_secs(1);
/// Times one page of a job waits out the gateway's own budget refusing it
/// (a slot further than `UPSTREAM_MAX_BUDGET_WAIT_MS`, busier callers
/// first) before the job gives up.
const JOB_BUDGET_RETRIES: u32 = 30;

pub struct StatsLoader {
    shared: Arc<Shared>,
}

/// What the loader and its background jobs share.
struct Shared {
    /// `None` when `STATS_CACHE_MAX_BYTES=0`, as the two below.
    kept: Option<Cache<Key, Arc<Kept>>>,
    /// Settled windows merged, while each of them is fresh: a query adds
    /// only its recent windows to them.
    bases: Option<Cache<BaseKey, Arc<Kept<Arc<Merged>>>>>,
    /// Recent windows' statistics page by page, while the page lives: a
    /// window whose pages were refreshed builds only the refreshed ones.
    recent_pages: Option<Cache<PageKey, PageStats>>,
    /// `STATS_MAX_PLATFORM_REQUESTS`.
    max_platform_requests: u64,
    jobs: Jobs,
    metrics: Option<Arc<Metrics>>,
}

/// A range's windows: the statistics kept for some, the others to build.
struct Plan {
    activity: ActivityId,
    page_size: u64,
    windows: Vec<Window>,
    parts: Vec<Option<Part>>,
    /// Indices of the windows to build.
    missing: Vec<usize>,
}

impl Plan {
    /// The missing windows' first pages.
    fn firsts(&self) -> Vec<PageRequest> {
        self.missing
            .iter()
            .map(|&i| PageRequest {
                activity: self.activity,
                window: self.windows[i],
                page: 1,
                page_size: self.page_size,
            })
            .collect()
    }
}

impl StatsLoader {
    /// `max_bytes` (`STATS_CACHE_MAX_BYTES`) is shared: a quarter for
    /// settled windows, five eighths for ranges' merged settled windows (each
    /// with its index and last range, several times a window's weight), the
    /// rest for recent pages.
    pub fn new(max_bytes: u64, max_platform_requests: u64) -> Self {
        let on = max_bytes > 0;
        let weight = |w: usize| u32::try_from(w).unwrap_or(u32::MAX);
        let kept = on.then(|| {
            Cache::builder()
                .max_capacity(max_bytes / 4)
                .weigher(move |_: &Key, kept: &Arc<Kept>| weight(kept.stats.weight()))
                .expire_after(WhileFresh)
                .build()
        });
        let bases = on.then(|| {
            Cache::builder()
                .max_capacity(max_bytes / 8 * 5)
                .weigher(move |_: &BaseKey, kept: &Arc<Kept<Arc<Merged>>>| {
                    weight(kept.stats.weight())
                })
                .expire_after(WhileFresh)
                .build()
        });
        let recent_pages = on.then(|| {
            Cache::builder()
                .max_capacity(max_bytes / 8)
                .weigher(
                    move |_: &PageKey, (_, stats): &(Weak<CachedPage>, Arc<WindowStats>)| {
                        weight(stats.weight())
                    },
                )
                // A recent page is refreshed within minutes.
                .time_to_idle(Duration::from_secs(600))
                .build()
        });
        Self {
            shared: Arc::new(Shared {
                kept,
                bases,
                recent_pages,
                max_platform_requests,
                jobs: Jobs::default(),
                metrics: None,
            }),
        }
    }

    /// Counts background jobs in `metrics`.
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Self {
        let shared = Arc::into_inner(self.shared).expect("not shared yet");
        Self {
            shared: Arc::new(Shared {
                metrics: Some(metrics),
                ..shared
            }),
        }
    }

    /// The statistics of `range`: settled windows kept from earlier requests,
    /// the others read whole through the page cache. `spent` counts the
    /// platform requests this GraphQL request's statistics were allowed.
    ///
    /// When the budget cannot give the pages not cached before the deadline
    /// (docs/api.md, "Long statistics fill in"), a background job reads them,
    /// one per activity and range, and the answer is `STATS_LOADING` at once.
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
        let job = JobKey {
            activity,
            range,
            page_size: policy.upstream_page_size,
        };
        if let Some(answer) = self.shared.jobs.report(&job) {
            return Err(answer);
        }
        let shared = &self.shared;
        let plan = shared.plan(activity, range, policy.upstream_page_size, now);

        // The missing windows' first pages: their counts and the page size
        // the platform serves. Read here only when the budget gives them at
        // once; until they are read, each window counts as one page.
        let firsts = plan.firsts();
        let uncached_firsts = uncached(pages, &firsts, now).await;
        shared.spend(spent, uncached_firsts)?;
        if uncached_firsts > 0
            && let Some(reach) = pages.reach(FIRST_PAGES_WITHIN.min(policy.deadline))
            && uncached_firsts as f64 > reach.requests
        {
            let needed = firsts.len() as u64;
            let progress = Progress::new(needed - uncached_firsts, needed, reach.rate);
            return Err(self.start(job, pages, policy, progress, now));
        }
        let read = |req: PageRequest| {
            Reader::new(pages, req.activity, req.page_size, deadline, now)
                .with_slots(slots)
                .page(req)
        };
        let firsts = oldest_first(firsts, read).await?;

        // Then every other page of theirs, in units of the served size: read
        // here when the budget can give them before the deadline (a quarter
        // of it kept for the platform's own answers), else in the background.
        let later = later_pages(&firsts);
        let uncached_later = uncached(pages, &later, now).await;
        shared.spend(spent, uncached_later)?;
        let usable = deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(policy.deadline / 4);
        if uncached_later > 0
            && let Some(reach) = pages.reach(usable)
            && uncached_later as f64 > reach.requests
        {
            let needed = (firsts.len() + later.len()) as u64;
            let progress = Progress::new(needed - uncached_later, needed, reach.rate);
            return Err(self.start(job, pages, policy, progress, now));
        }
        let later = in_order(later, read).await?;
        shared.build(plan, &firsts, later, now)
    }

    /// What the caches hold of `range` now, at no platform request.
    pub async fn snapshot(
        &self,
        pages: &PageCache,
        activity: ActivityId,
        range: ResolvedRange,
        page_size: u64,
        now: DateTime<Utc>,
    ) -> Snapshot {
        let shared = &self.shared;
        let plan = shared.plan(activity, range, page_size, now);
        let reader = Reader::new(pages, activity, page_size, Instant::now(), now);
        let (mut read, mut needed) = (0, 0);
        let mut parts = Vec::new();
        for (window, part) in plan.windows.iter().zip(plan.parts) {
            if let Some(part) = part {
                read += part.pages;
                needed += part.pages;
                parts.push((*window, part));
                continue;
            }
            let Some(first) = pages.peek(&reader.request(*window, 1, None), now).await else {
                needed += 1;
                continue;
            };
            let count = page_count(shape(&first));
            let mut served = vec![first];
            for page in 2..=count {
                let req = reader.request(*window, page, Some(&served[0]));
                if let Some(page) = pages.peek(&req, now).await {
                    served.push(page);
                }
            }
            read += served.len() as u64;
            needed += count;
            // A list that changed between two pages is left out, not shifted.
            if served.len() as u64 == count
                && let Ok(part) = shared.window(key(activity, *window, page_size), &served, now)
            {
                parts.push((*window, part));
            }
        }
        Snapshot {
            stats: shared.combine(activity, page_size, &parts, now),
            read,
            needed,
        }
    }

    /// Starts the range's job, or joins the one running: its progress as
    /// `STATS_LOADING`, or why no job runs.
    fn start(
        &self,
        key: JobKey,
        pages: &PageCache,
        policy: FetchPolicy,
        progress: Progress,
        now: DateTime<Utc>,
    ) -> GatewayError {
        let client = Caller::current().client;
        let progress = Arc::new(progress);
        if let Err(answer) = self.shared.jobs.insert(key, &client, &progress) {
            return answer;
        }
        let answer = progress.loading();
        tracing::info!(
            activity = %key.activity,
            from = %crate::time::format(key.range.from()),
            to = %crate::time::format(key.range.to()),
            pages_read = progress.read.load(Ordering::Relaxed),
            pages_needed = progress.needed.load(Ordering::Relaxed),
            "statistics filling in in the background"
        );
        if let Some(m) = &self.shared.metrics {
            m.stats_jobs.inc();
        }
        let guard = JobGuard {
            shared: self.shared.clone(),
            key,
            outcome: None,
        };
        let pages = pages.clone();
        let job = async move {
            let mut guard = guard;
            let outcome = guard
                .shared
                .run_job(&pages, policy, key, &progress, now)
                .await;
            guard.outcome = Some(outcome);
        };
        // Queued as the client that started it, behind everything else.
        tokio::spawn(Caller::new(client, Priority::Stats).scope(job));
        answer
    }
}

impl Shared {
    /// The range's windows, and the statistics kept for them.
    fn plan(
        &self,
        activity: ActivityId,
        range: ResolvedRange,
        page_size: u64,
        now: DateTime<Utc>,
    ) -> Plan {
        let windows = paging::split_windows(range);
        let parts: Vec<Option<Part>> = windows
            .iter()
            .map(|w| self.kept(key(activity, *w, page_size), now))
            .collect();
        let missing = (0..windows.len()).filter(|&i| parts[i].is_none()).collect();
        Plan {
            activity,
            page_size,
            windows,
            parts,
            missing,
        }
    }

    /// Reads every page of the range in the background, at the statistics'
    /// priority, patient with the gateway's own budget; the settled
    /// windows' statistics are kept, every page stays in the page cache.
    async fn run_job(
        &self,
        pages: &PageCache,
        policy: FetchPolicy,
        key: JobKey,
        progress: &Progress,
        now: DateTime<Utc>,
    ) -> Result<(), GatewayError> {
        let slots = Semaphore::new(policy.window_concurrency.max(1));
        let spent = AtomicU64::new(0);
        let plan = self.plan(key.activity, key.range, key.page_size, now);
        let firsts = plan.firsts();
        self.spend(&spent, uncached(pages, &firsts, now).await)?;
        let read = |req| read_patiently(pages, &slots, policy, req, progress, now);
        let firsts = oldest_first(firsts, read).await?;
        let later = later_pages(&firsts);
        let uncached_later = uncached(pages, &later, now).await;
        self.spend(&spent, uncached_later)?;
        let needed = (firsts.len() + later.len()) as u64;
        progress.needed.store(needed, Ordering::Relaxed);
        progress
            .read
            .store(needed - uncached_later, Ordering::Relaxed);
        let later = in_order(later, read).await?;
        self.build(plan, &firsts, later, now).map(drop)
    }

    /// The missing windows' statistics from their pages (kept when
    /// settled), merged with the kept ones.
    fn build(
        &self,
        plan: Plan,
        firsts: &[(PageRequest, Served)],
        later: Vec<Served>,
        now: DateTime<Utc>,
    ) -> Result<Loaded, GatewayError> {
        let Plan {
            activity,
            page_size,
            windows,
            mut parts,
            missing,
        } = plan;
        let mut later = later.into_iter();
        for (&i, (_, first)) in missing.iter().zip(firsts) {
            let mut served = vec![first.clone()];
            served.extend(later.by_ref().take(page_count(shape(first)) as usize - 1));
            parts[i] = Some(self.window(key(activity, windows[i], page_size), &served, now)?);
        }
        let parts: Vec<(Window, Part)> = windows
            .into_iter()
            .zip(parts)
            .filter_map(|(w, p)| Some((w, p?)))
            .collect();
        Ok(Loaded {
            stats: self.combine(activity, page_size, &parts, now),
            freshness: parts
                .iter()
                .fold(Freshness::FOREVER, |f, (_, part)| f.and(part.freshness)),
            pages: parts.iter().map(|(_, p)| p.pages).sum(),
        })
    }

    /// A range's statistics from its windows' parts: the settled windows
    /// merged once (kept as a base while each is fresh), the recent
    /// windows' pages added to them.
    fn combine(
        &self,
        activity: ActivityId,
        page_size: u64,
        parts: &[(Window, Part)],
        now: DateTime<Utc>,
    ) -> Arc<WindowStats> {
        let (settled, recent): (Vec<_>, Vec<_>) = parts
            .iter()
            .partition(|(w, _)| !TtlPolicy::is_recent(w.to, now));
        let held: Vec<&WindowStats> = settled
            .iter()
            .flat_map(|(_, p)| p.stats.iter().map(AsRef::as_ref))
            .collect();
        let added: Vec<Arc<WindowStats>> = recent
            .iter()
            .flat_map(|(_, p)| p.stats.iter().cloned())
            .collect();
        if let ([(_, one)], []) = (settled.as_slice(), added.as_slice())
            && let [stats] = one.stats.as_slice()
        {
            return stats.clone();
        }
        if held.len() < 2 {
            let all: Vec<&WindowStats> = held
                .into_iter()
                .chain(added.iter().map(AsRef::as_ref))
                .collect();
            return Arc::new(WindowStats::merge(&all));
        }
        self.base(activity, page_size, &settled, &held).with(&added)
    }

    /// The settled windows merged: kept while each of them is fresh.
    fn base(
        &self,
        activity: ActivityId,
        page_size: u64,
        settled: &[&(Window, Part)],
        held: &[&WindowStats],
    ) -> Arc<Merged> {
        let (Some((first, _)), Some((last, _))) = (settled.first(), settled.last()) else {
            return Arc::new(Merged::new(held));
        };
        let key = BaseKey {
            activity,
            from: first.from,
            to: last.to,
            page_size,
        };
        let freshness = settled
            .iter()
            .fold(Freshness::FOREVER, |f, (_, p)| f.and(p.freshness));
        let keepable = !freshness.fresh_for.is_zero() && freshness.stale_age.is_none();
        if let Some(bases) = self.bases.as_ref().filter(|_| keepable) {
            if let Some(kept) = bases.get(&key).filter(|k| k.freshness().is_some()) {
                return kept.stats.clone();
            }
            let base = Arc::new(Merged::new(held));
            bases.insert(
                key,
                Arc::new(Kept {
                    stats: base.clone(),
                    pages: 0,
                    built: Instant::now(),
                    fresh_for: freshness.fresh_for,
                }),
            );
            return base;
        }
        Arc::new(Merged::new(held))
    }

    /// A window's statistics from its every page, first to last (kept when
    /// settled).
    fn window(
        &self,
        key: Key,
        served: &[Served],
        now: DateTime<Utc>,
    ) -> Result<Part, GatewayError> {
        let Some(first) = served.first() else {
            return Err(GatewayError::internal("a window without its first page"));
        };
        let shape = shape(first);
        let freshness = served
            .iter()
            .fold(Freshness::FOREVER, |f, s| f.and(s.freshness));
        let pages = served.len() as u64;
        if TtlPolicy::is_recent(key.window.to, now) {
            // Its pages change: each page's statistics are kept as long as
            // the page, so new pages are all that is built again.
            let stats = (1..)
                .zip(served)
                .map(|(page, served)| self.recent_page(served, shape, page))
                .collect::<Result<_, _>>()?;
            return Ok(Part {
                stats,
                freshness,
                pages,
            });
        }
        let mut visits = Vec::with_capacity(shape.total as usize);
        for (page, served) in (1..).zip(served) {
            visits.extend(visits_of(served, shape, page)?);
        }
        let part = Part {
            stats: vec![Arc::new(WindowStats::from_visits(visits))],
            freshness,
            pages,
        };
        self.keep(key, &part, now);
        Ok(part)
    }

    /// A recent window's page's statistics: kept by the page they come from.
    fn recent_page(
        &self,
        served: &Served,
        shape: WindowShape,
        page: u64,
    ) -> Result<Arc<WindowStats>, GatewayError> {
        let visits = visits_of(served, shape, page)?;
        let Some(memo) = &self.recent_pages else {
            return Ok(Arc::new(WindowStats::from_visits(visits)));
        };
        // The `Weak` keeps the page's address from being reused while the
        // entry lives.
        let key = (Arc::as_ptr(&served.page) as usize, visits.len());
        if let Some((_, stats)) = memo.get(&key) {
            return Ok(stats);
        }
        let stats = Arc::new(WindowStats::from_visits(visits));
        memo.insert(key, (Arc::downgrade(&served.page), stats.clone()));
        Ok(stats)
    }

    /// A settled window's statistics, while they are fresh.
    fn kept(&self, key: Key, now: DateTime<Utc>) -> Option<Part> {
        if TtlPolicy::is_recent(key.window.to, now) {
            return None;
        }
        let kept = self.kept.as_ref()?.get(&key)?;
        Some(Part {
            stats: vec![kept.stats.clone()],
            freshness: kept.freshness()?,
            pages: kept.pages,
        })
    }

    /// Keeps a settled window's statistics built from fresh pages only.
    fn keep(&self, key: Key, part: &Part, now: DateTime<Utc>) {
        let Some(kept) = &self.kept else { return };
        if TtlPolicy::is_recent(key.window.to, now)
            || part.freshness.fresh_for.is_zero()
            || part.freshness.stale_age.is_some()
        {
            return;
        }
        let [stats] = part.stats.as_slice() else {
            return;
        };
        kept.insert(
            key,
            Arc::new(Kept {
                stats: stats.clone(),
                pages: part.pages,
                built: Instant::now(),
                fresh_for: part.freshness.fresh_for,
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

/// How many of these pages the platform would be asked for, at `now`.
async fn uncached(pages: &PageCache, reqs: &[PageRequest], now: DateTime<Utc>) -> u64 {
    let mut n = 0;
    for req in reqs {
        if !pages.contains(req, now).await {
            n += 1;
        }
    }
    n
}

/// A job's page: each attempt with the request deadline's time, waiting out
/// the gateway's own budget refusing it (other callers go first), not a
/// platform's refusal; a page fetched counts as read.
async fn read_patiently(
    pages: &PageCache,
    slots: &Semaphore,
    policy: FetchPolicy,
    req: PageRequest,
    progress: &Progress,
    now: DateTime<Utc>,
) -> Result<Served, GatewayError> {
    let cached = pages.contains(&req, now).await;
    let pause = Duration::from_secs_f64((1.0 / progress.rate).clamp(0.1, 5.0));
    let mut refusals = 0;
    loop {
        let deadline = Instant::now() + policy.deadline;
        let reader =
            Reader::new(pages, req.activity, req.page_size, deadline, now).with_slots(slots);
        match reader.page(req).await {
            Ok(served) => {
                if !cached {
                    progress.read.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(served);
            }
            Err(e) if e.is_budget_refusal() && refusals < JOB_BUDGET_RETRIES => {
                refusals += 1;
                tokio::time::sleep(pause).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn key(activity: ActivityId, window: Window, page_size: u64) -> Key {
    Key {
        activity,
        window,
        page_size,
    }
}

/// One background job's range: everything that makes its pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct JobKey {
    activity: ActivityId,
    range: ResolvedRange,
    page_size: u64,
}

/// How far a job got: pages of the range's windows not kept, and of those
/// the ones in the page cache. Until a window's first page is read, the
/// window counts as one page.
struct Progress {
    read: AtomicU64,
    needed: AtomicU64,
    /// The budget's rate, for the estimate.
    rate: f64,
}

impl Progress {
    fn new(read: u64, needed: u64, rate: f64) -> Self {
        Self {
            read: AtomicU64::new(read),
            needed: AtomicU64::new(needed),
            rate: if rate > 0.0 { rate } else { 1.0 },
        }
    }

    /// Seconds until the pages left are read at the budget's rate, at least 1.
    fn retry_after(&self) -> u64 {
        let read = self.read.load(Ordering::Relaxed);
        let left = self.needed.load(Ordering::Relaxed).saturating_sub(read);
        ((left as f64 / self.rate).ceil() as u64).max(1)
    }

    /// `STATS_LOADING`, with the job's progress.
    fn loading(&self) -> GatewayError {
        let needed = self.needed.load(Ordering::Relaxed);
        let read = self.read.load(Ordering::Relaxed).min(needed);
        let retry = self.retry_after();
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        GatewayError::new(
            ErrorCode::StatsLoading,
            format!(
                "these statistics need more platform requests than the budget gives before the \
                 deadline: the gateway is reading their pages in the background ({read} of \
                 {needed} read); ask again in about {retry} s"
            ),
        )
        .with_extension("pagesRead", n(read))
        .with_extension("pagesNeeded", n(needed))
        .with_extension("retryAfterSeconds", n(retry))
    }
}

enum JobState {
    Running {
        client: Arc<str>,
        progress: Arc<Progress>,
    },
    /// Answers its range's queries with `error` for [`FAILED_JOB_KEPT`].
    Failed { error: GatewayError, at: Instant },
}

/// The jobs running, and those that failed lately, by range.
#[derive(Default)]
struct Jobs(Mutex<HashMap<JobKey, JobState>>);

impl Jobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobKey, JobState>> {
        let mut jobs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        jobs.retain(
            |_, job| !matches!(job, JobState::Failed { at, .. } if at.elapsed() >= FAILED_JOB_KEPT),
        );
        jobs
    }

    /// What a query for `key` is answered while its job runs or just failed.
    fn report(&self, key: &JobKey) -> Option<GatewayError> {
        match self.lock().get(key)? {
            JobState::Running { progress, .. } => Some(progress.loading()),
            JobState::Failed { error, .. } => Some(error.clone()),
        }
    }

    /// Registers a new job, unless one runs for `key` (its answer then), or
    /// too many run: `RATE_LIMITED`, since the same query succeeds once some
    /// are done (`QUERY_TOO_EXPENSIVE` would tell the client to shorten a
    /// range the gateway can read), with the soonest job's estimate.
    fn insert(
        &self,
        key: JobKey,
        client: &Arc<str>,
        progress: &Arc<Progress>,
    ) -> Result<(), GatewayError> {
        let mut jobs = self.lock();
        if let Some(answer) = match jobs.get(&key) {
            Some(JobState::Running { progress, .. }) => Some(progress.loading()),
            Some(JobState::Failed { error, .. }) => Some(error.clone()),
            None => None,
        } {
            return Err(answer);
        }
        let running: Vec<(&Arc<str>, &Arc<Progress>)> = jobs
            .values()
            .filter_map(|job| match job {
                JobState::Running { client, progress } => Some((client, progress)),
                JobState::Failed { .. } => None,
            })
            .collect();
        let mine = running.iter().filter(|(c, _)| *c == client).count();
        if running.len() >= MAX_JOBS || mine >= MAX_JOBS_PER_CLIENT {
            let (ahead, limit, whose) = if mine >= MAX_JOBS_PER_CLIENT {
                (
                    running
                        .iter()
                        .filter(|(c, _)| *c == client)
                        .collect::<Vec<_>>(),
                    MAX_JOBS_PER_CLIENT,
                    "this client's",
                )
            } else {
                (running.iter().collect(), MAX_JOBS, "the gateway's")
            };
            let soonest = ahead
                .iter()
                .map(|(_, p)| p.retry_after())
                .min()
                .unwrap_or(1);
            return Err(GatewayError::new(
                ErrorCode::RateLimited,
                format!(
                    "these statistics need their pages read in the background, and {whose} {limit} \
                     background statistics are all running; ask again in about {soonest} s"
                ),
            )
            .with_extension(
                "retryAfterSeconds",
                i64::try_from(soonest).unwrap_or(i64::MAX),
            ));
        }
        jobs.insert(
            key,
            JobState::Running {
                client: client.clone(),
                progress: progress.clone(),
            },
        );
        Ok(())
    }
}

/// Ends a job's entry whatever ends the job: removed when done (or when the
/// task panicked or was dropped), kept a while with its error when it failed.
struct JobGuard {
    shared: Arc<Shared>,
    key: JobKey,
    outcome: Option<Result<(), GatewayError>>,
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        let outcome = match &self.outcome {
            Some(Ok(())) => "done",
            Some(Err(e)) => e.code.as_str(),
            None => "abandoned",
        };
        match &self.outcome {
            Some(Err(e)) => tracing::warn!(
                activity = %self.key.activity, code = e.code.as_str(), error = %e.message,
                "statistics job failed"
            ),
            _ => tracing::info!(activity = %self.key.activity, outcome, "statistics job ended"),
        }
        let mut jobs = self.shared.jobs.lock();
        match self.outcome.take() {
            Some(Err(error)) => {
                jobs.insert(
                    self.key,
                    JobState::Failed {
                        error,
                        at: Instant::now(),
                    },
                );
            }
            _ => {
                jobs.remove(&self.key);
            }
        }
        drop(jobs);
        if let Some(m) = &self.shared.metrics {
            m.stats_jobs.dec();
            m.stats_jobs_ended
                .get_or_create(&OutcomeLabel { outcome })
                .inc();
        }
    }
}
