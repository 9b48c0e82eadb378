//! The one timestamp format of the platform and of our `DateTime` outputs:
//! UTC, milliseconds, `Z` (`2019-06-21T01:52:12.736Z`).

use chrono::{DateTime, SecondsFormat, Utc};

pub fn format(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses an RFC 3339 time that carries an offset; naive times are refused
/// because their meaning depends on a zone nobody stated.
pub fn parse_rfc3339(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parsing_any_text_never_panics(s in "\\PC{0,40}") {
            let _ = parse_rfc3339(&s);
        }

        #[test]
        fn any_instant_round_trips_through_the_platform_format(ms in -62_000_000_000_000i64..250_000_000_000_000) {
            let t = DateTime::from_timestamp_millis(ms).unwrap();
            prop_assert_eq!(parse_rfc3339(&format(t)), Some(t));
        }
    }

    #[test]
    fn formats_like_the_platform_and_parses_offsets() {
        let t = parse_rfc3339("2019-06-21T09:52:12.7368+08:00").unwrap();
        assert_eq!(format(t), "2019-06-21T01:52:12.736Z");
        assert!(parse_rfc3339("2019-06-21T01:52:12").is_none());
        assert!(parse_rfc3339("2019-06-21").is_none());
    }
}
