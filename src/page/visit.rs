//! The platform's JSON, read leniently (strings may be missing or
//! null, unknown fields may appear), then turned into our own [`Visit`].
//!
//! A page is parsed and checked whole when it is fetched; the cache then
//! holds typed visits. Text repeated within a page (cities, devices, user
//! agents, referers) is stored once per page and shared, so a cached visit
//! costs less memory than its JSON.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::error::GatewayError;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageDto<'a> {
    pub pager: PagerDto,
    #[serde(borrow)]
    pub items: Vec<ItemDto<'a>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PagerDto {
    pub page_size: u64,
    pub total: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ItemDto<'a> {
    pub user_id: Value,
    #[serde(borrow)]
    pub province: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub city: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub visit_at: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub last_online_at: Option<Cow<'a, str>>,
    pub duration: Value,
    #[serde(borrow)]
    pub referer: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub user_agent: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub device: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub nickname: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub avatar: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub anonymous_id: Option<Cow<'a, str>>,
    #[serde(rename = "partnerUID", borrow)]
    pub partner_uid: Option<Cow<'a, str>>,
    pub invited_by: Value,
}

/// Text shared by the visits of one page.
pub type Text = Arc<str>;

/// One visit, as the gateway serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct Visit {
    pub user_id: Option<Text>,
    pub anonymous_id: Option<Text>,
    pub nickname: Text,
    pub avatar: Option<Text>,
    pub province: Option<Text>,
    pub city: Option<Text>,
    pub visit_at: DateTime<Utc>,
    pub last_online_at: DateTime<Utc>,
    pub duration_minutes: i32,
    pub referer: Option<Text>,
    pub user_agent: Option<Text>,
    pub device: Option<Text>,
    pub partner_uid: Option<Text>,
    pub invited_by: Option<Text>,
}

/// Stores each distinct text of a page once, and counts the bytes it holds.
#[derive(Default)]
pub struct Interner {
    texts: HashSet<Text>,
    /// Heap bytes of the distinct texts (contents and `Arc` counters).
    pub heap_bytes: usize,
}

impl Interner {
    fn share(&mut self, s: &str) -> Text {
        if let Some(t) = self.texts.get(s) {
            return t.clone();
        }
        let t: Text = Arc::from(s);
        self.heap_bytes += s.len() + 2 * std::mem::size_of::<usize>();
        self.texts.insert(t.clone());
        t
    }

    /// `""`, null and missing all mean "no value" (docs/api.md).
    fn text(&mut self, s: Option<Cow<'_, str>>) -> Option<Text> {
        s.filter(|v| !v.is_empty()).map(|v| self.share(&v))
    }

    /// Ids may come as numbers or strings; null and "" mean none.
    fn id(&mut self, v: Value) -> Option<Text> {
        match v {
            Value::Number(n) => Some(self.share(&n.to_string())),
            Value::String(s) if !s.is_empty() => Some(self.share(&s)),
            _ => None,
        }
    }
}

fn timestamp(field: &str, v: Option<Cow<'_, str>>) -> Result<DateTime<Utc>, GatewayError> {
    let raw = v.ok_or_else(|| {
        GatewayError::bad_response(format!("the platform sent a visit without {field}"))
    })?;
    crate::time::parse_rfc3339(&raw).ok_or_else(|| {
        GatewayError::bad_response(format!("the platform sent an unreadable {field}"))
    })
}

impl Visit {
    pub fn from_dto(d: ItemDto<'_>, texts: &mut Interner) -> Result<Self, GatewayError> {
        let visit_at = timestamp("visitAt", d.visit_at)?;
        let last_online_at = timestamp("lastOnlineAt", d.last_online_at)?;
        let duration_minutes = match d.duration {
            Value::Null => 0,
            Value::Number(n) => n
                .as_f64()
                .filter(|m| m.is_finite() && *m >= 0.0 && *m <= f64::from(i32::MAX))
                .map(|m| m.round() as i32)
                .ok_or_else(|| {
                    GatewayError::bad_response("the platform sent an unreadable duration")
                })?,
            _ => {
                return Err(GatewayError::bad_response(
                    "the platform sent an unreadable duration",
                ));
            }
        };
        let user_id = texts.id(d.user_id);
        Ok(Visit {
            anonymous_id: if user_id.is_none() {
                texts.text(d.anonymous_id)
            } else {
                None
            },
            user_id,
            nickname: texts
                .text(d.nickname)
                .unwrap_or_else(|| texts.share("匿名用户")),
            avatar: texts.text(d.avatar),
            province: texts.text(d.province),
            city: texts.text(d.city),
            visit_at,
            last_online_at,
            duration_minutes,
            referer: texts.text(d.referer),
            user_agent: texts.text(d.user_agent),
            device: texts.text(d.device),
            partner_uid: texts.text(d.partner_uid),
            invited_by: texts.id(d.invited_by),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn missing_null_and_empty_strings_become_none_and_unknown_fields_pass() {
        let body = r#"{"pager":{"page":1,"pageSize":15,"total":2,"extra":1},"items":[
            {"userId":null,"anonymousId":"ab12cd34","nickname":null,"avatar":"","province":"广东",
             "visitAt":"2019-06-21T01:52:12.736Z","lastOnlineAt":"2019-06-21T02:00:00.000Z",
             "duration":8,"partnerUID":"","newField":{"x":1}},
            {"userId":42,"anonymousId":"zzz","nickname":"小明","visitAt":"2019-06-21T01:53:00.000Z",
             "lastOnlineAt":"2019-06-21T01:54:00.000Z","invitedBy":7}
        ]}"#;
        let page = crate::page::parse(body.as_bytes(), 1, 15).unwrap();
        let visits = &page.visits;
        assert_eq!(visits.len(), 2);
        let anon = &visits[0];
        assert_eq!(anon.user_id, None);
        assert_eq!(anon.anonymous_id.as_deref(), Some("ab12cd34"));
        assert_eq!(&*anon.nickname, "匿名用户");
        assert_eq!(
            (
                anon.avatar.as_deref(),
                anon.city.as_deref(),
                anon.partner_uid.as_deref()
            ),
            (None, None, None)
        );
        assert_eq!(anon.duration_minutes, 8);
        let known = &visits[1];
        assert_eq!(known.user_id.as_deref(), Some("42"));
        assert_eq!(
            known.anonymous_id, None,
            "anonymousId is for anonymous visitors only"
        );
        assert_eq!(known.invited_by.as_deref(), Some("7"));
        assert_eq!(known.duration_minutes, 0);
    }

    #[test]
    fn an_unreadable_visit_time_is_a_bad_response() {
        let item = ItemDto {
            visit_at: Some("yesterday".into()),
            ..Default::default()
        };
        let err = Visit::from_dto(item, &mut Interner::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::UpstreamBadResponse);
    }

    #[test]
    fn repeated_text_is_stored_once_per_page() {
        let mut texts = Interner::default();
        let a = texts.text(Some("深圳".into())).unwrap();
        let b = texts.text(Some(Cow::Owned("深圳".to_owned()))).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(texts.heap_bytes, "深圳".len() + 16);
    }
}
