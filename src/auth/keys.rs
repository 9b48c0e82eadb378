//! API keys: a file of `<name> <sha256-hex of the key> <ids or *>
//! [rate=<per second>[/<burst>]]` lines, so no plaintext key is stored. Lookups compare hashes in constant time and the
//! file is re-read when it changes (a mounted Secret rotates in place).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Client, Principal, Scope};
use crate::limits::Rate;
use crate::secret::Watched;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    pub name: String,
    /// The principal's name, `key:<name>`, made once.
    pub client: Arc<str>,
    pub hash: [u8; 32],
    pub scope: Scope,
    /// The key's own request rate; `None`: CLIENT_RATE_PER_SECOND and
    /// CLIENT_BURST.
    pub rate: Option<Rate>,
}

/// The bounds of CLIENT_RATE_PER_SECOND and CLIENT_BURST.
const RATE_RANGE: std::ops::RangeInclusive<u32> = 1..=100_000;

const LINE_FORM: &str =
    "expected `<name> <sha256-hex> <activity ids or *> [rate=<per second>[/<burst>]]`";

/// The optional 4th column: `rate=<per second>` (burst: the same number) or
/// `rate=<per second>/<burst>`, whole numbers from 1 to 100000.
fn parse_rate(column: &str) -> Result<Rate, String> {
    let form = || {
        format!(
            "{column:?}: the 4th column is `rate=<per second>[/<burst>]`, whole numbers from 1 to 100000"
        )
    };
    let spec = column.strip_prefix("rate=").ok_or_else(form)?;
    let (rate, burst) = spec.split_once('/').unwrap_or((spec, spec));
    let number = |digits: &str| {
        Some(digits)
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<u32>().ok())
            .filter(|n| RATE_RANGE.contains(n))
            .ok_or_else(form)
    };
    Ok(Rate::new(number(rate)?, number(burst)?))
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
        let (name, hash, scope, rate) = match fields[..] {
            [name, hash, scope] => (name, hash, scope, None),
            [name, hash, scope, rate] => (name, hash, scope, Some(rate)),
            _ => return Err(format!("line {n}: {LINE_FORM}")),
        };
        let mut digest = [0u8; 32];
        hex::decode_to_slice(hash, &mut digest)
            .map_err(|_| format!("line {n}: the hash must be 64 hex digits (sha256 of the key)"))?;
        let scope = Scope::parse(scope).map_err(|e| format!("line {n}: {e}"))?;
        let rate = rate
            .map(parse_rate)
            .transpose()
            .map_err(|e| format!("line {n}: {e}"))?;
        if entries.iter().any(|e| e.name == name) {
            return Err(format!("line {n}: the name {name:?} is used twice"));
        }
        entries.push(KeyEntry {
            name: name.to_owned(),
            client: format!("key:{name}").into(),
            hash: digest,
            scope,
            rate,
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

    /// The client of a key. Every entry is compared, in constant time, so
    /// the time taken says nothing about which hashes are near.
    pub fn lookup(&self, key: &str) -> Option<Client> {
        let presented = hash_key(key);
        let entries = self.entries.get();
        let mut found = None;
        for e in entries.iter() {
            if bool::from(e.hash.ct_eq(&presented)) {
                found = Some(e);
            }
        }
        found.map(|e| Client {
            principal: Principal {
                name: e.client.clone(),
                scope: e.scope.clone(),
            },
            rate: e.rate,
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
    fn a_key_may_carry_its_own_rate() {
        let text = format!(
            "web {} * rate=5/10\nbatch {} 7 rate=2 # burst: the rate\nops {} *\n",
            hex_of("k1"),
            hex_of("k2"),
            hex_of("k3")
        );
        let rates: Vec<_> = parse(&text).unwrap().into_iter().map(|e| e.rate).collect();
        assert_eq!(rates, [Some(Rate::new(5, 10)), Some(Rate::new(2, 2)), None]);
    }

    #[test]
    fn malformed_lines_are_refused_with_their_number() {
        for (text, hint) in [
            ("web abc *", "line 1: the hash"),
            (&format!("\nweb {} ../1", hex_of("k")) as &str, "line 2"),
            (&format!("web {}", hex_of("k")), "line 1: expected"),
            (&format!("a {h} *\na {h} *", h = hex_of("k")), "twice"),
            (
                &format!("a {} * rate=5 extra", hex_of("k")),
                "line 1: expected",
            ),
            (
                &format!("a {} * 5", hex_of("k")),
                "line 1: \"5\": the 4th column",
            ),
            (&format!("a {} * rate=0", hex_of("k")), "line 1: \"rate=0\""),
            (
                &format!("a {} * rate=100001", hex_of("k")),
                "the 4th column",
            ),
            (&format!("a {} * rate=5/0", hex_of("k")), "the 4th column"),
            (&format!("a {} * rate=+5", hex_of("k")), "the 4th column"),
            (&format!("a {} * rate=2.5", hex_of("k")), "the 4th column"),
            (&format!("a {} * rate=5/", hex_of("k")), "the 4th column"),
            (&format!("a {} * RATE=5", hex_of("k")), "the 4th column"),
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
        let c = keys.lookup("secret-key").unwrap();
        assert_eq!(&*c.principal.name, "key:web");
        assert_eq!(c.rate, None);
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
        fn parsing_near_valid_lines_never_panics(name in "[a-z]{1,8}", hash in "[0-9a-f]{0,70}", scope in "[0-9,* ]{0,30}", rate in "(rate=)?[0-9/+-]{0,14}") {
            let _ = parse(&format!("{name} {hash} {scope}"));
            let _ = parse(&format!("{name} {hash} {scope} {rate}"));
        }

        #[test]
        fn a_rate_in_bounds_is_read_back(per_second in 1u32..=100_000, burst in proptest::option::of(1u32..=100_000)) {
            let column = match burst {
                Some(b) => format!("rate={per_second}/{b}"),
                None => format!("rate={per_second}"),
            };
            let entries = parse(&format!("k {} * {column}", hex_of("k"))).unwrap();
            prop_assert_eq!(entries[0].rate, Some(Rate::new(per_second, burst.unwrap_or(per_second))));
        }

        #[test]
        fn a_rate_out_of_bounds_is_refused(per_second in prop_oneof![Just(0u64), 100_001u64..=u64::MAX]) {
            let e = parse(&format!("k {} * rate={per_second}", hex_of("k"))).unwrap_err();
            prop_assert!(e.contains("line 1"), "{}", e);
        }
    }
}
