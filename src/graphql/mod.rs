//! The GraphQL schema (docs/api.md) and its one resolver, `userVisits`: it turns
//! arguments into a validated plan, runs it, and shapes the connection.

pub mod cost;
pub mod cursor;
pub mod documents;
pub mod manifest;
pub mod persisted;
pub mod scalars;
pub mod stats;
mod stats_follow;
pub mod subscription;
pub mod types;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use async_graphql::{Context, EmptyMutation, ErrorExtensions, ID, InputObject, Object, Schema};
use chrono::Utc;
use tokio::sync::Semaphore;

use crate::auth::Principal;
use crate::cache::PageCache;
use crate::config::ServerSettings;
use crate::error::{ErrorCode, GatewayError};
use crate::paging::{self, ActivityId, Direction, RangePolicy, ResolvedRange, SliceArgs};
use crate::response_cache::Facts;
use crate::visits::{self, FetchPolicy};
use cursor::Cursor;
use scalars::DateTime;
use types::UserVisitConnection;

pub type GatewaySchema = Schema<Query, EmptyMutation, subscription::Subscription>;

/// What the resolver needs, shared by every request.
pub struct Resolver {
    pub cache: PageCache,
    pub range_policy: RangePolicy,
    pub fetch_policy: FetchPolicy,
    pub default_page_size: u32,
    pub max_page_size: u32,
    /// `userVisitStats`: settled windows' statistics, and their own bound.
    pub stats: crate::stats::load::StatsLoader,
}

/// What one GraphQL request's fields share, made by the HTTP layer and
/// read back by it once the request has run.
pub struct RequestScope {
    /// The instant the request is answered for, read once so the response
    /// cache's pin bucket and the pinned range agree.
    pub now: chrono::DateTime<Utc>,
    /// Platform requests this request may have in flight, all fields together
    /// (`WINDOW_CONCURRENCY`).
    pub platform_slots: Arc<Semaphore>,
    /// What the fields served: freshness and the activities touched.
    pub facts: Mutex<Facts>,
    /// Platform requests this request's statistics were allowed so far
    /// (`STATS_MAX_PLATFORM_REQUESTS`, all `userVisitStats` fields together).
    pub stats_requests: AtomicU64,
}

impl RequestScope {
    pub fn new(now: chrono::DateTime<Utc>, window_concurrency: usize) -> Arc<Self> {
        Arc::new(Self {
            now,
            platform_slots: Arc::new(Semaphore::new(window_concurrency.max(1))),
            facts: Mutex::new(Facts::default()),
            stats_requests: AtomicU64::new(0),
        })
    }

    fn record(&self, facts: impl FnOnce(&mut Facts)) {
        facts(&mut self.facts.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The facts of every field, once the request has run.
    pub fn facts(&self) -> Facts {
        self.facts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A half-open range `[from, to)`; `to` defaults to now.
#[derive(InputObject, Debug, Clone, PartialEq)]
pub struct TimeRange {
    pub from: DateTime,
    pub to: Option<DateTime>,
}

pub struct Query;

#[Object]
impl Query {
    /// The people who watched an activity, oldest visit first, as a Relay
    /// connection. `range` defaults to the 7 days ending now; `first`
    /// defaults to 20.
    #[allow(clippy::too_many_arguments)]
    async fn user_visits(
        &self,
        ctx: &Context<'_>,
        activity_id: ID,
        range: Option<TimeRange>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
    ) -> async_graphql::Result<UserVisitConnection> {
        // Every failure leaves here through `extend`, which carries its code;
        // a bare `?` would turn a GatewayError into a codeless message.
        let result = async {
            let (resolver, scope) = field_context(ctx)?;
            let activity = readable_activity(ctx.data_opt::<Principal>(), &activity_id)?;
            scope.record(|f| f.activities.push(activity));
            let args = VisitsArgs {
                activity,
                range,
                first,
                after,
                last,
                before,
            };
            // The plan the cost stage made at admission, else (a request
            // that did not come through it) one made here.
            let request = match ctx
                .data_opt::<VisitPlans>()
                .and_then(|plans| plans.get(&args, scope.now))
            {
                Some(planned) => planned?,
                None => resolver.plan(&args, scope.now)?,
            };
            let (connection, freshness) = resolver.run(request, &scope).await?;
            scope.record(|f| f.freshness = f.freshness.and(freshness));
            Ok(connection)
        };
        result.await.map_err(|e: GatewayError| e.extend())
    }

    /// Statistics of an activity's visits over a range, for dashboards:
    /// totals, distinct visitors, where they came from, and viewers online
    /// over time. `range` as in `userVisits`; `timeZone` is an IANA name
    /// (such as "Asia/Shanghai") for the timeline's buckets.
    async fn user_visit_stats(
        &self,
        ctx: &Context<'_>,
        activity_id: ID,
        range: Option<TimeRange>,
        #[graphql(default_with = "Some(\"UTC\".to_owned())")] time_zone: Option<String>,
    ) -> async_graphql::Result<stats::UserVisitStats> {
        stats::user_visit_stats(ctx, activity_id, range, time_zone).await
    }
}

/// The resolver and the request's scope, for a field of this schema. A
/// request that did not come through the HTTP layer (a test executing the
/// schema directly) gets a scope of its own.
fn field_context(ctx: &Context<'_>) -> Result<(Arc<Resolver>, Arc<RequestScope>), GatewayError> {
    let resolver = ctx
        .data::<Arc<Resolver>>()
        .map_err(|_| GatewayError::internal("the resolver is not configured"))?;
    let scope = match ctx.data_opt::<Arc<RequestScope>>() {
        Some(scope) => scope.clone(),
        None => RequestScope::new(Utc::now(), resolver.fetch_policy.window_concurrency),
    };
    Ok((resolver.clone(), scope))
}

/// A field's activity, parsed and checked against the caller's scope: before
/// anything is planned, cached, counted or fetched for it.
pub(crate) fn readable_activity(
    principal: Option<&Principal>,
    raw: &str,
) -> Result<ActivityId, GatewayError> {
    let activity = ActivityId::parse(raw)?;
    if !principal.is_some_and(|p| p.may_read(activity)) {
        return Err(GatewayError::new(
            ErrorCode::Forbidden,
            format!("this client may not read activity {activity}"),
        ));
    }
    Ok(activity)
}

/// A `userVisits` field's arguments, its activity parsed: all its plan
/// depends on besides the request's `now`.
#[derive(Debug, Clone, PartialEq)]
pub struct VisitsArgs {
    pub activity: ActivityId,
    pub range: Option<TimeRange>,
    pub first: Option<i32>,
    pub after: Option<String>,
    pub last: Option<i32>,
    pub before: Option<String>,
}

/// The `userVisits` plans the cost stage made for one request, by
/// arguments, at the request's `now`: kept in the request's data so that
/// each field is planned once, and the resolver runs what was costed.
#[derive(Debug, Clone)]
pub struct VisitPlans {
    now: chrono::DateTime<Utc>,
    plans: Vec<(VisitsArgs, Result<VisitsRequest, GatewayError>)>,
}

impl VisitPlans {
    pub(crate) fn new(now: chrono::DateTime<Utc>) -> Self {
        Self {
            now,
            plans: Vec::new(),
        }
    }

    /// The plan for `args` at `now`: made once, whoever asks first.
    pub(crate) fn plan(
        &mut self,
        resolver: &Resolver,
        args: VisitsArgs,
    ) -> Result<VisitsRequest, GatewayError> {
        if let Some(planned) = self.get(&args, self.now) {
            return planned;
        }
        let planned = resolver.plan(&args, self.now);
        self.plans.push((args, planned.clone()));
        planned
    }

    /// The plan made for `args`, if one was, at this `now` (a plan made on
    /// another clock is not this request's).
    fn get(
        &self,
        args: &VisitsArgs,
        now: chrono::DateTime<Utc>,
    ) -> Option<Result<VisitsRequest, GatewayError>> {
        if now != self.now {
            return None;
        }
        self.plans
            .iter()
            .find(|(a, _)| a == args)
            .map(|(_, planned)| planned.clone())
    }
}

/// A validated `userVisits` request: nothing here can reach the platform
/// unless it passed every check of its arguments (docs/api.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisitsRequest {
    pub activity: ActivityId,
    pub range: ResolvedRange,
    pub args: SliceArgs,
}

impl VisitsRequest {
    /// The most platform requests this request can make (docs/api.md, "What
    /// one request may cost").
    pub fn worst_case_requests(&self, upstream_page_size: u64) -> u64 {
        let slice_len = match self.args.direction {
            Direction::Forward { first, .. } => first,
            Direction::Backward { last, .. } => last,
        };
        paging::worst_case_requests(self.range, slice_len, upstream_page_size)
    }
}

impl Resolver {
    /// A field's arguments checked and turned into a plan, at `now`. Once a
    /// field: through [`VisitPlans`] when the request came through admission.
    pub fn plan(
        &self,
        args: &VisitsArgs,
        now: chrono::DateTime<Utc>,
    ) -> Result<VisitsRequest, GatewayError> {
        #[cfg(test)]
        tests::PLANS_MADE.with(|n| n.set(n.get() + 1));
        let VisitsArgs {
            activity,
            ref range,
            first,
            ref after,
            last,
            ref before,
        } = *args;
        if first.is_some() && last.is_some() {
            return Err(GatewayError::bad_input(
                "first and last cannot be used together: page forward with first/after or backward with last/before",
            ));
        }
        let first = first.map(|n| self.page_size("first", n)).transpose()?;
        let last = last.map(|n| self.page_size("last", n)).transpose()?;
        let after = after
            .as_deref()
            .map(|c| self.decode_cursor("after", c, activity, now))
            .transpose()?;
        let before = before
            .as_deref()
            .map(|c| self.decode_cursor("before", c, activity, now))
            .transpose()?;

        let cursor_range = match (after, before) {
            (Some((a, _)), Some((b, _))) if a != b => {
                return Err(GatewayError::bad_input(
                    "after and before come from different ranges",
                ));
            }
            (Some((range, _)), _) | (_, Some((range, _))) => Some(range),
            _ => None,
        };
        let range = match (cursor_range, range.as_ref()) {
            (Some(cursor), None) => cursor,
            (Some(cursor), Some(input)) => {
                // The client may repeat the range it started with: same `from`,
                // and a `to` that is omitted, equal, or in the future (pinned).
                let to_matches = input
                    .to
                    .is_none_or(|t| paging::truncate_ms(t.0) == cursor.to() || t.0 > now);
                if paging::truncate_ms(input.from.0) != cursor.from() || !to_matches {
                    return Err(GatewayError::bad_input(
                        "the cursor belongs to another range: omit range when paging, or pass connection.range",
                    ));
                }
                cursor
            }
            (None, input) => paging::resolve_range(
                input.map(|r| r.from.0),
                input.and_then(|r| r.to.map(|t| t.0)),
                now,
                &self.range_policy,
            )?,
        };

        let offset = |c: Option<(ResolvedRange, u64)>| c.map(|(_, offset)| offset);
        let args = match last {
            Some(last) => SliceArgs {
                direction: Direction::Backward {
                    last,
                    before: offset(before),
                },
                other_bound: offset(after),
            },
            None => SliceArgs {
                direction: Direction::Forward {
                    first: first.unwrap_or(u64::from(self.default_page_size)),
                    after: offset(after),
                },
                other_bound: offset(before),
            },
        };
        Ok(VisitsRequest {
            activity,
            range,
            args,
        })
    }

    fn page_size(&self, name: &str, n: i32) -> Result<u64, GatewayError> {
        let max = self.max_page_size;
        match u32::try_from(n) {
            Ok(n) if (1..=max).contains(&n) => Ok(u64::from(n)),
            _ => Err(GatewayError::bad_input(format!(
                "{name} must be between 1 and {max}, got {n}"
            ))),
        }
    }

    /// A cursor's range, held to the rules of a range passed in, and its offset.
    fn decode_cursor(
        &self,
        name: &str,
        raw: &str,
        activity: ActivityId,
        now: chrono::DateTime<Utc>,
    ) -> Result<(ResolvedRange, u64), GatewayError> {
        let cursor = Cursor::decode(raw).ok_or_else(|| {
            GatewayError::bad_input(format!("{name} is not a cursor returned by userVisits"))
        })?;
        if cursor.activity != activity {
            return Err(GatewayError::bad_input(format!(
                "{name} is a cursor of another activity"
            )));
        }
        let range =
            ResolvedRange::new(cursor.from, cursor.to, now, &self.range_policy).map_err(|e| {
                GatewayError::bad_input(format!(
                    "{name} is not a cursor returned by userVisits: its {}",
                    e.message
                ))
            })?;
        Ok((range, cursor.offset))
    }

    /// Runs a plan with the request's platform slots, on its clock.
    pub async fn run(
        &self,
        req: VisitsRequest,
        scope: &RequestScope,
    ) -> Result<(UserVisitConnection, crate::cache::Freshness), GatewayError> {
        let loaded = visits::load(
            &self.cache,
            self.fetch_policy,
            &scope.platform_slots,
            req.activity,
            req.range,
            req.args,
            scope.now,
        )
        .await?;
        let connection = UserVisitConnection {
            activity: req.activity,
            range: req.range,
            items: loaded.items,
            has_next_page: loaded.slice.has_next_page,
            has_previous_page: loaded.slice.has_previous_page,
            total: loaded.total,
        };
        Ok((connection, loaded.freshness))
    }
}

/// The playground's and the demo's example query.
pub const EXAMPLE_QUERY: &str = "query NewestVisits($activityId: ID!, $last: Int) {
  userVisits(activityId: $activityId, last: $last) {
    totalCount
    range { from to }
    pageInfo { hasPreviousPage startCursor }
    nodes { nickname isAnonymous province city visitAt durationMinutes device }
  }
}
";

/// The schema. What reaches it has passed the admission pipeline
/// ([`crate::http::admission`]), whatever door it came through.
pub fn build_schema(resolver: Option<Arc<Resolver>>, settings: &ServerSettings) -> GatewaySchema {
    let mut builder = Schema::build(Query, EmptyMutation, subscription::Subscription)
        .limit_depth(settings.max_query_depth as usize)
        .limit_complexity(settings.max_query_complexity as usize);
    if !settings.introspection_enabled {
        builder = builder.disable_introspection();
    }
    if let Some(r) = resolver {
        builder = builder.data(r);
    }
    builder.finish()
}

/// The SDL, as committed in `schema/schema.graphql`.
pub fn sdl() -> String {
    build_schema(None, &ServerSettings::default()).sdl()
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::time::Duration;

    use async_graphql::{Request, Variables};

    use super::*;
    use crate::cache::TtlPolicy;
    use crate::page::{Page, PageRequest, PageSource};
    use crate::telemetry::Metrics;

    thread_local! {
        /// How many times `Resolver::plan` ran on this thread.
        pub(super) static PLANS_MADE: Cell<u64> = const { Cell::new(0) };
    }

    fn plans_made() -> u64 {
        PLANS_MADE.with(Cell::get)
    }

    /// A platform whose windows are all empty.
    struct Empty;

    impl PageSource for Empty {
        fn fetch(
            &self,
            req: PageRequest,
            _: tokio::time::Instant,
        ) -> futures::future::BoxFuture<'_, Result<Page, GatewayError>> {
            let body = format!(
                r#"{{"pager":{{"pageSize":{},"total":0}},"items":[]}}"#,
                req.page_size
            );
            Box::pin(async move { crate::page::parse(body.as_bytes(), req.page, req.page_size) })
        }
    }

    fn resolver() -> Arc<Resolver> {
        let ttl = TtlPolicy {
            recent: Duration::from_secs(10),
            settled: Duration::from_secs(100),
            grace: Duration::from_secs(100),
            refresh_deadline: Duration::from_secs(5),
            negative: Duration::ZERO,
        };
        Arc::new(Resolver {
            cache: PageCache::new(Arc::new(Empty), 1 << 20, ttl, Metrics::new()),
            range_policy: RangePolicy::default(),
            fetch_policy: FetchPolicy {
                upstream_page_size: 100,
                window_concurrency: 4,
                deadline: Duration::from_secs(5),
            },
            default_page_size: 20,
            max_page_size: 100,
            stats: crate::stats::load::StatsLoader::new(1 << 20, 200),
        })
    }

    /// Three fields, two of them the same but for their alias, and one
    /// whose arguments fail to plan.
    const QUERY: &str = r#"{
      a: userVisits(activityId: "7", first: 5) { totalCount }
      b: userVisits(activityId: "7", last: 3) { totalCount }
      c: userVisits(activityId: "7", first: 5) { totalCount }
      d: userVisits(activityId: "7", first: 5, last: 3) { totalCount }
    }"#;

    /// The cost stage plans each distinct field once, and the resolver runs
    /// those plans without planning again; without them (a request that did
    /// not come through admission) it plans each field itself.
    #[tokio::test]
    async fn each_field_is_planned_once_per_request() {
        let resolver = resolver();
        let schema = build_schema(Some(resolver.clone()), &ServerSettings::default());
        let now = Utc::now();
        let doc = async_graphql::parser::parse_query(QUERY).unwrap();

        let before = plans_made();
        let cost = cost::worst_case(&resolver, &doc, None, &Variables::default(), now);
        assert_eq!(plans_made() - before, 3, "a and c share one plan");
        assert!(cost.platform_requests > 0);

        let run = |plans: Option<VisitPlans>| {
            let mut request = Request::new(QUERY)
                .data(Principal::anonymous())
                .data(RequestScope::new(now, 4));
            if let Some(plans) = plans {
                request = request.data(plans);
            }
            schema.execute(request)
        };
        let before = plans_made();
        let admitted = run(Some(cost.visits)).await;
        assert_eq!(plans_made() - before, 0, "the resolver planned again");

        let before = plans_made();
        let direct = run(None).await;
        assert_eq!(plans_made() - before, 4, "one plan a field run");
        // The same answer either way, the bad field's error included.
        assert_eq!(
            serde_json::to_value(&admitted).unwrap(),
            serde_json::to_value(&direct).unwrap()
        );
        assert_eq!(admitted.errors.len(), 1, "{:?}", admitted.errors);
        assert_eq!(admitted.errors[0].path.len(), 1);
    }
}
