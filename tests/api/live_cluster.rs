//! Live visits across replicas (docs/live-cluster.md): three
//! gateways on one real `redis-server` poll each live activity once per
//! interval together; every subscriber on every replica gets each visit once,
//! in order; when the polling replica stops (SIGTERM) or vanishes (SIGKILL,
//! a gateway in a child process), another takes over within two intervals.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use visits_gateway::demo::SMALL_ACTIVITY;

use crate::helpers::{Identity, TestApp, metric, spawn_replica};
use crate::live::{Ws, init, next, subscribe, visits};
use crate::replicas::{RedisServer, three_replicas};

const POLL: Duration = Duration::from_secs(1);
/// The killed poller's test: a child process on a busy machine, with a
/// lease (1.5 intervals) it keeps even when starved for a few seconds.
const KILL_POLL: Duration = Duration::from_secs(3);

async fn connect_to(addr: SocketAddr) -> Ws {
    let mut request = format!("ws://{addr}/graphql")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp))
        .await
        .expect("the WebSocket upgrade succeeds");
    let ws: WebSocketStream<MaybeTlsStream<TcpStream>> = ws;
    ws
}

/// A socket on `addr` subscribed (id "1") to the small activity.
async fn subscriber(addr: SocketAddr) -> Ws {
    let mut ws = connect_to(addr).await;
    init(&mut ws, json!({})).await;
    subscribe(&mut ws, "1", SMALL_ACTIVITY).await;
    ws
}

/// Platform requests for the small activity since the `from`th request.
fn polls_since(app: &TestApp, from: usize) -> usize {
    app.sim.seen()[from..]
        .iter()
        .filter(|r| r.activity == SMALL_ACTIVITY.to_string())
        .count()
}

/// Platform requests for the small activity over `d`.
async fn polls_over(app: &TestApp, d: Duration) -> usize {
    let before = app.sim.request_count();
    tokio::time::sleep(d).await;
    polls_since(app, before)
}

fn expected_since(app: &TestApp, t: DateTime<Utc>) -> Vec<Identity> {
    app.expected(SMALL_ACTIVITY, t, t + chrono::Duration::days(1))
}

async fn sum_metric(apps: &[&TestApp], series: &str) -> f64 {
    let mut sum = 0.0;
    for app in apps {
        sum += metric(&app.metrics().await, series);
    }
    sum
}

/// Nothing more comes on any socket (no visit twice).
async fn nothing_more(sockets: &mut [Ws]) {
    for ws in sockets {
        let extra = next(ws, Duration::from_millis(1500)).await;
        assert_eq!(extra, None, "a visit was sent twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_cluster_three_replicas_poll_once_per_interval_and_a_stopped_poller_is_taken_over() {
    let redis = RedisServer::start();
    let apps = three_replicas(&redis.url(), |s| {
        s.upstream.live_poll = POLL;
        s.server.shutdown_drain = Duration::ZERO;
    })
    .await;
    let mut sockets = Vec::new();
    for app in &apps {
        sockets.push(subscriber(app.addr).await);
    }
    // The first poller reads the starting point; the others join.
    tokio::time::sleep(POLL * 2).await;
    let polls = polls_over(&apps[0], POLL * 5).await;
    // Alone, each replica would poll: 15.
    assert!(
        (4..=6).contains(&polls),
        "{polls} platform requests in 5 intervals for the 3 replicas"
    );
    println!("live cluster: 3 replicas, {polls} polls in 5 intervals");
    let all: Vec<&TestApp> = apps.iter().collect();
    assert_eq!(
        sum_metric(&all, "visits_gateway_live_leases_held").await,
        1.0
    );
    assert_eq!(sum_metric(&all, "visits_gateway_live_pollers").await, 3.0);

    // Three visits at one millisecond and one more: to every subscriber.
    let t0 = Utc::now();
    for t in [t0, t0, t0, t0 + chrono::Duration::milliseconds(1)] {
        apps[0].sim.add_visit(SMALL_ACTIVITY, t);
    }
    for ws in &mut sockets {
        let got = visits(ws, "1", 4, POLL * 3).await;
        assert_eq!(got, expected_since(&apps[0], t0));
    }
    nothing_more(&mut sockets).await;

    // The polling replica is stopped (SIGTERM: the in-process shutdown).
    let mut leader = None;
    for (i, app) in apps.iter().enumerate() {
        if metric(&app.metrics().await, "visits_gateway_live_leases_held") == 1.0 {
            leader = Some(i);
        }
    }
    let leader = leader.expect("one replica polls");
    apps[leader].begin_shutdown();
    apps[leader].stopped().await.unwrap();
    let stopped = Instant::now();
    let t1 = Utc::now();
    for t in [t1, t1 + chrono::Duration::milliseconds(1)] {
        apps[0].sim.add_visit(SMALL_ACTIVITY, t);
    }
    let mut others: Vec<Ws> = sockets
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, ws)| ws)
        .collect();
    for ws in &mut others {
        let got = visits(ws, "1", 2, POLL * 4).await;
        assert_eq!(got, expected_since(&apps[0], t1));
    }
    let delay = stopped.elapsed();
    assert!(delay < POLL * 3, "taken over and delivered in {delay:?}");
    nothing_more(&mut others).await;
    let survivors: Vec<&TestApp> = (0..3).filter(|i| *i != leader).map(|i| &apps[i]).collect();
    assert_eq!(
        sum_metric(&survivors, "visits_gateway_live_leases_held").await,
        1.0
    );
    assert_eq!(
        sum_metric(&survivors, "visits_gateway_live_lease_takeovers_total").await,
        1.0
    );
    let polls = polls_over(&apps[0], POLL * 4).await;
    assert!(
        (3..=5).contains(&polls),
        "{polls} platform requests in 4 intervals for the 2 replicas left"
    );
    println!("live cluster: 3 replicas, {polls} polls in 4 intervals after the takeover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_cluster_a_killed_poller_is_taken_over_within_two_intervals_and_no_visit_is_lost_or_repeated()
 {
    let redis = RedisServer::start();
    // Two gateways in this process, one in a child process that polls.
    let a = crate::helpers::spawn_app_with(|s| {
        s.shared.redis_url = Some(redis.url());
        s.upstream.live_poll = KILL_POLL;
    })
    .await;
    let b = spawn_replica(&a, |s| {
        s.shared.redis_url = Some(redis.url());
        s.upstream.live_poll = KILL_POLL;
    })
    .await;
    let base = a.sim.base_url();
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let child = crate::traces::Gateway::start(&[
        ("UPSTREAM_BASE_URL", base.as_str()),
        ("UPSTREAM_TOKEN", a.token.as_str()),
        ("ALLOW_UNAUTHENTICATED", "true"),
        ("REDIS_URL", redis_url.as_str()),
        ("LIVE_POLL_SECONDS", "2"),
    ])
    .await;
    let child_addr: SocketAddr = child
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/graphql")
        .parse()
        .unwrap();
    // The child's subscriber comes first: it takes the lease.
    let before = a.sim.request_count();
    let mut on_child = subscriber(child_addr).await;
    crate::live::started(&a, before, 1).await;
    let mut sockets = vec![subscriber(a.addr).await, subscriber(b.addr).await];
    tokio::time::sleep(KILL_POLL * 2).await;
    assert_eq!(
        sum_metric(&[&a, &b], "visits_gateway_live_leases_held").await,
        0.0,
        "the child polls"
    );
    // One replica polls: 4 or 5 polls, one more where a poll reads a second
    // window; three replicas polling apart would make 12 or more.
    let polls = polls_over(&a, KILL_POLL * 4).await;
    assert!((3..=6).contains(&polls), "{polls} polls in 4 intervals");

    // Visits every 200 ms for 8 s; the polling replica is killed 3 s in.
    let start = Utc::now();
    let sim = a.sim.clone();
    let adding = tokio::spawn(async move {
        for i in 0..40 {
            sim.add_visit(SMALL_ACTIVITY, Utc::now());
            if i % 5 == 0 {
                // Two at one millisecond now and then.
                sim.add_visit(SMALL_ACTIVITY, Utc::now());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let first = visits(&mut on_child, "1", 1, KILL_POLL * 3).await;
    assert_eq!(first.len(), 1, "the child's subscriber was served");
    let at_kill = a.sim.request_count();
    child.kill();
    let killed = Instant::now();
    // The next poll of the activity, by whichever replica takes over.
    let mut gap = None;
    while killed.elapsed() < KILL_POLL * 4 {
        if polls_since(&a, at_kill) > 0 {
            gap = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let gap = gap.expect("a poll after the kill");
    assert!(
        gap <= KILL_POLL * 2,
        "the next poll came {gap:?} after the kill"
    );
    adding.await.unwrap();
    let expected = expected_since(&a, start);
    assert!(expected.len() >= 48, "{}", expected.len());
    for ws in &mut sockets {
        let got = visits(ws, "1", expected.len(), KILL_POLL * 6).await;
        assert_eq!(got, expected, "each visit once, in order");
    }
    nothing_more(&mut sockets).await;
    assert_eq!(
        sum_metric(&[&a, &b], "visits_gateway_live_leases_held").await,
        1.0
    );
    assert_eq!(
        sum_metric(&[&a, &b], "visits_gateway_live_lease_takeovers_total").await,
        1.0
    );
    println!(
        "live cluster: SIGKILL, next poll {gap:?} later; all visits {:?} after",
        killed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_cluster_without_redis_each_replica_polls_alone_and_nothing_is_sent_twice_on_its_return()
 {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let a = crate::helpers::spawn_app_with(|s| {
        s.shared.redis_url = Some(url.clone());
        s.upstream.live_poll = POLL;
    })
    .await;
    let b = spawn_replica(&a, |s| {
        s.shared.redis_url = Some(url.clone());
        s.upstream.live_poll = POLL;
    })
    .await;
    for app in [&a, &b] {
        assert!(crate::replicas::redis_state(app, 1.0).await);
    }
    let mut sockets = vec![subscriber(a.addr).await, subscriber(b.addr).await];
    tokio::time::sleep(POLL * 2).await;
    let t0 = Utc::now();
    a.sim.add_visit(SMALL_ACTIVITY, t0);
    for ws in &mut sockets {
        assert_eq!(visits(ws, "1", 1, POLL * 3).await, expected_since(&a, t0));
    }

    // Redis goes: each replica polls for itself, and says so.
    redis.stop();
    for app in [&a, &b] {
        assert!(crate::replicas::redis_state(app, 0.0).await);
    }
    let t1 = Utc::now();
    for t in [t1, t1, t1 + chrono::Duration::milliseconds(1)] {
        a.sim.add_visit(SMALL_ACTIVITY, t);
    }
    for ws in &mut sockets {
        assert_eq!(visits(ws, "1", 3, POLL * 4).await, expected_since(&a, t1));
    }
    assert!(sum_metric(&[&a], "visits_gateway_live_polls_alone_total").await >= 1.0);
    assert!(sum_metric(&[&b], "visits_gateway_live_polls_alone_total").await >= 1.0);

    // Redis is back (empty): one replica polls for both again, from the last
    // visit published before the outage; nothing is sent twice.
    redis.restart();
    for app in [&a, &b] {
        assert!(crate::replicas::redis_state(app, 1.0).await);
    }
    tokio::time::sleep(POLL * 3).await;
    assert_eq!(
        sum_metric(&[&a, &b], "visits_gateway_live_leases_held").await,
        1.0
    );
    let t2 = Utc::now();
    a.sim.add_visit(SMALL_ACTIVITY, t2);
    for ws in &mut sockets {
        assert_eq!(visits(ws, "1", 1, POLL * 3).await, expected_since(&a, t2));
    }
    nothing_more(&mut sockets).await;
    let polls = polls_over(&a, POLL * 4).await;
    assert!((3..=5).contains(&polls), "{polls} polls in 4 intervals");
}
