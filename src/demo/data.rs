//! Generated, realistic visits: signed-in and anonymous viewers from across
//! China, on phones and desktops, some arriving through an invitation. The
//! same seed gives the same data, so tests can compare against it.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use crate::time::format;

#[derive(Debug, Clone, PartialEq)]
pub struct SimVisit {
    /// The platform's own row id: its order.
    pub id: u64,
    pub user_id: Option<u64>,
    pub session: String,
    pub nickname: Option<String>,
    pub avatar: Option<String>,
    pub province: Option<String>,
    pub city: Option<String>,
    pub visit_at: DateTime<Utc>,
    pub duration: u32,
    pub referer: Option<String>,
    pub user_agent: &'static str,
    pub device: &'static str,
    pub partner_uid: Option<String>,
    pub invited_by: Option<u64>,
}

const PLACES: &[(&str, &str)] = &[
    ("广东", "深圳"),
    ("广东", "广州"),
    ("北京", "北京"),
    ("上海", "上海"),
    ("浙江", "杭州"),
    ("四川", "成都"),
    ("湖北", "武汉"),
    ("江苏", "南京"),
    ("福建", "厦门"),
    ("陕西", "西安"),
];
const NAMES: &[&str] = &[
    "小明",
    "Lily",
    "王老师",
    "阿强",
    "晨曦",
    "Kevin",
    "雨桐",
    "老张",
    "Momo",
    "若水",
];
const DEVICES: &[(&str, &str)] = &[
    (
        "iPhone",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148 MicroMessenger/8.0.49",
    ),
    (
        "Android",
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/126.0 Mobile Safari/537.36",
    ),
    (
        "PC",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
    ),
    (
        "Mac",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/17.5 Safari/605.1.15",
    ),
];
const REFERERS: &[&str] = &[
    "https://mp.weixin.qq.com/",
    "https://shangzhibo.tv/",
    "https://www.baidu.com/",
];

/// `count` visits of one activity spread over the 60 days before `now`.
pub fn generate(
    activity: u64,
    count: usize,
    now: DateTime<Utc>,
    next_id: &mut u64,
) -> Vec<SimVisit> {
    let mut rng = fastrand::Rng::with_seed(activity);
    let span_ms = Duration::days(60).num_milliseconds();
    let mut times: Vec<DateTime<Utc>> = (0..count)
        .map(|_| now - Duration::milliseconds(rng.i64(1..span_ms)))
        .collect();
    times.sort();
    times
        .into_iter()
        .map(|at| {
            let id = *next_id;
            *next_id += 1;
            visit(id, at, &mut rng)
        })
        .collect()
}

pub fn visit(id: u64, visit_at: DateTime<Utc>, rng: &mut fastrand::Rng) -> SimVisit {
    let anonymous = rng.u8(0..10) < 4;
    let (province, city) = PLACES[rng.usize(..PLACES.len())];
    let (device, user_agent) = DEVICES[rng.usize(..DEVICES.len())];
    let session: String = (0..32)
        .map(|_| char::from_digit(rng.u32(0..16), 16).unwrap_or('0'))
        .collect();
    SimVisit {
        id,
        user_id: (!anonymous).then(|| rng.u64(100_000..999_999)),
        session,
        nickname: (!anonymous).then(|| NAMES[rng.usize(..NAMES.len())].to_owned()),
        avatar: (!anonymous && rng.bool())
            .then(|| format!("https://img.example.com/avatar/{id}.png")),
        // Some viewers cannot be located: the platform then leaves the fields out.
        province: (rng.u8(0..10) > 0).then(|| province.to_owned()),
        city: (rng.u8(0..10) > 1).then(|| city.to_owned()),
        visit_at,
        duration: rng.u32(0..180),
        referer: rng
            .bool()
            .then(|| REFERERS[rng.usize(..REFERERS.len())].to_owned()),
        user_agent,
        device,
        partner_uid: (!anonymous && rng.u8(0..4) == 0).then(|| format!("wx_{:08x}", rng.u32(..))),
        invited_by: (rng.u8(0..5) == 0).then(|| rng.u64(100_000..999_999)),
    }
}

impl SimVisit {
    /// The platform's JSON for this visit, with its habits: `""` for a missing
    /// avatar or partner id, absent fields, an extra field nobody documented.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "userId": self.user_id,
            "visitAt": format(self.visit_at),
            "lastOnlineAt": format(self.visit_at + Duration::minutes(i64::from(self.duration))),
            "duration": self.duration,
            "userAgent": self.user_agent,
            "device": self.device,
            "nickname": self.nickname.as_deref().unwrap_or("匿名用户"),
            "avatar": self.avatar.as_deref().unwrap_or(""),
            "partnerUID": self.partner_uid.as_deref().unwrap_or(""),
            "invitedBy": self.invited_by,
            "referer": self.referer,
            "clientVersion": "3.2.1",
        });
        let obj = v.as_object_mut().expect("object");
        if let Some(p) = &self.province {
            obj.insert("province".into(), json!(p));
        }
        if let Some(c) = &self.city {
            obj.insert("city".into(), json!(c));
        }
        if self.user_id.is_none() {
            obj.insert("anonymousId".into(), json!(self.anonymous_id()));
        }
        v
    }

    /// What the gateway should serve for this visit, for tests to compare:
    /// `(visitAt, userId, anonymousId)`.
    pub fn identity(&self) -> (String, Option<String>, Option<String>) {
        (
            format(self.visit_at),
            self.user_id.map(|u| u.to_string()),
            self.user_id
                .is_none()
                .then(|| self.anonymous_id().to_owned()),
        )
    }

    /// The first 8 characters of the session id (`""` for a crafted visit
    /// without a session).
    pub fn anonymous_id(&self) -> &str {
        self.session.get(..8).unwrap_or(&self.session)
    }
}
