//! OpenTelemetry traces (docs/operations.md). The tracer provider and the subscriber are
//! process-wide, so the gateway runs here as a child process (`serve`), in
//! front of the simulated platform and exporting to an OTLP/HTTP receiver,
//! both inside this test process.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use chrono::Utc;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use visits_gateway::demo::{Fault, SMALL_ACTIVITY, SimPlatform};
use visits_gateway::secret::Secret;

use crate::helpers::{USER_VISITS, keys_line, temp_dir, ts};
use crate::streams::{MULTIPART, SSE};

/// What the receiver got: each export's content type and body.
type Exports = Arc<Mutex<Vec<(String, Bytes)>>>;

/// A simulated platform with a token of its own, to look for in the spans.
async fn platform() -> (SimPlatform, String) {
    let token = format!("platform-token-{:016x}", fastrand::u64(..));
    let sim = SimPlatform::start(
        ([127, 0, 0, 1], 0).into(),
        Secret::new(token.as_str()),
        Utc::now(),
    )
    .await
    .unwrap();
    (sim, token)
}

/// An OTLP/HTTP receiver: keeps every export, answers that all was accepted
/// (an empty ExportTraceServiceResponse, in the request's encoding).
async fn receiver() -> (String, Exports) {
    let exports: Exports = Arc::default();
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            post(
                |State(exports): State<Exports>, headers: HeaderMap, body: Bytes| async move {
                    let content_type = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let answer = if content_type == "application/json" {
                        b"{}".to_vec()
                    } else {
                        Vec::new()
                    };
                    exports.lock().unwrap().push((content_type.clone(), body));
                    ([("content-type", content_type)], answer)
                },
            ),
        )
        .with_state(exports.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), exports)
}

/// The exports, decoded: all of them protobuf.
fn decoded(exports: &Exports) -> Vec<ExportTraceServiceRequest> {
    exports
        .lock()
        .unwrap()
        .iter()
        .map(|(content_type, body)| {
            assert_eq!(content_type, "application/x-protobuf");
            ExportTraceServiceRequest::decode(body.clone()).expect("an OTLP protobuf export")
        })
        .collect()
}

/// `visits-gateway serve` as a child process, its JSON log lines collected;
/// killed if a test fails before stopping it.
pub(crate) struct Gateway {
    child: Option<Child>,
    pub(crate) url: String,
    log: Arc<Mutex<Vec<Value>>>,
}

impl Gateway {
    pub(crate) async fn start(env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_visits-gateway"))
            .arg("serve")
            .env_clear()
            .envs(env.iter().copied())
            .envs([
                ("LISTEN_ADDR", "127.0.0.1:0"),
                ("LOG_FORMAT", "json"),
                ("RUST_LOG", "info"),
                ("SHUTDOWN_DRAIN_SECONDS", "0"),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("the binary runs");
        let stdout = child.stdout.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(line) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                lines.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        // Killed on drop from here on, if it never listens.
        let mut gateway = Self {
            child: Some(child),
            url: String::new(),
            log,
        };
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = rx.recv().await {
                if line["message"] == "visits-gateway listening" {
                    return line["addr"].as_str().unwrap().to_owned();
                }
            }
            panic!("the gateway stopped before listening");
        })
        .await
        .expect("the gateway listens");
        gateway.url = format!("http://{addr}/graphql");
        gateway
    }

    /// SIGKILL: gone at once, nothing released (the live cluster tests).
    pub(crate) fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then the exit: a graceful shutdown.
    pub(crate) async fn stop(mut self) -> Vec<Value> {
        let mut child = self.child.take().unwrap();
        let pid = child.id().to_string();
        // The shell's builtin: no procps needed.
        let killed = Command::new("sh")
            .args(["-c", &format!("kill -TERM {pid}")])
            .status()
            .unwrap();
        assert!(killed.success());
        let waiting = async {
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let exited = tokio::time::timeout(Duration::from_secs(60), waiting).await;
        let Ok(status) = exited else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the gateway did not exit after SIGTERM");
        };
        assert!(status.success(), "{status}");
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every span of the exports.
fn spans_of(exports: &[ExportTraceServiceRequest]) -> Vec<Span> {
    exports
        .iter()
        .flat_map(|e| &e.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| ss.spans.clone())
        .collect()
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn string(span: &Span, key: &str) -> String {
    match attribute(&span.attributes, key) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        other => panic!("{key} of {:?}: {other:?}", span.name),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attribute(&span.attributes, key) {
        Some(any_value::Value::IntValue(i)) => *i,
        other => panic!("{key} of {:?}: {other:?}", span.name),
    }
}

fn events(span: &Span) -> Vec<(String, String)> {
    span.events
        .iter()
        .filter(|e| e.name == "cache lookup")
        .map(|e| {
            let get = |key| match attribute(&e.attributes, key) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                other => panic!("{key}: {other:?}"),
            };
            (get("cache.name"), get("cache.outcome"))
        })
        .collect()
}

/// Every attribute value anywhere in the exports, as text.
fn all_values(exports: &[ExportTraceServiceRequest]) -> Vec<String> {
    let mut values = Vec::new();
    let mut add = |attributes: &[KeyValue]| {
        for kv in attributes {
            values.push(format!("{}={:?}", kv.key, kv.value));
        }
    };
    for export in exports {
        for rs in &export.resource_spans {
            if let Some(resource) = &rs.resource {
                add(&resource.attributes);
            }
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    add(&span.attributes);
                    for event in &span.events {
                        add(&event.attributes);
                    }
                }
            }
        }
    }
    values
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_is_traced_from_the_client_through_graphql_to_the_platform() {
    let (sim, token) = platform().await;
    let (otlp, exports) = receiver().await;
    let key = format!("key-{:016x}", fastrand::u64(..));
    let keys = temp_dir().join("keys");
    std::fs::write(&keys, keys_line("tracer", &key, "*")).unwrap();
    let base = sim.base_url();
    let gateway = Gateway::start(&[
        ("UPSTREAM_BASE_URL", base.as_str()),
        ("UPSTREAM_TOKEN", token.as_str()),
        ("API_KEYS_FILE", keys.to_str().unwrap()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
        ("OTEL_SERVICE_NAME", "visits-gateway-under-test"),
        // Nothing is exported before the shutdown: what arrives proves the
        // flush on the way out.
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
    ])
    .await;

    let trace_id = format!("{:032x}", fastrand::u128(1..));
    let parent_id = format!("{:016x}", fastrand::u64(1..));
    let from = ts(Utc::now() - chrono::Duration::days(10));
    let body = json!({
        // No `operationName`: the span is named from the document's one operation.
        "query": USER_VISITS.replacen("query(", "query Recent(", 1),
        "variables": { "id": SMALL_ACTIVITY.to_string(), "range": { "from": from }, "first": 3 },
    });
    // The first platform request fails once, and is retried.
    sim.push_fault(Fault::Status(503, "busy".into()));
    let http = reqwest::Client::new();
    for _ in 0..2 {
        let response = http
            .post(&gateway.url)
            .bearer_auth(&key)
            .header("traceparent", format!("00-{trace_id}-{parent_id}-01"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.unwrap();
        assert!(answer["errors"].is_null(), "{answer}");
    }
    // Probes are not traced.
    let probe = gateway.url.replace("/graphql", "/healthz");
    assert_eq!(http.get(probe).send().await.unwrap().status(), 200);
    let log = gateway.stop().await;

    let exports = decoded(&exports);
    let service = exports[0].resource_spans[0].resource.as_ref().unwrap();
    assert_eq!(
        attribute(&service.attributes, "service.name"),
        Some(&any_value::Value::StringValue(
            "visits-gateway-under-test".into()
        ))
    );
    let spans = spans_of(&exports);
    let hex = |bytes: &[u8]| hex::encode(bytes);
    let by_id: HashMap<String, &Span> = spans.iter().map(|s| (hex(&s.span_id), s)).collect();

    // Two server spans (none for the probe), children of the client's span
    // in the client's trace.
    let servers: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    assert_eq!(servers.len(), 2, "{spans:#?}");
    for server in &servers {
        assert_eq!(hex(&server.trace_id), trace_id);
        assert_eq!(hex(&server.parent_span_id), parent_id);
        assert_eq!(server.name, "POST /graphql");
        assert_eq!(string(server, "http.request.method"), "POST");
        assert_eq!(string(server, "http.route"), "/graphql");
        assert_eq!(string(server, "url.path"), "/graphql");
        assert_eq!(int(server, "http.response.status_code"), 200);
    }
    // The first ran the operation; the second came whole from the response
    // cache, before any parsing.
    let (first, second) = if string(servers[0], "cache.outcome") == "miss" {
        (servers[0], servers[1])
    } else {
        (servers[1], servers[0])
    };
    assert_eq!(string(first, "cache.outcome"), "miss");
    assert_eq!(string(second, "cache.outcome"), "response-hit");
    assert!(events(first).contains(&("response".into(), "miss".into())));
    assert_eq!(events(second), [("response".into(), "hit".into())]);

    let operations: Vec<&Span> = spans
        .iter()
        .filter(|s| attribute(&s.attributes, "graphql.operation.type").is_some())
        .collect();
    assert_eq!(operations.len(), 1, "{spans:#?}");
    let operation = operations[0];
    assert_eq!(operation.parent_span_id, first.span_id);
    assert_eq!(operation.name, "query Recent");
    assert_eq!(string(operation, "graphql.operation.type"), "query");
    assert_eq!(string(operation, "graphql.operation.name"), "Recent");
    assert_eq!(string(operation, "visits.transport"), "http");
    assert!(
        attribute(&operation.attributes, "graphql.document").is_none(),
        "the document is not exported"
    );

    // A client span per platform request, under the operation, with what
    // it asked and how it went; the page cache said miss on the way.
    let clients: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    assert!(clients.len() >= 2, "ten days are two windows: {spans:#?}");
    let under_operation = |span: &Span| {
        let mut parent = hex(&span.parent_span_id);
        while let Some(p) = by_id.get(&parent) {
            if p.span_id == operation.span_id {
                return true;
            }
            parent = hex(&p.parent_span_id);
        }
        false
    };
    for client in &clients {
        assert_eq!(hex(&client.trace_id), trace_id);
        assert!(under_operation(client), "{client:#?}");
        assert_eq!(string(client, "http.request.method"), "GET");
        assert_eq!(int(client, "visits.page"), 1);
        assert!(int(client, "visits.page_size") > 0);
        assert_eq!(
            string(client, "visits.activity_id"),
            SMALL_ACTIVITY.to_string()
        );
        assert!(!string(client, "visits.window.from").is_empty());
        assert!(!string(client, "visits.window.to").is_empty());
    }
    // The platform's one 503 is a span of its own, and its retry another.
    let status = |c: &&&Span| int(c, "http.response.status_code");
    let failed: Vec<_> = clients.iter().filter(|c| status(c) == 503).collect();
    assert_eq!(failed.len(), 1, "{clients:#?}");
    assert_eq!(int(failed[0], "http.request.resend_count"), 0);
    assert_eq!(string(failed[0], "error.type"), "UPSTREAM_UNAVAILABLE");
    let retried: Vec<_> = clients
        .iter()
        .filter(|c| int(c, "http.request.resend_count") == 1)
        .collect();
    assert_eq!(retried.len(), 1, "{clients:#?}");
    assert_eq!(status(&retried[0]), 200);
    assert_eq!(
        clients.iter().filter(|c| status(c) == 200).count(),
        clients.len() - 1
    );
    let page_events: Vec<_> = spans
        .iter()
        .flat_map(events)
        .filter(|(cache, _)| cache == "page")
        .collect();
    assert!(
        page_events.contains(&("page".into(), "miss".into())),
        "{page_events:?}"
    );

    // The platform got each client span's context in `traceparent`.
    let seen = sim.seen();
    assert_eq!(seen.len(), clients.len());
    let client_ids: Vec<String> = clients.iter().map(|c| hex(&c.span_id)).collect();
    let mut sent_ids = std::collections::HashSet::new();
    for request in &seen {
        let traceparent = request.traceparent.as_deref().expect("a traceparent");
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_eq!(parts[1], trace_id);
        assert!(client_ids.iter().any(|id| id == parts[2]), "{traceparent}");
        assert!(sent_ids.insert(parts[2].to_owned()), "one span per request");
    }

    // No secret in any attribute, the resource's and the events' included.
    for value in all_values(&exports) {
        assert!(!value.contains(&token), "the platform token in {value}");
        assert!(!value.contains(&key), "the API key in {value}");
        assert!(!value.contains("Bearer"), "a credential in {value}");
    }

    // The access log line carries the trace id.
    let access: Vec<&Value> = log.iter().filter(|l| l["message"] == "request").collect();
    assert_eq!(access.len(), 2);
    for line in access {
        assert_eq!(line["trace_id"], trace_id.as_str(), "{line}");
    }
}

/// An open gateway in front of `base`, exporting each span as it ends, so
/// the spans of streams and sockets arrive while they are open.
async fn exporting_at_once(base: &str, token: &str, otlp: &str) -> Gateway {
    Gateway::start(&[
        ("UPSTREAM_BASE_URL", base),
        ("UPSTREAM_TOKEN", token),
        ("ALLOW_UNAUTHENTICATED", "true"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ])
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_and_multipart_requests_get_an_operation_span_under_their_server_span() {
    let (sim, token) = platform().await;
    let (otlp, exports) = receiver().await;
    let base = sim.base_url();
    let gateway = exporting_at_once(&base, &token, &otlp).await;
    let http = reqwest::Client::new();
    // Each request in a trace of its own, to tell their spans apart.
    let post = |accept: &'static str, body: Value| {
        let trace_id = format!("{:032x}", fastrand::u128(1..));
        let request = http
            .post(&gateway.url)
            .header("accept", accept)
            .header(
                "traceparent",
                format!("00-{trace_id}-{:016x}-01", fastrand::u64(1..)),
            )
            .json(&body);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            (trace_id, response)
        }
    };
    // A query asked for as a stream: one result, then the end. First, so
    // that its pages come from the platform, not from the live poller's.
    let from = ts(Utc::now() - chrono::Duration::days(3));
    let query = json!({
        "query": USER_VISITS.replacen("query(", "query Recent(", 1),
        "variables": { "id": SMALL_ACTIVITY.to_string(), "range": { "from": from }, "first": 3 },
    });
    let (query_trace, answer) = post(SSE, query).await;
    let answer = answer.text().await.unwrap();
    assert!(answer.contains("event: complete"), "{answer}");
    let subscription = json!({
        "query": "subscription OnVisit($id: ID!) { userVisitAdded(activityId: $id) { visitAt } }",
        "variables": { "id": SMALL_ACTIVITY.to_string() },
    });
    let (sse, sse_stream) = post(SSE, subscription.clone()).await;
    let (multipart, multipart_stream) = post(MULTIPART, subscription).await;

    // A subscription's spans end as its stream starts, as a WebSocket's upgrade
    // span does: they are exported while both streams are still open.
    let hex = |bytes: &[u8]| hex::encode(bytes);
    let in_trace = |spans: &[Span], trace_id: &str| -> Vec<Span> {
        spans
            .iter()
            .filter(|s| hex(&s.trace_id) == trace_id)
            .cloned()
            .collect()
    };
    let mut spans = Vec::new();
    for _ in 0..200 {
        spans = spans_of(&decoded(&exports));
        if in_trace(&spans, &sse).len() >= 2 && in_trace(&spans, &multipart).len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (trace_id, transport) in [(&sse, "sse"), (&multipart, "multipart")] {
        let trace = in_trace(&spans, trace_id);
        assert_eq!(trace.len(), 2, "{transport}: {spans:#?}");
        let server = trace.iter().find(|s| s.kind == SpanKind::Server as i32);
        let server = server.unwrap_or_else(|| panic!("{transport}: no server span"));
        assert_eq!(server.name, "POST /graphql");
        assert_eq!(int(server, "http.response.status_code"), 200);
        let operation = trace.iter().find(|s| s.span_id != server.span_id).unwrap();
        assert_eq!(operation.parent_span_id, server.span_id, "{transport}");
        assert_eq!(operation.name, "subscription OnVisit");
        assert_eq!(string(operation, "graphql.operation.type"), "subscription");
        assert_eq!(string(operation, "graphql.operation.name"), "OnVisit");
        assert_eq!(string(operation, "visits.transport"), transport);
    }
    drop((sse_stream, multipart_stream));
    gateway.stop().await;

    // The query's operation span covers its execution: its platform
    // requests are under it, as under a POST's.
    let spans = spans_of(&decoded(&exports));
    let trace = in_trace(&spans, &query_trace);
    let operation = trace
        .iter()
        .find(|s| attribute(&s.attributes, "graphql.operation.type").is_some())
        .unwrap_or_else(|| panic!("no operation span: {trace:#?}"));
    assert_eq!(operation.name, "query Recent");
    assert_eq!(string(operation, "visits.transport"), "sse");
    let server = trace
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap();
    assert_eq!(operation.parent_span_id, server.span_id);
    let clients: Vec<&Span> = trace
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    assert!(!clients.is_empty(), "{trace:#?}");
    let by_id: HashMap<String, &Span> = trace.iter().map(|s| (hex(&s.span_id), s)).collect();
    for client in clients {
        let mut parent = by_id.get(&hex(&client.parent_span_id));
        while let Some(p) = parent.filter(|p| p.span_id != operation.span_id) {
            parent = by_id.get(&hex(&p.parent_span_id));
        }
        assert!(parent.is_some(), "not under the operation: {client:#?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn operations_over_a_websocket_get_an_operation_span_each() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let (sim, token) = platform().await;
    let (otlp, exports) = receiver().await;
    let base = sim.base_url();
    let gateway = exporting_at_once(&base, &token, &otlp).await;
    let mut request = gateway
        .url
        .replacen("http://", "ws://", 1)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let from = ts(Utc::now() - chrono::Duration::days(3));
    for message in [
        json!({"type": "connection_init"}),
        json!({"id": "q", "type": "subscribe", "payload": {
            "query": USER_VISITS.replacen("query(", "query Recent(", 1),
            "variables": { "id": SMALL_ACTIVITY.to_string(), "range": { "from": from }, "first": 3 }}}),
        json!({"id": "s", "type": "subscribe", "payload": {
            "query": "subscription OnVisit($id: ID!) { userVisitAdded(activityId: $id) { visitAt } }",
            "variables": { "id": SMALL_ACTIVITY.to_string() }}}),
    ] {
        ws.send(WsMessage::Text(message.to_string().into()))
            .await
            .unwrap();
    }
    // The query's result, then its end.
    let mut got = Vec::new();
    while !got.contains(&json!({"id": "q", "type": "complete"})) {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("the query's messages")
            .unwrap()
            .unwrap();
        if let WsMessage::Text(t) = m {
            got.push(serde_json::from_str::<Value>(&t).unwrap());
        }
    }
    assert!(
        got.iter().any(|m| m["id"] == "q" && m["type"] == "next"),
        "{got:?}"
    );

    // Each operation is a trace of its own, marked as over a WebSocket.
    let over_ws = |spans: &[Span]| -> Vec<Span> {
        spans
            .iter()
            .filter(|s| {
                matches!(attribute(&s.attributes, "visits.transport"),
                    Some(any_value::Value::StringValue(t)) if t == "websocket")
            })
            .cloned()
            .collect()
    };
    let mut spans = Vec::new();
    for _ in 0..200 {
        spans = spans_of(&decoded(&exports));
        if over_ws(&spans).len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let operations = over_ws(&spans);
    let mut names: Vec<&str> = operations.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["query Recent", "subscription OnVisit"],
        "{spans:#?}"
    );
    // The query's platform requests are in its trace.
    let query = operations
        .iter()
        .find(|s| s.name == "query Recent")
        .unwrap();
    assert_eq!(string(query, "graphql.operation.type"), "query");
    assert!(
        spans
            .iter()
            .any(|s| s.kind == SpanKind::Client as i32 && s.trace_id == query.trace_id),
        "{spans:#?}"
    );
    drop(ws);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_tracing_off_nothing_is_propagated_and_the_log_has_no_trace_id() {
    let (sim, token) = platform().await;
    let base = sim.base_url();
    let gateway = Gateway::start(&[
        ("UPSTREAM_BASE_URL", base.as_str()),
        ("UPSTREAM_TOKEN", token.as_str()),
        ("ALLOW_UNAUTHENTICATED", "true"),
        // An endpoint, but the standard switch says no.
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
        ("OTEL_SDK_DISABLED", "true"),
    ])
    .await;
    let response = reqwest::Client::new()
        .post(&gateway.url)
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .json(&json!({ "query": USER_VISITS, "variables": { "id": SMALL_ACTIVITY.to_string(), "first": 1 } }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let log = gateway.stop().await;
    assert!(!sim.seen().is_empty());
    assert!(sim.seen().iter().all(|r| r.traceparent.is_none()));
    let access: Vec<&Value> = log.iter().filter(|l| l["message"] == "request").collect();
    assert_eq!(access.len(), 1);
    assert!(access[0].get("trace_id").is_none(), "{}", access[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn traces_go_out_as_json_when_the_protocol_says_so() {
    let (sim, token) = platform().await;
    let (otlp, exports) = receiver().await;
    let base = sim.base_url();
    let endpoint = format!("{otlp}/v1/traces");
    let gateway = Gateway::start(&[
        ("UPSTREAM_BASE_URL", base.as_str()),
        ("UPSTREAM_TOKEN", token.as_str()),
        ("ALLOW_UNAUTHENTICATED", "true"),
        // The signal's own endpoint is used as it is.
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ])
    .await;
    let trace_id = format!("{:032x}", fastrand::u128(1..));
    let response = reqwest::Client::new()
        .post(&gateway.url)
        .header(
            "traceparent",
            format!("00-{trace_id}-{:016x}-01", fastrand::u64(1..)),
        )
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    gateway.stop().await;
    let exports = exports.lock().unwrap().clone();
    assert!(!exports.is_empty());
    let mut server_spans = 0;
    for (content_type, body) in &exports {
        assert_eq!(content_type, "application/json");
        let export: Value = serde_json::from_slice(body).expect("OTLP JSON");
        for span in export["resourceSpans"][0]["scopeSpans"][0]["spans"]
            .as_array()
            .unwrap()
        {
            if span["name"] == "POST /graphql" {
                server_spans += 1;
                // OTLP JSON: ids in hex.
                assert_eq!(span["traceId"], trace_id.as_str(), "{span}");
            }
        }
    }
    assert_eq!(server_spans, 1);
}
