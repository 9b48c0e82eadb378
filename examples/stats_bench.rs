//! Statistics over 92 days at 1,000 visits a day, from a warm
//! cache: the time of one `userVisitStats` computation and the memory it adds.
//!
//!   cargo run --release --example stats_bench
//!
//! In one process, without HTTP or GraphQL: a page source serves 92,000
//! generated visits (the simulated platform's generator, so nearly every
//! visit is a distinct visitor: the worst case for distinct counting) as the
//! platform's JSON, parsed by the gateway's own parser, through the real
//! page cache and `StatsLoader`. The range ends now, so its newest window is
//! recent, as in production: its pages' statistics are kept page by page and
//! added to the 13 settled windows, which are kept merged (with their index
//! of visitors) after the first query. Each query then computes
//! every figure: totals, the peak, the four `by*` lists and the timeline by
//! `DAY` and by `HOUR` in Asia/Shanghai.
//!
//! Memory is counted by a counting allocator: the bytes the kept settled
//! windows hold (over the page cache), and the most a query allocates on top.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_graphql::Variables;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde_json::json;
use tokio::sync::Semaphore;
use visits_gateway::auth::Principal;
use visits_gateway::cache::{PageCache, TtlPolicy};
use visits_gateway::config::Settings;
use visits_gateway::demo::{SimVisit, data};
use visits_gateway::error::GatewayError;
use visits_gateway::graphql::{RequestScope, Resolver, build_schema};
use visits_gateway::page::{Page, PageRequest, PageSource, parse as parse_page};
use visits_gateway::paging::{self, ActivityId, RangePolicy};
use visits_gateway::stats::calendar::{Calendar, Interval, zone};
use visits_gateway::stats::load::{Loaded, StatsLoader};
use visits_gateway::stats::{Dimension, WindowStats};
use visits_gateway::telemetry::Metrics;
use visits_gateway::visits::FetchPolicy;

/// This thread's CPU time so far (the machine is shared: wall time varies).
fn cpu_time() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

const DAYS: i64 = 92;
const PER_DAY: i64 = 1000;

/// The platform: the visits of every window, paged as asked.
struct Pages {
    visits: Vec<SimVisit>,
    calls: AtomicU64,
}

impl PageSource for Pages {
    fn fetch(
        &self,
        req: PageRequest,
        _: tokio::time::Instant,
    ) -> BoxFuture<'_, Result<Page, GatewayError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let from = self
                .visits
                .partition_point(|v| v.visit_at < req.window.from);
            let to = self.visits.partition_point(|v| v.visit_at < req.window.to);
            let all = &self.visits[from..to];
            let start = ((req.page - 1) * req.page_size) as usize;
            let items: Vec<_> = all
                .iter()
                .skip(start)
                .take(req.page_size as usize)
                .map(SimVisit::to_json)
                .collect();
            let body = json!({
                "pager": { "page": req.page, "pageSize": req.page_size, "total": all.len() },
                "items": items,
            });
            parse_page(body.to_string().as_bytes(), req.page, req.page_size)
        })
    }
}

const GRAPHQL_QUERY: &str = "query($from: DateTime!) {
  userVisitStats(activityId: \"10024069\", range: { from: $from }, timeZone: \"Asia/Shanghai\") {
    range { from to } visits uniqueVisitors signedInVisitors anonymousVisitors
    totalDurationMinutes averageDurationMinutes peakConcurrentViewers { viewers at }
    byProvince { key visits uniqueVisitors } byCity { key visits uniqueVisitors }
    byDevice { key visits uniqueVisitors } byRefererHost { key visits uniqueVisitors }
    days: timeline(interval: DAY) { start visits uniqueVisitors peakConcurrentViewers }
    hours: timeline(interval: HOUR) { start visits uniqueVisitors peakConcurrentViewers }
  }
}";

/// One statistics query's inputs.
struct Query {
    pages: PageCache,
    slots: Semaphore,
    policy: FetchPolicy,
    activity: ActivityId,
    range: paging::ResolvedRange,
    now: DateTime<Utc>,
}

impl Query {
    async fn load(&self, loader: &StatsLoader) -> Loaded {
        let spent = AtomicU64::new(0);
        loader
            .load(
                &self.pages,
                self.policy,
                &self.slots,
                &spent,
                self.activity,
                self.range,
                self.now,
            )
            .await
            .unwrap()
    }
}

/// Every figure of the statistics, as a query selecting them all computes them.
fn every_figure(stats: &WindowStats, from: i64, to: i64) -> u64 {
    let shanghai = zone("Asia/Shanghai").unwrap();
    let mut n = stats.visits() + stats.signed_in_visitors() + stats.anonymous_visitors();
    n += stats.total_duration_minutes() + stats.average_duration_minutes() as u64;
    n += stats.peak().map_or(0, |p| p.viewers);
    for d in Dimension::ALL {
        n += stats.buckets(d, 10).len() as u64;
    }
    for interval in [Interval::Day, Interval::Hour] {
        let bounds = Calendar::new(interval, shanghai).bounds(from, to).unwrap();
        n += stats.timeline(&bounds).len() as u64;
    }
    n
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let now = Utc::now();
    let start: DateTime<Utc> = now - chrono::Duration::days(DAYS);
    let mut rng = fastrand::Rng::with_seed(13);
    let step = chrono::Duration::milliseconds(86_400_000 / PER_DAY);
    let visits: Vec<SimVisit> = (0..DAYS * PER_DAY)
        .map(|i| data::visit(i as u64 + 1, start + step * i as i32, &mut rng))
        .collect();
    let source = Arc::new(Pages {
        visits,
        calls: AtomicU64::new(0),
    });
    let ttl = TtlPolicy {
        recent: Duration::from_secs(3600),
        settled: Duration::from_secs(3600),
        grace: Duration::from_secs(600),
        refresh_deadline: Duration::from_secs(10),
        negative: Duration::from_secs(30),
    };
    let pages = PageCache::new(source.clone(), 1 << 30, ttl, Metrics::new());
    let policy = FetchPolicy {
        upstream_page_size: 100,
        window_concurrency: 4,
        deadline: Duration::from_secs(60),
    };
    let range = paging::resolve_range(
        Some(start),
        None,
        now,
        &RangePolicy {
            max_range: chrono::Duration::days(DAYS),
            ..RangePolicy::default()
        },
    )
    .unwrap();
    let (from, to) = (
        range.from().timestamp_millis(),
        range.to().timestamp_millis(),
    );
    let activity = ActivityId::parse("10024069").unwrap();
    let query = Query {
        pages,
        slots: Semaphore::new(4),
        policy,
        activity,
        range,
        now,
    };
    // The page cache, warmed by a loader that keeps nothing.
    let t = Instant::now();
    let keeps_nothing = StatsLoader::new(0, 100_000);
    let cold = query.load(&keeps_nothing).await;
    let cold_time = t.elapsed();
    let platform = source.calls.load(Ordering::Relaxed);
    assert_eq!(cold.stats.visits(), (DAYS * PER_DAY) as u64);
    drop(cold);
    let with_pages = LIVE.load(Ordering::Relaxed);

    // The statistics cache: the first query keeps the settled windows.
    let loader = StatsLoader::new(32 * 1024 * 1024, 200);
    let t = Instant::now();
    let first = query.load(&loader).await;
    let first_time = t.elapsed();
    every_figure(&first.stats, from, to);
    drop(first);
    let kept = LIVE.load(Ordering::Relaxed) - with_pages;

    // Where a warm query's time goes.
    let mut parts = Vec::new();
    let t = Instant::now();
    let loaded = query.load(&loader).await;
    parts.push((
        "load (the settled base, the newest pages added)",
        t.elapsed(),
    ));
    let t = Instant::now();
    loaded.stats.peak();
    parts.push(("peak", t.elapsed()));
    let t = Instant::now();
    for d in Dimension::ALL {
        loaded.stats.buckets(d, 10);
    }
    parts.push(("four by* lists", t.elapsed()));
    let shanghai = zone("Asia/Shanghai").unwrap();
    for (name, interval) in [
        ("timeline DAY", Interval::Day),
        ("timeline HOUR", Interval::Hour),
    ] {
        let t = Instant::now();
        let bounds = Calendar::new(interval, shanghai).bounds(from, to).unwrap();
        loaded.stats.timeline(&bounds);
        parts.push((name, t.elapsed()));
    }
    drop(loaded);

    // Warm queries.
    let mut times = Vec::new();
    let mut peak_extra = 0;
    let mut check = 0;
    let cpu = cpu_time();
    for _ in 0..30 {
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let t = Instant::now();
        let loaded = query.load(&loader).await;
        check += every_figure(&loaded.stats, from, to);
        drop(loaded);
        times.push(t.elapsed());
        peak_extra = peak_extra.max(PEAK.load(Ordering::Relaxed) - base);
    }
    let cpu = (cpu_time() - cpu) / times.len() as u32;

    // The same through GraphQL (parse, validate, resolve, serialise), as
    // the gateway runs a query selecting every figure, both timelines.
    let resolver = Arc::new(Resolver {
        cache: query.pages.clone(),
        range_policy: RangePolicy {
            max_range: chrono::Duration::days(DAYS),
            ..RangePolicy::default()
        },
        fetch_policy: policy,
        default_page_size: 20,
        max_page_size: 100,
        stats: StatsLoader::new(32 * 1024 * 1024, 200),
    });
    let schema = build_schema(Some(resolver), &Settings::defaults().server);
    let variables = Variables::from_json(json!({ "from": visits_gateway::time::format(start) }));
    let mut graphql_times = Vec::new();
    let mut body_bytes = 0;
    let mut cpu_graphql = cpu_time();
    for run in 0..31 {
        let request = async_graphql::Request::new(GRAPHQL_QUERY)
            .variables(variables.clone())
            .data(Principal::anonymous())
            .data(RequestScope::new(Utc::now(), 4));
        let t = Instant::now();
        let response = schema.execute(request).await;
        let body = serde_json::to_vec(&response).unwrap();
        graphql_times.push(t.elapsed());
        assert!(response.errors.is_empty(), "{:?}", response.errors);
        body_bytes = body.len();
        if run == 0 {
            // This schema's first run kept the settled windows; time the others.
            graphql_times.clear();
            cpu_graphql = cpu_time();
        }
    }
    let cpu_graphql = (cpu_time() - cpu_graphql) / graphql_times.len() as u32;
    graphql_times.sort();
    assert_eq!(
        source.calls.load(Ordering::Relaxed),
        platform,
        "warm queries asked the platform"
    );
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{} visits over {DAYS} days, {} windows, {platform} pages (of 100) from the platform (cold, {:.0} ms); check {check}",
        DAYS * PER_DAY,
        paging::split_windows(range).len(),
        ms(cold_time)
    );
    println!(
        "first query from the page cache (every window built, settled ones kept): {:.1} ms",
        ms(first_time)
    );
    println!(
        "warm query (13 windows kept merged, the newest window's pages added, every figure): {:.1} ms of CPU; wall median {:.1} ms, max {:.1} ms over {} runs",
        ms(cpu),
        ms(times[times.len() / 2]),
        ms(*times.last().unwrap()),
        times.len()
    );
    println!(
        "through GraphQL, every figure and both timelines ({} KiB of JSON): {:.1} ms of CPU; wall median {:.1} ms over 30 runs",
        body_bytes / 1024,
        ms(cpu_graphql),
        ms(graphql_times[graphql_times.len() / 2])
    );
    println!(
        "one warm query: {}",
        parts
            .iter()
            .map(|(what, d)| format!("{what} {:.1} ms", ms(*d)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "memory: before statistics (generated data and page cache) {:.1} MiB; kept windows' statistics {:.1} MiB; a warm query allocates at most {:.1} MiB more while it runs",
        mib(with_pages),
        mib(kept),
        mib(peak_extra)
    );
}
