//! Live visits: `userVisitAdded` through a real WebSocket client
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

pub(crate) async fn connect_over(app: &TestApp, tcp: TcpStream, authorization: Option<&str>) -> Ws {
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

pub(crate) async fn subscribe(ws: &mut Ws, id: &str, activity: u64) {
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

pub(crate) fn identity(v: &Value) -> Identity {
    (
        v["visitAt"].as_str().unwrap().to_owned(),
        v["userId"].as_str().map(str::to_owned),
        v["anonymousId"].as_str().map(str::to_owned),
    )
}

/// `n` visits of subscription `id`, or panics with what came instead.
pub(crate) async fn visits(ws: &mut Ws, id: &str, n: usize, wait: Duration) -> Vec<Identity> {
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

/// A subscription to an activity in scope, opened on `ws` after refusals
/// that cost nothing (the platform had seen `before` requests), is served.
async fn a_subscription_in_scope_gets_visits(
    app: &TestApp,
    ws: &mut Ws,
    before: usize,
    wait: Duration,
) {
    subscribe(ws, "inside", EXAMPLE_ACTIVITY).await;
    started(app, before, 1).await;
    a_new_visit_arrives(app, ws, "inside", EXAMPLE_ACTIVITY, wait).await;
}

/// A visit added to `activity` now reaches subscription `id`, alone.
async fn a_new_visit_arrives(app: &TestApp, ws: &mut Ws, id: &str, activity: u64, wait: Duration) {
    let t = Utc::now();
    add_visits(app, activity, &[t]);
    let got = visits(ws, id, 1, wait).await;
    assert_eq!(
        got,
        app.expected(activity, t, t + chrono::Duration::days(1))
    );
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

/// A gateway that lets in only the key `key`, scoped to `EXAMPLE_ACTIVITY`.
pub(crate) async fn keyed_live_app(key: &str) -> TestApp {
    let dir = temp_dir();
    let file = dir.join("api-keys");
    std::fs::write(&file, keys_line("web", key, &EXAMPLE_ACTIVITY.to_string())).unwrap();
    live_app(|s| {
        s.client.allow_unauthenticated = false;
        s.client.api_keys_file = Some(file);
    })
    .await
}

/// A fragment bomb of 2^30 subscriptions, and a query of two 91-day
/// `userVisits` over the cost bound (with its range): what every door must
/// refuse at no platform request.
pub(crate) fn bomb_and_expensive(app: &TestApp) -> (String, String, Value) {
    let mut bomb = String::from(
        "subscription { ...F30 } fragment F0 on Subscription { userVisitAdded(activityId: \"1\") { nickname } }\n",
    );
    for i in 1..=30 {
        bomb += &format!(
            "fragment F{i} on Subscription {{ ...F{j} ...F{j} }}\n",
            j = i - 1
        );
    }
    let range = json!({ "from": ts(app.now - chrono::Duration::days(91)), "to": ts(app.now) });
    let one = "userVisits(activityId: \"10024069\", range: $range, first: 100) { totalCount }";
    let expensive = format!("query($range: TimeRange) {{ a: {one} b: {one} }}");
    (bomb, expensive, range)
}

#[tokio::test]
async fn live_subscriptions_need_credentials_and_are_scoped_per_subscription() {
    const WEB_KEY: &str = "live-web-key";
    let app = keyed_live_app(WEB_KEY).await;
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
    a_subscription_in_scope_gets_visits(&app, &mut ws, before, Duration::from_secs(3)).await;
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
    a_new_visit_arrives(&app, &mut ws, "on", SMALL_ACTIVITY, Duration::from_secs(3)).await;
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
    // A query still waiting for the platform when the shutdown comes gets
    // its answer before the close.
    app.sim
        .push_fault(Fault::Delay(Duration::from_millis(1500)));
    send(
        &mut ws,
        json!({"id": "q", "type": "subscribe", "payload": {
            "query": "{ userVisits(activityId: \"10024069\", first: 1) { totalCount } }"}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    subscribe(&mut ws, "a", EXAMPLE_ACTIVITY).await;
    subscribe(&mut ws, "b", SMALL_ACTIVITY).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.begin_shutdown();
    let mut completed = Vec::new();
    let mut answered = None;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "complete" {
                    completed.push(v["id"].as_str().unwrap().to_owned());
                } else if v["id"] == "q" {
                    answered = Some(v);
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| f.code),
            Ok(Some(Ok(_))) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    completed.sort();
    assert_eq!(completed, ["a", "b", "q"]);
    let answered = answered.expect("the query's answer");
    assert!(
        answered["payload"]["data"]["userVisits"]["totalCount"].is_u64(),
        "{answered}"
    );
    assert_eq!(code, Some(CloseCode::Away));
    tokio::time::timeout(Duration::from_secs(5), app.stopped())
        .await
        .expect("the gateway exits after closing its sockets")
        .unwrap();
}

/// The errors of a refused subscription: async-graphql sends a request it
/// cannot run as an `error` message (errors as the payload), and a
/// resolver's refusal as `next` with `errors`.
fn errors_of(m: &Value) -> &Value {
    match m["type"].as_str() {
        Some("error") => &m["payload"],
        _ => &m["payload"]["errors"],
    }
}

/// `n` messages of any kind, by subscription id.
async fn messages(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(
            next(ws, Duration::from_secs(5))
                .await
                .unwrap_or_else(|| panic!("{} of {n} messages: {got:?}", got.len())),
        );
    }
    got
}

/// Ends subscription `id` from the client's side; the gateway sends
/// nothing more for it (the callers then watch its place freed).
async fn unsubscribe(ws: &mut Ws, id: &str) {
    send(ws, json!({"id": id, "type": "complete"})).await;
}

/// Waits (up to 5 s) until the gateway holds `n` subscriptions.
async fn subscriptions_become(app: &TestApp, n: f64) {
    for _ in 0..100 {
        if metric(&app.metrics().await, "visits_gateway_live_subscriptions") == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway never held {n} subscriptions");
}

#[tokio::test]
async fn live_subscription_limits_refuse_the_extra_one_with_a_code_and_free_a_slot_when_one_ends() {
    let dir = temp_dir();
    let file = dir.join("api-keys");
    std::fs::write(
        &file,
        keys_line("one", "live-key-one", "*") + &keys_line("two", "live-key-two", "*"),
    )
    .unwrap();
    let app = live_app(|s| {
        s.client.allow_unauthenticated = false;
        s.client.api_keys_file = Some(file);
        s.client.live_max_subscriptions_per_client = 2;
        s.server.live_max_subscriptions = 3;
    })
    .await;
    let before = app.sim.request_count();
    let mut one = connect(&app, None).await;
    init(&mut one, json!({"Authorization": "Bearer live-key-one"})).await;
    let mut two = connect(&app, None).await;
    init(&mut two, json!({"Authorization": "Bearer live-key-two"})).await;

    // The client's third is refused; the others are counted. (The third is
    // sent once the first two are counted: a socket's subscriptions start
    // concurrently, in no set order.)
    subscribe(&mut one, "a", SMALL_ACTIVITY).await;
    subscribe(&mut one, "b", SMALL_ACTIVITY).await;
    subscriptions_become(&app, 2.0).await;
    subscribe(&mut one, "c", SMALL_ACTIVITY).await;
    let refused = next(&mut one, Duration::from_secs(5)).await.unwrap();
    assert_eq!(refused["id"], "c", "{refused}");
    assert_eq!(errors_of(&refused)[0]["extensions"]["code"], "RATE_LIMITED");
    let message = errors_of(&refused)[0]["message"].as_str().unwrap();
    assert!(
        message.contains("LIVE_MAX_SUBSCRIPTIONS_PER_CLIENT"),
        "{message}"
    );
    assert_eq!(
        next(&mut one, Duration::from_secs(5)).await,
        Some(json!({"id": "c", "type": "complete"}))
    );
    // Another client's second is past the total.
    subscribe(&mut two, "d", SMALL_ACTIVITY).await;
    subscriptions_become(&app, 3.0).await;
    subscribe(&mut two, "e", SMALL_ACTIVITY).await;
    let refused = next(&mut two, Duration::from_secs(5)).await.unwrap();
    assert_eq!(refused["id"], "e", "{refused}");
    assert_eq!(errors_of(&refused)[0]["extensions"]["code"], "RATE_LIMITED");
    let message = errors_of(&refused)[0]["message"].as_str().unwrap();
    assert!(message.contains("(LIVE_MAX_SUBSCRIPTIONS)"), "{message}");
    assert_eq!(
        next(&mut two, Duration::from_secs(5)).await,
        Some(json!({"id": "e", "type": "complete"}))
    );
    assert_eq!(
        metric(&app.metrics().await, "visits_gateway_live_subscriptions"),
        3.0
    );

    // The others carry on.
    started(&app, before, 1).await;
    let t = Utc::now();
    add_visits(&app, SMALL_ACTIVITY, &[t]);
    let mut ids: Vec<_> = messages(&mut one, 2)
        .await
        .iter()
        .map(|m| {
            assert_eq!(m["type"], "next", "{m}");
            m["id"].as_str().unwrap().to_owned()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(
        visits(&mut two, "d", 1, Duration::from_secs(5)).await.len(),
        1
    );

    // Ending one frees its place, for this client and in the total.
    unsubscribe(&mut one, "a").await;
    subscriptions_become(&app, 2.0).await;
    subscribe(&mut two, "f", SMALL_ACTIVITY).await;
    subscriptions_become(&app, 3.0).await;
    let t = Utc::now();
    add_visits(&app, SMALL_ACTIVITY, &[t]);
    assert_eq!(
        visits(&mut one, "b", 1, Duration::from_secs(5)).await.len(),
        1
    );
    let mut ids: Vec<_> = messages(&mut two, 2)
        .await
        .iter()
        .map(|m| {
            assert_eq!(m["type"], "next", "{m}");
            m["id"].as_str().unwrap().to_owned()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, ["d", "f"]);
    // A socket that closes frees all of its places.
    drop(one);
    subscriptions_become(&app, 2.0).await;
}

#[tokio::test]
async fn live_keep_alive_pings_come_every_live_ping_seconds_and_a_silent_client_is_closed() {
    let app = live_app(|s| s.server.live_ping = Duration::from_secs(1)).await;
    let mut ws = connect(&app, None).await;
    init(&mut ws, json!({})).await;
    subscribe(&mut ws, "1", SMALL_ACTIVITY).await;
    // Pings keep coming to a client that answers them, and the socket lives.
    let mut pings = 0;
    while pings < 4 {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a ping within 5 s")
            .unwrap()
            .unwrap();
        let Message::Text(t) = m else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["type"] == "ping" {
            pings += 1;
            send(&mut ws, json!({"type": "pong"})).await;
        }
    }
    assert_eq!(
        metric(&app.metrics().await, "visits_gateway_live_subscriptions"),
        1.0
    );
    // A client that stops answering is closed after three pings (3008),
    // and its subscription ends.
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(10)).await,
        Some(3008)
    );
    subscriptions_become(&app, 0.0).await;
}

#[tokio::test]
async fn live_jwts_in_connection_init_are_checked_for_signature_expiry_and_scope() {
    use crate::security::{HS_SECRET, claims, hs256, now_secs};
    let secret = temp_dir().join("jwt-secret");
    std::fs::write(&secret, HS_SECRET).unwrap();
    let app = live_app(move |s| {
        s.client.allow_unauthenticated = false;
        s.client.jwt_hs256_secret_file = Some(secret);
        s.client.jwt_issuer = Some("https://auth.example.com".into());
        s.client.jwt_audience = Some("visits-gateway".into());
    })
    .await;
    let before = app.sim.request_count();
    let scoped = hs256(
        &claims(now_secs() + 600, json!([EXAMPLE_ACTIVITY.to_string()])),
        HS_SECRET.as_bytes(),
    );
    let expired = hs256(&claims(now_secs() - 3600, json!("*")), HS_SECRET.as_bytes());
    let forged = hs256(
        &claims(now_secs() + 600, json!("*")),
        b"another-secret-that-is-also-long-enough!!",
    );
    for bad in [expired, forged, "not.a.jwt".to_owned()] {
        let mut ws = connect(&app, None).await;
        send(
            &mut ws,
            json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {bad}")}}),
        )
        .await;
        assert_eq!(
            close_code(&mut ws, Duration::from_secs(5)).await,
            Some(4401),
            "{bad}"
        );
    }

    let mut ws = connect(&app, None).await;
    init(
        &mut ws,
        json!({"Authorization": format!("Bearer {scoped}")}),
    )
    .await;
    subscribe(&mut ws, "outside", SMALL_ACTIVITY).await;
    let refused = next(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(refused["id"], "outside");
    assert_eq!(
        errors_of(&refused)[0]["extensions"]["code"],
        "FORBIDDEN",
        "{refused}"
    );
    assert_eq!(
        next(&mut ws, Duration::from_secs(5)).await,
        Some(json!({"id": "outside", "type": "complete"}))
    );
    assert_eq!(app.sim.request_count(), before, "a refusal cost a request");

    a_subscription_in_scope_gets_visits(&app, &mut ws, before, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn live_malformed_subscriptions_are_refused_with_codes_and_cost_no_platform_request() {
    let app = live_app(|_| {}).await;
    let before = app.sim.request_count();
    let mut ws = connect(&app, None).await;
    init(&mut ws, json!({})).await;
    let id = json!({"id": SMALL_ACTIVITY.to_string()});
    for (n, (query, variables)) in [
        ("subscription { userVisitAdded(activityId: ", id.clone()),
        (
            "subscription { userVisitAdded(activityId: \"x\") { nope } }",
            id.clone(),
        ),
        (SUBSCRIPTION, json!({})),
        (SUBSCRIPTION, json!({"id": {"deep": true}})),
        (SUBSCRIPTION, json!({"id": "-5"})),
        ("subscription { userVisitAdded { visitAt } }", id.clone()),
    ]
    .into_iter()
    .enumerate()
    {
        let sid = format!("bad-{n}");
        send(
            &mut ws,
            json!({"id": sid, "type": "subscribe", "payload": {"query": query, "variables": variables}}),
        )
        .await;
        let m = next(&mut ws, Duration::from_secs(5)).await.unwrap();
        assert_eq!(m["id"], sid.as_str(), "{m}");
        let code = &errors_of(&m)[0]["extensions"]["code"];
        assert_eq!(code, "BAD_USER_INPUT", "{query}: {m}");
        if m["type"] == "next" {
            assert_eq!(
                next(&mut ws, Duration::from_secs(5)).await,
                Some(json!({"id": sid, "type": "complete"}))
            );
        }
    }
    // The socket still serves.
    subscribe(&mut ws, "good", SMALL_ACTIVITY).await;
    started(&app, before, 1).await;
    assert_eq!(
        app.sim.request_count(),
        before + 1,
        "only the good one's baseline"
    );
    // A message that is not the protocol's closes with 4400, at no cost.
    ws.send(Message::Text("{not json".into())).await.unwrap();
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(5)).await,
        Some(4400)
    );
    subscriptions_become(&app, 0.0).await;
}

#[tokio::test]
async fn live_a_poller_stops_within_a_poll_interval_after_its_last_subscriber_completes() {
    let app = live_app(|_| {}).await;
    let mut ws = connect(&app, None).await;
    init(&mut ws, json!({})).await;
    let before = app.sim.request_count();
    subscribe(&mut ws, "1", SMALL_ACTIVITY).await;
    subscribe(&mut ws, "2", SMALL_ACTIVITY).await;
    started(&app, before, 1).await;
    // One leaves: the poller goes on for the other.
    unsubscribe(&mut ws, "1").await;
    subscriptions_become(&app, 1.0).await;
    let t = Utc::now();
    add_visits(&app, SMALL_ACTIVITY, &[t]);
    assert_eq!(
        visits(&mut ws, "2", 1, Duration::from_secs(5)).await.len(),
        1
    );
    // The last leaves: within one poll interval (1 s) no more requests.
    unsubscribe(&mut ws, "2").await;
    subscriptions_become(&app, 0.0).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after = app.sim.request_count();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        app.sim.request_count(),
        after,
        "the poller outlived its subscribers"
    );
    assert_eq!(
        metric(&app.metrics().await, "visits_gateway_live_pollers"),
        0.0
    );
    // The socket is still open, and a new subscriber starts a new poller.
    subscribe(&mut ws, "3", SMALL_ACTIVITY).await;
    started(&app, after, 1).await;
    let t = Utc::now();
    add_visits(&app, SMALL_ACTIVITY, &[t]);
    assert_eq!(
        visits(&mut ws, "3", 1, Duration::from_secs(5)).await.len(),
        1
    );
}

#[tokio::test]
async fn live_visits_are_found_exactly_across_the_seven_day_boundary() {
    // An activity quiet for over a week: the poller starts from 7 days ago,
    // so its next poll spans more than the platform's 7 days and is split.
    const QUIET: u64 = 10_024_999;
    // Two seconds between polls leave ample time to add visits before the
    // first poll after the starting point.
    let app = live_app(|s| s.upstream.live_poll = Duration::from_secs(2)).await;
    let old = Utc::now() - chrono::Duration::days(10);
    app.sim.insert_visits(
        QUIET,
        vec![visits_gateway::demo::data::visit(
            0,
            old,
            &mut fastrand::Rng::with_seed(7),
        )],
    );
    let mut ws = connect(&app, None).await;
    init(&mut ws, json!({})).await;
    let before = app.sim.request_count();
    subscribe(&mut ws, "1", QUIET).await;
    started(&app, before, 1).await;
    let baseline = app.sim.seen()[before].clone();

    // Stamped late (in the part before now - 6 days, three at one
    // millisecond), at the boundary's side, and now.
    let now = Utc::now();
    let late = now - chrono::Duration::days(7) + chrono::Duration::seconds(30);
    let near = now - chrono::Duration::days(6) - chrono::Duration::seconds(5);
    let after = now - chrono::Duration::days(6) + chrono::Duration::seconds(5);
    add_visits(&app, QUIET, &[late, late, late, near, after, now, now]);
    let got = visits(&mut ws, "1", 7, Duration::from_secs(6)).await;
    assert_eq!(
        got,
        app.expected(QUIET, late, now + chrono::Duration::seconds(1))
    );
    // No window asked for was longer than the platform's 7 days, and the
    // split one started where the baseline's did.
    let seen = app.sim.seen();
    let windows: Vec<_> = seen[before + 1..]
        .iter()
        .filter(|r| r.activity == QUIET.to_string())
        .map(|r| {
            let from: DateTime<Utc> = r.started_at.parse().unwrap();
            let to: DateTime<Utc> = r.ended_at.parse().unwrap();
            assert!(to - from <= chrono::Duration::days(7), "{r:?}");
            (from, to)
        })
        .collect();
    assert_eq!(
        windows[0].0,
        baseline.started_at.parse::<DateTime<Utc>>().unwrap(),
        "{windows:?}"
    );
    // And nothing twice afterwards.
    let t = Utc::now();
    add_visits(&app, QUIET, &[t]);
    let got = visits(&mut ws, "1", 1, Duration::from_secs(6)).await;
    assert_eq!(
        got,
        app.expected(QUIET, t, t + chrono::Duration::seconds(1))
    );
}

/// A WebSocket upgrade of `GET /graphql` through the plain HTTP client, to
/// read a refusal's status, headers and body.
async fn upgrade_over_http(app: &TestApp, authorization: Option<&str>) -> reqwest::Response {
    let mut request = app
        .http
        .get(app.url("/graphql"))
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-protocol", "graphql-transport-ws");
    if let Some(a) = authorization {
        request = request.header("authorization", a);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn live_an_upgrade_is_charged_to_the_clients_rate_and_refused_with_429_over_it() {
    let dir = temp_dir();
    let file = dir.join("api-keys");
    std::fs::write(&file, keys_line("web", "live-rate-key", "*")).unwrap();
    let app = live_app(|s| {
        s.client.rate_per_second = 1;
        s.client.burst = 3;
        s.client.api_keys_file = Some(file);
    })
    .await;
    // A query and two upgrades spend the anonymous address's burst of 3.
    let r = app
        .http
        .post(app.url("/graphql"))
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut open = connect(&app, None).await;
    let _second = connect(&app, None).await;
    let refused = upgrade_over_http(&app, None).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().get("retry-after").is_some());
    let body: Value = refused.json().await.unwrap();
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "RATE_LIMITED",
        "{body}"
    );
    // The same bucket refuses HTTP requests too.
    let r = app
        .http
        .post(app.url("/graphql"))
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    // An upgrade carrying a key is charged to the key, not the address.
    let mut keyed = connect(&app, Some("Bearer live-rate-key")).await;
    init(&mut keyed, json!({})).await;
    // A socket already open carries on, its messages charged like requests:
    // a subscription over the rate is refused with the code, and served once
    // the bucket has refilled.
    init(&mut open, json!({})).await;
    subscribe(&mut open, "1", SMALL_ACTIVITY).await;
    let m = next(&mut open, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (&m["id"], &m["type"]),
        (&json!("1"), &json!("error")),
        "{m}"
    );
    assert_eq!(m["payload"][0]["extensions"]["code"], "RATE_LIMITED", "{m}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    subscribe(&mut open, "2", SMALL_ACTIVITY).await;
    subscriptions_become(&app, 1.0).await;
}

#[tokio::test]
async fn live_a_message_over_max_body_bytes_ends_the_socket_at_no_cost() {
    let app = live_app(|s| s.server.max_body_bytes = 4096).await;
    let before = app.sim.request_count();
    let mut ws = connect(&app, None).await;
    init(&mut ws, json!({})).await;
    let huge = format!("query {{ {} }}", "__typename ".repeat(1000));
    let _ = send_raw(
        &mut ws,
        json!({"id": "1", "type": "subscribe", "payload": {"query": huge}}),
    )
    .await;
    // The gateway ends the socket (1009 when the close frame gets through).
    let code = close_code(&mut ws, Duration::from_secs(5)).await;
    assert!(matches!(code, None | Some(1009)), "{code:?}");
    // A reply is impossible: the socket is gone.
    assert!(
        ws.send(Message::Text(json!({"type": "ping"}).to_string().into()))
            .await
            .is_err()
            || next(&mut ws, Duration::from_secs(2)).await.is_none()
    );
    assert_eq!(app.sim.request_count(), before);
    subscriptions_become(&app, 0.0).await;
}

async fn send_raw(ws: &mut Ws, message: Value) -> Result<(), String> {
    ws.send(Message::Text(message.to_string().into()))
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn live_a_socket_without_connection_init_is_closed_with_4408_whatever_else_it_sends() {
    let app = live_app(|s| s.server.live_ping = Duration::from_secs(1)).await;
    let started = std::time::Instant::now();
    let mut ws = connect(&app, None).await;
    // Busy, but never initialised: pings, and pongs to the gateway's pings.
    let code = loop {
        let _ = send_raw(&mut ws, json!({"type": "ping"})).await;
        match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(Message::Text(t)))) if t.contains(r#""ping""#) => {
                let _ = send_raw(&mut ws, json!({"type": "pong"})).await;
            }
            Ok(Some(Ok(_))) | Err(_) => {}
            Ok(Some(Err(_)) | None) => break None,
        }
        assert!(started.elapsed() < Duration::from_secs(20), "never closed");
    };
    assert_eq!(code, Some(4408));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9),
        "closed after {waited:?}, before its 10 s"
    );
}

#[tokio::test]
async fn live_open_sockets_are_bounded_per_client_and_a_closed_one_frees_its_place() {
    let app = live_app(|s| s.client.live_max_connections_per_client = 2).await;
    let first = connect(&app, None).await;
    let _second = connect(&app, None).await;
    let refused = upgrade_over_http(&app, None).await;
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "RATE_LIMITED",
        "{body}"
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("LIVE_MAX_CONNECTIONS_PER_CLIENT"),
        "{body}"
    );
    drop(first);
    for _ in 0..50 {
        if upgrade_over_http(&app, None).await.status() == 101 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("a closed socket never freed its place");
}

#[tokio::test]
async fn live_a_fragment_bomb_or_an_expensive_query_over_the_socket_is_refused_at_once() {
    let app = live_app(|_| {}).await;
    let mut ws = connect(&app, None).await;
    init(&mut ws, json!({})).await;
    let (bomb, expensive, range) = bomb_and_expensive(&app);
    let started = std::time::Instant::now();
    send(
        &mut ws,
        json!({"id": "bomb", "type": "subscribe", "payload": {"query": bomb}}),
    )
    .await;
    send(
        &mut ws,
        json!({"id": "dear", "type": "subscribe", "payload": {"query": expensive, "variables": {"range": range}}}),
    )
    .await;
    let mut codes = std::collections::HashMap::new();
    for m in messages(&mut ws, 2).await {
        assert_eq!(m["type"], "error", "{m}");
        codes.insert(
            m["id"].as_str().unwrap().to_owned(),
            m["payload"][0]["extensions"]["code"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(codes["bomb"], "BAD_USER_INPUT");
    assert_eq!(codes["dear"], "QUERY_TOO_EXPENSIVE");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(app.sim.request_count(), 0);
    // The process kept answering.
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn live_only_graphql_transport_ws_messages_are_read_and_an_older_start_closes_the_socket_at_no_cost()
 {
    let app = live_app(|_| {}).await;
    let (_, expensive, range) = bomb_and_expensive(&app);
    // subscriptions-transport-ws's names (async-graphql would run a `start`
    // as a `subscribe`), and types no protocol has.
    for kind in ["start", "stop", "connection_terminate", "data", "query"] {
        let mut ws = connect(&app, None).await;
        init(&mut ws, json!({})).await;
        send(
            &mut ws,
            json!({"id": "old", "type": kind, "payload": {"query": expensive, "variables": {"range": range}}}),
        )
        .await;
        assert_eq!(
            close_code(&mut ws, Duration::from_secs(5)).await,
            Some(4400),
            "{kind}"
        );
    }
    let mut ws = connect(&app, None).await;
    init(&mut ws, json!({})).await;
    ws.send(Message::Text("not json".into())).await.unwrap();
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(5)).await,
        Some(4400)
    );
    // An operation before `connection_ack`: 4401, as the protocol says.
    let mut ws = connect(&app, None).await;
    subscribe(&mut ws, "early", EXAMPLE_ACTIVITY).await;
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(5)).await,
        Some(4401)
    );
    assert_eq!(app.sim.request_count(), 0, "a refused message ran");
}

#[tokio::test]
async fn live_a_query_over_the_socket_is_answered_with_next_then_complete_and_its_errors_coded() {
    let app = live_app(|_| {}).await;
    let mut ws = connect(&app, None).await;
    init(&mut ws, json!({})).await;
    let range = json!({ "from": ts(app.now - chrono::Duration::days(2)), "to": ts(app.now) });
    send(
        &mut ws,
        json!({"id": "q", "type": "subscribe", "payload": {
            "query": "query($id: ID!, $range: TimeRange) { userVisits(activityId: $id, range: $range, first: 3) { totalCount edges { node { visitAt } } } }",
            "variables": {"id": EXAMPLE_ACTIVITY.to_string(), "range": range}}}),
    )
    .await;
    let result = next(&mut ws, Duration::from_secs(10)).await.unwrap();
    assert_eq!(result["id"], "q", "{result}");
    assert_eq!(result["type"], "next", "{result}");
    let page = &result["payload"]["data"]["userVisits"];
    assert_eq!(page["edges"].as_array().unwrap().len(), 3, "{result}");
    assert!(page["totalCount"].as_u64().unwrap() >= 3, "{result}");
    assert_eq!(
        next(&mut ws, Duration::from_secs(5)).await,
        Some(json!({"id": "q", "type": "complete"}))
    );
    // An error the resolver raises is coded, as over HTTP.
    send(
        &mut ws,
        json!({"id": "bad", "type": "subscribe", "payload": {
            "query": "{ userVisits(activityId: \"not-a-number\") { totalCount } }"}}),
    )
    .await;
    let result = next(&mut ws, Duration::from_secs(10)).await.unwrap();
    assert_eq!(result["type"], "next", "{result}");
    assert_eq!(
        errors_of(&result)[0]["extensions"]["code"],
        "BAD_USER_INPUT",
        "{result}"
    );
    assert_eq!(
        next(&mut ws, Duration::from_secs(5)).await,
        Some(json!({"id": "bad", "type": "complete"}))
    );
}

/// A JWT the gateway (with its 30 s of leeway) holds valid for `secs` more.
pub(crate) fn jwt_valid_for(secs: u64) -> String {
    use crate::security::{HS_SECRET, claims, hs256, now_secs};
    hs256(
        &claims(now_secs() - 30 + secs, json!("*")),
        HS_SECRET.as_bytes(),
    )
}

pub(crate) async fn jwt_live_app(ping: Duration) -> TestApp {
    let secret = temp_dir().join("jwt-secret");
    std::fs::write(&secret, crate::security::HS_SECRET).unwrap();
    live_app(move |s| {
        s.client.allow_unauthenticated = false;
        s.client.jwt_hs256_secret_file = Some(secret);
        s.client.jwt_issuer = Some("https://auth.example.com".into());
        s.client.jwt_audience = Some("visits-gateway".into());
        s.server.live_ping = ping;
    })
    .await
}

#[tokio::test]
async fn live_a_credential_that_expires_on_an_open_socket_opens_nothing_more_and_closes_it_with_4403()
 {
    // A new operation after the expiry is refused with UNAUTHENTICATED.
    let app = jwt_live_app(Duration::from_secs(60)).await;
    let mut ws = connect(&app, None).await;
    let token = jwt_valid_for(2);
    init(&mut ws, json!({"Authorization": format!("Bearer {token}")})).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    subscribe(&mut ws, "late", EXAMPLE_ACTIVITY).await;
    let refused = next(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(refused["id"], "late", "{refused}");
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(
        refused["payload"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{refused}"
    );
    assert_eq!(app.sim.request_count(), 0);

    // What is open ends with the socket at the next ping after the expiry.
    let app = jwt_live_app(Duration::from_secs(1)).await;
    let mut ws = connect(&app, None).await;
    let token = jwt_valid_for(3);
    let opened = std::time::Instant::now();
    init(&mut ws, json!({"Authorization": format!("Bearer {token}")})).await;
    subscribe(&mut ws, "open", EXAMPLE_ACTIVITY).await;
    // A lively client: it answers every ping.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let code = loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.contains(r#""ping""#) => {
                let _ = send_raw(&mut ws, json!({"type": "pong"})).await;
            }
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            _ => break None,
        }
    };
    // 4403: graphql-ws reconnects on it (with fresh connectionParams).
    assert_eq!(code, Some(4403));
    let lived = opened.elapsed();
    assert!(
        lived >= Duration::from_secs(2),
        "closed after {lived:?}, while the credential was valid"
    );
}

#[tokio::test]
async fn live_an_unsound_upgrade_is_refused_with_a_coded_json_body() {
    let app = live_app(|_| {}).await;
    // No Sec-WebSocket-Key, then a version no client speaks.
    for (header, value) in [
        ("sec-websocket-version", "13"),
        ("sec-websocket-version", "8"),
    ] {
        let mut request = app
            .http
            .get(app.url("/graphql"))
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-protocol", "graphql-transport-ws")
            .header(header, value);
        if value == "8" {
            request = request.header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 400, "{value}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .contains("json"),
            "{value}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{body}"
        );
    }
}

#[tokio::test]
async fn live_a_second_connection_init_closes_the_socket_with_4429() {
    let app = live_app(|_| {}).await;
    let mut ws = connect(&app, None).await;
    init(&mut ws, json!({})).await;
    send(&mut ws, json!({"type": "connection_init"})).await;
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(5)).await,
        Some(4429)
    );
}

#[tokio::test]
async fn live_queries_running_on_one_socket_are_bounded_and_one_completed_sends_nothing_more() {
    let app = live_app(|s| {
        s.upstream.connect_timeout = Duration::from_millis(1000);
        s.upstream.timeout = Duration::from_millis(1500);
        s.upstream.deadline = Duration::from_millis(2000);
        s.server.request_timeout = Duration::from_millis(3000);
    })
    .await;
    // Every platform request hangs: each query runs until its deadline.
    for _ in 0..100 {
        app.sim.push_fault(Fault::Hang);
    }
    let mut ws = connect(&app, None).await;
    init(&mut ws, json!({})).await;
    let query = |id: String, days: i64| {
        let range =
            json!({ "from": ts(app.now - chrono::Duration::days(days)), "to": ts(app.now) });
        json!({"id": id, "type": "subscribe", "payload": {
            "query": "query($range: TimeRange) { userVisits(activityId: \"10024069\", range: $range, first: 1) { totalCount } }",
            "variables": {"range": range}}})
    };
    for n in 0..16 {
        send(&mut ws, query(format!("q{n}"), n + 1)).await;
    }
    // The 17th waits for none of them: refused at once.
    send(&mut ws, query("extra".into(), 30)).await;
    let refused = next(&mut ws, Duration::from_secs(1)).await.unwrap();
    assert_eq!(refused["id"], "extra", "{refused}");
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(
        refused["payload"][0]["extensions"]["code"], "RATE_LIMITED",
        "{refused}"
    );
    // One the client completes gets nothing more; the others their
    // result and `complete`.
    send(&mut ws, json!({"id": "q0", "type": "complete"})).await;
    let mut done = std::collections::HashSet::new();
    while done.len() < 15 {
        let m = next(&mut ws, Duration::from_secs(10))
            .await
            .expect("every running query answers");
        assert_ne!(m["id"], "q0", "{m}");
        if m["type"] == "complete" {
            done.insert(m["id"].as_str().unwrap().to_owned());
        } else {
            assert_eq!(m["type"], "next", "{m}");
            assert!(errors_of(&m)[0]["extensions"]["code"].is_string(), "{m}");
        }
    }
    assert_eq!(next(&mut ws, Duration::from_millis(500)).await, None);
}

#[tokio::test]
async fn live_an_id_already_running_closes_with_4409_even_when_its_message_is_refused() {
    let app = live_app(|_| {}).await;
    let mut ws = connect(&app, None).await;
    init(&mut ws, json!({})).await;
    subscribe(&mut ws, "s", SMALL_ACTIVITY).await;
    subscriptions_become(&app, 1.0).await;
    // Its id again, with a payload admission refuses.
    send(
        &mut ws,
        json!({"id": "s", "type": "subscribe", "payload": {"query": "{"}}),
    )
    .await;
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(5)).await,
        Some(4409)
    );
}
