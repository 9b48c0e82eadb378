//! Automatic persisted queries, Apollo's protocol (SPEC §6): a request may
//! send `extensions.persistedQuery {version: 1, sha256Hash}` instead of its
//! query. An unknown hash is `PERSISTED_QUERY_NOT_FOUND` (the client then
//! sends the query with its hash); a query sent with a hash that is not its
//! SHA-256 is refused and not stored. Queries are kept in a byte-bounded
//! moka cache, so a client cannot grow the gateway's memory.

use std::sync::Arc;

use moka::sync::Cache;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Bytes of query text kept at most.
pub const MAX_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Clone)]
pub struct PersistedQueries {
    /// By SHA-256, 32 bytes.
    cache: Cache<[u8; 32], Arc<str>>,
}

/// Why a request's persisted query cannot run.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The hash is not known: send the query with it.
    NotFound,
    /// Anything else wrong with `persistedQuery`; the message says what.
    Invalid(String),
}

impl Default for PersistedQueries {
    fn default() -> Self {
        Self::new(MAX_BYTES)
    }
}

impl PersistedQueries {
    pub fn new(max_bytes: u64) -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_: &[u8; 32], q: &Arc<str>| {
                    u32::try_from(q.len() + 64).unwrap_or(u32::MAX)
                })
                .build(),
        }
    }

    /// The query to run: `query` itself when the request persists nothing;
    /// the stored query of its hash when it sends none; `query` again, now
    /// stored, when it sends both and the hash is the query's. `Ok(None)`:
    /// neither a query nor a persisted query.
    pub fn resolve(
        &self,
        query: Option<&str>,
        extensions: Option<&Map<String, Value>>,
    ) -> Result<Option<Arc<str>>, Refusal> {
        let query = query.filter(|q| !q.is_empty());
        let Some(persisted) = extensions.and_then(|e| e.get("persistedQuery")) else {
            return Ok(query.map(Arc::from));
        };
        let invalid = |m: &str| Refusal::Invalid(format!("extensions.persistedQuery: {m}"));
        let Some(persisted) = persisted.as_object() else {
            return Err(invalid("must be an object {version: 1, sha256Hash}"));
        };
        if persisted.get("version").and_then(Value::as_u64) != Some(1) {
            return Err(invalid("only version 1 is supported"));
        }
        let hash = persisted
            .get("sha256Hash")
            .and_then(Value::as_str)
            .and_then(|h| {
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(h, &mut bytes).ok()?;
                Some(bytes)
            })
            .ok_or_else(|| invalid("sha256Hash must be 64 hex digits"))?;
        match query {
            None => self.cache.get(&hash).map(Some).ok_or(Refusal::NotFound),
            Some(query) => {
                let actual: [u8; 32] = Sha256::digest(query.as_bytes()).into();
                if actual != hash {
                    return Err(invalid("provided sha does not match query"));
                }
                let query: Arc<str> = Arc::from(query);
                self.cache.insert(hash, query.clone());
                Ok(Some(query))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ext(hash: &str) -> Map<String, Value> {
        json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } })
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn a_hash_is_known_once_its_query_came_with_it() {
        let p = PersistedQueries::default();
        let q = "{ __typename }";
        let hash = hex::encode(Sha256::digest(q));
        assert_eq!(p.resolve(None, Some(&ext(&hash))), Err(Refusal::NotFound));
        assert_eq!(
            p.resolve(Some(q), Some(&ext(&hash))).unwrap().as_deref(),
            Some(q)
        );
        assert_eq!(
            p.resolve(None, Some(&ext(&hash))).unwrap().as_deref(),
            Some(q)
        );
        // Upper-case hex is the same hash.
        assert_eq!(
            p.resolve(None, Some(&ext(&hash.to_uppercase())))
                .unwrap()
                .as_deref(),
            Some(q)
        );
    }

    #[test]
    fn a_query_with_another_querys_hash_is_refused_and_not_stored() {
        let p = PersistedQueries::default();
        let hash = hex::encode(Sha256::digest("{ a }"));
        assert!(matches!(
            p.resolve(Some("{ b }"), Some(&ext(&hash))),
            Err(Refusal::Invalid(m)) if m.contains("does not match")
        ));
        assert_eq!(p.resolve(None, Some(&ext(&hash))), Err(Refusal::NotFound));
    }

    #[test]
    fn a_malformed_persisted_query_is_refused() {
        let p = PersistedQueries::default();
        for e in [
            json!({ "persistedQuery": 5 }),
            json!({ "persistedQuery": { "version": 2, "sha256Hash": "00" } }),
            json!({ "persistedQuery": { "version": 1, "sha256Hash": "zz" } }),
            json!({ "persistedQuery": { "version": 1 } }),
        ] {
            let e = e.as_object().unwrap().clone();
            assert!(
                matches!(p.resolve(None, Some(&e)), Err(Refusal::Invalid(_))),
                "{e:?}"
            );
        }
        // No persisted query: the query as sent.
        assert_eq!(
            p.resolve(Some("{ a }"), None).unwrap().as_deref(),
            Some("{ a }")
        );
        assert_eq!(p.resolve(Some(""), None).unwrap(), None);
    }
}
