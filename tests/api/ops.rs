//! What operators rely on: probes, graceful shutdown, request ids, metrics.

use std::time::Duration;

use serde_json::json;
use visits_gateway::demo::{Fault, SMALL_ACTIVITY};

use crate::helpers::{logs, metric, spawn_app, spawn_app_with};

#[tokio::test]
async fn shutdown_turns_readiness_off_drains_and_lets_in_flight_requests_finish() {
    let app = spawn_app_with(|s| {
        s.server.shutdown_drain = Duration::from_secs(1);
        s.server.shutdown_timeout = Duration::from_secs(5);
    })
    .await;
    assert_eq!(app.status("/readyz").await, 200);
    // A request that is still upstream when the signal comes.
    app.sim
        .push_fault(Fault::Delay(Duration::from_millis(1500)));
    let slow = {
        let http = app.http.clone();
        let url = app.url("/graphql");
        tokio::spawn(async move {
            http.post(url)
                .json(&json!({ "query": "{ userVisits(activityId: \"10024070\", first: 1) { totalCount } }" }))
                .send()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // During the drain: not ready, but still serving.
    assert_eq!(app.status("/readyz").await, 503);
    assert_eq!(app.status("/healthz").await, 200);
    let during = app.graphql("{ __typename }", json!({})).await;
    assert_eq!(during["data"]["__typename"], "Query");

    let finished = slow
        .await
        .unwrap()
        .expect("the in-flight request got its answer");
    assert_eq!(finished.status(), 200);
    let body: serde_json::Value = finished.json().await.unwrap();
    assert!(
        body["data"]["userVisits"]["totalCount"].as_u64().is_some(),
        "{body}"
    );
    app.stopped().await.expect("clean exit");
    assert!(
        app.http.get(app.url("/healthz")).send().await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn request_ids_are_taken_or_made_and_returned_and_logged() {
    let app = spawn_app().await;
    let r = app
        .http
        .get(app.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let r = app
        .http
        .post(app.url("/graphql"))
        .json(&json!({ "query": "{ userVisits(activityId: \"10024070\") { totalCount } }" }))
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 16, "a generated id");
    // A hostile id is replaced, not echoed.
    let r = app
        .http
        .get(app.url("/healthz"))
        .header("x-request-id", "x".repeat(200))
        .send()
        .await
        .unwrap();
    assert_ne!(r.headers()["x-request-id"], "x".repeat(200).as_str());
    // One access-log line, with the id, route, status and cache outcome.
    let line = logs()
        .lines()
        .find(|l| l.contains(&id) && l.contains("\"message\":\"request\""))
        .unwrap_or_else(|| panic!("no access log line for {id}"))
        .to_owned();
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["route"], "/graphql");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["cache"], "miss");
    assert!(entry["duration_ms"].as_f64().is_some());
}

#[tokio::test]
async fn every_metric_family_moves_when_it_should() {
    let app = spawn_app_with(|s| s.upstream.max_retries = 1).await;
    let vars = json!({ "id": SMALL_ACTIVITY.to_string(), "first": 5 });
    app.user_visits(vars.clone()).await; // misses, upstream 200s
    app.user_visits(json!({ "id": SMALL_ACTIVITY.to_string(), "first": 3 }))
        .await; // page cache hits
    app.user_visits(json!({ "id": "-5" })).await; // BAD_USER_INPUT
    app.sim.push_fault(Fault::Status(503, String::new()));
    let ten_days = crate::helpers::ts(app.now - chrono::Duration::days(10));
    let r = app
        .user_visits(json!({ "id": SMALL_ACTIVITY.to_string(), "range": { "from": ten_days } }))
        .await; // a retry
    assert!(r["errors"].is_null(), "{r}");
    let m = app.metrics().await;
    for (series, at_least) in [
        (
            "visits_gateway_http_requests_total{route=\"/graphql\",method=\"POST\",status=\"200\"}",
            4.0,
        ),
        (
            "visits_gateway_http_request_duration_seconds_count{route=\"/graphql\"}",
            4.0,
        ),
        (
            "visits_gateway_graphql_errors_total{code=\"BAD_USER_INPUT\"}",
            1.0,
        ),
        (
            "visits_gateway_upstream_requests_total{status=\"200\"}",
            2.0,
        ),
        (
            "visits_gateway_upstream_requests_total{status=\"503\"}",
            1.0,
        ),
        (
            "visits_gateway_upstream_request_duration_seconds_count",
            3.0,
        ),
        ("visits_gateway_upstream_retries_total", 1.0),
        ("visits_gateway_cache_lookups_total{outcome=\"hit\"}", 1.0),
        ("visits_gateway_cache_lookups_total{outcome=\"miss\"}", 1.0),
        ("visits_gateway_cache_entries", 1.0),
        ("visits_gateway_cache_bytes", 100.0),
        ("visits_gateway_response_cache_entries", 1.0),
        ("visits_gateway_response_cache_bytes", 100.0),
        ("visits_gateway_http_requests_in_flight", 1.0),
    ] {
        let v = metric(&m, series);
        assert!(
            v >= at_least,
            "{series} = {v}, expected at least {at_least}\n{m}"
        );
    }
    assert!(!m.contains(&app.token));
    // A made-up method is counted as `other`, not as a new series.
    let odd = reqwest::Method::from_bytes(b"FOOBAR").unwrap();
    app.http
        .request(odd, app.url("/graphql"))
        .send()
        .await
        .unwrap();
    let m = app.metrics().await;
    assert!(m.contains("method=\"other\""), "{m}");
    assert!(!m.contains("FOOBAR"));
}

#[tokio::test]
async fn metrics_can_live_on_their_own_port() {
    let app =
        spawn_app_with(|s| s.server.metrics_listen_addr = Some("127.0.0.1:0".parse().unwrap()))
            .await;
    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 404, "not on the main port");

    // Served on its own port, with what the main port did.
    let r = app
        .user_visits(json!({ "id": SMALL_ACTIVITY.to_string(), "first": 2 }))
        .await;
    assert!(r["errors"].is_null(), "{r}");
    let addr = app.metrics_addr.expect("the metrics listener is bound");
    let r = app
        .http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m = r.text().await.unwrap();
    assert!(
        metric(
            &m,
            r#"visits_gateway_upstream_requests_total{status="200"}"#
        ) >= 1.0,
        "{m}"
    );
    let r = app
        .http
        .get(format!("http://{addr}/graphql"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the metrics port serves metrics alone");
}

/// Every `visits_gateway_*` series the chart's Grafana dashboard and alert
/// rules query is one `/metrics` really serves (with the suffixes its
/// `# TYPE` lines give: `_total` for counters, `_bucket`/`_sum`/`_count` for
/// histograms). CI's chart check asserts the same against the `metrics!`
/// table; this holds that table to the real output.
#[tokio::test]
async fn the_charts_dashboard_and_alerts_query_only_exported_metrics() {
    let app = spawn_app().await;
    app.user_visits(json!({ "id": SMALL_ACTIVITY.to_string(), "first": 2 }))
        .await;
    app.user_visits(json!({ "id": "-5" })).await; // an error, so its family is out
    let m = app.metrics().await;
    let mut exported = std::collections::HashSet::new();
    for line in m.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            match kind {
                "counter" => {
                    exported.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        exported.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    exported.insert(name.to_owned());
                }
            }
        }
    }
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/visits-gateway");
    for file in ["files/dashboard.json", "templates/prometheusrule.yaml"] {
        let text = std::fs::read_to_string(format!("{chart}/{file}")).unwrap();
        let mut queried = 0;
        for (at, _) in text.match_indices("visits_gateway_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                exported.contains(&name),
                "{file} queries {name}, which /metrics does not serve:\n{m}"
            );
            queried += 1;
        }
        assert!(queried >= 5, "{file}: {queried} metrics");
    }
}
