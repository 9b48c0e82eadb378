//! The platform's JSON, read leniently (SPEC §1: strings may be missing or
//! null, unknown fields may appear), then turned into our own [`Visit`].

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::error::GatewayError;

/// A page's `pager`; its items are located by [`super::layout`].
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PagerDto {
    pub page_size: u64,
    pub total: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ItemDto {
    pub user_id: Value,
    pub province: Option<String>,
    pub city: Option<String>,
    pub visit_at: Option<String>,
    pub last_online_at: Option<String>,
    pub duration: Value,
    pub referer: Option<String>,
    pub user_agent: Option<String>,
    pub device: Option<String>,
    pub nickname: Option<String>,
    pub avatar: Option<String>,
    pub anonymous_id: Option<String>,
    #[serde(rename = "partnerUID")]
    pub partner_uid: Option<String>,
    pub invited_by: Value,
}

/// The platform's error envelope `{name,message,status}`; only `message` is
/// ever passed on, and only when the body has this shape.
#[derive(Debug, Deserialize)]
pub struct ErrorEnvelope {
    pub message: Option<String>,
}

/// One visit, as the gateway serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct Visit {
    pub user_id: Option<String>,
    pub anonymous_id: Option<String>,
    pub nickname: String,
    pub avatar: Option<String>,
    pub province: Option<String>,
    pub city: Option<String>,
    pub visit_at: DateTime<Utc>,
    pub last_online_at: DateTime<Utc>,
    pub duration_minutes: i32,
    pub referer: Option<String>,
    pub user_agent: Option<String>,
    pub device: Option<String>,
    pub partner_uid: Option<String>,
    pub invited_by: Option<String>,
}

/// `""`, null and missing all mean "no value" (SPEC §2).
fn text(s: Option<String>) -> Option<String> {
    s.filter(|v| !v.is_empty())
}

/// Ids may come as numbers or strings; null, "" and 0-less junk mean none.
fn id(v: Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s),
        _ => None,
    }
}

fn timestamp(field: &str, v: Option<String>) -> Result<DateTime<Utc>, GatewayError> {
    let raw = v.ok_or_else(|| {
        GatewayError::bad_response(format!("the platform sent a visit without {field}"))
    })?;
    crate::time::parse_rfc3339(&raw).ok_or_else(|| {
        GatewayError::bad_response(format!("the platform sent an unreadable {field}"))
    })
}

impl TryFrom<ItemDto> for Visit {
    type Error = GatewayError;

    fn try_from(d: ItemDto) -> Result<Self, GatewayError> {
        let visit_at = timestamp("visitAt", d.visit_at)?;
        let last_online_at = timestamp("lastOnlineAt", d.last_online_at)?;
        let duration_minutes = match d.duration {
            Value::Null => 0,
            Value::Number(n) => n
                .as_f64()
                .filter(|m| m.is_finite() && *m >= 0.0 && *m <= i32::MAX as f64)
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
        let user_id = id(d.user_id);
        Ok(Visit {
            anonymous_id: if user_id.is_none() {
                text(d.anonymous_id)
            } else {
                None
            },
            user_id,
            nickname: text(d.nickname).unwrap_or_else(|| "匿名用户".to_owned()),
            avatar: text(d.avatar),
            province: text(d.province),
            city: text(d.city),
            visit_at,
            last_online_at,
            duration_minutes,
            referer: text(d.referer),
            user_agent: text(d.user_agent),
            device: text(d.device),
            partner_uid: text(d.partner_uid),
            invited_by: id(d.invited_by),
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
        let page = crate::upstream::parse_page(body.as_bytes().to_vec().into(), 15).unwrap();
        let visits = page.visits(0, 15).unwrap();
        assert_eq!(visits.len(), 2);
        let anon = &visits[0];
        assert_eq!(anon.user_id, None);
        assert_eq!(anon.anonymous_id.as_deref(), Some("ab12cd34"));
        assert_eq!(anon.nickname, "匿名用户");
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
        let err = Visit::try_from(item).unwrap_err();
        assert_eq!(err.code, ErrorCode::UpstreamBadResponse);
    }
}
