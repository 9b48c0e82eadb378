//! Settings reach the parts they are for: the request cost bound, the
//! negative cache and the platform body cap, each set away from its default.

use chrono::Duration;
use serde_json::json;
use visits_gateway::demo::EXAMPLE_ACTIVITY;

use crate::helpers::{error_code, spawn_app_with, ts};

#[tokio::test]
async fn max_platform_requests_per_query_bounds_a_request() {
    let app = spawn_app_with(|s| s.paging.max_platform_requests = Some(3)).await;
    let ask = |days| {
        let range = json!({ "from": ts(app.now - Duration::days(days)), "to": ts(app.now) });
        app.user_visits(json!({ "id": EXAMPLE_ACTIVITY.to_string(), "range": range, "first": 100 }))
    };
    // One window and a slice of 100 (2 pages): 3.
    let r = ask(7).await;
    assert!(r["errors"].is_null(), "{r}");
    // Two windows: 4.
    let before = app.sim.request_count();
    let r = ask(8).await;
    assert_eq!(error_code(&r), "QUERY_TOO_EXPENSIVE", "{r}");
    assert_eq!(r["errors"][0]["extensions"]["limit"], 3, "{r}");
    assert_eq!(app.sim.request_count(), before);
}

#[tokio::test]
async fn negative_cache_seconds_zero_remembers_no_refusal() {
    let app = spawn_app_with(|s| s.cache.negative_ttl = std::time::Duration::ZERO).await;
    for _ in 0..3 {
        let r = app.user_visits(json!({ "id": "424242" })).await;
        assert!(r["errors"].is_array(), "{r}");
    }
    assert_eq!(app.sim.request_count(), 3, "each one asked the platform");
}

#[tokio::test]
async fn upstream_max_body_bytes_caps_a_platform_page() {
    let app = spawn_app_with(|s| {
        s.upstream.max_body_bytes = 1024;
        s.upstream.max_retries = 0;
    })
    .await;
    let r = app
        .user_visits(json!({ "id": EXAMPLE_ACTIVITY.to_string(), "first": 100 }))
        .await;
    assert_eq!(error_code(&r), "UPSTREAM_BAD_RESPONSE", "{r}");
}
