//! The subscription doors over plain HTTP (docs/subscriptions-http.md), for
//! networks and proxies that do not pass WebSockets: a `POST /graphql` whose
//! `Accept` asks for a stream ([`graphql_http::negotiate_stream`]) gets its
//! results as
//! - Server-Sent Events, as the GraphQL over SSE protocol says in its
//!   distinct connections mode (the npm `graphql-sse` client): each result an
//!   `event: next`, the end an `event: complete`, keep-alive comments between;
//! - or Apollo's multipart HTTP subscriptions (Apollo Client's `HttpLink`):
//!   each result a `{"payload": ...}` part of a `multipart/mixed` body whose
//!   boundary is `graphql`, `{}` parts as heartbeats, the closing boundary
//!   at the end.
//!
//! The request passes what every door does: the credential of its
//! `Authorization` header and the client's rate, the body's type and size,
//! the [`admission`] pipeline. A refusal before the stream starts is an
//! ordinary HTTP error with a GraphQL error body (401, 403, 413, 429; a
//! request error is a 400, as in `application/graphql-response+json`). A
//! stream counts against its client's open connections
//! (`LIVE_MAX_CONNECTIONS_PER_CLIENT`) like a socket; heartbeats come every
//! `LIVE_PING_SECONDS`; a client that takes nothing for as long as a socket
//! may block is dropped; on shutdown every stream ends with its protocol's
//! end, and the process waits for it. A query (not a subscription) is
//! answered as one result, then the end.
//!
//! Traced like a POST: the server span of the request, and under it the
//! operation's span. A subscription's covers its setup, up to joining its
//! shared execution, as a WebSocket's upgrade span does: both end as the
//! stream starts, and its results are not spans.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::AppState;
use super::admission::{self, Credential, Door};
use super::admit_post;
use super::refusal::Refusal;
use super::subscriptions::{self, Joined};
use crate::graphql_http::{MediaType, Params, StreamProtocol};
use crate::live::fanout::Delivery;
use crate::live::{ConnectionGuard, LiveConnection};

/// Frames made but not yet taken by the connection.
const QUEUE: usize = 16;
/// On shutdown, how long the end may take to be written.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// `POST /graphql` asking for a stream: admitted like any request, then a
/// subscription's results until it ends, or a query's one result.
pub async fn serve(
    state: Arc<AppState>,
    protocol: StreamProtocol,
    parts: Parts,
    body: Body,
) -> Response {
    // A stream's client reads no `200` with `data: null`: a request error
    // is a 400, as in `application/graphql-response+json`.
    let refused = |r: Refusal| r.into_response(&state.metrics, Some(MediaType::GraphQLResponse));
    let (client, body) = match admit_post(&state, &parts, body).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refused(refusal),
    };
    let params = match Params::from_json(&body) {
        Ok(params) => params,
        Err(message) => return refused(Refusal::malformed(message)),
    };
    let now = chrono::Utc::now();
    let admitted = match admission::document(&state, &params, Door::Stream, now) {
        Ok(admitted) => admitted,
        Err(refusal) => return refused(refusal),
    };
    let operation = if crate::otel::enabled() {
        super::operation_span(
            admitted.parsed.as_deref(),
            params.operation_name.as_deref(),
            transport(protocol),
        )
    } else {
        tracing::Span::none()
    };
    let connection = match state.live.connection_opened(&client.bucket) {
        Ok(guard) => guard,
        Err(e) => {
            return refused(Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                e.code,
                e.message,
            ));
        }
    };
    let open = Arc::new(AtomicUsize::new(0));
    let live_connection = LiveConnection {
        principal: client.principal.clone(),
        client: client.bucket.clone(),
        open: open.clone(),
        counted: true,
    };
    if subscriptions::is_subscription(&admitted, &params) {
        // Served from the shared execution of its distinct subscription.
        let joined =
            operation.in_scope(|| subscriptions::join(&state, admitted, &params, &live_connection));
        let joined = match joined {
            Ok(joined) => joined,
            Err(refusal) => {
                // Like a resolver's refusal: one result, then the end.
                drop(connection);
                return single(protocol, refusal.into_result(&state.metrics).as_bytes());
            }
        };
        let (frames, taken) = mpsc::channel(QUEUE);
        let credential = Credential::new(
            admission::authorization(&parts),
            admission::address(&state, &parts),
            client.principal.clone(),
        );
        let stream = Stream {
            protocol,
            joined,
            credential,
            open,
            connection,
        };
        tokio::spawn(produce(state, stream, frames));
        return respond(protocol, body_of(taken));
    }
    // A query (or anything else that is not a subscription): one result.
    let payload =
        subscriptions::execute_once(&state, admitted, &client, Arc::new(live_connection), now)
            .instrument(operation)
            .await;
    let payload = match payload {
        Ok(payload) => payload,
        Err(refusal) => return refused(refusal),
    };
    drop(connection);
    single(protocol, payload.as_bytes())
}

/// The operation span's `visits.transport`.
fn transport(protocol: StreamProtocol) -> &'static str {
    match protocol {
        StreamProtocol::Sse => "sse",
        StreamProtocol::Multipart => "multipart",
    }
}

/// A whole stream of one result, then the end: a query's answer, or a
/// subscription refused before it started.
fn single(protocol: StreamProtocol, payload: &[u8]) -> Response {
    let mut whole = Vec::new();
    whole.extend_from_slice(opening(protocol));
    whole.extend_from_slice(&result(protocol, payload));
    whole.extend_from_slice(end(protocol));
    respond(protocol, Body::from(whole))
}

fn respond(protocol: StreamProtocol, body: Body) -> Response {
    let content_type = match protocol {
        StreamProtocol::Sse => "text/event-stream; charset=utf-8",
        StreamProtocol::Multipart => {
            r#"multipart/mixed; boundary="graphql"; subscriptionSpec="1.0""#
        }
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            // nginx would otherwise hold the events back in its buffer.
            (
                header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        body,
    )
        .into_response()
}

/// One piece of a stream's body.
enum Frame {
    More(Bytes),
    /// The protocol's end: the body ends after it.
    Last(&'static [u8]),
}

/// The response body: the frames as they come. A stream that stops
/// without its end (its client took nothing for too long) fails, so the
/// connection is dropped rather than ended as if complete.
fn body_of(taken: mpsc::Receiver<Frame>) -> Body {
    let frames = futures::stream::unfold(Some(taken), |taken| async move {
        let mut taken = taken?;
        match taken.recv().await {
            Some(Frame::More(bytes)) => Some((Ok(bytes), Some(taken))),
            Some(Frame::Last(bytes)) => Some((Ok(Bytes::from_static(bytes)), None)),
            None => Some((
                Err(std::io::Error::other("the stream stopped without its end")),
                None,
            )),
        }
    });
    Body::from_stream(frames)
}

/// Feeds a subscription's results to its connection, with heartbeats, until
/// the subscription ends, the client goes, the client stops taking what is
/// sent, its credential no longer holds, or the gateway shuts down; holds
/// the connection's place until then.
async fn produce(state: Arc<AppState>, stream: Stream, frames: mpsc::Sender<Frame>) {
    let Stream {
        protocol,
        joined: Joined {
            mut deliveries,
            guard,
        },
        credential,
        open,
        connection: _connection,
    } = stream;
    let live = state.live.clone();
    let every = live.policy.ping;
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut shutdown = live.shutdown_signal();
    let mut shutdown = std::pin::pin!(async move {
        let _ = shutdown.wait_for(|down| *down).await;
    });
    let stuck = live.policy.stuck_write();
    let mut next = Bytes::from_static(opening(protocol));
    loop {
        if !next.is_empty() {
            // Most often there is room: no timer then.
            let waited = match frames.try_send(Frame::More(next)) {
                Ok(()) => Ok(Ok(())),
                Err(mpsc::error::TrySendError::Closed(_)) => Ok(Err(())),
                Err(mpsc::error::TrySendError::Full(frame)) => {
                    tokio::time::timeout(stuck, frames.send(frame))
                        .await
                        .map(|sent| sent.map_err(drop))
                }
            };
            match waited {
                Ok(Ok(())) => {}
                // The client went away.
                Ok(Err(())) => return,
                Err(_) => {
                    live.dropped_slow(&open, "stream");
                    return;
                }
            }
        }
        next = tokio::select! {
            biased;
            () = frames.closed() => return,
            () = &mut shutdown => break,
            delivery = deliveries.next() => match delivery {
                Some(Delivery::Next(payload)) => {
                    live.metrics.live_events_sent.inc();
                    result(protocol, payload.as_bytes())
                }
                Some(Delivery::TooSlow(missed)) => {
                    live.metrics.live_closed_slow.inc();
                    result(protocol, subscriptions::too_slow(missed).as_bytes())
                }
                None => break,
            },
            _ = heartbeat.tick() => match credential.recheck(&state) {
                Ok(()) => Bytes::from_static(heartbeat_of(protocol)),
                // Its credential expired or was revoked since: one last
                // result says so, then the stream ends.
                Err(refusal) => {
                    let last = result(protocol, refusal.into_result(&state.metrics).as_bytes());
                    let _ = tokio::time::timeout(stuck, frames.send(Frame::More(last))).await;
                    break;
                }
            },
        };
    }
    // The subscription ends before the end is written, so a client that
    // subscribes again on `complete` finds its place free.
    drop(deliveries);
    drop(guard);
    let _ = tokio::time::timeout(CLOSE_GRACE, frames.send(Frame::Last(end(protocol)))).await;
}

/// A subscription's stream, as [`produce`] feeds it.
struct Stream {
    protocol: StreamProtocol,
    joined: Joined,
    /// Checked again at every heartbeat.
    credential: Credential,
    open: Arc<AtomicUsize>,
    /// The stream's place among the client's open connections.
    connection: ConnectionGuard,
}

/// What opens the body: multipart's first delimiter (each part then ends
/// with the next, so a client reads a part as soon as it comes).
fn opening(protocol: StreamProtocol) -> &'static [u8] {
    match protocol {
        StreamProtocol::Sse => b"",
        StreamProtocol::Multipart => b"\r\n--graphql",
    }
}

/// One result: an SSE `next` event, or a multipart part with the result as
/// its `payload`.
/// One result's frame around its payload (a serialised GraphQL response,
/// shared by every subscriber of a shared execution: not parsed again).
fn result(protocol: StreamProtocol, payload: &[u8]) -> Bytes {
    let (before, after): (&[u8], &[u8]) = match protocol {
        StreamProtocol::Sse => (b"event: next\ndata: ", b"\n\n"),
        StreamProtocol::Multipart => (
            b"\r\ncontent-type: application/json\r\n\r\n{\"payload\":",
            b"}\r\n--graphql",
        ),
    };
    let mut frame = Vec::with_capacity(before.len() + payload.len() + after.len());
    frame.extend_from_slice(before);
    frame.extend_from_slice(payload);
    frame.extend_from_slice(after);
    Bytes::from(frame)
}

/// A keep-alive: an SSE comment, or multipart's empty `{}` part.
fn heartbeat_of(protocol: StreamProtocol) -> &'static [u8] {
    match protocol {
        StreamProtocol::Sse => b":\n\n",
        StreamProtocol::Multipart => b"\r\ncontent-type: application/json\r\n\r\n{}\r\n--graphql",
    }
}

/// The end: SSE's `complete` event, or what makes the last delimiter
/// multipart's closing one.
fn end(protocol: StreamProtocol) -> &'static [u8] {
    match protocol {
        StreamProtocol::Sse => b"event: complete\ndata:\n\n",
        StreamProtocol::Multipart => b"--\r\n",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(protocol: StreamProtocol, parts: &[&[u8]]) -> String {
        let mut all = opening(protocol).to_vec();
        for part in parts {
            all.extend_from_slice(part);
        }
        all.extend_from_slice(end(protocol));
        String::from_utf8(all).unwrap()
    }

    #[test]
    fn a_multipart_body_is_parts_between_graphql_boundaries() {
        let response = async_graphql::Response::new(async_graphql::Value::from(1));
        let one = result(
            StreamProtocol::Multipart,
            &serde_json::to_vec(&response).unwrap(),
        );
        let text = body(
            StreamProtocol::Multipart,
            &[&one, heartbeat_of(StreamProtocol::Multipart)],
        );
        assert_eq!(
            text,
            "\r\n--graphql\r\ncontent-type: application/json\r\n\r\n{\"payload\":{\"data\":1}}\r\n--graphql\
             \r\ncontent-type: application/json\r\n\r\n{}\r\n--graphql--\r\n"
        );
    }

    #[test]
    fn an_event_stream_is_next_events_then_complete() {
        let response = async_graphql::Response::new(async_graphql::Value::from(1));
        let one = result(StreamProtocol::Sse, &serde_json::to_vec(&response).unwrap());
        let text = body(
            StreamProtocol::Sse,
            &[heartbeat_of(StreamProtocol::Sse), &one],
        );
        assert_eq!(
            text,
            ":\n\nevent: next\ndata: {\"data\":1}\n\nevent: complete\ndata:\n\n"
        );
    }
}
