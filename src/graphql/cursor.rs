//! Opaque cursors. A cursor carries the activity, the resolved range and the
//! item's offset, so page 2 is cut from the same pinned window as page 1 and a
//! cursor cannot be replayed against another list.
//!
//! Cursors are opaque but not secret: decoding only reads the fields. Their
//! range is then held to the rules of a range passed in
//! ([`crate::paging::ResolvedRange::new`]) and their offset to the list they
//! name, by the resolver.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};

use crate::paging::{ActivityId, ResolvedRange};

/// A decoded cursor, not yet checked against any policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub activity: ActivityId,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub offset: u64,
}

const VERSION: &str = "v1";

/// The longest offset a cursor may carry: far beyond any real list, and far
/// from overflowing any arithmetic on offsets.
pub const MAX_OFFSET: u64 = 1 << 53;

impl Cursor {
    pub fn encode(activity: ActivityId, range: ResolvedRange, offset: u64) -> String {
        let raw = format!(
            "{VERSION}:{activity}:{}:{}:{offset}",
            range.from().timestamp_millis(),
            range.to().timestamp_millis(),
        );
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// `None` for anything that is not shaped like a cursor this gateway makes.
    pub fn decode(s: &str) -> Option<Self> {
        if s.len() > 128 {
            return None;
        }
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(s).ok()?).ok()?;
        let mut parts = raw.split(':');
        if parts.next()? != VERSION {
            return None;
        }
        // Digits only: `str::parse` would also take a sign.
        let number = |p: &str| {
            (p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty())
                .then(|| p.parse::<u64>().ok())
                .flatten()
        };
        let activity = ActivityId::parse(parts.next()?).ok()?;
        let time = |p: &str| DateTime::from_timestamp_millis(i64::try_from(number(p)?).ok()?);
        let from = time(parts.next()?)?;
        let to = time(parts.next()?)?;
        let offset = number(parts.next()?).filter(|o| *o <= MAX_OFFSET)?;
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            activity,
            from,
            to,
            offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::RangePolicy;
    use proptest::prelude::*;

    #[test]
    fn a_cursor_round_trips() {
        let from = DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        let to = DateTime::from_timestamp_millis(1_700_600_000_000).unwrap();
        let range = ResolvedRange::new(from, to, to, &RangePolicy::default()).unwrap();
        let activity = ActivityId::parse("10024069").unwrap();
        let c = Cursor::decode(&Cursor::encode(activity, range, 41)).unwrap();
        assert_eq!(
            (c.activity, c.from, c.to, c.offset),
            (activity, from, to, 41)
        );
    }

    #[test]
    fn signs_huge_offsets_and_trailing_parts_do_not_decode() {
        for raw in [
            "v1:7:-5:10:0",
            "v1:7:+5:10:0",
            "v1:7:5:10:-1",
            "v1:7:5:10:18446744073709551615",
            "v1:7:5:10:0:0",
            "v1:7:5:99999999999999999999:0",
            "v2:7:5:10:0",
        ] {
            assert_eq!(Cursor::decode(&URL_SAFE_NO_PAD.encode(raw)), None, "{raw}");
        }
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(s in ".{0,200}") {
            let _ = Cursor::decode(&s);
        }

        #[test]
        fn decoding_near_cursors_never_panics(a in 0u64..u64::MAX, f in any::<i64>(), t in any::<i64>(), o in any::<u64>()) {
            let raw = URL_SAFE_NO_PAD.encode(format!("v1:{a}:{f}:{t}:{o}"));
            if let Some(c) = Cursor::decode(&raw) {
                prop_assert!(c.offset <= MAX_OFFSET);
            }
        }
    }
}
