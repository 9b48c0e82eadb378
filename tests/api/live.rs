//! Live visits (issue 14): `userVisitAdded` through a real WebSocket client
//! speaking graphql-transport-ws, against the simulated platform.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use visits_gateway::demo::{EXAMPLE_ACTIVITY, FEATURE_OFF_ACTIVITY, Fault, SMALL_ACTIVITY};

use crate::helpers::{Identity, TestApp, keys_line, metric, spawn_app_with, temp_dir, ts};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const SUBSCRIPTION: &str = "subscription($id: ID!) { userVisitAdded(activityId: $id) { userId anonymousId visitAt nickname province city device userAgent referer } }";

/// Every test polls each second.
async fn live_app(configure: impl FnOnce(&mut visits_gateway::config::Settings)) -> TestApp {
    spawn_app_with(|s| {
        s.upstream.live_poll = Duration::from_secs(1);
        configure(s);
    })
    .await
}

pub(crate) async fn connect(app: &TestApp, authorization: Option<&str>) -> Ws {
    connect_over(
        app,
        TcpStream::connect(app.addr).await.unwrap(),
        authorization,
    )
    .await
}

async fn connect_over(app: &TestApp, tcp: TcpStream, authorization: Option<&str>) -> Ws {
    let mut request = format!("ws://{}/graphql", app.addr)
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    if let Some(a) = authorization {
        headers.insert("authorization", a.parse().unwrap());
    }
    let (ws, response) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp))
        .await
        .expect("the WebSocket upgrade succeeds");
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "graphql-transport-ws"
    );
    ws
}

pub(crate) async fn send(ws: &mut Ws, message: Value) {
    ws.send(Message::Text(message.to_string().into()))
        .await
        .unwrap();
}

/// The next protocol message, answering pings; `None` on a close or when
/// nothing comes within `wait`.
pub(crate) async fn next(ws: &mut Ws, wait: Duration) -> Option<Value> {
    loop {
        let m = tokio::time::timeout(wait, ws.next()).await.ok()??.ok()?;
        match m {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "ping" {
                    // A socket the gateway dropped may refuse it.
                    let _ = ws
                        .send(Message::Text(json!({"type": "pong"}).to_string().into()))
                        .await;
                    continue;
                }
                return Some(v);
            }
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

/// The close frame's code, reading (and dropping) anything before it.
async fn close_code(ws: &mut Ws, wait: Duration) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next()).await.ok()??;
        match m {
            Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

pub(crate) async fn init(ws: &mut Ws, payload: Value) {
    send(ws, json!({"type": "connection_init", "payload": payload})).await;
    let ack = next(ws, Duration::from_secs(5)).await;
    assert_eq!(ack, Some(json!({"type": "connection_ack"})));
}

async fn subscribe(ws: &mut Ws, id: &str, activity: u64) {
    send(
        ws,
        json!({"id": id, "type": "subscribe", "payload": {
            "query": SUBSCRIPTION, "variables": {"id": activity.to_string()}}}),
    )
    .await;
}

/// Waits until the pollers have read their starting point (the platform saw
/// `n` more requests) so visits added next are new.
pub(crate) async fn started(app: &TestApp, before: usize, n: usize) {
    for _ in 0..100 {
        if app.sim.request_count() >= before + n {
            tokio::time::sleep(Duration::from_millis(100)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the poller never asked the platform");
}

fn identity(v: &Value) -> Identity {
    (
        v["visitAt"].as_str().unwrap().to_owned(),
        v["userId"].as_str().map(str::to_owned),
        v["anonymousId"].as_str().map(str::to_owned),
    )
}

/// `n` visits of subscription `id`, or panics with what came instead.
async fn visits(ws: &mut Ws, id: &str, n: usize, wait: Duration) -> Vec<Identity> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(m) = next(ws, left).await else {
            panic!("{} of {n} visits within {wait:?}", got.len());
        };
        assert_eq!(m["id"], id, "{m}");
        assert_eq!(m["type"], "next", "{m}");
        let visit = &m["payload"]["data"]["userVisitAdded"];
        assert!(visit.is_object(), "{m}");
        got.push(identity(visit));
    }
    got
}

fn add_visits(app: &TestApp, activity: u64, at: &[DateTime<Utc>]) {
    for t in at {
        app.sim.add_visit(activity, *t);
    }
}

#[tokio::test]
async fn live_new_visits_arrive_once_each_within_the_poll_interval() {
    let app = live_app(|_| {}).await;
    let mut ws = connect(&app, None).await;
    init(&mut ws, json!({})).await;
    let before = app.sim.request_count();
    subscribe(&mut ws, "1", SMALL_ACTIVITY).await;
    started(&app, before, 1).await;

    // Three visits at one millisecond, then one more.
    let t0 = Utc::now();
    let t1 = t0 + chrono::Duration::milliseconds(1);
    add_visits(&app, SMALL_ACTIVITY, &[t0, t0, t0, t1]);
    let added = std::time::Instant::now();
    let got = visits(&mut ws, "1", 4, Duration::from_secs(3)).await;
    assert!(
        added.elapsed() < Duration::from_millis(2500),
        "{:?}",
        added.elapsed()
    );
    let far = t0 + chrono::Duration::days(1);
    assert_eq!(got, app.expected(SMALL_ACTIVITY, t0, far));

    // A burst of three upstream pages (the platform serves 50 a page), in
    // runs of 7 visits a millisecond across the page boundaries.
    let t2 = Utc::now() + chrono::Duration::milliseconds(5);
    let burst: Vec<_> = (0..130)
        .map(|i| t2 + chrono::Duration::milliseconds(i / 7))
        .collect();
    add_visits(&app, SMALL_ACTIVITY, &burst);
    let got = visits(&mut ws, "1", 130, Duration::from_secs(5)).await;
    assert_eq!(got, app.expected(SMALL_ACTIVITY, t2, far));
    // Nothing twice.
    let extra = next(&mut ws, Duration::from_millis(2500)).await;
    assert_eq!(extra, None, "a visit was sent twice");
    let m = app.metrics().await;
    assert_eq!(metric(&m, "visits_gateway_live_subscriptions"), 1.0);
    assert_eq!(metric(&m, "visits_gateway_live_pollers"), 1.0);
    assert_eq!(metric(&m, "visits_gateway_live_events_sent_total"), 134.0);
    let _ = ts(t0);
}

#[tokio::test]
async fn live_fifty_subscribers_cost_the_platform_what_one_costs() {
    let app = live_app(|_| {}).await;
    let before = app.sim.request_count();
    let mut alone = connect(&app, None).await;
    init(&mut alone, json!({})).await;
    subscribe(&mut alone, "1", EXAMPLE_ACTIVITY).await;
    let mut sockets = Vec::new();
    for _ in 0..5 {
        let mut ws = connect(&app, None).await;
        init(&mut ws, json!({})).await;
        for i in 0..10 {
            subscribe(&mut ws, &i.to_string(), SMALL_ACTIVITY).await;
        }
        sockets.push(ws);
    }
    started(&app, before, 2).await;
    let m = app.metrics().await;
    assert_eq!(metric(&m, "visits_gateway_live_subscriptions"), 51.0);
    assert_eq!(metric(&m, "visits_gateway_live_pollers"), 2.0);

    let t = Utc::now();
    add_visits(&app, SMALL_ACTIVITY, &[t]);
    add_visits(&app, EXAMPLE_ACTIVITY, &[t]);
    assert_eq!(
        visits(&mut alone, "1", 1, Duration::from_secs(3))
            .await
            .len(),
        1
    );
    for ws in &mut sockets {
        let mut ids = Vec::new();
        for _ in 0..10 {
            let m = next(ws, Duration::from_secs(3)).await.expect("a visit");
            assert_eq!(m["type"], "next", "{m}");
            ids.push(m["id"].as_str().unwrap().to_owned());
        }
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 10);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = app.sim.seen();
    let cost = |activity: u64| {
        seen[before..]
            .iter()
            .filter(|r| r.activity == activity.to_string())
            .count() as i64
    };
    let (one, fifty) = (cost(EXAMPLE_ACTIVITY), cost(SMALL_ACTIVITY));
    assert!(
        (fifty - one).abs() <= 1,
        "1 subscriber: {one} requests, 50: {fifty}"
    );
    assert!(fifty <= 8, "{fifty} requests in about 5 polls");

    // Once every subscriber left, the pollers stop within a poll interval.
    drop(alone);
    drop(sockets);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let m = app.metrics().await;
    assert_eq!(metric(&m, "visits_gateway_live_subscriptions"), 0.0);
    assert_eq!(metric(&m, "visits_gateway_live_pollers"), 0.0);
    let after = app.sim.request_count();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        app.sim.request_count(),
        after,
        "a poller outlived its subscribers"
    );
}

#[tokio::test]
async fn live_subscriptions_need_credentials_and_are_scoped_per_subscription() {
    const WEB_KEY: &str = "live-web-key";
    let dir = temp_dir();
    let file = dir.join("api-keys");
    std::fs::write(
        &file,
        keys_line("web", WEB_KEY, &EXAMPLE_ACTIVITY.to_string()),
    )
    .unwrap();
    let app = live_app(|s| {
        s.client.allow_unauthenticated = false;
        s.client.api_keys_file = Some(file);
    })
    .await;
    let before = app.sim.request_count();

    // No credential anywhere, or a bad one: 4401.
    let mut ws = connect(&app, None).await;
    send(&mut ws, json!({"type": "connection_init"})).await;
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(5)).await,
        Some(4401)
    );
    let mut ws = connect(&app, Some("Bearer not-a-key")).await;
    send(&mut ws, json!({"type": "connection_init", "payload": {}})).await;
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(5)).await,
        Some(4401)
    );
    // A subscription before connection_init: 4401 too.
    let mut ws = connect(&app, None).await;
    subscribe(&mut ws, "1", EXAMPLE_ACTIVITY).await;
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(5)).await,
        Some(4401)
    );

    // The key from connection_init; the upgrade's header works as well.
    let mut header = connect(&app, Some(&format!("Bearer {WEB_KEY}"))).await;
    init(&mut header, json!({})).await;
    let mut ws = connect(&app, None).await;
    init(
        &mut ws,
        json!({"Authorization": format!("Bearer {WEB_KEY}")}),
    )
    .await;
    subscribe(&mut ws, "outside", SMALL_ACTIVITY).await;
    let refused = next(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(refused["id"], "outside");
    assert_eq!(
        refused["payload"]["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{refused}"
    );
    assert_eq!(
        next(&mut ws, Duration::from_secs(5)).await,
        Some(json!({"id": "outside", "type": "complete"}))
    );
    subscribe(&mut ws, "bad", 0).await;
    let bad = next(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        bad["payload"]["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{bad}"
    );
    assert_eq!(
        next(&mut ws, Duration::from_secs(5)).await,
        Some(json!({"id": "bad", "type": "complete"}))
    );
    assert_eq!(
        app.sim.request_count(),
        before,
        "a refusal cost a platform request"
    );

    // The same socket's subscription in scope works.
    subscribe(&mut ws, "inside", EXAMPLE_ACTIVITY).await;
    started(&app, before, 1).await;
    let t = Utc::now();
    add_visits(&app, EXAMPLE_ACTIVITY, &[t]);
    let got = visits(&mut ws, "inside", 1, Duration::from_secs(3)).await;
    assert_eq!(
        got,
        app.expected(EXAMPLE_ACTIVITY, t, t + chrono::Duration::days(1))
    );
}

#[tokio::test]
async fn live_a_definitive_platform_error_ends_the_subscription_and_a_transient_one_does_not() {
    let app = live_app(|s| s.upstream.max_retries = 0).await;
    let mut ws = connect(&app, None).await;
    init(&mut ws, json!({})).await;
    subscribe(&mut ws, "off", FEATURE_OFF_ACTIVITY).await;
    let m = next(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        m["payload"]["errors"][0]["extensions"]["code"], "UPSTREAM_FEATURE_DISABLED",
        "{m}"
    );
    assert_eq!(
        next(&mut ws, Duration::from_secs(3)).await,
        Some(json!({"id": "off", "type": "complete"}))
    );

    let before = app.sim.request_count();
    subscribe(&mut ws, "on", SMALL_ACTIVITY).await;
    started(&app, before, 1).await;
    app.sim.push_fault(Fault::Status(503, "down".into()));
    let m = next(&mut ws, Duration::from_secs(3)).await.unwrap();
    assert_eq!(m["id"], "on");
    assert_eq!(
        m["payload"]["errors"][0]["extensions"]["code"], "UPSTREAM_UNAVAILABLE",
        "{m}"
    );
    let t = Utc::now();
    add_visits(&app, SMALL_ACTIVITY, &[t]);
    let got = visits(&mut ws, "on", 1, Duration::from_secs(3)).await;
    assert_eq!(
        got,
        app.expected(SMALL_ACTIVITY, t, t + chrono::Duration::days(1))
    );
}

#[tokio::test]
async fn live_a_lagging_subscriber_is_closed_without_slowing_the_others() {
    let app = live_app(|s| s.server.live_subscriber_buffer = 2).await;
    // A client with a tiny receive buffer that stops reading.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(1024).unwrap();
    let tcp = socket.connect(app.addr).await.unwrap();
    let mut lagging = connect_over(&app, tcp, None).await;
    init(&mut lagging, json!({})).await;
    let before = app.sim.request_count();
    subscribe(&mut lagging, "slow", EXAMPLE_ACTIVITY).await;
    let mut healthy = connect(&app, None).await;
    init(&mut healthy, json!({})).await;
    subscribe(&mut healthy, "fast", EXAMPLE_ACTIVITY).await;
    started(&app, before, 1).await;

    let start = Utc::now();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = tokio::spawn({
        let received = received.clone();
        async move {
            while let Some(m) = next(&mut healthy, Duration::from_secs(30)).await {
                assert_eq!(m["id"], "fast", "{m}");
                let visit = &m["payload"]["data"]["userVisitAdded"];
                assert!(visit.is_object(), "{m}");
                received.lock().unwrap().push(identity(visit));
            }
        }
    });
    // 800 visits a poll (16 pages of 50, a poll's budget) until the lagging
    // socket, which the kernel buffers for a while, is closed; then once more.
    let closed_slow = || async {
        metric(
            &app.metrics().await,
            "visits_gateway_live_subscribers_closed_slow_total",
        )
    };
    let mut added = 0;
    let mut closed = false;
    for _ in 0..30 {
        let t = Utc::now();
        let at: Vec<_> = (0..800)
            .map(|i| t + chrono::Duration::microseconds(i * 10))
            .collect();
        add_visits(&app, EXAMPLE_ACTIVITY, &at);
        added += 800;
        if closed {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        closed = closed_slow().await >= 1.0;
    }
    assert!(closed, "the lagging subscriber was never closed");
    assert_eq!(closed_slow().await, 1.0);
    let last_added = std::time::Instant::now();
    loop {
        let got = received.lock().unwrap().len();
        if got >= added {
            break;
        }
        assert!(
            last_added.elapsed() < Duration::from_secs(3),
            "the healthy subscriber was slowed: {got} of {added} visits"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The healthy subscription lives on.
    let m = app.metrics().await;
    assert_eq!(metric(&m, "visits_gateway_live_subscriptions"), 1.0, "{m}");
    reader.abort();
    let got = received.lock().unwrap().clone();
    assert_eq!(
        got,
        app.expected(EXAMPLE_ACTIVITY, start, start + chrono::Duration::days(1))
    );
    drop(lagging);
}

#[tokio::test]
async fn live_shutdown_completes_every_subscription_and_closes_with_1001() {
    let app = live_app(|s| s.server.shutdown_drain = Duration::from_millis(300)).await;
    let mut ws = connect(&app, None).await;
    init(&mut ws, json!({})).await;
    subscribe(&mut ws, "a", EXAMPLE_ACTIVITY).await;
    subscribe(&mut ws, "b", SMALL_ACTIVITY).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.begin_shutdown();
    let mut completed = Vec::new();
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "complete" {
                    completed.push(v["id"].as_str().unwrap().to_owned());
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| f.code),
            Ok(Some(Ok(_))) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    completed.sort();
    assert_eq!(completed, ["a", "b"]);
    assert_eq!(code, Some(CloseCode::Away));
    tokio::time::timeout(Duration::from_secs(5), app.stopped())
        .await
        .expect("the gateway exits after closing its sockets")
        .unwrap();
}
