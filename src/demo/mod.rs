//! The simulated platform behind `visits-gateway demo` and the integration
//! tests: the platform's REST endpoint (docs/architecture.md) on a loopback port, with generated
//! visits over the last 60 days and the platform's quirks (Bearer token,
//! envelope errors, the 7-day limit, a page-size cap, a feature switch).
//! Tests steer it: add visits, cap page sizes, inject faults, count requests.

pub mod data;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::secret::Secret;
pub use data::SimVisit;

/// The activity of the platform's own documentation example.
pub const EXAMPLE_ACTIVITY: u64 = 10024069;
/// A smaller activity.
pub const SMALL_ACTIVITY: u64 = 10024070;
/// An activity whose account has not switched the user detail feature on.
pub const FEATURE_OFF_ACTIVITY: u64 = 10024071;

/// A failure the next request(s) will meet, in order.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status and body.
    Status(u16, String),
    /// Answer 200 with a body that is not JSON.
    Malformed,
    /// Never answer.
    Hang,
    /// Answer normally after a delay.
    Delay(Duration),
    /// 429 with a `Retry-After` in seconds.
    TooManyRequests(u64),
    /// Answer the real page with only its first items, the pager unchanged.
    ShortPage(usize),
    /// Answer the real page with the visit at this index given an unreadable
    /// `visitAt` (sound JSON, one bad visit).
    BadVisitAt(usize),
}

/// One request as the platform saw it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeenRequest {
    pub activity: String,
    pub page: u64,
    pub page_size: u64,
    pub started_at: String,
    pub ended_at: String,
    pub authorization: Option<String>,
    /// The W3C trace context the gateway sent, when tracing is on.
    pub traceparent: Option<String>,
}

struct Activity {
    visits: Vec<SimVisit>,
    feature_enabled: bool,
}

struct Sim {
    token: Secret,
    activities: Mutex<HashMap<u64, Activity>>,
    page_size_cap: AtomicU64,
    faults: Mutex<VecDeque<Fault>>,
    seen: Mutex<Vec<SeenRequest>>,
    next_id: AtomicU64,
    /// Requests being answered now, and the most there ever were.
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

/// A handle on a running simulated platform.
#[derive(Clone)]
pub struct SimPlatform {
    sim: Arc<Sim>,
    pub addr: SocketAddr,
}

impl SimPlatform {
    /// Starts the platform on `addr` (port 0 for any) with data generated up
    /// to `now`, accepting only `token`.
    pub async fn start(
        addr: SocketAddr,
        token: Secret,
        now: DateTime<Utc>,
    ) -> std::io::Result<Self> {
        let mut activities = HashMap::new();
        let mut next_id = 1;
        for (id, count, feature_enabled) in [
            (EXAMPLE_ACTIVITY, 2400, true),
            (SMALL_ACTIVITY, 150, true),
            (FEATURE_OFF_ACTIVITY, 10, false),
        ] {
            let visits = data::generate(id, count, now, &mut next_id);
            activities.insert(
                id,
                Activity {
                    visits,
                    feature_enabled,
                },
            );
        }
        let sim = Arc::new(Sim {
            token,
            activities: Mutex::new(activities),
            page_size_cap: AtomicU64::new(50),
            faults: Mutex::new(VecDeque::new()),
            seen: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(next_id),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
        });
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/api/activity/{id}/stats/user-visits", get(user_visits))
            .with_state(sim.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { sim, addr })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The largest page the platform serves (50 by default, like a platform
    /// that caps the gateway's 100).
    pub fn set_page_size_cap(&self, cap: u64) {
        self.sim.page_size_cap.store(cap.max(1), Ordering::SeqCst);
    }

    /// Tests and the soak bench only (feature `test-hooks`).
    #[cfg(feature = "test-hooks")]
    pub fn push_fault(&self, fault: Fault) {
        lock(&self.sim.faults).push_back(fault);
    }

    #[cfg(feature = "test-hooks")]
    pub fn clear_faults(&self) {
        lock(&self.sim.faults).clear();
    }

    /// A new visit, as a live stream would record it.
    pub fn add_visit(&self, activity: u64, at: DateTime<Utc>) {
        // The id is taken under the lock, so each list stays in id order
        // (the platform's order) without sorting on every request.
        let mut activities = lock(&self.sim.activities);
        if let Some(a) = activities.get_mut(&activity) {
            let id = self.sim.next_id.fetch_add(1, Ordering::SeqCst);
            a.visits
                .push(data::visit(id, at, &mut fastrand::Rng::with_seed(id)));
        }
    }

    /// Adds crafted visits to an activity, which is created (with the user
    /// detail feature on) when missing. They are taken in `visit_at` order
    /// and numbered after every visit so far, so the platform's order (by
    /// id) stays time order.
    pub fn insert_visits(&self, activity: u64, mut visits: Vec<SimVisit>) {
        visits.sort_by_key(|v| v.visit_at);
        let mut activities = lock(&self.sim.activities);
        let a = activities.entry(activity).or_insert_with(|| Activity {
            visits: Vec::new(),
            feature_enabled: true,
        });
        for mut v in visits {
            v.id = self.sim.next_id.fetch_add(1, Ordering::SeqCst);
            a.visits.push(v);
        }
    }

    /// The activity's visits in `[from, to)`, in the platform's order.
    pub fn visits_between(
        &self,
        activity: u64,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<SimVisit> {
        lock(&self.sim.activities)
            .get(&activity)
            .map(|a| in_window(&a.visits, from, to).cloned().collect())
            .unwrap_or_default()
    }

    /// Every request the platform received so far.
    pub fn seen(&self) -> Vec<SeenRequest> {
        lock(&self.sim.seen).clone()
    }

    /// The most requests the platform was answering at once.
    pub fn max_in_flight(&self) -> u64 {
        self.sim.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn request_count(&self) -> usize {
        lock(&self.sim.seen).len()
    }

    /// Adds a visit to the example activity every `every`, so the demo's data
    /// is live.
    pub fn spawn_live_visits(&self, every: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                this.add_visit(EXAMPLE_ACTIVITY, Utc::now());
            }
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The visits in `[from, to)`, in id order (the platform's).
fn in_window(
    visits: &[SimVisit],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> impl Iterator<Item = &SimVisit> + Clone {
    visits
        .iter()
        .filter(move |v| v.visit_at >= from && v.visit_at < to)
}

/// The platform's error answer: `{name, message, status}` with that status.
pub fn envelope(status: u16, name: &str, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({ "name": name, "message": message, "status": status });
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The platform's own timestamp check.
fn platform_time(s: Option<&String>) -> Option<DateTime<Utc>> {
    let s = s?;
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    let shape = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[b.len() - 1] == b'Z'
        && (b.len() == 20 || (b[19] == b'.' && b.len() <= 24 && digits(20..b.len() - 1)));
    if !shape {
        return None;
    }
    crate::time::parse_rfc3339(s)
}

/// Counts a request out when its answer is done (or abandoned).
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn user_visits(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let num = |k: &str, default: u64| {
        query
            .get(k)
            .map_or(Some(default), |v| v.parse::<u64>().ok())
    };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    lock(&sim.seen).push(SeenRequest {
        activity: id.clone(),
        page: num("page", 1).unwrap_or(0),
        page_size: num("pageSize", 10).unwrap_or(0),
        started_at: query.get("startedAt").cloned().unwrap_or_default(),
        ended_at: query.get("endedAt").cloned().unwrap_or_default(),
        authorization: authorization.clone(),
        traceparent: headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });

    let now_in_flight = sim.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    sim.max_in_flight.fetch_max(now_in_flight, Ordering::SeqCst);
    let _answered = InFlight(&sim.in_flight);

    let fault = lock(&sim.faults).pop_front();
    let (mut short, mut bad_visit) = (None, None);
    match fault {
        Some(Fault::Status(status, body)) => {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (code, body).into_response();
        }
        Some(Fault::Malformed) => {
            return (StatusCode::OK, "{\"pager\": {\"page\": 1, \"items\"").into_response();
        }
        Some(Fault::Hang) => std::future::pending::<()>().await,
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        Some(Fault::TooManyRequests(secs)) => {
            let mut r = envelope(
                429,
                "TooManyRequests",
                &format!("请求速度太频繁了, 请于{secs}秒后重试"),
            );
            if let Ok(v) = secs.to_string().parse() {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
        Some(Fault::ShortPage(n)) => short = Some(n),
        Some(Fault::BadVisitAt(i)) => bad_visit = Some(i),
        None => {}
    }

    if authorization.as_deref() != Some(&format!("Bearer {}", sim.token.expose())) {
        return envelope(401, "Unauthorized", "请提供正确有效的 access_token 值");
    }
    let (Some(page), Some(page_size)) = (num("page", 1), num("pageSize", 10)) else {
        return envelope(400, "BadRequest", "Invalid page");
    };
    let (Some(from), Some(to)) = (
        platform_time(query.get("startedAt")),
        platform_time(query.get("endedAt")),
    ) else {
        return envelope(400, "BadRequest", "Invalid Date");
    };
    if to - from > chrono::Duration::days(7) || from > to {
        return envelope(400, "BadRequest", "时间范围不能超过7天");
    }
    let Ok(id) = id.parse::<u64>() else {
        return envelope(404, "NotFound", "NotFound");
    };
    let activities = lock(&sim.activities);
    let Some(activity) = activities.get(&id) else {
        return envelope(404, "NotFound", "NotFound");
    };
    if !activity.feature_enabled {
        return envelope(
            400,
            "BadRequest",
            "您未开启用户详情功能, 请先开通后再进行操作",
        );
    }
    let page_size = page_size.clamp(1, sim.page_size_cap.load(Ordering::SeqCst));
    let all = in_window(&activity.visits, from, to);
    let total = all.clone().count();
    let start = (page.max(1) - 1).saturating_mul(page_size) as usize;
    let mut items: Vec<Value> = all
        .skip(start)
        .take(page_size as usize)
        .map(SimVisit::to_json)
        .collect();
    if let Some(item) = bad_visit.and_then(|i| items.get_mut(i)) {
        item["visitAt"] = json!("yesterday");
    }
    let pager = json!({ "page": page, "pageSize": page_size, "total": total });
    if let Some(n) = short {
        items.truncate(n);
    }
    let body = json!({ "pager": pager, "items": items }).to_string();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
