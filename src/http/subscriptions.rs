//! What every subscription door (WebSocket, SSE, multipart) does with an
//! admitted subscription: count it against the client's limits, then join
//! the shared execution of its distinct subscription ([`fanout`]), so each
//! new visit is resolved and serialised once for all its subscribers.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use async_graphql::parser::types::OperationType;
use axum::http::StatusCode;
use futures::StreamExt;
use futures::stream::BoxStream;

use chrono::{DateTime, Utc};

use super::admission::{Admitted, Client};
use super::refusal::Refusal;
use super::{AppState, annotate, within_deadline};
use crate::graphql::RequestScope;
use crate::graphql_http::{self, Params};
use crate::live::fanout::{Delivery, Key, Output, Payload};
use crate::live::{LiveConnection, SubscriptionGuard};
use crate::response_cache::Facts;
use crate::upstream::fair::{Caller, Priority};

/// A subscription joined: its deliveries, and its place in the limits
/// (held as long as the subscription lives).
pub struct Joined {
    pub deliveries: BoxStream<'static, Delivery>,
    pub guard: SubscriptionGuard,
}

/// Whether an admitted document runs a subscription (the doors hand those
/// to [`join`]; anything else is executed as a request).
pub fn is_subscription(admitted: &Admitted, params: &Params) -> bool {
    admitted.parsed.as_deref().is_some_and(|doc| {
        graphql_http::operation_type(doc, params.operation_name.as_deref())
            == Some(OperationType::Subscription)
    })
}

/// Whether each result is the whole state: a subscription following
/// statistics only (each result is all the figures, so a subscriber joining
/// a running execution may be given the latest), not visits (of which a
/// subscriber gets only those after it subscribed).
fn snapshots(admitted: &Admitted, params: &Params) -> bool {
    let fields = admitted.parsed.as_deref().map_or_else(Vec::new, |doc| {
        graphql_http::root_fields(doc, params.operation_name.as_deref())
    });
    !fields.is_empty() && fields.iter().all(|f| *f == "userVisitStats")
}

/// Counts the subscription against `connection`'s limits and joins its
/// shared execution, which runs with `connection`'s credential.
pub fn join(
    state: &Arc<AppState>,
    admitted: Admitted,
    params: &Params,
    connection: &LiveConnection,
) -> Result<Joined, Refusal> {
    let guard = state
        .live
        .reserve(connection)
        .map_err(|e| Refusal::new(StatusCode::TOO_MANY_REQUESTS, e.code, e.message))?;
    // One execution per request and scope: what a credential may read
    // changes the answer, nothing else about the caller does. The scope's
    // contents, not its holder's name: two JWTs of one subject may name
    // different activities, and a key's scope may change on a reload.
    let scope = connection.principal.scope.canonical();
    let variables = params
        .variables
        .as_ref()
        .map(|v| serde_json::to_string(v).unwrap_or_default())
        .unwrap_or_default();
    let key = Key(format!(
        "{scope}\u{0}{}\u{0}{variables}\u{0}{}",
        params.operation_name.as_deref().unwrap_or(""),
        admitted.query
    )
    .into());
    let snapshots = snapshots(&admitted, params);
    let member = state
        .live
        .fanout
        .join(key, state.live.policy.buffer, || {
            let shared = Arc::new(LiveConnection {
                principal: connection.principal.clone(),
                client: connection.client.clone(),
                open: Arc::new(AtomicUsize::new(0)),
                counted: false,
            });
            let request = admitted
                .request
                .data(connection.principal.clone())
                .data(shared)
                .data(state.live.clone());
            let state = state.clone();
            state
                .schema
                .execute_stream(request)
                .map(move |mut response| {
                    annotate(&state, &mut response, &Facts::default());
                    let replay = snapshots && response.errors.is_empty();
                    let payload = Payload::from(serde_json::to_string(&response).unwrap_or_else(|e| {
                        tracing::error!(error = %e, "cannot serialise a subscription's result");
                        r#"{"data":null,"errors":[{"message":"internal error","extensions":{"code":"INTERNAL"}}]}"#.to_owned()
                    }));
                    Output { payload, replay }
                })
                .boxed()
        });
    Ok(Joined {
        deliveries: member.into_stream().boxed(),
        guard,
    })
}

/// An operation that is not a subscription, sent through a subscription
/// door (a WebSocket `subscribe`, an SSE or multipart POST): run as the
/// POST door runs it, with its own request scope, as its client at the
/// platform budget, within `REQUEST_TIMEOUT_MS`; its result serialised
/// with every error coded.
pub async fn execute_once(
    state: &AppState,
    admitted: Admitted,
    client: &Client,
    connection: Arc<LiveConnection>,
    now: DateTime<Utc>,
) -> Result<String, Refusal> {
    let scope = RequestScope::new(now, state.limits.window_concurrency);
    // Its platform requests take turns with other clients' (docs/operations.md).
    let caller = Caller::new(client.bucket.clone(), Priority::Interactive);
    let request = admitted
        .request
        .data(client.principal.clone())
        .data(scope.clone())
        .data(connection)
        .data(state.live.clone());
    let execution = caller.scope(state.schema.execute(request));
    let mut response = within_deadline(state, execution).await?;
    annotate(state, &mut response, &scope.facts());
    Ok(serde_json::to_string(&response).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot serialise a GraphQL response");
        r#"{"errors":[{"message":"internal error","extensions":{"code":"INTERNAL"}}]}"#.to_owned()
    }))
}

/// The payload that tells a subscriber it fell behind (it then ends).
pub fn too_slow(missed: u64) -> String {
    let error = crate::live::too_slow(missed);
    let message = error.message;
    serde_json::json!({ "data": null, "errors": [{ "message": message, "extensions": {
        "code": crate::live::SUBSCRIBER_TOO_SLOW } }] })
    .to_string()
}
