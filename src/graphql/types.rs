//! The output types of SPEC §2.

use async_graphql::{ID, SimpleObject};

use super::scalars::DateTime;
use crate::upstream::Visit;

#[derive(SimpleObject)]
pub struct UserVisitConnection {
    pub edges: Vec<UserVisitEdge>,
    pub nodes: Vec<UserVisit>,
    pub page_info: PageInfo,
    /// The number of visits in the whole resolved range.
    pub total_count: i64,
    /// The window actually served, after defaults and pinning.
    pub range: ResolvedRange,
}

#[derive(SimpleObject)]
pub struct ResolvedRange {
    pub from: DateTime,
    pub to: DateTime,
}

#[derive(SimpleObject)]
pub struct UserVisitEdge {
    pub cursor: String,
    pub node: UserVisit,
}

#[derive(SimpleObject)]
pub struct PageInfo {
    pub has_next_page: bool,
    pub has_previous_page: bool,
    pub start_cursor: Option<String>,
    pub end_cursor: Option<String>,
}

#[derive(SimpleObject, Clone)]
pub struct UserVisit {
    /// Null for anonymous visitors.
    pub user_id: Option<ID>,
    pub is_anonymous: bool,
    /// The first 8 characters of an anonymous visitor's session id.
    pub anonymous_id: Option<String>,
    pub nickname: String,
    pub avatar: Option<String>,
    pub province: Option<String>,
    pub city: Option<String>,
    pub visit_at: DateTime,
    pub last_online_at: DateTime,
    pub duration_minutes: i32,
    pub referer: Option<String>,
    pub user_agent: Option<String>,
    pub device: Option<String>,
    /// Third-party login id.
    pub partner_uid: Option<String>,
    pub invited_by: Option<ID>,
}

impl From<Visit> for UserVisit {
    fn from(v: Visit) -> Self {
        Self {
            is_anonymous: v.user_id.is_none(),
            user_id: v.user_id.map(ID),
            anonymous_id: v.anonymous_id,
            nickname: v.nickname,
            avatar: v.avatar,
            province: v.province,
            city: v.city,
            visit_at: DateTime(v.visit_at),
            last_online_at: DateTime(v.last_online_at),
            duration_minutes: v.duration_minutes,
            referer: v.referer,
            user_agent: v.user_agent,
            device: v.device,
            partner_uid: v.partner_uid,
            invited_by: v.invited_by.map(ID),
        }
    }
}
