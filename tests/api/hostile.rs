//! Hostile input: thousands of generated requests, sent one at a
//! time over real HTTP to the real gateway in front of the simulated
//! platform. Each category is a proptest strategy run with a fixed seed, so
//! CI sends the same requests every run and a failure shrinks to a minimal
//! request, printed with what the gateway answered.
//!
//! Whatever the input, every answer must be (docs/api.md):
//! - an HTTP answer below 500 whose body is a GraphQL JSON object (`data`
//!   and/or `errors`), every error carrying a code of the table in docs/api.md, and
//!   never `INTERNAL` (our bug);
//! - free when refused: an answer that is 4xx, or whose errors are all
//!   `BAD_USER_INPUT`/`QUERY_TOO_EXPENSIVE` and that served no field, made
//!   no platform request;
//!
//! and after each category the gateway still answers `/healthz` and a
//! normal query, logged no panic, and its memory stayed bounded. On top of
//! that, each category's model says which requests the API refuses and
//! which it serves (`Expect`).
//!
//! Requests that no in-process test survives (a stack overflow aborts the
//! whole process; a thread pinned for good slows every later test) go to a
//! gateway in a child process of this binary, swept from the smallest up.
//! `HOSTILE_KEEP_GOING=1` lists every failing case rather than the first.

use std::cell::{Cell, RefCell};
use std::fmt::Debug;
use std::ops::RangeInclusive;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{
    GeneralPurpose, GeneralPurposeConfig, STANDARD_PAD_INDIFFERENT, URL_SAFE_NO_PAD,
};
use chrono::{DateTime, Datelike, FixedOffset, SecondsFormat, TimeDelta, Timelike, Utc};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::{Map, Value, json};
use visits_gateway::config::Settings;
use visits_gateway::demo::EXAMPLE_ACTIVITY;

use crate::helpers::{TestApp, USER_VISITS, logs, spawn_app, spawn_app_with, temp_dir, ts};
use crate::live::Ws;

// ---------------------------------------------------------------------------
// The harness: send, judge, shrink, check the process.

/// The same cases on every run: CI is reproducible and a failure replays.
const SEED: &[u8; 32] = b"visits-gateway hostile input 011";
/// Hostile input is answered at once; a request still open after this hangs.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// Generous: the gateway runs in this process next to the other tests.
const MAX_RSS_GROWTH_MIB: f64 = 200.0;

const DAY_MS: i64 = 86_400_000;

/// The limits of the default settings, which `spawn_app` keeps.
struct Limits {
    max_range_ms: i64,
    pin_ms: i64,
    max_body_bytes: usize,
}

static LIMITS: LazyLock<Limits> = LazyLock::new(|| {
    let s = Settings::defaults();
    Limits {
        max_range_ms: i64::from(s.paging.max_range_days) * DAY_MS,
        pin_ms: s.paging.pin_granularity.as_millis() as i64,
        max_body_bytes: s.server.max_body_bytes as usize,
    }
});

/// The error codes of docs/api.md.
const API_CODES: [&str; 15] = [
    "BAD_USER_INPUT",
    "PERSISTED_QUERY_NOT_FOUND",
    "UNAUTHENTICATED",
    "FORBIDDEN",
    "RATE_LIMITED",
    "QUERY_TOO_EXPENSIVE",
    "ACTIVITY_NOT_FOUND",
    "UPSTREAM_FEATURE_DISABLED",
    "UPSTREAM_UNAUTHORIZED",
    "UPSTREAM_RATE_LIMITED",
    "UPSTREAM_TIMEOUT",
    "UPSTREAM_UNAVAILABLE",
    "UPSTREAM_BAD_RESPONSE",
    "STATS_LOADING",
    "INTERNAL",
];
/// The codes of a refusal: the gateway answered without asking the platform.
const REFUSAL_CODES: &[&str] = &["BAD_USER_INPUT", "QUERY_TOO_EXPENSIVE"];

/// What the API's rules (docs/api.md) make of a request, beyond the invariants every answer keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Refused with these codes. `free`: at no platform request; false only
    /// where the refusal needs the list's size, which only the platform knows.
    Refused {
        codes: &'static [&'static str],
        free: bool,
    },
    /// Answered without an error.
    Served,
    /// Either is right: only the invariants hold.
    Either,
}

const BAD_INPUT: Expect = Expect::Refused {
    codes: &["BAD_USER_INPUT"],
    free: true,
};
/// Limits of depth and complexity may be either refusal.
const REFUSED: Expect = Expect::Refused {
    codes: REFUSAL_CODES,
    free: true,
};
const TOO_EXPENSIVE: Expect = Expect::Refused {
    codes: &["QUERY_TOO_EXPENSIVE"],
    free: true,
};

impl Expect {
    /// The verdict judged just before and just after the request: where a pin
    /// boundary passed in between, either answer is right.
    fn at_both(self, other: Self) -> Self {
        if self == other { self } else { Self::Either }
    }

    /// The verdict on a request made of two parts judged apart: a refusal of
    /// either refuses it, an open question in either leaves it open.
    fn and(self, other: Self) -> Self {
        use Expect::*;
        match (self, other) {
            (r @ Refused { free: true, .. }, _) | (_, r @ Refused { free: true, .. }) => r,
            (r @ Refused { .. }, _) | (_, r @ Refused { .. }) => r,
            (Either, _) | (_, Either) => Either,
            (Served, Served) => Served,
        }
    }
}

type Verdict = Box<dyn Fn(DateTime<Utc>) -> Expect>;
type ServedCheck = Box<dyn Fn(&Value, DateTime<Utc>) -> Result<(), String>>;

/// One request to send, and the API's verdict on it.
struct Probe {
    content_type: Option<&'static str>,
    body: Vec<u8>,
    /// Sent with `transfer-encoding: chunked` instead of a content length.
    chunked: bool,
    /// The HTTP statuses the API allows, where it names them.
    status: Option<RangeInclusive<u16>>,
    /// The verdict as judged at an instant (the request's answer time).
    verdict: Verdict,
    /// More checks of a served answer's `data`, at the answer time.
    on_served: Option<ServedCheck>,
    /// What a reader of a failure needs beyond the body (a cursor decoded).
    note: Option<String>,
}

impl Probe {
    fn graphql(query: &str, variables: Value) -> Self {
        Self::json(json!({ "query": query, "variables": variables }).to_string())
    }

    fn json(body: impl Into<Vec<u8>>) -> Self {
        Self {
            content_type: Some("application/json"),
            body: body.into(),
            chunked: false,
            status: None,
            verdict: Box::new(|_| Expect::Either),
            on_served: None,
            note: None,
        }
    }

    fn noted(mut self, note: String) -> Self {
        self.note = Some(note);
        self
    }

    fn expect(self, expect: Expect) -> Self {
        self.judged(move |_| expect)
    }

    fn judged(mut self, verdict: impl Fn(DateTime<Utc>) -> Expect + 'static) -> Self {
        self.verdict = Box::new(verdict);
        self
    }

    fn on_served(
        mut self,
        check: impl Fn(&Value, DateTime<Utc>) -> Result<(), String> + 'static,
    ) -> Self {
        self.on_served = Some(Box::new(check));
        self
    }
}

struct Answer {
    status: u16,
    text: String,
}

/// Hostile tests run one at a time: their memory figures and timings are
/// their own (a failing test's backtrace alone can take 200 MiB to symbolise).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs a hostile test on a runtime of its own, shut down in the background:
/// a request that pins a gateway thread (a validation that never ends, say)
/// must fail its test, not hang the test binary in the runtime's drop.
fn hostile_test(test: impl Future<Output = ()>) {
    let _turn = one_at_a_time();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(test)));
    runtime.shutdown_background();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The client side of a category: a runtime and an HTTP client of its own,
/// so that its deadlines hold even when a request pins every gateway thread.
struct Client {
    app: Arc<TestApp>,
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
    /// The door the probes go through.
    door: Door,
    /// The subscription socket over the WebSocket door, opened when first needed.
    ws: RefCell<Option<Ws>>,
    sent: Cell<usize>,
    /// The platform's request count when the last answer came.
    platform_count: Cell<usize>,
}

/// Every category runs through each door: the same checks hold at both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Door {
    /// A POST.
    Http,
    /// A `subscribe` message over a `graphql-transport-ws` socket. A probe
    /// that is not a JSON GraphQL request within the body limit (a
    /// content-type or framing case) still goes over HTTP: a socket has no
    /// such thing.
    WebSocket,
    /// A POST asking for Server-Sent Events (`Accept: text/event-stream`):
    /// its first `next` event, or the refusal before the stream.
    Sse,
}

const DOORS: [Door; 3] = [Door::Http, Door::WebSocket, Door::Sse];

impl Client {
    fn new(app: Arc<TestApp>, door: Door) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the client's runtime");
        Self {
            app,
            runtime,
            // A connection per request: the gateway closes one whose body it
            // did not read (413), and a pooled connection closed under the
            // next request would look like a crash.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("an HTTP client"),
            door,
            ws: RefCell::new(None),
            sent: Cell::new(0),
            platform_count: Cell::new(0),
        }
    }

    /// Sends one probe and judges its answer; `Err` says what broke.
    fn exchange(&self, probe: &Probe, sent_at: DateTime<Utc>) -> Result<(), String> {
        self.settle();
        self.sent.set(self.sent.get() + 1);
        let outcome = self.runtime.block_on(exchange(self, probe, sent_at));
        self.platform_count.set(self.app.sim.request_count());
        outcome
    }

    /// Waits for platform requests still running for an earlier request (a
    /// fetch outlives the request whose deadline passed), which would be
    /// charged to the next one.
    fn settle(&self) {
        while self.app.sim.request_count() != self.platform_count.get() {
            self.platform_count.set(self.app.sim.request_count());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs a category's requests on a thread of the client's, then checks the
/// process: still answering, no panic logged, memory bounded. Panics with
/// what broke.
async fn category(
    app: &Arc<TestApp>,
    name: &'static str,
    door: Door,
    requests: impl FnOnce(&Client) -> Vec<String> + Send + 'static,
) {
    let started = Instant::now();
    let rss_before = rss_mib();
    let app = app.clone();
    let (mut problems, sent) = tokio::task::spawn_blocking(move || {
        let client = Client::new(app, door);
        let mut problems = requests(&client);
        problems.extend(client.runtime.block_on(alive(&client.app, &client.http)));
        (problems, client.sent.get())
    })
    .await
    .expect("the client's thread");
    let rss_after = rss_mib();
    eprintln!(
        "hostile {name} ({door:?}): {sent} requests in {:.1} s; RSS {rss_before:.0} -> {rss_after:.0} MiB",
        started.elapsed().as_secs_f64(),
    );
    if rss_after - rss_before > MAX_RSS_GROWTH_MIB {
        problems.push(format!(
            "RSS grew from {rss_before:.0} to {rss_after:.0} MiB"
        ));
    }
    assert!(
        problems.is_empty(),
        "hostile {name} ({door:?}):\n{}",
        problems.join("\n\n")
    );
}

/// `cases` requests generated by `strategy`, one at a time so that each
/// platform request is attributable; a failure is shrunk by proptest to a
/// minimal request.
async fn fuzz<S, P>(
    app: &Arc<TestApp>,
    name: &'static str,
    cases: u32,
    strategy: impl Fn() -> S + Send + Sync + 'static,
    probe: P,
) where
    S: Strategy,
    S::Value: Debug,
    P: Fn(&S::Value, DateTime<Utc>) -> Probe + Send + Sync + 'static,
{
    // HOSTILE_KEEP_GOING=1 runs every case and lists every failure, rather
    // than stopping at the first and shrinking it: to see all the holes at once.
    let keep_going = std::env::var_os("HOSTILE_KEEP_GOING").is_some();
    let (strategy, probe) = (Arc::new(strategy), Arc::new(probe));
    for door in DOORS {
        let (strategy, probe) = (strategy.clone(), probe.clone());
        category(app, name, door, move |client| {
            let config = Config {
                cases,
                failure_persistence: None,
                rng_algorithm: RngAlgorithm::ChaCha,
                max_shrink_iters: 400,
                max_shrink_time: 30_000,
                ..Config::default()
            };
            let rng = TestRng::from_seed(RngAlgorithm::ChaCha, SEED);
            let failures = RefCell::new(Vec::new());
            let outcome = TestRunner::new_with_rng(config, rng).run(&strategy(), |case| {
                let sent_at = Utc::now();
                match client.exchange(&probe(&case, sent_at), sent_at) {
                    Err(why) if keep_going => {
                        failures.borrow_mut().push(format!("{why}\ncase: {case:?}"));
                        Ok(())
                    }
                    outcome => outcome.map_err(TestCaseError::fail),
                }
            });
            let mut problems = failures.into_inner();
            problems.extend(outcome.err().map(|e| e.to_string()));
            problems
        })
        .await;
    }
}

/// `cases` in order, up to the first that fails: where each case is bigger
/// than the one before, the first failure is the smallest.
async fn sweep<V, P>(app: &Arc<TestApp>, name: &'static str, cases: Vec<V>, probe: P)
where
    V: Debug + Send + Sync + 'static,
    P: Fn(&V) -> Probe + Send + Sync + 'static,
{
    let (cases, probe) = (Arc::new(cases), Arc::new(probe));
    for door in DOORS {
        let (cases, probe) = (cases.clone(), probe.clone());
        category(app, name, door, move |client| {
            cases
                .iter()
                .find_map(|case| {
                    // Printed first: if this case kills the process, it was the last.
                    eprintln!("hostile {name} ({door:?}): {case:?}");
                    let why = client.exchange(&probe(case), Utc::now()).err()?;
                    Some(format!("{why}\nthe smallest failing case: {case:?}"))
                })
                .into_iter()
                .collect()
        })
        .await;
    }
}

async fn exchange(client: &Client, probe: &Probe, sent_at: DateTime<Utc>) -> Result<(), String> {
    let app = &*client.app;
    let before = app.sim.request_count();
    let payload = match client.door {
        Door::WebSocket => ws_payload(probe),
        Door::Http | Door::Sse => None,
    };
    let over_ws = payload.is_some();
    let answer = match payload {
        Some(payload) => send_subscribe(client, payload).await,
        None if client.door == Door::Sse && !probe.chunked => {
            send_sse(app, &client.http, probe).await
        }
        None => send(app, &client.http, probe).await,
    };
    let cost = app.sim.request_count() - before;
    let shown = |text: &[u8]| {
        let text = String::from_utf8_lossy(text);
        let cut: String = text.chars().take(700).collect();
        if cut.len() < text.len() {
            format!("{cut}…")
        } else {
            cut
        }
    };
    let mut sent = format!(
        "sent {}({} bytes, {:?}{}): {}",
        if over_ws {
            "as a WebSocket subscribe "
        } else {
            ""
        },
        probe.body.len(),
        probe.content_type,
        if probe.chunked { ", chunked" } else { "" },
        shown(&probe.body)
    );
    if let Some(note) = &probe.note {
        sent = format!("{sent}\n{note}");
    }
    let answer = answer.map_err(|e| {
        format!("no HTTP answer ({e}): the request task panicked, or hangs\n{sent}")
    })?;
    let answered_at = Utc::now();
    let (early, late) = ((probe.verdict)(sent_at), (probe.verdict)(answered_at));
    let expect = early.at_both(late);
    // The gateway judged at an instant in between: where one of the two
    // verdicts is not a free refusal (a `to` that became the past while the
    // request waited, say), the gateway may have read the platform before
    // refusing.
    let may_cost = early != late
        && [early, late]
            .iter()
            .any(|v| !matches!(v, Expect::Refused { free: true, .. }));
    judge(
        app,
        probe,
        &answer,
        cost,
        expect,
        may_cost,
        answered_at,
        over_ws,
    )
    .map_err(|why| {
        format!(
            "{why}\nexpected: {expect:?}\n{sent}\nanswered {}: {}\nplatform requests: {cost}",
            answer.status,
            shown(answer.text.as_bytes())
        )
    })
}

/// The `subscribe` payload of a probe that a socket can carry: a JSON
/// GraphQL request object within the message size limit.
fn ws_payload(probe: &Probe) -> Option<Value> {
    if probe.chunked
        || probe.content_type != Some("application/json")
        || probe.body.len() > LIMITS.max_body_bytes
    {
        return None;
    }
    serde_json::from_slice::<Value>(&probe.body)
        .ok()
        .filter(Value::is_object)
}

/// Sends `payload` as a `subscribe` on the client's socket and reads that
/// subscription's answer as an HTTP body would carry it: a `next`'s payload
/// (a GraphQL response), or an `error`'s errors. A subscription that goes
/// on after its first result is ended from the client's side.
async fn send_subscribe(client: &Client, payload: Value) -> Result<Answer, String> {
    // Taken for the exchange, put back after it unless it closed.
    let mut ws = match client.ws.take() {
        Some(ws) => ws,
        None => {
            let mut ws = crate::live::connect(&client.app, None).await;
            crate::live::send(&mut ws, json!({"type": "connection_init", "payload": {}})).await;
            match crate::live::next(&mut ws, ANSWER_WITHIN).await {
                Some(m) if m["type"] == "connection_ack" => {}
                other => return Err(format!("connection_init answered {other:?}")),
            }
            ws
        }
    };
    let id = client.sent.get().to_string();
    crate::live::send(
        &mut ws,
        json!({"id": id, "type": "subscribe", "payload": payload}),
    )
    .await;
    let answer = loop {
        let Some(m) = crate::live::next(&mut ws, ANSWER_WITHIN).await else {
            return Err("the socket closed, or sent nothing in time".into());
        };
        if m["id"] != json!(id) {
            continue;
        }
        match m["type"].as_str() {
            Some("next") => break m["payload"].to_string(),
            Some("error") => break json!({ "errors": m["payload"] }).to_string(),
            Some("complete") => return Err("complete before any result".into()),
            _ => return Err(format!("not a graphql-transport-ws answer: {m}")),
        }
    };
    // A query completes by itself; a subscription is ended here.
    crate::live::send(&mut ws, json!({"id": id, "type": "complete"})).await;
    client.ws.replace(Some(ws));
    Ok(Answer {
        status: 200,
        text: answer,
    })
}

/// A probe as a POST asking for Server-Sent Events: a refusal before the
/// stream is an ordinary answer; a stream's first `next` event is read as
/// the body a POST would have carried.
async fn send_sse(app: &TestApp, http: &reqwest::Client, probe: &Probe) -> Result<Answer, String> {
    let mut request = http
        .post(app.url("/graphql"))
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .timeout(ANSWER_WITHIN)
        .body(probe.body.clone());
    if let Some(content_type) = probe.content_type {
        request = request.header(reqwest::header::CONTENT_TYPE, content_type);
    }
    let mut response = request.send().await.map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let is_stream = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !is_stream {
        let text = response.text().await.map_err(|e| format!("{e:?}"))?;
        return Ok(Answer { status, text });
    }
    let mut seen = String::new();
    loop {
        if let Some(at) = seen.find("event: next\ndata: ") {
            let rest = &seen[at + "event: next\ndata: ".len()..];
            if let Some(end) = rest.find("\n\n") {
                return Ok(Answer {
                    status,
                    text: rest[..end].to_owned(),
                });
            }
        }
        if seen.contains("event: complete") {
            return Err(format!("the stream completed without a result: {seen}"));
        }
        match response.chunk().await.map_err(|e| format!("{e:?}"))? {
            Some(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            None => return Err(format!("the stream ended without a result: {seen}")),
        }
    }
}

async fn send(app: &TestApp, http: &reqwest::Client, probe: &Probe) -> Result<Answer, String> {
    if probe.chunked {
        return send_chunked(app, probe).await;
    }
    let mut request = http
        .post(app.url("/graphql"))
        .timeout(ANSWER_WITHIN)
        .body(probe.body.clone());
    if let Some(content_type) = probe.content_type {
        request = request.header(reqwest::header::CONTENT_TYPE, content_type);
    }
    let response = request.send().await.map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(|e| format!("{e:?}"))?;
    Ok(Answer { status, text })
}

/// A chunked body (no content length) over a raw connection: reqwest's
/// streaming bodies are not among the crate's features.
async fn send_chunked(app: &TestApp, probe: &Probe) -> Result<Answer, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(app.addr)
            .await
            .map_err(|e| e.to_string())?;
        let mut wire = format!(
            "POST /graphql HTTP/1.1\r\nhost: {}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n",
            app.addr
        );
        if let Some(content_type) = probe.content_type {
            wire.push_str(&format!("content-type: {content_type}\r\n"));
        }
        wire.push_str("\r\n");
        let mut wire = wire.into_bytes();
        for chunk in probe.body.chunks(4096) {
            wire.extend(format!("{:x}\r\n", chunk.len()).bytes());
            wire.extend(chunk);
            wire.extend(b"\r\n");
        }
        wire.extend(b"0\r\n\r\n");
        // The gateway may answer (413) before it read everything: its
        // answer is what counts, not whether the rest was taken.
        let _ = stream.write_all(&wire).await;
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        parse_http_answer(&String::from_utf8_lossy(&raw))
    };
    tokio::time::timeout(ANSWER_WITHIN, exchange)
        .await
        .map_err(|_| format!("no answer within {ANSWER_WITHIN:?}"))?
}

fn parse_http_answer(raw: &str) -> Result<Answer, String> {
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP answer: {raw:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {head:?}"))?;
    let text = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut text = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).map_err(|e| e.to_string())?;
            if size == 0 || after.len() < size {
                break;
            }
            text.push_str(&after[..size]);
            rest = after[size..].trim_start_matches("\r\n");
        }
        text
    } else {
        body.to_owned()
    };
    Ok(Answer { status, text })
}

/// The invariants every answer keeps, then the API's verdict.
#[allow(clippy::too_many_arguments)]
fn judge(
    app: &TestApp,
    probe: &Probe,
    answer: &Answer,
    cost: usize,
    expect: Expect,
    may_cost: bool,
    answered_at: DateTime<Utc>,
    over_ws: bool,
) -> Result<(), String> {
    let status = answer.status;
    if status >= 500 {
        return Err(format!(
            "HTTP {status}: hostile input is never a server error"
        ));
    }
    if answer.text.contains(&app.token) {
        return Err("the platform token leaked into a response".into());
    }
    let body: Value =
        serde_json::from_str(&answer.text).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Some(object) = body.as_object() else {
        return Err("the body is not a GraphQL response object".into());
    };
    if !object.contains_key("data") && !object.contains_key("errors") {
        return Err("the body has neither data nor errors".into());
    }
    let codes = error_codes(object)?;
    if codes.iter().any(|c| c == "INTERNAL") {
        return Err("INTERNAL: our bug by docs/api.md, never the answer to an input".into());
    }
    if status >= 400 && codes.is_empty() {
        return Err(format!("HTTP {status} without a GraphQL error"));
    }
    let served = object
        .get("data")
        .and_then(Value::as_object)
        .is_some_and(|data| data.values().any(|v| !v.is_null()));
    let refused = status >= 400
        || (!codes.is_empty()
            && !served
            && codes.iter().all(|c| REFUSAL_CODES.contains(&c.as_str())));
    let needs_the_platform = may_cost || matches!(expect, Expect::Refused { free: false, .. });
    if refused && cost > 0 && !needs_the_platform {
        return Err(format!(
            "refused ({codes:?}) yet it cost {cost} platform request(s)"
        ));
    }
    if let Some(allowed) = &probe.status
        && !over_ws
        && !allowed.contains(&status)
    {
        return Err(format!("HTTP {status}, where the API says {allowed:?}"));
    }
    match expect {
        Expect::Refused { codes: allowed, .. } => {
            if !refused || codes.iter().any(|c| !allowed.contains(&c.as_str())) {
                return Err(format!(
                    "the API refuses this with {allowed:?}; got HTTP {status} with {codes:?}"
                ));
            }
            if expect == TOO_EXPENSIVE {
                let messages: String = object["errors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e["message"].as_str())
                    .collect();
                let figures = messages
                    .split(|c: char| !c.is_ascii_digit())
                    .filter(|s| !s.is_empty())
                    .count();
                if figures < 2 {
                    return Err("QUERY_TOO_EXPENSIVE must name the figure and the limit".into());
                }
            }
        }
        Expect::Served => {
            if status != 200 || !codes.is_empty() || !served {
                return Err(format!(
                    "the API serves this; got HTTP {status} with {codes:?}"
                ));
            }
            if let Some(check) = &probe.on_served {
                check(&body["data"], answered_at)?;
            }
        }
        Expect::Either => {}
    }
    Ok(())
}

/// Every error's code; `Err` if one has none or one outside the codes of docs/api.md.
fn error_codes(object: &Map<String, Value>) -> Result<Vec<String>, String> {
    let Some(errors) = object.get("errors") else {
        return Ok(Vec::new());
    };
    let Some(errors) = errors.as_array().filter(|e| !e.is_empty()) else {
        return Err(format!("errors is not a non-empty list: {errors}"));
    };
    errors
        .iter()
        .map(|e| {
            if !e["message"].is_string() {
                return Err(format!("an error without a message: {e}"));
            }
            match e["extensions"]["code"].as_str() {
                Some(code) if API_CODES.contains(&code) => Ok(code.to_owned()),
                Some(code) => Err(format!("{code} is not a code of the API")),
                None => Err(format!("an error without extensions.code: {e}")),
            }
        })
        .collect()
}

/// After a category: the process still answers, and logged no panic.
async fn alive(app: &TestApp, http: &reqwest::Client) -> Vec<String> {
    let mut problems = Vec::new();
    let health = http
        .get(app.url("/healthz"))
        .timeout(ANSWER_WITHIN)
        .send()
        .await;
    if !health.as_ref().is_ok_and(|r| r.status() == 200) {
        problems.push(format!("/healthz afterwards: {health:?}"));
    }
    let query =
        format!(r#"{{ userVisits(activityId: "{EXAMPLE_ACTIVITY}", first: 1) {{ totalCount }} }}"#);
    let normal = http
        .post(app.url("/graphql"))
        .timeout(ANSWER_WITHIN)
        .json(&json!({ "query": query }))
        .send()
        .await;
    let normal = match normal {
        Ok(r) => r.json::<Value>().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if !normal
        .as_ref()
        .is_ok_and(|r| r["errors"].is_null() && r["data"]["userVisits"]["totalCount"].is_u64())
    {
        problems.push(format!("a normal query afterwards: {normal:?}"));
    }
    // guards.rs provokes one panic on purpose, under its own request id.
    let panicked = logs()
        .lines()
        .any(|l| l.contains("panicked") && !l.contains("panic-test-"));
    if panicked {
        problems.push("a panic was logged".into());
    }
    problems
}

/// This process's resident memory; the gateway runs in it.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

// ---------------------------------------------------------------------------
// Time, as the API's rules see it.

fn pin_ms(now: DateTime<Utc>) -> i64 {
    let ms = now.timestamp_millis();
    ms - ms.rem_euclid(LIMITS.pin_ms)
}

fn at_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).expect("a representable instant")
}

/// RFC 3339 of an instant in milliseconds, or the number where chrono has no
/// such instant (the gateway then refuses the text).
fn ms_text(ms: i128) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .map_or_else(|| ms.to_string(), ts)
}

fn parse_time(text: &str) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(text).ok()
}

fn is_leap_second(t: DateTime<FixedOffset>) -> bool {
    t.nanosecond() >= 1_000_000_000
}

/// The platform's timestamps have four-digit years.
fn platform_can_name(ms: i64) -> bool {
    (0..=9999).contains(&at_ms(ms).year())
}

/// docs/api.md: ranges start no earlier than 1970-01-01.
const EARLIEST_MS: i64 = 0;

/// What the API makes of `range: {from, to}` sent at `now` (docs/api.md).
fn range_verdict(from: &str, to: Option<&str>, now: DateTime<Utc>) -> Expect {
    let Some(from) = parse_time(from) else {
        return BAD_INPUT;
    };
    let to = match to.map(parse_time) {
        Some(None) => return BAD_INPUT,
        Some(Some(t)) => Some(t),
        None => None,
    };
    if is_leap_second(from) || to.is_some_and(is_leap_second) {
        return Expect::Either;
    }
    let (now_ms, from_ms) = (now.timestamp_millis(), from.timestamp_millis());
    let to_ms = match to.map(|t| t.timestamp_millis()) {
        Some(t) if t <= now_ms => t,
        // "A from inside the current pin bucket ... ends at now."
        _ if from_ms >= pin_ms(now) && from_ms < now_ms => now_ms,
        _ => pin_ms(now),
    };
    if from_ms >= to_ms || to_ms - from_ms > LIMITS.max_range_ms || from_ms < EARLIEST_MS {
        return BAD_INPUT;
    }
    if !platform_can_name(from_ms) || !platform_can_name(to_ms) {
        return Expect::Either;
    }
    Expect::Served
}

// ---------------------------------------------------------------------------
// Cursors: `v1:<activity>:<from ms>:<to ms>:<offset>`, base64url unpadded.

/// A cursor's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fields {
    activity: u64,
    from_ms: i64,
    to_ms: i64,
    offset: u64,
}

/// How a string reads as a cursor.
enum Reading {
    /// Exactly the gateway's format, every number canonical.
    Strict(Fields),
    /// Readable only by a lenient decoder (padding, `+5`, `007`): the
    /// gateway may take it or refuse it.
    Lenient,
    /// Not a cursor: refused.
    Garbage,
}

fn encode_cursor(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(text)
}

fn read_cursor(s: &str) -> Reading {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let strict = URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| cursor_fields(&text, true));
    if let Some(fields) = strict {
        return Reading::Strict(fields);
    }
    let lenient = [LENIENT, STANDARD_PAD_INDIFFERENT].iter().any(|engine| {
        engine
            .decode(s.trim())
            .is_ok_and(|bytes| cursor_fields(&String::from_utf8_lossy(&bytes), false).is_some())
    });
    if lenient {
        Reading::Lenient
    } else {
        Reading::Garbage
    }
}

fn cursor_fields(text: &str, strict: bool) -> Option<Fields> {
    let canonical = |t: &str| {
        let digits = t.strip_prefix('-').unwrap_or(t);
        !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'))
            && t != "-0"
    };
    let number = |t| (!strict || canonical(t)).then_some(t);
    let parts: Vec<&str> = text.split(':').collect();
    let [version, activity, from, to, offset] = parts[..] else {
        return None;
    };
    if version != "v1" || (strict && (activity.starts_with('-') || activity.len() > 19)) {
        return None;
    }
    let fields = Fields {
        activity: number(activity)?.parse().ok().filter(|&a| a > 0)?,
        from_ms: number(from)?.parse().ok()?,
        to_ms: number(to)?.parse().ok()?,
        offset: number(offset)?.parse().ok()?,
    };
    // A time chrono cannot hold names no range.
    DateTime::from_timestamp_millis(fields.from_ms)?;
    DateTime::from_timestamp_millis(fields.to_ms)?;
    Some(fields)
}

/// The list the cursor categories start from: a real first page.
#[derive(Debug, Clone)]
struct List {
    from_ms: i64,
    to_ms: i64,
    total: u64,
    /// Its edges' cursors, offsets 0 to 4.
    cursors: Vec<String>,
}

async fn first_page(app: &TestApp) -> List {
    let query = format!(
        r#"{{ userVisits(activityId: "{EXAMPLE_ACTIVITY}", first: 5) {{ totalCount edges {{ cursor }} }} }}"#
    );
    let r = app.graphql(&query, json!({})).await;
    let c = &r["data"]["userVisits"];
    let cursors: Vec<String> = c["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("a first page: {r}"))
        .iter()
        .map(|e| e["cursor"].as_str().unwrap().to_owned())
        .collect();
    let Reading::Strict(first) = read_cursor(&cursors[0]) else {
        panic!(
            "the gateway's cursor {} is not v1:<activity>:<from>:<to>:<offset>",
            cursors[0]
        );
    };
    assert_eq!(first.offset, 0, "{r}");
    List {
        from_ms: first.from_ms,
        to_ms: first.to_ms,
        total: c["totalCount"].as_u64().unwrap(),
        cursors,
    }
}

/// The app of the cursor categories: the list's pages stay cached for the
/// whole run, so that refusing an offset past its end needs no platform
/// request however long the run takes.
async fn cursor_app() -> (Arc<TestApp>, List) {
    let app = spawn_app_with(|s| s.cache.ttl_recent = s.cache.ttl_settled).await;
    let list = first_page(&app).await;
    (Arc::new(app), list)
}

/// How a cursor is used.
#[derive(Debug, Clone, Copy)]
enum Use {
    /// `after` with `first: 5`.
    After,
    /// `before` with `last: 5`.
    Before,
}

fn uses() -> impl Strategy<Value = Use> {
    prop_oneof![Just(Use::After), Just(Use::Before)]
}

/// The `range` sent with a cursor.
#[derive(Debug, Clone, Copy)]
enum RangeArg {
    Omitted,
    /// The cursor's own range, `from` and `to`.
    OfCursor,
    /// The cursor's `from` alone.
    FromOfCursor,
    /// The real list's range.
    OfList,
    /// The cursor's range with `from` a millisecond later.
    Shifted,
}

fn range_args() -> impl Strategy<Value = RangeArg> {
    prop_oneof![
        3 => Just(RangeArg::Omitted),
        2 => Just(RangeArg::OfCursor),
        1 => Just(RangeArg::FromOfCursor),
        1 => Just(RangeArg::OfList),
        1 => Just(RangeArg::Shifted),
    ]
}

impl RangeArg {
    /// `(from, to)` as sent, for a cursor whose fields are these (or the
    /// list's, for a cursor that does not read).
    fn texts(self, fields: Option<Fields>, list: &List) -> Option<(String, Option<String>)> {
        let (from, to) = fields.map_or((list.from_ms, list.to_ms), |f| (f.from_ms, f.to_ms));
        let (from, to) = (i128::from(from), i128::from(to));
        match self {
            Self::Omitted => None,
            Self::OfCursor => Some((ms_text(from), Some(ms_text(to)))),
            Self::FromOfCursor => Some((ms_text(from), None)),
            Self::OfList => Some((
                ms_text(list.from_ms.into()),
                Some(ms_text(list.to_ms.into())),
            )),
            Self::Shifted => Some((ms_text(from + 1), Some(ms_text(to)))),
        }
    }
}

/// `userVisits` of the example activity with a cursor (and maybe a range),
/// judged by the API's rules on cursors.
fn cursor_probe(
    app: &Arc<TestApp>,
    list: &List,
    cursor: String,
    used: Use,
    range: RangeArg,
) -> Probe {
    let fields = match read_cursor(&cursor) {
        Reading::Strict(f) => Some(f),
        _ => None,
    };
    let range = range.texts(fields, list);
    let mut variables = json!({ "id": EXAMPLE_ACTIVITY.to_string() });
    match used {
        Use::After => {
            variables["after"] = json!(cursor);
            variables["first"] = json!(5);
        }
        Use::Before => {
            variables["before"] = json!(cursor);
            variables["last"] = json!(5);
        }
    }
    if let Some((from, to)) = &range {
        variables["range"] = json!({ "from": from, "to": to });
    }
    let decoded = URL_SAFE_NO_PAD.decode(&cursor).map_or_else(
        |_| "not base64url".to_owned(),
        |bytes| format!("{:?}", String::from_utf8_lossy(&bytes)),
    );
    let note = format!("the cursor decodes to {decoded}");
    let (app, list) = (app.clone(), list.clone());
    Probe::graphql(USER_VISITS, variables)
        .judged(move |now| cursor_verdict(&app, &list, &cursor, range.as_ref(), now))
        .noted(note)
}

/// A cursor's range is held to the rules of a range passed in, its
/// offset to the list it names; a `range` sent with it must be its own.
fn cursor_verdict(
    app: &TestApp,
    list: &List,
    cursor: &str,
    range: Option<&(String, Option<String>)>,
    now: DateTime<Utc>,
) -> Expect {
    let range_parses = range.is_none_or(|(from, to)| {
        parse_time(from).is_some() && to.as_deref().is_none_or(|t| parse_time(t).is_some())
    });
    if !range_parses {
        return BAD_INPUT;
    }
    let c = match read_cursor(cursor) {
        Reading::Strict(c) => c,
        Reading::Lenient => return Expect::Either,
        Reading::Garbage => return BAD_INPUT,
    };
    let now_ms = now.timestamp_millis();
    let span = i128::from(c.to_ms) - i128::from(c.from_ms);
    if c.activity != EXAMPLE_ACTIVITY
        || c.from_ms < EARLIEST_MS
        || span <= 0
        || span > i128::from(LIMITS.max_range_ms)
        || c.to_ms > now_ms
    {
        return BAD_INPUT;
    }
    let range_check = match range {
        None => Expect::Served,
        Some((from, to)) => {
            let from_ms = parse_time(from).unwrap().timestamp_millis();
            match to.as_deref().map(|t| parse_time(t).unwrap()) {
                _ if from_ms != c.from_ms => BAD_INPUT,
                None => Expect::Served,
                Some(t) if t.timestamp_millis() == c.to_ms => Expect::Served,
                // docs/api.md lets a `to` in the future through (it would be pinned).
                Some(t) if t.timestamp_millis() > now_ms => Expect::Either,
                Some(_) => BAD_INPUT,
            }
        }
    };
    // Between the pin of now and now only a range whose `from` lies in the
    // current pin bucket ends.
    if c.to_ms > pin_ms(now) {
        return range_check.and(Expect::Either);
    }
    let total = app
        .expected(EXAMPLE_ACTIVITY, at_ms(c.from_ms), at_ms(c.to_ms))
        .len() as u64;
    let offset_verdict = if c.offset >= total {
        Expect::Refused {
            codes: &["BAD_USER_INPUT"],
            // The real list's size is cached; another list's needs its first pages.
            free: (c.from_ms, c.to_ms) == (list.from_ms, list.to_ms),
        }
    } else {
        Expect::Served
    };
    range_check.and(offset_verdict)
}

/// An edit of a string, at a position chosen proportionally to its length.
#[derive(Debug, Clone)]
enum Edit {
    Replace(Index, char),
    Insert(Index, char),
    Delete(Index),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let chars = select("AQgw09azZ-_=+/:v15 .\0é١".chars().collect::<Vec<_>>());
    let edit = prop_oneof![
        (any::<Index>(), chars.clone()).prop_map(|(i, c)| Edit::Replace(i, c)),
        (any::<Index>(), chars).prop_map(|(i, c)| Edit::Insert(i, c)),
        any::<Index>().prop_map(Edit::Delete),
    ];
    vec(edit, 1..=3)
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for edit in edits {
        match *edit {
            Edit::Replace(i, c) if !chars.is_empty() => {
                let at = i.index(chars.len());
                chars[at] = c;
            }
            Edit::Insert(i, c) => chars.insert(i.index(chars.len() + 1), c),
            Edit::Delete(i) if !chars.is_empty() => {
                chars.remove(i.index(chars.len()));
            }
            _ => {}
        }
    }
    chars.into_iter().collect()
}

/// (a) A real cursor with a few characters changed.
#[derive(Debug, Clone)]
struct MutatedCursor {
    cursor: Index,
    /// Edit the decoded `v1:...` text and encode it again, rather than the base64.
    in_text: bool,
    edits: Vec<Edit>,
    used: Use,
    range: RangeArg,
}

fn mutated_cursors() -> impl Strategy<Value = MutatedCursor> {
    (any::<Index>(), any::<bool>(), edits(), uses(), range_args()).prop_map(
        |(cursor, in_text, edits, used, range)| MutatedCursor {
            cursor,
            in_text,
            edits,
            used,
            range,
        },
    )
}

/// An instant in milliseconds, absolute or relative to the request.
#[derive(Debug, Clone, Copy)]
enum Ms {
    At(i64),
    /// Now, at the request, plus this.
    FromNow(i64),
}

impl Ms {
    fn at(self, now: DateTime<Utc>) -> i128 {
        match self {
            Self::At(ms) => ms.into(),
            Self::FromNow(ms) => i128::from(now.timestamp_millis()) + i128::from(ms),
        }
    }
}

/// The `to` of a forged range.
#[derive(Debug, Clone, Copy)]
enum End {
    At(Ms),
    /// `from` plus this.
    Span(i64),
}

/// Instants at the edges: of i64 milliseconds, of chrono (year ±262143), of
/// four-digit years, of the epoch; 2001 and 2030.
fn notable_ms() -> Vec<i64> {
    let chrono_min = DateTime::<Utc>::MIN_UTC.timestamp_millis();
    let chrono_max = DateTime::<Utc>::MAX_UTC.timestamp_millis();
    let at = |text: &str| parse_time(text).unwrap().timestamp_millis();
    vec![
        at("2001-01-01T00:00:00Z"),
        at("2030-01-01T00:00:00Z"),
        0,
        -1,
        i64::MIN,
        i64::MIN + 1,
        i64::MAX,
        i64::MAX - 1,
        chrono_min,
        chrono_min + 1,
        chrono_min + DAY_MS,
        chrono_max,
        chrono_max - 1,
        chrono_max - DAY_MS,
        at("0000-01-01T00:00:00Z"),
        at("0001-01-01T00:00:00Z"),
        at("9999-12-31T23:59:59.999Z"),
    ]
}

fn forged_instants() -> impl Strategy<Value = Ms> {
    prop_oneof![
        3 => select(notable_ms()).prop_map(Ms::At),
        3 => (-100 * DAY_MS..3 * DAY_MS).prop_map(Ms::FromNow),
        1 => select(vec![-LIMITS.pin_ms, -1, 0, 1, 1000, 2 * DAY_MS]).prop_map(Ms::FromNow),
        1 => any::<i64>().prop_map(Ms::At),
    ]
}

fn forged_ends() -> impl Strategy<Value = End> {
    let max = LIMITS.max_range_ms;
    prop_oneof![
        2 => forged_instants().prop_map(End::At),
        3 => select(vec![-1, 0, 1, DAY_MS, 7 * DAY_MS, 7 * DAY_MS + 1, 60 * DAY_MS, max, max + 1, 93 * DAY_MS, 29 * 365 * DAY_MS, i64::MAX])
            .prop_map(End::Span),
        1 => any::<i64>().prop_map(End::Span),
    ]
}

/// (b) A cursor rebuilt around a forged range.
#[derive(Debug, Clone)]
struct ForgedRange {
    from: Ms,
    to: End,
    offset: u64,
    used: Use,
    range: RangeArg,
}

fn forged_ranges() -> impl Strategy<Value = ForgedRange> {
    let named = select(vec![
        // 2001 to 2030.
        (Ms::At(978_307_200_000), End::At(Ms::At(1_893_456_000_000))),
        // `to` two days ahead.
        (Ms::FromNow(-5 * DAY_MS), End::At(Ms::FromNow(2 * DAY_MS))),
        // Ending at chrono's last millisecond.
        (
            Ms::At(DateTime::<Utc>::MAX_UTC.timestamp_millis() - DAY_MS),
            End::Span(DAY_MS),
        ),
        // A year of the past.
        (Ms::FromNow(-400 * DAY_MS), End::Span(365 * DAY_MS)),
    ]);
    let ranges = prop_oneof![
        1 => named,
        4 => (forged_instants(), forged_ends()),
    ];
    (
        ranges,
        prop_oneof![Just(4u64), 0..300u64],
        uses(),
        range_args(),
    )
        .prop_map(|((from, to), offset, used, range)| ForgedRange {
            from,
            to,
            offset,
            used,
            range,
        })
}

impl ForgedRange {
    fn cursor(&self, now: DateTime<Utc>) -> String {
        let from = self.from.at(now);
        let to = match self.to {
            End::At(ms) => ms.at(now),
            End::Span(span) => from + i128::from(span),
        };
        encode_cursor(&format!(
            "v1:{EXAMPLE_ACTIVITY}:{from}:{to}:{}",
            self.offset
        ))
    }
}

/// (c) A cursor of the real list's range with a forged offset.
#[derive(Debug, Clone)]
enum Offset {
    /// The list's size plus this: past its end.
    Past(u64),
    /// Inside the list.
    Within(Index),
    Huge(u64),
    /// Not a canonical u64.
    Text(&'static str),
}

#[derive(Debug, Clone)]
struct ForgedOffset {
    offset: Offset,
    used: Use,
    range: RangeArg,
}

fn forged_offsets() -> impl Strategy<Value = ForgedOffset> {
    let offset = prop_oneof![
        3 => prop_oneof![0..3u64, 3..1000u64].prop_map(Offset::Past),
        2 => any::<Index>().prop_map(Offset::Within),
        3 => select(vec![u64::MAX, u64::MAX - 1, 1 << 63, (1 << 63) - 1, 1 << 53, 1 << 32, 10u64.pow(18)])
            .prop_map(Offset::Huge),
        2 => select(vec!["-1", "+4", "04", "4.0", "1e3", "", " 4", "0x4", "４", "18446744073709551616", "340282366920938463463374607431768211456"])
            .prop_map(Offset::Text),
    ];
    (offset, uses(), range_args()).prop_map(|(offset, used, range)| ForgedOffset {
        offset,
        used,
        range,
    })
}

impl ForgedOffset {
    fn cursor(&self, list: &List) -> String {
        let offset = match &self.offset {
            Offset::Past(k) => (list.total + k).to_string(),
            Offset::Within(i) => i.index(list.total as usize).to_string(),
            Offset::Huge(n) => n.to_string(),
            Offset::Text(t) => (*t).to_owned(),
        };
        encode_cursor(&format!(
            "v1:{EXAMPLE_ACTIVITY}:{}:{}:{offset}",
            list.from_ms, list.to_ms
        ))
    }
}

#[test]
fn mutated_cursors_are_refused_unless_they_still_name_a_list() {
    hostile_test(async {
        let (app, list) = cursor_app().await;
        let probe_app = app.clone();
        fuzz(
            &app,
            "mutated cursors",
            700,
            mutated_cursors,
            move |case, _| {
                let original = &list.cursors[case.cursor.index(list.cursors.len())];
                let cursor = if case.in_text {
                    let text =
                        String::from_utf8(URL_SAFE_NO_PAD.decode(original).unwrap()).unwrap();
                    encode_cursor(&apply(&text, &case.edits))
                } else {
                    apply(original, &case.edits)
                };
                cursor_probe(&probe_app, &list, cursor, case.used, case.range)
            },
        )
        .await;
    });
}

#[test]
fn cursors_with_forged_ranges_are_held_to_the_rules_of_a_range() {
    hostile_test(async {
        let (app, list) = cursor_app().await;
        let probe_app = app.clone();
        fuzz(
            &app,
            "forged cursor ranges",
            500,
            forged_ranges,
            move |case, now| {
                cursor_probe(&probe_app, &list, case.cursor(now), case.used, case.range)
            },
        )
        .await;
    });
}

#[test]
fn cursors_with_forged_offsets_are_held_to_their_list() {
    hostile_test(async {
        let (app, list) = cursor_app().await;
        let probe_app = app.clone();
        fuzz(
            &app,
            "forged cursor offsets",
            300,
            forged_offsets,
            move |case, _| {
                cursor_probe(&probe_app, &list, case.cursor(&list), case.used, case.range)
            },
        )
        .await;
    });
}

// ---------------------------------------------------------------------------
// Ranges at the edges of time.

/// How an instant is written.
#[derive(Debug, Clone, Copy)]
enum Zone {
    Z,
    Plus14,
    Minus12,
    /// `+00:00`.
    Zero,
    /// `-00:00`: RFC 3339's "offset unknown".
    UnknownOffset,
    /// No offset: refused.
    Naive,
}

fn write_in(t: DateTime<Utc>, zone: Zone) -> String {
    let offset = |hours: i32| FixedOffset::east_opt(hours * 3600).unwrap();
    let millis = SecondsFormat::Millis;
    match zone {
        Zone::Z => t.to_rfc3339_opts(millis, true),
        Zone::Plus14 => t.with_timezone(&offset(14)).to_rfc3339_opts(millis, false),
        Zone::Minus12 => t.with_timezone(&offset(-12)).to_rfc3339_opts(millis, false),
        Zone::Zero => t.to_rfc3339_opts(millis, false),
        Zone::UnknownOffset => t.to_rfc3339_opts(millis, false).replace("+00:00", "-00:00"),
        Zone::Naive => t.format("%Y-%m-%dT%H:%M:%S%.3f").to_string(),
    }
}

#[derive(Debug, Clone, Copy)]
enum When {
    Text(&'static str),
    /// Now, at the request, minus this many milliseconds, written in a zone.
    Ago(i64, Zone),
}

impl When {
    fn text(self, now: DateTime<Utc>) -> String {
        match self {
            Self::Text(t) => t.to_owned(),
            Self::Ago(ms, zone) => write_in(now - TimeDelta::milliseconds(ms), zone),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Until {
    Omitted,
    At(When),
    /// `from` plus this many milliseconds, in UTC.
    After(i64),
}

#[derive(Debug, Clone, Copy)]
struct Edges {
    from: When,
    to: Until,
}

const EDGE_TEXTS: &[&str] = &[
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00-12:00",
    "0000-01-01T00:00:00Z",
    "0000-01-01T00:00:00+14:00",
    "0000-01-03T00:00:00Z",
    "9999-12-31T23:59:59.999Z",
    "9999-12-31T23:59:59.999-12:00",
    "+262143-12-31T23:59:59Z",
    "-262143-01-01T00:00:00Z",
    "+10000-01-01T00:00:00Z",
    "-0001-12-31T00:00:00Z",
    "1969-12-31T23:59:59.999Z",
    "1970-01-01T00:00:00Z",
    "2016-12-31T23:59:60Z",
    "2016-12-31T23:59:60.999Z",
    "2017-01-01T00:00:00Z",
    "2016-12-31T15:59:60-08:00",
    "2024-02-29T00:00:00Z",
    "2023-02-29T00:00:00Z",
    "2024-12-31T24:00:00Z",
    "2024-01-01T00:00:00",
    "2024-01-01 00:00:00Z",
    "2024-01-01t00:00:00z",
    "2024-01-01T00:00:00.123456789123Z",
    "2024-01-01T00:00:00+23:59",
    "2024-01-01T00:00:00+24:00",
    "2024-01-01",
    "",
    "now",
];

fn whens() -> impl Strategy<Value = When> {
    let zones = select(vec![
        Zone::Z,
        Zone::Plus14,
        Zone::Minus12,
        Zone::Zero,
        Zone::UnknownOffset,
        Zone::Naive,
    ]);
    let notable_ago = select(vec![
        -2 * DAY_MS,
        -LIMITS.pin_ms,
        -1000,
        0,
        1,
        500,
        1000,
        30_000,
        59_000,
        61_000,
        3_600_000,
        3 * DAY_MS,
        7 * DAY_MS,
        60 * DAY_MS,
        LIMITS.max_range_ms - LIMITS.pin_ms,
        LIMITS.max_range_ms,
        LIMITS.max_range_ms + LIMITS.pin_ms,
        400 * DAY_MS,
    ]);
    prop_oneof![
        3 => select(EDGE_TEXTS).prop_map(When::Text),
        3 => (notable_ago, zones.clone()).prop_map(|(ms, zone)| When::Ago(ms, zone)),
        // "A from inside the current minute."
        1 => (0..LIMITS.pin_ms, zones.clone()).prop_map(|(ms, zone)| When::Ago(ms, zone)),
        1 => (0..100 * DAY_MS, zones).prop_map(|(ms, zone)| When::Ago(ms, zone)),
    ]
}

fn edges() -> impl Strategy<Value = Edges> {
    let max = LIMITS.max_range_ms;
    let to = prop_oneof![
        2 => Just(Until::Omitted),
        2 => whens().prop_map(Until::At),
        2 => select(vec![-1, 0, 1, 1000, DAY_MS, 7 * DAY_MS, max, max + 1, 93 * DAY_MS, 3650 * DAY_MS])
            .prop_map(Until::After),
    ];
    let named = select(vec![
        // Year 0 at +14:00 is year -1 in UTC, which the platform cannot name.
        Edges {
            from: When::Text("0000-01-01T00:00:00+14:00"),
            to: Until::After(DAY_MS),
        },
        Edges {
            from: When::Text("0000-01-01T00:00:00Z"),
            to: Until::After(2 * DAY_MS),
        },
        Edges {
            from: When::Text("0001-01-01T00:00:00Z"),
            to: Until::After(DAY_MS),
        },
        Edges {
            from: When::Text("9999-12-31T23:59:59.999Z"),
            to: Until::Omitted,
        },
        Edges {
            from: When::Text("+262143-12-31T23:59:59Z"),
            to: Until::Omitted,
        },
        Edges {
            from: When::Text("2016-12-31T23:59:60Z"),
            to: Until::At(When::Text("2017-01-01T00:00:00Z")),
        },
        // A `from` inside the current minute.
        Edges {
            from: When::Ago(1000, Zone::Z),
            to: Until::Omitted,
        },
        Edges {
            from: When::Ago(3 * DAY_MS, Zone::Naive),
            to: Until::Omitted,
        },
    ]);
    prop_oneof![
        1 => named,
        5 => (whens(), to).prop_map(|(from, to)| Edges { from, to }),
    ]
}

fn edges_probe(case: &Edges, now: DateTime<Utc>) -> Probe {
    let from = case.from.text(now);
    let to = match case.to {
        Until::Omitted => None,
        Until::At(when) => Some(when.text(now)),
        Until::After(ms) => Some(parse_time(&from).map_or_else(
            || "2024-01-08T00:00:00Z".to_owned(),
            |f| ms_text(i128::from(f.timestamp_millis()) + i128::from(ms)),
        )),
    };
    let query = format!(
        "query($range: TimeRange) {{ userVisits(activityId: \"{EXAMPLE_ACTIVITY}\", range: $range, first: 1) {{ totalCount range {{ from to }} }} }}"
    );
    let variables = json!({ "range": { "from": from, "to": to } });
    let from_ms = parse_time(&from).map(|t| t.timestamp_millis());
    let to_ms = to
        .as_deref()
        .and_then(parse_time)
        .map(|t| t.timestamp_millis());
    let sent_ms = now.timestamp_millis();
    Probe::graphql(&query, variables)
        .judged(move |now| range_verdict(&from, to.as_deref(), now))
        .on_served(move |data, answered_at| {
            // The window actually served: `from` as sent, `to` as sent when
            // it is past, else at most now; within the maximum span.
            let range = &data["userVisits"]["range"];
            let (Some(got_from), Some(got_to)) = (range["from"].as_str(), range["to"].as_str())
            else {
                return Err(format!("no resolved range: {data}"));
            };
            let got_from = parse_time(got_from).unwrap().timestamp_millis();
            let got_to = parse_time(got_to).unwrap().timestamp_millis();
            let sound = Some(got_from) == from_ms
                && got_from < got_to
                && got_to <= answered_at.timestamp_millis()
                && got_to - got_from <= LIMITS.max_range_ms
                && to_ms.is_none_or(|t| t > sent_ms || t == got_to);
            if sound {
                Ok(())
            } else {
                Err(format!(
                    "the resolved range {range} is not the one asked for"
                ))
            }
        })
}

#[test]
fn ranges_at_the_edges_of_time_are_served_or_refused_by_the_rules() {
    hostile_test(async {
        let app = Arc::new(spawn_app().await);
        fuzz(&app, "ranges at the edges of time", 500, edges, edges_probe).await;
    });
}

// ---------------------------------------------------------------------------
// Every argument with the wrong type.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Validity {
    Valid,
    Invalid,
    /// Valid GraphQL whose outcome the API leaves open (an Int where an ID
    /// goes, an activity the platform does not know, `5.0`).
    Open,
}

/// One argument value, as JSON in `variables` and as a GraphQL literal.
#[derive(Debug, Clone, Copy)]
struct Arg {
    json: &'static str,
    literal: &'static str,
    validity: Validity,
}

const fn arg(json: &'static str, literal: &'static str, validity: Validity) -> Arg {
    Arg {
        json,
        literal,
        validity,
    }
}

use Validity::{Invalid, Open, Valid};

const ACTIVITY_IDS: &[Arg] = &[
    arg(r#""10024069""#, r#""10024069""#, Valid),
    arg("10024069", "10024069", Open),
    arg(r#""424242""#, r#""424242""#, Open),
    arg(r#""9223372036854775807""#, r#""9223372036854775807""#, Open),
    arg(
        r#""18446744073709551615""#,
        r#""18446744073709551615""#,
        Invalid,
    ),
    arg(
        r#""123456789012345678901234""#,
        r#""123456789012345678901234""#,
        Invalid,
    ),
    arg("18446744073709551616", "18446744073709551616", Invalid),
    arg("true", "true", Invalid),
    arg("null", "null", Invalid),
    arg("{}", "{}", Invalid),
    arg(r#"{"id":"10024069"}"#, r#"{id: "10024069"}"#, Invalid),
    arg(r#"["10024069"]"#, r#"["10024069"]"#, Invalid),
    arg("[]", "[]", Invalid),
    arg("1.5", "1.5", Invalid),
    arg("-1", "-1", Invalid),
    arg("0", "0", Invalid),
    arg("1e309", "1e309", Invalid),
    arg(r#""١٢٣""#, r#""١٢٣""#, Invalid),
    arg(r#""١٠٠٢٤٠٦٩""#, r#""١٠٠٢٤٠٦٩""#, Invalid),
    arg(r#""１００２４０６９""#, r#""１００２４０６９""#, Invalid),
    arg(r#""𝟏𝟎𝟎𝟐𝟒𝟎𝟔𝟗""#, r#""𝟏𝟎𝟎𝟐𝟒𝟎𝟔𝟗""#, Invalid),
    arg(r#""¹²³""#, r#""¹²³""#, Invalid),
    arg(r#""10024069\u0000""#, r#""10024069\u0000""#, Invalid),
    arg(r#""\u0000""#, r#""\u0000""#, Invalid),
    arg(r#""0""#, r#""0""#, Invalid),
    arg(r#""-1""#, r#""-1""#, Invalid),
    arg(r#""+10024069""#, r#""+10024069""#, Invalid),
    arg(r#"" 10024069""#, r#"" 10024069""#, Invalid),
    arg(r#""10024069\n""#, r#""10024069\n""#, Invalid),
    arg(r#""010024069""#, r#""010024069""#, Invalid),
    arg(r#""1e7""#, r#""1e7""#, Invalid),
    arg(r#""../10024069""#, r#""../10024069""#, Invalid),
    arg(r#""10024069/../1""#, r#""10024069/../1""#, Invalid),
    arg(r#""%31""#, r#""%31""#, Invalid),
    arg(r#""""#, r#""""#, Invalid),
];

const PAGE_SIZES: &[Arg] = &[
    arg("1", "1", Valid),
    arg("5", "5", Valid),
    arg("100", "100", Valid),
    arg("null", "null", Valid),
    arg("5.0", "5.0", Open),
    arg("1e2", "1e2", Open),
    arg("0", "0", Invalid),
    arg("-1", "-1", Invalid),
    arg("101", "101", Invalid),
    arg("2147483647", "2147483647", Invalid),
    arg("2147483648", "2147483648", Invalid),
    arg("-2147483649", "-2147483649", Invalid),
    arg("9007199254740992", "9007199254740992", Invalid),
    arg("9007199254740993", "9007199254740993", Invalid),
    arg("18446744073709551616", "18446744073709551616", Invalid),
    arg("1e309", "1e309", Invalid),
    arg("-1e309", "-1e309", Invalid),
    arg("1.5", "1.5", Invalid),
    arg(r#""5""#, r#""5""#, Invalid),
    arg("true", "true", Invalid),
    arg("[5]", "[5]", Invalid),
    arg("{}", "{}", Invalid),
];

const CURSORS: &[Arg] = &[
    arg("null", "null", Valid),
    arg(r#""""#, r#""""#, Invalid),
    arg(r#""not-a-cursor""#, r#""not-a-cursor""#, Invalid),
    arg(r#""\u0000""#, r#""\u0000""#, Invalid),
    // v1:10024069:0:0:0, an empty range.
    arg(
        r#""djE6MTAwMjQwNjk6MDowOjA""#,
        r#""djE6MTAwMjQwNjk6MDowOjA""#,
        Invalid,
    ),
    arg("5", "5", Invalid),
    arg("true", "true", Invalid),
    arg("[]", "[]", Invalid),
    arg("{}", "{}", Invalid),
];

const RANGES: &[Arg] = &[
    arg("null", "null", Valid),
    arg(
        r#"{"from":"2020-01-01T00:00:00Z","to":"2020-01-08T00:00:00Z"}"#,
        r#"{from: "2020-01-01T00:00:00Z", to: "2020-01-08T00:00:00Z"}"#,
        Valid,
    ),
    arg(
        r#""2020-01-01T00:00:00Z""#,
        r#""2020-01-01T00:00:00Z""#,
        Invalid,
    ),
    arg(
        r#"["2020-01-01T00:00:00Z"]"#,
        r#"["2020-01-01T00:00:00Z"]"#,
        Invalid,
    ),
    arg("5", "5", Invalid),
    arg("{}", "{}", Invalid),
    arg(
        r#"{"to":"2020-01-08T00:00:00Z"}"#,
        r#"{to: "2020-01-08T00:00:00Z"}"#,
        Invalid,
    ),
    arg(r#"{"from":null}"#, "{from: null}", Invalid),
    arg(r#"{"from":5}"#, "{from: 5}", Invalid),
    arg(r#"{"from":true}"#, "{from: true}", Invalid),
    arg(
        r#"{"from":"2020-01-01T00:00:00Z","extra":1}"#,
        r#"{from: "2020-01-01T00:00:00Z", extra: 1}"#,
        Invalid,
    ),
    arg(
        r#"{"from":"2020-01-01T00:00:00"}"#,
        r#"{from: "2020-01-01T00:00:00"}"#,
        Invalid,
    ),
    arg(
        r#"{"from":["2020-01-01T00:00:00Z"]}"#,
        r#"{from: ["2020-01-01T00:00:00Z"]}"#,
        Invalid,
    ),
    arg(
        r#"{"from":"2020-01-08T00:00:00Z","to":"2020-01-01T00:00:00Z"}"#,
        r#"{from: "2020-01-08T00:00:00Z", to: "2020-01-01T00:00:00Z"}"#,
        Invalid,
    ),
];

/// How the arguments travel.
#[derive(Debug, Clone, Copy)]
enum Transport {
    /// In `variables`, declared with the schema's types.
    Variables,
    /// As literals in the query.
    Inline,
    /// In `variables`, `$id` declared `Int!` where the schema says `ID!`:
    /// async-graphql lets it through (a GraphQL validation detail, not the
    /// API's), so only the value decides.
    MisdeclaredId,
}

#[derive(Debug, Clone)]
struct Args {
    transport: Transport,
    /// `(name, value)`, `activityId` first.
    args: Vec<(&'static str, Arg)>,
}

fn wrong_types() -> impl Strategy<Value = Args> {
    let optional = |values: &'static [Arg]| proptest::option::weighted(0.4, select(values));
    let transport = prop_oneof![
        6 => Just(Transport::Variables),
        6 => Just(Transport::Inline),
        1 => Just(Transport::MisdeclaredId),
    ];
    (
        transport,
        select(ACTIVITY_IDS),
        optional(PAGE_SIZES),
        optional(PAGE_SIZES),
        optional(CURSORS),
        optional(CURSORS),
        optional(RANGES),
    )
        .prop_map(|(transport, id, first, last, after, before, range)| {
            let optional = [
                ("first", first),
                ("last", last),
                ("after", after),
                ("before", before),
                ("range", range),
            ];
            let mut args = vec![("activityId", id)];
            args.extend(optional.into_iter().filter_map(|(n, a)| Some((n, a?))));
            Args { transport, args }
        })
}

/// The variable and its declared type, for each argument.
fn variable(name: &str) -> (&'static str, &'static str) {
    match name {
        "activityId" => ("id", "ID!"),
        "range" => ("range", "TimeRange"),
        "first" => ("first", "Int"),
        "last" => ("last", "Int"),
        "after" => ("after", "String"),
        _ => ("before", "String"),
    }
}

fn wrong_types_probe(case: &Args) -> Probe {
    let selection = "{ totalCount range { from to } }";
    let body = match case.transport {
        Transport::Inline => {
            let args: Vec<String> = case
                .args
                .iter()
                .map(|(name, a)| format!("{name}: {}", a.literal))
                .collect();
            let query = format!("{{ userVisits({}) {selection} }}", args.join(", "));
            json!({ "query": query }).to_string()
        }
        Transport::Variables | Transport::MisdeclaredId => {
            let mut declared = Vec::new();
            let mut passed = Vec::new();
            let mut values = Vec::new();
            for (name, a) in &case.args {
                let (var, mut ty) = variable(name);
                if *name == "activityId" && matches!(case.transport, Transport::MisdeclaredId) {
                    ty = "Int!";
                }
                declared.push(format!("${var}: {ty}"));
                passed.push(format!("{name}: ${var}"));
                // Raw JSON text: 1e309 and the like must reach the gateway as written.
                values.push(format!("{}: {}", json!(var), a.json));
            }
            let query = format!(
                "query({}) {{ userVisits({}) {selection} }}",
                declared.join(", "),
                passed.join(", ")
            );
            format!(
                r#"{{"query": {}, "variables": {{{}}}}}"#,
                json!(query),
                values.join(", ")
            )
        }
    };
    Probe::json(body).expect(wrong_types_verdict(case))
}

fn wrong_types_verdict(case: &Args) -> Expect {
    let given = |name: &str| {
        case.args
            .iter()
            .any(|(n, a)| *n == name && a.json != "null")
    };
    let validity = |v: Validity| case.args.iter().any(|(_, a)| a.validity == v);
    if validity(Invalid) || (given("first") && given("last")) {
        BAD_INPUT
    } else if validity(Open) || matches!(case.transport, Transport::MisdeclaredId) {
        Expect::Either
    } else {
        Expect::Served
    }
}

#[test]
fn arguments_of_the_wrong_type_are_refused_at_no_platform_request() {
    hostile_test(async {
        let app = Arc::new(spawn_app().await);
        fuzz(
            &app,
            "arguments of the wrong type",
            1000,
            wrong_types,
            |case, _| wrong_types_probe(case),
        )
        .await;
    });
}

// ---------------------------------------------------------------------------
// Query shapes: nesting, fragments, fields, operations, directives.

#[derive(Debug, Clone, Copy)]
enum Shape {
    /// `... on Query {` nested this deep.
    NestedFragments(usize),
    /// `__type(name: "Query") { fields { type { ofType { ofType ...`.
    NestedIntrospection(usize),
    /// `a { a { a ...`: fields that do not exist.
    NestedUnknownFields(usize),
    /// Fragments that spread each other in a ring this long.
    FragmentCycle(usize),
    /// `totalCount` selected this many times.
    RepeatedField(usize),
    /// This many aliases of `__typename`.
    AliasedTypename(usize),
    /// This many aliases of one small `userVisits`.
    AliasedSameList(usize),
    /// This many operations, with or without an `operationName`.
    Operations { count: usize, named: bool },
    /// `@skip(if: false)` this many times on `userVisits` (async-graphql
    /// checks no directive on `__typename`).
    RepeatedDirective(usize),
    /// An unknown directive this many times on `userVisits`.
    UnknownDirective(usize),
}

fn shapes() -> impl Strategy<Value = Shape> {
    let deep = || prop_oneof![100usize..200, 200usize..3000, 3000usize..20_000];
    let many = || prop_oneof![1usize..50, 50usize..2000, 2000usize..20_000];
    prop_oneof![
        deep().prop_map(Shape::NestedFragments),
        prop_oneof![17usize..100, 100usize..3000].prop_map(Shape::NestedIntrospection),
        deep().prop_map(Shape::NestedUnknownFields),
        prop_oneof![1usize..5, 5usize..500].prop_map(Shape::FragmentCycle),
        many().prop_map(Shape::RepeatedField),
        many().prop_map(Shape::AliasedTypename),
        prop_oneof![1usize..20, 20usize..200].prop_map(Shape::AliasedSameList),
        (prop_oneof![1usize..5, 5usize..2000], any::<bool>())
            .prop_map(|(count, named)| Shape::Operations { count, named }),
        many().prop_map(Shape::RepeatedDirective),
        many().prop_map(Shape::UnknownDirective),
    ]
}

/// `inner` wrapped in `depth` pairs of `open` and `close`.
fn nested(open: &str, inner: &str, close: &str, depth: usize) -> String {
    format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
}

fn shape_probe(shape: Shape) -> Probe {
    let list = format!(r#"userVisits(activityId: "{EXAMPLE_ACTIVITY}", first: 1)"#);
    let numbered = |n: usize, each: &dyn Fn(usize) -> String| -> String {
        (0..n).map(each).collect::<Vec<_>>().join(" ")
    };
    let (query, operation, expect) = match shape {
        Shape::NestedFragments(d) => (
            format!("{{ {} }}", nested("... on Query { ", "__typename", " }", d)),
            None,
            REFUSED,
        ),
        Shape::NestedIntrospection(d) => (
            format!(
                r#"{{ __type(name: "Query") {{ fields {{ type {{ {} }} }} }} }}"#,
                nested("ofType { ", "name", " }", d)
            ),
            None,
            REFUSED,
        ),
        Shape::NestedUnknownFields(d) => (
            format!("{{ {} }}", nested("a { ", "b", " }", d)),
            None,
            REFUSED,
        ),
        Shape::FragmentCycle(n) => (
            format!(
                "{{ ...F0 }} {}",
                numbered(n, &|i| format!(
                    "fragment F{i} on Query {{ __typename ...F{} }}",
                    (i + 1) % n
                ))
            ),
            None,
            REFUSED,
        ),
        Shape::RepeatedField(n) => (
            format!("{{ {list} {{ {} }} }}", "totalCount ".repeat(n)),
            None,
            Expect::Either,
        ),
        Shape::AliasedTypename(n) => (
            format!("{{ {} }}", numbered(n, &|i| format!("a{i}: __typename"))),
            None,
            Expect::Either,
        ),
        Shape::AliasedSameList(n) => (
            format!(
                "{{ {} }}",
                numbered(n, &|i| format!("a{i}: {list} {{ totalCount }}"))
            ),
            None,
            Expect::Either,
        ),
        Shape::Operations { count, named } => (
            numbered(count, &|i| format!("query Q{i} {{ __typename }}")),
            named.then_some("Q0"),
            if count > 1 && !named {
                BAD_INPUT
            } else {
                Expect::Served
            },
        ),
        Shape::RepeatedDirective(n) => (
            format!(
                "{{ {list} {} {{ totalCount }} }}",
                "@skip(if: false) ".repeat(n)
            ),
            None,
            // @skip is not repeatable.
            if n > 1 { BAD_INPUT } else { Expect::Served },
        ),
        Shape::UnknownDirective(n) => (
            format!("{{ {list} {} {{ totalCount }} }}", "@nope ".repeat(n)),
            None,
            BAD_INPUT,
        ),
    };
    let body = json!({ "query": query, "operationName": operation }).to_string();
    // Beyond the body limit the answer is 413 whatever the query.
    let expect = if body.len() > LIMITS.max_body_bytes {
        BAD_INPUT
    } else {
        expect
    };
    Probe::json(body).expect(expect)
}

#[test]
fn deep_repeated_and_cyclic_queries_are_refused_or_answered_at_once() {
    hostile_test(async {
        let app = Arc::new(spawn_app().await);
        fuzz(&app, "query shapes", 400, shapes, |shape, _| {
            shape_probe(*shape)
        })
        .await;
    });
}

// ---------------------------------------------------------------------------
// Requests that crash or pin the gateway: each in a child process.

/// How long a child process of this binary may take.
const CHILD_DEADLINE: Duration = Duration::from_secs(90);

/// Runs `test` (an ignored test of this binary) in a child process and fails
/// with its output unless it passes within `CHILD_DEADLINE`. For requests
/// that no in-process test survives: a stack overflow aborts the whole
/// process, and a thread pinned for good keeps a core busy for the rest of
/// the test binary.
fn in_child_process(test: &str) {
    let _turn = one_at_a_time();
    let dir = temp_dir();
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--ignored", "--nocapture"])
        // The end of its output is what it says, not a backtrace.
        .env("RUST_BACKTRACE", "0")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("the test binary runs again");
    let deadline = Instant::now() + CHILD_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    // libtest exits 0 when no test matches the name too: a pass is exactly
    // one test run, and passed.
    let ran_one = stdout.lines().any(|l| l == "running 1 test")
        && stdout
            .lines()
            .any(|l| l.starts_with("test result: ok. 1 passed;"));
    let verdict = match status {
        Some(s) if s.success() && ran_one => return,
        Some(s) if s.success() => {
            "the child process ran no test of that name, or more than one".to_owned()
        }
        Some(s) => format!("the child process failed ({s})"),
        None => format!("no verdict within {CHILD_DEADLINE:?}"),
    };
    let output = stdout + &std::fs::read_to_string(&err).unwrap_or_default();
    let lines: Vec<&str> = output.lines().collect();
    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
    panic!("{test}: {verdict}; the end of its output:\n{tail}");
}

/// A literal nested in an argument: `activityId: [[[...]]]` or
/// `range: {from: {from: ...}}`.
#[derive(Debug, Clone, Copy)]
enum Literal {
    List(usize),
    Object(usize),
}

impl Literal {
    fn probe(self) -> Probe {
        let query = match self {
            Self::List(depth) => format!(
                "{{ userVisits(activityId: {}) {{ totalCount }} }}",
                nested("[", &format!("\"{EXAMPLE_ACTIVITY}\""), "]", depth)
            ),
            Self::Object(depth) => format!(
                "{{ userVisits(activityId: \"{EXAMPLE_ACTIVITY}\", range: {}) {{ totalCount }} }}",
                nested("{from: ", "\"2020-01-01T00:00:00Z\"", "}", depth)
            ),
        };
        Probe::graphql(&query, json!({})).expect(BAD_INPUT)
    }
}

#[test]
fn deeply_nested_literals_are_refused_without_crashing() {
    in_child_process("hostile::nested_literals_in_a_child_process");
}

#[test]
#[ignore = "run in a child process by deeply_nested_literals_are_refused_without_crashing"]
fn nested_literals_in_a_child_process() {
    hostile_test(async {
        let app = Arc::new(spawn_app().await);
        // Shallowest first: the first failure is the shallowest.
        let literals = (1..=48)
            .map(|i| i * 50)
            .flat_map(|depth| [Literal::List(depth), Literal::Object(depth)])
            .collect();
        sweep(&app, "nested literals", literals, |l| l.probe()).await;
    });
}

/// A fragment bomb: each of `levels` fragments spreads the one before
/// `fanout` times, so a few hundred bytes expand to `fanout^(levels-1)`
/// selections of `userVisits`.
#[derive(Debug, Clone, Copy)]
struct Bomb {
    levels: u32,
    fanout: usize,
}

impl Bomb {
    fn expansion(self) -> u64 {
        (self.fanout as u64).saturating_pow(self.levels - 1)
    }

    fn probe(self) -> Probe {
        let mut query = format!(
            r#"{{ ...F{} }} fragment F0 on Query {{ userVisits(activityId: "{EXAMPLE_ACTIVITY}", first: 1) {{ totalCount }} }}"#,
            self.levels - 1
        );
        for i in 1..self.levels {
            let spreads = format!("...F{} ", i - 1).repeat(self.fanout);
            query.push_str(&format!(" fragment F{i} on Query {{ {spreads}}}"));
        }
        // Merged, it is one small field: served or refused, but at once.
        Probe::graphql(&query, json!({}))
    }
}

#[test]
fn fragment_bombs_are_refused_or_answered_at_once() {
    in_child_process("hostile::fragment_bombs_in_a_child_process");
}

#[test]
#[ignore = "run in a child process by fragment_bombs_are_refused_or_answered_at_once"]
fn fragment_bombs_in_a_child_process() {
    hostile_test(async {
        let app = Arc::new(spawn_app().await);
        // Smallest expansion first: the first bomb not answered in time is
        // the smallest that pins the gateway.
        let mut bombs: Vec<Bomb> = [2, 3, 8]
            .into_iter()
            .flat_map(|fanout| (2..=41).map(move |levels| Bomb { levels, fanout }))
            .filter(|b| b.expansion() <= 1 << 40)
            .collect();
        bombs.sort_by_key(|b| b.expansion());
        sweep(&app, "fragment bombs", bombs, |bomb| bomb.probe()).await;
    });
}

// ---------------------------------------------------------------------------
// Aliases: what one request may cost (docs/api.md).

#[derive(Debug, Clone)]
struct Aliases {
    /// Each alias's range, in days; the ranges differ, so no two aliases
    /// share a platform page.
    days: Vec<i64>,
    first: u32,
}

fn aliases() -> impl Strategy<Value = Aliases> {
    let first = || select(vec![1u32, 20, 100]);
    let days = |n: RangeInclusive<usize>| vec(1i64..=LIMITS.max_range_ms / DAY_MS, n);
    prop_oneof![
        2 => (days(1..=1), first()).prop_map(|(days, first)| Aliases { days, first }),
        2 => (days(2..=6), first()).prop_map(|(days, first)| Aliases { days, first }),
        4 => (days(6..=60), first()).prop_map(|(days, first)| Aliases { days, first }),
        // The classic abuse: 50 aliases of userVisits over 60 days.
        1 => Just(Aliases { days: vec![60; 50], first: 20 }),
    ]
}

fn aliases_probe(case: &Aliases, now: DateTime<Utc>) -> Probe {
    let pin = at_ms(pin_ms(now));
    let fields: Vec<String> = case
        .days
        .iter()
        .enumerate()
        .map(|(i, days)| {
            let to = pin - TimeDelta::minutes(i as i64 + 1);
            let from = to - TimeDelta::days(*days);
            format!(
                r#"a{i}: userVisits(activityId: "{EXAMPLE_ACTIVITY}", range: {{from: "{}", to: "{}"}}, first: {}) {{ totalCount }}"#,
                ts(from),
                ts(to),
                case.first
            )
        })
        .collect();
    let query = format!("{{ {} }}", fields.join(" "));
    // The first pages alone: one per window of at most 7 days. A single
    // userVisits of a maximum range needs 14 of them and a slice's pages.
    let windows: i64 = case.days.iter().map(|d| (d + 6) / 7).sum();
    let expect = if case.days.len() == 1 {
        Expect::Served
    } else if windows >= 40 {
        TOO_EXPENSIVE
    } else {
        Expect::Either
    };
    Probe::graphql(&query, json!({})).expect(expect)
}

#[test]
fn aliases_beyond_what_one_request_may_cost_are_too_expensive() {
    hostile_test(async {
        let app = Arc::new(spawn_app().await);
        fuzz(&app, "aliases", 150, aliases, aliases_probe).await;
    });
}

// ---------------------------------------------------------------------------
// Bodies: not JSON, not an object, batches, empty, content types, size.

/// Bytes, shown as text in a failing case.
#[derive(Clone)]
struct Bytes<B>(B);

impl<B: AsRef<[u8]>> Debug for Bytes<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.0.as_ref()))
    }
}

#[derive(Debug, Clone)]
enum Payload {
    Random(Bytes<Vec<u8>>),
    /// A notable malformed body, and whether it is refused.
    Notable(Bytes<&'static [u8]>, bool),
    /// A JSON value that is not an object.
    NotAnObject(Value),
    /// A JSON array of this many requests.
    Batch(usize),
    /// A request whose variable nests this deep.
    DeepVariables(usize),
    /// A small valid request padded to the body limit plus this (negative: under).
    Sized(i64),
}

#[derive(Debug, Clone)]
struct Body {
    payload: Payload,
    content_type: Option<&'static str>,
    chunked: bool,
}

const NOTABLE_BODIES: &[(&[u8], bool)] = &[
    (b"", true),
    (b"{}", true),
    (b"null", true),
    (b"[]", true),
    (b"[{}]", true),
    // serde reads a struct from a sequence too: this is not a request object.
    (br#"["{ __typename }"]"#, true),
    (br#""{ __typename }""#, true),
    (br#"{"query": null}"#, true),
    (br#"{"query": 5}"#, true),
    (br#"{"query": ["{ __typename }"]}"#, true),
    (br#"{"query": {}}"#, true),
    (br#"{"query": ""}"#, true),
    (br#"{"query": "{"}"#, true),
    (br#"{"query": "}"}"#, true),
    (br#"{"query": "{ __typename }", "variables": [1]}"#, true),
    (br#"{"query": "{ __typename }", "variables": "x"}"#, true),
    (br#"{"query": "{ __typename }", "operationName": 5}"#, true),
    (
        br#"{"query": "{ __typename }", "operationName": "Nope"}"#,
        true,
    ),
    (br#"{"query": "{ __typename }"} trailing"#, true),
    (b"{\"query\": \"{ __typename }\"}\0", true),
    (br#"{"query": "{ __typename }""#, true),
    (br#"{"query": "\ud800"}"#, true),
    (b"{\"query\": \"\xff\xfe\"}", true),
    (
        br#"{"query": "{ __typename }", "variables": {"a": 1e309}}"#,
        true,
    ),
    (b"<request><query>{ __typename }</query></request>", true),
    (b"query=%7B__typename%7D", true),
    // A GraphQL document, as `application/graphql` would send it.
    (b"{ __typename }", false),
    (b"\0\0\0\0", true),
    (br#"{"query": "{ __typename }", "variables": null}"#, false),
    (b"\xef\xbb\xbf{\"query\": \"{ __typename }\"}", false),
    (
        br#"{"query": "{ __typename }", "query": "{ __typename }"}"#,
        false,
    ),
    (br#"{"query": "{ __typename }", "extensions": 5}"#, false),
    (
        br#"{"query": "{ __typename }", "variables": {"x": "\u0000"}}"#,
        false,
    ),
];

const CONTENT_TYPES: &[Option<&str>] = &[
    Some("application/json"),
    Some("application/json; charset=utf-8"),
    Some("application/graphql-response+json"),
    None,
    Some("text/plain"),
    Some("application/x-www-form-urlencoded"),
    Some("multipart/form-data; boundary=x"),
    Some("application/graphql"),
    Some("application/json; charset=utf-16"),
    Some("*/*"),
    Some("application/xml"),
    Some("nonsense"),
];

fn bodies() -> impl Strategy<Value = Body> {
    let json_scalar = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        vec(any::<i32>(), 0..5).prop_map(Value::from),
    ];
    let payload = prop_oneof![
        3 => vec(any::<u8>(), 0..200).prop_map(|bytes| Payload::Random(Bytes(bytes))),
        4 => select(NOTABLE_BODIES).prop_map(|(body, refused)| Payload::Notable(Bytes(body), refused)),
        2 => json_scalar.prop_map(Payload::NotAnObject),
        1 => prop_oneof![1usize..10, 10usize..2000].prop_map(Payload::Batch),
        1 => prop_oneof![1usize..200, 200usize..20_000].prop_map(Payload::DeepVariables),
        2 => prop_oneof![1i64..=64, -64i64..=0].prop_map(Payload::Sized),
    ];
    let content_type = prop_oneof![
        3 => Just(Some("application/json")),
        2 => select(CONTENT_TYPES),
    ];
    let chunked = proptest::bool::weighted(0.25);
    (payload, content_type, chunked).prop_map(|(payload, content_type, chunked)| Body {
        payload,
        content_type,
        chunked,
    })
}

/// A `{ __typename }` request of exactly `len` bytes, padded with a comment.
fn sized_request(len: usize) -> Vec<u8> {
    let bare = json!({ "query": "{ __typename } #" }).to_string();
    let pad = len.saturating_sub(bare.len());
    json!({ "query": format!("{{ __typename }} #{}", "x".repeat(pad)) })
        .to_string()
        .into_bytes()
}

fn body_probe(case: &Body) -> Probe {
    let is_json = matches!(
        case.content_type,
        Some("application/json" | "application/json; charset=utf-8")
    );
    let (body, expect, status) = match &case.payload {
        Payload::Random(Bytes(bytes)) => {
            let request = serde_json::from_slice::<Value>(bytes)
                .is_ok_and(|v| v.get("query").is_some_and(Value::is_string));
            let expect = if request { Expect::Either } else { BAD_INPUT };
            (bytes.clone(), expect, None)
        }
        Payload::Notable(Bytes(bytes), refused) => {
            let expect = if *refused { BAD_INPUT } else { Expect::Either };
            (bytes.to_vec(), expect, None)
        }
        Payload::NotAnObject(value) => (value.to_string().into_bytes(), BAD_INPUT, Some(400..=499)),
        Payload::Batch(n) => {
            let one = json!({ "query": format!(r#"{{ userVisits(activityId: "{EXAMPLE_ACTIVITY}") {{ totalCount }} }}"#) });
            let batch = Value::Array(vec![one; *n]);
            (batch.to_string().into_bytes(), BAD_INPUT, Some(400..=499))
        }
        Payload::DeepVariables(depth) => {
            let nested = nested("[", "\"x\"", "]", *depth);
            let body = format!(
                r#"{{"query": "query($r: TimeRange) {{ userVisits(activityId: \"{EXAMPLE_ACTIVITY}\", range: $r) {{ totalCount }} }}", "variables": {{"r": {nested}}}}}"#
            );
            (body.into_bytes(), BAD_INPUT, None)
        }
        Payload::Sized(delta) => {
            let len = (LIMITS.max_body_bytes as i64 + delta) as usize;
            let body = sized_request(len);
            assert_eq!(body.len(), len, "a padded request of {len} bytes");
            match (*delta > 0, is_json) {
                // A body too large is 413 (docs/api.md).
                (true, true) => (body, BAD_INPUT, Some(413..=413)),
                (true, false) => (body, BAD_INPUT, Some(400..=499)),
                (false, true) => (body, Expect::Served, None),
                (false, false) => (body, Expect::Either, None),
            }
        }
    };
    let mut probe = Probe::json(body).expect(expect);
    probe.content_type = case.content_type;
    probe.chunked = case.chunked;
    probe.status = status;
    probe
}

#[test]
fn malformed_bodies_get_a_graphql_error_and_cost_nothing() {
    hostile_test(async {
        let app = Arc::new(spawn_app().await);
        fuzz(&app, "bodies", 800, bodies, |case, _| body_probe(case)).await;
    });
}
