//! `subscription { userVisitStats }` through the public doors: figures that
//! fill in with progress while a cold range loads, end equal to the query,
//! and, for an open range, move when visits are added.

use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Value, json};
use visits_gateway::demo::{EXAMPLE_ACTIVITY, SMALL_ACTIVITY};

use crate::helpers::{TestApp, spawn_app_with, ts};
use crate::live::{connect, init, next, send};
use crate::stats::{Ask, STATS, fetched_twice, pages_needed, slow_budget, stats};
use crate::streams::{Event, Events, MULTIPART, SSE, events, post};

/// The statistics query's document as a subscription, with its progress.
fn subscription() -> String {
    STATS.replacen("query(", "subscription(", 1).replacen(
        "range { from to }",
        "range { from to } progress { pagesRead pagesNeeded complete }",
        1,
    )
}

fn progress(result: &Value) -> (u64, u64, bool) {
    let p = &result["data"]["userVisitStats"]["progress"];
    assert!(p.is_object(), "{result}");
    (
        p["pagesRead"].as_u64().unwrap(),
        p["pagesNeeded"].as_u64().unwrap(),
        p["complete"].as_bool().unwrap(),
    )
}

/// The figures without the progress.
fn figures(result: &Value) -> Value {
    let mut v = result["data"]["userVisitStats"].clone();
    assert!(v.is_object(), "{result}");
    v.as_object_mut().unwrap().remove("progress");
    v
}

async fn open_stream(app: &TestApp, accept: &'static str, variables: Value) -> Events {
    let body = json!({ "query": subscription(), "variables": variables });
    events(post(app, accept, None, body).await, accept)
}

/// Results until the stream ends, each with when it came.
async fn until_the_end(events: &mut Events, wait: Duration) -> Vec<(Duration, Value)> {
    let t = Instant::now();
    let mut results = Vec::new();
    loop {
        match events.next_result(wait).await {
            Some(Event::Next(r)) => results.push((t.elapsed(), r)),
            Some(Event::End) => return results,
            other => panic!("after {} results: {other:?}", results.len()),
        }
    }
}

#[tokio::test]
async fn stats_subscription_fills_in_with_rising_progress_and_ends_equal_to_the_query() {
    let app = spawn_app_with(slow_budget).await;
    let ask = Ask::new(
        EXAMPLE_ACTIVITY,
        app.now - chrono::Duration::days(40),
        app.now - chrono::Duration::days(5),
    );
    let needed = pages_needed(&app, ask.activity, ask.from, ask.to);
    assert!(needed > 20, "{needed}");

    let t = Instant::now();
    let mut sse = open_stream(&app, SSE, ask.variables()).await;
    let results = until_the_end(&mut sse, Duration::from_secs(30)).await;
    let took = t.elapsed();
    eprintln!(
        "{} results in {took:?}; progress: {:?}",
        results.len(),
        results.iter().map(|(_, r)| progress(r)).collect::<Vec<_>>()
    );

    // The first at once, from the (empty) caches: partial.
    let (at, first) = &results[0];
    // At once: long before the pages are read (seconds at this budget).
    assert!(*at < Duration::from_millis(2500), "{at:?}");
    let (read, of, complete) = progress(first);
    assert!(!complete && read < of, "{first}");
    assert_eq!(
        first["data"]["userVisitStats"]["visits"], 0,
        "nothing cached yet"
    );
    // Then progress only rises, at most one result a second, and only the
    // last is complete.
    assert!(results.len() >= 3, "{results:?}");
    assert!(
        results.len() as u64 <= took.as_secs() + 2,
        "{} results in {took:?}",
        results.len()
    );
    let (_, last) = results.last().unwrap();
    for pair in results.windows(2) {
        let ((_, a), (_, b)) = (&pair[0], &pair[1]);
        assert!(
            progress(b).0 >= progress(a).0,
            "progress went back: {a} then {b}"
        );
        assert!(!progress(a).2, "complete before the end: {a}");
        let visits = |r: &Value| r["data"]["userVisitStats"]["visits"].as_u64().unwrap();
        assert!(visits(a) <= visits(b), "{a} then {b}");
    }
    assert_eq!(progress(last), (needed, needed, true), "{last}");

    // Every page was read once, and the last result is the query's.
    assert_eq!(fetched_twice(&app), Vec::<String>::new());
    assert_eq!(app.sim.request_count() as u64, needed);
    let query = stats(&app, &ask).await;
    assert!(query["errors"].is_null(), "{query}");
    assert_eq!(figures(last), query["data"]["userVisitStats"]);
    assert_eq!(
        app.sim.request_count() as u64,
        needed,
        "the query read nothing"
    );

    // The query's progress is complete.
    let q = app
        .graphql(
            "query($id: ID!, $range: TimeRange) { userVisitStats(activityId: $id, range: $range) { progress { pagesRead pagesNeeded complete } } }",
            json!({ "id": ask.activity.to_string(), "range": { "from": ts(ask.from), "to": ts(ask.to) } }),
        )
        .await;
    assert_eq!(progress(&q), (needed, needed, true), "{q}");
}

/// The next `next` payload of subscription `id` on a WebSocket.
async fn ws_result(ws: &mut crate::live::Ws, id: &str, wait: Duration) -> Value {
    let m = next(ws, wait).await.expect("a result");
    assert_eq!(
        (m["id"].as_str(), m["type"].as_str()),
        (Some(id), Some("next")),
        "{m}"
    );
    m["payload"].clone()
}

#[tokio::test]
async fn stats_subscription_of_an_open_range_moves_when_visits_are_added_over_every_transport() {
    let app = spawn_app_with(|s| s.upstream.live_poll = Duration::from_secs(1)).await;
    let from = Utc::now() - chrono::Duration::days(2);
    let variables = json!({ "id": SMALL_ACTIVITY.to_string(), "range": { "from": ts(from) },
        "tz": "UTC", "interval": "HOUR", "top": 10 });

    let mut sse = open_stream(&app, SSE, variables.clone()).await;
    let mut multipart = open_stream(&app, MULTIPART, variables.clone()).await;
    let mut ws = connect(&app, None).await;
    init(&mut ws, json!({})).await;
    send(
        &mut ws,
        json!({"id": "s", "type": "subscribe", "payload": { "query": subscription(), "variables": variables }}),
    )
    .await;

    // Each reaches its complete figures (at once, or after a partial first).
    let mut complete = Vec::new();
    for events in [&mut sse, &mut multipart] {
        loop {
            match events.next_result(Duration::from_secs(10)).await {
                Some(Event::Next(r)) if progress(&r).2 => break complete.push(r),
                Some(Event::Next(r)) => assert!(progress(&r).0 < progress(&r).1, "{r}"),
                other => panic!("{other:?}"),
            }
        }
    }
    loop {
        let r = ws_result(&mut ws, "s", Duration::from_secs(10)).await;
        if progress(&r).2 {
            break complete.push(r);
        }
    }
    let before = complete[0]["data"]["userVisitStats"].clone();
    let visits = |s: &Value| s["visits"].as_u64().unwrap();
    let to = |s: &Value| s["range"]["to"].as_str().unwrap().to_owned();
    for r in &complete {
        assert_eq!(visits(&r["data"]["userVisitStats"]), visits(&before), "{r}");
    }

    // Visits added now move the figures of every subscriber, within a poll
    // or two, with the range's end moved on.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t = Utc::now();
    app.sim.add_visit(SMALL_ACTIVITY, t);
    app.sim
        .add_visit(SMALL_ACTIVITY, t + chrono::Duration::milliseconds(1));
    let mut moved = Vec::new();
    for events in [&mut sse, &mut multipart] {
        match events.next_result(Duration::from_secs(5)).await {
            Some(Event::Next(r)) => moved.push(r),
            other => panic!("{other:?}"),
        }
    }
    moved.push(ws_result(&mut ws, "s", Duration::from_secs(5)).await);
    for r in &moved {
        let now = &r["data"]["userVisitStats"];
        assert_eq!(visits(now), visits(&before) + 2, "{r}");
        assert!(to(now) > to(&before), "{r}");
        assert!(progress(r).2, "{r}");
    }
    // One execution for the three: the same figures, to the byte.
    assert_eq!(moved[0], moved[1]);
    assert_eq!(moved[0], moved[2]);
}

#[tokio::test]
async fn stats_subscription_refusals_cost_no_platform_request() {
    let app = spawn_app_with(|_| {}).await;
    for (variables, code) in [
        (
            json!({ "id": "x", "tz": "UTC", "interval": "HOUR" }),
            "BAD_USER_INPUT",
        ),
        (
            json!({ "id": "7", "tz": "Mars/Olympus", "interval": "HOUR" }),
            "BAD_USER_INPUT",
        ),
        (
            json!({ "id": "7", "tz": "UTC", "interval": "MINUTE",
                "range": { "from": ts(Utc::now() - chrono::Duration::days(30)) } }),
            "BAD_USER_INPUT",
        ),
    ] {
        let body = json!({ "query": subscription(), "variables": variables });
        let response = post(&app, SSE, None, body).await;
        // Refused before the stream opens (admission), or as its one result.
        let r = if response.status() == 200 {
            let results = until_the_end(&mut events(response, SSE), Duration::from_secs(5)).await;
            assert_eq!(results.len(), 1, "{results:?}");
            results[0].1.clone()
        } else {
            assert_eq!(response.status(), 400);
            response.json().await.unwrap()
        };
        assert_eq!(
            r["errors"][0]["extensions"]["code"], code,
            "{variables}: {r}"
        );
    }
    assert_eq!(app.sim.request_count(), 0);
}

/// The next result of `events`, skipping any that came before (a shared
/// execution's results are the same for every subscriber).
async fn latest(events: &mut Events, mut last: Value) -> Value {
    while let Some(Event::Next(r)) = events.next_result(Duration::from_millis(300)).await {
        last = r;
    }
    last
}

#[tokio::test]
async fn stats_subscription_a_subscriber_joining_after_the_first_has_its_figures_gets_them_at_once()
{
    let app = spawn_app_with(|s| s.upstream.live_poll = Duration::from_secs(1)).await;
    let from = Utc::now() - chrono::Duration::days(2);
    let variables = json!({ "id": SMALL_ACTIVITY.to_string(), "range": { "from": ts(from) },
        "tz": "UTC", "interval": "HOUR", "top": 10 });

    let mut first = open_stream(&app, SSE, variables.clone()).await;
    let complete = loop {
        match first.next_result(Duration::from_secs(10)).await {
            Some(Event::Next(r)) if progress(&r).2 => break r,
            Some(Event::Next(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    // The first has had its results; the activity is quiet.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let complete = latest(&mut first, complete).await;

    // The same subscription again shares the running execution, and its
    // first result still comes at once: the figures the first has.
    let t = Instant::now();
    let mut late = open_stream(&app, SSE, variables).await;
    match late.next_result(Duration::from_secs(3)).await {
        Some(Event::Next(r)) => assert_eq!(r, complete),
        other => panic!("no result at once, but {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // Then both move with the next visit, alike, the late one by one.
    app.sim.add_visit(SMALL_ACTIVITY, Utc::now());
    let mut moved = Vec::new();
    for events in [&mut first, &mut late] {
        match events.next_result(Duration::from_secs(5)).await {
            Some(Event::Next(r)) => moved.push(r),
            other => panic!("{other:?}"),
        }
    }
    let visits = |r: &Value| r["data"]["userVisitStats"]["visits"].as_u64().unwrap();
    assert_eq!(visits(&moved[0]), visits(&complete) + 1, "{}", moved[0]);
    assert_eq!(moved[0], moved[1]);
    assert_eq!(
        late.next_result(Duration::from_millis(1500)).await,
        None,
        "a result twice"
    );
}

#[tokio::test]
async fn stats_subscription_of_a_closed_range_asked_again_after_it_completed_completes_again() {
    let app = spawn_app_with(|_| {}).await;
    let to = Utc::now() - chrono::Duration::days(1);
    let variables = json!({ "id": SMALL_ACTIVITY.to_string(),
        "range": { "from": ts(to - chrono::Duration::days(1)), "to": ts(to) },
        "tz": "UTC", "interval": "HOUR", "top": 10 });
    let mut first = open_stream(&app, SSE, variables.clone()).await;
    let results = until_the_end(&mut first, Duration::from_secs(10)).await;
    let (_, complete) = results.last().expect("a result");
    assert!(progress(complete).2, "{complete}");

    let mut again = open_stream(&app, SSE, variables).await;
    let results = until_the_end(&mut again, Duration::from_secs(3)).await;
    let (at, last) = results.last().expect("a result");
    assert!(*at < Duration::from_secs(2), "{at:?}");
    assert_eq!(figures(last), figures(complete));
    assert!(progress(last).2, "{last}");
}
