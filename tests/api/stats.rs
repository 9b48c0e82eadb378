//! `userVisitStats` against the simulated platform: every figure
//! compared with a straightforward computation from the platform's raw
//! visits, and what statistics cost the platform.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde_json::{Value, json};
use visits_gateway::demo::{EXAMPLE_ACTIVITY, SimVisit};

use crate::helpers::{TestApp, error_code, metric, spawn_app, spawn_app_with, ts};

/// An activity of crafted visits only.
const CRAFTED: u64 = 424_242;

pub(crate) const STATS: &str = r#"
query($id: ID!, $range: TimeRange, $tz: String, $interval: StatsInterval!, $top: Int) {
  userVisitStats(activityId: $id, range: $range, timeZone: $tz) {
    range { from to }
    visits
    uniqueVisitors
    signedInVisitors
    anonymousVisitors
    totalDurationMinutes
    averageDurationMinutes
    peakConcurrentViewers { viewers at }
    byProvince(top: $top) { key visits uniqueVisitors }
    byCity(top: $top) { key visits uniqueVisitors }
    byDevice(top: $top) { key visits uniqueVisitors }
    byRefererHost(top: $top) { key visits uniqueVisitors }
    timeline(interval: $interval) { start visits uniqueVisitors peakConcurrentViewers }
  }
}"#;

/// What a test asks.
pub(crate) struct Ask {
    pub(crate) activity: u64,
    pub(crate) from: DateTime<Utc>,
    pub(crate) to: DateTime<Utc>,
    zone: &'static str,
    interval: &'static str,
    top: usize,
}

impl Ask {
    pub(crate) fn new(activity: u64, from: DateTime<Utc>, to: DateTime<Utc>) -> Self {
        Self {
            activity,
            from,
            to,
            zone: "UTC",
            interval: "HOUR",
            top: 10,
        }
    }

    pub(crate) fn variables(&self) -> Value {
        json!({
            "id": self.activity.to_string(),
            "range": { "from": ts(self.from), "to": ts(self.to) },
            "tz": self.zone,
            "interval": self.interval,
            "top": self.top,
        })
    }
}

pub(crate) async fn stats(app: &TestApp, ask: &Ask) -> Value {
    app.graphql(STATS, ask.variables()).await
}

/// Asks, and compares every figure with [`reference`]; returns the answer.
async fn check(app: &TestApp, ask: &Ask) -> Value {
    let r = stats(app, ask).await;
    assert!(r["errors"].is_null(), "{r}");
    let got = &r["data"]["userVisitStats"];
    let visits = app.sim.visits_between(ask.activity, ask.from, ask.to);
    let want = reference(&visits, ask);
    for (field, value) in want.as_object().unwrap() {
        if let (Some(a), Some(b)) = (got[field].as_f64(), value.as_f64())
            && field == "averageDurationMinutes"
        {
            // serde_json reads floats to within an ulp.
            assert!((a - b).abs() <= 1e-9 * b.abs(), "{field}: {a} != {b}");
            continue;
        }
        assert_eq!(
            &got[field], value,
            "{field} ({} {} {}): got {:.2000}",
            ask.zone, ask.interval, ask.top, got[field]
        );
    }
    got.clone()
}

// The independent computation: the definitions of docs/api.md, done the
// obvious way, from the platform's own visits.

fn last_online(v: &SimVisit) -> DateTime<Utc> {
    v.visit_at + Duration::minutes(i64::from(v.duration))
}

fn online_at(visits: &[SimVisit], t: DateTime<Utc>) -> usize {
    visits
        .iter()
        .filter(|v| v.visit_at <= t && t <= last_online(v).max(v.visit_at))
        .count()
}

/// `"u:<id>"` or `"a:<anonymousId>"`; none for an anonymous visit without id.
fn visitor(v: &SimVisit) -> Option<String> {
    match v.user_id {
        Some(id) => Some(format!("u:{id}")),
        None => Some(&v.session[..v.session.len().min(8)])
            .filter(|s| !s.is_empty())
            .map(|s| format!("a:{s}")),
    }
}

fn host(referer: &str) -> Option<String> {
    let (scheme, rest) = referer.split_once("://")?;
    if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    let host = rest.split(['/', ':', '?', '#']).next()?;
    (!host.is_empty()).then(|| host.to_lowercase())
}

fn nonempty(s: Option<&str>) -> Option<String> {
    s.filter(|s| !s.is_empty()).map(str::to_owned)
}

fn buckets(visits: &[SimVisit], top: usize, key: impl Fn(&SimVisit) -> Option<String>) -> Value {
    let mut groups: HashMap<Option<String>, (u64, HashSet<String>)> = HashMap::new();
    for v in visits {
        let g = groups.entry(key(v)).or_default();
        g.0 += 1;
        g.1.extend(visitor(v));
    }
    let mut rows: Vec<(Option<String>, u64, usize)> = groups
        .into_iter()
        .map(|(k, (n, u))| (k, n, u.len()))
        .collect();
    rows.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then((a.0.is_none()).cmp(&b.0.is_none()))
            .then(a.0.cmp(&b.0))
    });
    rows.truncate(top);
    rows.into_iter()
        .map(|(key, visits, unique)| json!({ "key": key, "visits": visits, "uniqueVisitors": unique }))
        .collect()
}

/// The local start of the interval holding `t`'s local time.
fn label(zone: Tz, interval: &str, t: DateTime<Utc>) -> NaiveDateTime {
    let local = zone.from_utc_datetime(&t.naive_utc()).naive_local();
    let minute = i64::from(local.hour() * 60 + local.minute());
    let step = match interval {
        "MINUTE" => 1,
        "FIVE_MINUTES" => 5,
        "FIFTEEN_MINUTES" => 15,
        "HOUR" => 60,
        _ => 24 * 60,
    };
    local.date().and_hms_opt(0, 0, 0).unwrap() + Duration::minutes(minute - minute % step)
}

/// Bucket starts, walking minute by minute: a bucket starts where the label
/// changes (every zone's offset is whole minutes since 1972).
fn bucket_starts(ask: &Ask) -> Vec<DateTime<Utc>> {
    let zone: Tz = ask.zone.parse().unwrap();
    let minute = Duration::minutes(1);
    let floor =
        |t: DateTime<Utc>| DateTime::from_timestamp(t.timestamp() - t.timestamp() % 60, 0).unwrap();
    let mut start = floor(ask.from);
    let first = label(zone, ask.interval, ask.from);
    while label(zone, ask.interval, start - minute) == first {
        start -= minute;
    }
    let mut starts = vec![start];
    let mut t = start;
    let mut current = first;
    while t + minute < ask.to {
        t += minute;
        let l = label(zone, ask.interval, t);
        if l != current {
            starts.push(t);
            current = l;
        }
    }
    starts
}

fn reference(visits: &[SimVisit], ask: &Ask) -> Value {
    let signed_in: HashSet<u64> = visits.iter().filter_map(|v| v.user_id).collect();
    let anonymous: HashSet<String> = visits
        .iter()
        .filter(|v| v.user_id.is_none())
        .filter_map(visitor)
        .collect();
    let minutes: u64 = visits.iter().map(|v| u64::from(v.duration)).sum();
    let peak = visits
        .iter()
        .map(|v| (online_at(visits, v.visit_at), v.visit_at))
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|(viewers, at)| json!({ "viewers": viewers, "at": ts(at) }));

    let starts = bucket_starts(ask);
    let timeline: Vec<Value> = starts
        .iter()
        .enumerate()
        .map(|(i, &start)| {
            let end = starts
                .get(i + 1)
                .copied()
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
            let inside: Vec<&SimVisit> = visits
                .iter()
                .filter(|v| v.visit_at >= start && v.visit_at < end)
                .collect();
            let unique: HashSet<String> = inside.iter().filter_map(|v| visitor(v)).collect();
            let peak = std::iter::once(start)
                .chain(inside.iter().map(|v| v.visit_at))
                .map(|t| online_at(visits, t))
                .max()
                .unwrap();
            json!({ "start": ts(start), "visits": inside.len(), "uniqueVisitors": unique.len(),
                    "peakConcurrentViewers": peak })
        })
        .collect();

    let average = if visits.is_empty() {
        0.0
    } else {
        minutes as f64 / visits.len() as f64
    };
    json!({
        "range": { "from": ts(ask.from), "to": ts(ask.to) },
        "visits": visits.len(),
        "uniqueVisitors": signed_in.len() + anonymous.len(),
        "signedInVisitors": signed_in.len(),
        "anonymousVisitors": anonymous.len(),
        "totalDurationMinutes": minutes,
        "averageDurationMinutes": average,
        "peakConcurrentViewers": peak,
        "byProvince": buckets(visits, ask.top, |v| nonempty(v.province.as_deref())),
        "byCity": buckets(visits, ask.top, |v| nonempty(v.city.as_deref())),
        "byDevice": buckets(visits, ask.top, |v| nonempty(Some(v.device))),
        "byRefererHost": buckets(visits, ask.top, |v| v.referer.as_deref().and_then(host)),
        "timeline": timeline,
    })
}

fn t(s: &str) -> DateTime<Utc> {
    visits_gateway::time::parse_rfc3339(s).unwrap()
}

/// A crafted visit: signed in as `user`, or anonymous with `session` ("" for none).
fn crafted(at: &str, minutes: u32, user: Option<u64>, session: &str) -> SimVisit {
    SimVisit {
        id: 0,
        user_id: user,
        session: session.to_owned(),
        nickname: user.map(|_| "小明".to_owned()),
        avatar: None,
        province: Some("广东".to_owned()),
        city: Some("深圳".to_owned()),
        visit_at: t(at),
        duration: minutes,
        referer: Some("https://mp.weixin.qq.com/s?id=1".to_owned()),
        user_agent: "Mozilla/5.0",
        device: "iPhone",
        partner_uid: None,
        invited_by: None,
    }
}

#[tokio::test]
async fn a_range_over_several_windows_matches_the_platforms_visits() {
    let app = spawn_app().await;
    let (from, to) = (app.now - Duration::days(40), app.now - Duration::days(10));
    let ask = Ask::new(EXAMPLE_ACTIVITY, from, to);
    let got = check(
        &app,
        &Ask {
            interval: "DAY",
            ..ask
        },
    )
    .await;
    assert!(got["visits"].as_u64().unwrap() > 500, "{got}");
    assert_eq!(
        got["timeline"].as_array().unwrap().len(),
        31,
        "30 days from mid-day"
    );
    // The same as userVisits counts for the range.
    let list = app
        .user_visits(json!({ "id": EXAMPLE_ACTIVITY.to_string(),
            "range": { "from": ts(from), "to": ts(to) }, "first": 1 }))
        .await;
    assert_eq!(got["visits"], list["data"]["userVisits"]["totalCount"]);
    // Top 100 shows every bucket, in order, ties and nulls included.
    check(
        &app,
        &Ask {
            top: 100,
            ..Ask::new(EXAMPLE_ACTIVITY, from, to)
        },
    )
    .await;
}

#[tokio::test]
async fn every_interval_in_utc_and_in_shanghai_and_kathmandu() {
    let app = spawn_app().await;
    let from = app.now - Duration::days(20) - Duration::minutes(7);
    let to = from + Duration::days(2) + Duration::seconds(90);
    for zone in ["UTC", "Asia/Shanghai", "Asia/Kathmandu"] {
        for interval in ["MINUTE", "FIVE_MINUTES", "FIFTEEN_MINUTES", "HOUR", "DAY"] {
            let ask = Ask {
                zone,
                interval,
                ..Ask::new(EXAMPLE_ACTIVITY, from, to)
            };
            check(&app, &ask).await;
        }
    }
    // A Shanghai day starts at 16:00 UTC.
    let ask = Ask {
        zone: "Asia/Shanghai",
        interval: "DAY",
        ..Ask::new(
            EXAMPLE_ACTIVITY,
            app.now - Duration::days(30),
            app.now - Duration::days(20),
        )
    };
    let got = check(&app, &ask).await;
    for bucket in got["timeline"].as_array().unwrap() {
        assert!(
            bucket["start"]
                .as_str()
                .unwrap()
                .ends_with("T16:00:00.000Z"),
            "{bucket}"
        );
    }
}

#[tokio::test]
async fn new_york_days_of_23_and_25_hours() {
    let app = spawn_app().await;
    let mut visits = Vec::new();
    for day in [
        "2026-03-07",
        "2026-03-08",
        "2026-03-09",
        "2026-10-31",
        "2026-11-01",
        "2026-11-02",
    ] {
        for hour in [0u32, 3, 6, 12, 23] {
            let at = format!("{day}T{hour:02}:30:00-05:00");
            visits.push(crafted(&at, 90, Some(u64::from(hour)), ""));
        }
    }
    // Local 01:30 twice on 2026-11-01 (EDT, then EST), and the last instant of that day.
    visits.push(crafted("2026-11-01T01:30:00-04:00", 5, Some(7), ""));
    visits.push(crafted("2026-11-01T01:30:00-05:00", 5, Some(8), ""));
    visits.push(crafted(
        "2026-11-01T23:59:59.999-05:00",
        0,
        None,
        "zzzzzzzz",
    ));
    app.sim.insert_visits(CRAFTED, visits);
    for (from, to) in [
        ("2026-03-06T12:00:00Z", "2026-03-10T12:00:00Z"),
        ("2026-10-30T12:00:00Z", "2026-11-03T12:00:00Z"),
    ] {
        let ask = Ask {
            zone: "America/New_York",
            interval: "DAY",
            ..Ask::new(CRAFTED, t(from), t(to))
        };
        let got = check(&app, &ask).await;
        let starts: Vec<DateTime<Utc>> = got["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| t(b["start"].as_str().unwrap()))
            .collect();
        let hours: Vec<i64> = starts
            .windows(2)
            .map(|w| (w[1] - w[0]).num_hours())
            .collect();
        let expected = if from.starts_with("2026-03") {
            [24, 24, 23, 24]
        } else {
            [24, 24, 25, 24]
        };
        assert_eq!(hours, expected, "{starts:?}");
        check(
            &app,
            &Ask {
                interval: "HOUR",
                ..ask
            },
        )
        .await;
    }
}

#[tokio::test]
async fn an_empty_range_and_an_anonymous_only_range() {
    let app = spawn_app().await;
    app.sim.insert_visits(CRAFTED, Vec::new());
    let (from, to) = (t("2026-06-01T00:00:00Z"), t("2026-06-02T00:00:00Z"));
    let got = check(&app, &Ask::new(CRAFTED, from, to)).await;
    assert_eq!(got["visits"], 0);
    assert_eq!(got["averageDurationMinutes"], 0.0);
    assert!(got["peakConcurrentViewers"].is_null());
    assert_eq!(got["byCity"], json!([]));
    let timeline = got["timeline"].as_array().unwrap();
    assert_eq!(timeline.len(), 24);
    assert!(
        timeline
            .iter()
            .all(|b| b["visits"] == 0 && b["peakConcurrentViewers"] == 0)
    );

    app.sim.insert_visits(
        CRAFTED,
        vec![
            crafted("2026-06-05T08:00:00Z", 30, None, "aaaaaaaa-session"),
            crafted("2026-06-05T08:10:00Z", 30, None, "aaaaaaaa-other"),
            crafted("2026-06-05T09:00:00Z", 30, None, "bbbbbbbb"),
            // Anonymous without anonymousId: a visit, no visitor.
            crafted("2026-06-05T09:00:00Z", 30, None, ""),
        ],
    );
    // Another day: the empty one's statistics are kept for the settled TTL.
    let (from, to) = (t("2026-06-05T00:00:00Z"), t("2026-06-06T00:00:00Z"));
    let got = check(&app, &Ask::new(CRAFTED, from, to)).await;
    assert_eq!(
        (
            &got["visits"],
            &got["signedInVisitors"],
            &got["anonymousVisitors"]
        ),
        (&json!(4), &json!(0), &json!(2))
    );
}

#[tokio::test]
async fn null_and_missing_fields_gather_under_a_null_key() {
    let app = spawn_app().await;
    let mut visits = Vec::new();
    for (i, referer) in [
        None,
        Some(""),
        Some("not a url"),
        Some("HTTPS://WWW.Baidu.COM/s?wd=x"),
        Some("https://www.baidu.com"),
        Some("http://mp.weixin.qq.com:8080/"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut v = crafted("2026-06-01T08:00:00Z", 10, Some(i as u64 % 3), "");
        v.visit_at += Duration::minutes(i as i64);
        v.referer = referer.map(str::to_owned);
        v.province = (i % 2 == 0).then(|| "广东".to_owned()); // missing from the JSON
        v.city = (i % 3 == 0).then(String::new); // ""
        v.device = if i < 4 { "" } else { "PC" };
        visits.push(v);
    }
    app.sim.insert_visits(CRAFTED, visits);
    let ask = Ask::new(
        CRAFTED,
        t("2026-06-01T00:00:00Z"),
        t("2026-06-02T00:00:00Z"),
    );
    let got = check(&app, &ask).await;
    assert_eq!(
        got["byRefererHost"],
        json!([
            { "key": null, "visits": 3, "uniqueVisitors": 3 },
            { "key": "www.baidu.com", "visits": 2, "uniqueVisitors": 2 },
            { "key": "mp.weixin.qq.com", "visits": 1, "uniqueVisitors": 1 },
        ])
    );
    assert_eq!(
        got["byCity"],
        json!([{ "key": null, "visits": 6, "uniqueVisitors": 3 }])
    );
}

#[tokio::test]
async fn ties_in_buckets_and_top_limits() {
    let app = spawn_app().await;
    let mut visits = Vec::new();
    // Two visits each for 北京, 上海 and none; one for 广东 and 浙江.
    for (i, province) in [
        Some("北京"),
        Some("上海"),
        None,
        Some("北京"),
        Some("上海"),
        None,
        Some("广东"),
        Some("浙江"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut v = crafted("2026-06-01T08:00:00Z", 10, Some(i as u64), "");
        v.province = province.map(str::to_owned);
        visits.push(v);
    }
    app.sim.insert_visits(CRAFTED, visits);
    let (from, to) = (t("2026-06-01T00:00:00Z"), t("2026-06-02T00:00:00Z"));
    for top in [1, 2, 3, 4, 100] {
        let got = check(
            &app,
            &Ask {
                top,
                ..Ask::new(CRAFTED, from, to)
            },
        )
        .await;
        assert_eq!(got["byProvince"].as_array().unwrap().len(), top.min(5));
    }
    let got = check(
        &app,
        &Ask {
            top: 100,
            ..Ask::new(CRAFTED, from, to)
        },
    )
    .await;
    let keys: Vec<&Value> = got["byProvince"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| &b["key"])
        .collect();
    assert_eq!(
        keys,
        [
            &json!("上海"),
            &json!("北京"),
            &Value::Null,
            &json!("广东"),
            &json!("浙江")
        ]
    );

    let before = app.sim.request_count();
    for top in [0, 101, -1] {
        let r = app
            .graphql(
                STATS,
                json!({ "id": CRAFTED.to_string(), "interval": "DAY", "top": top,
                "range": { "from": ts(from), "to": ts(to) } }),
            )
            .await;
        assert_eq!(error_code(&r), "BAD_USER_INPUT", "{r}");
        assert!(
            r["errors"][0]["message"].as_str().unwrap().contains("100"),
            "{r}"
        );
    }
    assert_eq!(
        app.sim.request_count(),
        before,
        "refused before any platform request"
    );
}

#[tokio::test]
async fn several_visits_starting_at_one_instant_including_the_peak() {
    let app = spawn_app().await;
    let mut visits = vec![
        crafted("2026-06-01T08:00:00Z", 60, Some(1), ""),
        // Three start as the first ends (closed intervals: four online).
        crafted("2026-06-01T09:00:00Z", 0, Some(2), ""),
        crafted("2026-06-01T09:00:00Z", 30, Some(3), ""),
        crafted("2026-06-01T09:00:00Z", 30, None, "cccccccc"),
        // Later, as many again but never more.
        crafted("2026-06-01T09:20:00Z", 5, Some(4), ""),
        crafted("2026-06-01T09:20:00Z", 5, Some(5), ""),
    ];
    // And the same visitor twice at one instant.
    visits.push(crafted("2026-06-01T10:00:00Z", 1, Some(1), ""));
    visits.push(crafted("2026-06-01T10:00:00Z", 1, Some(1), ""));
    app.sim.insert_visits(CRAFTED, visits);
    let ask = Ask {
        interval: "FIFTEEN_MINUTES",
        ..Ask::new(
            CRAFTED,
            t("2026-06-01T07:50:00Z"),
            t("2026-06-01T10:10:00Z"),
        )
    };
    let got = check(&app, &ask).await;
    assert_eq!(
        got["peakConcurrentViewers"],
        json!({ "viewers": 4, "at": "2026-06-01T09:00:00.000Z" })
    );
    let at_ten = got["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["start"] == "2026-06-01T10:00:00.000Z")
        .unwrap();
    assert_eq!(
        at_ten,
        &json!({ "start": "2026-06-01T10:00:00.000Z", "visits": 2,
        "uniqueVisitors": 1, "peakConcurrentViewers": 2 })
    );
    check(
        &app,
        &Ask {
            interval: "MINUTE",
            ..ask
        },
    )
    .await;
}

#[tokio::test]
async fn bad_zones_and_too_long_timelines_cost_no_platform_request() {
    let app = spawn_app().await;
    let (from, to) = (app.now - Duration::days(30), app.now - Duration::days(20));
    let cases = [
        ("Mars/Olympus_Mons", "HOUR", "timeZone"),
        ("+08:00", "HOUR", "timeZone"),
        ("UTC", "MINUTE", "10000"),
    ];
    for (zone, interval, says) in cases {
        let r = stats(
            &app,
            &Ask {
                zone,
                interval,
                ..Ask::new(EXAMPLE_ACTIVITY, from, to)
            },
        )
        .await;
        assert_eq!(error_code(&r), "BAD_USER_INPUT", "{r}");
        assert!(
            r["errors"][0]["message"].as_str().unwrap().contains(says),
            "{r}"
        );
    }
    let r = app
        .graphql(STATS, json!({ "id": "0", "interval": "DAY" }))
        .await;
    assert_eq!(error_code(&r), "BAD_USER_INPUT", "{r}");
    assert_eq!(app.sim.request_count(), 0);
}

#[tokio::test]
async fn the_timeline_bound_holds_for_the_whole_request_at_no_platform_request() {
    let app = spawn_app().await;
    // 6,000 minutes each: one is within the bound, two together are not,
    // whether by alias, fragment or a second `userVisitStats`.
    let from = app.now - Duration::days(30);
    let from = from - Duration::milliseconds(from.timestamp_millis() % 60_000);
    let range = json!({ "from": ts(from), "to": ts(from + Duration::minutes(6000)) });
    let vars = json!({ "id": EXAMPLE_ACTIVITY.to_string(), "range": range });
    let field = "userVisitStats(activityId: $id, range: $range)";
    let aliased = format!(
        "query($id: ID!, $range: TimeRange) {{ {field} {{ a: timeline(interval: MINUTE) {{ visits }} b: timeline(interval: MINUTE) {{ start }} }} }}"
    );
    let spread = format!(
        "query($id: ID!, $range: TimeRange) {{ {field} {{ timeline(interval: MINUTE) {{ visits }} }} ...F }} \
         fragment F on Query {{ again: {field} {{ timeline(interval: MINUTE) {{ visits }} }} }}"
    );
    for query in [aliased, spread] {
        let r = app.graphql(&query, vars.clone()).await;
        assert_eq!(error_code(&r), "BAD_USER_INPUT", "{r}");
        let message = r["errors"][0]["message"].as_str().unwrap();
        assert!(
            message.contains("12000") && message.contains("10000"),
            "names the figure and the limit: {message}"
        );
    }
    assert_eq!(app.sim.request_count(), 0);
    // One of them, or the same one twice (merged: it runs once), is served.
    let once = format!(
        "query($id: ID!, $range: TimeRange) {{ {field} {{ timeline(interval: MINUTE) {{ visits }} timeline(interval: MINUTE) {{ visits }} }} }}"
    );
    let r = app.graphql(&once, vars).await;
    assert!(r["errors"].is_null(), "{r}");
    let buckets = r["data"]["userVisitStats"]["timeline"].as_array().unwrap();
    assert_eq!(buckets.len(), 6000);
}

/// Platform requests made by `f`.
async fn cost<T>(app: &TestApp, f: impl std::future::Future<Output = T>) -> (T, usize) {
    let before = app.sim.request_count();
    let out = f.await;
    (out, app.sim.request_count() - before)
}

/// Pages read from the page cache so far.
async fn page_reads(app: &TestApp) -> f64 {
    let m = app.metrics().await;
    [
        "hit",
        "miss",
        "coalesced",
        "stale-while-revalidate",
        "stale-if-error",
    ]
    .iter()
    .map(|o| {
        metric(
            &m,
            &format!("visits_gateway_cache_lookups_total{{outcome=\"{o}\"}}"),
        )
    })
    .sum()
}

#[tokio::test]
async fn asking_again_costs_no_platform_request() {
    // Without the response cache, so the statistics themselves are reused.
    let app = spawn_app_with(|s| s.cache.response_cache_max_bytes = 0).await;
    let ask = Ask::new(
        EXAMPLE_ACTIVITY,
        app.now - Duration::days(30),
        app.now - Duration::days(10),
    );
    let (first, spent) = cost(&app, check(&app, &ask)).await;
    assert!(spent > 3, "{spent}");
    let reads = page_reads(&app).await;
    assert!(reads > 3.0, "{reads}");
    let (again, spent) = cost(&app, check(&app, &ask)).await;
    assert_eq!(spent, 0);
    assert_eq!(first, again);
    // Settled windows' statistics were kept: not even the page cache is read.
    assert_eq!(page_reads(&app).await, reads);

    // A range ending now: its newest window is built again from the page
    // cache each time, which answers without the platform within its TTL.
    let app = spawn_app_with(|s| s.cache.response_cache_max_bytes = 0).await;
    let r = app
        .graphql(
            STATS,
            json!({ "id": EXAMPLE_ACTIVITY.to_string(), "interval": "DAY" }),
        )
        .await;
    assert!(r["errors"].is_null(), "{r}");
    let (again, spent) = cost(
        &app,
        app.graphql(
            STATS,
            json!({ "id": EXAMPLE_ACTIVITY.to_string(), "interval": "DAY" }),
        ),
    )
    .await;
    assert_eq!(spent, 0);
    assert_eq!(again, r);
}

#[tokio::test]
async fn a_longer_range_with_the_same_from_rereads_none_of_the_first_windows_pages() {
    let app = spawn_app_with(|s| s.cache.response_cache_max_bytes = 0).await;
    let from = app.now - Duration::days(50);
    check(
        &app,
        &Ask::new(EXAMPLE_ACTIVITY, from, from + Duration::days(7)),
    )
    .await;
    let before = app.sim.seen().len();
    check(
        &app,
        &Ask::new(EXAMPLE_ACTIVITY, from, from + Duration::days(28)),
    )
    .await;
    let later = &app.sim.seen()[before..];
    assert!(!later.is_empty());
    assert!(
        later.iter().all(|r| r.started_at != ts(from)),
        "the first window was read again: {later:?}"
    );
    assert_eq!(
        later.iter().filter(|r| r.page == 1).count(),
        3,
        "one first page for each of the three new windows"
    );
}

#[tokio::test]
async fn statistics_over_their_bound_are_refused_after_the_first_pages_only() {
    let app = spawn_app_with(|s| s.paging.stats_max_platform_requests = 6).await;
    let ask = Ask::new(
        EXAMPLE_ACTIVITY,
        app.now - Duration::days(40),
        app.now - Duration::days(12),
    );
    let (r, spent) = cost(&app, stats(&app, &ask)).await;
    assert_eq!(error_code(&r), "QUERY_TOO_EXPENSIVE", "{r}");
    assert!(r["data"].is_null(), "{r}");
    let message = r["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("STATS_MAX_PLATFORM_REQUESTS") && message.contains(" 6 "),
        "{message}"
    );
    assert_eq!(spent, 4, "the four windows' first pages");
    assert!(app.sim.seen().iter().all(|r| r.page == 1));

    // Fewer windows than first pages over the bound: refused at once.
    let app = spawn_app_with(|s| s.paging.stats_max_platform_requests = 3).await;
    let (r, spent) = cost(&app, stats(&app, &ask)).await;
    assert_eq!(error_code(&r), "QUERY_TOO_EXPENSIVE", "{r}");
    assert_eq!(spent, 0);

    // The bound holds for the whole request, whatever its aliases: two
    // 28-day ranges need about 24 pages each.
    let app = spawn_app_with(|s| s.paging.stats_max_platform_requests = 40).await;
    let two = "query($a: TimeRange, $b: TimeRange) {
        a: userVisitStats(activityId: \"10024069\", range: $a) { visits }
        b: userVisitStats(activityId: \"10024069\", range: $b) { visits } }";
    let days = |n: i64| app.now - Duration::days(n);
    let range = |n: i64| json!({ "from": ts(days(n)), "to": ts(days(n - 28)) });
    let r = app
        .graphql(two, json!({ "a": range(58), "b": range(30) }))
        .await;
    assert_eq!(error_code(&r), "QUERY_TOO_EXPENSIVE", "{r}");
    check(&app, &Ask::new(EXAMPLE_ACTIVITY, days(58), days(30))).await;
}

#[tokio::test]
async fn a_client_outside_the_activity_is_forbidden_before_any_platform_request() {
    let file = crate::helpers::temp_dir().join("keys");
    std::fs::write(
        &file,
        crate::helpers::keys_line("web", "vgk_stats_test_key", "10024070"),
    )
    .unwrap();
    let app = spawn_app_with(move |s| {
        s.client.allow_unauthenticated = false;
        s.client.api_keys_file = Some(file);
    })
    .await;
    let r: Value = app
        .http
        .post(app.url("/graphql"))
        .bearer_auth("vgk_stats_test_key")
        .json(&json!({ "query": STATS, "variables": { "id": EXAMPLE_ACTIVITY.to_string(), "interval": "DAY" } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(error_code(&r), "FORBIDDEN", "{r}");
    assert_eq!(app.sim.request_count(), 0);
}

#[test]
fn the_statistics_settings_default_to_the_spec_and_name_themselves_when_bad() {
    use clap::Parser;
    use visits_gateway::config::{Cli, Settings};
    let s = Settings::defaults();
    assert_eq!(s.paging.stats_max_platform_requests, 200);
    assert_eq!(s.cache.stats_cache_max_bytes, 32 * 1024 * 1024);
    for bad in ["0", "100001", "many"] {
        let e = Cli::try_parse_from([
            "visits-gateway",
            "serve",
            "--stats-max-platform-requests",
            bad,
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("STATS_MAX_PLATFORM_REQUESTS") || e.contains("stats-max-platform-requests"),
            "{e}"
        );
    }
}

/// Asks until the statistics are no longer `STATS_LOADING` (at most
/// `within`), checking each answer's progress; the polls made.
async fn poll_until_loaded(app: &TestApp, ask: &Ask, within: std::time::Duration) -> usize {
    let started = std::time::Instant::now();
    let mut polls = 0;
    let mut read = 0;
    loop {
        let r = stats(app, ask).await;
        if r["errors"].is_null() {
            return polls;
        }
        assert_eq!(error_code(&r), "STATS_LOADING", "{r}");
        let e = &r["errors"][0]["extensions"];
        let now_read = e["pagesRead"].as_u64().unwrap();
        assert!(now_read >= read, "progress went back: {r}");
        assert!(now_read <= e["pagesNeeded"].as_u64().unwrap(), "{r}");
        assert!(e["retryAfterSeconds"].as_u64().unwrap() >= 1, "{r}");
        read = now_read;
        polls += 1;
        assert!(
            started.elapsed() < within,
            "still loading after {within:?}: {r}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// Platform requests asked more than once: `(activity, window, page, size)`.
pub(crate) fn fetched_twice(app: &TestApp) -> Vec<String> {
    let mut seen = HashSet::new();
    app.sim
        .seen()
        .iter()
        .map(|r| {
            format!(
                "{} {}..{} page {} size {}",
                r.activity, r.started_at, r.ended_at, r.page, r.page_size
            )
        })
        .filter(|r| !seen.insert(r.clone()))
        .collect()
}

/// The pages a range needs from the simulated platform (50 visits a page;
/// a window without visits still has its first page).
pub(crate) fn pages_needed(
    app: &TestApp,
    activity: u64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> u64 {
    let mut pages = 0;
    let mut start = from;
    while start < to {
        let end = (start + Duration::days(7)).min(to);
        let n = app.sim.visits_between(activity, start, end).len() as u64;
        pages += n.div_ceil(50).max(1);
        start = end;
    }
    pages
}

/// A slow budget (5/s, burst 2) and a 3 s deadline: a 35-day range of the
/// example activity needs about 30 pages, six seconds of budget.
pub(crate) fn slow_budget(s: &mut visits_gateway::config::Settings) {
    s.cache.response_cache_max_bytes = 0;
    s.upstream.rate_per_second = 5.0;
    s.upstream.burst = 2;
    s.upstream.deadline = std::time::Duration::from_millis(3000);
}

#[tokio::test]
async fn a_long_cold_range_answers_stats_loading_at_once_and_fills_in_once() {
    let app = spawn_app_with(slow_budget).await;
    let ask = Ask::new(
        EXAMPLE_ACTIVITY,
        app.now - Duration::days(40),
        app.now - Duration::days(5),
    );
    let needed = pages_needed(&app, ask.activity, ask.from, ask.to);
    assert!(needed > 20, "{needed}");

    let t = std::time::Instant::now();
    let r = stats(&app, &ask).await;
    let took = t.elapsed();
    eprintln!("STATS_LOADING answered in {took:?} ({needed} pages needed)");
    assert_eq!(error_code(&r), "STATS_LOADING", "{r}");
    assert!(r["data"].is_null(), "{r}");
    assert!(
        took < std::time::Duration::from_millis(1500),
        "well within the 3 s deadline: {took:?}"
    );
    let e = &r["errors"][0]["extensions"];
    // The five first pages were read to learn the counts.
    assert_eq!(e["pagesNeeded"].as_u64(), Some(needed), "{r}");
    let read = e["pagesRead"].as_u64().unwrap();
    assert!((5..needed).contains(&read), "{r}");
    let retry = e["retryAfterSeconds"].as_u64().unwrap();
    assert_eq!(retry, (needed - read).div_ceil(5), "pages left at 5/s: {r}");

    // Asked again, by two at once: the one job's progress, no second job.
    let (a, b) = tokio::join!(stats(&app, &ask), stats(&app, &ask));
    for r in [&a, &b] {
        assert_eq!(error_code(r), "STATS_LOADING", "{r}");
        assert!(r["errors"][0]["extensions"]["pagesRead"].as_u64().unwrap() >= read);
    }
    let metrics = app.metrics().await;
    assert_eq!(metric(&metrics, "visits_gateway_stats_jobs"), 1.0);

    let polls = poll_until_loaded(&app, &ask, std::time::Duration::from_secs(30)).await;
    eprintln!(
        "loaded {:?} after the first ask, {polls} polls",
        t.elapsed()
    );
    assert_eq!(fetched_twice(&app), Vec::<String>::new());
    assert_eq!(app.sim.request_count() as u64, needed, "every page once");
    let metrics = app.metrics().await;
    assert_eq!(metric(&metrics, "visits_gateway_stats_jobs"), 0.0);
    assert_eq!(
        metric(
            &metrics,
            "visits_gateway_stats_jobs_ended_total{outcome=\"done\"}"
        ),
        1.0
    );
    // The figures are the platform's, and cost nothing more.
    let (got, spent) = cost(&app, check(&app, &ask)).await;
    assert_eq!(spent, 0);
    let list = app
        .user_visits(json!({ "id": EXAMPLE_ACTIVITY.to_string(),
            "range": { "from": ts(ask.from), "to": ts(ask.to) }, "first": 1 }))
        .await;
    assert_eq!(got["visits"], list["data"]["userVisits"]["totalCount"]);
}

#[tokio::test]
async fn first_pages_beyond_the_budgets_reach_are_read_in_the_background_too() {
    // Nine windows' first pages, four a second after one at once: none is
    // read on the query's path.
    let app = spawn_app_with(|s| {
        slow_budget(s);
        s.upstream.rate_per_second = 4.0;
        s.upstream.burst = 1;
    })
    .await;
    let (from, to) = (app.now - Duration::days(62), app.now - Duration::days(2));
    app.sim.insert_visits(
        CRAFTED,
        (0..30)
            .map(|i| {
                let at = ts(from + Duration::days(2 * i) + Duration::minutes(7 * i + 1));
                crafted(&at, 30, Some(i as u64 % 7), "")
            })
            .collect(),
    );
    let ask = Ask::new(CRAFTED, from, to);
    let t = std::time::Instant::now();
    let (r, spent) = cost(&app, stats(&app, &ask)).await;
    let took = t.elapsed();
    eprintln!("STATS_LOADING (first pages) answered in {took:?}");
    assert_eq!(error_code(&r), "STATS_LOADING", "{r}");
    assert!(took < std::time::Duration::from_millis(1500), "{took:?}");
    let e = &r["errors"][0]["extensions"];
    assert_eq!(e["pagesNeeded"].as_u64(), Some(9), "a page a window: {r}");
    assert!(e["pagesRead"].as_u64().unwrap() < 9, "{r}");
    assert!(e["retryAfterSeconds"].as_u64().unwrap() >= 1, "{r}");
    assert!(spent <= 1, "the job has barely started: {spent}");

    poll_until_loaded(&app, &ask, std::time::Duration::from_secs(20)).await;
    assert_eq!(fetched_twice(&app), Vec::<String>::new());
    assert_eq!(app.sim.request_count(), 9);
    let (_, spent) = cost(&app, check(&app, &ask)).await;
    assert_eq!(spent, 0);
}

#[tokio::test]
async fn a_range_over_the_statistics_bound_is_refused_not_loaded() {
    let app = spawn_app_with(|s| {
        slow_budget(s);
        s.paging.stats_max_platform_requests = 10;
    })
    .await;
    let ask = Ask::new(
        EXAMPLE_ACTIVITY,
        app.now - Duration::days(40),
        app.now - Duration::days(5),
    );
    let r = stats(&app, &ask).await;
    assert_eq!(error_code(&r), "QUERY_TOO_EXPENSIVE", "{r}");
    let metrics = app.metrics().await;
    assert_eq!(metric(&metrics, "visits_gateway_stats_jobs"), 0.0);
}
