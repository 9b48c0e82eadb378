//! The live visits bench: many concurrent `userVisitAdded`
//! subscribers on one activity, through real WebSockets.
//!
//! Starts the simulated platform in this process, the release gateway
//! (`--gateway PATH`, its `serve` command) in front of it as a child process,
//! then:
//!
//! 1. one probe subscriber, so the activity's poller runs; the gateway's RSS
//!    is read once it settles;
//! 2. `--subscribers N` more, each on a socket of its own (graphql-ws's
//!    one-socket-per-client shape), until the gateway counts them all;
//! 3. idle: the gateway's RSS again (the difference over N is the memory per
//!    idle subscriber), and the platform requests over `--idle-polls` poll
//!    intervals with nothing new (one poller: at most 1 a poll);
//! 4. `--rounds` times: one visit added on the platform; the poll that reads
//!    it is seen as the platform's request count moving (checked every
//!    0.5 ms), and each subscriber's delay is from then to its `next` frame.
//!    The CPU time of the gateway and of this process (the subscribers and
//!    the simulated platform) per visit are printed too: when this process
//!    needs about as long as the delay, the client, not the gateway, set it.
//!
//! Prints one `key=value` line; `bench/run.sh` (workload `live`) runs it.
//! The process needs N + a few hundred file descriptors, and so does the
//! gateway: raise `ulimit -n` first.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::Utc;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use visits_gateway::demo::{EXAMPLE_ACTIVITY, SimPlatform};
use visits_gateway::secret::Secret;

#[derive(Parser)]
#[command(about = "Many live subscribers on one activity: platform cost, memory, delivery delay")]
struct Cli {
    /// The release gateway binary.
    #[arg(long)]
    gateway: PathBuf,
    /// Subscribers (each on its own socket), besides the probe.
    #[arg(long, default_value_t = 10_000)]
    subscribers: usize,
    /// Visits added one by one, each timed to every subscriber.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// LIVE_POLL_SECONDS of the gateway.
    #[arg(long, default_value_t = 1)]
    poll_seconds: u64,
    /// Poll intervals over which idle platform requests are counted.
    #[arg(long, default_value_t = 10)]
    idle_polls: u64,
    /// Sockets opened at once while connecting.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// Pin the gateway to this CPU (taskset), if given.
    #[arg(long)]
    gateway_cpu: Option<usize>,
    /// The gateway's log.
    #[arg(long, default_value = "/dev/null")]
    gateway_log: PathBuf,
}

const QUERY: &str = "subscription($id: ID!) { userVisitAdded(activityId: $id) { userId anonymousId nickname visitAt city device } }";

#[tokio::main]
async fn main() -> Result<(), String> {
    let cli = Cli::parse();
    let token = "live-bench-token";
    let sim = SimPlatform::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Secret::new(token),
        Utc::now(),
    )
    .await
    .map_err(|e| format!("the simulated platform: {e}"))?;

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        l.local_addr().map_err(|e| e.to_string())?.port()
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let log = std::fs::File::create(&cli.gateway_log).map_err(|e| e.to_string())?;
    let limit = (cli.subscribers + 100).to_string();
    let mut command = match cli.gateway_cpu {
        Some(cpu) => {
            let mut c = tokio::process::Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(&cli.gateway);
            c
        }
        None => tokio::process::Command::new(&cli.gateway),
    };
    let mut gateway = command
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LISTEN_ADDR", addr.to_string())
        .env("UPSTREAM_BASE_URL", sim.base_url())
        .env("UPSTREAM_TOKEN", token)
        .env("ALLOW_UNAUTHENTICATED", "true")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        // Every subscriber comes from 127.0.0.1: one client to the limits.
        .env("CLIENT_RATE_PER_SECOND", "100000")
        .env("CLIENT_BURST", "100000")
        .env("LIVE_MAX_SUBSCRIPTIONS", &limit)
        .env("LIVE_MAX_SUBSCRIPTIONS_PER_CLIENT", &limit)
        .env("LIVE_MAX_CONNECTIONS_PER_CLIENT", &limit)
        .env("LIVE_POLL_SECONDS", cli.poll_seconds.to_string())
        .env("SHUTDOWN_DRAIN_SECONDS", "0")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", cli.gateway.display()))?;
    let pid = gateway.id().ok_or("the gateway exited at once")?;
    let result = run(&cli, &sim, addr, pid).await;
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(10), gateway.wait()).await;
    let line = result?;
    println!("{line}");
    Ok(())
}

async fn run(cli: &Cli, sim: &SimPlatform, addr: SocketAddr, pid: u32) -> Result<String, String> {
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    let mut ready = false;
    for _ in 0..200 {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !ready {
        return Err("the gateway did not become ready (see --gateway-log)".into());
    }
    let poll = Duration::from_secs(cli.poll_seconds);
    let (events, mut received) = mpsc::unbounded_channel::<Instant>();
    let failures = Arc::new(AtomicUsize::new(0));
    let url = format!("ws://{addr}/graphql");

    // The probe: the poller starts, and the gateway's memory settles.
    subscriber(&url, events.clone(), failures.clone()).await?;
    wait_for_subscriptions(&http, &base, 1).await?;
    tokio::time::sleep(poll * 3).await;
    let rss_before = rss_kib(pid)?;

    let started = Instant::now();
    let connected = futures::stream::iter(0..cli.subscribers)
        .map(|_| subscriber(&url, events.clone(), failures.clone()))
        .buffer_unordered(cli.connect_concurrency)
        .filter(|r| std::future::ready(r.is_err()))
        .collect::<Vec<_>>()
        .await;
    if let Some(Err(e)) = connected.first() {
        return Err(format!(
            "{} of {} subscribers failed to connect, e.g.: {e}",
            connected.len(),
            cli.subscribers
        ));
    }
    wait_for_subscriptions(&http, &base, cli.subscribers + 1).await?;
    let connect_seconds = started.elapsed().as_secs_f64();

    // Idle: memory, and the platform's requests with nothing new.
    tokio::time::sleep(poll * 3).await;
    let rss_idle = rss_kib(pid)?;
    let before = sim.request_count();
    let idle_cpu_before = cpu_ms(pid)?;
    tokio::time::sleep(poll * cli.idle_polls as u32).await;
    let idle_requests = sim.request_count() - before;
    // What idle subscribers cost the gateway: pings, pongs and the polls.
    let idle_cpu_per_second =
        (cpu_ms(pid)? - idle_cpu_before) as f64 / (poll * cli.idle_polls as u32).as_secs_f64();
    while received.try_recv().is_ok() {}

    // Delivery: one visit at a time.
    let everyone = cli.subscribers + 1;
    let mut delays_us = Vec::with_capacity(everyone * cli.rounds);
    let mut last_us = Vec::with_capacity(cli.rounds);
    let cpu_before = cpu_ms(pid)?;
    let client_cpu_before = cpu_ms(std::process::id())?;
    for round in 0..cli.rounds {
        sim.add_visit(EXAMPLE_ACTIVITY, Utc::now());
        let count = sim.request_count();
        let deadline = Instant::now() + poll * 3;
        while sim.request_count() == count {
            if Instant::now() > deadline {
                return Err(format!("round {round}: no poll within 3 poll intervals"));
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let polled = Instant::now();
        let mut round_delays = Vec::with_capacity(everyone);
        while round_delays.len() < everyone {
            match tokio::time::timeout(poll * 5, received.recv()).await {
                Ok(Some(at)) => {
                    round_delays.push(at.saturating_duration_since(polled).as_micros() as u64)
                }
                _ => {
                    return Err(format!(
                        "round {round}: {} of {everyone} subscribers got the visit ({} sockets failed)",
                        round_delays.len(),
                        failures.load(Ordering::Relaxed)
                    ));
                }
            }
        }
        last_us.push(*round_delays.iter().max().unwrap_or(&0));
        delays_us.extend(round_delays);
    }
    // Includes the idle polls between the rounds (a few ms each).
    let cpu_per_round = (cpu_ms(pid)? - cpu_before) as f64 / cli.rounds as f64;
    // This process's (the subscribers' reads, and the simulated platform):
    // near a whole core per round means the client, not the gateway, set
    // the last subscriber's delay.
    let client_cpu_per_round =
        (cpu_ms(std::process::id())? - client_cpu_before) as f64 / cli.rounds as f64;
    let failed = failures.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(format!("{failed} subscriber sockets failed"));
    }
    delays_us.sort_unstable();
    last_us.sort_unstable();
    let pct = |p: f64| delays_us[((delays_us.len() - 1) as f64 * p).round() as usize];
    let rss_per_subscriber = rss_idle.saturating_sub(rss_before) as f64 / cli.subscribers as f64;
    Ok(format!(
        "live: subscribers={} poll_seconds={} connect_seconds={connect_seconds:.1} \
         idle_platform_requests={idle_requests} idle_polls={} \
         idle_platform_requests_per_poll={:.2} rss_before_kib={rss_before} \
         rss_idle_kib={rss_idle} rss_per_subscriber_kib={rss_per_subscriber:.2} \
         gateway_idle_cpu_ms_per_s={idle_cpu_per_second:.1} \
         rounds={} delay_p50_ms={:.1} delay_p99_ms={:.1} last_subscriber_median_ms={:.1} \
         last_subscriber_max_ms={:.1} gateway_cpu_ms_per_visit={cpu_per_round:.0} \
         client_cpu_ms_per_visit={client_cpu_per_round:.0}",
        cli.subscribers,
        cli.poll_seconds,
        cli.idle_polls,
        idle_requests as f64 / cli.idle_polls as f64,
        cli.rounds,
        pct(0.50) as f64 / 1000.0,
        pct(0.99) as f64 / 1000.0,
        last_us[last_us.len() / 2] as f64 / 1000.0,
        last_us[last_us.len() - 1] as f64 / 1000.0,
    ))
}

/// Connects, authenticates (anonymously), subscribes, then reads in a task
/// of its own: the arrival time of every visit goes to `events`; pings are
/// answered.
async fn subscriber(
    url: &str,
    events: mpsc::UnboundedSender<Instant>,
    failures: Arc<AtomicUsize>,
) -> Result<(), String> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().map_err(|_| "header")?,
    );
    // A small read buffer, as the gateway's sockets have: tungstenite's
    // default (128 KiB) is zeroed again for every read, which cost this
    // client more than the gateway spent on a delivery and so delayed the
    // arrival times it records.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), false)
        .await
        .map_err(|e| e.to_string())?;
    let text = |v: Value| Message::Text(v.to_string().into());
    ws.send(text(json!({"type": "connection_init", "payload": {}})))
        .await
        .map_err(|e| e.to_string())?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.contains("connection_ack") => {}
        other => return Err(format!("no connection_ack: {other:?}")),
    }
    ws.send(text(json!({"id": "1", "type": "subscribe", "payload": {
        "query": QUERY, "variables": {"id": EXAMPLE_ACTIVITY.to_string()}}})))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        while let Some(message) = ws.next().await {
            let at = Instant::now();
            let Ok(Message::Text(t)) = message else {
                if message.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            };
            if t.contains(r#""type":"ping""#) {
                if ws.send(text(json!({"type": "pong"}))).await.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            } else if t.contains(r#""userVisitAdded""#) {
                let _ = events.send(at);
            } else if !t.contains(r#""type":"complete""#) {
                // `complete` comes when the gateway shuts down at the end.
                eprintln!("unexpected message: {t}");
                failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    Ok(())
}

async fn wait_for_subscriptions(
    http: &reqwest::Client,
    base: &str,
    n: usize,
) -> Result<(), String> {
    let mut seen = 0.0;
    for _ in 0..600 {
        let body = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        seen = body
            .lines()
            .find_map(|l| l.strip_prefix("visits_gateway_live_subscriptions "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if seen as usize == n {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("the gateway holds {seen} subscriptions, not {n}"))
}

/// The gateway's resident memory now.
fn rss_kib(pid: u32) -> Result<u64, String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS".to_owned())
}

/// The gateway's CPU time so far (user and system), in milliseconds.
fn cpu_ms(pid: u32) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // Fields after the command's closing parenthesis; utime and stime are
    // the 14th and 15th of the line, in clock ticks (100 a second on Linux).
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, r)| r)
        .ok_or("bad /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((ticks(11) + ticks(12)) * 10)
}
