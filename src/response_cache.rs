//! The hot path: whole GraphQL responses, cached by the exact request, so a
//! repeated query skips parsing, validation and execution.
//!
//! - The key is the exact request, the POST body or the GET query string as
//!   sent (query text, operation name, variables), and the pin bucket (`now`
//!   floored to the pin granularity, the only clock an answer depends on).
//!   No normalisation: two spellings of one request are two entries, never
//!   two requests one entry; and a hit is found before the request is parsed.
//!   The response's media type is not in the key: only responses without
//!   errors are kept, and their bytes are the same in both types.
//! - An entry remembers the activities it touched; a hit is served only to a
//!   client allowed to read all of them (otherwise the request executes and
//!   gets its `FORBIDDEN`). Nothing else about the caller changes an answer.
//! - It lives no longer than the freshest page it was built from, and never
//!   past its pin bucket; responses with errors or stale pages are not cached.
//!   These facts come back from the resolvers as [`Facts`].

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use moka::Expiry;
use moka::sync::Cache;
use tokio::time::Instant;

use crate::auth::Principal;
use crate::cache::Freshness;
use crate::paging::ActivityId;

/// What the fields of one response served, as they returned it.
#[derive(Debug, Clone)]
pub struct Facts {
    pub freshness: Freshness,
    pub activities: Vec<ActivityId>,
}

impl Default for Facts {
    fn default() -> Self {
        Self {
            freshness: Freshness::FOREVER,
            activities: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResponseKey {
    bucket: i64,
    /// Whether `request` is a GET's query string rather than a POST's body:
    /// the same bytes in the two forms are two requests.
    query_string: bool,
    /// The request as sent: query, operation name and variables, the POST
    /// body or the GET query string.
    request: Bytes,
}

impl ResponseKey {
    /// The key of a POST: its body.
    pub fn new(request: Bytes, bucket: i64) -> Self {
        Self {
            bucket,
            query_string: false,
            request,
        }
    }

    /// The key of a GET: its query string, as sent.
    pub fn for_query_string(query_string: Bytes, bucket: i64) -> Self {
        Self {
            bucket,
            query_string: true,
            request: query_string,
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
                    u32::try_from(k.request.len() + v.body.len() + 64).unwrap_or(u32::MAX)
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

    /// The longest a response is kept (`RESPONSE_CACHE_MAX_TTL_SECONDS`).
    pub fn max_ttl(&self) -> Duration {
        self.max_ttl
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
            // Owned copies, exactly their length: a POST body may be a slice
            // of the connection's read buffer (its headers too, 100s of KB),
            // and a serialised body may have spare capacity; the weigher
            // counts only the bytes (a client must not make us hold more than it sends).
            let key = ResponseKey {
                request: Bytes::copy_from_slice(&key.request),
                ..key
            };
            cache.insert(
                key,
                Arc::new(CachedResponse {
                    body: Bytes::copy_from_slice(&body),
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

    fn key(body: &'static str, bucket: i64) -> ResponseKey {
        ResponseKey::new(Bytes::from_static(body.as_bytes()), bucket)
    }

    #[test]
    fn the_key_is_the_exact_request_and_its_bucket() {
        let a = key(r#"{"query":"{ a }","variables":{"id":"1"}}"#, 7);
        assert_eq!(a, key(r#"{"query":"{ a }","variables":{"id":"1"}}"#, 7));
        assert_ne!(a, key(r#"{"query":"{ a }","variables":{"id":"2"}}"#, 7));
        assert_ne!(a, key(r#"{"query":"{ a }","variables":{"id":"1"}}"#, 8));
        // Another spelling is another entry, whatever it means.
        assert_ne!(a, key(r#"{"query":"{a}","variables":{"id":"1"}}"#, 7));
        // A GET's query string is never a POST's body.
        let bytes = Bytes::from_static(b"query=%7B%20a%20%7D");
        assert_ne!(
            ResponseKey::new(bytes.clone(), 7),
            ResponseKey::for_query_string(bytes, 7)
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
    fn an_entry_keeps_no_buffer_its_request_or_body_was_sliced_from() {
        let c = ResponseCache::new(1 << 20, Duration::from_secs(30));
        // What hyper hands over: the body, a slice of the read buffer that
        // also held the headers.
        let read_buffer = Bytes::from(vec![b'x'; 300 * 1024]);
        let body = read_buffer.slice(1000..1020);
        let serialised = Bytes::from(vec![b'{'; 64 * 1024]).slice(0..2);
        let k = ResponseKey::new(body, 0);
        c.insert(
            k.clone(),
            serialised.clone(),
            vec![],
            Duration::from_secs(5),
        );
        assert!(c.get(&k).is_some());
        drop(k);
        assert!(read_buffer.is_unique(), "the key holds the read buffer");
        assert!(serialised.is_unique(), "the entry holds the spare capacity");
    }

    #[test]
    fn a_zero_size_cache_is_off() {
        let c = ResponseCache::new(0, Duration::from_secs(30));
        let key = key(r#"{"query":"{ a }"}"#, 0);
        c.insert(
            key.clone(),
            Bytes::from_static(b"{}"),
            vec![],
            Duration::from_secs(5),
        );
        assert!(c.get(&key).is_none());
    }
}
