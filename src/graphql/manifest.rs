//! Trusted documents: the manifest of `PERSISTED_QUERIES_FILE`, the
//! operations a client build was compiled with, by id. Two formats, told
//! apart by their shape:
//!
//! - Apollo's `generate-persisted-query-manifest`:
//!   `{"format": "apollo-persisted-query-manifest", "version": 1,
//!   "operations": [{"id", "name", "type", "body"}]}`;
//! - relay-compiler's persisted-query output: `{"<id>": "<query text>"}`.
//!
//! Every body must parse, and an id of 64 hex digits (Apollo's default, or
//! relay's `SHA256` algorithm) must be the SHA-256 of its body, so a
//! manifest cannot name a document by another document's hash. Other ids
//! (relay's default MD5, custom ids) are taken as names: the gateway has no
//! MD5, and the file is the operator's, not a client's.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `format` of Apollo's manifest.
pub const APOLLO_FORMAT: &str = "apollo-persisted-query-manifest";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestFormat {
    Apollo,
    Relay,
}

/// The operations of a manifest, by id and by the SHA-256 of their text.
pub struct Manifest {
    pub format: ManifestFormat,
    by_id: HashMap<String, Arc<str>>,
    by_hash: HashMap<[u8; 32], Arc<str>>,
}

/// The operations' text stays out of logs and `--help`: a count says enough.
impl std::fmt::Debug for Manifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manifest")
            .field("format", &self.format)
            .field("operations", &self.by_id.len())
            .finish()
    }
}

#[derive(Deserialize)]
struct ApolloManifest {
    format: String,
    version: u64,
    operations: Vec<ApolloOperation>,
}

#[derive(Deserialize)]
struct ApolloOperation {
    id: String,
    body: String,
    name: Option<String>,
    // `type` (query, mutation, subscription) is in the document itself.
}

impl Manifest {
    /// `PERSISTED_QUERIES_FILE`, when set: read and checked once, at start,
    /// by the binary (a bad file stops it like a bad setting); the message
    /// names the setting.
    pub fn from_setting(path: Option<&Path>) -> Result<Option<Arc<Self>>, String> {
        path.map(|p| Self::load(p).map(Arc::new))
            .transpose()
            .map_err(|e| format!("PERSISTED_QUERIES_FILE: {e}"))
    }

    /// Reads and checks the file; the message says what is wrong and where.
    pub fn load(path: &Path) -> Result<Self, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not a JSON manifest: {e}"))?;
        let Value::Object(map) = value else {
            return Err(format!(
                "a manifest is a JSON object: Apollo's {{\"format\": \"{APOLLO_FORMAT}\", ...}} \
                 or relay-compiler's {{\"<id>\": \"<query>\"}}"
            ));
        };
        let mut manifest = Self {
            format: ManifestFormat::Relay,
            by_id: HashMap::new(),
            by_hash: HashMap::new(),
        };
        if map.contains_key("format") || map.contains_key("operations") {
            manifest.format = ManifestFormat::Apollo;
            let apollo: ApolloManifest = serde_json::from_value(Value::Object(map))
                .map_err(|e| format!("not an Apollo persisted query manifest: {e}"))?;
            if apollo.format != APOLLO_FORMAT {
                return Err(format!(
                    "unknown format {:?}: expected {APOLLO_FORMAT:?}",
                    apollo.format
                ));
            }
            if apollo.version != 1 {
                return Err(format!(
                    "{APOLLO_FORMAT} version {} is not supported (only 1)",
                    apollo.version
                ));
            }
            for op in apollo.operations {
                let label = op.name.unwrap_or_else(|| op.id.clone());
                manifest.add(op.id, op.body, &label)?;
            }
        } else {
            for (id, body) in map {
                let Value::String(body) = body else {
                    return Err(format!(
                        "the value of {id:?} is not a query text: a relay-compiler manifest maps \
                         ids to query texts, and an Apollo manifest has \"format\": \"{APOLLO_FORMAT}\""
                    ));
                };
                let label = id.clone();
                manifest.add(id, body, &label)?;
            }
        }
        Ok(manifest)
    }

    fn add(&mut self, id: String, body: String, label: &str) -> Result<(), String> {
        if id.is_empty() {
            return Err(format!("operation {label:?} has an empty id"));
        }
        async_graphql::parser::parse_query(&body)
            .map_err(|e| format!("operation {label:?} does not parse: {e}"))?;
        let hash: [u8; 32] = Sha256::digest(body.as_bytes()).into();
        if is_sha256_hex(&id) && !id.eq_ignore_ascii_case(&hex::encode(hash)) {
            return Err(format!(
                "operation {label:?}: its id {id} is a SHA-256 but not its body's ({})",
                hex::encode(hash)
            ));
        }
        let body: Arc<str> = Arc::from(body);
        match self.by_id.entry(id) {
            Entry::Occupied(e) if **e.get() != *body => {
                return Err(format!(
                    "id {} is given to two different operations",
                    e.key()
                ));
            }
            Entry::Occupied(_) => {}
            Entry::Vacant(e) => {
                e.insert(body.clone());
            }
        }
        self.by_hash.insert(hash, body);
        Ok(())
    }

    /// The operation named `id` in the manifest.
    pub fn by_id(&self, id: &str) -> Option<Arc<str>> {
        self.by_id.get(id).cloned()
    }

    /// The operation whose text has this SHA-256 (whatever its id).
    pub fn by_hash(&self, hash: &[u8; 32]) -> Option<Arc<str>> {
        self.by_hash.get(hash).cloned()
    }

    /// Whether `text` is exactly one of the manifest's operations.
    pub fn contains_text(&self, text: &str) -> bool {
        let hash: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        self.by_hash.contains_key(&hash)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

fn is_sha256_hex(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const Q: &str = "query Count { userVisits(activityId: \"1\") { totalCount } }";

    fn sha(text: &str) -> String {
        hex::encode(Sha256::digest(text.as_bytes()))
    }

    fn apollo(id: &str, body: &str) -> Vec<u8> {
        json!({ "format": APOLLO_FORMAT, "version": 1, "operations": [
            { "id": id, "name": "Count", "type": "query", "body": body } ] })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn an_apollo_manifest_is_read_by_id_and_by_hash() {
        let m = Manifest::parse(&apollo(&sha(Q), Q)).unwrap();
        assert_eq!(m.format, ManifestFormat::Apollo);
        assert_eq!(m.len(), 1);
        assert_eq!(m.by_id(&sha(Q)).as_deref(), Some(Q));
        let hash: [u8; 32] = Sha256::digest(Q.as_bytes()).into();
        assert_eq!(m.by_hash(&hash).as_deref(), Some(Q));
        assert!(m.contains_text(Q));
        assert!(!m.contains_text(&format!("{Q} ")));
        assert!(!format!("{m:?}").contains("userVisits"));
        // An empty list of operations is a manifest too.
        let empty = json!({ "format": APOLLO_FORMAT, "version": 1, "operations": [] });
        assert!(
            Manifest::parse(empty.to_string().as_bytes())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_relay_manifest_maps_ids_to_texts_of_any_kind_of_id() {
        let md5_like = "3be4abb81fa595e25eb725b2c6a87508";
        let text = json!({ md5_like: Q, sha(Q): Q }).to_string();
        let m = Manifest::parse(text.as_bytes()).unwrap();
        assert_eq!(m.format, ManifestFormat::Relay);
        assert_eq!(m.by_id(md5_like).as_deref(), Some(Q));
        assert_eq!(m.by_id(&sha(Q).to_uppercase()), None);
        assert_eq!(m.by_id("other"), None);
    }

    #[test]
    fn a_bad_manifest_says_what_is_wrong() {
        let other = "{ __typename }";
        for (bytes, expected) in [
            (b"{ not json".to_vec(), "not a JSON manifest"),
            (b"[1, 2]".to_vec(), "a manifest is a JSON object"),
            (
                json!({ "format": "something-else", "version": 1, "operations": [] })
                    .to_string()
                    .into_bytes(),
                "unknown format",
            ),
            (
                json!({ "format": APOLLO_FORMAT, "version": 2, "operations": [] })
                    .to_string()
                    .into_bytes(),
                "version 2",
            ),
            (
                json!({ "format": APOLLO_FORMAT, "version": 1 })
                    .to_string()
                    .into_bytes(),
                "not an Apollo persisted query manifest",
            ),
            (
                json!({ "format": APOLLO_FORMAT, "version": 1, "operations": [{ "id": "x" }] })
                    .to_string()
                    .into_bytes(),
                "missing field `body`",
            ),
            (apollo(&sha(other), Q), "is a SHA-256 but not its body's"),
            (
                json!({ sha(other): Q }).to_string().into_bytes(),
                "is a SHA-256 but not its body's",
            ),
            (apollo("custom", "query {"), "does not parse"),
            (
                json!({ "a": 5 }).to_string().into_bytes(),
                "is not a query text",
            ),
            (json!({ "": Q }).to_string().into_bytes(), "empty id"),
            (
                json!({ "format": APOLLO_FORMAT, "version": 1, "operations": [
                    { "id": "same", "body": Q }, { "id": "same", "body": other } ] })
                .to_string()
                .into_bytes(),
                "two different operations",
            ),
        ] {
            let e = Manifest::parse(&bytes).unwrap_err();
            assert!(
                e.contains(expected),
                "{}: {e}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }
}
