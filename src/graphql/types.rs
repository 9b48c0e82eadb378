//! The output types of the API (docs/api.md).

use async_graphql::{ID, Object, SimpleObject};

use super::cursor::Cursor;
use super::scalars::DateTime;
use crate::page::Visit;
use crate::paging::{self, ActivityId};
use crate::visits::VisitRef;

/// A page of visits. Edges and their cursors are built only when a query
/// selects them, and `nodes` and `edges` share the visits rather than each
/// holding a copy.
pub struct UserVisitConnection {
    pub activity: ActivityId,
    pub range: paging::ResolvedRange,
    /// `(offset in the whole list, visit)`, in list order.
    pub items: Vec<(u64, VisitRef)>,
    pub has_next_page: bool,
    pub has_previous_page: bool,
    pub total: u64,
}

impl UserVisitConnection {
    fn cursor(&self, offset: u64) -> String {
        Cursor::encode(self.activity, self.range, offset)
    }
}

// Serial: every field is a plain read, cheaper in turn than as concurrent
// futures (async-graphql joins an object's fields in a FuturesUnordered).
#[Object(serial)]
impl UserVisitConnection {
    async fn edges(&self) -> Vec<UserVisitEdge<'_>> {
        self.items
            .iter()
            .map(|(offset, node)| UserVisitEdge {
                cursor: self.cursor(*offset),
                node: UserVisit(node),
            })
            .collect()
    }

    async fn nodes(&self) -> Vec<UserVisit<'_>> {
        self.items
            .iter()
            .map(|(_, visit)| UserVisit(visit))
            .collect()
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
            from: DateTime(self.range.from()),
            to: DateTime(self.range.to()),
        }
    }
}

#[derive(SimpleObject)]
#[graphql(serial)]
pub struct ResolvedRange {
    pub from: DateTime,
    pub to: DateTime,
}

pub struct UserVisitEdge<'a> {
    cursor: String,
    node: UserVisit<'a>,
}

#[Object(serial)]
impl<'a> UserVisitEdge<'a> {
    async fn cursor(&self) -> &str {
        &self.cursor
    }

    async fn node(&self) -> UserVisit<'a> {
        self.node
    }
}

#[derive(SimpleObject)]
#[graphql(serial)]
pub struct PageInfo {
    pub has_next_page: bool,
    pub has_previous_page: bool,
    pub start_cursor: Option<String>,
    pub end_cursor: Option<String>,
}

/// One visit, read from the cached page it came from.
#[derive(Clone, Copy)]
pub struct UserVisit<'a>(pub &'a Visit);

#[Object(serial)]
impl UserVisit<'_> {
    /// Null for anonymous visitors.
    async fn user_id(&self) -> Option<ID> {
        self.0.user_id.as_deref().map(|id| ID(id.to_owned()))
    }

    async fn is_anonymous(&self) -> bool {
        self.0.user_id.is_none()
    }

    /// The first 8 characters of an anonymous visitor's session id.
    async fn anonymous_id(&self) -> Option<&str> {
        self.0.anonymous_id.as_deref()
    }

    async fn nickname(&self) -> &str {
        &self.0.nickname
    }

    async fn avatar(&self) -> Option<&str> {
        self.0.avatar.as_deref()
    }

    async fn province(&self) -> Option<&str> {
        self.0.province.as_deref()
    }

    async fn city(&self) -> Option<&str> {
        self.0.city.as_deref()
    }

    async fn visit_at(&self) -> DateTime {
        DateTime(self.0.visit_at)
    }

    async fn last_online_at(&self) -> DateTime {
        DateTime(self.0.last_online_at)
    }

    async fn duration_minutes(&self) -> i32 {
        self.0.duration_minutes
    }

    async fn referer(&self) -> Option<&str> {
        self.0.referer.as_deref()
    }

    async fn user_agent(&self) -> Option<&str> {
        self.0.user_agent.as_deref()
    }

    async fn device(&self) -> Option<&str> {
        self.0.device.as_deref()
    }

    /// Third-party login id.
    async fn partner_uid(&self) -> Option<&str> {
        self.0.partner_uid.as_deref()
    }

    async fn invited_by(&self) -> Option<ID> {
        self.0.invited_by.as_deref().map(|id| ID(id.to_owned()))
    }
}
