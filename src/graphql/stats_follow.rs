//! `subscription { userVisitStats }`: a dashboard's statistics that fill in
//! while the range's pages are read, then, for a range still open, move with
//! each visit the activity's live poller brings.
//!
//! - The first result comes at once from what the caches hold
//!   ([`StatsLoader::snapshot`]): the windows whose every page is cached,
//!   with `progress.complete` false while pages are missing.
//! - Then, once a second, the query's own path: its figures when every page
//!   can be read, else `STATS_LOADING` while the range's one background job
//!   reads them (every subscriber and every query of the range joins it),
//!   and a new partial result whenever more pages are in.
//! - The complete result is the query's for the same range.
//! - A range without `to`, or with `to` ahead, then stays open: each poll's
//!   visits from the range's pinned end on are merged into the figures (not
//!   recomputed from pages), one result per poll, the range's end moving
//!   with now up to the `to` asked, where the subscription completes. The
//!   poller's visits are read from the start, so none is lost while the
//!   history loads; a visit is counted once, from the pages if it is before
//!   the pinned end, from the poller if not.
//!
//! The doors share one execution per distinct subscription, so each result
//! is computed and serialised once for all its subscribers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use async_graphql::ErrorExtensions;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::Resolver;
use super::stats::{StatsProgress, UserVisitStats};
use crate::error::ErrorCode;
use crate::live::{Live, LiveConnection, LiveVisit};
use crate::page::Visit;
use crate::paging::{ActivityId, ResolvedRange};
use crate::stats::{Base, WindowStats};
use crate::upstream::fair::{Caller, Priority};

/// The most often a subscription sends new figures while pages arrive.
const UPDATE_EVERY: Duration = Duration::from_secs(1);
/// Visits of one poll taken at once from the live feed.
const POLL_CHUNK: usize = 1024;

type Feed = BoxStream<'static, Vec<async_graphql::Result<LiveVisit>>>;

/// What a statistics subscription follows.
pub(super) struct Follow {
    pub resolver: Arc<Resolver>,
    pub activity: ActivityId,
    /// Pinned as the query pins it.
    pub range: ResolvedRange,
    pub zone: Tz,
    /// The `to` asked when it is ahead of now: the open range's last end.
    /// `None` with `open`: open for as long as the subscription lives.
    pub until: Option<DateTime<Utc>>,
    /// Whether the range's end moves with now once its history is read.
    pub open: bool,
    pub live: Arc<Live>,
    pub connection: Arc<LiveConnection>,
}

enum Phase {
    Start,
    Loading,
    /// The range's figures as loaded (shared with the statistics caches,
    /// so an open subscription holds no copy of a long range), the poller's
    /// visits since, and the latest figures of both.
    Moving {
        loaded: Arc<WindowStats>,
        polled: Box<Base>,
        latest: Arc<WindowStats>,
    },
    Done,
}

struct State {
    follow: Follow,
    phase: Phase,
    /// The live poller's visits of an open range, `None` for a closed one.
    feed: Option<Feed>,
    /// Poller visits from the range's pinned end on, not yet merged.
    added: Vec<Arc<Visit>>,
    /// The most pages a result reported read: progress never goes back.
    read: u64,
    /// `added.len()` when the last partial result was sent.
    sent_added: usize,
    tick: Interval,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    caller: Caller,
}

type Item = async_graphql::Result<UserVisitStats>;

/// The subscription's results.
pub(super) fn follow(
    follow: Follow,
) -> Result<impl Stream<Item = Item> + use<>, crate::error::GatewayError> {
    let feed = if follow.open {
        let visits = follow.live.subscribe(follow.activity, &follow.connection)?;
        Some(visits.ready_chunks(POLL_CHUNK).boxed())
    } else {
        None
    };
    let mut tick = tokio::time::interval_at(Instant::now() + UPDATE_EVERY, UPDATE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut shutdown = follow.live.shutdown_signal();
    let state = State {
        caller: Caller::new(follow.connection.client.clone(), Priority::Stats),
        follow,
        phase: Phase::Start,
        feed,
        added: Vec::new(),
        read: 0,
        sent_added: 0,
        tick,
        shutdown: Box::pin(async move {
            let _ = shutdown.wait_for(|down| *down).await;
        }),
    };
    Ok(futures::stream::unfold(state, |mut state| async move {
        // Its platform requests are its client's, at the statistics' priority.
        let caller = state.caller.clone();
        let item = caller.scope(state.next()).await?;
        Some((item, state))
    }))
}

impl State {
    async fn next(&mut self) -> Option<Item> {
        loop {
            match &self.phase {
                Phase::Done => return None,
                Phase::Start => {
                    self.phase = Phase::Loading;
                    let snapshot = self.snapshot().await;
                    if snapshot.read < snapshot.needed {
                        return Some(Ok(self.partial(snapshot)));
                    }
                    // All cached: the query's answer, at once.
                    if let Some(item) = self.load().await {
                        return Some(item);
                    }
                }
                Phase::Loading => {
                    tokio::select! {
                        biased;
                        () = &mut self.shutdown => return None,
                        visits = next_poll(&mut self.feed) => {
                            let Some(visits) = visits else {
                                // The feed ended (its poller failed for good):
                                // the range ends where it was pinned.
                                self.feed = None;
                                self.follow.open = false;
                                self.follow.until = None;
                                continue;
                            };
                            if let Err(e) = self.absorb(visits) {
                                return Some(Err(e));
                            }
                        }
                        _ = self.tick.tick() => {
                            if let Some(item) = self.load().await {
                                return Some(item);
                            }
                        }
                    }
                }
                Phase::Moving { latest, .. } => {
                    let stats = latest.clone();
                    let until = self.follow.until;
                    tokio::select! {
                        biased;
                        () = &mut self.shutdown => return None,
                        () = sleep_until(until) => {
                            self.phase = Phase::Done;
                            return Some(Ok(self.moved(stats)));
                        }
                        visits = next_poll(&mut self.feed) => {
                            let Some(visits) = visits else {
                                // The feed ended: shutdown, or its poller failed for good.
                                self.phase = Phase::Done;
                                return None;
                            };
                            if let Err(e) = self.absorb(visits) {
                                return Some(Err(e));
                            }
                            if self.added.is_empty() {
                                continue;
                            }
                            drop(stats);
                            let new = WindowStats::from_visits(self.added.iter().map(|v| &**v));
                            self.added.clear();
                            let Phase::Moving { loaded, polled, latest } = &mut self.phase else {
                                continue;
                            };
                            // Built per poll that brought visits, once for
                            // every subscriber of this subscription.
                            polled.add(&[&new]);
                            *latest = Arc::new(WindowStats::merge(&[loaded, polled.stats()]));
                            let stats = latest.clone();
                            return Some(Ok(self.moved(stats)));
                        }
                    }
                }
            }
        }
    }

    /// The query's answer when every page can be read now; `None` while
    /// they are read in the background and no more came in since the last
    /// result (a partial result when some did).
    async fn load(&mut self) -> Option<Item> {
        let f = &self.follow;
        let r = &f.resolver;
        // A fresh request each time, as a client asking again would be.
        let slots = tokio::sync::Semaphore::new(r.fetch_policy.window_concurrency.max(1));
        let spent = AtomicU64::new(0);
        let loaded = r
            .stats
            .load(
                &r.cache,
                r.fetch_policy,
                &slots,
                &spent,
                f.activity,
                f.range,
                Utc::now(),
            )
            .await;
        match loaded {
            Ok(loaded) => {
                self.read = self.read.max(loaded.pages);
                let polled =
                    Base::new(&[&WindowStats::from_visits(self.added.iter().map(|v| &**v))]);
                self.added.clear();
                let stats = if polled.stats().visits() == 0 {
                    loaded.stats.clone()
                } else {
                    Arc::new(WindowStats::merge(&[&loaded.stats, polled.stats()]))
                };
                self.phase = if f.open {
                    Phase::Moving {
                        loaded: loaded.stats,
                        polled: Box::new(polled),
                        latest: stats.clone(),
                    }
                } else {
                    Phase::Done
                };
                let range = if f.open { self.moving_range() } else { f.range };
                Some(Ok(UserVisitStats {
                    range,
                    zone: f.zone,
                    stats,
                    progress: StatsProgress::all(self.read),
                }))
            }
            Err(e) if e.code == ErrorCode::StatsLoading => {
                let snapshot = self.snapshot().await;
                let more = snapshot.read > self.read || self.added.len() > self.sent_added;
                more.then(|| Ok(self.partial(snapshot)))
            }
            Err(e) => {
                self.phase = Phase::Done;
                Some(Err(e.extend()))
            }
        }
    }

    /// What the caches hold of the range now.
    async fn snapshot(&mut self) -> crate::stats::load::Snapshot {
        let f = &self.follow;
        let r = &f.resolver;
        r.stats
            .snapshot(
                &r.cache,
                f.activity,
                f.range,
                r.fetch_policy.upstream_page_size,
                Utc::now(),
            )
            .await
    }

    /// Partial figures: the windows whose pages are all in, and the
    /// poller's visits so far.
    fn partial(&mut self, snapshot: crate::stats::load::Snapshot) -> UserVisitStats {
        self.read = self.read.max(snapshot.read);
        self.sent_added = self.added.len();
        let stats = if self.added.is_empty() {
            snapshot.stats
        } else {
            let new = WindowStats::from_visits(self.added.iter().map(|v| &**v));
            Arc::new(WindowStats::merge(&[&snapshot.stats, &new]))
        };
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        UserVisitStats {
            range: self.follow.range,
            zone: self.follow.zone,
            stats,
            progress: StatsProgress {
                pages_read: n(self.read),
                pages_needed: n(snapshot.needed.max(self.read)),
                complete: false,
            },
        }
    }

    /// The figures with the range's end moved to now (or to `until`).
    fn moved(&self, stats: Arc<WindowStats>) -> UserVisitStats {
        UserVisitStats {
            range: self.moving_range(),
            zone: self.follow.zone,
            stats,
            progress: StatsProgress::all(self.read),
        }
    }

    /// The open range, its end moved to now (never past the `to` asked).
    fn moving_range(&self) -> ResolvedRange {
        let now = Utc::now();
        let end = self.follow.until.map_or(now, |until| until.min(now));
        self.follow.range.ending_at(end, now)
    }

    /// Keeps a poll's visits that fall after the range's pinned end (and
    /// before `until`); an error from the poller is passed on.
    fn absorb(
        &mut self,
        visits: Vec<async_graphql::Result<LiveVisit>>,
    ) -> Result<(), async_graphql::Error> {
        let from = self.follow.range.to();
        for visit in visits {
            let LiveVisit(visit) = visit?;
            if visit.visit_at >= from && self.follow.until.is_none_or(|u| visit.visit_at < u) {
                self.added.push(visit);
            }
        }
        Ok(())
    }
}

/// The next poll's visits; pending for ever without a feed.
async fn next_poll(feed: &mut Option<Feed>) -> Option<Vec<async_graphql::Result<LiveVisit>>> {
    match feed {
        Some(feed) => feed.next().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `until` (wall clock); for ever without one.
async fn sleep_until(until: Option<DateTime<Utc>>) {
    match until {
        Some(until) => {
            let left = (until - Utc::now()).to_std().unwrap_or_default();
            tokio::time::sleep(left).await;
        }
        None => std::future::pending().await,
    }
}
