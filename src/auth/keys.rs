//! API keys: a file of `<name> <sha256-hex of the key> <ids or *>` lines, so
//! no plaintext key is stored. Lookups compare hashes in constant time and the
//! file is re-read when it changes (a mounted Secret rotates in place).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Principal, Scope};
use crate::secret::Watched;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    pub name: String,
    /// The principal's name, `key:<name>`, made once.
    pub client: Arc<str>,
    pub hash: [u8; 32],
    pub scope: Scope,
}

/// Parses the keys file; errors name the line.
pub fn parse(text: &str) -> Result<Vec<KeyEntry>, String> {
    let mut entries: Vec<KeyEntry> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let n = i + 1;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, hash, scope] = fields[..] else {
            return Err(format!(
                "line {n}: expected `<name> <sha256-hex> <activity ids or *>`"
            ));
        };
        let mut digest = [0u8; 32];
        hex::decode_to_slice(hash, &mut digest)
            .map_err(|_| format!("line {n}: the hash must be 64 hex digits (sha256 of the key)"))?;
        let scope = Scope::parse(scope).map_err(|e| format!("line {n}: {e}"))?;
        if entries.iter().any(|e| e.name == name) {
            return Err(format!("line {n}: the name {name:?} is used twice"));
        }
        entries.push(KeyEntry {
            name: name.to_owned(),
            client: format!("key:{name}").into(),
            hash: digest,
            scope,
        });
    }
    Ok(entries)
}

fn read(path: &Path) -> Result<Vec<KeyEntry>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("API_KEYS_FILE: cannot read {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("API_KEYS_FILE {}: {e}", path.display()))
}

pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[derive(Clone)]
pub struct ApiKeys {
    entries: Watched<Vec<KeyEntry>>,
}

impl ApiKeys {
    pub fn load(path: PathBuf) -> Result<Self, String> {
        let entries = Watched::load(path.clone(), read)?;
        if entries.get().is_empty() {
            tracing::warn!(file = %path.display(), "API_KEYS_FILE holds no key: every keyed request will be refused");
        }
        Ok(Self { entries })
    }

    /// The principal of a key. Every entry is compared, in constant time, so
    /// the time taken says nothing about which hashes are near.
    pub fn lookup(&self, key: &str) -> Option<Principal> {
        let presented = hash_key(key);
        let entries = self.entries.get();
        let mut found = None;
        for e in entries.iter() {
            if bool::from(e.hash.ct_eq(&presented)) {
                found = Some(e);
            }
        }
        found.map(|e| Principal {
            name: e.client.clone(),
            scope: e.scope.clone(),
        })
    }

    pub fn spawn_reload(&self, every: Duration) {
        self.entries.spawn_reload(every, "API keys");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex_of(key: &str) -> String {
        hex::encode(hash_key(key))
    }

    #[test]
    fn a_keys_file_is_parsed_with_comments_and_scopes() {
        let text = format!(
            "# frontend keys\n\nweb {} 10024069,10024070  # the web app\nops {} *\n",
            hex_of("k1"),
            hex_of("k2")
        );
        let entries = parse(&text).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].scope, Scope::All);
        let Scope::Only(ids) = &entries[0].scope else {
            panic!()
        };
        assert!(ids.contains(&10024069) && ids.contains(&10024070));
    }

    #[test]
    fn malformed_lines_are_refused_with_their_number() {
        for (text, hint) in [
            ("web abc *", "line 1: the hash"),
            (&format!("\nweb {} ../1", hex_of("k")) as &str, "line 2"),
            (&format!("web {}", hex_of("k")), "line 1: expected"),
            (&format!("a {h} *\na {h} *", h = hex_of("k")), "twice"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(hint), "{text:?}: {e}");
        }
    }

    #[test]
    fn keys_are_found_by_hash_only() {
        let dir = std::env::temp_dir().join(format!("vg-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("keys");
        std::fs::write(&f, format!("web {} 7\n", hex_of("secret-key"))).unwrap();
        let keys = ApiKeys::load(f).unwrap();
        let p = keys.lookup("secret-key").unwrap();
        assert_eq!(&*p.name, "key:web");
        assert!(keys.lookup("secret-key ").is_none());
        assert!(
            keys.lookup(&hex_of("secret-key")).is_none(),
            "the hash itself is not a key"
        );
    }

    proptest! {
        #[test]
        fn parsing_any_text_never_panics(text in "(?s).{0,400}") {
            let _ = parse(&text);
        }

        #[test]
        fn parsing_near_valid_lines_never_panics(name in "[a-z]{1,8}", hash in "[0-9a-f]{0,70}", scope in "[0-9,* ]{0,30}") {
            let _ = parse(&format!("{name} {hash} {scope}"));
        }
    }
}
