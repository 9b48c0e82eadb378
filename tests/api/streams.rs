//! Live visits over plain HTTP (issue 22): `userVisitAdded` as Server-Sent
//! Events (GraphQL over SSE, distinct connections mode) and as Apollo's
//! multipart subscriptions, read from the raw response body.

use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use visits_gateway::demo::{EXAMPLE_ACTIVITY, SMALL_ACTIVITY};

use crate::helpers::{Identity, TestApp, metric, spawn_app_with};
use crate::live::{bomb_and_expensive, keyed_live_app, started};

const SUBSCRIPTION: &str = "subscription($id: ID!) { userVisitAdded(activityId: $id) { userId anonymousId visitAt nickname } }";
pub(crate) const SSE: &str = "text/event-stream";
/// What Apollo Client's `HttpLink` sends for a subscription.
pub(crate) const MULTIPART: &str =
    "multipart/mixed;boundary=graphql;subscriptionSpec=1.0,application/json";

/// Every test polls each second.
async fn live_app(configure: impl FnOnce(&mut visits_gateway::config::Settings)) -> TestApp {
    spawn_app_with(|s| {
        s.upstream.live_poll = Duration::from_secs(1);
        configure(s);
    })
    .await
}

#[derive(Debug, PartialEq)]
pub(crate) enum Event {
    /// A result (SSE `next`; a multipart part's `payload`).
    Next(Value),
    Heartbeat,
    /// SSE `complete`; multipart's closing boundary.
    End,
}

/// A stream's response body, read event by event.
pub(crate) struct Events {
    accept: &'static str,
    response: reqwest::Response,
    buffer: Vec<u8>,
    /// Multipart: its first delimiter was read.
    opened: bool,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Events {
    /// The next event; `None` when the body ends (or fails) before one, or
    /// nothing comes within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(event) = self.parse() {
                return Some(event);
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .ok()??;
            self.buffer.extend_from_slice(&chunk);
        }
    }

    fn parse(&mut self) -> Option<Event> {
        if self.accept == SSE {
            let at = find(&self.buffer, b"\n\n")?;
            let block = String::from_utf8(self.buffer.drain(..at + 2).collect()).unwrap();
            let (mut event, mut data) = (None, String::new());
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = Some(e.trim().to_owned());
                } else if let Some(d) = line.strip_prefix("data:") {
                    data += d.trim();
                } else {
                    assert!(
                        line.is_empty() || line.starts_with(':'),
                        "not SSE: {block:?}"
                    );
                }
            }
            return Some(match event.as_deref() {
                None => Event::Heartbeat,
                Some("next") => Event::Next(serde_json::from_str(&data).unwrap()),
                Some("complete") => Event::End,
                Some(other) => panic!("unexpected event {other}"),
            });
        }
        const DELIMITER: &[u8] = b"\r\n--graphql";
        if !self.opened {
            if self.buffer.len() < DELIMITER.len() {
                return None;
            }
            assert!(self.buffer.starts_with(DELIMITER), "{:?}", self.buffer);
            self.buffer.drain(..DELIMITER.len());
            self.opened = true;
        }
        if self.buffer.starts_with(b"--\r\n") {
            self.buffer.drain(..4);
            return Some(Event::End);
        }
        let at = find(&self.buffer, DELIMITER)?;
        let part = String::from_utf8(self.buffer.drain(..at + DELIMITER.len()).collect()).unwrap();
        let part = &part[..at];
        let (headers, body) = part.split_once("\r\n\r\n").expect("a part has headers");
        assert!(
            headers
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{part:?}"
        );
        let body: Value = serde_json::from_str(body).unwrap();
        Some(if body == json!({}) {
            Event::Heartbeat
        } else {
            Event::Next(body["payload"].clone())
        })
    }

    /// The next result or end, skipping heartbeats.
    pub(crate) async fn next_result(&mut self, wait: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Event::Heartbeat => continue,
                other => return Some(other),
            }
        }
    }
}

/// POSTs `body` asking for `accept`'s stream.
pub(crate) async fn post(
    app: &TestApp,
    accept: &'static str,
    authorization: Option<&str>,
    body: Value,
) -> reqwest::Response {
    let mut request = app
        .http
        .post(app.url("/graphql"))
        .header("accept", accept)
        .json(&body);
    if let Some(a) = authorization {
        request = request.header("authorization", a);
    }
    request.send().await.unwrap()
}

/// A subscription to `activity`'s visits, its stream open.
async fn subscribe(
    app: &TestApp,
    accept: &'static str,
    authorization: Option<&str>,
    activity: u64,
) -> Events {
    let response = post(
        app,
        accept,
        authorization,
        json!({"query": SUBSCRIPTION, "variables": {"id": activity.to_string()}}),
    )
    .await;
    events(response, accept)
}

pub(crate) fn events(response: reqwest::Response, accept: &'static str) -> Events {
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    if accept == SSE {
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
    } else {
        assert!(
            content_type.starts_with("multipart/mixed"),
            "{content_type}"
        );
        assert!(
            content_type.contains("boundary=\"graphql\""),
            "{content_type}"
        );
    }
    Events {
        accept,
        response,
        buffer: Vec::new(),
        opened: false,
    }
}

fn identity(result: &Value) -> Identity {
    let v = &result["data"]["userVisitAdded"];
    assert!(v.is_object(), "{result}");
    (
        v["visitAt"].as_str().unwrap().to_owned(),
        v["userId"].as_str().map(str::to_owned),
        v["anonymousId"].as_str().map(str::to_owned),
    )
}

/// `n` visits from `events`, or panics with what came instead.
async fn visits(events: &mut Events, n: usize) -> Vec<Identity> {
    let mut got = Vec::new();
    while got.len() < n {
        match events.next_result(Duration::from_secs(5)).await {
            Some(Event::Next(result)) => got.push(identity(&result)),
            other => panic!("{} of {n} visits, then {other:?}", got.len()),
        }
    }
    got
}

/// The code of a refusal's first error, checking its status.
async fn refused(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.unwrap();
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code in {body}"))
        .to_owned()
}

#[tokio::test]
async fn stream_new_visits_reach_sse_and_multipart_subscribers_once_each_in_order() {
    let app = live_app(|_| {}).await;
    let before = app.sim.request_count();
    let mut sse = subscribe(&app, SSE, None, SMALL_ACTIVITY).await;
    let mut multipart = subscribe(&app, MULTIPART, None, SMALL_ACTIVITY).await;
    // One poller for both.
    started(&app, before, 1).await;
    let t0 = Utc::now();
    let t1 = t0 + chrono::Duration::milliseconds(1);
    for t in [t0, t0, t1] {
        app.sim.add_visit(SMALL_ACTIVITY, t);
    }
    let expected = app.expected(SMALL_ACTIVITY, t0, t0 + chrono::Duration::days(1));
    assert_eq!(expected.len(), 3);
    assert_eq!(visits(&mut sse, 3).await, expected);
    assert_eq!(visits(&mut multipart, 3).await, expected);
    // Once: nothing more comes in the next polls.
    for events in [&mut sse, &mut multipart] {
        assert_eq!(events.next_result(Duration::from_millis(2500)).await, None);
    }
    assert_eq!(
        metric(&app.metrics().await, "visits_gateway_live_subscriptions"),
        2.0
    );
    // A client that goes away frees its subscription.
    drop(sse);
    drop(multipart);
    for _ in 0..100 {
        if metric(&app.metrics().await, "visits_gateway_live_subscriptions") == 0.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("a closed stream kept its subscription");
}

#[tokio::test]
async fn stream_a_subscriber_joining_a_running_subscription_gets_only_the_visits_after_it() {
    let app = live_app(|_| {}).await;
    let before = app.sim.request_count();
    let mut first = subscribe(&app, SSE, None, SMALL_ACTIVITY).await;
    started(&app, before, 1).await;
    let t0 = Utc::now();
    app.sim.add_visit(SMALL_ACTIVITY, t0);
    let far = t0 + chrono::Duration::days(1);
    assert_eq!(
        visits(&mut first, 1).await,
        app.expected(SMALL_ACTIVITY, t0, far)
    );

    // The same subscription again joins the running execution: the visit
    // before it is not news to it.
    let mut late = subscribe(&app, SSE, None, SMALL_ACTIVITY).await;
    let t1 = Utc::now().max(t0 + chrono::Duration::milliseconds(1));
    app.sim.add_visit(SMALL_ACTIVITY, t1);
    let after = app.expected(SMALL_ACTIVITY, t1, far);
    assert_eq!(after.len(), 1);
    assert_eq!(visits(&mut late, 1).await, after);
    assert_eq!(visits(&mut first, 1).await, after);
    assert_eq!(late.next_result(Duration::from_millis(2500)).await, None);
}

#[tokio::test]
async fn stream_a_query_is_one_result_then_the_end() {
    let app = live_app(|_| {}).await;
    let query = json!({"query": "query($id: ID!) { userVisits(activityId: $id, last: 2) { totalCount } }",
        "variables": {"id": SMALL_ACTIVITY.to_string()}});
    for accept in [SSE, MULTIPART] {
        let mut events = events(post(&app, accept, None, query.clone()).await, accept);
        let Some(Event::Next(result)) = events.next(Duration::from_secs(5)).await else {
            panic!("no result");
        };
        assert!(
            result["data"]["userVisits"]["totalCount"].is_number(),
            "{result}"
        );
        assert_eq!(events.next(Duration::from_secs(5)).await, Some(Event::End));
    }
}

#[tokio::test]
async fn stream_credentials_and_scope_are_checked_as_over_websocket() {
    const WEB_KEY: &str = "stream-web-key";
    let app = keyed_live_app(WEB_KEY).await;
    let key = format!("Bearer {WEB_KEY}");
    let body =
        |activity: u64| json!({"query": SUBSCRIPTION, "variables": {"id": activity.to_string()}});
    for accept in [SSE, MULTIPART] {
        // No credential, or a bad one: 401 before any stream.
        let none = post(&app, accept, None, body(EXAMPLE_ACTIVITY)).await;
        assert_eq!(none.headers()["www-authenticate"], "Bearer");
        assert_eq!(refused(none, 401).await, "UNAUTHENTICATED");
        let bad = post(&app, accept, Some("Bearer nope"), body(EXAMPLE_ACTIVITY)).await;
        assert_eq!(refused(bad, 401).await, "UNAUTHENTICATED");
        // Out of the key's scope: the resolver's FORBIDDEN, then the end.
        let mut outside = events(
            post(&app, accept, Some(&key), body(SMALL_ACTIVITY)).await,
            accept,
        );
        let Some(Event::Next(result)) = outside.next_result(Duration::from_secs(5)).await else {
            panic!("no result");
        };
        assert_eq!(
            result["errors"][0]["extensions"]["code"], "FORBIDDEN",
            "{result}"
        );
        assert_eq!(
            outside.next_result(Duration::from_secs(5)).await,
            Some(Event::End)
        );
    }
    assert_eq!(
        app.sim.request_count(),
        0,
        "a refusal cost a platform request"
    );
    // In scope, with the key: visits come.
    let mut sse = subscribe(&app, SSE, Some(&key), EXAMPLE_ACTIVITY).await;
    started(&app, 0, 1).await;
    let t = Utc::now();
    app.sim.add_visit(EXAMPLE_ACTIVITY, t);
    assert_eq!(
        visits(&mut sse, 1).await,
        app.expected(EXAMPLE_ACTIVITY, t, t + chrono::Duration::days(1))
    );
}

#[tokio::test]
async fn stream_open_streams_are_bounded_per_client_with_sockets_and_a_closed_one_frees_its_place()
{
    let app = live_app(|s| s.client.live_max_connections_per_client = 2).await;
    let first = subscribe(&app, SSE, None, SMALL_ACTIVITY).await;
    let _socket = crate::live::connect(&app, None).await;
    for accept in [SSE, MULTIPART] {
        let over = post(
            &app,
            accept,
            None,
            json!({"query": SUBSCRIPTION, "variables": {"id": SMALL_ACTIVITY.to_string()}}),
        )
        .await;
        assert_eq!(refused(over, 429).await, "RATE_LIMITED");
    }
    drop(first);
    for _ in 0..50 {
        let again = post(
            &app,
            MULTIPART,
            None,
            json!({"query": SUBSCRIPTION, "variables": {"id": SMALL_ACTIVITY.to_string()}}),
        )
        .await;
        if again.status() == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("a closed stream never freed its place");
}

#[tokio::test]
async fn stream_the_clients_rate_is_charged_per_stream() {
    let app = live_app(|s| {
        s.client.rate_per_second = 1;
        s.client.burst = 1;
    })
    .await;
    let _first = subscribe(&app, SSE, None, SMALL_ACTIVITY).await;
    let over = post(
        &app,
        MULTIPART,
        None,
        json!({"query": SUBSCRIPTION, "variables": {"id": SMALL_ACTIVITY.to_string()}}),
    )
    .await;
    assert!(over.headers().contains_key("retry-after"));
    assert_eq!(refused(over, 429).await, "RATE_LIMITED");
}

#[tokio::test]
async fn stream_a_fragment_bomb_a_malformed_body_or_an_expensive_query_is_a_400_at_no_cost() {
    let app = live_app(|_| {}).await;
    let (bomb, expensive, range) = bomb_and_expensive(&app);
    let started = std::time::Instant::now();
    for accept in [SSE, MULTIPART] {
        let r = post(&app, accept, None, json!({"query": bomb})).await;
        assert_eq!(refused(r, 400).await, "BAD_USER_INPUT");
        let r = post(
            &app,
            accept,
            None,
            json!({"query": expensive, "variables": {"range": range}}),
        )
        .await;
        assert_eq!(refused(r, 400).await, "QUERY_TOO_EXPENSIVE");
        let r = post(&app, accept, None, json!({"variables": {}})).await;
        assert_eq!(refused(r, 400).await, "BAD_USER_INPUT");
        let r = app
            .http
            .post(app.url("/graphql"))
            .header("accept", accept)
            .header("content-type", "application/json")
            .body("{")
            .send()
            .await
            .unwrap();
        assert_eq!(refused(r, 400).await, "BAD_USER_INPUT");
        let r = app
            .http
            .post(app.url("/graphql"))
            .header("accept", accept)
            .header("content-type", "text/plain")
            .body(SUBSCRIPTION)
            .send()
            .await
            .unwrap();
        assert_eq!(refused(r, 415).await, "BAD_USER_INPUT");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(app.sim.request_count(), 0);
}

#[tokio::test]
async fn stream_a_credential_that_expires_ends_the_stream_with_unauthenticated() {
    use crate::live::{jwt_live_app, jwt_valid_for};
    let app = jwt_live_app(Duration::from_secs(1)).await;
    for accept in [SSE, MULTIPART] {
        let token = format!("Bearer {}", jwt_valid_for(3));
        let opened = std::time::Instant::now();
        let mut events = subscribe(&app, accept, Some(&token), SMALL_ACTIVITY).await;
        let Some(Event::Next(last)) = events.next_result(Duration::from_secs(8)).await else {
            panic!("the stream did not end with a result");
        };
        assert_eq!(
            last["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
            "{last}"
        );
        assert_eq!(
            events.next_result(Duration::from_secs(5)).await,
            Some(Event::End)
        );
        let lived = opened.elapsed();
        assert!(
            lived >= Duration::from_secs(2),
            "ended after {lived:?}, while the credential was valid"
        );
    }
}

#[tokio::test]
async fn stream_heartbeats_come_every_live_ping_seconds() {
    let app = live_app(|s| s.server.live_ping = Duration::from_secs(1)).await;
    for accept in [SSE, MULTIPART] {
        let mut events = subscribe(&app, accept, None, SMALL_ACTIVITY).await;
        let started = std::time::Instant::now();
        for _ in 0..3 {
            assert_eq!(
                events.next(Duration::from_secs(3)).await,
                Some(Event::Heartbeat)
            );
        }
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(2500) && waited < Duration::from_secs(5),
            "three heartbeats in {waited:?}"
        );
    }
}

#[tokio::test]
async fn stream_shutdown_ends_every_stream_with_its_protocols_end() {
    let app = live_app(|s| s.server.shutdown_drain = Duration::from_millis(300)).await;
    let mut sse = subscribe(&app, SSE, None, EXAMPLE_ACTIVITY).await;
    let mut multipart = subscribe(&app, MULTIPART, None, SMALL_ACTIVITY).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.begin_shutdown();
    for events in [&mut sse, &mut multipart] {
        assert_eq!(
            events.next_result(Duration::from_secs(5)).await,
            Some(Event::End)
        );
        // And the body ends there.
        assert_eq!(events.next(Duration::from_secs(5)).await, None);
        assert!(events.buffer.is_empty(), "{:?}", events.buffer);
    }
    tokio::time::timeout(Duration::from_secs(5), app.stopped())
        .await
        .expect("the gateway exits after ending its streams")
        .unwrap();
}

/// An open-range statistics subscription of `activity`, as a body.
fn open_stats(activity: u64) -> Value {
    json!({
        "query": "subscription($id: ID!, $range: TimeRange) { userVisitStats(activityId: $id, range: $range) { visits progress { complete } } }",
        "variables": { "id": activity.to_string(), "range": { "from": crate::helpers::ts(Utc::now() - chrono::Duration::days(2)) } },
    })
}

#[tokio::test]
async fn stream_a_shared_subscription_is_shared_only_by_equal_scopes() {
    use crate::security::{HS_SECRET, claims, hs256, now_secs};
    let app = crate::live::jwt_live_app(Duration::from_secs(15)).await;
    // Two tokens of one subject, naming different activities.
    let token = |activity: u64| {
        let claims = claims(now_secs() + 600, json!([activity.to_string()]));
        format!("Bearer {}", hs256(&claims, HS_SECRET.as_bytes()))
    };
    // One document and its variables for both.
    let body = open_stats(EXAMPLE_ACTIVITY);
    let mut first = events(
        post(&app, SSE, Some(&token(EXAMPLE_ACTIVITY)), body.clone()).await,
        SSE,
    );
    let Some(Event::Next(figures)) = first.next_result(Duration::from_secs(10)).await else {
        panic!("no figures");
    };
    assert!(figures["errors"].is_null(), "{figures}");
    // The same document from the other token: its own scope decides.
    let mut other = events(
        post(&app, SSE, Some(&token(SMALL_ACTIVITY)), body).await,
        SSE,
    );
    let Some(Event::Next(refused)) = other.next_result(Duration::from_secs(10)).await else {
        panic!("no result");
    };
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{refused}"
    );
    assert!(refused["data"].is_null(), "{refused}");
}

#[tokio::test]
async fn stream_a_key_whose_scope_narrows_on_a_reload_ends_its_stream() {
    const KEY: &str = "stream-reload-key";
    let file = crate::helpers::temp_dir().join("api-keys");
    std::fs::write(&file, crate::helpers::keys_line("web", KEY, "*")).unwrap();
    let f = file.clone();
    let app = live_app(move |s| {
        s.client.allow_unauthenticated = false;
        s.client.api_keys_file = Some(f);
        s.client.secrets_reload = Duration::from_secs(1);
        s.server.live_ping = Duration::from_secs(1);
    })
    .await;
    let key = format!("Bearer {KEY}");
    let mut stream = subscribe(&app, SSE, Some(&key), SMALL_ACTIVITY).await;
    assert_eq!(
        stream.next(Duration::from_secs(3)).await,
        Some(Event::Heartbeat)
    );
    std::fs::write(
        &file,
        crate::helpers::keys_line("web", KEY, &EXAMPLE_ACTIVITY.to_string()),
    )
    .unwrap();
    let Some(Event::Next(last)) = stream.next_result(Duration::from_secs(8)).await else {
        panic!("the stream did not end with a result");
    };
    assert_eq!(
        last["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{last}"
    );
    assert_eq!(
        stream.next_result(Duration::from_secs(5)).await,
        Some(Event::End)
    );
}
