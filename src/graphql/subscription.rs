//! `type Subscription { userVisitAdded(activityId: ID!): UserVisit! }`
//! (SPEC §2, "Live visits"), served by [`crate::live`] over WebSocket,
//! Server-Sent Events and multipart HTTP ([`crate::http`]).

use std::borrow::Cow;
use std::sync::Arc;

use async_graphql::parser::types::Field;
use async_graphql::registry::Registry;
use async_graphql::{
    Context, ContextSelectionSet, ErrorExtensions, ID, OutputType, Positioned, ServerResult,
    Subscription as SubscriptionObject, Value,
};
use futures::Stream;

use super::types::UserVisit;
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
            let (Ok(live), Ok(connection)) =
                (ctx.data::<Arc<Live>>(), ctx.data::<Arc<LiveConnection>>())
            else {
                return Err(GatewayError::bad_input(
                    "subscriptions are served on /graphql over WebSocket (graphql-transport-ws), Server-Sent Events or multipart HTTP",
                ));
            };
            let activity = super::readable_activity(Some(&connection.principal), &activity_id)?;
            live.subscribe(activity, connection)
        })();
        result.map_err(|e| e.extend())
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
