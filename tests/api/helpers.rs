use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use visits_gateway::app::App;
use visits_gateway::config::Settings;
use visits_gateway::demo::SimPlatform;
use visits_gateway::graphql::manifest::Manifest;
use visits_gateway::secret::{Secret, TokenSource};

/// Every log line of every test in this binary, at debug level, so tests can
/// assert what never appears in logs.
static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = LogBuffer(buffer.clone());
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_env_filter("debug")
            .with_writer(move || writer.clone())
            .init();
        buffer
    })
    .clone()
}

pub fn logs() -> String {
    String::from_utf8_lossy(&capture_logs().lock().unwrap()).into_owned()
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// Where `/metrics` is served when `METRICS_LISTEN_ADDR` is set.
    pub metrics_addr: Option<SocketAddr>,
    pub sim: SimPlatform,
    pub http: reqwest::Client,
    /// The platform token this app holds; unique per test.
    pub token: String,
    /// When the simulated data ends.
    pub now: DateTime<Utc>,
    shutdown: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    server: Mutex<Option<tokio::task::JoinHandle<std::io::Result<()>>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a simulated platform and a gateway in front of it; `configure`
/// adjusts the gateway's settings.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    capture_logs();
    let token = format!("platform-token-{:016x}", fastrand::u64(..));
    let now = Utc::now();
    let sim = SimPlatform::start(([127, 0, 0, 1], 0).into(), Secret::new(token.as_str()), now)
        .await
        .expect("simulated platform starts");
    spawn_gateway(sim, token, now, configure).await
}

/// Another gateway in front of `app`'s simulated platform, with its own
/// caches and budget (a replica).
pub async fn spawn_replica(app: &TestApp, configure: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_gateway(app.sim.clone(), app.token.clone(), app.now, configure).await
}

async fn spawn_gateway(
    sim: SimPlatform,
    token: String,
    now: DateTime<Utc>,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    let mut settings = Settings::defaults();
    settings.upstream.base_url = sim.base_url().parse().unwrap();
    settings.upstream.timeout = Duration::from_millis(3000);
    settings.client.allow_unauthenticated = true;
    // Tests fire many requests from one address.
    settings.client.rate_per_second = 100_000;
    settings.client.burst = 100_000;
    settings.upstream.rate_per_second = 100_000.0;
    settings.upstream.burst = 10_000;
    configure(&mut settings);
    settings.validate().expect("test settings are valid");
    // Read as the binary reads it, at start.
    let manifest = Manifest::from_setting(settings.server.persisted_queries_file.as_deref())
        .expect("the manifest loads");
    let app = App::build(
        &settings,
        TokenSource::fixed(Secret::new(token.as_str())),
        manifest,
    )
    .expect("gateway builds");
    // The metrics listener, bound and served as main does.
    let metrics_addr = match (
        settings.server.metrics_listen_addr,
        app.metrics_router.clone(),
    ) {
        (Some(wanted), Some(router)) => {
            let listener = TcpListener::bind(wanted).await.unwrap();
            let bound = listener.local_addr().unwrap();
            tokio::spawn(visits_gateway::app::serve_http(
                listener,
                router,
                settings.server.header_read_timeout,
                std::future::pending(),
            ));
            Some(bound)
        }
        _ => None,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.serve(listener, async move {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        metrics_addr,
        sim,
        http: reqwest::Client::new(),
        token,
        now,
        shutdown: Mutex::new(Some(tx)),
        server: Mutex::new(Some(server)),
    }
}

impl TestApp {
    /// Sends the gateway its shutdown signal (SIGTERM in production).
    pub fn begin_shutdown(&self) {
        if let Some(tx) = self.shutdown.lock().unwrap().take() {
            let _ = tx.send(());
        }
    }

    /// Waits for the server task to end and returns its result.
    pub async fn stopped(&self) -> std::io::Result<()> {
        let handle = self.server.lock().unwrap().take().expect("server running");
        handle.await.expect("server task")
    }

    /// `(visitAt, userId, anonymousId)` of the platform's visits in `[from, to)`,
    /// in its order: what the gateway should serve.
    pub fn expected(&self, activity: u64, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Identity> {
        self.sim
            .visits_between(activity, from, to)
            .iter()
            .map(|v| v.identity())
            .collect()
    }

    /// The HTTP status of `GET path`.
    pub async fn status(&self, path: &str) -> u16 {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs a GraphQL request; asserts the HTTP status is 200 and that the
    /// response does not hold the platform token.
    pub async fn graphql(&self, query: &str, variables: Value) -> Value {
        let response = self
            .http
            .post(self.url("/graphql"))
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        assert!(
            !text.contains(&self.token),
            "the platform token leaked into a response"
        );
        serde_json::from_str(&text).unwrap()
    }

    /// `userVisits` with the given arguments, selecting what tests compare.
    pub async fn user_visits(&self, variables: Value) -> Value {
        self.graphql(USER_VISITS, variables).await
    }
}

pub const USER_VISITS: &str = r#"
query($id: ID!, $range: TimeRange, $first: Int, $after: String, $last: Int, $before: String) {
  userVisits(activityId: $id, range: $range, first: $first, after: $after, last: $last, before: $before) {
    totalCount
    range { from to }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    edges { cursor node { userId anonymousId isAnonymous nickname visitAt lastOnlineAt durationMinutes avatar partnerUid } }
  }
}"#;

/// The value of one series in a `/metrics` text (`name{labels}`), 0 when absent.
pub fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A fresh directory for a test's files (keys, secrets).
pub fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vg-test-{:016x}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One line of an API keys file: the key's name, its hash and its scope.
pub fn keys_line(name: &str, key: &str, scope: &str) -> String {
    format!(
        "{name} {} {scope}\n",
        hex::encode(visits_gateway::auth::keys::hash_key(key))
    )
}

/// The first error's code, or panics with the response.
pub fn error_code(response: &Value) -> String {
    response["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {:.600}", response.to_string()))
        .to_owned()
}

/// `(visitAt, userId, anonymousId)`: how tests tell visits apart.
pub type Identity = (String, Option<String>, Option<String>);

/// The identity of each edge, to compare with the platform.
pub fn identities(connection: &Value) -> Vec<Identity> {
    connection["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("no edges in {connection}"))
        .iter()
        .map(|e| {
            let n = &e["node"];
            (
                n["visitAt"].as_str().unwrap().to_owned(),
                n["userId"].as_str().map(str::to_owned),
                n["anonymousId"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

pub fn ts(t: DateTime<Utc>) -> String {
    visits_gateway::time::format(t)
}
