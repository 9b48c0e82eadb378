//! The hot path: whole GraphQL responses, cached by what determines them, so
//! a repeated query skips parsing, validation and execution.
//!
//! - The key is the whitespace-normalised query, the operation name, the
//!   variables and the pin bucket (`now` floored to the pin granularity, the
//!   only clock an answer depends on).
//! - An entry remembers the activities it touched; a hit is served only to a
//!   client allowed to read all of them (otherwise the request executes and
//!   gets its `FORBIDDEN`).
//! - It lives no longer than the freshest page it was built from, and never
//!   past its pin bucket; responses with errors or stale pages are not cached.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use moka::Expiry;
use moka::sync::Cache;
use tokio::time::Instant;

use crate::auth::Principal;
use crate::paging::ActivityId;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResponseKey(Arc<str>);

impl ResponseKey {
    pub fn new(request: &async_graphql::Request, bucket: i64) -> Self {
        use std::fmt::Write;
        let mut key = String::with_capacity(request.query.len() + 64);
        let _ = write!(key, "{bucket}\u{1}");
        key.push_str(request.operation_name.as_deref().unwrap_or(""));
        key.push('\u{1}');
        push_normalised(&mut key, &request.query);
        key.push('\u{1}');
        key.push_str(&serde_json::to_string(&request.variables).unwrap_or_default());
        Self(key.into())
    }
}

/// The query with each run of whitespace outside strings and comments folded
/// to one space. Strings, block strings included, are kept as written (their
/// spaces are values), and a comment keeps its ending newline (without it,
/// what follows would join the comment and two different queries would share
/// a key).
fn push_normalised(key: &mut String, query: &str) {
    let mut chars = query.chars().peekable();
    let mut space = false;
    while let Some(c) = chars.next() {
        if c.is_whitespace() {
            space = true;
            continue;
        }
        if space && !key.ends_with('\u{1}') {
            key.push(' ');
        }
        space = false;
        key.push(c);
        match c {
            '#' => {
                for c in chars.by_ref() {
                    key.push(c);
                    if c == '\n' || c == '\r' {
                        break;
                    }
                }
            }
            '"' if chars.peek() == Some(&'"') => {
                key.push(chars.next().unwrap_or('"'));
                if chars.peek() == Some(&'"') {
                    // A block string: kept whole up to its closing `"""`.
                    key.push(chars.next().unwrap_or('"'));
                    let mut quotes = 0;
                    while let Some(c) = chars.next() {
                        key.push(c);
                        match c {
                            '\\' => {
                                quotes = 0;
                                key.extend(chars.next());
                            }
                            '"' => {
                                quotes += 1;
                                if quotes == 3 {
                                    break;
                                }
                            }
                            _ => quotes = 0,
                        }
                    }
                }
                // Else `""`, an empty string: nothing more to keep.
            }
            '"' => {
                // Up to the closing quote, escapes included.
                while let Some(c) = chars.next() {
                    key.push(c);
                    match c {
                        '\\' => key.extend(chars.next()),
                        '"' => break,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

#[derive(Debug)]
pub struct CachedResponse {
    pub body: Bytes,
    pub activities: Vec<ActivityId>,
    pub ttl: Duration,
    /// Checked on every read: moka's own expiry is coarse (about a second).
    pub expires_at: Instant,
}

impl CachedResponse {
    pub fn visible_to(&self, principal: &Principal) -> bool {
        self.activities.iter().all(|a| principal.may_read(*a))
    }
}

struct PerEntry;

impl Expiry<ResponseKey, Arc<CachedResponse>> for PerEntry {
    fn expire_after_create(
        &self,
        _: &ResponseKey,
        v: &Arc<CachedResponse>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
}

#[derive(Clone)]
pub struct ResponseCache {
    cache: Option<Cache<ResponseKey, Arc<CachedResponse>>>,
    max_ttl: Duration,
}

impl ResponseCache {
    /// `max_bytes == 0` turns the cache off.
    pub fn new(max_bytes: u64, max_ttl: Duration) -> Self {
        let cache = (max_bytes > 0).then(|| {
            Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|k: &ResponseKey, v: &Arc<CachedResponse>| {
                    u32::try_from(k.0.len() + v.body.len() + 64).unwrap_or(u32::MAX)
                })
                .expire_after(PerEntry)
                .build()
        });
        Self { cache, max_ttl }
    }

    /// `(entries, bytes)`, settled first (moka counts lazily).
    pub fn size(&self) -> (u64, u64) {
        self.cache.as_ref().map_or((0, 0), |c| {
            c.run_pending_tasks();
            (c.entry_count(), c.weighted_size())
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.cache.is_some()
    }

    pub fn get(&self, key: &ResponseKey) -> Option<Arc<CachedResponse>> {
        self.cache
            .as_ref()?
            .get(key)
            .filter(|r| Instant::now() < r.expires_at)
    }

    /// Stores a response for at most `ttl` (capped by the configured maximum).
    pub fn insert(
        &self,
        key: ResponseKey,
        body: Bytes,
        activities: Vec<ActivityId>,
        ttl: Duration,
    ) {
        let ttl = ttl.min(self.max_ttl);
        if let Some(cache) = &self.cache
            && !ttl.is_zero()
        {
            let expires_at = Instant::now() + ttl;
            cache.insert(
                key,
                Arc::new(CachedResponse {
                    body,
                    activities,
                    ttl,
                    expires_at,
                }),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(query: &str, vars: serde_json::Value) -> async_graphql::Request {
        async_graphql::Request::new(query).variables(async_graphql::Variables::from_json(vars))
    }

    #[test]
    fn whitespace_does_not_change_the_key_but_variables_and_buckets_do() {
        let a = ResponseKey::new(
            &request(
                "{ userVisits(activityId: $id) { totalCount } }",
                serde_json::json!({"id": "1"}),
            ),
            7,
        );
        let b = ResponseKey::new(
            &request(
                "{\n  userVisits(activityId: $id)  {\n totalCount }\n}",
                serde_json::json!({"id": "1"}),
            ),
            7,
        );
        assert_eq!(a, b);
        let c = ResponseKey::new(
            &request(
                "{ userVisits(activityId: $id) { totalCount } }",
                serde_json::json!({"id": "2"}),
            ),
            7,
        );
        assert_ne!(a, c);
        let d = ResponseKey::new(
            &request(
                "{ userVisits(activityId: $id) { totalCount } }",
                serde_json::json!({"id": "1"}),
            ),
            8,
        );
        assert_ne!(a, d);
    }

    #[test]
    fn comments_and_strings_keep_what_sets_them_apart() {
        let key = |q: &str| ResponseKey::new(&request(q, serde_json::json!({})), 7);
        // Folded whitespace would put `b` inside the comment in both.
        assert_ne!(
            key("{ a: userVisits { totalCount } #\n b: userVisits { totalCount } }"),
            key("{ a: userVisits { totalCount } # b: userVisits { totalCount }\n}")
        );
        assert_ne!(
            key(r#"{ userVisits(activityId: "1  2") { totalCount } }"#),
            key(r#"{ userVisits(activityId: "1 2") { totalCount } }"#)
        );
        assert_eq!(
            key("{ userVisits(activityId: \"a\\\"  b\")  { totalCount } }"),
            key("{ userVisits(activityId: \"a\\\"  b\")  {\n totalCount }\n}")
        );
        assert_ne!(
            key("{ userVisits(activityId: \"\"\"a \"  b\"\"\") { totalCount } }"),
            key("{ userVisits(activityId: \"\"\"a \" b\"\"\") { totalCount } }")
        );
    }

    #[test]
    fn a_cached_response_is_only_visible_to_clients_of_all_its_activities() {
        let one = ActivityId::parse("1").unwrap();
        let two = ActivityId::parse("2").unwrap();
        let r = CachedResponse {
            body: Bytes::new(),
            activities: vec![one, two],
            ttl: Duration::from_secs(1),
            expires_at: Instant::now(),
        };
        assert!(r.visible_to(&Principal::anonymous()));
        let only_one = Principal {
            name: "key:x".into(),
            scope: crate::auth::Scope::Only(Arc::new([1].into_iter().collect())),
        };
        assert!(!r.visible_to(&only_one));
    }

    #[test]
    fn a_zero_size_cache_is_off() {
        let c = ResponseCache::new(0, Duration::from_secs(30));
        let key = ResponseKey::new(&request("{ a }", serde_json::json!({})), 0);
        c.insert(
            key.clone(),
            Bytes::from_static(b"{}"),
            vec![],
            Duration::from_secs(5),
        );
        assert!(c.get(&key).is_none());
    }
}
