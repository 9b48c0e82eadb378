//! Client limits that fit real deployments: clients behind a
//! trusted proxy are told apart by the address it forwards, an API key may
//! carry its own rate, the `Bearer` scheme is case-insensitive, and the
//! default rate lets a fast pager through.

use std::time::Duration;

use serde_json::{Value, json};
use visits_gateway::config::ClientSettings;
use visits_gateway::demo::{EXAMPLE_ACTIVITY, SMALL_ACTIVITY};

use crate::helpers::{TestApp, error_code, identities, keys_line, spawn_app_with, temp_dir, ts};

/// The status of a cheap query sent with the given headers.
async fn status(app: &TestApp, headers: &[(&str, &str)]) -> u16 {
    let mut req = app
        .http
        .post(app.url("/graphql"))
        .json(&json!({ "query": "{ __typename }" }));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    if status == 429 {
        let body: Value = r.json().await.unwrap();
        assert_eq!(error_code(&body), "RATE_LIMITED");
    }
    status
}

async fn forwarded_for(app: &TestApp, xff: &str) -> u16 {
    status(app, &[("x-forwarded-for", xff)]).await
}

/// Anonymous clients at 1 request a second, burst 2.
fn strict(s: &mut visits_gateway::config::Settings) {
    s.client.rate_per_second = 1;
    s.client.burst = 2;
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket() {
    // The tests connect from 127.0.0.1: that is the proxy.
    let app = spawn_app_with(|s| {
        strict(s);
        s.client.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    for _ in 0..2 {
        assert_eq!(forwarded_for(&app, "203.0.113.7").await, 200);
    }
    assert_eq!(forwarded_for(&app, "203.0.113.7").await, 429);
    assert_eq!(
        forwarded_for(&app, "203.0.113.8").await,
        200,
        "another client behind the same proxy has its own bucket"
    );
    assert_eq!(
        forwarded_for(&app, "198.51.100.1, 203.0.113.7").await,
        429,
        "an entry the client wrote left of its real address changes nothing"
    );
    assert_eq!(
        forwarded_for(&app, "203.0.113.7, 127.0.0.1").await,
        429,
        "a second trusted hop is skipped"
    );
    assert_eq!(
        forwarded_for(&app, "203.0.113.8, not-an-address").await,
        200,
        "a malformed entry falls back to the proxy's own bucket"
    );
    assert_eq!(status(&app, &[]).await, 200, "the proxy's own bucket");
    assert_eq!(status(&app, &[]).await, 429);
}

#[tokio::test]
async fn an_untrusted_peer_cannot_pick_a_new_bucket_with_x_forwarded_for() {
    let app = spawn_app_with(|s| {
        strict(s);
        s.client.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
    })
    .await;
    assert_eq!(forwarded_for(&app, "203.0.113.7").await, 200);
    assert_eq!(forwarded_for(&app, "203.0.113.8").await, 200);
    for spoof in ["203.0.113.9", "10.1.1.1", "203.0.113.9, 10.1.1.1"] {
        assert_eq!(forwarded_for(&app, spoof).await, 429, "{spoof}");
    }
    assert_eq!(status(&app, &[]).await, 429);
}

#[tokio::test]
async fn a_key_with_its_own_rate_is_held_to_it_and_other_keys_to_theirs() {
    let file = temp_dir().join("api-keys");
    let with_rate = |line: String, rate: &str| format!("{} {rate}\n", line.trim_end());
    std::fs::write(
        &file,
        [
            keys_line("web", "vgk_web", "*"),
            with_rate(keys_line("tight", "vgk_tight", "*"), "rate=1/1"),
            with_rate(keys_line("bulk", "vgk_bulk", "*"), "rate=1000/40"),
        ]
        .concat(),
    )
    .unwrap();
    let app = spawn_app_with(move |s| {
        strict(s);
        s.client.allow_unauthenticated = false;
        s.client.api_keys_file = Some(file);
    })
    .await;
    let bearer = |key: &str| format!("Bearer {key}");
    // `tight`: its own burst of 1.
    assert_eq!(
        status(&app, &[("authorization", &bearer("vgk_tight"))]).await,
        200
    );
    assert_eq!(
        status(&app, &[("authorization", &bearer("vgk_tight"))]).await,
        429
    );
    // `bulk`: well above the default burst of 2.
    for i in 0..30 {
        assert_eq!(
            status(&app, &[("authorization", &bearer("vgk_bulk"))]).await,
            200,
            "request {i}"
        );
    }
    // `web`: the default, 2 at once.
    for _ in 0..2 {
        assert_eq!(
            status(&app, &[("authorization", &bearer("vgk_web"))]).await,
            200
        );
    }
    assert_eq!(
        status(&app, &[("authorization", &bearer("vgk_web"))]).await,
        429
    );
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let file = temp_dir().join("api-keys");
    std::fs::write(&file, keys_line("web", "vgk_web", "*")).unwrap();
    let app = spawn_app_with(move |s| {
        s.client.allow_unauthenticated = false;
        s.client.api_keys_file = Some(file);
    })
    .await;
    for value in ["Bearer vgk_web", "bearer vgk_web", "BEARER vgk_web"] {
        let r = app
            .http
            .post(app.url("/graphql"))
            .header("authorization", value)
            .json(&json!({
                "query": "query($id: ID!) { userVisits(activityId: $id, first: 1) { totalCount } }",
                "variables": { "id": SMALL_ACTIVITY.to_string() }
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{value}");
        let body: Value = r.json().await.unwrap();
        assert!(body["errors"].is_null(), "{value}: {body}");
        assert!(body["data"]["userVisits"]["totalCount"].is_number());
    }
    for value in ["Basic vgk_web", "Bearervgk_web", "bearer"] {
        assert_eq!(
            status(&app, &[("authorization", value)]).await,
            401,
            "{value}"
        );
    }
}

/// The case that was answered RATE_LIMITED under the old 20/s, burst 40: a
/// client walking a 60-day list at `first: 100` as fast as it can while it
/// makes a few other requests at the same time.
#[tokio::test]
async fn the_default_client_rate_lets_a_fast_pager_with_a_few_other_requests_through() {
    let defaults = ClientSettings::default();
    let app = spawn_app_with(|s| {
        s.client.rate_per_second = defaults.rate_per_second;
        s.client.burst = defaults.burst;
    })
    .await;
    let (from, to) = (app.now - chrono::Duration::days(60), app.now);
    let range = json!({ "from": ts(from), "to": ts(to) });
    let others = async {
        let mut statuses = Vec::new();
        for _ in 0..10 {
            let (a, b, c) = tokio::join!(
                status(&app, &[]),
                status(&app, &[]),
                app.user_visits(json!({ "id": SMALL_ACTIVITY.to_string(), "first": 5 })),
            );
            statuses.extend([a, b]);
            assert!(c["errors"].is_null(), "{c}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        statuses
    };
    let walk = async {
        let (mut after, mut seen, mut pages) = (None::<String>, 0, 0);
        loop {
            let r = app
                .user_visits(json!({ "id": EXAMPLE_ACTIVITY.to_string(), "range": range, "first": 100, "after": after }))
                .await;
            assert!(r["errors"].is_null(), "page {pages}: {r}");
            let c = &r["data"]["userVisits"];
            seen += identities(c).len();
            pages += 1;
            if c["pageInfo"]["hasNextPage"] != json!(true) {
                return (pages, seen);
            }
            after = c["pageInfo"]["endCursor"].as_str().map(str::to_owned);
        }
    };
    let (statuses, (pages, seen)) = tokio::join!(others, walk);
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(seen, app.expected(EXAMPLE_ACTIVITY, from, to).len());
    assert!(pages > 20, "a long walk: {pages} pages");
}
