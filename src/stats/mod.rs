//! Dashboard statistics (docs/api.md, "Statistics"), computed
//! from the visits of a range, exactly:
//! - [`WindowStats`]: one upstream window's visits, reduced to what the
//!   figures need (a compact record per visit, its distinct visitors and
//!   bucket keys), small enough to keep for settled windows;
//! - [`WindowStats::merge`]: the windows of a range become the range's own
//!   [`WindowStats`], exactly as if it had been built from all their visits
//!   (distinct visitors are counted, never estimated);
//! - the figures: totals, distinct visitors, buckets, the concurrency peak
//!   and the timeline, whose buckets [`calendar`] lays out in a time zone;
//! - [`load`]: reads a range's windows through the page cache, keeps settled
//!   windows' [`WindowStats`], and holds the request to its platform budget.
//!
//! Times are milliseconds since the epoch (the platform's precision; finer
//! digits are dropped). A visit is online over the closed interval
//! `[visitAt, lastOnlineAt]`, or at `visitAt` only when `lastOnlineAt` is
//! before it.

pub mod calendar;
pub mod load;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::Hash;
use std::sync::Arc;

use crate::page::{Text, Visit};

/// Who a visit counts as: a distinct `userId` (signed in) or a distinct
/// `anonymousId` (anonymous). An anonymous visit without an `anonymousId`
/// counts as a visit but as no visitor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Visitor {
    SignedIn(Text),
    Anonymous(Text),
}

impl Visitor {
    fn of(visit: &Visit) -> Option<Self> {
        match (&visit.user_id, &visit.anonymous_id) {
            (Some(id), _) => Some(Self::SignedIn(id.clone())),
            (None, Some(id)) => Some(Self::Anonymous(id.clone())),
            (None, None) => None,
        }
    }
}

/// What the `by*` buckets group visits by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    Province,
    City,
    Device,
    RefererHost,
}

impl Dimension {
    pub const ALL: [Self; 4] = [Self::Province, Self::City, Self::Device, Self::RefererHost];

    fn index(self) -> usize {
        self as usize
    }
}

/// The host of a referer URL, lower-cased; none when the referer is not an
/// absolute URL or has no host.
pub fn referer_host(referer: &str) -> Option<String> {
    let url = reqwest::Url::parse(referer).ok()?;
    url.host_str()
        .filter(|h| !h.is_empty())
        .map(str::to_lowercase)
}

/// Stands for "no visitor" in [`Record::visitor`].
const NO_VISITOR: u32 = u32::MAX;

/// One visit, as the figures need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    /// `visitAt`, ms.
    at: i64,
    /// Index into [`WindowStats::visitors`], or [`NO_VISITOR`].
    visitor: u32,
    /// Index into [`WindowStats::keys`], per [`Dimension`].
    keys: [u32; 4],
}

/// The visits of a window (or, merged, of a range), reduced to what every
/// figure needs.
#[derive(Debug, Clone, Default)]
pub struct WindowStats {
    /// By `at`.
    records: Vec<Record>,
    /// The last instant each visit is online, `max(lastOnlineAt, visitAt)`
    /// (ms), ascending.
    ends: Vec<i64>,
    /// Distinct.
    visitors: Vec<Visitor>,
    /// Distinct keys, per [`Dimension`]; `None` where the platform gave none.
    keys: [Vec<Option<Text>>; 4],
    duration_minutes: u64,
}

/// Gives each distinct value an index.
struct Table<K> {
    ids: HashMap<K, u32>,
    list: Vec<K>,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new() -> Self {
        Self::with_capacity(0)
    }

    fn with_capacity(n: usize) -> Self {
        Self {
            ids: HashMap::with_capacity(n),
            list: Vec::with_capacity(n),
        }
    }

    fn id(&mut self, key: &K) -> u32 {
        let next = u32::try_from(self.list.len()).expect("fewer than 2^32 distinct values");
        match self.ids.entry(key.clone()) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => {
                self.list.push(e.key().clone());
                e.insert(next);
                next
            }
        }
    }
}

/// Each distinct visitor's and key's index in a [`WindowStats`].
#[derive(Debug, Default)]
struct Index {
    visitors: HashMap<Visitor, u32>,
    keys: [HashMap<Option<Text>, u32>; 4],
}

/// `value`'s index: from `base`, else from `new`, else a new one (pushed
/// on `list`).
fn index_of<K: Hash + Eq + Clone>(
    base: Option<&HashMap<K, u32>>,
    new: &mut HashMap<K, u32>,
    list: &mut Vec<K>,
    value: &K,
) -> u32 {
    if let Some(&id) = base.and_then(|b| b.get(value)) {
        return id;
    }
    *new.entry(value.clone()).or_insert_with(|| {
        list.push(value.clone());
        u32::try_from(list.len() - 1).expect("fewer than 2^32 distinct values")
    })
}

/// Statistics that others are added to, with the index of their visitors
/// and keys: adding a few visits to many (a range's settled windows, then
/// its newest pages; an open range, then a poll's visits) hashes only what
/// is added, not what is held.
#[derive(Debug, Default)]
pub struct Base {
    stats: Arc<WindowStats>,
    index: Index,
}

impl Base {
    /// `parts` merged.
    pub fn new(parts: &[&WindowStats]) -> Self {
        let mut base = Self::default();
        base.add(parts);
        base
    }

    pub fn stats(&self) -> &Arc<WindowStats> {
        &self.stats
    }

    /// Adds `parts` for good (copying what is held only while a result
    /// handed out still shares it).
    pub fn add(&mut self, parts: &[&WindowStats]) {
        Arc::make_mut(&mut self.stats).append(parts, None, &mut self.index);
    }

    /// These statistics with `parts` added: exactly [`WindowStats::merge`]
    /// of them all, at the cost of a copy of what is held.
    pub fn with(&self, parts: &[&WindowStats]) -> WindowStats {
        let mut stats = WindowStats::clone(&self.stats);
        stats.append(parts, Some(&self.index), &mut Index::default());
        stats
    }

    /// Approximate bytes held: the statistics, and their index.
    pub fn weight(&self) -> usize {
        let entries = self.index.visitors.capacity()
            + self.index.keys.iter().map(HashMap::capacity).sum::<usize>();
        self.stats.weight() + entries * (std::mem::size_of::<Visitor>() + 8)
    }
}

/// A bucket of `by*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCount {
    pub key: Option<Text>,
    pub visits: u64,
    pub unique_visitors: u64,
}

/// The most visits online at one instant, and the earliest instant it is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peak {
    pub viewers: u64,
    /// ms.
    pub at: i64,
}

/// A bucket of the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineRow {
    /// ms.
    pub start: i64,
    pub visits: u64,
    pub unique_visitors: u64,
    pub peak_concurrent_viewers: u64,
}

impl WindowStats {
    /// The statistics of these visits, in any order.
    pub fn from_visits<'a>(visits: impl IntoIterator<Item = &'a Visit>) -> Self {
        let mut visitors = Table::new();
        let mut keys: [Table<Option<Text>>; 4] = std::array::from_fn(|_| Table::new());
        // Each distinct referer is parsed once.
        let mut hosts: HashMap<Text, Option<Text>> = HashMap::new();
        let mut records = Vec::new();
        let mut ends = Vec::new();
        let mut duration_minutes = 0u64;
        for v in visits {
            let at = v.visit_at.timestamp_millis();
            let host = v.referer.as_ref().and_then(|r| {
                hosts
                    .entry(r.clone())
                    .or_insert_with(|| referer_host(r).map(Text::from))
                    .clone()
            });
            let key = [&v.province, &v.city, &v.device, &host];
            ends.push(v.last_online_at.timestamp_millis().max(at));
            records.push(Record {
                at,
                visitor: Visitor::of(v).map_or(NO_VISITOR, |who| visitors.id(&who)),
                keys: std::array::from_fn(|d| keys[d].id(key[d])),
            });
            duration_minutes += u64::try_from(v.duration_minutes).unwrap_or(0);
        }
        records.sort_by_key(|r| r.at);
        ends.sort_unstable();
        Self {
            records,
            ends,
            visitors: visitors.list,
            keys: keys.map(|t| t.list),
            duration_minutes,
        }
    }

    /// The statistics of all these windows' visits together. Windows given
    /// oldest first (as a range splits) merge fastest; any order is exact.
    pub fn merge(parts: &[&WindowStats]) -> Self {
        let mut merged = Self::default();
        merged.append(parts, None, &mut Index::default());
        merged
    }

    /// Adds `parts`' visits. Each distinct visitor and key gets its index
    /// from `base` (the index of what `self` held, when kept), else from
    /// `new`, which learns the ones `self` did not hold.
    fn append(&mut self, parts: &[&WindowStats], base: Option<&Index>, new: &mut Index) {
        let visits: usize = parts.iter().map(|p| p.records.len()).sum();
        self.records.reserve(visits);
        self.ends.reserve(visits);
        for part in parts {
            let visitor_ids: Vec<u32> = part
                .visitors
                .iter()
                .map(|v| {
                    index_of(
                        base.map(|b| &b.visitors),
                        &mut new.visitors,
                        &mut self.visitors,
                        v,
                    )
                })
                .collect();
            let key_ids: [Vec<u32>; 4] = std::array::from_fn(|d| {
                part.keys[d]
                    .iter()
                    .map(|k| {
                        index_of(
                            base.map(|b| &b.keys[d]),
                            &mut new.keys[d],
                            &mut self.keys[d],
                            k,
                        )
                    })
                    .collect()
            });
            self.records.extend(part.records.iter().map(|r| Record {
                visitor: match r.visitor {
                    NO_VISITOR => NO_VISITOR,
                    v => visitor_ids[v as usize],
                },
                keys: std::array::from_fn(|d| key_ids[d][r.keys[d] as usize]),
                ..*r
            }));
            self.ends.extend_from_slice(&part.ends);
            self.duration_minutes += part.duration_minutes;
        }
        // Stable sorts are run-adaptive: what was held and each part are
        // sorted runs, already in order when parts come oldest first.
        self.records.sort_by_key(|r| r.at);
        self.ends.sort();
    }

    pub fn visits(&self) -> u64 {
        self.records.len() as u64
    }

    pub fn signed_in_visitors(&self) -> u64 {
        self.visitors
            .iter()
            .filter(|v| matches!(v, Visitor::SignedIn(_)))
            .count() as u64
    }

    pub fn anonymous_visitors(&self) -> u64 {
        self.visitors.len() as u64 - self.signed_in_visitors()
    }

    pub fn total_duration_minutes(&self) -> u64 {
        self.duration_minutes
    }

    /// Per visit; 0 when there is none.
    pub fn average_duration_minutes(&self) -> f64 {
        match self.records.len() {
            0 => 0.0,
            n => self.duration_minutes as f64 / n as f64,
        }
    }

    /// The most visits online at one instant, at the earliest instant it is
    /// reached; none without visits. The count only rises when a visit
    /// starts, so the instants worth looking at are the starts.
    pub fn peak(&self) -> Option<Peak> {
        let mut online = Online::new(&self.records, &self.ends);
        let mut best: Option<Peak> = None;
        for r in &self.records {
            let viewers = online.at(r.at);
            if best.is_none_or(|b| viewers > b.viewers) {
                best = Some(Peak { viewers, at: r.at });
            }
        }
        best
    }

    /// The `by*` buckets: visits and distinct visitors per key, by visits
    /// descending then key ascending with none last, at most `top`.
    pub fn buckets(&self, dimension: Dimension, top: usize) -> Vec<KeyCount> {
        let d = dimension.index();
        let keys = &self.keys[d];
        let mut visits = vec![0u64; keys.len()];
        let mut unique = vec![0u64; keys.len()];
        // Most visitors keep one key: each visitor's first key is counted at
        // once, and only (key, visitor) pairs with another key are sorted.
        let mut first_key = vec![u32::MAX; self.visitors.len()];
        let mut other_pairs = Vec::new();
        for r in &self.records {
            let key = r.keys[d];
            visits[key as usize] += 1;
            if r.visitor == NO_VISITOR {
                continue;
            }
            let first = &mut first_key[r.visitor as usize];
            if *first == u32::MAX {
                *first = key;
                unique[key as usize] += 1;
            } else if *first != key {
                other_pairs.push((u64::from(key) << 32) | u64::from(r.visitor));
            }
        }
        other_pairs.sort_unstable();
        other_pairs.dedup();
        for pair in other_pairs {
            unique[(pair >> 32) as usize] += 1;
        }
        let mut buckets: Vec<KeyCount> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| KeyCount {
                key: key.clone(),
                visits: visits[i],
                unique_visitors: unique[i],
            })
            .collect();
        buckets.sort_by(|a, b| {
            b.visits
                .cmp(&a.visits)
                .then_with(|| match (&a.key, &b.key) {
                    (Some(x), Some(y)) => x.cmp(y),
                    (a, b) => b.is_some().cmp(&a.is_some()),
                })
        });
        buckets.truncate(top);
        buckets
    }

    /// One row per bucket `[bounds[i], bounds[i + 1])` (see
    /// [`calendar::Calendar::bounds`]); a visit falls in the bucket of its
    /// `visitAt`, and a bucket's peak counts visits that started before it
    /// and are still online.
    pub fn timeline(&self, bounds: &[i64]) -> Vec<TimelineRow> {
        let mut online = Online::new(&self.records, &self.ends);
        // The bucket each visitor was last counted in, plus one.
        let mut counted_in = vec![0u32; self.visitors.len()];
        let first = bounds.first().copied().unwrap_or(i64::MAX);
        let mut next = self.records.partition_point(|r| r.at < first);
        bounds
            .windows(2)
            .enumerate()
            .map(|(i, bucket)| {
                let (start, end) = (bucket[0], bucket[1]);
                let mut row = TimelineRow {
                    start,
                    visits: 0,
                    unique_visitors: 0,
                    peak_concurrent_viewers: online.at(start),
                };
                while let Some(r) = self.records.get(next).filter(|r| r.at < end) {
                    row.visits += 1;
                    let bucket = i as u32 + 1;
                    if r.visitor != NO_VISITOR && counted_in[r.visitor as usize] != bucket {
                        counted_in[r.visitor as usize] = bucket;
                        row.unique_visitors += 1;
                    }
                    row.peak_concurrent_viewers = row.peak_concurrent_viewers.max(online.at(r.at));
                    next += 1;
                }
                row
            })
            .collect()
    }

    /// Approximate bytes held, for the statistics cache's byte bound. Text
    /// is counted in full, although it is shared with the cached pages.
    pub fn weight(&self) -> usize {
        let text = |t: &Text| t.len() + 2 * std::mem::size_of::<usize>();
        let visitors: usize = self
            .visitors
            .iter()
            .map(|v| match v {
                Visitor::SignedIn(t) | Visitor::Anonymous(t) => text(t),
            })
            .sum();
        let keys: usize = self.keys.iter().flatten().flatten().map(text).sum();
        std::mem::size_of::<Self>()
            + self.records.capacity() * std::mem::size_of::<Record>()
            + self.ends.capacity() * std::mem::size_of::<i64>()
            + self.visitors.capacity() * std::mem::size_of::<Visitor>()
            + self
                .keys
                .iter()
                .map(|k| k.capacity() * std::mem::size_of::<Option<Text>>())
                .sum::<usize>()
            + visitors
            + keys
    }
}

/// How many visits are online at instants asked in ascending order: those
/// started at or before the instant, less those whose last online instant
/// is before it.
struct Online<'a> {
    records: &'a [Record],
    ends: &'a [i64],
    started: usize,
    ended: usize,
}

impl<'a> Online<'a> {
    fn new(records: &'a [Record], ends: &'a [i64]) -> Self {
        Self {
            records,
            ends,
            started: 0,
            ended: 0,
        }
    }

    fn at(&mut self, t: i64) -> u64 {
        while self.records.get(self.started).is_some_and(|r| r.at <= t) {
            self.started += 1;
        }
        while self.ends.get(self.ended).is_some_and(|&e| e < t) {
            self.ended += 1;
        }
        (self.started - self.ended) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::calendar::{Calendar, Interval, zone};
    use super::*;
    use chrono::DateTime;
    use proptest::prelude::*;

    /// 2026-03-01T00:00:00Z: the New York clock change of 2026-03-08 falls
    /// inside the generated month.
    const BASE: i64 = 1_772_323_200_000;
    const MINUTE: i64 = 60_000;

    #[derive(Debug, Clone, Default)]
    struct V {
        at: i64,
        until: i64,
        user: Option<&'static str>,
        anon: Option<&'static str>,
        province: Option<&'static str>,
        city: Option<&'static str>,
        device: Option<&'static str>,
        referer: Option<&'static str>,
        minutes: i32,
    }

    fn text(s: Option<&str>) -> Option<Text> {
        s.map(Text::from)
    }

    fn visit(v: &V) -> Visit {
        Visit {
            user_id: text(v.user),
            anonymous_id: if v.user.is_none() { text(v.anon) } else { None },
            nickname: Text::from("n"),
            avatar: None,
            province: text(v.province),
            city: text(v.city),
            visit_at: DateTime::from_timestamp_millis(v.at).unwrap(),
            last_online_at: DateTime::from_timestamp_millis(v.until).unwrap(),
            duration_minutes: v.minutes,
            referer: text(v.referer),
            user_agent: None,
            device: text(v.device),
            partner_uid: None,
            invited_by: None,
        }
    }

    fn stats(vs: &[V]) -> WindowStats {
        let visits: Vec<Visit> = vs.iter().map(visit).collect();
        WindowStats::from_visits(&visits)
    }

    /// Every figure, for comparing two computations.
    fn figures(s: &WindowStats) -> String {
        let mut out = format!(
            "visits {} signed-in {} anonymous {} minutes {} average {} peak {:?}\n",
            s.visits(),
            s.signed_in_visitors(),
            s.anonymous_visitors(),
            s.total_duration_minutes(),
            s.average_duration_minutes(),
            s.peak()
        );
        for d in Dimension::ALL {
            out += &format!("{d:?} {:?}\n", s.buckets(d, 100));
        }
        let month = (BASE, BASE + 31 * 24 * 60 * MINUTE);
        for (interval, name) in [
            (Interval::Day, "America/New_York"),
            (Interval::Hour, "Asia/Kathmandu"),
            (Interval::FifteenMinutes, "UTC"),
        ] {
            let bounds = Calendar::new(interval, zone(name).unwrap())
                .bounds(month.0, month.1)
                .unwrap();
            out += &format!("{interval:?} {name} {:?}\n", s.timeline(&bounds));
        }
        out
    }

    const USERS: [Option<&str>; 4] = [None, Some("1"), Some("2"), Some("3")];
    const ANONS: [Option<&str>; 3] = [None, Some("ab12cd34"), Some("1")];
    const PLACES: [Option<&str>; 3] = [None, Some("广东"), Some("北京")];
    const REFERERS: [Option<&str>; 6] = [
        None,
        Some("https://MP.weixin.qq.com/s?x=1"),
        Some("https://mp.weixin.qq.com/"),
        Some("http://www.baidu.com:8080/"),
        Some("not a url"),
        Some("file:///tmp/x"),
    ];

    fn any_visit() -> impl Strategy<Value = V> {
        (
            0..31 * 24 * 60 * MINUTE,
            -60 * MINUTE..300 * MINUTE,
            (0..USERS.len(), 0..ANONS.len()),
            (0..PLACES.len(), 0..PLACES.len(), 0..PLACES.len()),
            (0..REFERERS.len(), 0..200i32),
        )
            .prop_map(|(at, length, (u, a), (p, c, d), (r, minutes))| V {
                at: BASE + at,
                until: BASE + at + length,
                user: USERS[u],
                anon: ANONS[a],
                province: PLACES[p],
                city: PLACES[c],
                device: PLACES[d],
                referer: REFERERS[r],
                minutes,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn merging_windows_equals_computing_over_their_union(
            visits in proptest::collection::vec(any_visit(), 0..120),
            cuts in proptest::collection::vec(0..31 * 24 * 60 * MINUTE, 0..6),
            // Several visits at one instant, across a cut too.
            same in 0..5usize,
            // Where a base ends and added windows begin.
            split in 0..8usize,
        ) {
            let mut visits = visits;
            if let Some(first) = visits.first().cloned() {
                visits.extend(std::iter::repeat_n(first, same));
            }
            let mut cuts: Vec<i64> = cuts.into_iter().map(|c| BASE + c).collect();
            cuts.extend([i64::MIN, i64::MAX]);
            cuts.sort_unstable();
            let windows: Vec<WindowStats> = cuts
                .windows(2)
                .map(|w| {
                    let part: Vec<V> =
                        visits.iter().filter(|v| v.at >= w[0] && v.at < w[1]).cloned().collect();
                    stats(&part)
                })
                .collect();
            let merged = WindowStats::merge(&windows.iter().collect::<Vec<_>>());
            let whole = stats(&visits);
            prop_assert_eq!(figures(&merged), figures(&whole));

            // A base of the first windows, with the others added (for a
            // query) or added for good (an open range's polls): the same.
            let parts: Vec<&WindowStats> = windows.iter().collect();
            let (first, rest) = parts.split_at(split.min(parts.len()));
            let base = Base::new(first);
            prop_assert_eq!(figures(&base.with(rest)), figures(&whole));
            let mut grown = Base::new(first);
            for part in rest {
                grown.add(&[part]);
            }
            prop_assert_eq!(figures(grown.stats()), figures(&whole));

            // And the peak is the most visits online at any start instant.
            let online = |t: i64| visits.iter().filter(|v| v.at <= t && t <= v.until.max(v.at)).count() as u64;
            let best = visits.iter().map(|v| online(v.at)).max();
            prop_assert_eq!(whole.peak().map(|p| p.viewers), best);
            if let Some(p) = whole.peak() {
                prop_assert_eq!(online(p.at), p.viewers);
                prop_assert!(visits.iter().all(|v| v.at >= p.at || online(v.at) < p.viewers));
            }
        }
    }

    fn at(minute: i64) -> i64 {
        BASE + minute * MINUTE
    }

    #[test]
    fn buckets_sort_by_visits_then_key_with_null_last_and_keep_top() {
        let v = |province, user| V {
            at: at(0),
            until: at(1),
            province,
            user,
            ..V::default()
        };
        let s = stats(&[
            v(None, Some("1")),
            v(None, Some("2")),
            v(Some("b"), Some("1")),
            v(Some("b"), Some("1")),
            v(Some("a"), Some("3")),
            v(Some("a"), None),
            v(Some("c"), Some("1")),
            v(Some("é"), Some("1")),
        ]);
        let buckets = s.buckets(Dimension::Province, 10);
        let keys: Vec<(Option<&str>, u64, u64)> = buckets
            .iter()
            .map(|b| (b.key.as_deref(), b.visits, b.unique_visitors))
            .collect();
        assert_eq!(
            keys,
            [
                (Some("a"), 2, 1),
                (Some("b"), 2, 1),
                (None, 2, 2),
                (Some("c"), 1, 1),
                (Some("é"), 1, 1)
            ]
        );
        assert_eq!(s.buckets(Dimension::Province, 2).len(), 2);
        assert_eq!(s.signed_in_visitors(), 3);
        assert_eq!(s.anonymous_visitors(), 0, "an anonymous visit without id");
    }

    #[test]
    fn referer_hosts_are_lower_cased_and_null_without_one() {
        assert_eq!(
            referer_host("https://MP.Weixin.QQ.com/s?x").as_deref(),
            Some("mp.weixin.qq.com")
        );
        assert_eq!(
            referer_host("http://www.baidu.com:8080/").as_deref(),
            Some("www.baidu.com")
        );
        assert_eq!(referer_host("mp.weixin.qq.com/s"), None);
        assert_eq!(referer_host("file:///tmp/x"), None);
        assert_eq!(referer_host(""), None);
    }

    #[test]
    fn the_peak_counts_every_visit_starting_at_its_instant() {
        let v = |start: i64, end: i64, user| V {
            at: at(start),
            until: at(end),
            user: Some(user),
            ..V::default()
        };
        let s = stats(&[
            v(0, 10, "1"),
            // Ends as the three start: closed intervals, so still online.
            v(2, 5, "2"),
            v(5, 6, "3"),
            v(5, 5, "4"),
            v(5, 20, "5"),
            // lastOnlineAt before visitAt: online at visitAt only.
            v(7, 3, "6"),
            v(8, 9, "7"),
        ]);
        assert_eq!(
            s.peak(),
            Some(Peak {
                viewers: 5,
                at: at(5)
            })
        );
        let bounds: Vec<i64> = (0..=4).map(|i| at(i * 3)).collect();
        let rows: Vec<(u64, u64, u64)> = s
            .timeline(&bounds)
            .iter()
            .map(|r| (r.visits, r.unique_visitors, r.peak_concurrent_viewers))
            .collect();
        // [0,3): 2 start, 2 online at 2. [3,6): 3 start, 5 at 5. [6,9): 2
        // start; 3 online at 6 (0-10, 5-6, 5-20), at 7 (0-10, 5-20, 7) and
        // at 8 (0-10, 5-20, 8-9). [9,12): none start, 3 online at 9.
        assert_eq!(rows, [(2, 2, 2), (3, 3, 5), (2, 2, 3), (0, 0, 3)]);
    }

    #[test]
    fn new_york_days_of_23_and_25_hours_hold_their_visits() {
        let ny = zone("America/New_York").unwrap();
        let ms = |s: &str| crate::time::parse_rfc3339(s).unwrap().timestamp_millis();
        let v = |t: &str, user| V {
            at: ms(t),
            until: ms(t),
            user: Some(user),
            ..V::default()
        };
        let s = stats(&[
            // Local 2026-03-07 23:30 EST, 03-08 23:30 EDT (the 23-hour day), 03-09 00:30.
            v("2026-03-08T04:30:00Z", "1"),
            v("2026-03-09T03:30:00Z", "2"),
            v("2026-03-09T04:30:00Z", "3"),
            // Local 2026-11-01 01:30 EDT and 01:30 EST: one 25-hour day.
            v("2026-11-01T05:30:00Z", "4"),
            v("2026-11-01T06:30:00Z", "4"),
            v("2026-11-02T04:59:59.999Z", "5"),
        ]);
        let day = Calendar::new(Interval::Day, ny);
        let rows = |from: &str, to: &str| -> Vec<(String, u64, u64)> {
            s.timeline(&day.bounds(ms(from), ms(to)).unwrap())
                .iter()
                .map(|r| {
                    let start = DateTime::from_timestamp_millis(r.start).unwrap();
                    (crate::time::format(start), r.visits, r.unique_visitors)
                })
                .collect()
        };
        let row = |s: &str, v, u| (s.to_owned(), v, u);
        assert_eq!(
            rows("2026-03-07T05:00:00Z", "2026-03-10T04:00:00Z"),
            [
                row("2026-03-07T05:00:00.000Z", 1, 1),
                row("2026-03-08T05:00:00.000Z", 1, 1),
                row("2026-03-09T04:00:00.000Z", 1, 1)
            ]
        );
        assert_eq!(
            rows("2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z"),
            [row("2026-11-01T04:00:00.000Z", 3, 2)]
        );
    }
}
