//! The soak run: in one process, the simulated platform, the gateway
//! in front of it, and ~32 client tasks asking mixed queries (three activities
//! and an unknown one, ranges of 1 to 60 days, `first`/`last`, paging with
//! cursors both ways) while a controller switches platform faults on and off
//! in a 60-second cycle: 20 s clean, 10 s of 500s, 10 s of 429 bursts
//! (Retry-After 1), 10 s of 300 ms latency, 5 s of hangs, 5 s of malformed JSON.
//!
//! Every 10 s it prints a line (requests served, errors by code, platform
//! requests per client request, RSS); at the end a summary with peak RSS and
//! the RSS at each minute. RSS is the whole process: the gateway, the
//! simulated platform (which keeps every request it saw) and the load
//! generator.
//!
//! Exits non-zero if any answer is not valid GraphQL JSON, carries a code that
//! cannot happen here (INTERNAL above all), breaks paging (a repeated cursor,
//! visits out of order), or never comes.
//!
//!   cargo run --release --example soak -- --seconds 300

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::Parser;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use visits_gateway::app::App;
use visits_gateway::config::Settings;
use visits_gateway::demo::{
    EXAMPLE_ACTIVITY, FEATURE_OFF_ACTIVITY, Fault, SMALL_ACTIVITY, SimPlatform,
};
use visits_gateway::secret::{Secret, TokenSource};

#[derive(Parser)]
#[command(about = "Soak the gateway against the simulated platform with faults")]
struct Args {
    /// How long to run.
    #[arg(long, default_value_t = 300)]
    seconds: u64,
    /// Concurrent client tasks.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Each client's pause between two queries, at most, in milliseconds
    /// (uniform from 0).
    #[arg(long, default_value_t = 20)]
    think_ms: u64,
    /// Seconds between two report lines.
    #[arg(long, default_value_t = 10)]
    report_every: u64,
    /// Seed of the clients' choices.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// The platform request budget (UPSTREAM_RATE_PER_SECOND; burst twice
    /// that). The default does not throttle this load outside fault phases;
    /// the real platform allows far less.
    #[arg(long, default_value_t = 200.0)]
    upstream_rate: f64,
}

const UNKNOWN_ACTIVITY: u64 = 99_999_999;

const QUERY: &str = "query Soak($id: ID!, $range: TimeRange, $first: Int, $after: String, $last: Int, $before: String) {
  userVisits(activityId: $id, range: $range, first: $first, after: $after, last: $last, before: $before) {
    totalCount range { from to } pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    edges { cursor node { userId isAnonymous anonymousId nickname city visitAt durationMinutes } }
  }
}";
const HOT_QUERY: &str = "query Hot($id: ID!) { userVisits(activityId: $id, first: 20) { totalCount range { from to } pageInfo { hasNextPage hasPreviousPage startCursor endCursor } edges { cursor node { nickname visitAt } } } }";

// ---------------------------------------------------------------- phases

#[derive(Clone)]
enum Injection {
    None,
    /// Every platform request meets this fault.
    Continuous(Fault),
    /// `count` of these faults every `every`.
    Bursts(Fault, usize, Duration),
}

fn cycle() -> Vec<(&'static str, Duration, Injection)> {
    let s = Duration::from_secs;
    vec![
        ("clean", s(20), Injection::None),
        (
            "500s",
            s(10),
            Injection::Continuous(Fault::Status(
                500,
                r#"{"name":"InternalServerError","message":"服务器内部错误","status":500}"#.into(),
            )),
        ),
        (
            "429 bursts",
            s(10),
            Injection::Bursts(Fault::TooManyRequests(1), 5, s(2)),
        ),
        (
            "latency 300ms",
            s(10),
            Injection::Continuous(Fault::Delay(Duration::from_millis(300))),
        ),
        ("hangs", s(5), Injection::Continuous(Fault::Hang)),
        ("malformed", s(5), Injection::Continuous(Fault::Malformed)),
    ]
}

/// Switches faults on and off, phase after phase, until `stop`.
async fn controller(sim: SimPlatform, ctx: Arc<Ctx>) {
    let tick = Duration::from_millis(20);
    loop {
        for (name, length, injection) in cycle() {
            *lock(&ctx.phase) = name;
            let end = Instant::now() + length;
            let mut next_burst = Instant::now();
            while Instant::now() < end {
                if ctx.stop.load(Ordering::Relaxed) {
                    sim.clear_faults();
                    return;
                }
                match &injection {
                    Injection::None => {}
                    // The platform's queue only grows: refill it to a few
                    // faults each tick, so nearly every request meets one.
                    Injection::Continuous(fault) => {
                        sim.clear_faults();
                        for _ in 0..4 {
                            sim.push_fault(fault.clone());
                        }
                    }
                    Injection::Bursts(fault, count, every) => {
                        if Instant::now() >= next_burst {
                            for _ in 0..*count {
                                sim.push_fault(fault.clone());
                            }
                            next_burst += *every;
                        }
                    }
                }
                tokio::time::sleep(tick).await;
            }
            sim.clear_faults();
        }
    }
}

// ---------------------------------------------------------------- outcomes

#[derive(Default, Clone)]
struct Counters {
    served: u64,
    ok: u64,
    stale: u64,
    codes: BTreeMap<String, u64>,
    statuses: BTreeMap<u16, u64>,
    failures: u64,
    latencies_us: Vec<u32>,
}

impl Counters {
    fn merge_codes(&self) -> String {
        if self.codes.is_empty() {
            return "none".into();
        }
        self.codes
            .iter()
            .map(|(c, n)| format!("{c}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn percentile(&mut self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        self.latencies_us.sort_unstable();
        let i = ((p / 100.0) * self.latencies_us.len() as f64).ceil() as usize;
        f64::from(self.latencies_us[i.clamp(1, self.latencies_us.len()) - 1]) / 1000.0
    }
}

struct Ctx {
    url: String,
    http: reqwest::Client,
    stop: AtomicBool,
    phase: Mutex<&'static str>,
    interval: Mutex<Counters>,
    total: Mutex<Counters>,
    by_phase: Mutex<BTreeMap<&'static str, Counters>>,
    /// What went wrong, for the summary (the first few of each kind).
    failures: Mutex<BTreeMap<&'static str, (u64, Vec<String>)>>,
    today: DateTime<Utc>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Real,
    FeatureOff,
    Unknown,
}

fn kind_of(activity: u64) -> Kind {
    match activity {
        FEATURE_OFF_ACTIVITY => Kind::FeatureOff,
        UNKNOWN_ACTIVITY => Kind::Unknown,
        _ => Kind::Real,
    }
}

impl Ctx {
    fn fail(&self, what: &'static str, detail: String) {
        let mut f = lock(&self.failures);
        let entry = f.entry(what).or_default();
        entry.0 += 1;
        if entry.1.len() < 3 {
            entry.1.push(detail);
        }
    }

    /// Sends one query and judges the answer; returns the connection when the
    /// answer has one.
    async fn ask(&self, activity: u64, variables: Value, query: &str, n: u64) -> Option<Value> {
        let body = json!({ "query": query, "variables": variables });
        let started = Instant::now();
        // Outcomes count against the phase the request started in.
        let phase = *lock(&self.phase);
        let sent = self.http.post(&self.url).json(&body).send().await;
        let (status, text) = match sent {
            Ok(r) => {
                let status = r.status().as_u16();
                match r.text().await {
                    Ok(t) => (status, t),
                    Err(e) => {
                        self.record(phase, started, None, Vec::new(), false, true);
                        self.fail("no answer", format!("{e} for {body}"));
                        return None;
                    }
                }
            }
            Err(e) => {
                self.record(phase, started, None, Vec::new(), false, true);
                self.fail("no answer", format!("{e} for {body}"));
                return None;
            }
        };
        let mut failed = false;
        let mut fail = |what: &'static str, why: String| {
            failed = true;
            self.fail(
                what,
                format!("{why}; HTTP {status}; {text:.400}; for {body}"),
            );
        };
        let Ok(value) = serde_json::from_str::<Value>(&text) else {
            fail("not JSON", "the body is not JSON".into());
            self.record(phase, started, Some(status), Vec::new(), false, true);
            return None;
        };
        let mut codes = Vec::new();
        let errors = match value.get("errors") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(_) => {
                fail("not GraphQL", "`errors` is not a list".into());
                Vec::new()
            }
        };
        for e in &errors {
            let code = e["extensions"]["code"].as_str();
            if e["message"].as_str().is_none() || code.is_none() {
                fail("not GraphQL", "an error without a message or a code".into());
            }
            let code = code.unwrap_or("(none)").to_owned();
            let expected = match code.as_str() {
                "UPSTREAM_UNAVAILABLE"
                | "UPSTREAM_TIMEOUT"
                | "UPSTREAM_BAD_RESPONSE"
                | "UPSTREAM_RATE_LIMITED" => true,
                "ACTIVITY_NOT_FOUND" => kind_of(activity) == Kind::Unknown,
                "UPSTREAM_FEATURE_DISABLED" => kind_of(activity) == Kind::FeatureOff,
                _ => false,
            };
            if !expected {
                fail(
                    "unexpected code",
                    format!("code {code} for activity {activity}"),
                );
            }
            codes.push(code);
        }
        if !matches!(status, 200 | 504) {
            fail("unexpected status", format!("HTTP {status}"));
        }
        let stale = value["extensions"]["stale"].is_object();
        let connection = value["data"]["userVisits"].clone();
        if errors.is_empty() {
            let edges = connection["edges"].as_array();
            if kind_of(activity) != Kind::Real {
                fail(
                    "not GraphQL",
                    format!("visits of activity {activity}, which has none"),
                );
            } else if connection["totalCount"].as_u64().is_none()
                || edges.is_none_or(|e| e.len() as u64 > n)
                || connection["pageInfo"]["hasNextPage"].as_bool().is_none()
            {
                fail(
                    "not GraphQL",
                    "no totalCount, pageInfo or edges, or too many edges".into(),
                );
            }
        } else if !connection.is_null() {
            fail("not GraphQL", "errors and a connection at once".into());
        }
        self.record(phase, started, Some(status), codes, stale, failed);
        (errors.is_empty() && !failed).then_some(connection)
    }

    fn record(
        &self,
        phase: &'static str,
        started: Instant,
        status: Option<u16>,
        codes: Vec<String>,
        stale: bool,
        failed: bool,
    ) {
        let us = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        let apply = |c: &mut Counters, keep_latency: bool| {
            c.served += 1;
            if codes.is_empty() && !failed {
                c.ok += 1;
            }
            if stale {
                c.stale += 1;
            }
            for code in &codes {
                *c.codes.entry(code.clone()).or_default() += 1;
            }
            *c.statuses.entry(status.unwrap_or(0)).or_default() += 1;
            if failed {
                c.failures += 1;
            }
            // Latencies per report interval only, so memory stays flat.
            if keep_latency {
                c.latencies_us.push(us);
            }
        };
        apply(&mut lock(&self.interval), true);
        apply(&mut lock(&self.total), false);
        apply(lock(&self.by_phase).entry(phase).or_default(), false);
    }
}

// ---------------------------------------------------------------- clients

fn pick_activity(rng: &mut fastrand::Rng) -> u64 {
    match rng.u8(0..100) {
        0..62 => EXAMPLE_ACTIVITY,
        62..96 => SMALL_ACTIVITY,
        96..98 => FEATURE_OFF_ACTIVITY,
        _ => UNKNOWN_ACTIVITY,
    }
}

/// A range of 1..60 days ending today or earlier; open (pinned to now) or
/// explicit. Day-aligned, as a date picker would send.
fn pick_range(rng: &mut fastrand::Rng, today: DateTime<Utc>) -> Value {
    let days = if rng.bool() {
        rng.i64(1..=7)
    } else {
        rng.i64(8..=60)
    };
    let from = today - chrono::Duration::days(days);
    if rng.u8(0..10) < 6 {
        json!({ "from": visits_gateway::time::format(from) })
    } else {
        let to = from + chrono::Duration::days(rng.i64(1..=days));
        json!({ "from": visits_gateway::time::format(from), "to": visits_gateway::time::format(to) })
    }
}

fn visit_times(connection: &Value) -> Vec<String> {
    connection["edges"]
        .as_array()
        .map(|edges| {
            edges
                .iter()
                .map(|e| e["node"]["visitAt"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn cursors(connection: &Value) -> Vec<String> {
    connection["edges"]
        .as_array()
        .map(|edges| {
            edges
                .iter()
                .map(|e| e["cursor"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn client(ctx: Arc<Ctx>, seed: u64, think_ms: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    while !ctx.stop.load(Ordering::Relaxed) {
        match rng.u8(0..100) {
            // The frontends' favourite: the default range of the big activity.
            0..20 => {
                ctx.ask(
                    EXAMPLE_ACTIVITY,
                    json!({ "id": EXAMPLE_ACTIVITY.to_string() }),
                    HOT_QUERY,
                    20,
                )
                .await;
            }
            // One page from either end.
            20..60 => {
                let activity = pick_activity(&mut rng);
                let n = [5u64, 10, 20, 50, 100][rng.usize(..5)];
                let mut v =
                    json!({ "id": activity.to_string(), "range": pick_range(&mut rng, ctx.today) });
                v[if rng.bool() { "first" } else { "last" }] = json!(n);
                ctx.ask(activity, v, QUERY, n).await;
            }
            // Paging forward, then backward, with cursors.
            _ => {
                let forward = rng.u8(0..4) != 0;
                let activity = pick_activity(&mut rng);
                let n = [10u64, 25, 50, 100][rng.usize(..4)];
                let pages = rng.usize(2..=6);
                page_through(&ctx, activity, n, pages, forward, &mut rng).await;
            }
        }
        if think_ms > 0 {
            tokio::time::sleep(Duration::from_millis(rng.u64(0..=think_ms))).await;
        }
    }
}

async fn page_through(
    ctx: &Ctx,
    activity: u64,
    n: u64,
    pages: usize,
    forward: bool,
    rng: &mut fastrand::Rng,
) {
    let (size_arg, cursor_arg) = if forward {
        ("first", "after")
    } else {
        ("last", "before")
    };
    let mut variables = json!({ "id": activity.to_string(), "range": pick_range(rng, ctx.today) });
    variables[size_arg] = json!(n);
    let mut seen_cursors = HashSet::new();
    let mut previous: Vec<String> = Vec::new();
    let mut total = None;
    for _ in 0..pages {
        let Some(connection) = ctx.ask(activity, variables.clone(), QUERY, n).await else {
            return;
        };
        let times = visit_times(&connection);
        // Oldest first within a page; pages follow each other in that order.
        let ordered = times.windows(2).all(|w| w[0] <= w[1])
            && match (
                previous.last(),
                times.first(),
                previous.first(),
                times.last(),
            ) {
                (Some(p), Some(t), _, _) if forward => p <= t,
                (_, _, Some(p), Some(t)) if !forward => t <= p,
                _ => true,
            };
        if !ordered {
            ctx.fail(
                "paging broken",
                format!("visits out of order after {variables}"),
            );
        }
        for c in cursors(&connection) {
            if !seen_cursors.insert(c.clone()) {
                ctx.fail(
                    "paging broken",
                    format!("cursor {c} served twice in one walk"),
                );
            }
        }
        let count = connection["totalCount"].as_u64();
        if total.is_some_and(|t| Some(t) != count) {
            ctx.fail(
                "paging broken",
                format!("totalCount moved from {total:?} to {count:?} inside a pinned range"),
            );
        }
        total = count;
        previous = times;
        let (more, cursor) = if forward {
            (
                &connection["pageInfo"]["hasNextPage"],
                &connection["pageInfo"]["endCursor"],
            )
        } else {
            (
                &connection["pageInfo"]["hasPreviousPage"],
                &connection["pageInfo"]["startCursor"],
            )
        };
        let (Some(true), Some(cursor)) = (more.as_bool(), cursor.as_str()) else {
            return;
        };
        // Next page: the cursor carries the range.
        variables = json!({ "id": activity.to_string(), size_arg: n, cursor_arg: cursor });
    }
}

// ---------------------------------------------------------------- memory

/// The sum of a metric's samples in the gateway's `/metrics` text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn gateway_metrics(ctx: &Ctx) -> String {
    let url = ctx.url.replace("/graphql", "/metrics");
    match ctx.http.get(url).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

// ---------------------------------------------------------------- main

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let failed = runtime.block_on(run(args));
    // Hung platform requests may still be parked; do not wait for them.
    runtime.shutdown_timeout(Duration::from_millis(100));
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

async fn run(args: Args) -> bool {
    let token = format!("soak-{:016x}", fastrand::u64(..));
    let now = Utc::now();
    let sim = SimPlatform::start(([127, 0, 0, 1], 0).into(), Secret::new(token.as_str()), now)
        .await
        .expect("the simulated platform starts");
    sim.spawn_live_visits(Duration::from_secs(5));

    let mut settings = Settings::defaults();
    settings.upstream.base_url = sim.base_url().parse().expect("sim URL");
    settings.client.allow_unauthenticated = true;
    // All the load comes from one address.
    settings.client.rate_per_second = 100_000;
    settings.client.burst = 100_000;
    // A budget that bites under faults but does not throttle the clean phase.
    settings.upstream.rate_per_second = args.upstream_rate;
    settings.upstream.burst = (args.upstream_rate * 2.0).ceil() as u32;
    settings.upstream.max_concurrency = 16;
    // Hangs must end within a phase.
    settings.upstream.connect_timeout = Duration::from_millis(500);
    settings.upstream.timeout = Duration::from_millis(2000);
    settings.upstream.deadline = Duration::from_millis(5000);
    settings.server.request_timeout = Duration::from_millis(8000);
    settings.server.shutdown_drain = Duration::ZERO;
    if let Err(e) = settings.validate() {
        eprintln!("soak: bad settings: {e}");
        return true;
    }
    let app = App::build(
        &settings,
        TokenSource::fixed(Secret::new(token.as_str())),
        None,
    )
    .expect("the gateway builds");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.serve(listener, async move {
        let _ = stop_rx.await;
    }));

    let today = now
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc();
    let ctx = Arc::new(Ctx {
        url: format!("http://{addr}/graphql"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .pool_max_idle_per_host(args.clients * 2)
            .build()
            .expect("client"),
        stop: AtomicBool::new(false),
        phase: Mutex::new("clean"),
        interval: Mutex::new(Counters::default()),
        total: Mutex::new(Counters::default()),
        by_phase: Mutex::new(BTreeMap::new()),
        failures: Mutex::new(BTreeMap::new()),
        today,
    });

    println!(
        "soak: {} s, {} clients (pause 0..{} ms), gateway {addr}, platform {}; budget {}/s burst {}, upstream timeout {} ms, deadline {} ms",
        args.seconds,
        args.clients,
        args.think_ms,
        sim.base_url(),
        settings.upstream.rate_per_second,
        settings.upstream.burst,
        settings.upstream.timeout.as_millis(),
        settings.upstream.deadline.as_millis()
    );
    println!(
        "fault cycle (60 s): {}",
        cycle()
            .iter()
            .map(|(n, d, _)| format!("{n} {}s", d.as_secs()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("RSS is the whole process: gateway + simulated platform + load generator.");

    let controller = tokio::spawn(controller(sim.clone(), ctx.clone()));
    let clients: Vec<_> = (0..args.clients)
        .map(|i| {
            tokio::spawn(client(
                ctx.clone(),
                args.seed.wrapping_mul(1000) + i as u64,
                args.think_ms,
            ))
        })
        .collect();

    let start = Instant::now();
    let mut rss_by_minute: Vec<(u64, u64)> = vec![(0, status_kib("VmRSS:"))];
    let mut last_platform = sim.request_count();
    let every = Duration::from_secs(args.report_every.max(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        let elapsed = start.elapsed().as_secs_f64();
        let mut c = std::mem::take(&mut *lock(&ctx.interval));
        let platform = sim.request_count();
        let rss = status_kib("VmRSS:");
        let served_total = lock(&ctx.total).served;
        let m = gateway_metrics(&ctx).await;
        let cache = format!(
            "pages {:.0} ({:.1} MiB)",
            metric(&m, "visits_gateway_cache_entries"),
            metric(&m, "visits_gateway_cache_bytes") / 1_048_576.0
        );
        let (p50, p99) = (c.percentile(50.0), c.percentile(99.0));
        println!(
            "t={:>4.0}s phase={:<13} served={:>6} ({:>5.0}/s, total {}) ok={} stale={} p50={:.1}ms p99={:.1}ms errors: {} | platform {} ({:.3}/req) | {cache} | RSS {}{}",
            elapsed,
            *lock(&ctx.phase),
            c.served,
            c.served as f64 / every.as_secs_f64(),
            served_total,
            c.ok,
            c.stale,
            p50,
            p99,
            c.merge_codes(),
            platform - last_platform,
            (platform - last_platform) as f64 / c.served.max(1) as f64,
            mib(rss),
            if c.failures > 0 {
                format!(" | FAILURES {}", c.failures)
            } else {
                String::new()
            }
        );
        last_platform = platform;
        let whole_minutes = (elapsed + 0.5) as u64 / 60;
        if whole_minutes > rss_by_minute.last().map_or(0, |m| m.0) {
            rss_by_minute.push((whole_minutes, rss));
        }
        if elapsed + 0.5 >= args.seconds as f64 {
            break;
        }
    }

    ctx.stop.store(true, Ordering::Relaxed);
    let _ = controller.await;
    let wait_clients = futures::future::join_all(clients);
    if tokio::time::timeout(Duration::from_secs(15), wait_clients)
        .await
        .is_err()
    {
        ctx.fail(
            "no answer",
            "clients still waiting 15 s after the end".into(),
        );
    }
    let final_metrics = gateway_metrics(&ctx).await;
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;

    // ------------------------------------------------------------ summary
    let total = lock(&ctx.total).clone();
    let platform = sim.request_count();
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "\n== soak summary ({elapsed:.0} s, {} clients)",
        args.clients
    );
    println!(
        "requests served: {} ({:.0}/s); answered with data: {} ({:.2}%); stale answers: {}",
        total.served,
        total.served as f64 / elapsed,
        total.ok,
        100.0 * total.ok as f64 / total.served.max(1) as f64,
        total.stale
    );
    println!("errors by code: {}", total.merge_codes());
    println!(
        "HTTP statuses: {}",
        total
            .statuses
            .iter()
            .map(|(s, n)| format!("{s}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "platform requests: {platform} ({:.4} per client request)",
        platform as f64 / total.served.max(1) as f64
    );
    let seen = sim.seen();
    let distinct: HashSet<_> = seen
        .iter()
        .map(|r| (&r.activity, &r.started_at, &r.ended_at, r.page, r.page_size))
        .collect();
    let no_data = seen
        .iter()
        .filter(|r| {
            r.activity == FEATURE_OFF_ACTIVITY.to_string()
                || r.activity == UNKNOWN_ACTIVITY.to_string()
        })
        .count();
    println!(
        "  of which: {} distinct pages (the rest are refreshes, retries, and re-reads after errors); {no_data} for the feature-off and unknown activities (errors are never cached)",
        distinct.len()
    );
    let m = final_metrics;
    println!(
        "gateway metrics: {:.0} retries, {:.0} stale pages served, budget waits {:.0} totalling {:.1} s, page cache {:.0} pages ({:.1} MiB)",
        metric(&m, "visits_gateway_upstream_retries_total"),
        metric(&m, "visits_gateway_cache_stale_served_total"),
        metric(&m, "visits_gateway_upstream_budget_wait_seconds_count"),
        metric(&m, "visits_gateway_upstream_budget_wait_seconds_sum"),
        metric(&m, "visits_gateway_cache_entries"),
        metric(&m, "visits_gateway_cache_bytes") / 1_048_576.0
    );
    println!("by phase (all cycles; a request counts in the phase it started in):");
    for (phase, c) in lock(&ctx.by_phase).iter() {
        println!(
            "  {phase:<13} served={:>7} with data={:>6.2}% stale={:>6} errors: {}",
            c.served,
            100.0 * c.ok as f64 / c.served.max(1) as f64,
            c.stale,
            c.merge_codes()
        );
    }
    println!(
        "peak RSS (VmHWM): {}; RSS at each minute: {}",
        mib(status_kib("VmHWM:")),
        rss_by_minute
            .iter()
            .map(|(m, kib)| format!("{m}m={}", mib(*kib)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let log_bytes: usize = seen
        .iter()
        .map(|r| {
            std::mem::size_of_val(r)
                + r.activity.len()
                + r.started_at.len()
                + r.ended_at.len()
                + r.authorization.as_ref().map_or(0, String::len)
        })
        .sum();
    println!(
        "(RSS covers the gateway, the simulated platform and the load generator. The simulated platform keeps every request it saw: {platform} here, about {} of RSS growing with the run.)",
        mib(log_bytes as u64 / 1024)
    );
    let failures = lock(&ctx.failures).clone();
    if failures.is_empty() {
        println!("result: OK — every answer was GraphQL JSON with an expected code");
        false
    } else {
        println!("result: FAILED");
        for (what, (n, samples)) in &failures {
            println!("  {what}: {n}");
            for s in samples {
                println!("    e.g. {s}");
            }
        }
        true
    }
}
