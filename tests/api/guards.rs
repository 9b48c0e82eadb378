//! Hostile input, case by case: forged cursors, the edges of time,
//! aliases that would drain the platform budget, refusals repeated, a panic.
//! Each is answered at once with a code, at no platform request.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{Duration, Utc};
use serde_json::{Value, json};
use visits_gateway::demo::{EXAMPLE_ACTIVITY, FEATURE_OFF_ACTIVITY, Fault, SMALL_ACTIVITY};

use crate::helpers::{TestApp, error_code, logs, metric, spawn_app, spawn_app_with, ts};

fn cursor(activity: u64, from_ms: i64, to_ms: i64, offset: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1:{activity}:{from_ms}:{to_ms}:{offset}"))
}

/// Sends `variables` to `userVisits` and returns the response with the
/// number of platform requests it made.
async fn cost_of(app: &TestApp, variables: Value) -> (Value, usize) {
    let before = app.sim.request_count();
    let r = app.user_visits(variables).await;
    (r, app.sim.request_count() - before)
}

#[tokio::test]
async fn cursors_rebuilt_with_forged_ranges_are_refused_at_no_platform_request() {
    let app = spawn_app().await;
    let ms = |t: chrono::DateTime<Utc>| t.timestamp_millis();
    let now = Utc::now();
    let day = Duration::days(1);
    let forged = [
        (
            "2001 to 2030",
            ms("2001-01-01T00:00:00Z".parse().unwrap()),
            ms("2030-01-01T00:00:00Z".parse().unwrap()),
        ),
        (
            "nine years",
            ms(now - Duration::days(9 * 365)),
            ms(now - day),
        ),
        (
            "two days into the future",
            ms(now - day * 3),
            ms(now + day * 2),
        ),
        (
            "near chrono's last instant",
            8_210_266_876_799_000,
            8_210_266_876_799_999,
        ),
        ("before 1970", -86_400_000, 0),
        ("empty", ms(now - day), ms(now - day)),
    ];
    for (what, from, to) in forged {
        let after = cursor(EXAMPLE_ACTIVITY, from, to, 3);
        let (r, cost) = cost_of(
            &app,
            json!({ "id": EXAMPLE_ACTIVITY.to_string(), "after": after }),
        )
        .await;
        assert_eq!(error_code(&r), "BAD_USER_INPUT", "{what}: {r}");
        assert_eq!(cost, 0, "{what}: the platform was asked");
    }
}

#[tokio::test]
async fn a_cursor_offset_past_its_list_is_refused_once_the_list_is_known() {
    let app = spawn_app().await;
    let id = SMALL_ACTIVITY.to_string();
    let first = app.user_visits(json!({ "id": id, "first": 2 })).await;
    let total = first["data"]["userVisits"]["totalCount"].as_u64().unwrap();
    let end = first["data"]["userVisits"]["pageInfo"]["endCursor"]
        .as_str()
        .unwrap();
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(end).unwrap()).unwrap();
    let parts: Vec<&str> = text.split(':').collect();
    let (from, to): (i64, i64) = (parts[2].parse().unwrap(), parts[3].parse().unwrap());
    for offset in [total, total + 1, 1 << 40] {
        for arg in ["after", "before"] {
            let forged = cursor(SMALL_ACTIVITY, from, to, offset);
            let (r, cost) = cost_of(&app, json!({ "id": id, arg: forged })).await;
            assert_eq!(error_code(&r), "BAD_USER_INPUT", "{arg} {offset}: {r}");
            assert_eq!(cost, 0, "the list's first pages were cached");
        }
    }
    let last = cursor(SMALL_ACTIVITY, from, to, total - 1);
    let (r, _) = cost_of(&app, json!({ "id": id, "before": last, "last": 1 })).await;
    assert!(r["errors"].is_null(), "the last item's cursor is fine: {r}");
}

#[tokio::test]
async fn ranges_at_the_edges_of_time_are_refused_with_a_code_not_a_panic() {
    let app = spawn_app().await;
    for (from, to) in [
        ("0001-01-01T00:00:00Z", Some("0001-01-02T00:00:00Z")),
        ("9999-12-31T23:59:59.999Z", None),
        (
            "2026-01-01T00:00:00-12:00",
            Some("2026-01-01T00:00:00+14:00"),
        ),
        ("1969-12-31T23:00:00Z", Some("1970-01-01T01:00:00Z")),
    ] {
        let range = json!({ "from": from, "to": to });
        let (r, cost) = cost_of(
            &app,
            json!({ "id": EXAMPLE_ACTIVITY.to_string(), "range": range }),
        )
        .await;
        assert_eq!(error_code(&r), "BAD_USER_INPUT", "{range}: {r}");
        assert_eq!(cost, 0);
    }
}

#[tokio::test]
async fn a_from_inside_the_current_pin_bucket_is_served_up_to_now() {
    let app = spawn_app().await;
    app.sim
        .add_visit(EXAMPLE_ACTIVITY, Utc::now() - Duration::milliseconds(200));
    let from = Utc::now() - Duration::seconds(1);
    let r = app
        .user_visits(json!({ "id": EXAMPLE_ACTIVITY.to_string(), "range": { "from": ts(from) } }))
        .await;
    assert!(r["errors"].is_null(), "{r}");
    let c = &r["data"]["userVisits"];
    assert_eq!(c["totalCount"], 1, "{r}");
    let to = visits_gateway::time::parse_rfc3339(c["range"]["to"].as_str().unwrap()).unwrap();
    assert!(to > from && to <= Utc::now(), "ends at now: {c}");
}

#[tokio::test]
async fn aliases_that_could_drain_the_budget_are_refused_before_any_platform_request() {
    let app = spawn_app().await;
    let range = json!({ "from": ts(app.now - Duration::days(60)), "to": ts(app.now) });
    let one = "userVisits(activityId: $id, range: $range, first: 100) { totalCount }";
    let three = format!("query($id: ID!, $range: TimeRange) {{ a: {one} b: {one} c: {one} }}");
    let vars = json!({ "id": EXAMPLE_ACTIVITY.to_string(), "range": range });
    let r = app.graphql(&three, vars.clone()).await;
    assert_eq!(error_code(&r), "QUERY_TOO_EXPENSIVE", "{r}");
    let message = r["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("33") && message.contains("16"),
        "names the figure and the limit: {message}"
    );
    assert!(r["data"].is_null());
    assert_eq!(app.sim.request_count(), 0);

    // Fragments count too; the same response name twice runs once.
    let spread = format!(
        "query($id: ID!, $range: TimeRange) {{ ...F ...F a: {one} }} fragment F on Query {{ b: {one} }}"
    );
    let r = app.graphql(&spread, vars.clone()).await;
    assert_eq!(error_code(&r), "QUERY_TOO_EXPENSIVE", "{r}");
    assert_eq!(app.sim.request_count(), 0);

    // Two different fields under one response name both run: both count.
    let other = "userVisits(activityId: $id, range: $range, first: 99) { totalCount }";
    let hidden =
        format!("query($id: ID!, $range: TimeRange) {{ a: {one} ... on Query {{ a: {other} }} }}");
    let r = app.graphql(&hidden, vars.clone()).await;
    assert_eq!(error_code(&r), "QUERY_TOO_EXPENSIVE", "{r}");
    assert_eq!(app.sim.request_count(), 0);

    // One such field is the largest legitimate request: served, also when a
    // fragment repeats it (GraphQL merges identical fields: it runs once).
    let r = app
        .graphql(
            &format!(
                "query($id: ID!, $range: TimeRange) {{ {one} ...F }} fragment F on Query {{ {one} }}"
            ),
            vars,
        )
        .await;
    assert!(r["errors"].is_null(), "{r}");
}

#[tokio::test]
async fn definitive_refusals_are_remembered_and_cost_the_platform_once() {
    let app = spawn_app().await;
    for id in ["424242".to_owned(), FEATURE_OFF_ACTIVITY.to_string()] {
        let before = app.sim.request_count();
        for _ in 0..5 {
            let r = app.user_visits(json!({ "id": id })).await;
            assert!(r["errors"].is_array(), "{r}");
        }
        assert_eq!(
            app.sim.request_count() - before,
            1,
            "{id}: one platform request"
        );
    }
}

#[tokio::test]
async fn a_panic_is_a_500_with_an_internal_error_logged_with_its_request_id_and_counted() {
    let app = spawn_app().await;
    let r = app
        .http
        .post(app.url("/graphql"))
        .header("x-request-id", "panic-test-7f3a")
        .json(&json!({ "query": "{ __testPanic }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(r.headers()["x-request-id"], "panic-test-7f3a");
    let body: Value = r.json().await.unwrap();
    assert_eq!(error_code(&body), "INTERNAL", "{body}");
    let logged = logs()
        .lines()
        .any(|l| l.contains("panicked") && l.contains("panic-test-7f3a"));
    assert!(logged, "the panic is logged with its request id");
    let metrics = app.metrics().await;
    assert_eq!(metric(&metrics, "visits_gateway_panics_total"), 1.0);
    // And the gateway goes on.
    assert_eq!(app.status("/healthz").await, 200);
    let r = app
        .user_visits(json!({ "id": SMALL_ACTIVITY.to_string() }))
        .await;
    assert!(r["errors"].is_null(), "{r}");
}

#[tokio::test]
async fn window_concurrency_bounds_the_platform_requests_of_a_whole_request() {
    // Three aliases over three distinct 3-window ranges: nine first pages.
    let query = |app: &TestApp| {
        let alias = |name: &str, days: i64| {
            let from = ts(app.now - Duration::days(days));
            format!(
                "{name}: userVisits(activityId: \"{EXAMPLE_ACTIVITY}\", range: {{ from: \"{from}\", to: \"{}\" }}) {{ totalCount }}",
                ts(app.now - Duration::days(days - 21))
            )
        };
        format!(
            "{{ {} {} {} }}",
            alias("a", 40),
            alias("b", 41),
            alias("c", 42)
        )
    };
    for (concurrency, most) in [(1, 1), (4, 4)] {
        let app = spawn_app_with(|s| s.paging.window_concurrency = concurrency).await;
        for _ in 0..9 {
            app.sim
                .push_fault(Fault::Delay(std::time::Duration::from_millis(30)));
        }
        let r = app.graphql(&query(&app), json!({})).await;
        assert!(r["errors"].is_null(), "{r}");
        assert_eq!(app.sim.request_count(), 9);
        let seen = app.sim.max_in_flight();
        assert!(
            seen <= most,
            "{seen} in flight with WINDOW_CONCURRENCY={concurrency}"
        );
        if concurrency > 1 {
            assert!(seen > 1, "the measure sees concurrency when it is allowed");
        }
    }
}
