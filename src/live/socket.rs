//! Subscription sockets: `graphql-transport-ws` (what the npm `graphql-ws`
//! client speaks) on `GET /graphql` upgrades.
//!
//! async-graphql runs the protocol; this loop around it adds what SPEC §2
//! asks beyond it: the credential from `connection_init` or the upgrade
//! request (a refusal closes with 4401, where async-graphql would say 1002),
//! keep-alive pings, a socket that blocks too long is dropped, and on
//! shutdown every subscription gets `complete` and the socket closes with
//! 1001.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_graphql::Data;
use async_graphql::http::{WebSocketProtocols, WsMessage};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde_json::Value;

use super::LiveConnection;
use crate::app::AppState;
use crate::auth::AuthError;
use crate::error::ErrorCode;
use crate::http::{admit_upgrade, error_response};
use crate::telemetry::Metrics;

/// A client silent (no `pong`, nothing else) for this many of the server's
/// pings (`LIVE_PING_SECONDS` apart) is closed; async-graphql closes with
/// 3008 (4408 is the client's to use).
const SILENT_PINGS: u32 = 3;
/// A socket's initial read buffer (tungstenite's default is 128 KiB).
const READ_BUFFER: usize = 1024;
/// On shutdown, how long the `complete` messages may take before the close.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Whether `GET /graphql` asks for a WebSocket.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Accepts a subscription socket. The upgrade is charged to the client's
/// rate like any request; credentials are checked at `connection_init`
/// (browsers cannot set headers on a WebSocket).
pub async fn upgrade(state: Arc<AppState>, request: Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    let address = match admit_upgrade(&state, &parts) {
        Ok(address) => address,
        Err(refusal) => return refusal,
    };
    let offered = parts
        .headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().parse() == Ok(WebSocketProtocols::GraphQLWS));
    if !offered {
        return error_response(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadUserInput,
            "subscriptions speak graphql-transport-ws: send Sec-WebSocket-Protocol: graphql-transport-ws (the graphql-ws client does)",
        );
    }
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let header_credential = parts
        .headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("\u{0}").to_owned());
    // Subscribers send little (a few protocol messages and queries): a small
    // read buffer keeps thousands of idle sockets cheap (it grows for a
    // larger message), and a message is held to the HTTP body limit.
    ws.protocols(["graphql-transport-ws"])
        .read_buffer_size(READ_BUFFER)
        .max_message_size(state.limits.max_body_bytes)
        .max_frame_size(state.limits.max_body_bytes)
        .on_upgrade(move |socket| serve(state, socket, header_credential, address))
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
) {
    let live = state.live.clone();
    let _open_socket = live.socket_opened();
    let open = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicBool::new(false));
    let (mut sink, input) = socket.split();
    let input = input
        .take_while(|m| std::future::ready(m.is_ok()))
        .filter_map(|m| {
            std::future::ready(match m {
                Ok(Message::Text(t)) => Some(t.as_bytes().to_vec()),
                Ok(Message::Binary(b)) => Some(b.to_vec()),
                _ => None,
            })
        });
    let init = {
        let (state, open, refused) = (state.clone(), open.clone(), refused.clone());
        move |payload: Value| async move {
            let credential = init_credential(&payload).or(header_credential);
            match state.auth.authenticate(credential.as_deref()) {
                Ok(client) => {
                    let principal = client.principal;
                    let client = if principal.is_anonymous() {
                        address
                    } else {
                        principal.name.clone()
                    };
                    let mut data = Data::default();
                    data.insert(Arc::new(LiveConnection {
                        principal,
                        client,
                        open,
                    }));
                    data.insert(state.live.clone());
                    Ok(data)
                }
                Err(e) => {
                    refused.store(true, Ordering::SeqCst);
                    state
                        .metrics
                        .graphql_error(ErrorCode::Unauthenticated.as_str());
                    Err(async_graphql::Error::new(match e {
                        AuthError::Missing => {
                            "authentication required: send Authorization: Bearer <API key or JWT> in connection_init's payload"
                        }
                        AuthError::Invalid(reason) => reason,
                    }))
                }
            }
        }
    };
    let mut messages = async_graphql::http::WebSocket::new(
        state.schema.clone(),
        input,
        WebSocketProtocols::GraphQLWS,
    )
    .on_connection_init(init)
    .keepalive_timeout(live.policy.ping * SILENT_PINGS);

    let every = live.policy.ping;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut shutdown = live.shutdown_signal();
    // Made once, not per message: thousands of sockets wait on this channel.
    let mut shutdown = std::pin::pin!(async move {
        let _ = shutdown.wait_for(|down| *down).await;
    });
    let mut closing: Option<tokio::time::Instant> = None;
    let stuck = live.policy.stuck_write();
    loop {
        let message = tokio::select! {
            biased;
            () = &mut shutdown, if closing.is_none() => {
                closing = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                if open.load(Ordering::SeqCst) == 0 {
                    going_away()
                } else {
                    continue;
                }
            }
            () = tokio::time::sleep_until(closing.unwrap_or_else(tokio::time::Instant::now)), if closing.is_some() => going_away(),
            m = messages.next() => match m {
                Some(m) => message(m, refused.load(Ordering::SeqCst), &state.metrics),
                None => break,
            },
            _ = ping.tick() => Message::Text(r#"{"type":"ping"}"#.into()),
        };
        let is_close = matches!(message, Message::Close(_));
        match tokio::time::timeout(stuck, sink.send(message)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => {
                let subscriptions = open.load(Ordering::SeqCst);
                live.metrics.live_closed_slow.inc_by(subscriptions as u64);
                tracing::info!(
                    subscriptions,
                    "a subscriber's socket accepted nothing for {} s; dropped it",
                    stuck.as_secs()
                );
                break;
            }
        }
        if is_close {
            break;
        }
        if closing.is_some() && open.load(Ordering::SeqCst) == 0 {
            let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(going_away())).await;
            break;
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
