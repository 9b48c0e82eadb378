//! State shared by the replicas through Redis (docs/operations.md, "Shared
//! state"): the connection, its circuit breaker and its metrics. What is
//! shared lives beside it: [`budget`] (the platform budget, one Lua script)
//! and [`pages`] (the page cache's second level and cross-replica coalescing).
//!
//! Redis is never required to serve. Every command has a short timeout; a
//! few failures in a row open the circuit, after which commands skip Redis
//! at once and callers fall back to their own cache and their share of the
//! budget; a probe on a fresh connection every second closes it again.
//! Readiness does not look at any of this.

pub mod budget;
pub mod circuit;
pub mod live;
pub mod pages;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, RedisResult};
use tokio::time::Instant;

use crate::config::RedisUrl;
use crate::secret::{Secret, Watched, read_secret_file};
use crate::telemetry::{Metrics, OpLabel};
use circuit::{Change, Circuit};

/// Every key starts with this: the format's version and the namespace, so a
/// new format or another application never reads ours.
pub const KEY_PREFIX: &str = "visits-gateway:v1";

/// Names a platform in keys (gateways of several platforms may share one
/// Redis): a hash of `UPSTREAM_BASE_URL`, never the URL itself, which could
/// carry credentials.
pub fn platform_id(base: &reqwest::Url) -> String {
    format!(
        "{:016x}",
        crate::fnv::fnv1a64(base.as_str().trim_end_matches('/').as_bytes())
    )
}

/// A command's own limit: Redis answers in well under a millisecond on a
/// local network, so anything slower is treated as down.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(100);
/// Connecting (TCP, TLS, AUTH) to a reachable Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
/// Failures in a row that open the circuit.
const FAILURE_THRESHOLD: u32 = 3;
/// How often an open circuit probes Redis: sharing resumes within about
/// this long of Redis coming back (we promise 10 s at most).
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The connection's settings: the URL and the password file.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: RedisUrl,
    pub password_file: Option<PathBuf>,
}

impl RedisConfig {
    /// From the shared-state settings; `None` when `REDIS_URL` is unset.
    pub fn from_settings(s: &crate::config::SharedSettings) -> Option<Self> {
        s.redis_url.clone().map(|url| Self {
            url,
            password_file: s.redis_password_file.clone(),
        })
    }
}

/// The shared connection: cheap to clone.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    url: RedisUrl,
    /// Followed like the platform token (`SECRETS_RELOAD_SECONDS`).
    password: Option<Watched<Secret>>,
    conn: Mutex<Connection>,
    circuit: Mutex<Circuit>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Connection {
    manager: Option<ConnectionManager>,
    /// The password the manager was built with, to notice a rotation.
    password: Option<Arc<Secret>>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.inner.url)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// Reads the password file (a missing or empty one stops the start with a
    /// message naming the setting); connects later, in [`Redis::start`].
    pub fn new(config: &RedisConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        let password = config
            .password_file
            .clone()
            .map(|path| Watched::load(path, read_secret_file))
            .transpose()
            .map_err(|e| format!("REDIS_PASSWORD_FILE: {e}"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                url: config.url.clone(),
                password,
                conn: Mutex::new(Connection::default()),
                circuit: Mutex::new(Circuit::new(FAILURE_THRESHOLD, PROBE_EVERY, Instant::now())),
                metrics,
            }),
        })
    }

    /// Connects in the background and keeps probing while Redis is down; also
    /// follows the password file. Never blocks the start.
    pub fn start(&self, secrets_reload: Duration) {
        if let Some(p) = &self.inner.password {
            p.spawn_reload(secrets_reload, "Redis password");
        }
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(probe_loop(weak));
    }

    /// Whether commands go to Redis now (the circuit is closed).
    pub fn is_up(&self) -> bool {
        lock(&self.inner.circuit).allows()
    }

    /// Runs one command (or script, or pipeline) on Redis within the command
    /// timeout. `None` when the circuit is open or the command failed: the
    /// caller falls back to what it does alone. `op` names it in metrics.
    pub async fn run<T, F, Fut>(&self, op: &'static str, command: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let manager = {
            if !self.is_up() {
                return None;
            }
            lock(&self.inner.conn).manager.clone()?
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, command(manager)).await {
            Ok(Ok(value)) => {
                let change = lock(&self.inner.circuit).success();
                self.inner.publish(change);
                Some(value)
            }
            // Redis answered, refusing the data (a key of another type, a
            // value that is not what we stored): it is up; the caller treats
            // the answer as a miss, and the next write replaces the value.
            Ok(Err(e)) if redis_answered(&e) => {
                tracing::debug!(op, error = %e, "Redis refused a command");
                self.inner.count_error(op);
                None
            }
            Ok(Err(e)) => {
                tracing::debug!(op, error = %e, "Redis command failed");
                self.inner.failed(op);
                None
            }
            Err(_) => {
                tracing::debug!(op, "Redis command timed out");
                self.inner.failed(op);
                None
            }
        }
    }

    /// For tests: waits until the circuit is closed (at most `within`).
    pub async fn wait_until_up(&self, within: Duration) -> bool {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if self.is_up() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.is_up()
    }
}

/// An error that Redis answered about the data (WRONGTYPE, a script's
/// error, a reply of an unexpected type), as opposed to Redis being away.
fn redis_answered(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        redis::ErrorKind::Extension
            | redis::ErrorKind::UnexpectedReturnType
            | redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
    )
}

impl Inner {
    fn count_error(&self, op: &'static str) {
        self.metrics
            .redis_errors
            .get_or_create(&OpLabel { op })
            .inc();
    }

    /// An error that counts against the circuit: Redis away or too slow.
    fn failed(&self, op: &'static str) {
        self.count_error(op);
        let change = lock(&self.circuit).failure(Instant::now());
        self.publish(change);
    }

    /// One log line and the gauge per change of state.
    fn publish(&self, change: Option<Change>) {
        match change {
            Some(Change::Up) => {
                self.metrics.redis_up.set(1);
                tracing::info!(
                    redis = %self.url.redacted(),
                    "Redis reachable: sharing the platform budget and the page cache with the other replicas"
                );
            }
            Some(Change::Down) => {
                self.metrics.redis_up.set(0);
                tracing::warn!(
                    redis = %self.url.redacted(),
                    "Redis unavailable: serving from this replica's own cache and its share of the platform budget until it is back"
                );
            }
            None => {}
        }
    }

    /// A manager on a fresh connection with the current password, checked
    /// with a PING.
    async fn connect(&self) -> Result<(ConnectionManager, Option<Arc<Secret>>), String> {
        let password = self.password.as_ref().map(Watched::get);
        let mut info = self
            .url
            .with_password()
            .into_connection_info()
            .map_err(|e| e.to_string())?;
        if let Some(p) = &password {
            let settings = info.redis_settings().clone().set_password(p.expose());
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info).map_err(|e| e.to_string())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            // Reconnection is the probe's job: one quick retry, no long
            // backoff that commands would wait behind.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let mut manager =
            ConnectionManager::new_lazy_with_config(client, config).map_err(|e| e.to_string())?;
        let ping = async {
            redis::cmd("PING")
                .query_async::<String>(&mut manager)
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(CONNECT_TIMEOUT + COMMAND_TIMEOUT, ping).await {
            Ok(Ok(_)) => Ok((manager, password)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("timed out".into()),
        }
    }

    /// Whether the password file changed since the connection was made.
    fn password_rotated(&self) -> bool {
        let Some(watched) = &self.password else {
            return false;
        };
        let current = watched.get();
        lock(&self.conn)
            .password
            .as_ref()
            .is_none_or(|used| !Arc::ptr_eq(used, &current))
    }
}

/// While the circuit is open, a fresh connection and a PING every
/// [`PROBE_EVERY`]; while closed, a new connection when the password changed.
async fn probe_loop(inner: Weak<Inner>) {
    // A rotated password is tried at most once a probe interval: a new one
    // Redis does not take yet must not become a connection storm.
    let mut rotation_tried = Instant::now();
    loop {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let (due, up) = {
            let c = lock(&inner.circuit);
            (c.probe_due(Instant::now()), c.allows())
        };
        let rotate = up && rotation_tried.elapsed() >= PROBE_EVERY && inner.password_rotated();
        if rotate {
            rotation_tried = Instant::now();
        }
        if due || rotate {
            match inner.connect().await {
                Ok((manager, password)) => {
                    *lock(&inner.conn) = Connection {
                        manager: Some(manager),
                        password,
                    };
                    let change = lock(&inner.circuit).success();
                    inner.publish(change);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "Redis probe failed");
                    if due {
                        inner.failed("connect");
                    }
                }
            }
        }
        drop(inner);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn keys_name_a_platform_by_a_hash_never_by_its_url() {
        let with_user = reqwest::Url::parse("https://user:s3cret@platform.example/").unwrap();
        let key = budget::budget_key(&with_user);
        assert!(key.starts_with("visits-gateway:v1:budget:"), "{key}");
        assert!(
            !key.contains("s3cret") && !key.contains("platform.example"),
            "{key}"
        );
        let other = reqwest::Url::parse("https://other.example").unwrap();
        assert_ne!(platform_id(&with_user), platform_id(&other));
        // A trailing slash names the same platform.
        let bare = reqwest::Url::parse("https://other.example/").unwrap();
        assert_eq!(platform_id(&other), platform_id(&bare));
    }

    /// A handle that is never started: every command is skipped.
    pub(crate) fn redis_nowhere() -> Redis {
        Redis::new(
            &RedisConfig {
                url: RedisUrl::parse("redis://127.0.0.1:1").unwrap(),
                password_file: None,
            },
            Metrics::new(),
        )
        .unwrap()
    }

    /// A stand-in Redis on a local port: PING answers PONG and any other
    /// command OK; while `silent` is set it reads and answers nothing, on
    /// connections old and new (a hung Redis).
    async fn fake_redis(silent: Arc<std::sync::atomic::AtomicBool>) -> u16 {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let silent = silent.clone();
                tokio::spawn(async move {
                    let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
                    while let Ok(n @ 1..) = socket.read(&mut chunk).await {
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some((name, used)) = resp_command(&buf) {
                            buf.drain(..used);
                            if silent.load(Ordering::SeqCst) {
                                continue;
                            }
                            let reply: &[u8] = if name.eq_ignore_ascii_case(b"PING") {
                                b"+PONG\r\n"
                            } else {
                                b"+OK\r\n"
                            };
                            if socket.write_all(reply).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        port
    }

    /// The name of the first whole command in `buf` (a RESP array of bulk
    /// strings) and its length in bytes; `None` until one has arrived.
    fn resp_command(buf: &[u8]) -> Option<(Vec<u8>, usize)> {
        fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
            let end = at + buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
            Some((&buf[at..end], end + 2))
        }
        let number = |bytes: &[u8]| std::str::from_utf8(bytes).ok()?.parse::<usize>().ok();
        let (head, mut at) = line(buf, 0)?;
        let args = number(head.strip_prefix(b"*")?)?;
        let mut name = None;
        for _ in 0..args {
            let (len, start) = line(buf, at)?;
            let len = number(len.strip_prefix(b"$")?)?;
            let arg = buf.get(start..start + len)?;
            name.get_or_insert_with(|| arg.to_vec());
            at = start + len + 2;
        }
        (at <= buf.len()).then(|| (name.unwrap_or_default(), at))
    }

    fn series(metrics: &Metrics, name: &str) -> f64 {
        metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    async fn ping(redis: &Redis) -> Option<String> {
        redis
            .run("ping", |mut c| async move {
                redis::cmd("PING").query_async::<String>(&mut c).await
            })
            .await
    }

    /// The circuit through a real connection: closed once Redis answers,
    /// open after three failures in a row (commands then skip Redis without
    /// trying), probed while open, and closed again by the first probe
    /// Redis answers.
    #[tokio::test]
    async fn the_circuit_opens_on_failures_probes_and_closes_when_redis_answers_again() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let silent = Arc::new(AtomicBool::new(false));
        let port = fake_redis(silent.clone()).await;
        let metrics = Metrics::new();
        let redis = Redis::new(
            &RedisConfig {
                url: RedisUrl::parse(&format!("redis://127.0.0.1:{port}")).unwrap(),
                password_file: None,
            },
            metrics.clone(),
        )
        .unwrap();
        redis.start(Duration::from_secs(10));
        assert!(redis.wait_until_up(Duration::from_secs(5)).await, "closed");
        assert_eq!(series(&metrics, "visits_gateway_redis_up"), 1.0);
        assert_eq!(ping(&redis).await.as_deref(), Some("PONG"));

        // Redis hangs: each command times out; the third in a row opens it.
        silent.store(true, Ordering::SeqCst);
        let failed = r#"visits_gateway_redis_errors_total{op="ping"}"#;
        for n in 1..=FAILURE_THRESHOLD {
            assert!(redis.is_up(), "still closed before failure {n}");
            assert_eq!(ping(&redis).await, None);
            assert_eq!(series(&metrics, failed), f64::from(n));
        }
        assert!(!redis.is_up(), "open after {FAILURE_THRESHOLD} failures");
        assert_eq!(series(&metrics, "visits_gateway_redis_up"), 0.0);
        // Open: a command skips Redis, so it neither waits nor fails again.
        assert_eq!(ping(&redis).await, None);
        assert_eq!(series(&metrics, failed), f64::from(FAILURE_THRESHOLD));

        // While open, probes are tried, and a failed one keeps it open.
        let probes = r#"visits_gateway_redis_errors_total{op="connect"}"#;
        let mut probed = false;
        for _ in 0..50 {
            if series(&metrics, probes) >= 1.0 {
                probed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(probed, "no probe while open");
        assert!(!redis.is_up(), "a failed probe keeps it open");

        // Redis answers again: the next probe closes it.
        silent.store(false, Ordering::SeqCst);
        assert!(
            redis.wait_until_up(Duration::from_secs(5)).await,
            "closed again"
        );
        assert_eq!(series(&metrics, "visits_gateway_redis_up"), 1.0);
        assert_eq!(ping(&redis).await.as_deref(), Some("PONG"));
    }

    #[tokio::test]
    async fn a_redis_that_is_not_there_is_reported_down_and_skipped() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = RedisUrl::parse(&format!("redis://127.0.0.1:{port}")).unwrap();
        let metrics = Metrics::new();
        let redis = Redis::new(
            &RedisConfig {
                url,
                password_file: None,
            },
            metrics.clone(),
        )
        .unwrap();
        redis.start(Duration::from_secs(10));
        assert!(!redis.wait_until_up(Duration::from_millis(500)).await);
        let r = redis
            .run("get", |mut c| async move {
                redis::cmd("GET")
                    .arg("k")
                    .query_async::<Option<String>>(&mut c)
                    .await
            })
            .await;
        assert_eq!(r, None, "skipped");
        assert!(metrics.encode().contains("visits_gateway_redis_up 0"));
    }
}
