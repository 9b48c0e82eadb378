//! The WebSocket door: `graphql-transport-ws` (what the npm `graphql-ws`
//! client speaks) on `GET /graphql` upgrades.
//!
//! async-graphql answers `connection_init` and `ping`; this loop runs every
//! operation itself and adds what the gateway asks beyond the protocol
//! (docs/subscriptions.md, docs/security.md):
//! - every client message is charged to the client's rate like a request;
//!   only graphql-transport-ws's messages are read (4400 otherwise);
//! - every `subscribe` passes the [`admission`] pipeline (a refusal is that
//!   operation's `error`), then joins its shared subscription or, for a
//!   query, runs as a POST would;
//! - the credential is checked again for every operation and at every ping
//!   (4401 once it no longer holds);
//! - a socket that has not sent `connection_init` within
//!   [`INIT_TIMEOUT`] is closed with 4408, whatever else it sent;
//! - open sockets are bounded per client (`LIVE_MAX_CONNECTIONS_PER_CLIENT`);
//! - the credential from `connection_init` or the upgrade request (a
//!   refusal closes with 4401, where async-graphql would say 1002);
//! - keep-alive pings; a socket that blocks too long is dropped; on shutdown
//!   every subscription gets `complete` and the socket closes with 1001.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_graphql::Data;
use async_graphql::http::{WebSocketProtocols, WsMessage};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::AppState;
use std::collections::HashMap;

use futures::stream::{AbortHandle, BoxStream, SelectAll};

use super::admission::{self, Admitted, Client, Credential, Door};
use super::refusal::Refusal;
use super::subscriptions::{self, Joined};
use crate::auth::Principal;
use crate::error::ErrorCode;
use crate::graphql_http::Params;
use crate::live::SubscriptionGuard;
use crate::live::fanout::Delivery;
use crate::live::{ConnectionGuard, LiveConnection};
use crate::telemetry::Metrics;
use crate::upstream::fair::{Caller, Priority};

/// A client silent (no `pong`, nothing else) for this many of the server's
/// pings (`LIVE_PING_SECONDS` apart) is closed; async-graphql closes with
/// 3008 (4408 is the client's to use).
const SILENT_PINGS: u32 = 3;
/// A socket's initial read buffer (tungstenite's default is 128 KiB).
const READ_BUFFER: usize = 1024;
/// On shutdown, how long the `complete` messages may take before the close.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// A socket must send `connection_init` within this, or it is closed with
/// 4408 (the protocol's code for it; docs/subscriptions.md).
pub const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Queries (not subscriptions) running at once on one socket: each holds
/// its document and request scope until it answers.
const MAX_QUERIES_AT_ONCE: usize = 16;
/// What a `subscribe` message may add to a request body: its id and type.
const ENVELOPE_BYTES: usize = 1024;
/// Client messages admitted but not yet read by async-graphql. The client's
/// rate bounds how fast they come; a client that outruns this is closed.
const INPUT_QUEUE: usize = 64;

/// Whether `GET /graphql` asks for a WebSocket.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Accepts a subscription socket. The upgrade is charged to the client's
/// rate like any request, to the upgrade's `Authorization` when that one is
/// valid, else to the client's address (credentials may only come later, in
/// `connection_init`: browsers cannot set headers on a WebSocket), and
/// counted against the client's open connections.
pub async fn upgrade(state: Arc<AppState>, request: Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    let address = admission::address(&state, &parts);
    let upgrading = admission::client(&state, admission::authorization(&parts), &address)
        .unwrap_or_else(|_| Client {
            principal: Principal::anonymous(),
            bucket: address.clone(),
            rate: None,
        });
    if let Err(refusal) = admission::charge(&state, &upgrading) {
        return refusal.into_response(&state.metrics, None);
    }
    let offered = parts
        .headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().parse() == Ok(WebSocketProtocols::GraphQLWS));
    if !offered {
        return Refusal::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadUserInput,
            "subscriptions speak graphql-transport-ws: send Sec-WebSocket-Protocol: graphql-transport-ws (the graphql-ws client does)",
        )
        .into_response(&state.metrics, None);
    }
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        // Not a sound upgrade (its version, key or method): said as every
        // refusal is, with a code, not axum's plain text.
        Err(rejection) => {
            return Refusal::new(
                rejection.status(),
                ErrorCode::BadUserInput,
                format!("not a WebSocket upgrade: {}", rejection.body_text()),
            )
            .into_response(&state.metrics, None);
        }
    };
    let connection = match state.live.connection_opened(&upgrading.bucket) {
        Ok(guard) => guard,
        Err(e) => {
            return Refusal::new(StatusCode::TOO_MANY_REQUESTS, e.code, e.message)
                .into_response(&state.metrics, None);
        }
    };
    let header_credential = parts
        .headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("\u{0}").to_owned());
    // Subscribers send little (a few protocol messages and queries): a small
    // read buffer keeps thousands of idle sockets cheap (it grows for a
    // larger message), and a message is held to the HTTP body limit plus
    // its envelope (id and type), so what a POST may carry a socket may too.
    let max_message = state.limits.max_body_bytes + ENVELOPE_BYTES;
    ws.protocols(["graphql-transport-ws"])
        .read_buffer_size(READ_BUFFER)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| {
            // Queries sent over the socket take their turn at the platform
            // budget as the client that opened it (docs/operations.md).
            let caller = Caller::new(upgrading.bucket, Priority::Interactive);
            caller.scope(serve(state, socket, header_credential, address, connection))
        })
}

/// The credential of `connection_init`: its `Authorization` entry (any
/// case), also accepted under `headers` as some clients nest it.
fn init_credential(payload: &Value) -> Option<String> {
    let find = |v: &Value| {
        v.as_object()?
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .and_then(|(_, v)| v.as_str())
            .map(str::to_owned)
    };
    find(payload).or_else(|| payload.get("headers").and_then(find))
}

async fn serve(
    state: Arc<AppState>,
    socket: WebSocket,
    header_credential: Option<String>,
    address: Arc<str>,
    _connection: ConnectionGuard,
) {
    let live = state.live.clone();
    let open = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicBool::new(false));
    // The client `connection_init` authenticated: what its messages are
    // charged to from then on, and what its subscriptions run as.
    let client: Arc<OnceLock<Session>> = Arc::new(OnceLock::new());
    // One task reads and writes the socket, never both at once: no split
    // (and no lock between its halves) is needed. It is read only once it
    // woke the task.
    let mut socket = Gated::new(socket);
    let (to_protocol, admitted) = mpsc::channel::<Vec<u8>>(INPUT_QUEUE);
    let init = {
        let (state, open, refused, client) =
            (state.clone(), open.clone(), refused.clone(), client.clone());
        let address = address.clone();
        move |payload: Value| async move {
            let credential = init_credential(&payload).or(header_credential);
            match admission::client(&state, credential.as_deref(), &address) {
                Ok(authenticated) => {
                    let mut data = Data::default();
                    // Queries sent over the socket are read as its client.
                    data.insert(authenticated.principal.clone());
                    let connection = Arc::new(LiveConnection {
                        principal: authenticated.principal.clone(),
                        client: authenticated.bucket.clone(),
                        open,
                        counted: true,
                    });
                    data.insert(connection.clone());
                    data.insert(state.live.clone());
                    let credential = Credential::new(
                        credential.as_deref(),
                        address,
                        authenticated.principal.clone(),
                    );
                    let _ = client.set(Session {
                        client: authenticated,
                        connection,
                        credential,
                    });
                    Ok(data)
                }
                Err(refusal) => {
                    refused.store(true, Ordering::SeqCst);
                    state.metrics.graphql_error(refusal.code().as_str());
                    Err(async_graphql::Error::new(refusal.message()))
                }
            }
        }
    };
    // Polled only once something of its own woke the task: a delivery to
    // thousands of sockets does not run the protocol's machinery for each.
    let mut messages = Gated::new(
        async_graphql::http::WebSocket::new(
            state.schema.clone(),
            tokio_stream_of(admitted),
            WebSocketProtocols::GraphQLWS,
        )
        .on_connection_init(init)
        .keepalive_timeout(live.policy.ping * SILENT_PINGS),
    );

    let every = live.policy.ping;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    // One timer, made once: `connection_init`'s deadline until the client
    // is initialised, then (on shutdown, once subscriptions are open) how
    // long their `complete` messages may take.
    let mut deadline = std::pin::pin!(tokio::time::sleep(INIT_TIMEOUT));
    let mut shutdown = live.shutdown_signal();
    // Made once, not per message: thousands of sockets wait on this channel.
    let mut shutdown = std::pin::pin!(async move {
        let _ = shutdown.wait_for(|down| *down).await;
    });
    let mut closing = false;
    let stuck = live.policy.stuck_write();
    let mut running = Running::default();
    loop {
        let initialised = client.get().is_some() || refused.load(Ordering::SeqCst);
        let message = tokio::select! {
            biased;
            () = &mut shutdown, if !closing => {
                closing = true;
                // Subscriptions end (the live side completes them) and
                // queries answer, within the grace, before the close.
                if running.is_empty() {
                    going_away()
                } else {
                    // Subscriptions are open: the client is initialised.
                    deadline.as_mut().reset(tokio::time::Instant::now() + CLOSE_GRACE);
                    continue;
                }
            }
            () = &mut deadline, if closing || !initialised => {
                if closing {
                    going_away()
                } else {
                    state.metrics.graphql_error(ErrorCode::Unauthenticated.as_str());
                    Message::Close(Some(CloseFrame {
                        code: 4408,
                        reason: "Connection initialisation timeout".into(),
                    }))
                }
            }
            // A delivery before the client's messages: it is what thousands
            // of sockets wake for at once.
            Some((tag, delivery)) = running.deliveries.next(), if !running.deliveries.is_empty() => match delivery {
                Some(Delivery::Next(payload)) => {
                    live.metrics.live_events_sent.inc();
                    Message::Text(tag.next(&payload).into())
                }
                Some(Delivery::TooSlow(missed)) => {
                    live.metrics.live_closed_slow.inc();
                    Message::Text(tag.next(&subscriptions::too_slow(missed)).into())
                }
                None => {
                    // The shared execution ended: so does this subscription.
                    running.ended(&tag.id);
                    Message::Text(completed(&tag.id).into())
                }
            },
            m = socket.next() => match m {
                Some(Ok(Message::Text(t))) => match admit(&state, t.as_bytes(), &client, &address) {
                    // An id already running is the protocol's 4409, whatever
                    // else is wrong with the message.
                    Admit::Reply(id, _) | Admit::Subscribe { id, .. } | Admit::Execute { id, .. }
                        if running.contains(&id) =>
                    {
                        Message::Close(Some(CloseFrame {
                            code: 4409,
                            reason: format!("Subscriber for {id} already exists").into(),
                        }))
                    }
                    Admit::Pass(bytes) => {
                        if to_protocol.try_send(bytes).is_err() {
                            Message::Close(Some(CloseFrame {
                                code: 1008,
                                reason: "too many messages at once".into(),
                            }))
                        } else {
                            continue;
                        }
                    }
                    Admit::Drop => continue,
                    Admit::Reply(id, refusal) => Message::Text(refusal.into_ws_error(&state.metrics, &id).into()),
                    Admit::Subscribe { id, admitted, params, span } => {
                        let session = client.get().expect("subscribe is admitted after init");
                        let joined = span.in_scope(|| {
                            subscriptions::join(&state, *admitted, &params, &session.connection)
                        });
                        match joined {
                            Ok(Joined { deliveries, guard }) => running.start(id, deliveries, Some(guard)),
                            // Like a resolver's refusal: a result with the
                            // error, then `complete`.
                            Err(refusal) => {
                                let result = Delivery::Next(refusal.into_result(&state.metrics).into());
                                running.start(id, futures::stream::iter([result]).boxed(), None);
                            }
                        }
                        continue;
                    }
                    Admit::Execute { id, .. } if running.queries() >= MAX_QUERIES_AT_ONCE => {
                        let refusal = Refusal::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            ErrorCode::RateLimited,
                            format!("at most {MAX_QUERIES_AT_ONCE} queries run at once on one socket"),
                        );
                        Message::Text(refusal.into_ws_error(&state.metrics, &id).into())
                    }
                    Admit::Execute { id, admitted, now, span } => {
                        let session = client.get().expect("subscribe is admitted after init");
                        let (state, client) = (state.clone(), session.client.clone());
                        let connection = session.connection.clone();
                        let result = async move {
                            let result = subscriptions::execute_once(&state, *admitted, &client, connection, now)
                                .instrument(span)
                                .await
                                .unwrap_or_else(|refusal| refusal.into_result(&state.metrics));
                            Delivery::Next(result.into())
                        };
                        running.start(id, futures::stream::once(result).boxed(), None);
                        continue;
                    }
                    Admit::Complete { id } => {
                        // Its place is free at once. Nothing more is sent for
                        // it, no `complete` either: the client stopped
                        // listening (as graphql-ws's own server does).
                        running.stop(&id);
                        continue;
                    }
                    Admit::Close(code, reason) => Message::Close(Some(CloseFrame {
                        code,
                        reason: reason.into(),
                    })),
                },
                Some(Ok(Message::Binary(_))) => Message::Close(Some(CloseFrame {
                    code: 4400,
                    reason: "graphql-transport-ws messages are text".into(),
                })),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => break,
            },
            m = messages.next() => match m {
                Some(m) => message(m, refused.load(Ordering::SeqCst), &state.metrics),
                None => break,
            },
            _ = ping.tick() => match client.get().map(|s| s.credential.recheck(&state)) {
                // Its credential expired or was revoked since: what is open
                // ends with the socket.
                // 4403, not 4401: graphql-ws clients give up on 4401 but
                // reconnect on 4403, asking their `connectionParams` again
                // (a fresh token).
                Some(Err(refusal)) => {
                    state.metrics.graphql_error(refusal.code().as_str());
                    Message::Close(Some(CloseFrame {
                        code: 4403,
                        reason: "Forbidden: the credential expired, was revoked or changed".into(),
                    }))
                }
                _ => Message::Text(r#"{"type":"ping"}"#.into()),
            },
        };
        let is_close = matches!(message, Message::Close(_));
        let sent = {
            let mut send = std::pin::pin!(socket.inner.send(message));
            // Most often the socket takes it at once: no timer then.
            match futures::poll!(send.as_mut()) {
                std::task::Poll::Ready(sent) => Ok(sent),
                std::task::Poll::Pending => tokio::time::timeout(stuck, send).await,
            }
        };
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => {
                live.dropped_slow(&open, "socket");
                break;
            }
        }
        if is_close {
            break;
        }
        if closing && running.is_empty() {
            let _ = tokio::time::timeout(CLOSE_GRACE, socket.inner.send(going_away())).await;
            break;
        }
    }
}

fn tokio_stream_of(mut rx: mpsc::Receiver<Vec<u8>>) -> impl futures::Stream<Item = Vec<u8>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The operations running on a socket, by id, and their results as one
/// stream the socket's task waits on.
#[derive(Default)]
struct Running {
    /// A subscription holds its place in the limits; a query holds none.
    by_id: HashMap<Arc<str>, (AbortHandle, Option<SubscriptionGuard>)>,
    /// Each result with its operation's tag; `None` once an operation ended.
    deliveries: SelectAll<BoxStream<'static, (Arc<Tag>, Option<Delivery>)>>,
}

impl Running {
    fn start(
        &mut self,
        id: String,
        results: BoxStream<'static, Delivery>,
        guard: Option<SubscriptionGuard>,
    ) {
        let tag = Arc::new(Tag::new(id.into()));
        let tagged = results
            .map({
                let tag = tag.clone();
                move |d| (tag.clone(), Some(d))
            })
            .chain(futures::stream::iter([(tag.clone(), None)]));
        let (tagged, abort) = futures::stream::abortable(tagged);
        self.by_id.insert(tag.id.clone(), (abort, guard));
        self.deliveries.push(tagged.boxed());
    }

    /// The client ends `id`: nothing more of it is sent.
    fn stop(&mut self, id: &str) {
        if let Some((abort, _guard)) = self.by_id.remove(id) {
            abort.abort();
        }
    }

    /// `id`'s results ended (its `complete` goes out).
    fn ended(&mut self, id: &str) {
        self.by_id.remove(id);
    }

    fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    fn queries(&self) -> usize {
        self.by_id
            .values()
            .filter(|(_, guard)| guard.is_none())
            .count()
    }

    fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// What becomes of one client message.
enum Admit {
    /// On to async-graphql: `connection_init`, `ping` and `pong`, the
    /// protocol's own; it sees no operation.
    Pass(Vec<u8>),
    /// Answered here: operation `id`'s `error`.
    Reply(String, Refusal),
    /// Ignored: a `ping` over the client's rate.
    Drop,
    /// An admitted subscription, served from its shared execution.
    Subscribe {
        id: String,
        admitted: Box<Admitted>,
        params: Params,
        /// Its operation span, over joining its shared execution.
        span: tracing::Span,
    },
    /// An admitted query (or mutation): run once, its result sent as `next`,
    /// then `complete`.
    Execute {
        id: String,
        admitted: Box<Admitted>,
        /// The request's one clock, as admission planned it.
        now: chrono::DateTime<chrono::Utc>,
        /// Its operation span, over its execution.
        span: tracing::Span,
    },
    /// The client ends operation `id`.
    Complete { id: String },
    /// Not the protocol: the socket closes with this code and reason.
    Close(u16, String),
}

/// The client's state once `connection_init` authenticated it.
struct Session {
    client: Client,
    connection: Arc<LiveConnection>,
    /// Checked again for every operation and at every ping.
    credential: Credential,
}

/// A subscription served from a shared execution: its id, and the start
/// of its `next` messages, written once.
struct Tag {
    id: Arc<str>,
    /// `{"id":<id>,"type":"next","payload":`
    next: Box<str>,
}

impl Tag {
    fn new(id: Arc<str>) -> Self {
        let quoted = serde_json::to_string(&*id).unwrap_or_default();
        let next = format!(r#"{{"id":{quoted},"type":"next","payload":"#).into();
        Self { id, next }
    }

    /// A `next` message: the shared payload, with this subscription's id.
    /// One buffer of exactly its size, which becomes the frame's text as it
    /// is (no copy, no UTF-8 check).
    fn next(&self, payload: &str) -> String {
        let mut text = String::with_capacity(self.next.len() + payload.len() + 1);
        text.push_str(&self.next);
        text.push_str(payload);
        text.push('}');
        text
    }
}

/// A stream polled only when something of its own woke the task since it
/// last said `Pending` (as `FuturesUnordered` does for each of its futures):
/// a task that waits on several sources then pays, on a wake-up, for the
/// one that woke it, not for all of them.
struct Gated<S> {
    inner: S,
    gate: Arc<Gate>,
    /// The waker `inner` is polled with: it opens the gate, then wakes the
    /// task.
    waker: std::task::Waker,
}

struct Gate {
    /// Set by a wake-up of `inner` (and at first): poll it.
    open: AtomicBool,
    task: futures::task::AtomicWaker,
}

impl std::task::Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.open.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<S> Gated<S> {
    fn new(inner: S) -> Self {
        let gate = Arc::new(Gate {
            open: AtomicBool::new(true),
            task: futures::task::AtomicWaker::new(),
        });
        Self {
            inner,
            waker: gate.clone().into(),
            gate,
        }
    }
}

impl<S: futures::Stream + Unpin> futures::Stream for Gated<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        let this = &mut *self;
        // The task first, so a wake-up from now on reaches it.
        this.gate.task.register(cx.waker());
        if !this.gate.open.swap(false, Ordering::AcqRel) {
            return std::task::Poll::Pending;
        }
        let polled = this
            .inner
            .poll_next_unpin(&mut std::task::Context::from_waker(&this.waker));
        if polled.is_ready() {
            // It may have more at once: poll it again next time.
            this.gate.open.store(true, Ordering::Release);
        }
        polled
    }
}

fn completed(id: &str) -> String {
    serde_json::json!({ "id": id, "type": "complete" }).to_string()
}

/// The door's part of [`admission`] for one message: charged to the
/// client's rate (the address's until `connection_init` names a client).
/// Only graphql-transport-ws's messages are read; every operation
/// (`subscribe`) passes the pipeline here, whatever it runs, and nothing
/// else reaches async-graphql that could run one.
fn admit(state: &AppState, text: &[u8], client: &OnceLock<Session>, address: &Arc<str>) -> Admit {
    let anonymous;
    let charged = match client.get() {
        Some(session) => &session.client,
        None => {
            anonymous = Client {
                principal: Principal::anonymous(),
                bucket: address.clone(),
                rate: None,
            };
            &anonymous
        }
    };
    let over_rate = admission::charge(state, charged).err();
    let invalid = |why: &str| Admit::Close(4400, format!("Invalid message received: {why}"));
    let Ok(message) = serde_json::from_slice::<Value>(text) else {
        return invalid("not JSON");
    };
    let kind = message.get("type").and_then(Value::as_str).unwrap_or("");
    let id = message.get("id").and_then(Value::as_str).map(str::to_owned);
    match kind {
        // `pong` and `complete` free or confirm what is held: always read.
        "connection_init" | "pong" => return Admit::Pass(text.to_vec()),
        "ping" if over_rate.is_some() => return Admit::Drop,
        "ping" => return Admit::Pass(text.to_vec()),
        "complete" => {
            return match id {
                Some(id) => Admit::Complete { id },
                None => invalid("`complete` needs an id"),
            };
        }
        "subscribe" => {}
        // The older subscriptions-transport-ws's `start`, `stop`, … too:
        // async-graphql would run a `start` without this pipeline.
        _ => return invalid("not a graphql-transport-ws message type"),
    }
    let Some(session) = client.get() else {
        return Admit::Close(4401, "Unauthorized".into());
    };
    let Some(id) = id else {
        return invalid("`subscribe` needs an id");
    };
    if let Some(refusal) = over_rate {
        return Admit::Reply(id, refusal);
    }
    if let Err(refusal) = session.credential.recheck(state) {
        return Admit::Reply(id, refusal);
    }
    let payload = message.get("payload").cloned().unwrap_or(Value::Null);
    let now = chrono::Utc::now();
    let admitted = Params::from_value(payload)
        .map_err(Refusal::malformed)
        .and_then(|params| {
            let admitted = admission::document(state, &params, Door::WebSocket, now)?;
            Ok((params, admitted))
        });
    let (params, admitted) = match admitted {
        Err(refusal) => return Admit::Reply(id, refusal),
        Ok(admitted) => admitted,
    };
    // Each operation is a trace of its own: the upgrade's ended long ago.
    let span = if crate::otel::enabled() {
        super::operation_span(
            admitted.parsed.as_deref(),
            params.operation_name.as_deref(),
            "websocket",
        )
    } else {
        tracing::Span::none()
    };
    if subscriptions::is_subscription(&admitted, &params) {
        Admit::Subscribe {
            id,
            admitted: Box::new(admitted),
            params,
            span,
        }
    } else {
        Admit::Execute {
            id,
            admitted: Box::new(admitted),
            now,
            span,
        }
    }
}

fn going_away() -> Message {
    Message::Close(Some(CloseFrame {
        code: 1001,
        reason: "the gateway is shutting down".into(),
    }))
}

/// async-graphql's message as a WebSocket message, its errors coded, with
/// the close codes
/// graphql-ws defines: a refused `connection_init` (async-graphql closes
/// with 1002) and a subscription before it (1011) close with 4401
/// Unauthorized, a message that is not the protocol's (1002) with 4400.
fn message(m: WsMessage, refused: bool, metrics: &Metrics) -> Message {
    match m {
        WsMessage::Text(text) => Message::Text(coded(text, metrics).into()),
        WsMessage::Close(code, reason) => {
            let code = match code {
                1002 if refused => 4401,
                1002 => 4400,
                1011 => 4401,
                other => other,
            };
            // A close reason holds at most 123 bytes.
            let mut end = reason.len().min(123);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            Message::Close(Some(CloseFrame {
                code,
                reason: reason[..end].into(),
            }))
        }
    }
}

/// Gives every error of a `next` or `error` message a code, as over HTTP:
/// the resolver's carry one; those without come from async-graphql's
/// parsing, validation and input coercion, so they are bad input. Each is
/// counted. Visits are sent untouched: their JSON cannot hold an unescaped
/// `"errors"` key, so they are never parsed here.
fn coded(text: String, metrics: &Metrics) -> String {
    if !text.contains(r#""errors""#) && !text.contains(r#""type":"error""#) {
        return text;
    }
    let Ok(mut m) = serde_json::from_str::<Value>(&text) else {
        return text;
    };
    let errors = if m["type"] == "error" {
        m.get_mut("payload")
    } else {
        m.get_mut("payload").and_then(|p| p.get_mut("errors"))
    };
    let Some(Value::Array(errors)) = errors else {
        return text;
    };
    for error in errors.iter_mut().filter_map(Value::as_object_mut) {
        let extensions = error
            .entry("extensions")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(extensions) = extensions.as_object_mut() {
            let code = extensions
                .entry("code")
                .or_insert_with(|| ErrorCode::BadUserInput.as_str().into());
            metrics.graphql_error(code.as_str().unwrap_or_default());
        }
    }
    m.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_gated_stream_is_polled_again_only_once_it_woke_the_task() {
        use std::sync::atomic::AtomicUsize;
        use std::task::{Context, Poll, Waker};
        let polls = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = mpsc::unbounded_channel::<u8>();
        let mut gated = Gated::new(futures::stream::poll_fn({
            let polls = polls.clone();
            move |cx| {
                polls.fetch_add(1, Ordering::SeqCst);
                rx.poll_recv(cx)
            }
        }));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(gated.poll_next_unpin(&mut cx).is_pending());
        assert!(gated.poll_next_unpin(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1, "not woken: not polled");
        tx.send(7).unwrap();
        assert_eq!(gated.poll_next_unpin(&mut cx), Poll::Ready(Some(7)));
        // After an item it is polled again, as it may have more at once.
        assert!(gated.poll_next_unpin(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 3);
        drop(tx);
        assert_eq!(gated.poll_next_unpin(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn live_connection_init_credentials_are_found_in_any_case_and_under_headers() {
        for payload in [
            json!({"Authorization": "Bearer k"}),
            json!({"authorization": "Bearer k"}),
            json!({"headers": {"Authorization": "Bearer k"}}),
        ] {
            assert_eq!(init_credential(&payload).as_deref(), Some("Bearer k"));
        }
        assert_eq!(init_credential(&json!({})), None);
        assert_eq!(init_credential(&Value::Null), None);
    }

    #[test]
    fn live_errors_without_a_code_are_bad_input_and_visits_are_untouched() {
        let metrics = Metrics::new();
        let parse = json!({"id": "1", "type": "next", "payload": {"data": null, "errors": [{"message": "expected value"}]}});
        let out: Value = serde_json::from_str(&coded(parse.to_string(), &metrics)).unwrap();
        assert_eq!(
            out["payload"]["errors"][0]["extensions"]["code"],
            "BAD_USER_INPUT"
        );
        let invalid =
            json!({"id": "2", "type": "error", "payload": [{"message": "unknown field"}]});
        let out: Value = serde_json::from_str(&coded(invalid.to_string(), &metrics)).unwrap();
        assert_eq!(out["payload"][0]["extensions"]["code"], "BAD_USER_INPUT");
        let coded_already = json!({"id": "3", "type": "next", "payload": {"errors": [{"message": "no", "extensions": {"code": "FORBIDDEN"}}]}});
        let out: Value = serde_json::from_str(&coded(coded_already.to_string(), &metrics)).unwrap();
        assert_eq!(
            out["payload"]["errors"][0]["extensions"]["code"],
            "FORBIDDEN"
        );
        let visit = json!({"id": "4", "type": "next", "payload": {"data": {"userVisitAdded": {"nickname": "\"errors\": [1]"}}}}).to_string();
        assert_eq!(coded(visit.clone(), &metrics), visit);
    }
}
