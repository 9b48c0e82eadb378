//! The platform's pages: what one request asks for ([`PageRequest`]), what
//! it answers ([`Page`] of [`Visit`]s, read and checked whole by [`parse`]),
//! and where pages come from ([`PageSource`]). The REST client, the caches
//! and the readers of windows all depend on this module; it depends on none
//! of them.

mod visit;

use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::error::GatewayError;
use crate::paging::{ActivityId, Window};
pub use visit::{Text, Visit};

/// Everything that makes one upstream request (and so one cache key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageRequest {
    pub activity: ActivityId,
    pub window: Window,
    /// 1-based.
    pub page: u64,
    pub page_size: u64,
}

/// One page, parsed and checked whole when it was fetched.
#[derive(Debug)]
pub struct Page {
    /// Items in the whole window.
    pub total: u64,
    /// The page size actually served: at most what we asked for.
    pub page_size: u64,
    /// The page's visits, in the platform's order.
    pub visits: Box<[Visit]>,
    /// Approximate bytes held, for the cache's byte bound.
    pub weight: usize,
}

/// What the platform request budget can give, for planning long reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reach {
    /// Requests it could let through within the time asked about: the slots
    /// free now (less those callers have reserved), plus the sustained rate
    /// over that time (less a pause the platform imposed).
    pub requests: f64,
    /// Its sustained rate, requests per second.
    pub rate: f64,
}

/// Where pages come from: the platform client, or a fake in tests.
pub trait PageSource: Send + Sync + 'static {
    fn fetch(
        &self,
        req: PageRequest,
        deadline: Instant,
    ) -> BoxFuture<'_, Result<Page, GatewayError>>;

    /// The page and how old it already is: zero when it comes from the
    /// platform now; a level that shares pages between replicas says how
    /// long ago another replica fetched it.
    fn fetch_aged(
        &self,
        req: PageRequest,
        deadline: Instant,
    ) -> BoxFuture<'_, Result<(Page, std::time::Duration), GatewayError>> {
        Box::pin(async move {
            let page = self.fetch(req, deadline).await?;
            Ok((page, std::time::Duration::ZERO))
        })
    }

    /// What the budget in front of the source can give within `within`;
    /// `None` when it has none (fakes, benchmarks).
    fn reach(&self, _within: std::time::Duration) -> Option<Reach> {
        None
    }
}

/// Reads and checks a whole 200 body: one page of `asked_page_size` (the
/// platform may serve fewer per page, and says so in its pager). A page is
/// refused whole, and so never cached, when any visit in it cannot be read or
/// when it holds fewer items than its own pager promises for page `page`
/// (a short page in the middle of a window would shift every later offset).
pub fn parse(body: &[u8], page: u64, asked_page_size: u64) -> Result<Page, GatewayError> {
    let bad = GatewayError::bad_response;
    let dto: visit::PageDto<'_> = serde_json::from_slice(body)
        .map_err(|_| bad("the platform answered with a body that is not a visits page"))?;
    if dto.pager.page_size == 0 {
        return Err(bad("the platform reported a page size of 0"));
    }
    let page_size = dto.pager.page_size.min(asked_page_size);
    let total = dto.pager.total;
    let items = dto.items.len() as u64;
    if items > page_size {
        return Err(bad("the platform sent more items than its page size"));
    }
    let promised = total
        .saturating_sub(page.saturating_sub(1).saturating_mul(page_size))
        .min(page_size);
    if items < promised {
        return Err(GatewayError::bad_response(format!(
            "the platform sent {items} items on page {page}, where its pager promises {promised}"
        )));
    }
    let mut texts = visit::Interner::default();
    let visits = dto
        .items
        .into_iter()
        .map(|item| Visit::from_dto(item, &mut texts))
        .collect::<Result<Box<[Visit]>, _>>()?;
    let weight = std::mem::size_of::<Page>()
        + visits.len() * std::mem::size_of::<Visit>()
        + texts.heap_bytes;
    Ok(Page {
        total,
        page_size,
        visits,
        weight,
    })
}
