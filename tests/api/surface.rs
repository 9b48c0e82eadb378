use serde_json::json;
use visits_gateway::demo::SMALL_ACTIVITY;

use crate::helpers::{error_code, spawn_app};

#[tokio::test]
async fn the_committed_schema_matches_the_code() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schema/schema.graphql"
    ))
    .unwrap();
    assert_eq!(
        committed,
        visits_gateway::graphql::sdl(),
        "schema/schema.graphql is stale: run `cargo run -- schema > schema/schema.graphql`"
    );
}

#[tokio::test]
async fn probes_answer() {
    let app = spawn_app().await;
    assert_eq!(app.status("/healthz").await, 200);
    assert_eq!(app.status("/readyz").await, 200);
}

#[tokio::test]
async fn an_unreadable_body_is_a_400_with_a_graphql_error() {
    let app = spawn_app().await;
    let r = app
        .http
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(error_code(&body), "BAD_USER_INPUT");
}

#[tokio::test]
async fn graphql_syntax_and_validation_errors_carry_a_code() {
    let app = spawn_app().await;
    for query in [
        "{ userVisits(",
        "{ nope }",
        "{ userVisits(activityId: \"1\") { nope } }",
    ] {
        let r = app.graphql(query, json!({})).await;
        assert_eq!(error_code(&r), "BAD_USER_INPUT", "{query}: {r}");
    }
}

#[tokio::test]
async fn visits_have_the_spec_shape_with_nulls_for_empty_strings() {
    let app = spawn_app().await;
    let r = app.user_visits(json!({ "id": SMALL_ACTIVITY.to_string(), "range": { "from": crate::helpers::ts(app.now - chrono::Duration::days(59)) }, "first": 100 })).await;
    let edges = r["data"]["userVisits"]["edges"].as_array().unwrap().clone();
    assert!(edges.len() >= 50, "{r}");
    let mut anonymous = 0;
    for e in &edges {
        let n = &e["node"];
        let anon = n["isAnonymous"].as_bool().unwrap();
        assert_eq!(anon, n["userId"].is_null());
        assert_eq!(anon, n["anonymousId"].is_string(), "{n}");
        assert_ne!(n["avatar"], json!(""));
        assert_ne!(n["partnerUid"], json!(""));
        let visit = n["visitAt"].as_str().unwrap();
        assert!(visit.ends_with('Z') && visit.len() == 24, "{visit}");
        if anon {
            anonymous += 1;
            assert_eq!(n["nickname"], "匿名用户");
            assert_eq!(n["anonymousId"].as_str().unwrap().len(), 8);
        }
    }
    assert!(anonymous > 0 && anonymous < edges.len());
}
