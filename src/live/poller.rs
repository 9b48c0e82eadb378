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
//! ascending on the reference platform: docs/architecture.md, "The platform
//! we call"). A burst of more than one page is read page by page, at most
//! `MAX_PLATFORM_REQUESTS_PER_QUERY` pages a poll; the rest follows at the
//! next poll, from the cursor.
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
use crate::shared::live::{Cursor, Entry, READ_COUNT, Role, SharedLive};

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

/// What this replica's poller of an activity is to the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No Redis, or Redis unavailable: it polls for its own subscribers.
    Alone,
    /// Another replica polls; this one reads its results from the stream.
    Follower,
    /// It holds the lease: it polls and publishes for every replica.
    Leader,
}

/// One activity's poller: where it is, and what it is to the cluster.
struct Poller {
    live: Arc<Live>,
    activity: ActivityId,
    feed: Feed,
    mode: Mode,
    /// The last visit sent to this replica's subscribers. Nothing at or
    /// before it is sent again (after a Redis outage, the results of the
    /// polls made alone and those published meanwhile overlap).
    delivered: Option<Cursor>,
    /// The cursor of the stream's last entry this replica knows: where the
    /// lease holder polls from.
    published: Option<Cursor>,
    /// The id of the last entry read or published; `None` until joined.
    last_id: Option<String>,
    /// A failure is reported once, not once a poll while it lasts.
    failing: bool,
    next_poll: Instant,
    ended: bool,
}

pub(super) async fn run(live: Arc<Live>, activity: ActivityId, feed: Feed) {
    live.metrics.live_pollers.inc();
    tracing::info!(activity = activity.get(), "live poller started");
    let mut shutdown = live.shutdown_signal();
    let shared = live.shared.clone();
    // With Redis, a follower reads the stream (and looks for a free lease)
    // four times an interval; the lease holder polls once an interval.
    let step = match &shared {
        Some(_) => live.policy.poll / 4,
        None => live.policy.poll,
    };
    let mut tick = tokio::time::interval(step);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut poller = Poller {
        live: live.clone(),
        activity,
        feed,
        mode: if shared.is_some() {
            Mode::Follower
        } else {
            Mode::Alone
        },
        delivered: None,
        published: None,
        last_id: None,
        failing: false,
        next_poll: Instant::now(),
        ended: false,
    };
    loop {
        let at = tokio::select! {
            biased;
            _ = shutdown.wait_for(|down| *down) => break,
            at = tick.tick() => at,
        };
        if live.retire(activity, &poller.feed, false) {
            break;
        }
        match &shared {
            Some(shared) => poller.step(shared, at).await,
            None => poller.poll_alone(at).await,
        }
        if poller.ended {
            break;
        }
    }
    if poller.mode == Mode::Leader {
        poller.switch(Mode::Follower);
        if let Some(shared) = &shared {
            shared.release(activity).await;
        }
    }
    live.metrics.live_pollers.dec();
    tracing::info!(activity = activity.get(), "live poller stopped");
}

fn send(feed: &Feed, batch: Batch) {
    // No receiver left is fine: the next tick retires the poller.
    let _: Result<usize, broadcast::error::SendError<_>> = feed.send(Arc::new(batch));
}

/// Orders cursors: later millisecond, then more visits seen at it.
fn key(c: Cursor) -> (DateTime<Utc>, u64) {
    (c.at, c.seen)
}

/// The visits of a result from `from` to `to` that come after `delivered`,
/// which moves on to `to`. All of them in the usual case (the result starts
/// where the last one ended); after an outage, the ones not sent yet.
pub fn fresh(
    delivered: &mut Option<Cursor>,
    from: Option<Cursor>,
    visits: Vec<Arc<Visit>>,
    to: Option<Cursor>,
) -> Vec<Arc<Visit>> {
    let out = match (*delivered, from) {
        (None, _) => visits,
        (Some(d), Some(f)) if key(f) >= key(d) => visits,
        (Some(d), from) => {
            let mut run = from;
            visits
                .into_iter()
                .filter(|v| {
                    let r = match &mut run {
                        Some(r) => {
                            r.advance(v.visit_at);
                            *r
                        }
                        None => *run.insert(Cursor {
                            at: v.visit_at,
                            seen: 1,
                        }),
                    };
                    key(r) > key(d)
                })
                .collect()
        }
    };
    if let Some(to) = to
        && delivered.is_none_or(|d| key(to) > key(d))
    {
        *delivered = Some(to);
    }
    out
}

impl Poller {
    fn switch(&mut self, mode: Mode) {
        let held = &self.live.metrics.live_leases_held;
        match (self.mode == Mode::Leader, mode == Mode::Leader) {
            (false, true) => {
                held.inc();
            }
            (true, false) => {
                held.dec();
            }
            _ => {}
        }
        self.mode = mode;
    }

    /// Logs a poll's failure; the one to report to subscribers (the first
    /// of a run of transient ones, or a definitive one), with `ends`.
    fn judge(&mut self, result: Result<(), GatewayError>) -> Option<(GatewayError, bool)> {
        let activity = self.activity.get();
        match result {
            Ok(()) => {
                self.failing = false;
                None
            }
            Err(error) if is_definitive(error.code) => {
                tracing::warn!(
                    activity,
                    code = error.code.as_str(),
                    "live poller stopped: the platform refused the activity"
                );
                Some((error, true))
            }
            Err(error) => {
                tracing::warn!(
                    activity,
                    code = error.code.as_str(),
                    "live poll failed; retrying at the next poll"
                );
                let first = !self.failing;
                self.failing = true;
                first.then_some((error, false))
            }
        }
    }

    /// Reads the platform from `from` (the starting point when `None`).
    async fn read(
        &mut self,
        from: Option<Cursor>,
    ) -> (
        Option<Cursor>,
        Vec<Arc<Visit>>,
        Option<(GatewayError, bool)>,
    ) {
        let now = paging::truncate_ms(Utc::now());
        let mut visits = Vec::new();
        let mut to = from;
        let result = match &mut to {
            Some(c) => self.live.poll(self.activity, c, now, &mut visits).await,
            None => self.live.baseline(self.activity, now).await.map(|c| {
                to = Some(c);
            }),
        };
        let report = self.judge(result);
        (to, visits, report)
    }

    /// Sends a result to this replica's subscribers (what they have not had).
    fn deliver(
        &mut self,
        from: Option<Cursor>,
        to: Option<Cursor>,
        visits: Vec<Arc<Visit>>,
        error: Option<(GatewayError, bool)>,
    ) {
        let visits = fresh(&mut self.delivered, from, visits, to);
        if !visits.is_empty() {
            send(&self.feed, Batch::Visits(visits));
        }
        if let Some((error, ends)) = error {
            if ends {
                self.live.retire(self.activity, &self.feed, true);
                self.ended = true;
            }
            send(&self.feed, Batch::Failed { error, ends });
        }
    }

    fn deliver_entry(&mut self, entry: Entry) {
        self.last_id = Some(entry.id);
        if entry.to.is_some() {
            self.published = entry.to;
        }
        self.deliver(entry.from, entry.to, entry.visits, entry.error);
    }

    /// A poll for this replica's subscribers only (no Redis, or Redis down).
    async fn poll_alone(&mut self, at: Instant) {
        self.next_poll = at + self.live.policy.poll;
        let from = self.delivered;
        let (to, visits, report) = self.read(from).await;
        self.deliver(from, to, visits, report);
    }

    /// One step with Redis: renew or take the lease, read what the lease
    /// holder published, and poll for everyone when the lease is ours.
    async fn step(&mut self, shared: &SharedLive, at: Instant) {
        let due = at >= self.next_poll;
        if self.mode == Mode::Leader && !due {
            return;
        }
        let activity = self.activity.get();
        let Some((role, entries)) = shared.step(self.activity, self.last_id.as_deref()).await
        else {
            if self.mode != Mode::Alone {
                tracing::warn!(
                    activity,
                    "Redis unavailable: polling this live activity for this replica's subscribers until it is back"
                );
                self.switch(Mode::Alone);
            }
            if due {
                self.live.metrics.live_polls_alone.inc();
                self.poll_alone(at).await;
            }
            return;
        };
        if self.mode == Mode::Alone {
            tracing::info!(
                activity,
                "Redis reachable: live activity polled once for all replicas again"
            );
            self.switch(Mode::Follower);
        }
        let backlog = entries.len() >= READ_COUNT;
        if self.last_id.is_none() {
            // Joining: what comes after the stream's last entry is new.
            match entries.into_iter().last() {
                Some(last) => {
                    self.last_id = Some(last.id);
                    if let Some(to) = last.to {
                        self.published = Some(to);
                        self.delivered.get_or_insert(to);
                    }
                }
                None => self.last_id = Some("0-0".into()),
            }
        } else {
            for entry in entries {
                self.deliver_entry(entry);
                if self.ended {
                    return;
                }
            }
        }
        match role {
            Role::Other => {
                if self.mode == Mode::Leader {
                    tracing::info!(activity, "another replica polls this live activity now");
                    self.switch(Mode::Follower);
                }
            }
            Role::Held | Role::Taken => {
                if self.mode != Mode::Leader {
                    if role == Role::Taken && self.published.is_some() {
                        self.live.metrics.live_lease_takeovers.inc();
                        tracing::info!(
                            activity,
                            "took over polling this live activity for all replicas, from the last visit published"
                        );
                    } else {
                        tracing::info!(activity, "polling this live activity for all replicas");
                    }
                    self.switch(Mode::Leader);
                    self.next_poll = at;
                }
                // A backlog is read first, over the next steps.
                if !backlog && at >= self.next_poll {
                    self.poll_for_all(shared, at).await;
                }
            }
        }
    }

    /// The lease holder's poll: from the last entry published, published
    /// for every replica (this one included) if the lease is still ours.
    async fn poll_for_all(&mut self, shared: &SharedLive, at: Instant) {
        self.next_poll = at + self.live.policy.poll;
        let from = self.published.or(self.delivered);
        let (to, visits, report) = self.read(from).await;
        if visits.is_empty() && to == from && report.is_none() {
            return;
        }
        let error = report.as_ref().map(|(e, ends)| (e, *ends));
        match shared
            .publish(self.activity, from, to, &visits, error)
            .await
        {
            Some(Some(id)) => self.deliver_entry(Entry {
                id,
                from,
                to,
                visits,
                error: report,
            }),
            Some(None) => {
                // The new holder polls from what was published: these
                // visits reach everyone through it.
                tracing::info!(
                    activity = self.activity.get(),
                    "lost the lease of this live activity to another replica"
                );
                self.switch(Mode::Follower);
            }
            None => {
                // Redis went away: serve this replica's subscribers; the
                // next holder reads these visits again and the others send
                // each of them once.
                self.live.metrics.live_polls_alone.inc();
                self.switch(Mode::Alone);
                self.deliver(from, to, visits, report);
            }
        }
    }
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
        let reader = Reader::new(&self.cache, activity, self.policy.page_size, deadline, now);
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
        let reader = Reader::new(&self.cache, activity, self.policy.page_size, deadline, now);
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
                .read_window(reader, window, skip, &mut budget, cursor, out)
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
    async fn read_window(
        &self,
        reader: Reader<'_>,
        window: Window,
        skip: u64,
        budget: &mut u64,
        cursor: &mut Cursor,
        out: &mut Vec<Arc<Visit>>,
    ) -> Result<bool, GatewayError> {
        if *budget == 0 {
            return Ok(false);
        }
        *budget -= 1;
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

    fn visit(at: DateTime<Utc>) -> Arc<Visit> {
        let at = crate::time::format(at);
        let body = format!(
            r#"{{"pager":{{"pageSize":1,"total":1}},"items":[{{"userId":"1","visitAt":"{at}","lastOnlineAt":"{at}"}}]}}"#
        );
        Arc::new(crate::page::parse(body.as_bytes(), 1, 1).unwrap().visits[0].clone())
    }

    #[test]
    fn live_results_already_delivered_are_not_sent_again() {
        let t0 = t("2026-03-20T12:00:00.005Z");
        let t1 = t0 + Duration::milliseconds(1);
        let c = |at, seen| Cursor { at, seen };
        let at = |vs: &[Arc<Visit>]| vs.iter().map(|v| v.visit_at).collect::<Vec<_>>();
        // Nothing delivered yet: all of it.
        let mut delivered = None;
        let vs = vec![visit(t0), visit(t0)];
        assert_eq!(
            fresh(&mut delivered, Some(c(t0, 0)), vs, Some(c(t0, 2))).len(),
            2
        );
        assert_eq!(delivered, Some(c(t0, 2)));
        // The next result starts where the last ended: all of it.
        let vs = vec![visit(t0), visit(t1)];
        assert_eq!(
            fresh(&mut delivered, Some(c(t0, 2)), vs, Some(c(t1, 1))).len(),
            2
        );
        assert_eq!(delivered, Some(c(t1, 1)));
        // After an outage: a result from an older cursor sends only what
        // comes after the last visit delivered (the third at t0 was sent).
        let mut delivered = Some(c(t0, 3));
        let vs = vec![visit(t0), visit(t0), visit(t0), visit(t0), visit(t1)];
        let sent = fresh(&mut delivered, Some(c(t0, 0)), vs, Some(c(t1, 1)));
        assert_eq!(at(&sent), vec![t0, t1]);
        assert_eq!(delivered, Some(c(t1, 1)));
        // A result wholly delivered already: nothing, and the cursor stays.
        let vs = vec![visit(t0)];
        assert!(fresh(&mut delivered, Some(c(t0, 0)), vs, Some(c(t0, 1))).is_empty());
        assert_eq!(delivered, Some(c(t1, 1)));
    }
}
