//! One activity's poller: every `LIVE_POLL_SECONDS` it reads what is new
//! since the last visit it has seen, through the page cache and the platform
//! budget, and broadcasts it once to every subscriber.
//!
//! # Detecting new visits exactly
//! The poller remembers a [`Cursor`]: the `visitAt` of the last visit it has
//! seen, and how many visits at that exact millisecond it has seen. A poll
//! asks the platform for `[at, now)` and skips that many at the start of the
//! list, so several visits at one millisecond are neither sent twice nor
//! skipped. This relies on the platform's order being oldest first (id
//! ascending on the reference platform, SPEC §1). A burst of more than one
//! page is read page by page, at most `MAX_PLATFORM_REQUESTS_PER_QUERY` pages
//! a poll; the rest follows at the next poll, from the cursor.
//!
//! The first poll establishes the starting point: the newest visit of the
//! 7 days ending now (its last page, read backwards while a page holds only
//! that millisecond). Visits already there are not sent.
//!
//! # The 7-day limit
//! The platform answers at most 7 days a request. When the cursor is older
//! than that (an activity quiet for a week, or a poller that fell behind),
//! the range is split: the part up to 6 days before now in windows of at
//! most 7 days, read in order, then the last 6 days. The cursor then moves
//! to that boundary, so a quiet activity costs one extra request a day, not
//! one a poll, and a visit the platform records late (stamped earlier than
//! it appears) is still found unless it is stamped 6 days late.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use tokio::sync::broadcast;
use tokio::time::{Instant, MissedTickBehavior};

use super::{Batch, Feed, Live};
use crate::error::{ErrorCode, GatewayError};
use crate::page::Visit;
use crate::paging::{self, ActivityId, MAX_WINDOW, Window};
use crate::reader::{self, Reader};

/// Where the poller is in an activity's list of visits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The newest `visitAt` seen.
    pub at: DateTime<Utc>,
    /// Visits at exactly `at` seen (they come first in `[at, …)`).
    pub seen: u64,
}

impl Cursor {
    /// Takes account of a visit read after every earlier one.
    pub fn advance(&mut self, visit_at: DateTime<Utc>) {
        if visit_at > self.at {
            *self = Cursor {
                at: visit_at,
                seen: 1,
            };
        } else if visit_at == self.at {
            self.seen += 1;
        }
        // An older visit (the platform's order is not by time) leaves the
        // cursor where it is: the next poll starts after newer ones anyway.
    }
}

/// The windows to read `[from, to)` in, each at most 7 days: one when it
/// fits, else the part before `to - 6 days` split from its start, then the
/// last 6 days.
pub fn windows(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Window> {
    if to - from <= MAX_WINDOW {
        return vec![Window { from, to }];
    }
    let boundary = to - (MAX_WINDOW - Duration::days(1));
    let mut windows = Vec::new();
    let mut start = from;
    while start < boundary {
        let end = (start + MAX_WINDOW).min(boundary);
        windows.push(Window {
            from: start,
            to: end,
        });
        start = end;
    }
    windows.push(Window { from: boundary, to });
    windows
}

/// Failures that end the subscriptions: the platform says no for good.
/// Others (timeouts, throttling, 5xx, unreadable answers) are reported and
/// the poller tries again at the next poll.
pub fn is_definitive(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::ActivityNotFound
            | ErrorCode::UpstreamFeatureDisabled
            | ErrorCode::UpstreamUnauthorized
    )
}

pub(super) async fn run(live: Arc<Live>, activity: ActivityId, feed: Feed) {
    live.metrics.live_pollers.inc();
    tracing::info!(activity = activity.get(), "live poller started");
    let mut shutdown = live.shutdown_signal();
    let mut tick = tokio::time::interval(live.policy.poll);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut cursor: Option<Cursor> = None;
    // A failure is reported once, not once a poll while it lasts.
    let mut failing = false;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|down| *down) => break,
            _ = tick.tick() => {}
        }
        if live.retire(activity, &feed, false) {
            break;
        }
        let now = paging::truncate_ms(Utc::now());
        let mut visits = Vec::new();
        let result = match &mut cursor {
            Some(c) => live.poll(activity, c, now, &mut visits).await,
            None => live.baseline(activity, now).await.map(|c| {
                cursor = Some(c);
            }),
        };
        if !visits.is_empty() {
            send(&feed, Batch::Visits(visits));
        }
        match result {
            Ok(()) => failing = false,
            Err(error) if is_definitive(error.code) => {
                tracing::warn!(
                    activity = activity.get(),
                    code = error.code.as_str(),
                    "live poller stopped: the platform refused the activity"
                );
                live.retire(activity, &feed, true);
                send(&feed, Batch::Failed { error, ends: true });
                break;
            }
            Err(error) => {
                tracing::warn!(
                    activity = activity.get(),
                    code = error.code.as_str(),
                    "live poll failed; retrying at the next poll"
                );
                if !failing {
                    send(&feed, Batch::Failed { error, ends: false });
                }
                failing = true;
            }
        }
    }
    live.metrics.live_pollers.dec();
    tracing::info!(activity = activity.get(), "live poller stopped");
}

fn send(feed: &Feed, batch: Batch) {
    // No receiver left is fine: the next tick retires the poller.
    let _: Result<usize, broadcast::error::SendError<_>> = feed.send(Arc::new(batch));
}

impl Live {
    /// The starting point: the newest visit of the 7 days ending `now`.
    pub(super) async fn baseline(
        &self,
        activity: ActivityId,
        now: DateTime<Utc>,
    ) -> Result<Cursor, GatewayError> {
        let deadline = Instant::now() + self.policy.deadline;
        let window = Window {
            from: now - MAX_WINDOW,
            to: now,
        };
        let reader = Reader::new(&self.cache, activity, self.policy.page_size, deadline);
        let first = reader.first(window).await?;
        let shape = reader::shape(&first);
        let mut page_no = reader::page_count(shape);
        let mut newest: Option<Cursor> = None;
        let mut budget = self.policy.max_requests_per_poll.saturating_sub(1);
        loop {
            if page_no > 1 {
                if budget == 0 {
                    break;
                }
                budget -= 1;
            }
            let page = reader.later(window, &first, page_no).await?;
            // Backwards from the page's end: the run of the newest millisecond.
            for visit in reader::visits_of(&page, shape, page_no)?.iter().rev() {
                match &mut newest {
                    None => {
                        newest = Some(Cursor {
                            at: visit.visit_at,
                            seen: 1,
                        })
                    }
                    Some(c) if c.at == visit.visit_at => c.seen += 1,
                    Some(c) => return Ok(*c),
                }
            }
            if page_no == 1 {
                break;
            }
            page_no -= 1;
        }
        Ok(newest.unwrap_or(Cursor {
            at: window.from,
            seen: 0,
        }))
    }

    /// Reads what is new since `cursor` into `out`, advancing the cursor.
    /// On a failure, what was read before it stays in `out`.
    pub(super) async fn poll(
        &self,
        activity: ActivityId,
        cursor: &mut Cursor,
        now: DateTime<Utc>,
        out: &mut Vec<Arc<Visit>>,
    ) -> Result<(), GatewayError> {
        let deadline = Instant::now() + self.policy.deadline;
        let mut budget = self.policy.max_requests_per_poll;
        // A cursor ahead of our clock (the platform's runs ahead): ask for
        // its millisecond only, until our clock catches up.
        let to = now.max(cursor.at + Duration::milliseconds(1));
        let windows = windows(cursor.at, to);
        let last = windows.len() - 1;
        for (i, window) in windows.into_iter().enumerate() {
            let skip = if window.from == cursor.at {
                cursor.seen
            } else {
                0
            };
            let complete = self
                .read_window(activity, window, skip, &mut budget, deadline, cursor, out)
                .await?;
            if !complete {
                return Ok(());
            }
            if i < last && cursor.at < window.to {
                // Everything before the window's end has been read.
                *cursor = Cursor {
                    at: window.to,
                    seen: 0,
                };
            }
        }
        Ok(())
    }

    /// Reads `window` from offset `skip` to its end; false when the poll's
    /// budget ran out first.
    #[allow(clippy::too_many_arguments)]
    async fn read_window(
        &self,
        activity: ActivityId,
        window: Window,
        skip: u64,
        budget: &mut u64,
        deadline: Instant,
        cursor: &mut Cursor,
        out: &mut Vec<Arc<Visit>>,
    ) -> Result<bool, GatewayError> {
        if *budget == 0 {
            return Ok(false);
        }
        *budget -= 1;
        let reader = Reader::new(&self.cache, activity, self.policy.page_size, deadline);
        let first = reader.first(window).await?;
        let shape = reader::shape(&first);
        if shape.total <= skip {
            return Ok(true);
        }
        for page_no in (skip / shape.page_size + 1)..=reader::page_count(shape) {
            if page_no > 1 {
                if *budget == 0 {
                    return Ok(false);
                }
                *budget -= 1;
            }
            let page = reader.later(window, &first, page_no).await?;
            let start = (page_no - 1) * shape.page_size;
            for (offset, visit) in (start..).zip(reader::visits_of(&page, shape, page_no)?) {
                if offset < skip {
                    continue;
                }
                cursor.advance(visit.visit_at);
                out.push(Arc::new(visit.clone()));
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn live_windows_stay_within_seven_days_and_abut() {
        let to = t("2026-03-20T12:00:00.000Z");
        assert_eq!(
            windows(to - Duration::days(7), to),
            vec![Window {
                from: to - Duration::days(7),
                to
            }]
        );
        for behind in [8, 13, 14, 30] {
            let from = to - Duration::days(behind) - Duration::milliseconds(7);
            let ws = windows(from, to);
            assert_eq!(ws.first().unwrap().from, from);
            assert_eq!(ws.last().unwrap().to, to);
            assert_eq!(ws.last().unwrap().from, to - Duration::days(6));
            for pair in ws.windows(2) {
                assert_eq!(pair[0].to, pair[1].from);
            }
            assert!(
                ws.iter()
                    .all(|w| w.to - w.from <= MAX_WINDOW && w.from < w.to)
            );
        }
    }

    #[test]
    fn live_cursor_counts_visits_at_its_millisecond() {
        let at = t("2026-03-20T12:00:00.005Z");
        let mut c = Cursor { at, seen: 2 };
        c.advance(at);
        assert_eq!(c, Cursor { at, seen: 3 });
        c.advance(at - Duration::milliseconds(1));
        assert_eq!(c, Cursor { at, seen: 3 });
        let later = at + Duration::milliseconds(1);
        c.advance(later);
        c.advance(later);
        assert_eq!(c, Cursor { at: later, seen: 2 });
    }

    #[test]
    fn live_definitive_errors_are_the_platforms_refusals() {
        for code in ErrorCode::ALL {
            let expected = matches!(
                code,
                ErrorCode::ActivityNotFound
                    | ErrorCode::UpstreamFeatureDisabled
                    | ErrorCode::UpstreamUnauthorized
            );
            assert_eq!(is_definitive(code), expected, "{code:?}");
        }
        assert!(!is_definitive(ErrorCode::UpstreamTimeout));
    }
}
