//! The paging plan, as pure functions: no I/O, no clock (the caller passes
//! `now`), so every rule of ranges and paging (docs/api.md) is unit- and
//! property-testable.
//!
//! A request goes through three steps:
//! 1. [`resolve_range`]: defaults, pinning and limits give a [`ResolvedRange`].
//! 2. [`split_windows`]: the range becomes abutting upstream windows of at
//!    most [`MAX_WINDOW`] (the platform's 7-day limit).
//! 3. [`select_slice`] + [`pages_for_slice`]: the client's `first/after`,
//!    `last/before` become a slice `[start, end)` of the global list, and the
//!    slice becomes the upstream pages that hold it.

use chrono::{DateTime, Duration, DurationRound, Utc};

use crate::error::GatewayError;

/// The platform answers at most this much time per request.
pub const MAX_WINDOW: Duration = Duration::days(7);

/// A platform activity id: a positive decimal integer in canonical form.
/// Once one exists it is safe to put in a URL path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActivityId(u64);

impl ActivityId {
    pub fn parse(raw: &str) -> Result<Self, GatewayError> {
        let bad = || {
            GatewayError::bad_input(format!(
                "activityId must be a positive decimal integer such as \"10024069\", got {raw:?}"
            ))
        };
        // Canonical digits only: no sign, no leading zero, no whitespace, no
        // encoding tricks. u64::from_str alone would accept "+5".
        if raw.is_empty() || raw.len() > 19 || raw.starts_with('0') {
            return Err(bad());
        }
        if !raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        raw.parse::<u64>().map(Self).map_err(|_| bad())
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for ActivityId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A client's half-open time range `[from, to)` at millisecond precision
/// (the platform's own), checked against the [`RangePolicy`]. The fields are
/// private: [`ResolvedRange::new`] is the only way to make one, for ranges
/// passed in and ranges decoded from cursors alike, so no code path holds a
/// range that breaks the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResolvedRange {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

/// One upstream request's time span: a piece of a [`ResolvedRange`] of at
/// most [`MAX_WINDOW`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// The earliest instant a range may start at: before it, the platform's
/// timestamp format (four-digit years) and its records make no sense, and
/// far enough from chrono's limits that no arithmetic on a range overflows.
pub const EARLIEST: DateTime<Utc> = DateTime::UNIX_EPOCH;

/// The limits that shape a plan; they come from the settings.
#[derive(Debug, Clone, Copy)]
pub struct RangePolicy {
    pub max_range: Duration,
    pub pin_granularity: Duration,
    pub default_range: Duration,
}

impl Default for RangePolicy {
    fn default() -> Self {
        Self {
            max_range: Duration::days(92),
            pin_granularity: Duration::seconds(60),
            default_range: Duration::days(7),
        }
    }
}

impl ResolvedRange {
    /// A range, if it keeps every rule of a range: `from` before `to`, not
    /// before [`EARLIEST`], at most the maximum span, and `to` not after now.
    pub fn new(
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        now: DateTime<Utc>,
        policy: &RangePolicy,
    ) -> Result<Self, GatewayError> {
        let (from, to) = (truncate_ms(from), truncate_ms(to));
        let show = crate::time::format;
        if from >= to {
            return Err(GatewayError::bad_input(format!(
                "range.from ({}) must be before range.to ({}); an empty range is refused",
                show(from),
                show(to)
            )));
        }
        if from < EARLIEST {
            return Err(GatewayError::bad_input(format!(
                "range.from ({}) must not be before {}",
                show(from),
                show(EARLIEST)
            )));
        }
        if to > truncate_ms(now) {
            return Err(GatewayError::bad_input(format!(
                "range.to ({}) is in the future",
                show(to)
            )));
        }
        if to - from > policy.max_range {
            return Err(GatewayError::bad_input(format!(
                "range is longer than the maximum of {} days",
                policy.max_range.num_days()
            )));
        }
        Ok(Self { from, to })
    }

    pub fn from(&self) -> DateTime<Utc> {
        self.from
    }

    /// The same range, ending later: an open range whose end moves with
    /// now (a statistics subscription). Never earlier than it ended, never
    /// after `now`; its span may grow past the maximum, which bounds what
    /// is read from the platform, not what the live poller brings.
    pub fn ending_at(self, to: DateTime<Utc>, now: DateTime<Utc>) -> Self {
        Self {
            to: truncate_ms(to.min(now)).max(self.to),
            ..self
        }
    }

    pub fn to(&self) -> DateTime<Utc> {
        self.to
    }
}

pub fn truncate_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(Duration::milliseconds(1)).unwrap_or(t)
}

/// `now` floored to the pin granularity, so that every client asking within
/// the same bucket gets the same range and shares cache entries.
pub fn pinned_now(now: DateTime<Utc>, granularity: Duration) -> DateTime<Utc> {
    now.duration_trunc(granularity)
        .unwrap_or_else(|_| truncate_ms(now))
}

/// Applies the defaults and pinning of ranges (docs/api.md) to a client's range.
pub fn resolve_range(
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    policy: &RangePolicy,
) -> Result<ResolvedRange, GatewayError> {
    let pinned = pinned_now(now, policy.pin_granularity);
    // A missing or future `to` means "up to now": pin it so the list stops moving.
    let (to, was_pinned) = match to {
        Some(t) if t <= now => (truncate_ms(t), false),
        _ => (pinned, true),
    };
    let from = match from {
        Some(f) => f,
        None => to
            .checked_sub_signed(policy.default_range)
            .unwrap_or(EARLIEST),
    };
    // A `from` inside the current pin bucket is not an empty range: it ends
    // at now, to the millisecond.
    let to = if was_pinned && truncate_ms(from) >= pinned {
        truncate_ms(now)
    } else {
        to
    };
    ResolvedRange::new(from, to, now, policy)
}

/// Splits a range into consecutive windows of at most [`MAX_WINDOW`], oldest
/// first; each window's `to` is exactly the next one's `from`.
pub fn split_windows(range: ResolvedRange) -> Vec<Window> {
    let mut windows = Vec::new();
    let mut from = range.from;
    while from < range.to {
        let to = from
            .checked_add_signed(MAX_WINDOW)
            .map_or(range.to, |t| t.min(range.to));
        windows.push(Window { from, to });
        from = to;
    }
    windows
}

/// The most platform requests one `userVisits` over `range` with a slice of
/// `slice_len` items can make, whatever is cached: one first page per window,
/// plus the pages holding the slice (at most `ceil(slice_len / page_size) + 1`
/// of them when the platform serves `page_size` items a page).
pub fn worst_case_requests(range: ResolvedRange, slice_len: u64, page_size: u64) -> u64 {
    let span = (range.to - range.from).num_milliseconds().max(1) as u64;
    let windows = span.div_ceil(MAX_WINDOW.num_milliseconds() as u64);
    windows + slice_len.div_ceil(page_size.max(1)) + 1
}

/// The client's paging arguments, validated: at most one of `first`/`last`,
/// offsets decoded from the cursors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `first` items after the offset `after` (exclusive).
    Forward { first: u64, after: Option<u64> },
    /// `last` items before the offset `before` (exclusive).
    Backward { last: u64, before: Option<u64> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceArgs {
    pub direction: Direction,
    /// `before` with `first`, or `after` with `last`: Relay allows both bounds.
    pub other_bound: Option<u64>,
}

/// A slice `[start, end)` of the global list, and whether more lies on either side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    pub start: u64,
    pub end: u64,
    pub has_previous_page: bool,
    pub has_next_page: bool,
}

/// Cuts the slice a client asked for out of a list of `total` items, the
/// Relay way: the cursors bound the list first, then `first`/`last` trim it.
/// `hasNext/PreviousPage` are exact: they say whether items exist beyond the
/// slice in the whole list.
pub fn select_slice(total: u64, args: SliceArgs) -> Slice {
    let (after, before) = match args.direction {
        Direction::Forward { after, .. } => (after, args.other_bound),
        Direction::Backward { before, .. } => (args.other_bound, before),
    };
    let mut start = after.map_or(0, |a| a.saturating_add(1)).min(total);
    let mut end = before.map_or(total, |b| b.min(total));
    if end < start {
        end = start;
    }
    match args.direction {
        Direction::Forward { first, .. } => end = end.min(start.saturating_add(first)),
        Direction::Backward { last, .. } => start = start.max(end.saturating_sub(last)),
    }
    Slice {
        start,
        end,
        has_previous_page: start > 0,
        has_next_page: end < total,
    }
}

/// What the gateway knows about one window after asking for its first page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowShape {
    /// Items in the window.
    pub total: u64,
    /// The page size the platform actually serves (it may cap ours).
    pub page_size: u64,
}

/// One upstream page to read, and which of its items belong to the slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRead {
    pub window: usize,
    /// 1-based, in units of the window's served page size.
    pub page: u64,
    /// Items of the page to skip, then to take.
    pub skip: u64,
    pub take: u64,
    /// Global offset of the first item taken.
    pub offset: u64,
}

/// Maps a global slice onto the upstream pages holding it, window by window.
/// Every offset of the slice is read exactly once, in order.
pub fn pages_for_slice(shapes: &[WindowShape], start: u64, end: u64) -> Vec<PageRead> {
    let mut reads = Vec::new();
    let mut window_start = 0u64;
    for (window, shape) in shapes.iter().enumerate() {
        let window_end = window_start + shape.total;
        let lo = start.max(window_start);
        let hi = end.min(window_end);
        if lo < hi {
            let size = shape.page_size.max(1);
            let mut local = lo - window_start;
            let local_end = hi - window_start;
            while local < local_end {
                let page = local / size;
                let page_end = ((page + 1) * size).min(local_end);
                reads.push(PageRead {
                    window,
                    page: page + 1,
                    skip: local - page * size,
                    take: page_end - local,
                    offset: window_start + local,
                });
                local = page_end;
            }
        }
        window_start = window_end;
    }
    reads
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn activity_ids_must_be_canonical_positive_decimals() {
        assert_eq!(ActivityId::parse("10024069").unwrap().get(), 10024069);
        for bad in [
            "",
            "0",
            "-5",
            "+5",
            "abc",
            "../1",
            "1/2",
            " 1",
            "01",
            "1e3",
            "%31",
            "99999999999999999999",
        ] {
            assert!(ActivityId::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_missing_range_is_the_seven_days_up_to_pinned_now() {
        let now = t("2026-11-25T10:30:45.678Z");
        let r = resolve_range(None, None, now, &RangePolicy::default()).unwrap();
        assert_eq!(r.to(), t("2026-11-25T10:30:00Z"));
        assert_eq!(r.from(), t("2026-11-18T10:30:00Z"));
    }

    #[test]
    fn a_future_to_is_pinned_and_a_past_one_is_kept() {
        let now = t("2026-11-25T10:30:45Z");
        let p = RangePolicy::default();
        let from = Some(t("2026-11-20T00:00:00Z"));
        let future = resolve_range(from, Some(t("2027-01-01T00:00:00Z")), now, &p).unwrap();
        assert_eq!(future.to(), t("2026-11-25T10:30:00Z"));
        let past = resolve_range(from, Some(t("2026-11-21T00:00:00.1234Z")), now, &p).unwrap();
        assert_eq!(past.to(), t("2026-11-21T00:00:00.123Z"));
    }

    #[test]
    fn empty_inverted_and_too_long_ranges_are_refused() {
        let now = t("2026-11-25T10:30:45Z");
        let p = RangePolicy::default();
        let a = Some(t("2026-11-20T00:00:00Z"));
        assert!(resolve_range(a, a, now, &p).is_err());
        assert!(resolve_range(Some(t("2026-11-21T00:00:00Z")), a, now, &p).is_err());
        let long = Some(t("2026-08-01T00:00:00Z"));
        let err = resolve_range(long, a, now, &p).unwrap_err();
        assert!(err.to_string().contains("92 days"), "{err}");
        let ok = Some(t("2026-08-20T00:00:00Z"));
        assert!(resolve_range(ok, a, now, &p).is_ok());
    }

    #[test]
    fn windows_abut_and_never_exceed_seven_days() {
        let now = t("2026-11-25T10:30:45Z");
        let (from, to) = (t("2026-10-01T00:00:00Z"), t("2026-10-20T12:00:00Z"));
        let r = ResolvedRange::new(from, to, now, &RangePolicy::default()).unwrap();
        let w = split_windows(r);
        assert_eq!(w.len(), 3);
        assert_eq!(w[0].from, from);
        assert_eq!(w[0].to, t("2026-10-08T00:00:00Z"));
        assert_eq!(w[1].to, w[2].from);
        assert_eq!(w[2].to, to);
        assert_eq!(worst_case_requests(r, 100, 100), 3 + 2);
    }

    #[test]
    fn a_range_must_keep_every_rule_whoever_built_it() {
        let now = t("2026-11-25T10:30:45.678Z");
        let p = RangePolicy::default();
        let new = |from: &str, to: &str| ResolvedRange::new(t(from), t(to), now, &p);
        assert!(new("2026-11-20T00:00:00Z", "2026-11-25T10:30:45.678Z").is_ok());
        let future = new("2026-11-20T00:00:00Z", "2026-11-25T10:30:45.679Z").unwrap_err();
        assert!(future.message.contains("future"), "{future}");
        assert!(new("2001-01-01T00:00:00Z", "2030-01-01T00:00:00Z").is_err());
        assert!(new("2026-11-20T00:00:00Z", "2026-11-20T00:00:00Z").is_err());
        assert!(new("1969-12-31T00:00:00Z", "1970-01-02T00:00:00Z").is_err());
        let long = new("2026-08-01T00:00:00Z", "2026-11-20T00:00:00Z").unwrap_err();
        assert!(long.message.contains("92 days"), "{long}");
        // The edges of chrono's time: refused, never an overflow.
        let (min, max) = (DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC);
        assert!(ResolvedRange::new(min, max, now, &p).is_err());
        assert!(ResolvedRange::new(max - Duration::days(1), max, now, &p).is_err());
        assert!(resolve_range(Some(max), None, now, &p).is_err());
        assert!(resolve_range(None, Some(min), now, &p).is_err());
    }

    #[test]
    fn a_from_inside_the_current_pin_bucket_ends_at_now_to_the_millisecond() {
        let now = t("2026-11-25T10:30:45.678Z");
        let p = RangePolicy::default();
        let r = resolve_range(Some(t("2026-11-25T10:30:10Z")), None, now, &p).unwrap();
        assert_eq!((r.from(), r.to()), (t("2026-11-25T10:30:10Z"), now));
        let future_to = Some(t("2026-11-26T00:00:00Z"));
        let r = resolve_range(Some(t("2026-11-25T10:30:00Z")), future_to, now, &p).unwrap();
        assert_eq!(r.to(), now);
        // An explicit past `to` is the client's: inverted is inverted.
        let explicit = Some(t("2026-11-25T10:30:00Z"));
        assert!(resolve_range(Some(t("2026-11-25T10:30:10Z")), explicit, now, &p).is_err());
        // A `from` at or after now is empty.
        assert!(resolve_range(Some(now), None, now, &p).is_err());
    }

    #[test]
    fn relay_slices_have_exact_page_info_at_both_ends() {
        let fwd = |first, after| SliceArgs {
            direction: Direction::Forward { first, after },
            other_bound: None,
        };
        let back = |last, before| SliceArgs {
            direction: Direction::Backward { last, before },
            other_bound: None,
        };
        let s = select_slice(45, fwd(20, None));
        assert_eq!(
            (s.start, s.end, s.has_previous_page, s.has_next_page),
            (0, 20, false, true)
        );
        let s = select_slice(45, fwd(20, Some(39)));
        assert_eq!(
            (s.start, s.end, s.has_previous_page, s.has_next_page),
            (40, 45, true, false)
        );
        let s = select_slice(45, back(20, None));
        assert_eq!(
            (s.start, s.end, s.has_previous_page, s.has_next_page),
            (25, 45, true, false)
        );
        let s = select_slice(45, back(20, Some(5)));
        assert_eq!(
            (s.start, s.end, s.has_previous_page, s.has_next_page),
            (0, 5, false, true)
        );
        let s = select_slice(0, fwd(20, None));
        assert_eq!(
            (s.start, s.end, s.has_previous_page, s.has_next_page),
            (0, 0, false, false)
        );
    }

    #[test]
    fn a_capped_page_size_maps_offsets_in_units_of_the_served_size() {
        let shapes = [
            WindowShape {
                total: 120,
                page_size: 50,
            },
            WindowShape {
                total: 30,
                page_size: 50,
            },
        ];
        let reads = pages_for_slice(&shapes, 95, 135);
        let summary: Vec<_> = reads
            .iter()
            .map(|r| (r.window, r.page, r.skip, r.take))
            .collect();
        assert_eq!(summary, vec![(0, 2, 45, 5), (0, 3, 0, 20), (1, 1, 0, 15)]);
        assert_eq!(reads[2].offset, 120);
    }

    proptest! {
        #[test]
        fn activity_id_parsing_accepts_exactly_canonical_positive_decimals(raw in "\\PC{0,24}") {
            let canonical = raw.len() <= 19
                && raw.bytes().all(|b| b.is_ascii_digit())
                && !raw.is_empty()
                && !raw.starts_with('0');
            match ActivityId::parse(&raw) {
                Ok(id) => prop_assert_eq!(id.to_string(), raw),
                Err(e) => {
                    prop_assert!(!canonical || raw.parse::<u64>().is_err());
                    prop_assert_eq!(e.code, crate::error::ErrorCode::BadUserInput);
                }
            }
        }

        #[test]
        fn any_slice_is_read_exactly_once_in_order(
            shapes in proptest::collection::vec((0u64..400, 1u64..120), 0..15),
            a in 0u64..6000,
            b in 0u64..6000,
        ) {
            let shapes: Vec<_> = shapes.into_iter()
                .map(|(total, page_size)| WindowShape { total, page_size })
                .collect();
            let total: u64 = shapes.iter().map(|s| s.total).sum();
            let (start, end) = (a.min(b).min(total), a.max(b).min(total));
            let reads = pages_for_slice(&shapes, start, end);
            let mut next = start;
            for r in &reads {
                let shape = shapes[r.window];
                prop_assert_eq!(r.offset, next);
                prop_assert!(r.take > 0);
                prop_assert!(r.skip + r.take <= shape.page_size);
                let window_start: u64 = shapes[..r.window].iter().map(|s| s.total).sum();
                prop_assert_eq!(window_start + (r.page - 1) * shape.page_size + r.skip, r.offset);
                prop_assert!(r.offset + r.take <= window_start + shape.total);
                next += r.take;
            }
            prop_assert_eq!(next, end);
        }

        #[test]
        fn the_worst_case_bounds_the_pages_any_slice_reads(
            totals in proptest::collection::vec(0u64..400, 1..15),
            page_size in 1u64..120,
            a in 0u64..6000,
            n in 1u64..200,
        ) {
            let shapes: Vec<_> = totals.iter()
                .map(|&total| WindowShape { total, page_size })
                .collect();
            let total: u64 = totals.iter().sum();
            let start = a.min(total);
            let end = (start + n).min(total);
            let pages: std::collections::HashSet<(usize, u64)> = pages_for_slice(&shapes, start, end)
                .iter()
                .map(|r| (r.window, r.page))
                .collect();
            let beyond_first = pages.iter().filter(|(_, page)| *page > 1).count() as u64;
            prop_assert!(beyond_first <= n.div_ceil(page_size) + 1);
        }

        #[test]
        fn resolving_any_instants_never_panics(
            f in proptest::option::of(any::<i64>()),
            t in proptest::option::of(any::<i64>()),
            now in 0i64..4_102_444_800_000,
        ) {
            let at = |ms: i64| DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MAX_UTC);
            let now = at(now);
            let p = RangePolicy::default();
            if let Ok(r) = resolve_range(f.map(at), t.map(at), now, &p) {
                prop_assert!(r.from() < r.to() && r.to() <= now && r.to() - r.from() <= p.max_range);
                let _ = split_windows(r);
            }
        }

        #[test]
        fn windows_cover_any_range_exactly(start in 0i64..10_000_000, len in 1i64..7_900_000) {
            let from = DateTime::from_timestamp(1_700_000_000 + start, 0).unwrap();
            let to = from + Duration::seconds(len);
            let now = t("2030-01-01T00:00:00Z");
            let range = ResolvedRange::new(from, to, now, &RangePolicy::default()).unwrap();
            let w = split_windows(range);
            prop_assert_eq!(w[0].from, from);
            prop_assert_eq!(w.last().unwrap().to, to);
            for pair in w.windows(2) {
                prop_assert_eq!(pair[0].to, pair[1].from);
            }
            for x in &w {
                prop_assert!(x.from < x.to && x.to - x.from <= MAX_WINDOW);
            }
        }

        #[test]
        fn slices_stay_inside_the_list_and_respect_the_size(
            total in 0u64..500, n in 1u64..101, cursor in proptest::option::of(0u64..600), forward: bool,
        ) {
            let direction = if forward {
                Direction::Forward { first: n, after: cursor }
            } else {
                Direction::Backward { last: n, before: cursor }
            };
            let s = select_slice(total, SliceArgs { direction, other_bound: None });
            prop_assert!(s.start <= s.end && s.end <= total && s.end - s.start <= n);
            prop_assert_eq!(s.has_previous_page, s.start > 0);
            prop_assert_eq!(s.has_next_page, s.end < total);
        }
    }
}
