//! The timeline's buckets in a time zone (docs/api.md, `userVisitStats`):
//! aligned to the interval on the zone's wall clock, by the IANA database
//! (chrono-tz).
//!
//! A bucket holds the instants whose local time falls in the same interval
//! (the same local date for `DAY`), while it does: the next bucket starts at
//! the first instant whose local time falls in another. So a `DAY` starts at
//! local midnight and lasts 23 or 25 hours across a clock change; where a
//! local midnight does not exist (a clock that jumps over it), the day starts
//! at its first instant. Sub-day intervals count on the local wall clock
//! (an `HOUR` in `Asia/Kathmandu`, `+05:45`, starts at :15 UTC), and one
//! lasts longer or shorter when the clock changes inside it.

use chrono::{DateTime, Duration, NaiveDateTime, Offset, TimeZone, Timelike};
use chrono_tz::Tz;

use crate::error::GatewayError;

/// The most buckets one timeline may have.
pub const MAX_BUCKETS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    Minute,
    FiveMinutes,
    FifteenMinutes,
    Hour,
    Day,
}

impl Interval {
    /// Minutes of a sub-day interval (each divides a day).
    fn minutes(self) -> Option<u32> {
        match self {
            Self::Minute => Some(1),
            Self::FiveMinutes => Some(5),
            Self::FifteenMinutes => Some(15),
            Self::Hour => Some(60),
            Self::Day => None,
        }
    }
}

/// An IANA time zone by name, such as `Asia/Shanghai` or `UTC`.
pub fn zone(name: &str) -> Result<Tz, GatewayError> {
    name.parse::<Tz>().map_err(|_| {
        GatewayError::bad_input(format!(
            "timeZone {name:?} is not an IANA time zone name such as \"Asia/Shanghai\" or \"UTC\""
        ))
    })
}

/// The buckets of one interval in one zone.
#[derive(Debug, Clone, Copy)]
pub struct Calendar {
    pub interval: Interval,
    pub zone: Tz,
}

fn instant(ms: i64) -> DateTime<chrono::Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<chrono::Utc>::MAX_UTC)
}

fn wall_ms(local: NaiveDateTime) -> i64 {
    local.and_utc().timestamp_millis()
}

impl Calendar {
    pub fn new(interval: Interval, zone: Tz) -> Self {
        Self { interval, zone }
    }

    /// The zone's offset from UTC at an instant, ms.
    fn offset(&self, t: i64) -> i64 {
        let offset = self.zone.offset_from_utc_datetime(&instant(t).naive_utc());
        i64::from(offset.fix().local_minus_utc()) * 1000
    }

    /// The local start of the interval holding the instant's local time.
    fn label(&self, t: i64) -> NaiveDateTime {
        let local = instant(t).with_timezone(&self.zone).naive_local();
        let midnight = local.date().and_time(chrono::NaiveTime::MIN);
        match self.interval.minutes() {
            None => midnight,
            Some(step) => {
                let minute = local.hour() * 60 + local.minute();
                midnight + Duration::minutes(i64::from(minute - minute % step))
            }
        }
    }

    /// The local start of the interval after `label`.
    fn after(&self, label: NaiveDateTime) -> NaiveDateTime {
        match self.interval.minutes() {
            None => label + Duration::days(1),
            Some(step) => label + Duration::minutes(i64::from(step)),
        }
    }

    /// The start of the next bucket: the first instant after `t` whose local
    /// time falls in another interval than `t`'s.
    pub fn next_start(&self, t: i64) -> i64 {
        let label = self.label(t);
        let wall = wall_ms(self.after(label));
        let mut from = t;
        loop {
            let offset = self.offset(from);
            // When the wall clock shows the next interval's start, if the
            // offset stays: strictly after `from`, whose local time is earlier.
            let candidate = wall - offset;
            if self.offset(candidate) == offset {
                return candidate;
            }
            // The clock changes first: find the first instant of the new offset.
            let (mut same, mut changed) = (from, candidate);
            while changed - same > 1 {
                let mid = same + (changed - same) / 2;
                if self.offset(mid) == offset {
                    same = mid;
                } else {
                    changed = mid;
                }
            }
            if self.label(changed) != label {
                return changed;
            }
            // The change stays within the interval (a clock turned back):
            // go on from there with the new offset.
            from = changed;
        }
    }

    /// The start of the bucket holding `t`.
    pub fn start_of(&self, t: i64) -> i64 {
        let offset = self.offset(t);
        let start = wall_ms(self.label(t)) - offset;
        if self.offset(start) == offset && self.offset(start - 1) == offset {
            return start;
        }
        // Near a clock change: walk from two days before, bucket by bucket.
        let mut start = self.next_start(t - Duration::days(2).num_milliseconds());
        loop {
            let next = self.next_start(start);
            if next > t {
                return start;
            }
            start = next;
        }
    }

    /// The timeline's bucket bounds over `[from, to)` (ms): the start of the
    /// bucket holding `from`, each next start up to the bucket holding
    /// `to - 1`, then that bucket's end. More than [`MAX_BUCKETS`] buckets
    /// is `BAD_USER_INPUT`, found before any is built.
    pub fn bounds(&self, from: i64, to: i64) -> Result<Vec<i64>, GatewayError> {
        let mut bounds = vec![self.start_of(from)];
        loop {
            let last = *bounds.last().expect("one bound at least");
            if last >= to {
                return Ok(bounds);
            }
            if bounds.len() > MAX_BUCKETS {
                return Err(GatewayError::bad_input(format!(
                    "this timeline would have more than {MAX_BUCKETS} buckets: ask for a longer interval or a shorter range"
                )));
            }
            bounds.push(self.next_start(last));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ZONES: [&str; 7] = [
        "UTC",
        "America/New_York",
        "Asia/Kathmandu",
        "Australia/Lord_Howe",
        "America/Santiago",
        "Europe/London",
        "Pacific/Chatham",
    ];
    const INTERVALS: [Interval; 5] = [
        Interval::Minute,
        Interval::FiveMinutes,
        Interval::FifteenMinutes,
        Interval::Hour,
        Interval::Day,
    ];

    proptest! {
        #[test]
        fn a_bucket_is_a_run_of_one_local_interval(
            // 2020 to 2030, and often near a clock change.
            t in 1_577_836_800_000i64..1_893_456_000_000,
            zone_index in 0..ZONES.len(),
            interval_index in 0..INTERVALS.len(),
        ) {
            let c = Calendar::new(INTERVALS[interval_index], zone(ZONES[zone_index]).unwrap());
            let start = c.start_of(t);
            let next = c.next_start(start);
            prop_assert!(start <= t && t < next, "{start} {t} {next}");
            prop_assert_eq!(c.label(start), c.label(t));
            prop_assert_eq!(c.label(next - 1), c.label(t));
            prop_assert_ne!(c.label(start - 1), c.label(start));
            prop_assert_ne!(c.label(next), c.label(t));
            prop_assert!(next - start <= Duration::hours(26).num_milliseconds());
        }
    }

    fn ms(s: &str) -> i64 {
        crate::time::parse_rfc3339(s).unwrap().timestamp_millis()
    }

    fn show(bounds: &[i64]) -> Vec<String> {
        bounds
            .iter()
            .map(|&b| crate::time::format(instant(b)))
            .collect()
    }

    #[test]
    fn new_york_days_last_23_hours_in_march_and_25_in_november() {
        let ny = Calendar::new(Interval::Day, zone("America/New_York").unwrap());
        let spring = ny
            .bounds(ms("2026-03-07T12:00:00Z"), ms("2026-03-09T12:00:00Z"))
            .unwrap();
        assert_eq!(
            show(&spring),
            [
                "2026-03-07T05:00:00.000Z",
                "2026-03-08T05:00:00.000Z",
                "2026-03-09T04:00:00.000Z",
                "2026-03-10T04:00:00.000Z",
            ]
        );
        assert_eq!(
            spring[2] - spring[1],
            Duration::hours(23).num_milliseconds()
        );
        let fall = ny
            .bounds(ms("2026-11-01T04:00:00Z"), ms("2026-11-02T05:00:00Z"))
            .unwrap();
        assert_eq!(
            show(&fall),
            ["2026-11-01T04:00:00.000Z", "2026-11-02T05:00:00.000Z"]
        );
        // From inside the long day: its bucket still starts at local midnight.
        assert_eq!(
            ny.start_of(ms("2026-11-01T06:30:00Z")),
            ms("2026-11-01T04:00:00Z")
        );
        assert_eq!(
            ny.start_of(ms("2026-03-08T07:00:00Z")),
            ms("2026-03-08T05:00:00Z")
        );
    }

    #[test]
    fn hours_across_new_york_clock_changes() {
        let ny = Calendar::new(Interval::Hour, zone("America/New_York").unwrap());
        // 01:00 EST, then 03:00 EDT: the local 02:00 hour does not exist.
        let spring = ny
            .bounds(ms("2026-03-08T06:00:00Z"), ms("2026-03-08T08:00:00Z"))
            .unwrap();
        assert_eq!(
            show(&spring),
            [
                "2026-03-08T06:00:00.000Z",
                "2026-03-08T07:00:00.000Z",
                "2026-03-08T08:00:00.000Z"
            ]
        );
        // The local 01:00 hour happens twice in a row: one bucket of two hours.
        let fall = ny
            .bounds(ms("2026-11-01T05:00:00Z"), ms("2026-11-01T08:00:00Z"))
            .unwrap();
        assert_eq!(
            show(&fall),
            [
                "2026-11-01T05:00:00.000Z",
                "2026-11-01T07:00:00.000Z",
                "2026-11-01T08:00:00.000Z"
            ]
        );
        // Quarter hours: 01:45 EDT, then 01:00 EST starts anew.
        let q = Calendar::new(Interval::FifteenMinutes, ny.zone);
        assert_eq!(
            q.next_start(ms("2026-11-01T05:50:00Z")),
            ms("2026-11-01T06:00:00Z")
        );
        assert_eq!(
            q.start_of(ms("2026-11-01T06:05:00Z")),
            ms("2026-11-01T06:00:00Z")
        );
    }

    #[test]
    fn sub_day_intervals_follow_the_local_wall_clock() {
        let kathmandu = zone("Asia/Kathmandu").unwrap(); // +05:45
        let hour = Calendar::new(Interval::Hour, kathmandu);
        let b = hour
            .bounds(ms("2026-06-01T00:00:00Z"), ms("2026-06-01T01:20:00Z"))
            .unwrap();
        assert_eq!(
            show(&b),
            [
                "2026-05-31T23:15:00.000Z",
                "2026-06-01T00:15:00.000Z",
                "2026-06-01T01:15:00.000Z",
                "2026-06-01T02:15:00.000Z"
            ]
        );
        let kolkata = Calendar::new(Interval::FifteenMinutes, zone("Asia/Kolkata").unwrap());
        assert_eq!(
            kolkata.start_of(ms("2026-06-01T00:10:00Z")),
            ms("2026-06-01T00:00:00Z")
        );
        let day = Calendar::new(Interval::Day, kathmandu);
        assert_eq!(
            day.start_of(ms("2026-06-01T12:00:00Z")),
            ms("2026-05-31T18:15:00Z")
        );
    }

    #[test]
    fn a_half_hour_clock_change_makes_a_short_hour() {
        // Lord Howe Island: +10:30, then +11 from 2026-10-04 02:00 local.
        let lh = Calendar::new(Interval::Hour, zone("Australia/Lord_Howe").unwrap());
        let b = lh
            .bounds(ms("2026-10-03T14:30:00Z"), ms("2026-10-03T16:30:00Z"))
            .unwrap();
        assert_eq!(
            show(&b),
            [
                "2026-10-03T14:30:00.000Z",
                "2026-10-03T15:30:00.000Z",
                "2026-10-03T16:00:00.000Z",
                "2026-10-03T17:00:00.000Z"
            ]
        );
    }

    #[test]
    fn a_day_whose_midnight_does_not_exist_starts_at_its_first_instant() {
        // Santiago: clocks jump from 2026-09-06 00:00 to 01:00 (-04 to -03).
        let day = Calendar::new(Interval::Day, zone("America/Santiago").unwrap());
        let b = day
            .bounds(ms("2026-09-05T12:00:00Z"), ms("2026-09-06T12:00:00Z"))
            .unwrap();
        assert_eq!(
            show(&b),
            [
                "2026-09-05T04:00:00.000Z",
                "2026-09-06T04:00:00.000Z",
                "2026-09-07T03:00:00.000Z"
            ]
        );
    }

    #[test]
    fn the_last_bucket_holds_the_instant_before_to() {
        let utc = Calendar::new(Interval::Hour, Tz::UTC);
        let b = utc
            .bounds(ms("2026-06-01T00:30:00Z"), ms("2026-06-01T02:00:00Z"))
            .unwrap();
        assert_eq!(b.len(), 3, "{:?}", show(&b));
        let b = utc
            .bounds(ms("2026-06-01T00:30:00Z"), ms("2026-06-01T02:00:00.001Z"))
            .unwrap();
        assert_eq!(b.len(), 4);
    }

    #[test]
    fn too_many_buckets_and_unknown_zones_are_bad_input() {
        let minute = Calendar::new(Interval::Minute, Tz::UTC);
        let from = ms("2026-06-01T00:00:00Z");
        let ok = minute
            .bounds(from, from + Duration::minutes(10_000).num_milliseconds())
            .unwrap();
        assert_eq!(ok.len(), 10_001);
        let err = minute
            .bounds(from, from + Duration::minutes(10_001).num_milliseconds())
            .unwrap_err();
        assert!(err.message.contains("10000"), "{err}");
        assert!(zone("Mars/Olympus").is_err());
        assert!(zone("asia/shanghai").is_err());
        assert!(zone("Asia/Shanghai").is_ok());
    }
}
