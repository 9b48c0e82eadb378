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
        let mut key = String::with_capacity(request.query.len() + 64);
        key.push_str(&bucket.to_string());
        key.push('\u{1}');
        key.push_str(request.operation_name.as_deref().unwrap_or(""));
        key.push('\u{1}');
        for (i, word) in request.query.split_whitespace().enumerate() {
            if i > 0 {
                key.push(' ');
            }
            key.push_str(word);
        }
        key.push('\u{1}');
        key.push_str(&serde_json::to_string(&request.variables).unwrap_or_default());
        Self(key.into())
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
