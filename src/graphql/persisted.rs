//! Persisted queries (docs/api.md): a request may name its document instead of
//! sending it.
//!
//! - Automatic persisted queries, Apollo's protocol:
//!   `extensions.persistedQuery {version: 1, sha256Hash}`. An unknown hash
//!   is `PERSISTED_QUERY_NOT_FOUND` (the client then sends the query with
//!   its hash); a query sent with a hash that is not its SHA-256 is refused
//!   and not stored. Queries are kept in a byte-bounded moka cache, so a
//!   client cannot grow the gateway's memory.
//! - Trusted documents, from the manifest of `PERSISTED_QUERIES_FILE`
//!   ([`Manifest`]): named by `documentId` (GraphQL over HTTP's persisted
//!   documents: a custom id, or `sha256:<hex>`), `doc_id` (Relay), or an
//!   APQ hash. Manifest operations are always known.
//! - With `PERSISTED_QUERIES_ONLY`, only the manifest's operations run: a
//!   query text runs only when it is exactly one of them, and APQ stores
//!   nothing; anything else is `PERSISTED_QUERY_NOT_ALLOWED`.

use std::sync::Arc;

use moka::sync::Cache;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::manifest::Manifest;

/// Bytes of query text kept at most.
pub const MAX_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Clone)]
pub struct PersistedQueries {
    /// By SHA-256, 32 bytes.
    cache: Cache<[u8; 32], Arc<str>>,
    manifest: Option<Arc<Manifest>>,
    only: bool,
}

/// Why a request's persisted query cannot run.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The id or hash is not known: send the query with it.
    NotFound,
    /// `PERSISTED_QUERIES_ONLY` and the document is not the manifest's; the
    /// message says what was refused.
    NotAllowed(String),
    /// Anything else wrong with the request's persisted query; the message
    /// says what.
    Invalid(String),
}

impl Default for PersistedQueries {
    fn default() -> Self {
        Self::new(MAX_BYTES, None, false)
    }
}

impl PersistedQueries {
    /// `only` without a manifest runs nothing (settings refuse that pair).
    pub fn new(max_bytes: u64, manifest: Option<Arc<Manifest>>, only: bool) -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_: &[u8; 32], q: &Arc<str>| {
                    u32::try_from(q.len() + 64).unwrap_or(u32::MAX)
                })
                .build(),
            manifest,
            only,
        }
    }

    /// Whether only the manifest's operations run.
    pub fn only(&self) -> bool {
        self.only
    }

    /// The query to run: `query` itself when the request names no document;
    /// the named document when it sends no query; `query` again, now
    /// stored, when it sends both an APQ hash and the query of that hash.
    /// `Ok(None)`: neither a query nor a name.
    pub fn resolve(
        &self,
        query: Option<&str>,
        document_id: Option<&str>,
        extensions: Option<&Map<String, Value>>,
    ) -> Result<Option<Arc<str>>, Refusal> {
        let query = query.filter(|q| !q.is_empty());
        let persisted = extensions.and_then(|e| e.get("persistedQuery"));
        if let Some(id) = document_id {
            if query.is_some() || persisted.is_some() {
                return Err(Refusal::Invalid(
                    "name the document once: `documentId` (or `doc_id`) without `query` or \
                     `extensions.persistedQuery`"
                        .into(),
                ));
            }
            return self.by_document_id(id).map(Some).ok_or(Refusal::NotFound);
        }
        let Some(persisted) = persisted else {
            return match query {
                Some(q) if self.only && !self.in_manifest(q) => Err(Refusal::NotAllowed(
                    "this gateway runs only the operations of its manifest \
                     (PERSISTED_QUERIES_ONLY): send one by id, as the client build that has it does"
                        .into(),
                )),
                q => Ok(q.map(Arc::from)),
            };
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
            .and_then(decode_sha256)
            .ok_or_else(|| invalid("sha256Hash must be 64 hex digits"))?;
        let known = self.manifest.as_ref().and_then(|m| m.by_hash(&hash));
        match query {
            None => known
                .or_else(|| (!self.only).then(|| self.cache.get(&hash)).flatten())
                .map(Some)
                .ok_or(Refusal::NotFound),
            Some(query) => {
                let actual: [u8; 32] = Sha256::digest(query.as_bytes()).into();
                if actual != hash {
                    return Err(invalid("provided sha does not match query"));
                }
                if let Some(known) = known {
                    return Ok(Some(known));
                }
                if self.only {
                    return Err(Refusal::NotAllowed(
                        "this gateway runs only the operations of its manifest \
                         (PERSISTED_QUERIES_ONLY): a query cannot be registered"
                            .into(),
                    ));
                }
                let query: Arc<str> = Arc::from(query);
                self.cache.insert(hash, query.clone());
                Ok(Some(query))
            }
        }
    }

    /// A `documentId`/`doc_id`: the manifest's id, else a `sha256:<hex>`
    /// of a manifest operation or (unless only the manifest runs) of a
    /// query stored by APQ.
    fn by_document_id(&self, id: &str) -> Option<Arc<str>> {
        if let Some(found) = self.manifest.as_ref().and_then(|m| m.by_id(id)) {
            return Some(found);
        }
        let hash = decode_sha256(id.strip_prefix("sha256:")?)?;
        self.manifest
            .as_ref()
            .and_then(|m| m.by_hash(&hash))
            .or_else(|| (!self.only).then(|| self.cache.get(&hash)).flatten())
    }

    /// Whether `text` is exactly an operation of the manifest.
    pub fn in_manifest(&self, text: &str) -> bool {
        self.manifest
            .as_ref()
            .is_some_and(|m| m.contains_text(text))
    }
}

fn decode_sha256(h: &str) -> Option<[u8; 32]> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(h, &mut bytes).ok()?;
    Some(bytes)
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
        assert_eq!(
            p.resolve(None, None, Some(&ext(&hash))),
            Err(Refusal::NotFound)
        );
        assert_eq!(
            p.resolve(Some(q), None, Some(&ext(&hash)))
                .unwrap()
                .as_deref(),
            Some(q)
        );
        assert_eq!(
            p.resolve(None, None, Some(&ext(&hash))).unwrap().as_deref(),
            Some(q)
        );
        // Upper-case hex is the same hash.
        assert_eq!(
            p.resolve(None, None, Some(&ext(&hash.to_uppercase())))
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
            p.resolve(Some("{ b }"), None, Some(&ext(&hash))),
            Err(Refusal::Invalid(m)) if m.contains("does not match")
        ));
        assert_eq!(
            p.resolve(None, None, Some(&ext(&hash))),
            Err(Refusal::NotFound)
        );
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
                matches!(p.resolve(None, None, Some(&e)), Err(Refusal::Invalid(_))),
                "{e:?}"
            );
        }
        // No persisted query: the query as sent.
        assert_eq!(
            p.resolve(Some("{ a }"), None, None).unwrap().as_deref(),
            Some("{ a }")
        );
        assert_eq!(p.resolve(Some(""), None, None).unwrap(), None);
    }

    fn with_manifest(only: bool) -> (PersistedQueries, &'static str, String) {
        let q = "query Count { __typename }";
        let text = json!({ "relay-id-1": q }).to_string();
        let m = Manifest::parse(text.as_bytes()).unwrap();
        let p = PersistedQueries::new(MAX_BYTES, Some(Arc::new(m)), only);
        (p, q, hex::encode(Sha256::digest(q)))
    }

    #[test]
    fn manifest_operations_are_known_by_id_sha256_document_id_and_apq_hash() {
        for only in [false, true] {
            let (p, q, hash) = with_manifest(only);
            let found = |r: Result<Option<Arc<str>>, Refusal>| r.unwrap().unwrap().to_string();
            assert_eq!(found(p.resolve(None, Some("relay-id-1"), None)), q);
            let sha_id = format!("sha256:{hash}");
            assert_eq!(found(p.resolve(None, Some(&sha_id), None)), q);
            assert_eq!(found(p.resolve(None, None, Some(&ext(&hash)))), q);
            // The manifest's text with its hash registers nothing, and runs.
            assert_eq!(found(p.resolve(Some(q), None, Some(&ext(&hash)))), q);
            assert_eq!(p.resolve(None, Some("nope"), None), Err(Refusal::NotFound));
            assert!(matches!(
                p.resolve(Some(q), Some("relay-id-1"), None),
                Err(Refusal::Invalid(_))
            ));
            assert!(matches!(
                p.resolve(None, Some("relay-id-1"), Some(&ext(&hash))),
                Err(Refusal::Invalid(_))
            ));
        }
    }

    #[test]
    fn only_the_manifest_runs_in_only_mode() {
        let (p, q, _) = with_manifest(true);
        assert!(p.only());
        // The manifest's exact text runs; any other text does not.
        assert_eq!(p.resolve(Some(q), None, None).unwrap().as_deref(), Some(q));
        assert!(matches!(
            p.resolve(Some("{ __typename }"), None, None),
            Err(Refusal::NotAllowed(_))
        ));
        // APQ registration is refused, and stores nothing.
        let other = "{ __typename }";
        let hash = hex::encode(Sha256::digest(other));
        assert!(matches!(
            p.resolve(Some(other), None, Some(&ext(&hash))),
            Err(Refusal::NotAllowed(_))
        ));
        assert_eq!(
            p.resolve(None, None, Some(&ext(&hash))),
            Err(Refusal::NotFound)
        );
        assert_eq!(
            p.resolve(None, Some(&format!("sha256:{hash}")), None),
            Err(Refusal::NotFound)
        );
        // Without only mode, the same registration works, and its
        // `sha256:` document id finds it.
        let (p, _, _) = with_manifest(false);
        assert_eq!(
            p.resolve(Some(other), None, Some(&ext(&hash)))
                .unwrap()
                .as_deref(),
            Some(other)
        );
        assert_eq!(
            p.resolve(None, Some(&format!("sha256:{hash}")), None)
                .unwrap()
                .as_deref(),
            Some(other)
        );
    }
}
