use std::collections::HashSet;

use chrono::Duration;
use serde_json::json;
use visits_gateway::demo::EXAMPLE_ACTIVITY;

use crate::helpers::{spawn_app, ts};

#[tokio::test]
async fn repeating_a_query_makes_no_upstream_request() {
    let app = spawn_app().await;
    let vars = json!({ "id": EXAMPLE_ACTIVITY.to_string(), "range": { "from": ts(app.now - Duration::days(30)), "to": ts(app.now) }, "first": 50 });
    let first = app.user_visits(vars.clone()).await;
    let count = app.sim.request_count();
    assert!(count > 0);
    let second = app.user_visits(vars).await;
    assert_eq!(first, second);
    assert_eq!(app.sim.request_count(), count);
}

#[tokio::test]
async fn concurrent_identical_first_time_queries_make_one_request_per_page() {
    let app = spawn_app().await;
    let vars = json!({ "id": EXAMPLE_ACTIVITY.to_string(), "range": { "from": ts(app.now - Duration::days(45)), "to": ts(app.now) }, "last": 100 });
    let queries = (0..100).map(|_| app.user_visits(vars.clone()));
    let results = futures::future::join_all(queries).await;
    assert!(
        results
            .iter()
            .all(|r| r == &results[0] && r["errors"].is_null())
    );
    let seen = app.sim.seen();
    let distinct: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(seen.len(), distinct.len(), "a page was fetched twice");
    // 45 days = 7 windows, each read once for its total, plus the pages of the last 100.
    assert!(
        seen.len() >= 7 && seen.len() <= 7 + 3,
        "{} requests",
        seen.len()
    );
}

#[tokio::test]
async fn different_page_sizes_over_one_range_share_upstream_pages() {
    let app = spawn_app().await;
    let range = json!({ "from": ts(app.now - Duration::days(10)), "to": ts(app.now) });
    for first in [5, 17, 40, 100] {
        let r = app
            .user_visits(
                json!({ "id": EXAMPLE_ACTIVITY.to_string(), "range": range, "first": first }),
            )
            .await;
        assert!(r["errors"].is_null(), "{r}");
    }
    let seen = app.sim.seen();
    let distinct: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(seen.len(), distinct.len());
}

#[tokio::test]
async fn concurrent_walks_with_any_page_sizes_cost_one_request_per_distinct_upstream_page() {
    let app = spawn_app().await;
    let (from, to) = (app.now - Duration::days(30), app.now);
    let range = json!({ "from": ts(from), "to": ts(to) });
    let walks = [7, 13, 20, 33, 50, 64, 99, 100].map(|first| {
        let app = &app;
        let range = range.clone();
        async move {
            let mut after: Option<String> = None;
            let mut n = 0;
            loop {
                let r = app.user_visits(json!({ "id": EXAMPLE_ACTIVITY.to_string(), "range": range, "first": first, "after": after })).await;
                let c = &r["data"]["userVisits"];
                n += c["edges"].as_array().unwrap_or_else(|| panic!("{r}")).len();
                if !c["pageInfo"]["hasNextPage"].as_bool().unwrap() {
                    return n;
                }
                after = c["pageInfo"]["endCursor"].as_str().map(str::to_owned);
            }
        }
    });
    let counts = futures::future::join_all(walks).await;
    let seen = app.sim.seen();
    let distinct: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(
        seen.len(),
        distinct.len(),
        "an upstream page was fetched twice"
    );
    // The platform serves 50 a page: each window costs ceil(total / 50)
    // pages. The windows, worked out here rather than by the gateway's own
    // splitter: 7 days each from `from`, the last one ending at `to`.
    let week = Duration::days(7);
    let windows: Vec<_> = (0..)
        .map(|i| from + week * i)
        .take_while(|start| *start < to)
        .map(|start| (start, (start + week).min(to)))
        .collect();
    assert_eq!(windows.len(), 5, "30 days: four weeks and two days");
    let pages: usize = windows
        .iter()
        .map(|&(start, end)| {
            app.sim
                .visits_between(EXAMPLE_ACTIVITY, start, end)
                .len()
                .div_ceil(50)
                .max(1)
        })
        .sum();
    assert_eq!(seen.len(), pages);
    let total = app.sim.visits_between(EXAMPLE_ACTIVITY, from, to).len();
    assert!(counts.iter().all(|&n| n == total), "{counts:?} != {total}");
}

#[tokio::test]
async fn a_refused_activity_costs_one_request_whatever_the_range() {
    let app = spawn_app().await;
    let range = json!({ "from": ts(app.now - Duration::days(60)), "to": ts(app.now) });
    for id in [
        "424242",
        &visits_gateway::demo::FEATURE_OFF_ACTIVITY.to_string(),
    ] {
        let before = app.sim.request_count();
        let r = app.user_visits(json!({ "id": id, "range": range })).await;
        assert!(r["errors"].is_array(), "{r}");
        assert_eq!(
            app.sim.request_count() - before,
            1,
            "one request learns the platform's refusal"
        );
    }
}
