//! The one window reader: how an activity's window is read page by page
//! through the page cache, for `userVisits`, the statistics and the live
//! poller alike.
//!
//! - A window's first page, asked in our page size, tells its shape: how
//!   many visits it holds and the page size the platform really serves (it
//!   may cap ours). Later page numbers count in that served size.
//! - First pages of several windows: the oldest alone first, so that when
//!   the platform refuses the activity (404, feature off, bad token) one
//!   request learns it, not one per window; then the rest together.
//! - A page shorter than its window's first page promised means the list
//!   changed between two of our requests: it is refused, never served
//!   shifted (a client's offsets would silently move).
//! - With a request's platform slots (`WINDOW_CONCURRENCY`), each page holds
//!   one while the cache may call the platform.

use std::future::Future;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::cache::{PageCache, Served};
use crate::error::GatewayError;
use crate::page::{PageRequest, Visit};
use crate::paging::{ActivityId, Window, WindowShape};

/// Reads one activity's windows until a deadline.
#[derive(Clone, Copy)]
pub struct Reader<'a> {
    cache: &'a PageCache,
    slots: Option<&'a Semaphore>,
    activity: ActivityId,
    /// The page size asked of the platform (`UPSTREAM_PAGE_SIZE`).
    page_size: u64,
    deadline: Instant,
    /// The clock every page read sees (whether a window is recent): the
    /// request's pinned one, or a background job's own.
    now: DateTime<Utc>,
}

impl<'a> Reader<'a> {
    pub fn new(
        cache: &'a PageCache,
        activity: ActivityId,
        page_size: u64,
        deadline: Instant,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            cache,
            slots: None,
            activity,
            page_size,
            deadline,
            now,
        }
    }

    /// Each page read holds one of `slots` while the cache may call the platform.
    pub fn with_slots(self, slots: &'a Semaphore) -> Self {
        Self {
            slots: Some(slots),
            ..self
        }
    }

    /// The request of page `page` of `window`: page 1 in our size, a later
    /// page in the size `first` shows the platform serves.
    pub fn request(&self, window: Window, page: u64, first: Option<&Served>) -> PageRequest {
        PageRequest {
            activity: self.activity,
            window,
            page,
            page_size: match first {
                Some(first) if page > 1 => shape(first).page_size,
                _ => self.page_size,
            },
        }
    }

    /// One page through the cache.
    pub async fn page(self, req: PageRequest) -> Result<Served, GatewayError> {
        let _slot =
            match self.slots {
                Some(slots) => Some(slots.acquire().await.map_err(|_| {
                    GatewayError::internal("the request's platform slots are closed")
                })?),
                None => None,
            };
        self.cache.page(req, self.deadline, self.now).await
    }

    /// The first page of `window`.
    pub async fn first(&self, window: Window) -> Result<Served, GatewayError> {
        self.page(self.request(window, 1, None)).await
    }

    /// Page `page` of a window whose first page is `first`.
    pub async fn later(
        &self,
        window: Window,
        first: &Served,
        page: u64,
    ) -> Result<Served, GatewayError> {
        if page <= 1 {
            return Ok(first.clone());
        }
        self.page(self.request(window, page, Some(first))).await
    }

    /// The first pages of `windows`, in order ([`oldest_first`]).
    pub async fn firsts(&self, windows: &[Window]) -> Result<Vec<Served>, GatewayError> {
        let reqs = windows.iter().map(|w| self.request(*w, 1, None)).collect();
        let firsts = oldest_first(reqs, |req| self.page(req)).await?;
        Ok(firsts.into_iter().map(|(_, first)| first).collect())
    }

    /// Pages in order, as many at a time as the slots allow.
    pub async fn pages(&self, reqs: Vec<PageRequest>) -> Result<Vec<Served>, GatewayError> {
        in_order(reqs, |req| self.page(req)).await
    }
}

/// First pages of windows, in order, each with its request: the oldest
/// alone first, then the rest together. `read` reads one page (a
/// [`Reader`]'s, or a statistics job's patient one).
pub async fn oldest_first<F, Fut>(
    reqs: Vec<PageRequest>,
    read: F,
) -> Result<Vec<(PageRequest, Served)>, GatewayError>
where
    F: Fn(PageRequest) -> Fut,
    Fut: Future<Output = Result<Served, GatewayError>>,
{
    let Some((&oldest, rest)) = reqs.split_first() else {
        return Ok(Vec::new());
    };
    let mut served = vec![(oldest, read(oldest).await?)];
    let rest_served = in_order(rest.to_vec(), read).await?;
    served.extend(rest.iter().copied().zip(rest_served));
    Ok(served)
}

/// Pages in order, as many at a time as `read` allows (its slots).
pub async fn in_order<F, Fut>(reqs: Vec<PageRequest>, read: F) -> Result<Vec<Served>, GatewayError>
where
    F: Fn(PageRequest) -> Fut,
    Fut: Future<Output = Result<Served, GatewayError>>,
{
    let n = reqs.len().max(1);
    // Owned requests: a stream over borrows trips the `Send` check of the
    // resolver's future.
    futures::stream::iter(reqs.into_iter().map(read))
        .buffered(n)
        .try_collect()
        .await
}

/// Every page after the first of each window, in the size its first page
/// shows the platform serves.
pub fn later_pages(firsts: &[(PageRequest, Served)]) -> Vec<PageRequest> {
    firsts
        .iter()
        .flat_map(|(req, first)| {
            let shape = shape(first);
            (2..=page_count(shape)).map(move |page| PageRequest {
                page,
                page_size: shape.page_size,
                ..*req
            })
        })
        .collect()
}

/// A window's shape, from its first page.
pub fn shape(first: &Served) -> WindowShape {
    WindowShape {
        total: first.page.page.total,
        page_size: first.page.page.page_size.max(1),
    }
}

/// How many pages a window of this shape has (at least one: an empty
/// window's first page).
pub fn page_count(shape: WindowShape) -> u64 {
    shape.total.div_ceil(shape.page_size).max(1)
}

/// The visits page `page` (1-based) of a window of `shape` must hold,
/// checked: a page shorter than the first page promised is refused.
pub fn visits_of(served: &Served, shape: WindowShape, page: u64) -> Result<&[Visit], GatewayError> {
    let before = page.saturating_sub(1).saturating_mul(shape.page_size);
    let expected = shape.total.saturating_sub(before).min(shape.page_size) as usize;
    let visits = &served.page.page.visits;
    if visits.len() < expected {
        return Err(GatewayError::bad_response(
            "the platform's list changed while it was being read (a page is shorter than the first page promised); try again",
        ));
    }
    Ok(&visits[..expected])
}
