//! Clients take turns at the platform budget, so one that keeps
//! the budget's queue full does not starve another.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::Duration as ChronoDuration;
use serde_json::{Value, json};
use visits_gateway::demo::EXAMPLE_ACTIVITY;

use crate::helpers::{TestApp, USER_VISITS, keys_line, spawn_app_with, temp_dir, ts};

/// An uncached `userVisits` of one platform page: a one-hour range shifted
/// `n` milliseconds.
async fn ask(app: &TestApp, key: &str, n: u64) -> Value {
    let from = app.now - ChronoDuration::days(30) + ChronoDuration::milliseconds(n as i64);
    let variables = json!({
        "id": EXAMPLE_ACTIVITY.to_string(),
        "range": { "from": ts(from), "to": ts(from + ChronoDuration::hours(1)) },
        "first": 1,
    });
    app.http
        .post(app.url("/graphql"))
        .bearer_auth(key)
        .json(&json!({ "query": USER_VISITS, "variables": variables }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn served(r: &Value) -> bool {
    r["errors"].is_null() && r["data"]["userVisits"].is_object()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_keeping_the_budget_queue_full_delays_another_by_one_request() {
    let file = temp_dir().join("keys");
    std::fs::write(
        &file,
        keys_line("abuser", "vgk_abuser", "*") + &keys_line("victim", "vgk_victim", "*"),
    )
    .unwrap();
    let max_wait = Duration::from_millis(1500);
    let app = Arc::new(
        spawn_app_with(|s| {
            s.client.api_keys_file = Some(file);
            s.upstream.rate_per_second = 5.0;
            s.upstream.burst = 1;
            s.upstream.max_budget_wait = max_wait;
        })
        .await,
    );
    // 12 requests of the abuser at all times, each of a page not cached:
    // 2.4 s of budget at 5 a second, more than the 1.5 s a caller may wait.
    // A refused one is asked again at once (after 20 ms).
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let abuser_served = Arc::new(AtomicUsize::new(0));
    let abuser: Vec<_> = (0..12)
        .map(|_| {
            let (app, stop, next, abuser_served) = (
                app.clone(),
                stop.clone(),
                next.clone(),
                abuser_served.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let r = ask(&app, "vgk_abuser", next.fetch_add(1, Ordering::SeqCst)).await;
                    if served(&r) {
                        abuser_served.fetch_add(1, Ordering::SeqCst);
                    } else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // The victim's uncached first pages are served within the wait, each
    // behind at most the abuser's request being served and one more.
    for n in 0..5 {
        let started = Instant::now();
        let r = ask(&app, "vgk_victim", 10_000_000 + n).await;
        let took = started.elapsed();
        assert!(served(&r), "the victim's request {n} was refused: {r}");
        assert!(took < max_wait, "the victim's request {n} took {took:?}");
    }
    stop.store(true, Ordering::SeqCst);
    for task in abuser {
        task.await.unwrap();
    }
    assert!(
        abuser_served.load(Ordering::SeqCst) > 0,
        "the abuser was served too, in its turns"
    );
}
