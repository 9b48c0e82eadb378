use chrono::Duration;
use serde_json::{Value, json};
use visits_gateway::demo::{EXAMPLE_ACTIVITY, FEATURE_OFF_ACTIVITY, Fault, SMALL_ACTIVITY};

use crate::helpers::{error_code, logs, spawn_app, spawn_app_with, ts};

#[tokio::test]
async fn bad_input_is_refused_with_its_code_before_any_upstream_request() {
    let app = spawn_app().await;
    let id = EXAMPLE_ACTIVITY.to_string();
    let other = SMALL_ACTIVITY.to_string();
    let now = app.now;
    // Cursors of a real page, to misuse below.
    let page = app
        .user_visits(
            json!({ "id": id, "range": { "from": ts(now - Duration::days(3)), "to": ts(now) } }),
        )
        .await;
    let cursor = page["data"]["userVisits"]["pageInfo"]["endCursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = app.sim.request_count();

    let cases: Vec<(&str, Value, &str)> = vec![
        ("path traversal id", json!({ "id": "../1" }), "activityId"),
        ("negative id", json!({ "id": "-5" }), "activityId"),
        ("non-numeric id", json!({ "id": "abc" }), "activityId"),
        (
            "naive DateTime",
            json!({ "id": id, "range": { "from": "2026-11-01T00:00:00" } }),
            "DateTime",
        ),
        (
            "from after to",
            json!({ "id": id, "range": { "from": ts(now - Duration::days(1)), "to": ts(now - Duration::days(2)) } }),
            "before",
        ),
        (
            "from equals to",
            json!({ "id": id, "range": { "from": ts(now - Duration::days(1)), "to": ts(now - Duration::days(1)) } }),
            "empty",
        ),
        (
            "range over the maximum",
            json!({ "id": id, "range": { "from": ts(now - Duration::days(93)), "to": ts(now) } }),
            "92 days",
        ),
        (
            "first and last together",
            json!({ "id": id, "first": 5, "last": 5 }),
            "together",
        ),
        (
            "first 0",
            json!({ "id": id, "first": 0 }),
            "between 1 and 100",
        ),
        (
            "first -1",
            json!({ "id": id, "first": -1 }),
            "between 1 and 100",
        ),
        (
            "first 101",
            json!({ "id": id, "first": 101 }),
            "between 1 and 100",
        ),
        (
            "last 101",
            json!({ "id": id, "last": 101 }),
            "between 1 and 100",
        ),
        (
            "garbage cursor",
            json!({ "id": id, "after": "not-a-cursor" }),
            "not a cursor",
        ),
        (
            "cursor of another activity",
            json!({ "id": other, "after": cursor }),
            "another activity",
        ),
        (
            "cursor of another range",
            json!({ "id": id, "after": cursor, "range": { "from": ts(now - Duration::days(4)) } }),
            "another range",
        ),
    ];
    for (name, vars, hint) in cases {
        let r = app.user_visits(vars).await;
        assert_eq!(error_code(&r), "BAD_USER_INPUT", "{name}: {r}");
        let message = r["errors"][0]["message"].as_str().unwrap();
        assert!(
            message.contains(hint),
            "{name}: {message:?} should mention {hint:?}"
        );
    }
    assert_eq!(
        app.sim.request_count(),
        before,
        "bad input reached the platform"
    );
}

#[tokio::test]
async fn a_cursor_is_accepted_with_the_range_it_came_from_or_without_one() {
    let app = spawn_app().await;
    let id = EXAMPLE_ACTIVITY.to_string();
    let range = json!({ "from": ts(app.now - Duration::days(3)) });
    let page = app
        .user_visits(json!({ "id": id, "range": range, "first": 5 }))
        .await;
    let c = &page["data"]["userVisits"];
    let after = c["pageInfo"]["endCursor"].clone();
    for r in [Value::Null, range.clone(), c["range"].clone()] {
        let next = app
            .user_visits(json!({ "id": id, "range": r, "first": 5, "after": after }))
            .await;
        assert!(next["errors"].is_null(), "{next}");
        assert_eq!(next["data"]["userVisits"]["range"], c["range"]);
    }
}

async fn code_for_fault(fault: Fault) -> (String, Value) {
    // No retries: each fault is seen as the platform's one answer.
    let app = spawn_app_with(|s| s.upstream.max_retries = 0).await;
    app.sim.push_fault(fault);
    let r = app
        .user_visits(json!({ "id": SMALL_ACTIVITY.to_string() }))
        .await;
    (error_code(&r), r)
}

#[tokio::test]
async fn each_upstream_failure_maps_to_its_code() {
    let envelope = |status: u16, name: &str, message: &str| {
        Fault::Status(
            status,
            json!({ "name": name, "message": message, "status": status }).to_string(),
        )
    };
    let cases = [
        (
            envelope(403, "Forbidden", "无权访问该接口"),
            "UPSTREAM_FEATURE_DISABLED",
        ),
        (envelope(404, "NotFound", "NotFound"), "ACTIVITY_NOT_FOUND"),
        (Fault::TooManyRequests(30), "UPSTREAM_RATE_LIMITED"),
        (
            Fault::Status(500, "<html>internal error at /srv/app.js</html>".into()),
            "UPSTREAM_UNAVAILABLE",
        ),
        (Fault::Status(503, String::new()), "UPSTREAM_UNAVAILABLE"),
        (Fault::Malformed, "UPSTREAM_BAD_RESPONSE"),
        (envelope(400, "BadRequest", "Invalid Date"), "INTERNAL"),
    ];
    for (fault, code) in cases {
        let (got, r) = code_for_fault(fault.clone()).await;
        assert_eq!(got, code, "{fault:?}: {r}");
        assert!(
            !r.to_string().contains("/srv/app.js"),
            "the raw upstream body leaked: {r}"
        );
        assert_eq!(r["data"], Value::Null);
    }
    let (_, r) = code_for_fault(envelope(403, "Forbidden", "无权访问该接口")).await;
    assert_eq!(
        r["errors"][0]["extensions"]["upstreamMessage"],
        "无权访问该接口"
    );
}

#[tokio::test]
async fn a_rejected_token_an_unknown_activity_and_a_disabled_feature_map_to_their_codes() {
    let app = spawn_app().await;
    let r = app
        .user_visits(json!({ "id": FEATURE_OFF_ACTIVITY.to_string() }))
        .await;
    assert_eq!(error_code(&r), "UPSTREAM_FEATURE_DISABLED", "{r}");
    let r = app.user_visits(json!({ "id": "424242" })).await;
    assert_eq!(error_code(&r), "ACTIVITY_NOT_FOUND", "{r}");

    let wrong = spawn_app().await;
    // Point a gateway holding one token at a platform expecting another.
    let app2 =
        spawn_app_with(|s| s.upstream.base_url = wrong.sim.base_url().parse().unwrap()).await;
    let r = app2
        .user_visits(json!({ "id": EXAMPLE_ACTIVITY.to_string() }))
        .await;
    assert_eq!(error_code(&r), "UPSTREAM_UNAUTHORIZED", "{r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("UPSTREAM_TOKEN")
    );
}

#[tokio::test]
async fn errors_are_not_cached() {
    let app = spawn_app_with(|s| s.upstream.max_retries = 0).await;
    app.sim.push_fault(Fault::Status(503, String::new()));
    let vars = json!({ "id": SMALL_ACTIVITY.to_string() });
    assert_eq!(
        error_code(&app.user_visits(vars.clone()).await),
        "UPSTREAM_UNAVAILABLE"
    );
    let r = app.user_visits(vars).await;
    assert!(r["errors"].is_null(), "{r}");
}

#[tokio::test]
async fn the_platform_token_never_appears_in_responses_or_logs() {
    let app = spawn_app().await;
    // Success, upstream failures and bad input, each logged at debug level.
    app.user_visits(json!({ "id": EXAMPLE_ACTIVITY.to_string(), "first": 100 }))
        .await;
    app.sim.push_fault(Fault::Status(
        401,
        json!({"name":"Unauthorized","message":"请提供正确有效的 access_token 值","status":401})
            .to_string(),
    ));
    app.user_visits(json!({ "id": SMALL_ACTIVITY.to_string() }))
        .await;
    app.sim.push_fault(Fault::Malformed);
    app.user_visits(json!({ "id": SMALL_ACTIVITY.to_string(), "last": 3 }))
        .await;
    app.user_visits(json!({ "id": "../x" })).await;
    // The platform did receive it, so the assertion below means something.
    assert!(
        app.sim
            .seen()
            .iter()
            .any(|r| r.authorization.as_deref() == Some(&format!("Bearer {}", app.token)))
    );
    let logs = logs();
    assert!(logs.contains("upstream"), "logs were captured");
    assert!(
        !logs.contains(&app.token),
        "the platform token leaked into the logs"
    );
}
