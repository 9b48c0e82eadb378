use serde_json::json;
use visits_gateway::demo::SMALL_ACTIVITY;

use crate::helpers::{error_code, spawn_app, spawn_app_with};

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

/// A 405 (or 404) with its `Allow` and a GraphQL error body with a code.
async fn refused_method(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    status: u16,
    allow: &[&str],
) {
    let r = http.request(method.clone(), url).send().await.unwrap();
    assert_eq!(r.status(), status, "{method} {url}");
    let allowed = r
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_owned());
    if allow.is_empty() {
        assert_eq!(allowed, None, "{method} {url}");
    } else {
        let allowed = allowed.unwrap_or_else(|| panic!("{method} {url}: no Allow"));
        for m in allow {
            assert!(allowed.contains(m), "{method} {url}: Allow: {allowed}");
        }
    }
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        error_code(&body),
        "BAD_USER_INPUT",
        "{method} {url}: {body}"
    );
}

#[tokio::test]
async fn a_method_a_path_does_not_take_is_a_405_with_allow_and_a_graphql_error() {
    use reqwest::Method;
    let app = spawn_app().await;
    for method in [Method::PUT, Method::DELETE, Method::PATCH] {
        refused_method(
            &app.http,
            method,
            &app.url("/graphql"),
            405,
            &["GET", "POST"],
        )
        .await;
    }
    for path in ["/metrics", "/healthz", "/readyz"] {
        refused_method(&app.http, Method::POST, &app.url(path), 405, &["GET"]).await;
    }

    // The metrics listener of its own answers alike.
    let app =
        spawn_app_with(|s| s.server.metrics_listen_addr = Some("127.0.0.1:0".parse().unwrap()))
            .await;
    let metrics = format!("http://{}", app.metrics_addr.unwrap());
    let url = format!("{metrics}/metrics");
    refused_method(&app.http, Method::POST, &url, 405, &["GET"]).await;
    let url = format!("{metrics}/graphql");
    refused_method(&app.http, Method::GET, &url, 404, &[]).await;
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
