//! GraphQL over HTTP (docs/api.md): both media types with their statuses, the
//! content type a POST must have, and queries over GET sharing the POST's
//! admission, response cache and cost check.

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, ALLOW, CONTENT_TYPE};
use serde_json::{Value, json};
use visits_gateway::demo::{EXAMPLE_ACTIVITY, SMALL_ACTIVITY};

use crate::helpers::{
    TestApp, error_code, keys_line, metric, spawn_app, spawn_app_with, temp_dir, ts,
};

pub(crate) const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";
pub(crate) const JSON: &str = "application/json";

/// POSTs `body` as `application/json` with `accept`; the status, the
/// content type and the body.
pub(crate) async fn post(app: &TestApp, accept: &str, body: &str) -> (StatusCode, String, Value) {
    post_as(app, None, accept, body).await
}

/// [`post`], with `key` as the client's credential when given.
async fn post_as(
    app: &TestApp,
    key: Option<&str>,
    accept: &str,
    body: &str,
) -> (StatusCode, String, Value) {
    let mut request = app
        .http
        .post(app.url("/graphql"))
        .header(CONTENT_TYPE, JSON)
        .header(ACCEPT, accept);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    answer(request.body(body.to_owned()).send().await.unwrap()).await
}

/// GETs `/graphql?<query_string>` with `accept`.
pub(crate) async fn get(
    app: &TestApp,
    accept: &str,
    query_string: &str,
) -> (StatusCode, String, Value) {
    let r = app
        .http
        .get(app.url(&format!("/graphql?{query_string}")))
        .header(ACCEPT, accept)
        .send()
        .await
        .unwrap();
    answer(r).await
}

async fn answer(r: reqwest::Response) -> (StatusCode, String, Value) {
    let status = r.status();
    let content_type = r
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, content_type, body)
}

pub(crate) fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Three 60-day lists of 100: more platform requests than one request may cost.
fn expensive_query(app: &TestApp) -> String {
    let range = format!(
        r#"range: {{ from: "{}", to: "{}" }}"#,
        ts(app.now - chrono::Duration::days(60)),
        ts(app.now)
    );
    let one = format!(
        r#"userVisits(activityId: "{EXAMPLE_ACTIVITY}", {range}, first: 100) {{ totalCount }}"#
    );
    format!("{{ a: {one} b: {one} c: {one} }}")
}

fn total_count_query() -> String {
    format!(r#"{{ userVisits(activityId: "{EXAMPLE_ACTIVITY}", last: 1) {{ totalCount }} }}"#)
}

#[tokio::test]
async fn the_response_has_the_media_type_the_client_accepts() {
    let app = spawn_app().await;
    let body = r#"{"query":"{ __typename }"}"#;
    for (accept, expected) in [
        (GRAPHQL_RESPONSE, GRAPHQL_RESPONSE),
        (
            "application/graphql-response+json, application/json;q=0.9",
            GRAPHQL_RESPONSE,
        ),
        (
            "application/json, application/graphql-response+json",
            GRAPHQL_RESPONSE,
        ),
        (JSON, JSON),
        ("*/*", JSON),
        ("text/html, */*;q=0.8", JSON),
    ] {
        let (status, content_type, body) = post(&app, accept, body).await;
        assert_eq!(status, 200, "{accept}: {body}");
        assert!(
            content_type.starts_with(expected),
            "{accept}: {content_type}"
        );
        assert_eq!(body["data"]["__typename"], "Query", "{accept}");
    }
    for accept in [
        "text/plain",
        "application/xml, image/png",
        "application/json;q=0",
    ] {
        let (status, content_type, body) =
            post(&app, accept, r#"{"query":"{ __typename }"}"#).await;
        assert_eq!(status, 406, "{accept}: {body}");
        assert!(content_type.starts_with(JSON), "{content_type}");
        assert_eq!(error_code(&body), "BAD_USER_INPUT");
    }
}

#[tokio::test]
async fn a_post_must_be_json() {
    let app = spawn_app().await;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/graphql"),
        Some("application/json; charset=utf-16"),
    ] {
        let mut request = app
            .http
            .post(app.url("/graphql"))
            .body(r#"{"query":"{ __typename }"}"#);
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        let (status, _, body) = answer(request.send().await.unwrap()).await;
        assert_eq!(status, 415, "{content_type:?}: {body}");
        assert_eq!(error_code(&body), "BAD_USER_INPUT");
        assert!(body.get("data").is_none(), "{body}");
    }
    let (status, _, _) = answer(
        app.http
            .post(app.url("/graphql"))
            .header(CONTENT_TYPE, "application/json; charset=UTF-8")
            .body(r#"{"query":"{ __typename }"}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
}

/// Requests that are not GraphQL requests: 400 in both media types.
#[tokio::test]
async fn malformed_requests_are_400_in_both_types() {
    let app = spawn_app().await;
    let cases = [
        ("unparsable JSON", r#"{ "not a JSON"#),
        ("no body", ""),
        ("not an object", "[1]"),
        ("a batch", r#"[{"query":"{ __typename }"}]"#),
        ("no query", r#"{"qeury":"{ __typename }"}"#),
        ("an empty query", r#"{"query":""}"#),
        ("a query that is not a string", r#"{"query":5}"#),
        (
            "variables that are not an object",
            r#"{"query":"{ __typename }","variables":"x"}"#,
        ),
        (
            "extensions that are not an object",
            r#"{"query":"{ __typename }","extensions":[1]}"#,
        ),
        (
            "an operation name that is not a string",
            r#"{"query":"{ __typename }","operationName":false}"#,
        ),
    ];
    for (what, body) in cases {
        for accept in [GRAPHQL_RESPONSE, JSON] {
            let (status, content_type, r) = post(&app, accept, body).await;
            assert_eq!(status, 400, "{what} ({accept}): {r}");
            assert!(content_type.starts_with(accept), "{what}: {content_type}");
            assert!(r.get("data").is_none(), "{what}: {r}");
            assert_eq!(error_code(&r), "BAD_USER_INPUT", "{what}");
        }
    }
}

/// Well-formed requests that fail before execution: a 400 without `data` in
/// `application/graphql-response+json`, a 200 with `errors` in
/// `application/json`.
#[tokio::test]
async fn document_errors_are_400_without_data_only_in_the_graphql_response_type() {
    let app = spawn_app().await;
    let query_of = |q: &str| json!({ "query": q }).to_string();
    let cases = [
        ("a syntax error", query_of("{ userVisits(")),
        ("an unknown field", query_of("{ nope }")),
        (
            "a variable that does not coerce",
            json!({ "query": "query($id: ID!) { userVisits(activityId: $id) { totalCount } }", "variables": { "id": [1] } }).to_string(),
        ),
        (
            "a missing variable",
            json!({ "query": "query($id: ID!) { __typename }", "variables": { "id": null } }).to_string(),
        ),
        (
            "an unknown operation",
            json!({ "query": "query A { __typename }", "operationName": "B" }).to_string(),
        ),
        (
            "nesting too deep",
            query_of(&format!("{{ a(x: {}1{}) }}", "[".repeat(100), "]".repeat(100))),
        ),
    ];
    for (what, body) in &cases {
        let (status, content_type, r) = post(&app, GRAPHQL_RESPONSE, body).await;
        assert_eq!(status, 400, "{what}: {r}");
        assert!(content_type.starts_with(GRAPHQL_RESPONSE), "{what}");
        assert!(r.get("data").is_none(), "{what}: {r}");
        assert_eq!(error_code(&r), "BAD_USER_INPUT", "{what}");

        let (status, content_type, r) = post(&app, JSON, body).await;
        assert_eq!(status, 200, "{what}: {r}");
        assert!(content_type.starts_with(JSON), "{what}");
        assert_eq!(error_code(&r), "BAD_USER_INPUT", "{what}");
        assert!(r["data"].is_null(), "{what}: {r}");
    }
    assert_eq!(app.sim.request_count(), 0);
}

#[tokio::test]
async fn a_too_expensive_request_is_a_request_error() {
    let app = spawn_app().await;
    let body = json!({ "query": expensive_query(&app) }).to_string();
    let (status, _, r) = post(&app, GRAPHQL_RESPONSE, &body).await;
    assert_eq!(
        (status.as_u16(), error_code(&r).as_str()),
        (400, "QUERY_TOO_EXPENSIVE"),
        "{r}"
    );
    assert!(r.get("data").is_none(), "{r}");
    let (status, _, r) = post(&app, JSON, &body).await;
    assert_eq!(
        (status.as_u16(), error_code(&r).as_str()),
        (200, "QUERY_TOO_EXPENSIVE"),
        "{r}"
    );
    assert_eq!(app.sim.request_count(), 0);
}

#[tokio::test]
async fn field_errors_are_200_with_data_in_both_types() {
    let (app, key) = keyed_app().await;
    let body = json!({ "query": format!(r#"{{ userVisits(activityId: "{SMALL_ACTIVITY}", last: 1) {{ totalCount }} }}"#) }).to_string();
    for accept in [GRAPHQL_RESPONSE, JSON] {
        let (status, _, r) = post_as(&app, Some(&key), accept, &body).await;
        assert_eq!(status, 200, "{accept}: {r}");
        assert_eq!(error_code(&r), "FORBIDDEN");
        assert!(r.as_object().unwrap().contains_key("data"), "{r}");
        assert!(r["errors"][0]["path"].is_array(), "{r}");
    }
}

const KEY: &str = "vgk_over_http_test_key";

async fn keyed_app() -> (TestApp, String) {
    let file = temp_dir().join("api-keys");
    std::fs::write(&file, keys_line("web", KEY, &EXAMPLE_ACTIVITY.to_string())).unwrap();
    let app = spawn_app_with(move |s| {
        s.client.allow_unauthenticated = false;
        s.client.api_keys_file = Some(file);
    })
    .await;
    (app, KEY.to_owned())
}

#[tokio::test]
async fn credential_rate_and_size_refusals_keep_their_statuses_in_both_types() {
    let (app, key) = keyed_app().await;
    for accept in [GRAPHQL_RESPONSE, JSON] {
        let (status, content_type, r) = post(&app, accept, r#"{"query":"{ __typename }"}"#).await;
        assert_eq!(
            (status.as_u16(), error_code(&r).as_str()),
            (401, "UNAUTHENTICATED")
        );
        assert!(content_type.starts_with(accept), "{content_type}");
        // GET is admitted like POST.
        let (status, _, r) = get(&app, accept, "query=%7B__typename%7D").await;
        assert_eq!(
            (status.as_u16(), error_code(&r).as_str()),
            (401, "UNAUTHENTICATED")
        );
        let big = json!({ "query": format!("{{ __typename }} #{}", "x".repeat(40_000)) });
        let (status, _, r) = post_as(&app, Some(&key), accept, &big.to_string()).await;
        assert_eq!(
            (status.as_u16(), error_code(&r).as_str()),
            (413, "BAD_USER_INPUT")
        );
        // A GET may carry no more than a POST body: coded, not hyper's bare 414.
        let r = app
            .http
            .get(app.url(&format!(
                "/graphql?query=%7B__typename%7D%23{}",
                "x".repeat(40_000)
            )))
            .header(ACCEPT, accept)
            .header("authorization", format!("Bearer {key}"))
            .send()
            .await
            .unwrap();
        let (status, _, r) = answer(r).await;
        assert_eq!(
            (status.as_u16(), error_code(&r).as_str()),
            (414, "BAD_USER_INPUT")
        );
    }
    let app = spawn_app_with(|s| {
        s.client.rate_per_second = 1;
        s.client.burst = 1;
    })
    .await;
    let (status, _, _) = get(&app, GRAPHQL_RESPONSE, "query=%7B__typename%7D").await;
    assert_eq!(status, 200);
    let (status, _, r) = get(&app, GRAPHQL_RESPONSE, "query=%7B__typename%7D").await;
    assert_eq!(
        (status.as_u16(), error_code(&r).as_str()),
        (429, "RATE_LIMITED")
    );
    let (status, _, r) = post(&app, GRAPHQL_RESPONSE, r#"{"query":"{ __typename }"}"#).await;
    assert_eq!(
        (status.as_u16(), error_code(&r).as_str()),
        (429, "RATE_LIMITED")
    );
}

#[tokio::test]
async fn get_runs_queries_with_their_variables_and_operation_name() {
    let app = spawn_app().await;
    let (status, content_type, r) = get(&app, JSON, "query=%7B%20__typename%20%7D").await;
    assert_eq!(status, 200, "{r}");
    assert!(content_type.starts_with(JSON));
    assert_eq!(r["data"]["__typename"], "Query");

    let query = "query A { __typename } query B($id: ID!, $n: Int) { userVisits(activityId: $id, last: $n) { totalCount nodes { visitAt } } }";
    let qs = format!(
        "query={}&operationName=B&variables={}",
        encode(query),
        encode(&json!({ "id": EXAMPLE_ACTIVITY.to_string(), "n": 2 }).to_string())
    );
    let (status, content_type, r) = get(&app, GRAPHQL_RESPONSE, &qs).await;
    assert_eq!(status, 200, "{r}");
    assert!(content_type.starts_with(GRAPHQL_RESPONSE));
    assert_eq!(
        r["data"]["userVisits"]["nodes"].as_array().unwrap().len(),
        2,
        "{r}"
    );
    // The same through POST.
    let posted = app
        .graphql(
            query.replace("query A { __typename } ", "").as_str(),
            json!({ "id": EXAMPLE_ACTIVITY.to_string(), "n": 2 }),
        )
        .await;
    assert_eq!(posted["data"], r["data"]);
}

#[tokio::test]
async fn only_a_browser_gets_the_playground() {
    let app = spawn_app().await;
    let r = app
        .http
        .get(app.url("/graphql"))
        .header(ACCEPT, "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    // Any other GET is a GraphQL request: here one without a query.
    for accept in [JSON, GRAPHQL_RESPONSE, "*/*"] {
        let (status, _, r) = get(&app, accept, "").await;
        assert_eq!(status, 400, "{accept}: {r}");
        assert_eq!(error_code(&r), "BAD_USER_INPUT");
    }
}

#[tokio::test]
async fn a_get_may_only_run_a_query() {
    let app = spawn_app().await;
    for (query, operation) in [
        ("mutation { __typename }", None),
        (
            "subscription($id: ID!) { userVisitAdded(activityId: $id) { visitAt } }",
            None,
        ),
        (
            "query A { __typename } mutation B { __typename }",
            Some("B"),
        ),
    ] {
        let mut qs = format!("query={}", encode(query));
        if let Some(op) = operation {
            qs += &format!("&operationName={op}");
        }
        for accept in [JSON, GRAPHQL_RESPONSE] {
            let r = app
                .http
                .get(app.url(&format!("/graphql?{qs}")))
                .header(ACCEPT, accept)
                .send()
                .await
                .unwrap();
            assert_eq!(r.headers().get(ALLOW).unwrap(), "POST");
            let (status, _, r) = answer(r).await;
            assert_eq!(status, 405, "{query}: {r}");
            assert_eq!(error_code(&r), "BAD_USER_INPUT");
        }
    }
    // The query of a document that also holds a subscription runs.
    let both = format!(
        r#"query A {{ __typename }} subscription B {{ userVisitAdded(activityId: "{EXAMPLE_ACTIVITY}") {{ visitAt }} }}"#
    );
    let (status, _, r) = get(
        &app,
        JSON,
        &format!("query={}&operationName=A", encode(&both)),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["data"]["__typename"], "Query", "{r}");
}

#[tokio::test]
async fn bad_query_string_parameters_are_400() {
    let app = spawn_app().await;
    for qs in [
        "query=%7B__typename%7D&variables=not-json",
        "query=%7B__typename%7D&variables=%5B1%5D",
        "query=%7B__typename%7D&extensions=5",
        "query=%7B__typename%7D&query=%7B__typename%7D",
        "operationName=A",
    ] {
        for accept in [JSON, GRAPHQL_RESPONSE] {
            let (status, _, r) = get(&app, accept, qs).await;
            assert_eq!(status, 400, "{qs} ({accept}): {r}");
            assert_eq!(error_code(&r), "BAD_USER_INPUT", "{qs}");
            assert!(r.get("data").is_none(), "{r}");
        }
    }
    // A document error over GET follows the media type, as over POST.
    let (status, _, r) = get(&app, JSON, "query=%7B%20nope%20%7D").await;
    assert_eq!(
        (status.as_u16(), error_code(&r).as_str()),
        (200, "BAD_USER_INPUT")
    );
    let (status, _, r) = get(&app, GRAPHQL_RESPONSE, "query=%7B%20nope%20%7D").await;
    assert_eq!(
        (status.as_u16(), error_code(&r).as_str()),
        (400, "BAD_USER_INPUT")
    );
    assert!(r.get("data").is_none(), "{r}");
}

#[tokio::test]
async fn gets_are_answered_from_the_response_cache_and_cost_checked() {
    let app = spawn_app().await;
    let qs = format!("query={}", encode(&total_count_query()));
    let (_, _, first) = get(&app, JSON, &qs).await;
    let platform = app.sim.request_count();
    assert!(platform > 0);
    let hits = metric(
        &app.metrics().await,
        "visits_gateway_response_cache_lookups_total{outcome=\"hit\"}",
    );
    let (status, _, again) = get(&app, GRAPHQL_RESPONSE, &qs).await;
    assert_eq!(status, 200);
    assert_eq!(again, first);
    assert_eq!(app.sim.request_count(), platform);
    let after = metric(
        &app.metrics().await,
        "visits_gateway_response_cache_lookups_total{outcome=\"hit\"}",
    );
    assert_eq!(after, hits + 1.0);

    let app = spawn_app().await;
    let expensive = expensive_query(&app);
    let (status, _, r) = get(&app, JSON, &format!("query={}", encode(&expensive))).await;
    assert_eq!(
        (status.as_u16(), error_code(&r).as_str()),
        (200, "QUERY_TOO_EXPENSIVE"),
        "{r}"
    );
    assert_eq!(app.sim.request_count(), 0);
}

fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[tokio::test]
async fn automatic_persisted_queries_over_post_and_get() {
    let app = spawn_app().await;
    let query = total_count_query();
    let hash = sha256_hex(&query);
    let persisted = json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } });
    // An unknown hash, over POST and GET.
    let body = json!({ "extensions": persisted }).to_string();
    let (status, _, r) = post(&app, JSON, &body).await;
    assert_eq!(
        (status.as_u16(), error_code(&r).as_str()),
        (200, "PERSISTED_QUERY_NOT_FOUND"),
        "{r}"
    );
    let (status, _, r) = post(&app, GRAPHQL_RESPONSE, &body).await;
    assert_eq!(
        (status.as_u16(), error_code(&r).as_str()),
        (400, "PERSISTED_QUERY_NOT_FOUND"),
        "{r}"
    );
    let get_qs = format!("extensions={}", encode(&persisted.to_string()));
    let (_, _, r) = get(&app, JSON, &get_qs).await;
    assert_eq!(error_code(&r), "PERSISTED_QUERY_NOT_FOUND", "{r}");
    // A query with another query's hash is refused, and not stored.
    let wrong = json!({ "query": "{ __typename }", "extensions": persisted }).to_string();
    let (status, _, r) = post(&app, GRAPHQL_RESPONSE, &wrong).await;
    assert_eq!(
        (status.as_u16(), error_code(&r).as_str()),
        (400, "BAD_USER_INPUT"),
        "{r}"
    );
    let (_, _, r) = post(&app, JSON, &body).await;
    assert_eq!(error_code(&r), "PERSISTED_QUERY_NOT_FOUND", "{r}");
    // The query with its hash runs and is stored; then the hash alone runs.
    let full = json!({ "query": query, "extensions": persisted }).to_string();
    let (status, _, stored) = post(&app, JSON, &full).await;
    assert_eq!(status, 200, "{stored}");
    assert!(
        stored["data"]["userVisits"]["totalCount"].is_number(),
        "{stored}"
    );
    let (status, _, r) = post(&app, JSON, &body).await;
    assert_eq!(status, 200);
    assert_eq!(r["data"], stored["data"]);
    let (status, _, r) = get(&app, GRAPHQL_RESPONSE, &get_qs).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["data"], stored["data"]);
}

/// A successful GET that may be cached. A response with under a second of
/// freshness left (its pin bucket ending) is not cacheable: ask again in the
/// next second.
async fn cacheable_get(app: &TestApp, qs: &str, key: Option<&str>) -> reqwest::Response {
    for _ in 0..3 {
        let mut request = app.http.get(app.url(&format!("/graphql?{qs}")));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let got = request.send().await.unwrap();
        assert_eq!(got.status(), 200);
        if got.headers()["cache-control"] != "no-store" {
            return got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    panic!("no cacheable answer within three seconds");
}

#[tokio::test]
async fn a_get_is_cacheable_publicly_only_without_credentials_and_never_for_errors() {
    let app = spawn_app().await;
    let qs = format!("query={}", encode(&total_count_query()));
    let r = cacheable_get(&app, &qs, None).await;
    let cache_control = r.headers()["cache-control"].to_str().unwrap().to_owned();
    assert!(
        cache_control.starts_with("public, max-age="),
        "{cache_control}"
    );
    let max_age: u64 = cache_control["public, max-age=".len()..].parse().unwrap();
    assert!((1..=30).contains(&max_age), "{cache_control}");
    let etag = r.headers()["etag"].clone();
    // The same request with its ETag: 304, no body.
    let again = app
        .http
        .get(app.url(&format!("/graphql?{qs}")))
        .header("if-none-match", etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"], etag);
    assert!(again.bytes().await.unwrap().is_empty());
    let other = app
        .http
        .get(app.url(&format!("/graphql?{qs}")))
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    // Errors are never stored.
    for qs in ["query=%7B%20nope%20%7D", "variables=x"] {
        let r = app
            .http
            .get(app.url(&format!("/graphql?{qs}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["cache-control"], "no-store", "{qs}");
        assert!(r.headers().get("etag").is_none());
    }
    // A field error too.
    let missing = format!(
        "query={}",
        encode(r#"{ userVisits(activityId: "0") { totalCount } }"#)
    );
    let r = app
        .http
        .get(app.url(&format!("/graphql?{missing}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["cache-control"], "no-store");

    // With a credential: private.
    let (app, key) = keyed_app().await;
    let r = cacheable_get(&app, &qs, Some(&key)).await;
    let cache_control = r.headers()["cache-control"].to_str().unwrap();
    assert!(
        cache_control.starts_with("private, max-age="),
        "{cache_control}"
    );
    let r = app
        .http
        .get(app.url(&format!("/graphql?{qs}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["cache-control"], "no-store");
}
