use chrono::Duration;
use serde_json::{Value, json};
use visits_gateway::demo::{EXAMPLE_ACTIVITY, SMALL_ACTIVITY};

use crate::helpers::{Identity, identities, spawn_app, spawn_app_with, ts};

/// Walks the whole list with `first`/`after`, checking pageInfo on the way.
async fn walk_forward(
    app: &crate::helpers::TestApp,
    activity: u64,
    range: Value,
    first: i64,
) -> (Vec<Value>, Vec<Identity>) {
    let mut after: Option<String> = None;
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    loop {
        let r = app.user_visits(json!({ "id": activity.to_string(), "range": range, "first": first, "after": after })).await;
        let c = r["data"]["userVisits"].clone();
        assert!(r["errors"].is_null(), "{r}");
        seen.extend(identities(&c));
        assert_eq!(c["pageInfo"]["hasPreviousPage"], json!(after.is_some()));
        pages.push(c.clone());
        if !c["pageInfo"]["hasNextPage"].as_bool().unwrap() {
            break;
        }
        after = Some(c["pageInfo"]["endCursor"].as_str().unwrap().to_owned());
        assert!(pages.len() < 1000, "paging does not end");
    }
    (pages, seen)
}

#[tokio::test]
async fn paging_forward_over_sixty_days_returns_exactly_the_platforms_visits() {
    let app = spawn_app().await;
    let (from, to) = (app.now - Duration::days(60) - Duration::hours(1), app.now);
    let range = json!({ "from": ts(from), "to": ts(to) });
    let expected: Vec<_> = app.expected(EXAMPLE_ACTIVITY, from, to);
    assert!(
        expected.len() > 2000,
        "the example activity has a long list"
    );

    let (pages, seen) = walk_forward(&app, EXAMPLE_ACTIVITY, range, 100).await;
    assert_eq!(
        seen, expected,
        "no duplicate, no gap, in the platform's order"
    );
    for p in &pages {
        assert_eq!(p["totalCount"], json!(expected.len()));
        assert_eq!(p["range"], json!({ "from": ts(from), "to": ts(to) }));
    }
    assert_eq!(
        pages.last().unwrap()["pageInfo"]["hasNextPage"],
        json!(false)
    );
}

#[tokio::test]
async fn paging_backward_with_last_before_returns_the_same_list_newest_first() {
    let app = spawn_app().await;
    let (from, to) = (app.now - Duration::days(20), app.now);
    let range = json!({ "from": ts(from), "to": ts(to) });
    let expected: Vec<_> = app.expected(EXAMPLE_ACTIVITY, from, to);

    let mut before: Option<String> = None;
    let mut pages_newest_first = Vec::new();
    loop {
        let r = app.user_visits(json!({ "id": EXAMPLE_ACTIVITY.to_string(), "range": range, "last": 37, "before": before })).await;
        let c = &r["data"]["userVisits"];
        assert_eq!(c["totalCount"], json!(expected.len()), "{r}");
        assert_eq!(c["pageInfo"]["hasNextPage"], json!(before.is_some()));
        pages_newest_first.push(identities(c));
        if !c["pageInfo"]["hasPreviousPage"].as_bool().unwrap() {
            break;
        }
        before = Some(c["pageInfo"]["startCursor"].as_str().unwrap().to_owned());
    }
    let seen: Vec<_> = pages_newest_first.into_iter().rev().flatten().collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn last_twenty_are_the_newest_twenty() {
    let app = spawn_app().await;
    let (from, to) = (app.now - Duration::days(30), app.now);
    let expected: Vec<_> = app.expected(SMALL_ACTIVITY, from, to);
    let r = app
        .user_visits(json!({ "id": SMALL_ACTIVITY.to_string(), "range": { "from": ts(from), "to": ts(to) }, "last": 20 }))
        .await;
    let c = &r["data"]["userVisits"];
    assert_eq!(identities(c), expected[expected.len() - 20..]);
    assert_eq!(c["pageInfo"]["hasPreviousPage"], json!(true));
    assert_eq!(c["pageInfo"]["hasNextPage"], json!(false));
}

#[tokio::test]
async fn an_empty_range_gives_an_empty_page_with_null_cursors() {
    let app = spawn_app().await;
    // Before the simulated data starts.
    let (from, to) = (app.now - Duration::days(80), app.now - Duration::days(70));
    let r = app.user_visits(json!({ "id": SMALL_ACTIVITY.to_string(), "range": { "from": ts(from), "to": ts(to) } })).await;
    let c = &r["data"]["userVisits"];
    assert_eq!(c["totalCount"], json!(0), "{r}");
    assert_eq!(c["edges"], json!([]));
    assert_eq!(
        c["pageInfo"],
        json!({ "hasNextPage": false, "hasPreviousPage": false, "startCursor": null, "endCursor": null })
    );
}

#[tokio::test]
async fn the_default_range_is_the_last_seven_days_and_first_defaults_to_twenty() {
    let app = spawn_app().await;
    let r = app
        .user_visits(json!({ "id": EXAMPLE_ACTIVITY.to_string() }))
        .await;
    let c = &r["data"]["userVisits"];
    let from = visits_gateway::time::parse_rfc3339(c["range"]["from"].as_str().unwrap()).unwrap();
    let to = visits_gateway::time::parse_rfc3339(c["range"]["to"].as_str().unwrap()).unwrap();
    assert_eq!(to - from, Duration::days(7));
    assert_eq!(to.timestamp() % 60, 0, "to is pinned to the minute");
    assert!(to <= chrono::Utc::now() && chrono::Utc::now() - to < Duration::seconds(61));
    assert_eq!(c["edges"].as_array().unwrap().len(), 20);
    let expected = app.sim.visits_between(EXAMPLE_ACTIVITY, from, to);
    assert_eq!(c["totalCount"], json!(expected.len()));
}

#[tokio::test]
async fn a_pinned_range_keeps_page_two_consistent_while_visits_arrive() {
    // One-second pins, so the second request falls in another pin bucket.
    let app =
        spawn_app_with(|s| s.paging.pin_granularity = std::time::Duration::from_secs(1)).await;
    let id = EXAMPLE_ACTIVITY.to_string();
    let range = json!({ "from": ts(app.now - Duration::days(1)) });
    let page1 = app
        .user_visits(json!({ "id": id, "range": range, "last": 10 }))
        .await;
    let c1 = &page1["data"]["userVisits"];
    let pinned_to =
        visits_gateway::time::parse_rfc3339(c1["range"]["to"].as_str().unwrap()).unwrap();

    // Live visits arrive, and time moves past the pin.
    for _ in 0..5 {
        app.sim.add_visit(EXAMPLE_ACTIVITY, chrono::Utc::now());
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let before = c1["pageInfo"]["startCursor"].as_str().unwrap();
    let page2 = app
        .user_visits(json!({ "id": id, "range": range, "last": 10, "before": before }))
        .await;
    let c2 = &page2["data"]["userVisits"];
    assert_eq!(c2["range"], c1["range"], "{page2}");
    assert_eq!(c2["totalCount"], c1["totalCount"]);
    let expected: Vec<_> = app.expected(EXAMPLE_ACTIVITY, app.now - Duration::days(1), pinned_to);
    let n = expected.len();
    assert_eq!(identities(c1), expected[n - 10..]);
    assert_eq!(identities(c2), expected[n - 20..n - 10]);

    // A fresh query (no cursor) does see the new visits.
    let fresh = app
        .user_visits(json!({ "id": id, "range": range, "last": 10 }))
        .await;
    let total = |c: &Value| c["totalCount"].as_u64().unwrap();
    assert_eq!(
        total(&fresh["data"]["userVisits"]),
        total(c1) + 5,
        "{fresh}"
    );
}

#[tokio::test]
async fn a_platform_page_size_cap_shifts_no_offset() {
    // Three days of the example activity (about 120 visits, one window):
    // every cap needs later pages, which count in the size the platform
    // served (50 a page when the cap is above our size).
    for cap in [7, 33, 100] {
        let app = spawn_app_with(|s| s.paging.upstream_page_size = 50).await;
        app.sim.set_page_size_cap(cap);
        let (from, to) = (app.now - Duration::days(3), app.now);
        let range = json!({ "from": ts(from), "to": ts(to) });
        let expected: Vec<_> = app.expected(EXAMPLE_ACTIVITY, from, to);
        let served = cap.min(50);
        assert!(
            expected.len() as u64 > served,
            "cap {cap}: the window must need a second page ({} visits)",
            expected.len()
        );
        let (_, seen) = walk_forward(&app, EXAMPLE_ACTIVITY, range, 13).await;
        assert_eq!(seen, expected, "cap {cap}");
        // The platform was asked for pages in units of what it serves.
        let asked = app.sim.seen();
        assert!(asked.iter().any(|r| r.page > 1), "cap {cap}: one page only");
        assert!(
            asked.iter().all(|r| r.page == 1 || r.page_size == served),
            "cap {cap}"
        );
    }
}
