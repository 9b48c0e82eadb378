//! The platform throttles, stalls and fails; clients should notice as little
//! as possible. Backoff and budget timing are unit-tested
//! on a paused clock; these tests drive the real thing over HTTP.

use std::time::Duration;

use serde_json::{Value, json};
use visits_gateway::demo::{EXAMPLE_ACTIVITY, Fault, SMALL_ACTIVITY};

use crate::helpers::{error_code, identities, spawn_app, spawn_app_with, ts};

fn small() -> Value {
    json!({ "id": SMALL_ACTIVITY.to_string(), "first": 5 })
}

#[tokio::test]
async fn transient_500s_are_retried_to_success() {
    let app = spawn_app_with(|s| s.upstream.retry_base = Duration::from_millis(5)).await;
    app.sim.push_fault(Fault::Status(500, "oops".into()));
    app.sim.push_fault(Fault::Status(502, String::new()));
    let r = app.user_visits(small()).await;
    assert!(r["errors"].is_null(), "{r}");
    assert_eq!(app.sim.request_count(), 3, "two failures, then the answer");
}

#[tokio::test]
async fn persistent_500s_give_upstream_unavailable_after_the_retries() {
    let app = spawn_app_with(|s| {
        s.upstream.retry_base = Duration::from_millis(5);
        s.upstream.max_retries = 2;
    })
    .await;
    for _ in 0..10 {
        app.sim.push_fault(Fault::Status(503, String::new()));
    }
    let r = app.user_visits(small()).await;
    assert_eq!(error_code(&r), "UPSTREAM_UNAVAILABLE", "{r}");
    assert_eq!(app.sim.request_count(), 3, "one attempt and two retries");
}

#[tokio::test]
async fn a_hanging_platform_gives_upstream_timeout_within_the_deadline() {
    let app = spawn_app_with(|s| {
        s.upstream.timeout = Duration::from_millis(200);
        s.upstream.connect_timeout = Duration::from_millis(200);
        s.upstream.retry_base = Duration::from_millis(5);
        s.upstream.deadline = Duration::from_millis(1000);
    })
    .await;
    for _ in 0..20 {
        app.sim.push_fault(Fault::Hang);
    }
    // A 200 with the code, not the whole-request 504: the deadline cut it short.
    let r = app.user_visits(small()).await;
    assert_eq!(error_code(&r), "UPSTREAM_TIMEOUT", "{r}");
    assert!(app.sim.request_count() >= 2, "the hang was retried");
}

#[tokio::test]
async fn malformed_json_gives_upstream_bad_response_without_retry() {
    let app = spawn_app_with(|s| s.upstream.retry_base = Duration::from_millis(5)).await;
    app.sim.push_fault(Fault::Malformed);
    let r = app.user_visits(small()).await;
    assert_eq!(error_code(&r), "UPSTREAM_BAD_RESPONSE", "{r}");
    assert_eq!(app.sim.request_count(), 1);
}

#[tokio::test]
async fn a_page_shorter_than_its_pager_promises_is_refused_and_never_cached() {
    // Served as fewer items, it would shift every later offset of the list.
    let app = spawn_app().await;
    app.sim.push_fault(Fault::ShortPage(8));
    let id = EXAMPLE_ACTIVITY.to_string();
    let short = app.user_visits(json!({ "id": id, "first": 8 })).await;
    assert_eq!(error_code(&short), "UPSTREAM_BAD_RESPONSE", "{short}");
    assert_eq!(app.sim.request_count(), 1);

    let again = app.user_visits(json!({ "id": id, "first": 20 })).await;
    assert!(again["errors"].is_null(), "{again}");
    assert_eq!(app.sim.request_count(), 2, "the short page was not cached");
    assert_eq!(identities(&again["data"]["userVisits"]).len(), 20);
}

#[tokio::test]
async fn one_unreadable_visit_refuses_its_whole_page_which_is_never_cached() {
    // Pages are checked whole when fetched: nothing unreadable is cached.
    let app = spawn_app().await;
    app.sim.push_fault(Fault::BadVisitAt(10));
    let id = EXAMPLE_ACTIVITY.to_string();
    let r = app.user_visits(json!({ "id": id, "first": 5 })).await;
    assert_eq!(error_code(&r), "UPSTREAM_BAD_RESPONSE", "{r}");
    let head = app.user_visits(json!({ "id": id, "first": 5 })).await;
    assert!(head["errors"].is_null(), "{head}");
    assert_eq!(app.sim.request_count(), 2, "asked again");
}

#[tokio::test]
async fn a_429_storm_is_absorbed_by_the_budget_while_the_wait_fits() {
    let app = spawn_app_with(|s| {
        s.upstream.retry_base = Duration::from_millis(5);
        s.upstream.max_budget_wait = Duration::from_millis(3000);
    })
    .await;
    app.sim.push_fault(Fault::TooManyRequests(1));
    app.sim.push_fault(Fault::TooManyRequests(1));
    let queries = (0..5)
        .map(|i| app.user_visits(json!({ "id": SMALL_ACTIVITY.to_string(), "first": 5 + i })));
    for r in futures::future::join_all(queries).await {
        assert!(
            r["errors"].is_null(),
            "a client saw the platform's 429: {r}"
        );
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("visits_gateway_upstream_requests_total{status=\"429\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_429_asking_for_more_than_the_budget_wait_gives_upstream_rate_limited() {
    let app = spawn_app_with(|s| s.upstream.max_budget_wait = Duration::from_millis(500)).await;
    app.sim.push_fault(Fault::TooManyRequests(20));
    let r = app.user_visits(small()).await;
    assert_eq!(error_code(&r), "UPSTREAM_RATE_LIMITED", "{r}");
    assert_eq!(
        app.sim.request_count(),
        1,
        "no retry into a throttled platform"
    );
}

#[tokio::test]
async fn a_stale_page_is_served_with_extensions_stale_when_the_platform_is_down() {
    let app = spawn_app_with(|s| {
        s.cache.ttl_recent = Duration::from_secs(1);
        s.upstream.max_retries = 0;
    })
    .await;
    // An explicit range: an open one is pinned to the minute, and would
    // move (to other pages) when a minute boundary falls inside the sleep.
    let (from, to) = (app.now - chrono::Duration::days(2), app.now);
    let query = json!({
        "id": SMALL_ACTIVITY.to_string(),
        "range": { "from": ts(from), "to": ts(to) },
        "first": 5,
    });
    let fresh = app.user_visits(query.clone()).await;
    assert!(fresh["errors"].is_null(), "{fresh}");
    assert!(fresh["extensions"]["stale"].is_null());
    // Wait out the 1 s TTL for real: a paused clock would also fire the HTTP
    // timeouts of this end-to-end path (the paused-clock version is in cache.rs).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for _ in 0..10 {
        app.sim.push_fault(Fault::Status(503, String::new()));
    }
    let stale = app.user_visits(query).await;
    assert!(stale["errors"].is_null(), "{stale}");
    assert_eq!(stale["data"], fresh["data"]);
    let age = &stale["extensions"]["stale"]["ageSeconds"];
    assert!(
        age.as_u64().is_some_and(|a| a >= 1),
        "{:.300} {:?}",
        stale.to_string(),
        stale["extensions"]
    );
}
