//! The benchmark's helpers (`bench/run.sh` drives them):
//!
//! - `platform --listen ADDR`: a stand-in platform answering
//!   `GET /api/activity/{id}/stats/user-visits` at once, for any activity and
//!   any Bearer token, from visits generated once at start: exactly 1000 per
//!   7 days (one every 604.8 s) from 2026-06-01 for 120 days, in the
//!   platform's JSON shape (`SimVisit::to_json`). `page`/`pageSize` are
//!   honoured (no cap below 1000). `GET /count` answers how many visit
//!   requests it served.
//! - `reference --listen ADDR --body FILE`: `POST /graphql` answering the
//!   bytes of FILE: the HTTP floor.
//! - `pace --url U --rate R --seconds S --bodies FILE [--authorization A]`:
//!   sends requests at a fixed rate over a few keep-alive connections and
//!   prints p50/p99 latency, measured from each request's scheduled send time
//!   (so a stall counts against every request it delays, like wrk2).
//! - `bodies --out-dir DIR`: writes the bench's request bodies: `hot.json`
//!   (one query) and `mixed.txt` (64 different queries, one per line).
//! - `walk --url U --out FILE`: pages through one 30-day range with several
//!   `first` values via a gateway, checks each walk (no gap, no repeat, all of
//!   `totalCount`), writes every page's request body (interleaved across the
//!   walks), and prints the number of distinct upstream pages the range has.
//! - `check --url U --bodies FILE [--authorization A]`: sends each body once;
//!   fails on any non-200 answer or GraphQL error (also warms the gateway's
//!   caches).
//! - `memory [--pages N] [--page-size S]`: the page cache's memory per visit.
//!   Renders N pages of the stand-in platform's visits as it serves them,
//!   parses them with the gateway's own `page::parse` into cache entries, and
//!   prints the JSON's bytes per visit against the heap the parsed pages hold
//!   (counted by this binary's allocator) and the cache weigher's estimate.
//!
//! `--authorization` is the whole `Authorization` header value, e.g.
//! `Bearer <key>`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, TimeZone, Utc};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use visits_gateway::demo::{SimVisit, envelope};

#[derive(Parser)]
#[command(about = "Stand-in servers and load tools for bench/run.sh")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// The stand-in platform.
    Platform {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// The HTTP floor: POST /graphql answers the bytes of FILE.
    Reference {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        body: PathBuf,
    },
    /// Fixed-rate latency: p50/p99 from each request's scheduled time.
    Pace {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Request bodies, one per line, sent in turn.
        #[arg(long)]
        bodies: PathBuf,
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// The `Authorization` header to send, e.g. `Bearer <key>`.
        #[arg(long)]
        authorization: Option<String>,
    },
    /// Writes hot.json and mixed.txt into DIR.
    Bodies {
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Builds the paging walk's request bodies through a gateway.
    Walk {
        #[arg(long)]
        url: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = WALK_ACTIVITY)]
        activity: String,
        #[arg(long, default_value = "2026-08-01T00:00:00Z")]
        from: String,
        #[arg(long, default_value = "2026-08-31T00:00:00Z")]
        to: String,
        #[arg(long, value_delimiter = ',', default_value = "7,10,20,25,33,50,64,100")]
        firsts: Vec<u64>,
        /// The gateway's UPSTREAM_PAGE_SIZE.
        #[arg(long, default_value_t = visits_gateway::config::PagingSettings::default().upstream_page_size)]
        upstream_page_size: u64,
    },
    /// Sends each body once; fails on a non-200 answer or a GraphQL error.
    Check {
        #[arg(long)]
        url: String,
        #[arg(long)]
        bodies: PathBuf,
        /// The `Authorization` header to send, e.g. `Bearer <key>`.
        #[arg(long)]
        authorization: Option<String>,
    },
    /// The page cache's memory per visit: parsed pages vs. their JSON.
    Memory {
        /// Pages to parse (the stand-in platform holds about 171 of 100).
        #[arg(long, default_value_t = 170)]
        pages: usize,
        /// Visits per page: the gateway's UPSTREAM_PAGE_SIZE.
        #[arg(long, default_value_t = visits_gateway::config::Settings::defaults().paging.upstream_page_size)]
        page_size: u64,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Mode::Memory { pages, page_size } = cli.mode {
        // No runtime: nothing else allocates while the pages are counted.
        return exit(memory(pages, page_size));
    }
    let runtime = match cli.mode {
        // The pacer spins on its own core: one thread is enough and the most
        // precise.
        Mode::Pace { .. } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Runtime::new(),
    }
    .expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.mode {
            Mode::Platform { listen } => platform(listen).await,
            Mode::Reference { listen, body } => reference(listen, body).await,
            Mode::Pace {
                url,
                rate,
                seconds,
                bodies,
                connections,
                authorization,
            } => pace(url, rate, seconds, bodies, connections, authorization).await,
            Mode::Bodies { out_dir } => write_bodies(out_dir),
            Mode::Walk {
                url,
                out,
                activity,
                from,
                to,
                firsts,
                upstream_page_size,
            } => walk(url, out, activity, from, to, firsts, upstream_page_size).await,
            Mode::Check {
                url,
                bodies,
                authorization,
            } => check(url, bodies, authorization).await,
            Mode::Memory { .. } => unreachable!("handled above"),
        }
    });
    exit(result)
}

fn exit(result: Res) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_servers: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

type Res = Result<(), String>;

// ---------------------------------------------------------------- the data

/// The first day of the stand-in platform's data.
fn epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap()
}
const DATA_DAYS: i64 = 120;
/// 1000 visits per 7 days: any 7-day window holds exactly 1000.
const STEP_MS: i64 = 7 * 86_400_000 / 1000;
/// The first visit is a little after midnight, so no visit sits on a window edge.
const FIRST_MS: i64 = 123_456;
const WALK_ACTIVITY: &str = "10024069";

fn visit_count() -> usize {
    ((DATA_DAYS * 86_400_000 - FIRST_MS) / STEP_MS) as usize
}

fn visit_time(k: usize) -> DateTime<Utc> {
    epoch() + chrono::Duration::milliseconds(FIRST_MS + k as i64 * STEP_MS)
}

/// The index of the first visit at or after `t`.
fn index_at(t: DateTime<Utc>) -> usize {
    let ms = (t - epoch()).num_milliseconds() - FIRST_MS;
    if ms <= 0 {
        return 0;
    }
    (((ms + STEP_MS - 1) / STEP_MS) as usize).min(visit_count())
}

/// Visit `k`, the same on every run: the simulated platform's own generator.
fn visit(k: usize) -> SimVisit {
    let mut rng = fastrand::Rng::with_seed(k as u64 ^ 0x5eed);
    visits_gateway::demo::data::visit(k as u64 + 1, visit_time(k), &mut rng)
}

// ---------------------------------------------------------------- platform

struct Platform {
    /// Each visit's JSON, rendered once.
    items: Vec<String>,
    requests: AtomicU64,
}

async fn platform(listen: SocketAddr) -> Res {
    let items: Vec<String> = (0..visit_count())
        .map(|k| visit(k).to_json().to_string())
        .collect();
    let state = Arc::new(Platform {
        items,
        requests: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/api/activity/{id}/stats/user-visits", get(user_visits))
        .route(
            "/count",
            get(|State(p): State<Arc<Platform>>| async move {
                p.requests.load(Ordering::Relaxed).to_string()
            }),
        )
        .with_state(state);
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("platform: cannot listen on {listen}: {e}"))?;
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}

async fn user_visits(
    State(p): State<Arc<Platform>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    p.requests.fetch_add(1, Ordering::Relaxed);
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer ") && v.len() > 7);
    if !bearer {
        return envelope(401, "Unauthorized", "请提供正确有效的 access_token 值");
    }
    if id.parse::<u64>().is_err() {
        return envelope(404, "NotFound", "NotFound");
    }
    let num = |k: &str, default: u64| query.get(k).map_or(Some(default), |v| v.parse().ok());
    let (Some(page), Some(page_size)) = (num("page", 1), num("pageSize", 10)) else {
        return envelope(400, "BadRequest", "Invalid page");
    };
    let time = |k: &str| {
        query
            .get(k)
            .and_then(|s| visits_gateway::time::parse_rfc3339(s))
    };
    let (Some(from), Some(to)) = (time("startedAt"), time("endedAt")) else {
        return envelope(400, "BadRequest", "Invalid Date");
    };
    if from > to || to - from > chrono::Duration::days(7) {
        return envelope(400, "BadRequest", "时间范围不能超过7天");
    }
    let page_size = page_size.clamp(1, 1000);
    let (lo, hi) = (index_at(from), index_at(to));
    let total = hi - lo;
    let start = (lo as u64 + (page.max(1) - 1).saturating_mul(page_size)).min(hi as u64) as usize;
    let end = (start + page_size as usize).min(hi);
    let body = page_body(&p.items[start..end], page, page_size, total as u64);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// One page as the platform answers it: its pager, then the visits' JSON.
fn page_body(items: &[String], page: u64, page_size: u64, total: u64) -> String {
    let mut body = String::with_capacity(64 + items.iter().map(|i| i.len() + 1).sum::<usize>());
    body.push_str(&format!(
        r#"{{"pager":{{"page":{page},"pageSize":{page_size},"total":{total}}},"items":["#
    ));
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(item);
    }
    body.push_str("]}");
    body
}

// ---------------------------------------------------------------- reference

async fn reference(listen: SocketAddr, body: PathBuf) -> Res {
    let bytes = Bytes::from(
        std::fs::read(&body).map_err(|e| format!("reference: cannot read {body:?}: {e}"))?,
    );
    let app = Router::new().route(
        "/graphql",
        post(move |_request: Bytes| {
            let bytes = bytes.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], bytes) }
        }),
    );
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("reference: cannot listen on {listen}: {e}"))?;
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}

// ---------------------------------------------------------------- bodies

const HOT_QUERY: &str = "query Hot($id: ID!, $range: TimeRange) { userVisits(activityId: $id, range: $range, first: 10) { totalCount pageInfo { hasNextPage endCursor } nodes { userId isAnonymous nickname city visitAt durationMinutes } } }";

fn hot_body() -> String {
    json!({
        "query": HOT_QUERY,
        "variables": {
            "id": "10024069",
            "range": { "from": "2026-07-06T00:00:00Z", "to": "2026-07-13T00:00:00Z" },
        },
    })
    .to_string()
}

/// 64 different queries: 4 activities, ranges of 1 to 30 days at different
/// places, page sizes 5 to 100 from either end, small and large selections.
fn mixed_bodies() -> Vec<String> {
    const ACTIVITIES: [&str; 4] = ["10024069", "10024070", "10024072", "20000001"];
    const LENGTHS: [i64; 5] = [1, 3, 7, 14, 30];
    const PAGES: [(&str, u32); 7] = [
        ("first", 5),
        ("first", 10),
        ("first", 20),
        ("last", 10),
        ("first", 50),
        ("last", 20),
        ("first", 100),
    ];
    const SELECTIONS: [&str; 3] = [
        "totalCount nodes { visitAt nickname }",
        "totalCount pageInfo { hasNextPage endCursor } nodes { userId isAnonymous nickname city visitAt durationMinutes }",
        "totalCount range { from to } pageInfo { hasNextPage hasPreviousPage startCursor endCursor } edges { cursor node { userId isAnonymous anonymousId nickname avatar province city visitAt lastOnlineAt durationMinutes device partnerUid invitedBy } }",
    ];
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for i in 0..64usize {
        let activity = ACTIVITIES[i % 4];
        let days = LENGTHS[(i / 4) % 5];
        let (dir, n) = PAGES[i % 7];
        let selection = SELECTIONS[(i / 3) % 3];
        // Day-aligned starts spread over the data, ending before its last day.
        let start_day = 2 + ((i * 11) % (DATA_DAYS as usize - 34)) as i64;
        let from = epoch() + chrono::Duration::days(start_day);
        let to = from + chrono::Duration::days(days);
        let query = format!(
            "query Mixed($id: ID!, $range: TimeRange, $n: Int) {{ userVisits(activityId: $id, range: $range, {dir}: $n) {{ {selection} }} }}"
        );
        let body = json!({
            "query": query,
            "variables": {
                "id": activity,
                "range": { "from": visits_gateway::time::format(from), "to": visits_gateway::time::format(to) },
                "n": n,
            },
        })
        .to_string();
        assert!(seen.insert(body.clone()), "mixed query {i} repeats another");
        out.push(body);
    }
    out
}

fn write_bodies(dir: PathBuf) -> Res {
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).map_err(|e| format!("cannot write {name}: {e}"))
    };
    write("hot.json", hot_body() + "\n")?;
    let mixed = mixed_bodies();
    write("mixed.txt", mixed.join("\n") + "\n")?;
    println!("hot=1 mixed={}", mixed.len());
    Ok(())
}

fn read_bodies(path: &PathBuf) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    let bodies: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    if bodies.is_empty() {
        return Err(format!("{path:?} holds no request body"));
    }
    Ok(bodies)
}

// ---------------------------------------------------------------- check, walk

async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: String,
    authorization: Option<&str>,
) -> Result<Value, String> {
    let mut request = http
        .post(url)
        .header(header::CONTENT_TYPE.as_str(), "application/json")
        .body(body.clone());
    if let Some(a) = authorization {
        request = request.header(header::AUTHORIZATION.as_str(), a);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| e.to_string())?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| format!("not JSON ({e}) for {body}: {text:.300}"))?;
    if status != 200 || value.get("errors").is_some_and(|e| !e.is_null()) {
        return Err(format!("HTTP {status} for {body}: {text:.600}"));
    }
    Ok(value)
}

async fn check(url: String, bodies: PathBuf, authorization: Option<String>) -> Res {
    let bodies = read_bodies(&bodies)?;
    let http = reqwest::Client::new();
    for body in &bodies {
        post_json(&http, &url, body.clone(), authorization.as_deref()).await?;
    }
    println!("checked={}", bodies.len());
    Ok(())
}

const WALK_QUERY: &str = "query Walk($id: ID!, $range: TimeRange, $first: Int, $after: String) { userVisits(activityId: $id, range: $range, first: $first, after: $after) { totalCount pageInfo { hasNextPage endCursor } edges { cursor node { visitAt userId nickname } } } }";

async fn walk(
    url: String,
    out: PathBuf,
    activity: String,
    from: String,
    to: String,
    firsts: Vec<u64>,
    upstream_page_size: u64,
) -> Res {
    let parse = |s: &str| {
        visits_gateway::time::parse_rfc3339(s).ok_or_else(|| format!("{s}: not an RFC 3339 time"))
    };
    let (start, end) = (parse(&from)?, parse(&to)?);
    let http = reqwest::Client::new();
    let mut walks: Vec<Vec<String>> = Vec::new();
    for &first in &firsts {
        let mut bodies = Vec::new();
        let mut after: Option<String> = None;
        let mut seen = 0u64;
        let mut last_at = String::new();
        loop {
            let variables = match &after {
                None => {
                    json!({ "id": activity, "first": first, "range": { "from": from, "to": to } })
                }
                Some(c) => json!({ "id": activity, "first": first, "after": c }),
            };
            let body = json!({ "query": WALK_QUERY, "variables": variables }).to_string();
            let value = post_json(&http, &url, body.clone(), None).await?;
            bodies.push(body);
            let conn = &value["data"]["userVisits"];
            let edges = conn["edges"].as_array().cloned().unwrap_or_default();
            for e in &edges {
                let at = e["node"]["visitAt"].as_str().unwrap_or_default().to_owned();
                if at <= last_at {
                    return Err(format!(
                        "walk first={first}: visit {at} does not follow {last_at}"
                    ));
                }
                last_at = at;
            }
            seen += edges.len() as u64;
            if conn["pageInfo"]["hasNextPage"].as_bool() != Some(true) {
                let total = conn["totalCount"].as_u64().unwrap_or(0);
                if seen != total {
                    return Err(format!(
                        "walk first={first}: {seen} visits walked, totalCount says {total}"
                    ));
                }
                break;
            }
            after = conn["pageInfo"]["endCursor"].as_str().map(str::to_owned);
            if after.is_none() || edges.is_empty() {
                return Err(format!(
                    "walk first={first}: hasNextPage without a cursor or items"
                ));
            }
        }
        walks.push(bodies);
    }
    // Interleave the walks, so concurrent clients ask for the same pages.
    let longest = walks.iter().map(Vec::len).max().unwrap_or(0);
    let mut lines = Vec::new();
    for i in 0..longest {
        for w in &walks {
            if let Some(b) = w.get(i) {
                lines.push(b.clone());
            }
        }
    }
    std::fs::write(&out, lines.join("\n") + "\n").map_err(|e| e.to_string())?;
    // The gateway's windows: 7 days from `from`; each window's pages at the
    // gateway's page size, its first page read even when empty.
    let range = visits_gateway::paging::ResolvedRange::new(
        start,
        end,
        chrono::Utc::now(),
        &Default::default(),
    )
    .map_err(|e| e.to_string())?;
    let distinct: u64 = visits_gateway::paging::split_windows(range)
        .iter()
        .map(|w| {
            let total = (index_at(w.to) - index_at(w.from)) as u64;
            total.div_ceil(upstream_page_size).max(1)
        })
        .sum();
    println!(
        "bodies={} walks={} distinct_pages={distinct}",
        lines.len(),
        walks.len()
    );
    Ok(())
}

// ---------------------------------------------------------------- memory

/// The system allocator, counting the heap held while [`COUNTING`] is on
/// (the `memory` subcommand only; otherwise one relaxed load per call).
struct Counting;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
/// Bytes asked for, less bytes given back, while counting.
static HELD: AtomicIsize = AtomicIsize::new(0);
/// The same in the allocator's own chunks (glibc's rounding and headers).
static FOOTPRINT: AtomicIsize = AtomicIsize::new(0);
/// Allocations made, less those freed, while counting.
static BLOCKS: AtomicIsize = AtomicIsize::new(0);

/// The bytes glibc's malloc takes for the block at `ptr`: its usable size
/// and the chunk's 8-byte size field.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn footprint(ptr: *mut u8, _layout: Layout) -> isize {
    unsafe extern "C" {
        fn malloc_usable_size(ptr: *mut std::ffi::c_void) -> usize;
    }
    // SAFETY: `ptr` is a live block from the system allocator (glibc).
    (unsafe { malloc_usable_size(ptr.cast()) } + 8) as isize
}
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn footprint(_ptr: *mut u8, layout: Layout) -> isize {
    layout.size() as isize
}
const FOOTPRINT_KNOWN: bool = cfg!(all(target_os = "linux", target_env = "gnu"));

fn count(ptr: *mut u8, layout: Layout, sign: isize) {
    HELD.fetch_add(sign * layout.size() as isize, Ordering::Relaxed);
    FOOTPRINT.fetch_add(sign * footprint(ptr, layout), Ordering::Relaxed);
    BLOCKS.fetch_add(sign, Ordering::Relaxed);
}

// SAFETY: every call is passed on to `System` unchanged; counting only reads
// the blocks' sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `System`'s.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() && COUNTING.load(Ordering::Relaxed) {
            count(ptr, layout, 1);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() && COUNTING.load(Ordering::Relaxed) {
            count(ptr, layout, 1);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            count(ptr, layout, -1);
        }
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let counting = COUNTING.load(Ordering::Relaxed);
        if counting {
            count(ptr, layout, -1);
        }
        // SAFETY: as above.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if counting {
            if new.is_null() {
                count(ptr, layout, 1);
            } else {
                // SAFETY: `realloc`'s contract: `new_size` with `layout`'s
                // alignment is a valid layout.
                count(
                    new,
                    unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) },
                    1,
                );
            }
        }
        new
    }
}

/// The page cache's memory per visit. Renders `pages` pages of the stand-in
/// platform's visits (its generator, its JSON, its page envelope), then,
/// counting the heap, parses each with the gateway's `page::parse` and keeps
/// it as the page cache does (`Arc<CachedPage>`). Not counted: moka's own
/// entry and key (per page, not per visit).
fn memory(pages: usize, page_size: u64) -> Res {
    use visits_gateway::cache::CachedPage;
    if pages == 0 || !(1..=1000).contains(&page_size) {
        return Err("--pages must be above 0 and --page-size within 1..=1000".into());
    }
    let per_page = page_size as usize;
    // Each page full: page 1 to 10 of a window of 10 pages.
    let bodies: Vec<(u64, String)> = (0..pages)
        .map(|j| {
            let items: Vec<String> = (j * per_page..(j + 1) * per_page)
                .map(|k| visit(k).to_json().to_string())
                .collect();
            let page = (j % 10) as u64 + 1;
            (page, page_body(&items, page, page_size, 10 * page_size))
        })
        .collect();
    let json_bytes: usize = bodies.iter().map(|(_, b)| b.len()).sum();
    let mut cached: Vec<Arc<CachedPage>> = Vec::with_capacity(pages);

    for counter in [&HELD, &FOOTPRINT, &BLOCKS] {
        counter.store(0, Ordering::SeqCst);
    }
    COUNTING.store(true, Ordering::SeqCst);
    let parsed: Result<(), String> = bodies.iter().try_for_each(|(page, body)| {
        let page = visits_gateway::page::parse(body.as_bytes(), *page, page_size)
            .map_err(|e| e.to_string())?;
        cached.push(Arc::new(CachedPage {
            page,
            fetched_at: tokio::time::Instant::now(),
            ttl: Duration::from_secs(60),
        }));
        Ok(())
    });
    COUNTING.store(false, Ordering::SeqCst);
    parsed?;
    let (held, footprint, blocks) = (
        HELD.load(Ordering::SeqCst),
        FOOTPRINT.load(Ordering::SeqCst),
        BLOCKS.load(Ordering::SeqCst),
    );

    let visits: usize = cached.iter().map(|c| c.page.visits.len()).sum();
    if visits != pages * per_page {
        return Err(format!(
            "{visits} visits parsed, {} expected",
            pages * per_page
        ));
    }
    let weight: usize = cached.iter().map(|c| c.page.weight).sum();
    let per = |bytes: f64| bytes / visits as f64;
    let (json, held_pv, weight_pv) = (per(json_bytes as f64), per(held as f64), per(weight as f64));
    let footprint_text = if FOOTPRINT_KNOWN {
        format!(", {:.0} B with malloc's rounding", per(footprint as f64))
    } else {
        String::new()
    };
    println!(
        "page cache memory per visit: JSON {json:.0} B; parsed and cached {held_pv:.0} B ({:.2} of the JSON{footprint_text}; a {} B Visit and {:.1} allocations); the cache's weight estimate {weight_pv:.0} B ({:.2} of the parsed) ({visits} visits in {pages} pages of {page_size})",
        held_pv / json,
        std::mem::size_of::<visits_gateway::page::Visit>(),
        per(blocks as f64),
        weight_pv / held_pv,
    );
    drop(cached);
    Ok(())
}

// ---------------------------------------------------------------- pace

struct Target {
    /// `host:port`: where to connect, and the `Host` header.
    addr: String,
    path: String,
}

fn target(url: &str) -> Result<Target, String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    if u.scheme() != "http" {
        return Err("pace speaks plain http only".into());
    }
    let host = u.host_str().ok_or("no host")?.to_owned();
    let port = u.port_or_known_default().unwrap_or(80);
    Ok(Target {
        addr: format!("{host}:{port}"),
        path: match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        },
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The length of a complete chunked body at the start of `b`, if complete.
fn chunked_len(b: &[u8]) -> Option<usize> {
    let mut pos = 0;
    loop {
        let line_end = pos + find(&b[pos..], b"\r\n")?;
        let size_text = std::str::from_utf8(&b[pos..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        pos = line_end + 2;
        if size == 0 {
            // Trailers (none expected) end with an empty line.
            let end = pos + find(&b[pos..], b"\r\n")?;
            return Some(end + 2);
        }
        if b.len() < pos + size + 2 {
            return None;
        }
        pos += size + 2;
    }
}

/// Reads one response; returns its status and whether the server keeps the
/// connection open.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<(u16, bool)> {
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let header_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("connection closed before a response"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    let keep_alive = header("connection:").is_none_or(|v| v != "close");
    if let Some(len) = header("content-length:").and_then(|v| v.parse::<usize>().ok()) {
        while buf.len() < header_end + len {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(bad("connection closed inside a body"));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    } else if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        while chunked_len(&buf[header_end..]).is_none() {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(bad("connection closed inside a chunked body"));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    } else {
        return Err(bad("a response without a length"));
    }
    Ok((status, keep_alive))
}

async fn wait_until(t: Instant) {
    // tokio's timer has millisecond granularity: sleep most of the way, then
    // spin (yielding, so other connections' responses are still read).
    let coarse = Duration::from_micros(1500);
    let now = Instant::now();
    if t > now + coarse {
        tokio::time::sleep_until(t - coarse).await;
    }
    while Instant::now() < t {
        tokio::task::yield_now().await;
    }
}

async fn pace(
    url: String,
    rate: f64,
    seconds: f64,
    bodies: PathBuf,
    connections: usize,
    authorization: Option<String>,
) -> Res {
    if !(rate > 0.0 && seconds > 0.0) {
        return Err("--rate and --seconds must be above 0".into());
    }
    let bodies = read_bodies(&bodies)?;
    let t = target(&url)?;
    let authorization = match authorization {
        Some(a) if a.contains(['\r', '\n']) => {
            return Err("--authorization must be one line".into());
        }
        Some(a) => format!("Authorization: {a}\r\n"),
        None => String::new(),
    };
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(
        bodies
            .iter()
            .map(|b| {
                format!(
                    "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{authorization}Content-Length: {}\r\n\r\n{b}",
                    t.path,
                    t.addr,
                    b.len()
                )
                .into_bytes()
            })
            .collect(),
    );
    let total = (rate * seconds).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let start = Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::new();
    for _ in 0..connections.max(1) {
        let (next, errors, requests) = (next.clone(), errors.clone(), requests.clone());
        let addr = t.addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::new();
            let mut stream: Option<TcpStream> = None;
            let mut buf = Vec::with_capacity(64 * 1024);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let scheduled = start + interval.mul_f64(i as f64);
                wait_until(scheduled).await;
                if stream.is_none() {
                    match TcpStream::connect(&addr).await {
                        Ok(s) => {
                            let _ = s.set_nodelay(true);
                            stream = Some(s);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                }
                let s = stream.as_mut().expect("connected");
                let request = &requests[i as usize % requests.len()];
                let outcome = match s.write_all(request).await {
                    Ok(()) => read_response(s, &mut buf).await,
                    Err(e) => Err(e),
                };
                let done = Instant::now();
                match outcome {
                    Ok((status, keep_alive)) => {
                        if status != 200 {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        let us = (done - scheduled).as_micros().min(u128::from(u32::MAX));
                        latencies.push(us as u32);
                        if !keep_alive {
                            stream = None;
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        stream = None;
                    }
                }
            }
            latencies
        }));
    }
    let mut all: Vec<u32> = Vec::new();
    for task in tasks {
        all.extend(task.await.map_err(|e| e.to_string())?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| -> u32 {
        if all.is_empty() {
            return 0;
        }
        let i = ((p / 100.0) * all.len() as f64).ceil() as usize;
        all[i.clamp(1, all.len()) - 1]
    };
    println!(
        "sent={total} answered={} errors={} achieved_rate={:.0} p50_us={} p90_us={} p99_us={} max_us={}",
        all.len(),
        errors.load(Ordering::Relaxed),
        all.len() as f64 / elapsed,
        pct(50.0),
        pct(90.0),
        pct(99.0),
        all.last().copied().unwrap_or(0)
    );
    Ok(())
}
