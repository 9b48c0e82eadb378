//! One live poller per activity for all replicas (docs/live-cluster.md):
//! a renewable lease says which replica polls an activity, and a
//! Redis Stream carries what it finds to the others.
//!
//! # Keys
//! `visits-gateway:v1:live:{<platform>:<activity>}:lease` holds the polling
//! replica's random id (made at start) for [`LeaseTimes::ttl`], about one and
//! a half poll intervals; `...:stream` holds the activity's results, one
//! entry a poll that found something, at most about [`MAX_ENTRIES`] of them.
//! (The braces keep both keys in one slot, should Redis ever be a cluster.)
//!
//! # Why a Stream, not pub/sub
//! - A Stream keeps its entries: a replica that blinked (a slow command, a
//!   reconnection, a pause of its process) reads on from the last entry it
//!   delivered and misses nothing; pub/sub drops what is sent while a
//!   subscriber is away, and sequence numbers would only tell it what it
//!   lost, not give it back.
//! - The new polling replica continues from the last entry's cursor: the
//!   state lives with the visits, in the same atomic `XADD`, so it can never
//!   say more (or less) than what was published.
//! - Entry ids are the order; `XRANGE` after an id, without blocking, reads
//!   what is new on the connection every other command uses (a blocking
//!   `XREAD` would stall that multiplexed connection, and a dedicated one per
//!   activity would be a connection per live activity).
//!
//! # Entries
//! Fields: `t` the poller's [`Cursor`] after the entry (`<ms>:<seen>`), `f`
//! the one before it (absent for the starting point), `v` the new visits as a
//! platform page (the very format and parser of the shared page cache:
//! [`super::pages`]), `e`/`m`/`x` a platform failure's code, message and
//! whether it ends the subscriptions. An entry that cannot be read is skipped.
//!
//! # Safety of the lease
//! Taking, renewing and publishing are Lua scripts that check the holder
//! first: a replica whose lease lapsed (a poll slower than the lease) cannot
//! publish any more; the new holder continues from what was published.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::{Script, Value};
use serde_json::json;

use super::{KEY_PREFIX, Redis};
use crate::error::{ErrorCode, GatewayError};
use crate::page::Visit;
use crate::paging::ActivityId;

/// The stream's length bound (`XADD MAXLEN ~`): a replica cut off for fewer
/// polls than this catches up on everything it missed.
pub const MAX_ENTRIES: usize = 1000;
/// Entries read at once; a longer backlog is read over the next steps.
pub const READ_COUNT: usize = 100;

/// Where the poller is in an activity's list of visits: what each entry
/// carries on (`t`, `f`), so it lives here, below the poller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The newest `visitAt` seen.
    pub at: DateTime<Utc>,
    /// Visits at exactly `at` seen (they come first in `[at, …)`).
    pub seen: u64,
}

impl Cursor {
    /// Takes account of a visit read after every earlier one.
    pub fn advance(&mut self, visit_at: DateTime<Utc>) {
        if visit_at > self.at {
            *self = Cursor {
                at: visit_at,
                seen: 1,
            };
        } else if visit_at == self.at {
            self.seen += 1;
        }
        // An older visit (the platform's order is not by time) leaves the
        // cursor where it is: the next poll starts after newer ones anyway.
    }
}

/// Renews or takes the lease (when free), and reads the stream after an id
/// (or only its last entry, for a replica that joins).
/// KEYS: lease, stream. ARGV: owner, lease ttl ms, after id ('' for the last
/// entry only), count, stream ttl ms. Answers `{role, entries}`: role 1 the
/// lease is ours (renewed), 2 we just took it, 0 another replica holds it.
/// Garbage under either key (another type) is deleted.
const STEP: &str = r"
local holder = redis.pcall('GET', KEYS[1])
if type(holder) == 'table' then redis.call('DEL', KEYS[1]); holder = false end
local role = 0
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2]); role = 1
elseif not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]); role = 2
end
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'stream' then
  if kind ~= 'none' then redis.call('DEL', KEYS[2]) end
  return {role, {}}
end
if role > 0 then redis.call('PEXPIRE', KEYS[2], ARGV[5]) end
if ARGV[3] == '' then
  return {role, redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)}
end
return {role, redis.call('XRANGE', KEYS[2], '(' .. ARGV[3], '+', 'COUNT', ARGV[4])}
";

/// Appends an entry if the lease is still ours, renewing it.
/// KEYS: lease, stream. ARGV: owner, lease ttl ms, max entries, stream ttl
/// ms, then the entry's fields and values. Answers the entry's id, or nil
/// when another replica holds the lease.
const PUBLISH: &str = r"
local holder = redis.pcall('GET', KEYS[1])
if holder ~= ARGV[1] then return false end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'stream' and kind ~= 'none' then redis.call('DEL', KEYS[2]) end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 5))
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return id
";

/// Gives the lease up if it is still ours.
const RELEASE: &str = r"
if redis.pcall('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

fn script(which: &'static str) -> &'static Script {
    static STEP_: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    static PUBLISH_: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    static RELEASE_: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    let cell = match which {
        "step" => &STEP_,
        "publish" => &PUBLISH_,
        _ => &RELEASE_,
    };
    cell.get_or_init(|| {
        Script::new(match which {
            "step" => STEP,
            "publish" => PUBLISH,
            _ => RELEASE,
        })
    })
}

/// How long the lease and the stream live, from the poll interval.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTimes {
    /// One and a half poll intervals: renewed at every poll, it survives a
    /// poll that runs half an interval late; a replica that stops holds it
    /// at most this long, and another, looking every quarter interval, takes
    /// it within two intervals of the last renewal.
    pub ttl: Duration,
    /// The stream outlives its last lease by this (ten polls, at least a
    /// minute): long enough for replicas back from a Redis outage to read
    /// on; an activity nobody watches for longer starts afresh.
    pub keep: Duration,
}

impl LeaseTimes {
    pub fn new(poll: Duration) -> Self {
        Self {
            ttl: poll * 3 / 2,
            keep: (poll * 10).max(Duration::from_secs(60)),
        }
    }
}

/// Who polls the activity, as the lease says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// This replica held the lease and renewed it.
    Held,
    /// This replica just took it (nobody held it).
    Taken,
    /// Another replica polls.
    Other,
}

/// One poll's result, as published.
#[derive(Debug)]
pub struct Entry {
    pub id: String,
    pub from: Option<Cursor>,
    /// Absent when the poller has no starting point yet (its first read
    /// failed).
    pub to: Option<Cursor>,
    pub visits: Vec<Arc<Visit>>,
    /// A platform failure, and whether it ends the subscriptions.
    pub error: Option<(GatewayError, bool)>,
}

/// The live side of the shared state: cheap to clone.
#[derive(Clone)]
pub struct SharedLive {
    redis: Redis,
    platform: String,
    /// This replica in leases: random, made at start.
    owner: String,
    pub times: LeaseTimes,
}

impl std::fmt::Debug for SharedLive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLive")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl SharedLive {
    pub fn new(redis: Redis, base: &reqwest::Url, poll: Duration) -> Self {
        Self {
            redis,
            platform: super::platform_id(base),
            owner: format!("{:016x}", fastrand::u64(..)),
            times: LeaseTimes::new(poll),
        }
    }

    fn key(&self, activity: ActivityId, what: &str) -> String {
        format!(
            "{KEY_PREFIX}:live:{{{}:{}}}:{what}",
            self.platform,
            activity.get()
        )
    }

    /// Renews or takes the lease and reads what is new after `after` (the
    /// last entry only when `None`). `None` when Redis is unavailable.
    pub async fn step(
        &self,
        activity: ActivityId,
        after: Option<&str>,
    ) -> Option<(Role, Vec<Entry>)> {
        let (lease, stream) = (self.key(activity, "lease"), self.key(activity, "stream"));
        let answer: Value = self
            .redis
            .run("live_step", |mut c| async move {
                script("step")
                    .key(&lease)
                    .key(&stream)
                    .arg(&self.owner)
                    .arg(millis(self.times.ttl))
                    .arg(after.unwrap_or(""))
                    .arg(READ_COUNT)
                    .arg(millis(self.times.keep))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let Value::Array(parts) = answer else {
            return None;
        };
        let role = match parts.first() {
            Some(Value::Int(1)) => Role::Held,
            Some(Value::Int(2)) => Role::Taken,
            Some(Value::Int(0)) => Role::Other,
            _ => return None,
        };
        let entries = match parts.get(1) {
            Some(Value::Array(entries)) => entries.iter().filter_map(decode).collect(),
            _ => Vec::new(),
        };
        Some((role, entries))
    }

    /// Publishes a poll's result if the lease is still ours: `Some(Some(id))`
    /// published, `Some(None)` the lease is another replica's, `None` Redis
    /// is unavailable (whether it was published is unknown).
    pub async fn publish(
        &self,
        activity: ActivityId,
        from: Option<Cursor>,
        to: Option<Cursor>,
        visits: &[Arc<Visit>],
        error: Option<(&GatewayError, bool)>,
    ) -> Option<Option<String>> {
        let (lease, stream) = (self.key(activity, "lease"), self.key(activity, "stream"));
        let fields = encode(from, to, visits, error);
        self.redis
            .run("live_publish", |mut c| async move {
                let mut invocation = script("publish").prepare_invoke();
                invocation
                    .key(&lease)
                    .key(&stream)
                    .arg(&self.owner)
                    .arg(millis(self.times.ttl))
                    .arg(MAX_ENTRIES)
                    .arg(millis(self.times.keep));
                for (name, value) in &fields {
                    invocation.arg(*name).arg(value.as_slice());
                }
                invocation.invoke_async(&mut c).await
            })
            .await
    }

    /// Gives the lease up (this replica stops polling the activity), so
    /// another replica takes it at its next step rather than at its expiry.
    pub async fn release(&self, activity: ActivityId) {
        let lease = self.key(activity, "lease");
        let _: Option<i64> = self
            .redis
            .run("live_release", |mut c| async move {
                script("release")
                    .key(&lease)
                    .arg(&self.owner)
                    .invoke_async(&mut c)
                    .await
            })
            .await;
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn cursor_text(c: Cursor) -> Vec<u8> {
    format!("{}:{}", c.at.timestamp_millis(), c.seen).into_bytes()
}

fn parse_cursor(raw: &[u8]) -> Option<Cursor> {
    let (at, seen) = std::str::from_utf8(raw).ok()?.split_once(':')?;
    Some(Cursor {
        at: DateTime::<Utc>::from_timestamp_millis(at.parse().ok()?)?,
        seen: seen.parse().ok()?,
    })
}

/// An entry's fields.
pub fn encode(
    from: Option<Cursor>,
    to: Option<Cursor>,
    visits: &[Arc<Visit>],
    error: Option<(&GatewayError, bool)>,
) -> Vec<(&'static str, Vec<u8>)> {
    let mut fields = Vec::new();
    if let Some(to) = to {
        fields.push(("t", cursor_text(to)));
    }
    if let Some(from) = from {
        fields.push(("f", cursor_text(from)));
    }
    if !visits.is_empty() {
        let items: Vec<serde_json::Value> = visits.iter().map(|v| super::pages::item(v)).collect();
        let page = json!({
            "pager": { "pageSize": items.len(), "total": items.len() },
            "items": items,
        });
        fields.push(("v", page.to_string().into_bytes()));
    }
    if let Some((error, ends)) = error {
        fields.push(("e", error.code.as_str().as_bytes().to_vec()));
        fields.push(("m", error.message.clone().into_bytes()));
        fields.push(("x", if ends { b"1".to_vec() } else { b"0".to_vec() }));
    }
    fields
}

/// An `XRANGE` item `[id, [field, value, ...]]`, or `None` if unreadable.
fn decode(item: &Value) -> Option<Entry> {
    let Value::Array(item) = item else {
        return None;
    };
    let id = match item.first()? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok()?,
        Value::SimpleString(s) => s.clone(),
        _ => return None,
    };
    let Value::Array(flat) = item.get(1)? else {
        return None;
    };
    let mut fields: Vec<(&[u8], &[u8])> = Vec::new();
    for pair in flat.chunks(2) {
        if let [Value::BulkString(k), Value::BulkString(v)] = pair {
            fields.push((k, v));
        }
    }
    decode_fields(id, &fields)
}

/// An entry from its fields; `None` when one of them cannot be read.
pub fn decode_fields(id: String, fields: &[(&[u8], &[u8])]) -> Option<Entry> {
    let get = |name: &[u8]| fields.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let to = match get(b"t") {
        Some(raw) => Some(parse_cursor(raw)?),
        None => None,
    };
    let from = match get(b"f") {
        Some(raw) => Some(parse_cursor(raw)?),
        None => None,
    };
    let visits = match get(b"v") {
        Some(raw) => {
            let n = serde_json::from_slice::<serde_json::Value>(raw)
                .ok()?
                .pointer("/pager/total")?
                .as_u64()?;
            crate::page::parse(raw, 1, n)
                .ok()?
                .visits
                .iter()
                .cloned()
                .map(Arc::new)
                .collect()
        }
        None => Vec::new(),
    };
    let error = match get(b"e") {
        Some(code) => {
            let code = std::str::from_utf8(code).ok()?;
            let code = ErrorCode::ALL.into_iter().find(|c| c.as_str() == code)?;
            let message = String::from_utf8_lossy(get(b"m").unwrap_or_default()).into_owned();
            Some((GatewayError::new(code, message), get(b"x") == Some(b"1")))
        }
        None => None,
    };
    Some(Entry {
        id,
        from,
        to,
        visits,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visit(at: &str, user: &str) -> Arc<Visit> {
        let body = format!(
            r#"{{"pager":{{"pageSize":1,"total":1}},"items":[{{"userId":"{user}","nickname":"n","visitAt":"{at}","lastOnlineAt":"{at}","duration":3,"city":"深圳"}}]}}"#
        );
        Arc::new(crate::page::parse(body.as_bytes(), 1, 1).unwrap().visits[0].clone())
    }

    #[test]
    fn live_cursor_counts_visits_at_its_millisecond() {
        let at = "2026-03-20T12:00:00.005Z".parse::<DateTime<Utc>>().unwrap();
        let mut c = Cursor { at, seen: 2 };
        c.advance(at);
        assert_eq!(c, Cursor { at, seen: 3 });
        c.advance(at - chrono::Duration::milliseconds(1));
        assert_eq!(c, Cursor { at, seen: 3 });
        let later = at + chrono::Duration::milliseconds(1);
        c.advance(later);
        c.advance(later);
        assert_eq!(c, Cursor { at: later, seen: 2 });
    }

    #[test]
    fn live_entries_read_back_what_was_published() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let from = Cursor {
            at: at("2026-03-20T12:00:00.005Z"),
            seen: 2,
        };
        let to = Cursor {
            at: at("2026-03-20T12:00:01.000Z"),
            seen: 1,
        };
        let visits = vec![
            visit("2026-03-20T12:00:00.005Z", "1"),
            visit("2026-03-20T12:00:01.000Z", "2"),
        ];
        let error = GatewayError::new(ErrorCode::UpstreamTimeout, "slow");
        let fields = encode(Some(from), Some(to), &visits, Some((&error, false)));
        let borrowed: Vec<(&[u8], &[u8])> = fields
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_slice()))
            .collect();
        let entry = decode_fields("1-0".into(), &borrowed).unwrap();
        assert_eq!(entry.from, Some(from));
        assert_eq!(entry.to, Some(to));
        assert_eq!(entry.visits, visits);
        let (e, ends) = entry.error.unwrap();
        assert_eq!(
            (e.code, e.message.as_str(), ends),
            (error.code, "slow", false)
        );

        // The starting point: a cursor alone.
        let fields = encode(None, Some(to), &[], None);
        let borrowed: Vec<(&[u8], &[u8])> = fields
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_slice()))
            .collect();
        let entry = decode_fields("2-0".into(), &borrowed).unwrap();
        assert!(entry.from.is_none() && entry.visits.is_empty() && entry.error.is_none());
        // Garbage is skipped, never an error.
        assert!(decode_fields("3-0".into(), &[(b"t", b"soon")]).is_none());
        assert!(decode_fields("3-0".into(), &[(b"t", b"1:1"), (b"v", b"{")]).is_none());
    }

    #[test]
    fn live_lease_is_renewed_at_every_poll_and_lapses_within_two() {
        let t = LeaseTimes::new(Duration::from_secs(2));
        assert_eq!(t.ttl, Duration::from_secs(3));
        // Taken by another replica, looking every quarter interval, within
        // two intervals of the last renewal.
        assert!(t.ttl + Duration::from_millis(500) <= Duration::from_secs(4));
        assert_eq!(t.keep, Duration::from_secs(60));
    }
}
