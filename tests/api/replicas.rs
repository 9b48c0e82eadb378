//! Three gateways (replicas: each its own caches, budget and Redis
//! connection; nothing shared in-process but the simulated platform) in
//! front of one simulated platform, sharing one real `redis-server` (docs/deploy.md,
//! "Shared state across replicas"). The tests start `redis-server` on a free
//! port themselves and stop it at the end.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::Duration as ChronoDuration;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use visits_gateway::config::RedisUrl;
use visits_gateway::config::Settings;
use visits_gateway::demo::{EXAMPLE_ACTIVITY, Fault};

use crate::helpers::{TestApp, identities, metric, spawn_app_with, spawn_replica, ts};

/// A `redis-server` of our own on a free loopback port, killed on drop.
pub(crate) struct RedisServer {
    pub(crate) port: u16,
    child: Option<Child>,
    /// `requirepass`, when the server has one.
    password: Option<String>,
}

impl RedisServer {
    pub(crate) fn start() -> Self {
        Self::start_with(None)
    }

    fn start_with(password: Option<&str>) -> Self {
        let port = free_port();
        let mut server = Self {
            port,
            child: None,
            password: password.map(str::to_owned),
        };
        server.restart();
        server
    }

    /// Starts it (again) on the same port, empty, and waits until it answers.
    pub(crate) fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(
                self.password
                    .iter()
                    .flat_map(|p| ["--requirepass".to_owned(), p.clone()]),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): these tests need a real Redis; \
                     install it (Debian/Ubuntu: `apt-get install redis-server`)"
                )
            });
        self.child = Some(child);
        let stdout = self.child.as_mut().unwrap().stdout.take().unwrap();
        // "Ready to accept connections" once it listens.
        for line in BufReader::new(stdout).lines() {
            if line
                .unwrap_or_default()
                .contains("Ready to accept connections")
            {
                break;
            }
        }
        assert_eq!(self.cli(&["PING"]), "PONG", "redis-server answers");
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn url(&self) -> RedisUrl {
        RedisUrl::parse(&format!("redis://127.0.0.1:{}", self.port)).unwrap()
    }

    /// `redis-cli` (installed with redis-server) against this server.
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(
                self.password
                    .iter()
                    .flat_map(|p| ["--no-auth-warning".to_owned(), "-a".to_owned(), p.clone()]),
            )
            .args(args)
            .output()
            .expect("redis-cli runs (it comes with redis-server)");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One gateway and two replicas of it, all on `url`, each configured alike.
pub(crate) async fn three_replicas(
    url: &RedisUrl,
    configure: impl Fn(&mut Settings) + Copy,
) -> [TestApp; 3] {
    let with_redis = move |s: &mut Settings| {
        s.shared.redis_url = Some(url.clone());
        configure(s);
    };
    let a = spawn_app_with(with_redis).await;
    let b = spawn_replica(&a, with_redis).await;
    let c = spawn_replica(&a, with_redis).await;
    for app in [&a, &b, &c] {
        assert!(redis_state(app, 1.0).await, "a replica did not reach Redis");
    }
    [a, b, c]
}

/// Waits (up to 15 s: sharing resumes within 10, docs/operations.md) until the
/// replica's `redis_up` gauge reads `want`.
pub(crate) async fn redis_state(app: &TestApp, want: f64) -> bool {
    for _ in 0..150 {
        if metric(&app.metrics().await, "visits_gateway_redis_up") == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A query that costs exactly one platform request the first time it is
/// asked: the first page of a one-second window no other query reads
/// (tests use `n` of their own: loads from 0, single queries from 10,000).
fn distinct_query(app: &TestApp, n: u64) -> Value {
    let from = app.now - ChronoDuration::days(30) + ChronoDuration::seconds(n as i64);
    json!({
        "id": EXAMPLE_ACTIVITY.to_string(),
        "range": { "from": ts(from), "to": ts(from + ChronoDuration::seconds(1)) },
        "first": 1,
    })
}

fn ok(r: &Value) -> bool {
    r["errors"].is_null() && r["data"]["userVisits"].is_object()
}

/// Keeps `per_replica` clients per replica asking distinct pages until
/// `stop`; counts answers with errors.
fn load(
    apps: &[&Arc<TestApp>],
    per_replica: usize,
    stop: &Arc<AtomicBool>,
    errors: &Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<()>> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut tasks = Vec::new();
    for app in apps {
        for _ in 0..per_replica {
            let (app, stop, errors) = ((*app).clone(), stop.clone(), errors.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let n = NEXT.fetch_add(1, Ordering::SeqCst);
                    let r = app.user_visits(distinct_query(&app, n)).await;
                    if !ok(&r) {
                        errors.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }));
        }
    }
    tasks
}

/// Platform requests seen over `interval`, after a `warm_up` that spends
/// the burst.
async fn platform_requests_over(app: &TestApp, warm_up: Duration, interval: Duration) -> usize {
    tokio::time::sleep(warm_up).await;
    let before = app.sim.request_count();
    tokio::time::sleep(interval).await;
    app.sim.request_count() - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_walks_spread_over_three_replicas_fetch_each_page_once() {
    let redis = RedisServer::start();
    let url = redis.url();
    let apps = three_replicas(&url, |_| {}).await;
    let (from, to) = (apps[0].now - ChronoDuration::days(30), apps[0].now);
    let range = json!({ "from": ts(from), "to": ts(to) });
    // Each walk sends each next page to the next replica, with a cursor
    // another replica made.
    let walks = [7, 20, 33, 50, 64, 100].map(|first| {
        let apps = &apps;
        let range = range.clone();
        async move {
            let mut after: Option<String> = None;
            let mut seen = Vec::new();
            for step in 0.. {
                let app = &apps[(step + first) % 3];
                let r = app.user_visits(json!({ "id": EXAMPLE_ACTIVITY.to_string(), "range": range, "first": first, "after": after })).await;
                assert!(ok(&r), "{r}");
                let c = &r["data"]["userVisits"];
                seen.extend(identities(c));
                if !c["pageInfo"]["hasNextPage"].as_bool().unwrap() {
                    break;
                }
                after = c["pageInfo"]["endCursor"].as_str().map(str::to_owned);
            }
            seen
        }
    });
    let results = futures::future::join_all(walks).await;
    let expected = apps[0].expected(EXAMPLE_ACTIVITY, from, to);
    assert!(expected.len() > 500, "a long list: {}", expected.len());
    for walked in &results {
        assert_eq!(
            walked, &expected,
            "every walk reads the whole list in order"
        );
    }
    let requests = apps[0].sim.seen();
    let distinct: HashSet<_> = requests.iter().cloned().collect();
    assert_eq!(
        requests.len(),
        distinct.len(),
        "a page was fetched twice across the replicas"
    );
    // A second round through other replicas costs nothing at all.
    let before = apps[0].sim.request_count();
    for (i, app) in apps.iter().enumerate() {
        let r = app
            .user_visits(
                json!({ "id": EXAMPLE_ACTIVITY.to_string(), "range": range, "first": 90 + i }),
            )
            .await;
        assert!(ok(&r), "{r}");
    }
    assert_eq!(apps[0].sim.request_count(), before);
    let shared_hits: f64 = {
        let mut sum = 0.0;
        for app in &apps {
            let m = app.metrics().await;
            sum += metric(
                &m,
                r#"visits_gateway_shared_cache_lookups_total{outcome="hit"}"#,
            ) + metric(
                &m,
                r#"visits_gateway_shared_cache_lookups_total{outcome="coalesced"}"#,
            );
        }
        sum
    };
    assert!(shared_hits > 0.0, "pages came from the second level");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_platform_budget_holds_for_the_three_replicas_together() {
    let redis = RedisServer::start();
    let url = redis.url();
    // 4 a second for all; EXPECTED_REPLICAS=1, so each replica alone would
    // spend all 4 (12 together) if the budget were not shared.
    let apps = three_replicas(&url, |s| {
        s.upstream.rate_per_second = 4.0;
        s.upstream.burst = 4;
        s.shared.expected_replicas = 1;
    })
    .await
    .map(Arc::new);
    let (stop, errors) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let tasks = load(&apps.iter().collect::<Vec<_>>(), 4, &stop, &errors);
    let seen = platform_requests_over(
        &apps[0],
        Duration::from_millis(1500),
        Duration::from_secs(4),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    futures::future::join_all(tasks).await;
    // 4/s over 4 s is 16; unshared it would be 48.
    assert!(
        (8..=26).contains(&seen),
        "{seen} platform requests in 4 s at 4/s for all replicas"
    );
    let waits: f64 = {
        let mut sum = 0.0;
        for app in &apps {
            sum += metric(
                &app.metrics().await,
                "visits_gateway_shared_budget_waits_total",
            );
        }
        sum
    };
    assert!(waits > 0.0, "callers queued for the shared budget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_seen_by_one_replica_pauses_all_three() {
    let redis = RedisServer::start();
    let url = redis.url();
    let apps = three_replicas(&url, |s| {
        s.upstream.retry_base = Duration::from_millis(10);
        s.upstream.max_budget_wait = Duration::from_secs(6);
    })
    .await;
    let [a, b, c] = &apps;
    a.sim.push_fault(Fault::TooManyRequests(3));
    let first = a.user_visits(distinct_query(a, 10_000));
    let others = async {
        // Once the platform has answered the 429 to replica A...
        for _ in 0..2000 {
            if a.sim.request_count() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let paused = a.sim.request_count();
        // ...B and C ask for pages of their own: they wait out the pause too.
        let asked = futures::future::join(
            b.user_visits(distinct_query(b, 10_001)),
            c.user_visits(distinct_query(c, 10_002)),
        );
        let during = async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            a.sim.request_count()
        };
        let ((rb, rc), during) = futures::future::join(asked, during).await;
        (paused, during, rb, rc)
    };
    let (ra, (paused, during, rb, rc)) = futures::future::join(first, others).await;
    assert_eq!(paused, 1, "only the request answered 429");
    assert_eq!(during, 1, "no replica asked the platform during the pause");
    for r in [&ra, &rb, &rc] {
        assert!(ok(r), "served once the pause was over: {r}");
    }
    assert_eq!(
        a.sim.request_count(),
        4,
        "the 429, A's retry, B's and C's page"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_redis_costs_no_client_error_each_replica_takes_its_share_and_sharing_resumes() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    // 6 a second for the three; 2 each when they cannot share.
    let apps = three_replicas(&url, |s| {
        s.upstream.rate_per_second = 6.0;
        s.upstream.burst = 3;
        s.shared.expected_replicas = 3;
    })
    .await
    .map(Arc::new);
    for (i, app) in apps.iter().enumerate() {
        assert!(ok(&app
            .user_visits(distinct_query(app, 20_000 + i as u64))
            .await));
    }

    redis.stop();
    for (i, app) in apps.iter().enumerate() {
        let r = app
            .user_visits(distinct_query(app, 20_010 + i as u64))
            .await;
        assert!(ok(&r), "served without Redis: {r}");
    }
    for app in apps.iter() {
        assert!(redis_state(app, 0.0).await, "reported down");
    }
    // One replica alone now spends its share, 2 a second, not all 6.
    let (stop, errors) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let tasks = load(&[&apps[0]], 3, &stop, &errors);
    let seen = platform_requests_over(
        &apps[0],
        Duration::from_millis(1500),
        Duration::from_secs(3),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    futures::future::join_all(tasks).await;
    assert_eq!(errors.load(Ordering::SeqCst), 0, "no client error");
    assert!(
        (2..=10).contains(&seen),
        "{seen} platform requests in 3 s from one replica at its share of 2/s"
    );

    redis.restart();
    for app in apps.iter() {
        assert!(
            redis_state(app, 1.0).await,
            "sharing resumes within seconds"
        );
    }
    // A page one replica fetched is served by the others without the platform.
    let query = distinct_query(&apps[0], 20_100);
    assert!(ok(&apps[0].user_visits(query.clone()).await));
    let before = apps[0].sim.request_count();
    for app in &apps[1..] {
        assert!(ok(&app.user_visits(query.clone()).await));
    }
    assert_eq!(apps[0].sim.request_count(), before, "shared again");
    // Said in the logs, by these replicas: the log buffer is the whole test
    // binary's, so the lines are told apart by this test's Redis URL.
    let field = format!("\"redis\":\"{}\"", url.redacted());
    let logs = crate::helpers::logs();
    let ours: Vec<&str> = logs.lines().filter(|l| l.contains(&field)).collect();
    let down = ours
        .iter()
        .position(|l| l.contains("Redis unavailable"))
        .unwrap_or_else(|| panic!("no replica said Redis was unavailable: {ours:#?}"));
    assert!(
        ours[down..].iter().any(|l| l.contains("Redis reachable")),
        "no replica said Redis was back: {ours:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_under_a_cache_key_is_a_miss_and_is_deleted() {
    let redis = RedisServer::start();
    let url = redis.url();
    let [a, b, c] = three_replicas(&url, |_| {}).await;
    let query = distinct_query(&a, 30_000);
    let first = a.user_visits(query.clone()).await;
    assert!(ok(&first), "{first}");
    assert_eq!(a.sim.request_count(), 1);
    let keys = redis.cli(&["--scan", "--pattern", "visits-gateway:v1:page:*"]);
    let key = keys.lines().next().expect("the page is shared").to_owned();
    assert_eq!(redis.cli(&["SET", &key, "{not a page", "KEEPTTL"]), "OK");

    // B reads garbage: a miss, so it asks the platform and shares a good page.
    let second = b.user_visits(query.clone()).await;
    assert_eq!(second, first);
    assert_eq!(a.sim.request_count(), 2);
    let m = b.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"visits_gateway_shared_cache_lookups_total{outcome="garbage"}"#
        ),
        1.0
    );
    assert!(
        redis.cli(&["GET", &key]).contains("\"pager\""),
        "replaced by a good page"
    );
    let third = c.user_visits(query).await;
    assert_eq!(third, first);
    assert_eq!(a.sim.request_count(), 2, "C read the good page");
}

/// A Redis that accepts connections and reads, but never answers.
async fn silent_redis() -> RedisUrl {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    RedisUrl::parse(&format!("redis://127.0.0.1:{port}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_that_never_answers_does_not_stall_requests() {
    let url = silent_redis().await;
    let app = spawn_app_with(|s| {
        s.shared.redis_url = Some(url.clone());
        // A stalled request would be cut here and answered 504.
        s.server.request_timeout = Duration::from_secs(3);
        s.upstream.deadline = Duration::from_millis(2500);
    })
    .await;
    for n in 0..5 {
        let r = app.user_visits(distinct_query(&app, 40_000 + n)).await;
        assert!(ok(&r), "{r}");
    }
    assert_eq!(app.sim.request_count(), 5);
    assert_eq!(app.status("/readyz").await, 200, "ready without Redis");
    let mut probes_failed = 0.0;
    for _ in 0..100 {
        let m = app.metrics().await;
        assert_eq!(metric(&m, "visits_gateway_redis_up"), 0.0);
        probes_failed = metric(&m, r#"visits_gateway_redis_errors_total{op="connect"}"#);
        if probes_failed >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(probes_failed >= 1.0, "the probe timed out and said so");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_redis_password_comes_from_its_file_and_a_corrected_file_is_picked_up() {
    let password = format!("redis-pass-{:016x}", fastrand::u64(..));
    let redis = RedisServer::start_with(Some(&password));
    let file = crate::helpers::temp_dir().join("redis-password");
    std::fs::write(&file, "not-the-password\n").unwrap();
    let url = redis.url();
    let app = spawn_app_with(|s| {
        s.shared.redis_url = Some(url.clone());
        s.shared.redis_password_file = Some(file.clone());
        s.client.secrets_reload = Duration::from_secs(1);
    })
    .await;
    // Refused by Redis: the replica works alone, and says so.
    let mut refused = 0.0;
    for _ in 0..100 {
        let m = app.metrics().await;
        refused = metric(&m, r#"visits_gateway_redis_errors_total{op="connect"}"#);
        if refused >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused >= 1.0, "a wrong password fails the probe");
    assert!(ok(&app.user_visits(distinct_query(&app, 50_000)).await));

    // The Secret is fixed (surrounding whitespace ignored): sharing starts.
    std::fs::write(&file, format!("  {password}\n")).unwrap();
    assert!(redis_state(&app, 1.0).await, "the new password is used");
    assert!(ok(&app.user_visits(distinct_query(&app, 50_001)).await));
    let keys = redis.cli(&["--scan", "--pattern", "visits-gateway:v1:page:*"]);
    assert_eq!(keys.lines().count(), 1, "the page is shared: {keys}");
    assert!(
        !crate::helpers::logs().contains(&password),
        "the Redis password leaked into the logs"
    );
}

/// A TCP proxy to `port` that can go silent: while `silent` is set, what
/// clients send is read and dropped, so Redis never answers (a hung Redis,
/// or a network that drops packets), on connections old and new.
async fn silenceable_proxy(port: u16, silent: Arc<AtomicBool>) -> RedisUrl {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                continue;
            };
            let silent = silent.clone();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = client_read.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if !silent.load(Ordering::SeqCst)
                        && server_write.write_all(&buf[..n]).await.is_err()
                    {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
        }
    });
    RedisUrl::parse(&format!("redis://127.0.0.1:{proxy_port}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_that_stops_answering_mid_run_stalls_nothing_and_sharing_resumes() {
    let redis = RedisServer::start();
    let silent = Arc::new(AtomicBool::new(false));
    let url = silenceable_proxy(redis.port, silent.clone()).await;
    let app = spawn_app_with(|s| {
        s.shared.redis_url = Some(url.clone());
        // A stalled request would be cut here and answered 504.
        s.server.request_timeout = Duration::from_secs(3);
        s.upstream.deadline = Duration::from_millis(2500);
    })
    .await;
    assert!(redis_state(&app, 1.0).await);
    assert!(ok(&app.user_visits(distinct_query(&app, 60_000)).await));

    silent.store(true, Ordering::SeqCst);
    for n in 1..=6 {
        let r = app.user_visits(distinct_query(&app, 60_000 + n)).await;
        assert!(ok(&r), "served while Redis hangs: {r}");
    }
    assert!(redis_state(&app, 0.0).await, "reported down");
    assert_eq!(app.status("/readyz").await, 200, "ready all along");
    let m = app.metrics().await;
    let timed_out: f64 = ["page_get", "budget", "page_lock", "page_set", "page_unlock"]
        .iter()
        .map(|op| {
            metric(
                &m,
                &format!(r#"visits_gateway_redis_errors_total{{op="{op}"}}"#),
            )
        })
        .sum();
    assert!(
        timed_out >= 3.0,
        "commands timed out before the circuit opened"
    );

    silent.store(false, Ordering::SeqCst);
    assert!(redis_state(&app, 1.0).await, "sharing resumes");
    let before = redis
        .cli(&["--scan", "--pattern", "visits-gateway:v1:page:*"])
        .lines()
        .count();
    assert!(ok(&app.user_visits(distinct_query(&app, 60_100)).await));
    let after = redis
        .cli(&["--scan", "--pattern", "visits-gateway:v1:page:*"])
        .lines()
        .count();
    assert_eq!(after, before + 1, "the new page is shared again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_page_past_its_ttl_refreshed_on_three_replicas_at_once_costs_one_platform_request() {
    let redis = RedisServer::start();
    let [a, b, c] = three_replicas(&redis.url(), |s| {
        s.cache.ttl_recent = Duration::from_secs(1);
        s.cache.response_cache_max_bytes = 0;
    })
    .await;
    // A window that ends within the last hour: its page lives a second.
    let query = json!({
        "id": EXAMPLE_ACTIVITY.to_string(),
        "range": {
            "from": ts(a.now - ChronoDuration::minutes(50)),
            "to": ts(a.now - ChronoDuration::minutes(5)),
        },
        "first": 1,
    });
    let first = a.user_visits(query.clone()).await;
    assert!(ok(&first), "{first}");
    let before = a.sim.request_count();
    assert_eq!(before, 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // All three need it again at once: A's copy is past its TTL, and so is
    // the one in Redis. One replica refreshes it (the platform takes its
    // time); the others wait for it.
    a.sim.push_fault(Fault::Delay(Duration::from_millis(300)));
    let (ra, rb, rc) = tokio::join!(
        a.user_visits(query.clone()),
        b.user_visits(query.clone()),
        c.user_visits(query.clone())
    );
    for r in [&ra, &rb, &rc] {
        assert_eq!(*r, first);
    }
    assert_eq!(
        a.sim.request_count() - before,
        1,
        "one refresh for the three"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_of_another_type_are_misses_that_leave_redis_up_and_get_overwritten() {
    let redis = RedisServer::start();
    let [a, b, _c] = three_replicas(&redis.url(), |_| {}).await;
    let r = a.user_visits(distinct_query(&a, 50_000)).await;
    assert!(ok(&r), "{r}");
    let budget = redis.cli(&["--scan", "--pattern", "visits-gateway:v1:budget:*"]);
    let budget = budget
        .lines()
        .next()
        .expect("the budget is shared")
        .to_owned();
    let page = redis.cli(&["--scan", "--pattern", "visits-gateway:v1:page:*"]);
    let page = page.lines().next().expect("the page is shared").to_owned();
    // Another program wrote a hash and a list where the gateway keeps strings.
    redis.cli(&["DEL", &budget, &page]);
    redis.cli(&["HSET", &budget, "field", "value"]);
    redis.cli(&["RPUSH", &page, "an", "item"]);

    // B asks the page (WRONGTYPE on GET: a miss) and more: all served, and
    // Redis is still up (a refusal of the data is not an outage).
    let r = b.user_visits(distinct_query(&a, 50_000)).await;
    assert!(ok(&r), "{r}");
    for n in 1..6 {
        let r = b.user_visits(distinct_query(&a, 50_000 + n)).await;
        assert!(ok(&r), "{r}");
    }
    assert_eq!(metric(&b.metrics().await, "visits_gateway_redis_up"), 1.0);
    // The budget script and the page's store replaced them with their own.
    assert_eq!(redis.cli(&["TYPE", &budget]), "string");
    assert_eq!(redis.cli(&["TYPE", &page]), "string");
    assert!(redis.cli(&["GET", &page]).contains("\"pager\""));
}

/// A 429 pauses the budget even when the request that met it does not retry
/// (the pause is what keeps every replica off the platform).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_on_a_last_attempt_still_pauses_the_budget() {
    let app = spawn_app_with(|s| {
        s.upstream.max_retries = 0;
        s.upstream.max_budget_wait = Duration::from_secs(6);
    })
    .await;
    app.sim.push_fault(Fault::TooManyRequests(2));
    let refused = app.user_visits(distinct_query(&app, 60_000)).await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "UPSTREAM_RATE_LIMITED",
        "{refused}"
    );
    assert_eq!(app.sim.request_count(), 1);
    let next = app.user_visits(distinct_query(&app, 60_001));
    let during = async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        app.sim.request_count()
    };
    let (next, during) = futures::future::join(next, during).await;
    assert_eq!(
        during, 1,
        "the next request waited out the platform's pause"
    );
    assert!(ok(&next), "{next}");
    assert_eq!(app.sim.request_count(), 2);
}
