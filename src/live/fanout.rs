//! Resolve once, send bytes. Subscribers of one distinct subscription (the
//! same document, operation, variables and scope) share one execution: each
//! new visit is resolved and serialised once, and every subscriber is sent
//! the same payload bytes (only the message around it, its id, differs).
//! At 10,000 subscribers of one event, resolving the visit for each of them
//! again was most of the cost of a delivery.
//!
//! Payloads travel in batches: what the execution has ready at once (the
//! visits of one poll) is one message of the group's channel, so a
//! member's buffer (`LIVE_SUBSCRIBER_BUFFER`) counts polls, as it did when
//! each subscriber had its own execution.
//!
//! A member joining a running group gets what comes after it joined: for
//! `userVisitAdded`, the visits after its subscription started, none before.
//! Statistics are different: each result is the whole of the figures, and
//! the first comes at once, so a group keeps its latest result marked
//! [`Output::replay`] and gives it to a member joining late (who would
//! otherwise wait for the next visit, on a quiet activity for ever).
//!
//! A group starts with its first member and stops when its last member
//! leaves (at once, not at the next event) or when its execution ends (a
//! refusal, a definitive platform failure, shutdown): its members then see
//! their stream end after the last payload. A member that falls further
//! behind than the buffer is told so ([`Delivery::TooSlow`]) and ends; the
//! others never wait for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::Stream;
use futures::stream::BoxStream;
use tokio::sync::{Notify, broadcast};

/// What makes two subscriptions one: the request as sent (document,
/// operation, variables) and the scope of the credential it runs with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(pub Arc<str>);

/// One result serialised once (`{"data": ...}`), shared by every member.
/// Text, so a door writes it into its frame without checking it again.
pub type Payload = Arc<str>;

/// One result of a group's execution, serialised.
pub struct Output {
    pub payload: Payload,
    /// A member joining later may be given it first: the whole state
    /// (statistics) without errors. Never news (a visit), never an error (a
    /// poll that failed for a moment).
    pub replay: bool,
}

/// What a member receives.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// One result's payload.
    Next(Payload),
    /// It fell more than the buffer behind and was dropped from the group.
    TooSlow(u64),
}

/// The payloads one poll brought.
type Batch = Arc<Vec<Payload>>;

/// A group's latest payload to replay. Sending and joining both hold its
/// lock, so a member either gets a payload from the channel or as the
/// latest, never both, never neither.
type Latest = Arc<Mutex<Option<Payload>>>;

struct Group {
    tx: broadcast::Sender<Batch>,
    /// Woken when a member leaves, so an empty group stops at once.
    left: Arc<Notify>,
    latest: Latest,
}

#[derive(Default)]
pub struct Fanout {
    groups: Mutex<HashMap<Key, Group>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Fanout {
    /// Joins `key`'s group, starting it with `start` (the one execution,
    /// as payloads) when there is none. `buffer`: payloads a member may be
    /// behind.
    pub fn join(
        self: &Arc<Self>,
        key: Key,
        buffer: usize,
        start: impl FnOnce() -> BoxStream<'static, Output>,
    ) -> Member {
        let mut groups = lock(&self.groups);
        if let Some(group) = groups.get(&key) {
            // Under the latest's lock, so nothing is sent in between.
            let latest = lock(&group.latest);
            let rx = group.tx.subscribe();
            return Member {
                rx: Some(rx),
                left: group.left.clone(),
                pending: latest.clone().map(|payload| (Arc::new(vec![payload]), 0)),
            };
        }
        let (tx, rx) = broadcast::channel(buffer.max(1));
        let left = Arc::new(Notify::new());
        let latest = Latest::default();
        groups.insert(
            key.clone(),
            Group {
                tx: tx.clone(),
                left: left.clone(),
                latest: latest.clone(),
            },
        );
        let sender = Sender { tx, latest };
        tokio::spawn(run(self.clone(), key, sender, left.clone(), start()));
        Member {
            rx: Some(rx),
            left,
            pending: None,
        }
    }

    /// Groups running now.
    pub fn groups(&self) -> usize {
        lock(&self.groups).len()
    }

    /// Removes `key`'s group if it is `tx`'s and (unless `ended`) has no
    /// member left; true when it was removed. Joining holds the same lock,
    /// so nobody joins a group being removed.
    fn retire(&self, key: &Key, tx: &broadcast::Sender<Batch>, ended: bool) -> bool {
        let mut groups = lock(&self.groups);
        if !ended && tx.receiver_count() > 0 {
            return false;
        }
        if groups.get(key).is_some_and(|g| g.tx.same_channel(tx)) {
            groups.remove(key);
        }
        true
    }
}

/// A group's sending side.
struct Sender {
    tx: broadcast::Sender<Batch>,
    latest: Latest,
}

impl Sender {
    fn send(&self, batch: Vec<Output>) {
        let mut latest = lock(&self.latest);
        if let Some(replay) = batch.iter().rev().find(|o| o.replay) {
            *latest = Some(replay.payload.clone());
        }
        let batch: Batch = Arc::new(batch.into_iter().map(|o| o.payload).collect());
        // No member left is fine: `left` stops the group.
        let _ = self.tx.send(batch);
    }
}

async fn run(
    fanout: Arc<Fanout>,
    key: Key,
    sender: Sender,
    left: Arc<Notify>,
    mut payloads: BoxStream<'static, Output>,
) {
    use futures::{FutureExt, StreamExt};
    loop {
        tokio::select! {
            payload = payloads.next() => match payload {
                Some(payload) => {
                    // With what else is ready: the rest of the poll's visits.
                    let mut batch = vec![payload];
                    let mut ended = false;
                    loop {
                        match payloads.next().now_or_never() {
                            Some(Some(payload)) => batch.push(payload),
                            Some(None) => {
                                ended = true;
                                break;
                            }
                            None => break,
                        }
                    }
                    sender.send(batch);
                    if ended {
                        break;
                    }
                }
                None => break,
            },
            () = left.notified() => {
                if fanout.retire(&key, &sender.tx, false) {
                    return;
                }
            }
        }
    }
    // A member joining from now until it is retired gets the latest (a
    // snapshot group's last result), then the end.
    fanout.retire(&key, &sender.tx, true);
    // Dropping `tx` ends every member's stream after what it has not read.
}

/// One subscriber of a group.
pub struct Member {
    /// `None` once dropped: the group counts its receivers.
    rx: Option<broadcast::Receiver<Batch>>,
    left: Arc<Notify>,
    /// The batch being delivered, and how many of it were.
    pending: Option<(Batch, usize)>,
}

impl Drop for Member {
    fn drop(&mut self) {
        // Gone before the group looks, so it sees one member fewer.
        self.rx = None;
        self.left.notify_one();
    }
}

impl Member {
    /// The group's payloads from now on; ends with the group, or after
    /// [`Delivery::TooSlow`].
    pub fn into_stream(self) -> impl Stream<Item = Delivery> + Send + 'static {
        futures::stream::unfold(Some(self), |member| async move {
            let mut member = member?;
            loop {
                if let Some((batch, sent)) = &mut member.pending {
                    if let Some(payload) = batch.get(*sent) {
                        *sent += 1;
                        let payload = payload.clone();
                        return Some((Delivery::Next(payload), Some(member)));
                    }
                    member.pending = None;
                }
                match member.rx.as_mut()?.recv().await {
                    Ok(batch) => member.pending = Some((batch, 0)),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        return Some((Delivery::TooSlow(missed), None));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key(s: &str) -> Key {
        Key(s.into())
    }

    fn event(payload: Payload) -> Output {
        Output {
            payload,
            replay: false,
        }
    }

    #[tokio::test]
    async fn members_of_one_key_share_one_execution_and_the_same_bytes() {
        let fanout = Arc::new(Fanout::default());
        let started = Arc::new(AtomicUsize::new(0));
        let (feed, rx) = tokio::sync::mpsc::unbounded_channel::<Payload>();
        let mut rx = Some(rx);
        let mut members = Vec::new();
        for _ in 0..3 {
            let started = started.clone();
            let rx = &mut rx;
            members.push(
                fanout
                    .join(key("a"), 8, move || {
                        started.fetch_add(1, Ordering::SeqCst);
                        let mut rx = rx.take().expect("started once");
                        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
                            .map(event)
                            .boxed()
                    })
                    .into_stream()
                    .boxed(),
            );
        }
        assert_eq!(started.load(Ordering::SeqCst), 1);
        feed.send(Payload::from("{\"data\":1}")).unwrap();
        let mut got = Vec::new();
        for m in &mut members {
            match m.next().await {
                Some(Delivery::Next(p)) => got.push(p),
                other => panic!("{other:?}"),
            }
        }
        assert!(
            got.windows(2).all(|w| w[0].as_ptr() == w[1].as_ptr()),
            "one allocation, shared"
        );
        // The execution ends: every member's stream ends.
        drop(feed);
        for m in &mut members {
            assert!(m.next().await.is_none());
        }
        assert_eq!(fanout.groups(), 0);
    }

    #[tokio::test]
    async fn the_group_stops_when_its_last_member_leaves() {
        let fanout = Arc::new(Fanout::default());
        let stopped = Arc::new(Notify::new());
        struct Stops(Arc<Notify>);
        impl Drop for Stops {
            fn drop(&mut self) {
                self.0.notify_one();
            }
        }
        let guard = Stops(stopped.clone());
        let member = fanout.join(key("b"), 8, move || {
            futures::stream::pending::<Payload>()
                .map(move |b| {
                    let _ = &guard;
                    event(b)
                })
                .boxed()
        });
        let second = fanout.join(key("b"), 8, || unreachable!("one execution"));
        drop(member);
        tokio::task::yield_now().await;
        assert_eq!(fanout.groups(), 1, "a member is left");
        drop(second);
        tokio::time::timeout(std::time::Duration::from_secs(5), stopped.notified())
            .await
            .expect("the execution is dropped");
        assert_eq!(fanout.groups(), 0);
    }

    #[tokio::test]
    async fn a_member_that_falls_behind_is_told_and_ends() {
        let fanout = Arc::new(Fanout::default());
        let (feed, rx) = tokio::sync::mpsc::unbounded_channel::<Payload>();
        let member = fanout.join(key("c"), 2, move || {
            let mut rx = rx;
            futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
                .map(event)
                .boxed()
        });
        let mut keeps_up = fanout
            .join(key("c"), 2, || unreachable!())
            .into_stream()
            .boxed();
        let mut slow = member.into_stream().boxed();
        for i in 0..5 {
            feed.send(Payload::from(format!("{i}"))).unwrap();
            assert!(matches!(keeps_up.next().await, Some(Delivery::Next(_))));
        }
        assert!(matches!(slow.next().await, Some(Delivery::TooSlow(3))));
        assert!(slow.next().await.is_none());
    }

    /// A group fed by hand: its feed and its first member.
    fn fed(
        fanout: &Arc<Fanout>,
        k: &str,
        snapshots: bool,
    ) -> (
        tokio::sync::mpsc::UnboundedSender<Payload>,
        BoxStream<'static, Delivery>,
    ) {
        let (feed, rx) = tokio::sync::mpsc::unbounded_channel::<Payload>();
        let member = fanout.join(key(k), 8, move || {
            let mut rx = rx;
            // A payload starting `!` stands for a result with errors.
            futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
                .map(move |p: Payload| Output {
                    replay: snapshots && !p.starts_with('!'),
                    payload: p,
                })
                .boxed()
        });
        (feed, member.into_stream().boxed())
    }

    async fn next(member: &mut BoxStream<'static, Delivery>) -> String {
        match tokio::time::timeout(std::time::Duration::from_secs(5), member.next()).await {
            Ok(Some(Delivery::Next(p))) => p.to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_late_member_of_snapshots_gets_the_latest_first_and_of_events_only_what_follows() {
        let fanout = Arc::new(Fanout::default());
        for (k, snapshots) in [("s", true), ("e", false)] {
            let (feed, mut first) = fed(&fanout, k, snapshots);
            feed.send(Payload::from("1")).unwrap();
            feed.send(Payload::from("2")).unwrap();
            assert_eq!(next(&mut first).await, "1");
            assert_eq!(next(&mut first).await, "2");
            let mut late = fanout
                .join(key(k), 8, || unreachable!("one execution"))
                .into_stream()
                .boxed();
            feed.send(Payload::from("3")).unwrap();
            assert_eq!(next(&mut first).await, "3");
            if snapshots {
                assert_eq!(next(&mut late).await, "2", "the latest, at once");
            }
            assert_eq!(next(&mut late).await, "3", "then what follows, once");
            drop(feed);
            assert!(late.next().await.is_none());
        }
    }

    #[tokio::test]
    async fn a_result_with_errors_is_sent_but_never_a_late_members_first() {
        let fanout = Arc::new(Fanout::default());
        let (feed, mut first) = fed(&fanout, "s", true);
        feed.send(Payload::from("1")).unwrap();
        feed.send(Payload::from("!failed")).unwrap();
        assert_eq!(next(&mut first).await, "1");
        assert_eq!(next(&mut first).await, "!failed");
        let mut late = fanout
            .join(key("s"), 8, || unreachable!("one execution"))
            .into_stream()
            .boxed();
        assert_eq!(next(&mut late).await, "1", "the latest clean result");
        feed.send(Payload::from("2")).unwrap();
        assert_eq!(next(&mut late).await, "2");
    }
}
