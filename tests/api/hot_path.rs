//! The response cache: repeated queries skip execution, but never skip
//! authorisation, never outlive their pages or pin bucket, never keep errors.

use std::time::Duration;

use serde_json::json;
use visits_gateway::demo::{EXAMPLE_ACTIVITY, SMALL_ACTIVITY};

use crate::helpers::{error_code, keys_line, metric, spawn_app, spawn_app_with, temp_dir};

fn hits(metrics: &str) -> u64 {
    metric(
        metrics,
        "visits_gateway_response_cache_lookups_total{outcome=\"hit\"}",
    ) as u64
}

#[tokio::test]
async fn a_repeated_request_is_answered_from_the_response_cache_and_only_the_exact_request() {
    let app = spawn_app().await;
    let vars = json!({ "id": SMALL_ACTIVITY.to_string(), "first": 3 });
    let q1 = "query($id: ID!, $first: Int) { userVisits(activityId: $id, first: $first) { totalCount nodes { nickname } } }";
    let q2 = "query($id: ID!, $first: Int) {\n  userVisits(activityId: $id, first: $first) {\n    totalCount\n    nodes { nickname }\n  }\n}";
    let first = app.graphql(q1, vars.clone()).await;
    assert_eq!(hits(&app.metrics().await), 0);
    let second = app.graphql(q1, vars.clone()).await;
    assert_eq!(first, second);
    assert_eq!(hits(&app.metrics().await), 1);
    // The key is the exact text: other whitespace is another entry, with
    // the same answer.
    let spaced = app.graphql(q2, vars.clone()).await;
    assert_eq!(first, spaced);
    assert_eq!(hits(&app.metrics().await), 1);
    let other = app
        .graphql(q1, json!({ "id": SMALL_ACTIVITY.to_string(), "first": 4 }))
        .await;
    assert_eq!(
        other["data"]["userVisits"]["nodes"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(
        hits(&app.metrics().await),
        1,
        "other variables are another response"
    );
}

#[tokio::test]
async fn a_cached_response_is_not_served_to_a_client_outside_its_activities() {
    let file = temp_dir().join("keys");
    std::fs::write(
        &file,
        keys_line("ops", "k-ops", "*") + &keys_line("web", "k-web", &EXAMPLE_ACTIVITY.to_string()),
    )
    .unwrap();
    let app = spawn_app_with(move |s| {
        s.client.allow_unauthenticated = false;
        s.client.api_keys_file = Some(file);
    })
    .await;
    let query = format!(
        "{{ a: userVisits(activityId: \"{EXAMPLE_ACTIVITY}\") {{ totalCount }} b: userVisits(activityId: \"{SMALL_ACTIVITY}\") {{ totalCount }} }}"
    );
    let ask = |key: &'static str| {
        app.http
            .post(app.url("/graphql"))
            .bearer_auth(key)
            .json(&json!({ "query": query }))
            .send()
    };
    let ops: serde_json::Value = ask("k-ops").await.unwrap().json().await.unwrap();
    assert!(ops["errors"].is_null(), "{ops}");
    let web: serde_json::Value = ask("k-web").await.unwrap().json().await.unwrap();
    assert_eq!(error_code(&web), "FORBIDDEN", "{web}");
    assert!(web["data"].is_null() || web["data"]["b"].is_null(), "{web}");
}

#[tokio::test]
async fn a_cached_response_does_not_outlive_its_pin_bucket() {
    let app = spawn_app_with(|s| s.paging.pin_granularity = Duration::from_secs(1)).await;
    let vars = json!({ "id": EXAMPLE_ACTIVITY.to_string(), "first": 1 });
    let first = app.user_visits(vars.clone()).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let later = app.user_visits(vars).await;
    assert_ne!(
        first["data"]["userVisits"]["range"]["to"], later["data"]["userVisits"]["range"]["to"],
        "the pinned `to` moved with the clock, so the response was rebuilt"
    );
}

#[tokio::test]
async fn the_response_cache_can_be_switched_off() {
    let app = spawn_app_with(|s| s.cache.response_cache_max_bytes = 0).await;
    let vars = json!({ "id": SMALL_ACTIVITY.to_string() });
    app.user_visits(vars.clone()).await;
    app.user_visits(vars).await;
    assert_eq!(hits(&app.metrics().await), 0);
}

#[tokio::test]
async fn with_both_caches_off_every_request_goes_to_the_platform() {
    let app = spawn_app_with(|s| {
        s.cache.response_cache_max_bytes = 0;
        s.cache.page_cache_max_bytes = 0;
    })
    .await;
    let vars = json!({ "id": SMALL_ACTIVITY.to_string() });
    let first = app.user_visits(vars.clone()).await;
    let second = app.user_visits(vars).await;
    assert_eq!(first, second);
    assert_eq!(app.sim.request_count(), 2);
}
