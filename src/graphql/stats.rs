//! `userVisitStats` (docs/api.md, "Statistics: `userVisitStats`"): its arguments
//! checked before any platform request, and its types, each figure computed
//! when a query selects it.

use std::sync::Arc;

use async_graphql::{Context, Enum, ErrorExtensions, ID, InputType, Object, SimpleObject};
use chrono_tz::Tz;

use super::scalars::DateTime;
use super::types::ResolvedRange;
use super::{TimeRange, field_context, readable_activity};
use crate::auth::Principal;
use crate::error::GatewayError;
use crate::paging;
use crate::stats::calendar::{Calendar, Interval};
use crate::stats::{Dimension, WindowStats, calendar};
use crate::upstream::fair::{Caller, Priority};

/// The most buckets a `by*` field may ask for.
const MAX_TOP: i32 = 100;

pub(super) async fn user_visit_stats(
    ctx: &Context<'_>,
    activity_id: ID,
    range: Option<TimeRange>,
    time_zone: Option<String>,
) -> async_graphql::Result<UserVisitStats> {
    let result = async {
        let (resolver, scope) = field_context(ctx)?;
        let asked = Asked::check(
            ctx,
            ctx.data_opt::<Principal>(),
            &resolver.range_policy,
            &activity_id,
            range.as_ref(),
            time_zone.as_deref(),
            scope.now,
        )?;
        let (activity, range, zone) = (asked.activity, asked.range, asked.zone);
        scope.record(|f| f.activities.push(activity));
        // Bulk reads: after reads a person waits for, and live polls.
        let load = resolver.stats.load(
            &resolver.cache,
            resolver.fetch_policy,
            &scope.platform_slots,
            &scope.stats_requests,
            activity,
            range,
            scope.now,
        );
        let loaded = Caller::at_priority(Priority::Stats, load).await?;
        scope.record(|f| f.freshness = f.freshness.and(loaded.freshness));
        Ok(UserVisitStats {
            range,
            zone,
            progress: StatsProgress::all(loaded.pages),
            stats: loaded.stats,
        })
    };
    result.await.map_err(|e: GatewayError| e.extend())
}

/// A `userVisitStats` field's arguments (the query's or the
/// subscription's), checked before any platform request.
pub(super) struct Asked {
    pub activity: paging::ActivityId,
    /// Resolved and pinned as `userVisits` does.
    pub range: paging::ResolvedRange,
    pub zone: Tz,
}

impl Asked {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn check(
        ctx: &Context<'_>,
        principal: Option<&Principal>,
        policy: &paging::RangePolicy,
        activity_id: &str,
        range: Option<&TimeRange>,
        time_zone: Option<&str>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Self, GatewayError> {
        let activity = readable_activity(principal, activity_id)?;
        let zone = calendar::zone(time_zone.unwrap_or("UTC"))?;
        let range = paging::resolve_range(
            range.map(|r| r.from.0),
            range.and_then(|r| r.to.map(|t| t.0)),
            now,
            policy,
        )?;
        check_selection(ctx, range, zone)?;
        Ok(Self {
            activity,
            range,
            zone,
        })
    }
}

/// The arguments of the selected figures, checked before any platform
/// request: a bad `top` or a timeline with too many buckets costs nothing.
/// Fields whose arguments cannot be read here fail in their own resolver.
fn check_selection(
    ctx: &Context<'_>,
    range: paging::ResolvedRange,
    zone: Tz,
) -> Result<(), GatewayError> {
    for field in ctx.field().selection_set() {
        let Ok(args) = field.arguments() else {
            continue;
        };
        let arg = |name: &str| args.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        match field.name() {
            "byProvince" | "byCity" | "byDevice" | "byRefererHost" => {
                if let Ok(top) = Option::<i32>::parse(arg("top")) {
                    check_top(top)?;
                }
            }
            "timeline" => {
                if let Ok(interval) = StatsInterval::parse(arg("interval")) {
                    bounds(range, zone, interval)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_top(top: Option<i32>) -> Result<usize, GatewayError> {
    match top {
        None => Ok(10),
        Some(n @ 1..=MAX_TOP) => Ok(n as usize),
        Some(n) => Err(GatewayError::bad_input(format!(
            "top must be between 1 and {MAX_TOP}, got {n}"
        ))),
    }
}

fn bounds(
    range: paging::ResolvedRange,
    zone: Tz,
    interval: StatsInterval,
) -> Result<Vec<i64>, GatewayError> {
    Calendar::new(interval.into(), zone).bounds(
        range.from().timestamp_millis(),
        range.to().timestamp_millis(),
    )
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn instant(ms: i64) -> DateTime {
    DateTime(chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default())
}

/// Statistics of an activity's visits over a range.
pub struct UserVisitStats {
    pub(super) range: paging::ResolvedRange,
    pub(super) zone: Tz,
    pub(super) stats: Arc<WindowStats>,
    pub(super) progress: StatsProgress,
}

/// How much of a range's pages the figures were computed from. A query's
/// figures are always complete; a subscription's fill in.
#[derive(SimpleObject, Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsProgress {
    /// The range's pages read (from the caches or the platform).
    pub pages_read: i64,
    /// The range's pages; a window not yet looked at counts as one page
    /// until its first page shows how many it has.
    pub pages_needed: i64,
    /// True when the figures count every visit of the range.
    pub complete: bool,
}

impl StatsProgress {
    pub(super) fn all(pages: u64) -> Self {
        Self {
            pages_read: count(pages),
            pages_needed: count(pages),
            complete: true,
        }
    }
}

impl UserVisitStats {
    fn buckets(
        &self,
        dimension: Dimension,
        top: Option<i32>,
    ) -> async_graphql::Result<Vec<StatsBucket>> {
        let top = check_top(top).map_err(|e| e.extend())?;
        Ok(self
            .stats
            .buckets(dimension, top)
            .into_iter()
            .map(|b| StatsBucket {
                key: b.key.map(|k| k.to_string()),
                visits: count(b.visits),
                unique_visitors: count(b.unique_visitors),
            })
            .collect())
    }
}

#[Object]
impl UserVisitStats {
    /// The range actually counted, after defaults and pinning (as `userVisits`).
    async fn range(&self) -> ResolvedRange {
        ResolvedRange {
            from: DateTime(self.range.from()),
            to: DateTime(self.range.to()),
        }
    }

    /// How much of the range's pages these figures count: complete for a
    /// query; a subscription's first results may be partial.
    async fn progress(&self) -> StatsProgress {
        self.progress
    }

    /// Visits in the range: `userVisits.totalCount` for the same range.
    async fn visits(&self) -> i64 {
        count(self.stats.visits())
    }

    /// `signedInVisitors + anonymousVisitors`.
    async fn unique_visitors(&self) -> i64 {
        count(self.stats.signed_in_visitors() + self.stats.anonymous_visitors())
    }

    /// Distinct `userId`s.
    async fn signed_in_visitors(&self) -> i64 {
        count(self.stats.signed_in_visitors())
    }

    /// Distinct `anonymousId`s among anonymous visits.
    async fn anonymous_visitors(&self) -> i64 {
        count(self.stats.anonymous_visitors())
    }

    async fn total_duration_minutes(&self) -> i64 {
        count(self.stats.total_duration_minutes())
    }

    /// Per visit; 0 when there is none.
    async fn average_duration_minutes(&self) -> f64 {
        self.stats.average_duration_minutes()
    }

    /// The most visits online at one instant (each over `[visitAt,
    /// lastOnlineAt]`), and the earliest instant it is reached; null when
    /// there is no visit.
    async fn peak_concurrent_viewers(&self) -> Option<ConcurrencyPeak> {
        self.stats.peak().map(|p| ConcurrencyPeak {
            viewers: count(p.viewers),
            at: instant(p.at),
        })
    }

    /// Visits by province; key null where the platform gave none.
    async fn by_province(
        &self,
        #[graphql(default_with = "Some(10)")] top: Option<i32>,
    ) -> async_graphql::Result<Vec<StatsBucket>> {
        self.buckets(Dimension::Province, top)
    }

    /// Visits by city; key null where the platform gave none.
    async fn by_city(
        &self,
        #[graphql(default_with = "Some(10)")] top: Option<i32>,
    ) -> async_graphql::Result<Vec<StatsBucket>> {
        self.buckets(Dimension::City, top)
    }

    /// Visits by device; key null where the platform gave none.
    async fn by_device(
        &self,
        #[graphql(default_with = "Some(10)")] top: Option<i32>,
    ) -> async_graphql::Result<Vec<StatsBucket>> {
        self.buckets(Dimension::Device, top)
    }

    /// Visits by the referer URL's host, lower-cased; key null where there
    /// is no referer or it has no host.
    async fn by_referer_host(
        &self,
        #[graphql(default_with = "Some(10)")] top: Option<i32>,
    ) -> async_graphql::Result<Vec<StatsBucket>> {
        self.buckets(Dimension::RefererHost, top)
    }

    /// Consecutive buckets aligned to the interval in the query's time zone,
    /// from the one holding `range.from` to the one holding the instant
    /// before `range.to`, oldest first, empty ones included.
    async fn timeline(
        &self,
        interval: StatsInterval,
    ) -> async_graphql::Result<Vec<TimelineBucket>> {
        let bounds = bounds(self.range, self.zone, interval).map_err(|e| e.extend())?;
        Ok(self
            .stats
            .timeline(&bounds)
            .into_iter()
            .map(|row| TimelineBucket {
                start: instant(row.start),
                visits: count(row.visits),
                unique_visitors: count(row.unique_visitors),
                peak_concurrent_viewers: count(row.peak_concurrent_viewers),
            })
            .collect())
    }
}

/// Visits that share a key. Sorted by visits descending, then key ascending
/// with null last.
#[derive(SimpleObject)]
pub struct StatsBucket {
    pub key: Option<String>,
    pub visits: i64,
    pub unique_visitors: i64,
}

#[derive(SimpleObject)]
pub struct ConcurrencyPeak {
    pub viewers: i64,
    pub at: DateTime,
}

#[derive(SimpleObject)]
pub struct TimelineBucket {
    pub start: DateTime,
    pub visits: i64,
    pub unique_visitors: i64,
    /// The most visits online at one instant within [start, next start),
    /// counting visits that started before and are still online.
    pub peak_concurrent_viewers: i64,
}

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsInterval {
    Minute,
    FiveMinutes,
    FifteenMinutes,
    Hour,
    /// From local midnight to local midnight: 23 or 25 hours across a clock change.
    Day,
}

impl From<StatsInterval> for Interval {
    fn from(i: StatsInterval) -> Self {
        match i {
            StatsInterval::Minute => Self::Minute,
            StatsInterval::FiveMinutes => Self::FiveMinutes,
            StatsInterval::FifteenMinutes => Self::FifteenMinutes,
            StatsInterval::Hour => Self::Hour,
            StatsInterval::Day => Self::Day,
        }
    }
}

/// The playground's statistics example, for an activity: a subscription,
/// so the tab shows the figures filling in, then moving with each new visit
/// (the playground draws its timeline).
pub fn example_query(activity: u64) -> String {
    format!(
        "# Statistics of the last 7 days, by day in Shanghai time: press the run button.
# As a subscription the figures fill in (progress), then move with each new
# visit; write `query` instead of `subscription` for a one-off answer.
subscription VisitStats {{
  userVisitStats(activityId: \"{activity}\", timeZone: \"Asia/Shanghai\") {{
    progress {{ pagesRead pagesNeeded complete }}
    range {{ from to }}
    visits
    uniqueVisitors
    signedInVisitors
    anonymousVisitors
    averageDurationMinutes
    peakConcurrentViewers {{ viewers at }}
    byProvince(top: 5) {{ key visits uniqueVisitors }}
    byDevice {{ key visits uniqueVisitors }}
    byRefererHost {{ key visits uniqueVisitors }}
    timeline(interval: DAY) {{ start visits uniqueVisitors peakConcurrentViewers }}
  }}
}}
"
    )
}
