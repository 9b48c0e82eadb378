//! The output types of SPEC §2.

use async_graphql::{ID, Object, SimpleObject};

use super::cursor::Cursor;
use super::scalars::DateTime;
use crate::paging::{self, ActivityId};
use crate::upstream::Visit;

/// A page of visits. Edges and their cursors are built only when a query
/// selects them, and `nodes` and `edges` share the visits rather than each
/// holding a copy.
pub struct UserVisitConnection {
    pub activity: ActivityId,
    pub range: paging::ResolvedRange,
    /// `(offset in the whole list, visit)`, in list order.
    pub items: Vec<(u64, UserVisit)>,
    pub has_next_page: bool,
    pub has_previous_page: bool,
    pub total: u64,
}

impl UserVisitConnection {
    fn cursor(&self, offset: u64) -> String {
        Cursor {
            activity: self.activity,
            range: self.range,
            offset,
        }
        .encode()
    }
}

#[Object]
impl UserVisitConnection {
    async fn edges(&self) -> Vec<UserVisitEdge<'_>> {
        self.items
            .iter()
            .map(|(offset, node)| UserVisitEdge {
                cursor: self.cursor(*offset),
                node,
            })
            .collect()
    }

    async fn nodes(&self) -> Vec<&UserVisit> {
        self.items.iter().map(|(_, visit)| visit).collect()
    }

    async fn page_info(&self) -> PageInfo {
        PageInfo {
            has_next_page: self.has_next_page,
            has_previous_page: self.has_previous_page,
            start_cursor: self.items.first().map(|(o, _)| self.cursor(*o)),
            end_cursor: self.items.last().map(|(o, _)| self.cursor(*o)),
        }
    }

    /// The number of visits in the whole resolved range.
    async fn total_count(&self) -> i64 {
        i64::try_from(self.total).unwrap_or(i64::MAX)
    }

    /// The window actually served, after defaults and pinning.
    async fn range(&self) -> ResolvedRange {
        ResolvedRange {
            from: DateTime(self.range.from),
            to: DateTime(self.range.to),
        }
    }
}

#[derive(SimpleObject)]
pub struct ResolvedRange {
    pub from: DateTime,
    pub to: DateTime,
}

pub struct UserVisitEdge<'a> {
    cursor: String,
    node: &'a UserVisit,
}

#[Object]
impl UserVisitEdge<'_> {
    async fn cursor(&self) -> &str {
        &self.cursor
    }

    async fn node(&self) -> &UserVisit {
        self.node
    }
}

#[derive(SimpleObject)]
pub struct PageInfo {
    pub has_next_page: bool,
    pub has_previous_page: bool,
    pub start_cursor: Option<String>,
    pub end_cursor: Option<String>,
}

#[derive(SimpleObject)]
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
