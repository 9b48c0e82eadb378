//! Executes a paging plan against the page cache: learn each window's shape
//! from its first page, cut the client's slice, read just the pages holding
//! it (through the one [`crate::reader`]).

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use std::sync::Arc;

use crate::cache::{CachedPage, Freshness, PageCache};
use crate::error::GatewayError;
use crate::page::{PageRequest, Visit};
use crate::paging::{self, ActivityId, Direction, ResolvedRange, Slice, SliceArgs, WindowShape};
use crate::reader::{self, Reader};

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

pub async fn load(
    cache: &PageCache,
    policy: FetchPolicy,
    slots: &Semaphore,
    activity: ActivityId,
    range: ResolvedRange,
    args: SliceArgs,
    now: DateTime<Utc>,
) -> Result<VisitSlice, GatewayError> {
    let deadline = Instant::now() + policy.deadline;
    let reader =
        Reader::new(cache, activity, policy.upstream_page_size, deadline, now).with_slots(slots);
    let windows = paging::split_windows(range);
    // Every window's first page: totals for `totalCount` and the page size
    // the platform really serves.
    let firsts = reader.firsts(&windows).await?;
    let shapes: Vec<WindowShape> = firsts.iter().map(reader::shape).collect();
    let total = shapes.iter().map(|s| s.total).sum();
    check_offsets(args, total)?;
    let slice = paging::select_slice(total, args);
    let reads = paging::pages_for_slice(&shapes, slice.start, slice.end);
    let later: Vec<PageRequest> = reads
        .iter()
        .filter(|r| r.page > 1)
        .map(|r| reader.request(windows[r.window], r.page, Some(&firsts[r.window])))
        .collect();
    let later = reader.pages(later).await?;

    let mut freshness = Freshness::FOREVER;
    let mut later = later.iter();
    let mut items = Vec::with_capacity((slice.end - slice.start) as usize);
    for read in &reads {
        let served = match read.page {
            1 => &firsts[read.window],
            _ => later.next().expect("one page per later read"),
        };
        freshness = freshness.and(served.freshness);
        let held = reader::visits_of(served, shapes[read.window], read.page)?.len();
        let indexes = (read.skip as usize..held).take(read.take as usize);
        items.extend(indexes.zip(read.offset..).map(|(index, offset)| {
            let page = served.page.clone();
            (offset, VisitRef { page, index })
        }));
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
