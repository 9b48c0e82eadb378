//! Executes a paging plan against the page cache: learn each window's shape
//! from its first page, cut the client's slice, read just the pages holding it.

use std::sync::Arc;

use futures::future::Either;
use futures::{StreamExt, TryStreamExt};

use crate::cache::{CachedPage, PageCache};
use crate::error::GatewayError;
use crate::paging::{self, ActivityId, ResolvedRange, Slice, SliceArgs, WindowShape};
use crate::upstream::{PageRequest, Visit};

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
    pub items: Vec<(u64, Visit)>,
}

pub async fn load(
    cache: &PageCache,
    policy: FetchPolicy,
    activity: ActivityId,
    range: ResolvedRange,
    args: SliceArgs,
) -> Result<VisitSlice, GatewayError> {
    let deadline = tokio::time::Instant::now() + policy.deadline;
    let windows = paging::split_windows(range);
    let first_page = |window: ResolvedRange| PageRequest {
        activity,
        window,
        page: 1,
        page_size: policy.upstream_page_size,
    };
    // Every window's first page: totals for `totalCount` and the page size the
    // platform really serves. The oldest alone first: when the platform
    // refuses the activity (404, feature off, bad token) one request learns it,
    // not one per window. Then the rest, a bounded number at a time.
    let mut firsts: Vec<Arc<CachedPage>> = Vec::with_capacity(windows.len());
    firsts.push(cache.page(first_page(windows[0]), deadline).await?);
    let rest: Vec<Arc<CachedPage>> = futures::stream::iter(
        windows[1..]
            .iter()
            .copied()
            .map(|w| cache.page(first_page(w), deadline)),
    )
    .buffered(policy.window_concurrency)
    .try_collect()
    .await?;
    firsts.extend(rest);
    let shapes: Vec<WindowShape> = firsts
        .iter()
        .map(|c| WindowShape {
            total: c.page.total,
            page_size: c.page.page_size,
        })
        .collect();
    let total = shapes.iter().map(|s| s.total).sum();
    let slice = paging::select_slice(total, args);
    let reads = paging::pages_for_slice(&shapes, slice.start, slice.end);

    // A first page is keyed as it was asked; later page numbers count in the
    // size the platform serves.
    let request_for = |r: &paging::PageRead| match r.page {
        1 => first_page(windows[r.window]),
        page => PageRequest {
            page,
            page_size: shapes[r.window].page_size,
            ..first_page(windows[r.window])
        },
    };
    let pages: Vec<Arc<CachedPage>> =
        futures::stream::iter(reads.iter().copied().map(|r| match r.page {
            1 => Either::Left(futures::future::ready(Ok(firsts[r.window].clone()))),
            _ => Either::Right(cache.page(request_for(&r), deadline)),
        }))
        .buffered(policy.window_concurrency)
        .try_collect()
        .await?;

    let mut items = Vec::with_capacity((slice.end - slice.start) as usize);
    for (read, page) in reads.iter().zip(&pages) {
        let visits = match page.page.visits(read.skip as usize, read.take as usize) {
            Ok(visits) => visits,
            Err(e) => {
                // Items are located only now: a body found broken here must
                // not stay cached for its TTL (one bad visit in a sound body
                // would be the same when asked again: that page stays).
                if e.page_broken {
                    cache.forget(&request_for(read), page).await;
                }
                return Err(e.error);
            }
        };
        let available = visits.len();
        items.extend((read.offset..).zip(visits));
        if (available as u64) < read.take {
            // The platform's list shrank between two of our requests.
            tracing::warn!(activity = %activity, page = read.page, "upstream page shorter than its pager said");
        }
    }
    Ok(VisitSlice {
        total,
        slice,
        items,
    })
}
