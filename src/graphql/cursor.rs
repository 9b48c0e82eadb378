//! Opaque cursors. A cursor carries the activity, the resolved range and the
//! item's offset, so page 2 is cut from the same pinned window as page 1 and a
//! cursor cannot be replayed against another list.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::DateTime;

use crate::paging::{ActivityId, ResolvedRange};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub activity: ActivityId,
    pub range: ResolvedRange,
    pub offset: u64,
}

const VERSION: &str = "v1";

impl Cursor {
    pub fn encode(&self) -> String {
        let raw = format!(
            "{VERSION}:{}:{}:{}:{}",
            self.activity,
            self.range.from.timestamp_millis(),
            self.range.to.timestamp_millis(),
            self.offset
        );
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// `None` for anything that is not a cursor this gateway made.
    pub fn decode(s: &str) -> Option<Self> {
        if s.len() > 128 {
            return None;
        }
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(s).ok()?).ok()?;
        let mut parts = raw.split(':');
        if parts.next()? != VERSION {
            return None;
        }
        let activity = ActivityId::parse(parts.next()?).ok()?;
        let from = DateTime::from_timestamp_millis(parts.next()?.parse().ok()?)?;
        let to = DateTime::from_timestamp_millis(parts.next()?.parse().ok()?)?;
        let offset = parts.next()?.parse().ok()?;
        if parts.next().is_some() || from >= to {
            return None;
        }
        Some(Self {
            activity,
            range: ResolvedRange { from, to },
            offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_cursor_round_trips() {
        let c = Cursor {
            activity: ActivityId::parse("10024069").unwrap(),
            range: ResolvedRange {
                from: DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
                to: DateTime::from_timestamp_millis(1_700_600_000_000).unwrap(),
            },
            offset: 41,
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
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
                prop_assert!(c.range.from < c.range.to);
            }
        }
    }
}
