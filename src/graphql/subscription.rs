//! The subscriptions: `userVisitAdded`, an activity's new visits, fed by
//! [`crate::live`]'s one poller per activity; and `userVisitStats`, the
//! statistics filling in and then moving ([`super::stats_follow`]). Served
//! over WebSocket, Server-Sent Events and multipart HTTP ([`crate::http`]).

use std::borrow::Cow;
use std::sync::Arc;

use async_graphql::parser::types::Field;
use async_graphql::registry::Registry;
use async_graphql::{
    Context, ContextSelectionSet, ErrorExtensions, ID, OutputType, Positioned, ServerResult,
    Subscription as SubscriptionObject, Value,
};
use futures::Stream;

use chrono::Utc;

use super::stats::{Asked, UserVisitStats};
use super::stats_follow::{self, Follow};
use super::types::UserVisit;
use super::{Resolver, TimeRange};
use crate::error::GatewayError;
use crate::live::{Live, LiveConnection, LiveVisit};

pub struct Subscription;

#[SubscriptionObject]
impl Subscription {
    /// Each new visit of the activity (one not there when the subscription
    /// started), once, in the platform's order, within `LIVE_POLL_SECONDS`
    /// of its arrival on the platform. Served on `/graphql` over WebSocket
    /// (`graphql-transport-ws`), and over a POST asking for Server-Sent
    /// Events (`Accept: text/event-stream`) or multipart
    /// (`Accept: multipart/mixed;subscriptionSpec=1.0`).
    async fn user_visit_added(
        &self,
        ctx: &Context<'_>,
        activity_id: ID,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<LiveVisit>> + use<>> {
        let result = (|| {
            let (live, connection) = live_of(ctx)?;
            let activity = super::readable_activity(Some(&connection.principal), &activity_id)?;
            live.subscribe(activity, connection)
        })();
        result.map_err(|e| e.extend())
    }

    /// The statistics of `userVisitStats`, filling in: a first result at
    /// once from what is cached (`progress.complete` false while pages are
    /// missing), a new one as pages arrive (at most one a second), and a
    /// complete one equal to the query's. A range without `to`, or with `to`
    /// ahead, then stays open: each new visit the live poller brings moves
    /// the figures, the range's end moving with now.
    async fn user_visit_stats(
        &self,
        ctx: &Context<'_>,
        activity_id: ID,
        range: Option<TimeRange>,
        #[graphql(default_with = "Some(\"UTC\".to_owned())")] time_zone: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<UserVisitStats>> + use<>>
    {
        let result = (|| {
            let (live, connection) = live_of(ctx)?;
            let resolver = ctx
                .data::<Arc<Resolver>>()
                .map_err(|_| GatewayError::internal("the resolver is not configured"))?;
            let now = Utc::now();
            let asked = Asked::check(
                ctx,
                Some(&connection.principal),
                &resolver.range_policy,
                &activity_id,
                range.as_ref(),
                time_zone.as_deref(),
                now,
            )?;
            let asked_to = range.as_ref().and_then(|r| r.to.map(|t| t.0));
            let until = asked_to.filter(|to| *to > now);
            stats_follow::follow(Follow {
                resolver: resolver.clone(),
                activity: asked.activity,
                range: asked.range,
                zone: asked.zone,
                until,
                open: asked_to.is_none() || until.is_some(),
                live: live.clone(),
                connection: connection.clone(),
            })
        })();
        result.map_err(|e| e.extend())
    }
}

/// The live state and the subscriber's connection, which only the
/// subscription doors provide.
fn live_of<'a>(
    ctx: &'a Context<'_>,
) -> Result<(&'a Arc<Live>, &'a Arc<LiveConnection>), GatewayError> {
    match (ctx.data::<Arc<Live>>(), ctx.data::<Arc<LiveConnection>>()) {
        (Ok(live), Ok(connection)) => Ok((live, connection)),
        _ => Err(GatewayError::bad_input(
            "subscriptions are served on /graphql over WebSocket (graphql-transport-ws), Server-Sent Events or multipart HTTP",
        )),
    }
}

/// A live visit is a `UserVisit`, resolved by the same code.
impl OutputType for LiveVisit {
    fn type_name() -> Cow<'static, str> {
        <UserVisit<'static> as OutputType>::type_name()
    }

    fn create_type_info(registry: &mut Registry) -> String {
        <UserVisit<'static> as OutputType>::create_type_info(registry)
    }

    async fn resolve(
        &self,
        ctx: &ContextSelectionSet<'_>,
        field: &Positioned<Field>,
    ) -> ServerResult<Value> {
        UserVisit(&self.0).resolve(ctx, field).await
    }
}
