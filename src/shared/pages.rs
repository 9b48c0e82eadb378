//! The page cache's second level, in Redis, behind each replica's moka, and
//! coalescing across replicas.
//!
//! - Keys are versioned and namespaced, and hold everything that makes the
//!   upstream request: `visits-gateway:v1:page:<platform>:<activity>:<from
//!   ms>:<to ms>:<page>:<page size>` (the platform as a hash of its base URL).
//! - A value is a header line `<fetched at, unix ms> <ttl ms>` and the page in
//!   the platform's own JSON shape, read back through the very parser and
//!   checks a platform answer goes through ([`crate::page::parse`]):
//!   one format to keep right, and a value that cannot be read (garbage, an
//!   old format, a truncated write) is a miss, deleted, never an error.
//! - It lives for the page's TTL plus the stale grace, like the moka entry,
//!   and holds at most [`MAX_VALUE_BYTES`].
//! - A miss takes a short lock (`SET NX PX`); the other replicas missing the
//!   same page wait a bounded time for its value, then fetch it themselves.
//!
//! It is a [`PageSource`] layer: under each replica's moka page cache
//! (which knows nothing of Redis), over the next source (the platform
//! client, behind its budget).

use std::time::Duration;

use chrono::Utc;
use redis::AsyncCommands;
use reqwest::Url;
use serde_json::json;
use tokio::time::Instant;

use std::sync::Arc;

use futures::future::BoxFuture;

use super::{KEY_PREFIX, Redis};
use crate::cache::TtlPolicy;
use crate::error::GatewayError;
use crate::page::{Page, PageRequest, PageSource, Reach, Visit};
use crate::telemetry::{Metrics, OutcomeLabel};

/// The largest value written or read: a page of 1000 visits with long user
/// agents fits; anything larger is not shared.
pub const MAX_VALUE_BYTES: usize = 2 * 1024 * 1024;
/// How long a replica holds the lock of a page it fetches.
const LOCK_TTL: Duration = Duration::from_secs(5);
/// How long the other replicas wait for that page before fetching it too.
const MAX_LOCK_WAIT: Duration = Duration::from_secs(3);
/// How often they look.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// A page found in Redis, with what the moka entry needs.
#[derive(Debug)]
pub struct SharedPage {
    pub page: Page,
    /// How long ago it was fetched from the platform.
    pub age: Duration,
    pub ttl: Duration,
}

/// What a miss in moka should do.
#[derive(Debug)]
pub enum Claim {
    /// Another replica fetched it: no platform request.
    Found(SharedPage),
    /// Fetch it; with the lock when this replica holds it.
    Fetch(Option<Lock>),
}

/// The coalescing lock this replica holds on one page.
#[derive(Debug)]
pub struct Lock {
    key: String,
    token: String,
}

#[derive(Clone)]
pub struct SharedPages {
    redis: Redis,
    /// Tells platforms apart, for gateways of several platforms on one Redis.
    platform: String,
    /// A page's TTL, by its window's age, as the moka level has it.
    ttl: TtlPolicy,
    metrics: std::sync::Arc<Metrics>,
    /// Where pages come from on a miss.
    next: Arc<dyn PageSource>,
}

/// Releases a lock only if it is still ours (it may have expired and been
/// taken by another replica meanwhile).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

fn release_script() -> &'static redis::Script {
    static S: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    S.get_or_init(|| redis::Script::new(RELEASE))
}

impl std::fmt::Debug for SharedPages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPages")
            .field("redis", &self.redis)
            .field("platform", &self.platform)
            .finish_non_exhaustive()
    }
}

/// What a value under a page's key is to this replica.
enum Read {
    Fresh(SharedPage),
    /// Past its TTL (kept in Redis for stale-if-error grace).
    Stale,
    /// Unreadable; deleted.
    Garbage,
}

impl SharedPages {
    pub fn new(
        redis: Redis,
        base: &Url,
        ttl: TtlPolicy,
        metrics: std::sync::Arc<Metrics>,
        next: Arc<dyn PageSource>,
    ) -> Self {
        Self {
            redis,
            platform: super::platform_id(base),
            ttl,
            metrics,
            next,
        }
    }

    pub fn key(&self, req: &PageRequest) -> String {
        format!(
            "{KEY_PREFIX}:page:{}:{}:{}:{}:{}:{}",
            self.platform,
            req.activity,
            req.window.from.timestamp_millis(),
            req.window.to.timestamp_millis(),
            req.page,
            req.page_size
        )
    }

    fn lookup(&self, outcome: &'static str) {
        self.metrics
            .shared_cache_lookups
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// A fresh page from Redis; a value that cannot be read is deleted.
    async fn get(&self, req: &PageRequest, key: &str) -> Option<SharedPage> {
        let raw: Option<Vec<u8>> = self
            .redis
            .run("page_get", |mut c| async move { c.get(key).await })
            .await?;
        match self.read(req, key, raw?).await {
            Read::Fresh(found) => Some(found),
            Read::Stale | Read::Garbage => None,
        }
    }

    async fn read(&self, req: &PageRequest, key: &str, raw: Vec<u8>) -> Read {
        match decode(&raw, req) {
            Some(found) if found.age < found.ttl => Read::Fresh(found),
            // Past its TTL: fetch anew; it expires by itself after the grace.
            Some(_) => Read::Stale,
            None => {
                self.lookup("garbage");
                tracing::warn!(key, "unreadable page in Redis; deleted");
                let _: Option<i64> = self
                    .redis
                    .run("page_del", |mut c| async move { c.del(key).await })
                    .await;
                Read::Garbage
            }
        }
    }

    /// On a miss in moka: the page if another replica has it or is fetching
    /// it (waiting a bounded time), else a go-ahead to fetch, with the lock
    /// when this replica took it.
    async fn claim(&self, req: &PageRequest, deadline: Instant) -> Claim {
        let key = self.key(req);
        if let Some(found) = self.get(req, &key).await {
            self.lookup("hit");
            return Claim::Found(found);
        }
        if !self.redis.is_up() {
            return Claim::Fetch(None);
        }
        let lock = Lock {
            key: format!("{key}:lock"),
            token: format!("{:016x}", fastrand::u64(..)),
        };
        let (lock_key, token) = (&lock.key, &lock.token);
        let taken: Option<Option<String>> = self
            .redis
            .run("page_lock", |mut c| async move {
                redis::cmd("SET")
                    .arg(lock_key)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(LOCK_TTL.as_millis() as u64)
                    .query_async(&mut c)
                    .await
            })
            .await;
        match taken {
            Some(Some(_)) => {
                // The page may have landed between the GET and the SET.
                if let Some(found) = self.get(req, &key).await {
                    self.release(lock).await;
                    self.lookup("hit");
                    return Claim::Found(found);
                }
                self.lookup("miss");
                Claim::Fetch(Some(lock))
            }
            Some(None) => self.wait_for(req, &key, &lock.key, deadline).await,
            None => Claim::Fetch(None),
        }
    }

    /// Another replica holds the lock: look for its page until it lands, the
    /// lock goes (that fetch failed), or the wait is over.
    async fn wait_for(&self, req: &PageRequest, key: &str, lock: &str, deadline: Instant) -> Claim {
        // Leave most of the caller's deadline for its own fetch.
        let until = (Instant::now() + MAX_LOCK_WAIT)
            .min(Instant::now() + deadline.saturating_duration_since(Instant::now()) / 2);
        while Instant::now() < until {
            tokio::time::sleep(POLL_EVERY).await;
            let seen: Option<(Option<Vec<u8>>, bool)> = self
                .redis
                .run("page_wait", |mut c| async move {
                    redis::pipe()
                        .get(key)
                        .exists(lock)
                        .query_async(&mut c)
                        .await
                })
                .await;
            match seen {
                Some((Some(raw), locked)) => match self.read(req, key, raw).await {
                    Read::Fresh(found) => {
                        self.lookup("coalesced");
                        return Claim::Found(found);
                    }
                    // The page being refreshed is the old one: wait on
                    // while the lock says a replica is fetching it anew.
                    Read::Stale | Read::Garbage if locked => {}
                    Read::Stale | Read::Garbage => break,
                },
                Some((None, true)) => {}
                Some((None, false)) | None => break,
            }
        }
        self.lookup("miss");
        Claim::Fetch(None)
    }

    /// Shares a page this replica fetched, then lets the waiting replicas in.
    async fn store(&self, req: &PageRequest, page: &Page, ttl: Duration, lock: Option<Lock>) {
        let value = encode(page, Utc::now().timestamp_millis(), ttl);
        if value.len() <= MAX_VALUE_BYTES {
            let key = self.key(req);
            let px = (ttl + self.ttl.grace).as_millis().max(1) as u64;
            let _: Option<()> = self
                .redis
                .run("page_set", |mut c| async move {
                    c.pset_ex(&key, value, px).await
                })
                .await;
        }
        if let Some(lock) = lock {
            self.release(lock).await;
        }
    }

    /// Lets the waiting replicas go (they then fetch for themselves).
    async fn release(&self, lock: Lock) {
        let _: Option<i64> = self
            .redis
            .run("page_unlock", |mut c| async move {
                release_script()
                    .key(&lock.key)
                    .arg(&lock.token)
                    .invoke_async(&mut c)
                    .await
            })
            .await;
    }
}

impl PageSource for SharedPages {
    fn fetch(
        &self,
        req: PageRequest,
        deadline: Instant,
    ) -> BoxFuture<'_, Result<Page, GatewayError>> {
        Box::pin(async move { Ok(self.fetch_aged(req, deadline).await?.0) })
    }

    /// Another replica's page if it has it (or is fetching it), else the
    /// next source's, stored for the others once fetched.
    fn fetch_aged(
        &self,
        req: PageRequest,
        deadline: Instant,
    ) -> BoxFuture<'_, Result<(Page, Duration), GatewayError>> {
        Box::pin(async move {
            let lock = match self.claim(&req, deadline).await {
                Claim::Found(found) => return Ok((found.page, found.age)),
                Claim::Fetch(lock) => lock,
            };
            let fetched = self.next.fetch(req, deadline).await;
            match &fetched {
                Ok(page) => {
                    let ttl = self.ttl.ttl_for(req.window.to, Utc::now());
                    self.store(&req, page, ttl, lock).await;
                }
                Err(_) => {
                    if let Some(lock) = lock {
                        self.release(lock).await;
                    }
                }
            }
            Ok((fetched?, Duration::ZERO))
        })
    }

    fn reach(&self, within: Duration) -> Option<Reach> {
        self.next.reach(within)
    }
}

/// `<fetched at ms> <ttl ms>\n` and the page as the platform would send it.
pub fn encode(page: &Page, fetched_at_ms: i64, ttl: Duration) -> Vec<u8> {
    let items: Vec<serde_json::Value> = page.visits.iter().map(item).collect();
    let body = json!({
        "pager": { "pageSize": page.page_size, "total": page.total },
        "items": items,
    });
    let mut out = format!("{fetched_at_ms} {}\n", ttl.as_millis()).into_bytes();
    // Writing a `Value` to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, &body);
    out
}

pub(crate) fn item(v: &Visit) -> serde_json::Value {
    let time = |t| crate::time::format(t);
    json!({
        "userId": v.user_id.as_deref(),
        "anonymousId": v.anonymous_id.as_deref(),
        "nickname": &*v.nickname,
        "avatar": v.avatar.as_deref(),
        "province": v.province.as_deref(),
        "city": v.city.as_deref(),
        "visitAt": time(v.visit_at),
        "lastOnlineAt": time(v.last_online_at),
        "duration": v.duration_minutes,
        "referer": v.referer.as_deref(),
        "userAgent": v.user_agent.as_deref(),
        "device": v.device.as_deref(),
        "partnerUID": v.partner_uid.as_deref(),
        "invitedBy": v.invited_by.as_deref(),
    })
}

/// The page under `req`'s key, or `None` for anything unreadable.
pub fn decode(raw: &[u8], req: &PageRequest) -> Option<SharedPage> {
    if raw.len() > MAX_VALUE_BYTES {
        return None;
    }
    let newline = raw.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&raw[..newline]).ok()?;
    let (fetched_at, ttl) = header.split_once(' ')?;
    let fetched_at: i64 = fetched_at.parse().ok()?;
    let ttl: u64 = ttl.parse().ok()?;
    let page = crate::page::parse(&raw[newline + 1..], req.page, req.page_size).ok()?;
    let age_ms = Utc::now()
        .timestamp_millis()
        .saturating_sub(fetched_at)
        .max(0);
    Some(SharedPage {
        page,
        age: Duration::from_millis(age_ms.unsigned_abs()),
        ttl: Duration::from_millis(ttl),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::{ActivityId, Window};

    fn req() -> PageRequest {
        let t = |s| crate::time::parse_rfc3339(s).unwrap();
        PageRequest {
            activity: ActivityId::parse("10024069").unwrap(),
            window: Window {
                from: t("2026-11-01T00:00:00.000Z"),
                to: t("2026-11-08T00:00:00.000Z"),
            },
            page: 2,
            page_size: 3,
        }
    }

    fn page() -> Page {
        let body = r#"{"pager":{"page":2,"pageSize":3,"total":5},"items":[
            {"userId":42,"nickname":"小明","province":"广东","city":"深圳","visitAt":"2026-11-02T01:52:12.736Z",
             "lastOnlineAt":"2026-11-02T02:00:00.000Z","duration":8,"referer":"https://a.example/x","invitedBy":"7",
             "userAgent":"UA","device":"pc","avatar":"https://a/b.png","partnerUID":"p1"},
            {"userId":null,"anonymousId":"ab12cd34","visitAt":"2026-11-03T00:00:00.001Z","lastOnlineAt":"2026-11-03T00:01:00.000Z"}
        ]}"#;
        crate::page::parse(body.as_bytes(), 2, 3).unwrap()
    }

    #[test]
    fn keys_are_versioned_namespaced_and_name_the_whole_request() {
        let pages = |base: &str| {
            struct Nowhere;
            impl PageSource for Nowhere {
                fn fetch(
                    &self,
                    _: PageRequest,
                    _: Instant,
                ) -> BoxFuture<'_, Result<Page, GatewayError>> {
                    Box::pin(async { Err(GatewayError::internal("not asked")) })
                }
            }
            let ttl = TtlPolicy {
                recent: Duration::from_secs(30),
                settled: Duration::from_secs(600),
                grace: Duration::from_secs(600),
                refresh_deadline: Duration::from_secs(8),
                negative: Duration::from_secs(30),
            };
            SharedPages::new(
                crate::shared::tests::redis_nowhere(),
                &base.parse().unwrap(),
                ttl,
                Metrics::new(),
                Arc::new(Nowhere),
            )
        };
        let key = pages("https://shangzhibo.tv").key(&req());
        let platform = format!("{:016x}", crate::fnv::fnv1a64(b"https://shangzhibo.tv"));
        assert_eq!(
            key,
            format!("visits-gateway:v1:page:{platform}:10024069:1793491200000:1794096000000:2:3")
        );
        assert_eq!(pages("https://shangzhibo.tv/").key(&req()), key);
        assert_ne!(pages("https://other.example").key(&req()), key);
    }

    #[test]
    fn a_page_reads_back_as_it_was() {
        let original = page();
        let now = Utc::now().timestamp_millis();
        let raw = encode(&original, now - 1500, Duration::from_secs(30));
        let back = decode(&raw, &req()).unwrap();
        assert_eq!(back.page.visits, original.visits);
        assert_eq!(
            (back.page.total, back.page.page_size),
            (original.total, original.page_size)
        );
        assert_eq!(back.ttl, Duration::from_secs(30));
        assert!(back.age >= Duration::from_millis(1500) && back.age < Duration::from_secs(30));
        // Text is shared again within the page, as when first parsed.
        assert_eq!(back.page.weight, original.weight);
    }

    #[test]
    fn garbage_is_unreadable_not_an_error() {
        let good = encode(
            &page(),
            Utc::now().timestamp_millis(),
            Duration::from_secs(30),
        );
        let body_start = good.iter().position(|&b| b == b'\n').unwrap() + 1;
        let mut cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"garbage".to_vec(),
            b"\n".to_vec(),
            b"1 2\nnot json".to_vec(),
            b"x 2\n{}".to_vec(),
            [b"1 -5\n".as_slice(), &good[body_start..]].concat(),
            good[..good.len() - 3].to_vec(),
            vec![0xff; 64],
        ];
        // A page shorter than its pager promises fails the parser's checks.
        cases.push(
            format!(
                "1 2\n{}",
                r#"{"pager":{"pageSize":3,"total":9},"items":[]}"#
            )
            .into_bytes(),
        );
        for raw in cases {
            assert!(
                decode(&raw, &req()).is_none(),
                "{:?}",
                String::from_utf8_lossy(&raw)
            );
        }
        let mut huge = good.clone();
        huge.resize(MAX_VALUE_BYTES + 1, b' ');
        assert!(decode(&huge, &req()).is_none());
        assert!(decode(&good, &req()).is_some());
    }
}
