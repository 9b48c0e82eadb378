//! Executes a paging plan against the page cache: learn each window's shape
//! from its first page, cut the client's slice, read just the pages holding it.

use futures::{StreamExt, TryStreamExt};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use std::sync::Arc;

use crate::cache::{CachedPage, Freshness, PageCache, Served};
use crate::error::GatewayError;
use crate::page::{PageRequest, Visit};
use crate::paging::{self, ActivityId, Direction, ResolvedRange, Slice, SliceArgs, WindowShape};

#[derive(Debug, Clone, Copy)]
pub struct FetchPolicy {
    /// The page size the gateway asks the platform for.
    pub upstream_page_size: u64,
    /// How many upstream requests one client request may have in flight.
    pub window_concurrency: usize,
    /// Time one client request may spend on the platform.
    pub deadline: std::time::Duration,
}

/// A slice of an activity's visits, with where it sits in the whole list.
#[derive(Debug)]
pub struct VisitSlice {
    pub total: u64,
    pub slice: Slice,
    /// `(global offset, visit)`, in list order.
    pub items: Vec<(u64, VisitRef)>,
    /// How fresh the pages it was read from are.
    pub freshness: Freshness,
}

/// A visit where it lies in its cached page: shared, not copied (a copy
/// is a dozen reference counts per visit).
#[derive(Debug, Clone)]
pub struct VisitRef {
    page: Arc<CachedPage>,
    index: usize,
}

impl std::ops::Deref for VisitRef {
    type Target = Visit;

    fn deref(&self) -> &Visit {
        &self.page.page.visits[self.index]
    }
}

/// One page through the cache, holding one of the request's platform slots
/// while the cache may call the platform.
pub(crate) async fn page(
    cache: &PageCache,
    slots: &Semaphore,
    req: PageRequest,
    deadline: Instant,
) -> Result<Served, GatewayError> {
    let _slot = slots
        .acquire()
        .await
        .map_err(|_| GatewayError::internal("the request's platform slots are closed"))?;
    cache.page(req, deadline).await
}

pub async fn load(
    cache: &PageCache,
    policy: FetchPolicy,
    slots: &Semaphore,
    activity: ActivityId,
    range: ResolvedRange,
    args: SliceArgs,
) -> Result<VisitSlice, GatewayError> {
    let deadline = Instant::now() + policy.deadline;
    let windows = paging::split_windows(range);
    let first_page = |window| PageRequest {
        activity,
        window,
        page: 1,
        page_size: policy.upstream_page_size,
    };
    // Every window's first page: totals for `totalCount` and the page size the
    // platform really serves. The oldest alone first: when the platform
    // refuses the activity (404, feature off, bad token) one request learns it,
    // not one per window. Then the rest, as many at a time as the request's
    // platform slots allow.
    let mut firsts: Vec<Served> = Vec::with_capacity(windows.len());
    firsts.push(page(cache, slots, first_page(windows[0]), deadline).await?);
    // Owned requests: a stream over borrows trips the `Send` check of the
    // resolver's future.
    let rest: Vec<PageRequest> = windows[1..].iter().map(|w| first_page(*w)).collect();
    let rest: Vec<Served> = futures::stream::iter(
        rest.into_iter()
            .map(|req| page(cache, slots, req, deadline)),
    )
    .buffered(windows.len())
    .try_collect()
    .await?;
    firsts.extend(rest);
    let shapes: Vec<WindowShape> = firsts
        .iter()
        .map(|s| WindowShape {
            total: s.page.page.total,
            page_size: s.page.page.page_size,
        })
        .collect();
    let total = shapes.iter().map(|s| s.total).sum();
    check_offsets(args, total)?;
    let slice = paging::select_slice(total, args);
    let reads = paging::pages_for_slice(&shapes, slice.start, slice.end);

    // Later page numbers count in the size the platform serves.
    let later: Vec<PageRequest> = reads
        .iter()
        .filter(|r| r.page > 1)
        .map(|r| PageRequest {
            page: r.page,
            page_size: shapes[r.window].page_size,
            ..first_page(windows[r.window])
        })
        .collect();
    let later: Vec<Served> = futures::stream::iter(
        later
            .into_iter()
            .map(|req| page(cache, slots, req, deadline)),
    )
    .buffered(reads.len().max(1))
    .try_collect()
    .await?;

    let mut freshness = Freshness::FOREVER;
    let mut later = later.iter();
    let mut items = Vec::with_capacity((slice.end - slice.start) as usize);
    for read in &reads {
        let served = match read.page {
            1 => &firsts[read.window],
            _ => later.next().expect("one page per later read"),
        };
        freshness = freshness.and(served.freshness);
        let available = served.page.page.visits.len();
        let indexes = (read.skip as usize..available).take(read.take as usize);
        let before = items.len();
        items.extend(indexes.zip(read.offset..).map(|(index, offset)| {
            let page = served.page.clone();
            (offset, VisitRef { page, index })
        }));
        if ((items.len() - before) as u64) < read.take {
            // The window's list shrank between two of our requests: serving
            // fewer items would silently shift the client's offsets.
            return Err(GatewayError::bad_response(
                "the platform's list changed while it was being read (a page is shorter than the first page promised); try again",
            ));
        }
    }
    for first in &firsts {
        freshness = freshness.and(first.freshness);
    }
    Ok(VisitSlice {
        total,
        slice,
        items,
        freshness,
    })
}

/// A cursor names an item of the list: its offset must be inside it.
fn check_offsets(args: SliceArgs, total: u64) -> Result<(), GatewayError> {
    let (after, before) = match args.direction {
        Direction::Forward { after, .. } => (after, args.other_bound),
        Direction::Backward { before, .. } => (args.other_bound, before),
    };
    for (name, offset) in [("after", after), ("before", before)] {
        if let Some(offset) = offset
            && offset >= total
        {
            return Err(GatewayError::bad_input(format!(
                "{name} points past the end of the list ({total} visits): it is not a cursor of this list"
            )));
        }
    }
    Ok(())
}
