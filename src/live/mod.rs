//! Live visits (docs/subscriptions.md): `userVisitAdded` subscriptions fed
//! by one poller per activity, whatever the number of subscribers.
//!
//! - [`Live`] is the registry: an activity's poller and its broadcast
//!   channel, the subscription limits, the shutdown signal.
//! - [`poller`] reads what is new on the platform, through the page cache and
//!   the platform budget, and broadcasts it once per poll.
//! - The doors that serve subscriptions live with the HTTP surface
//!   ([`crate::http::websocket`], [`crate::http::stream`]).
//!
//! A subscriber holds a receiver of its activity's broadcast channel, whose
//! capacity (`LIVE_SUBSCRIBER_BUFFER`, in poll results) is its buffer: one
//! that falls further behind is closed with `SUBSCRIBER_TOO_SLOW`, and the
//! poller and the other subscribers never wait for it.

pub mod fanout;
pub mod poller;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_graphql::ErrorExtensions;
use futures::Stream;
use tokio::sync::{broadcast, watch};

use crate::auth::Principal;
use crate::cache::PageCache;
use crate::error::{ErrorCode, GatewayError};
use crate::page::Visit;
use crate::paging::ActivityId;
use crate::shared::live::SharedLive;
use crate::telemetry::Metrics;
use crate::upstream::fair::{Caller, Priority};

/// The error code of a subscription closed because its client fell behind.
pub const SUBSCRIBER_TOO_SLOW: &str = crate::error::ErrorCode::SubscriberTooSlow.as_str();

/// How live subscriptions are served; from the settings.
#[derive(Debug, Clone, Copy)]
pub struct LivePolicy {
    /// `LIVE_POLL_SECONDS`.
    pub poll: Duration,
    /// `LIVE_SUBSCRIBER_BUFFER`: poll results a subscriber may be behind.
    pub buffer: usize,
    /// `LIVE_PING_SECONDS`: between two keep-alive pings of a socket.
    pub ping: Duration,
    /// `LIVE_MAX_SUBSCRIPTIONS_PER_CLIENT`.
    pub max_per_client: usize,
    /// `LIVE_MAX_SUBSCRIPTIONS`.
    pub max_total: usize,
    /// `LIVE_MAX_CONNECTIONS_PER_CLIENT`: open sockets and streams.
    pub max_connections_per_client: usize,
    /// The page size asked of the platform (`UPSTREAM_PAGE_SIZE`).
    pub page_size: u64,
    /// Time one poll may spend on the platform (`UPSTREAM_DEADLINE_MS`).
    pub deadline: Duration,
    /// Platform requests one poll may make (`MAX_PLATFORM_REQUESTS_PER_QUERY`);
    /// a larger burst is read over the next polls.
    pub max_requests_per_poll: u64,
}

impl LivePolicy {
    /// How long a write to a subscriber's socket may block before the
    /// connection is dropped: by then its subscriptions would have fallen
    /// further behind than their buffer.
    pub fn stuck_write(&self) -> Duration {
        self.poll * (self.buffer as u32).saturating_add(1)
    }
}

/// What a poll broadcasts to the subscribers of an activity.
#[derive(Debug)]
pub enum Batch {
    /// The new visits one poll found, in the platform's order.
    Visits(Vec<Arc<Visit>>),
    /// A platform failure; `ends` when it is definitive (the poller stopped).
    Failed { error: GatewayError, ends: bool },
}

type Feed = broadcast::Sender<Arc<Batch>>;

#[derive(Default)]
struct Counts {
    total: usize,
    by_client: HashMap<Arc<str>, usize>,
    /// Open connections (sockets, streams) by client.
    connections: HashMap<Arc<str>, usize>,
}

/// The live subscriptions of the process.
pub struct Live {
    cache: PageCache,
    /// With Redis: one poller per activity for all replicas.
    shared: Option<SharedLive>,
    pub policy: LivePolicy,
    feeds: Mutex<HashMap<ActivityId, Feed>>,
    counts: Mutex<Counts>,
    pub metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    /// Open subscription sockets, so shutdown can wait for their close.
    sockets: watch::Sender<usize>,
    /// Executions shared by the subscribers of one distinct subscription.
    pub fanout: Arc<fanout::Fanout>,
}

/// A subscription socket's client, put in its GraphQL context data once
/// `connection_init` authenticated it.
pub struct LiveConnection {
    pub principal: Principal,
    /// What the per-client limit counts by: the principal's name, or the
    /// address of an anonymous client.
    pub client: Arc<str>,
    /// Subscriptions open on this socket.
    pub open: Arc<AtomicUsize>,
    /// False for a shared execution ([`fanout`]): its members are counted
    /// against the limits one by one instead.
    pub counted: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Live {
    pub fn new(
        cache: PageCache,
        shared: Option<SharedLive>,
        policy: LivePolicy,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            cache,
            shared,
            policy,
            feeds: Mutex::new(HashMap::new()),
            counts: Mutex::new(Counts::default()),
            metrics,
            shutdown: watch::channel(false).0,
            sockets: watch::channel(0).0,
            fanout: Arc::default(),
        })
    }

    /// Ends every subscription (each gets `complete`) and every poller; the
    /// sockets then close with 1001.
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Resolves once every subscription socket has closed.
    pub async fn sockets_closed(&self) {
        let mut open = self.sockets.subscribe();
        let _ = open.wait_for(|n| *n == 0).await;
    }

    /// Counts a subscription connection of `client` (a socket or a stream)
    /// until the guard drops, or refuses it when the client holds
    /// `LIVE_MAX_CONNECTIONS_PER_CLIENT` already.
    pub fn connection_opened(
        self: &Arc<Self>,
        client: &Arc<str>,
    ) -> Result<ConnectionGuard, GatewayError> {
        {
            let mut counts = lock(&self.counts);
            let mine = counts.connections.entry(client.clone()).or_default();
            if *mine >= self.policy.max_connections_per_client {
                return Err(GatewayError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "this client already holds {} subscription connections (LIVE_MAX_CONNECTIONS_PER_CLIENT): close one first",
                        self.policy.max_connections_per_client
                    ),
                ));
            }
            *mine += 1;
        }
        self.sockets.send_modify(|n| *n += 1);
        Ok(ConnectionGuard {
            live: self.clone(),
            client: client.clone(),
        })
    }

    /// A subscriber's socket or stream (`what`) that accepted nothing for
    /// [`LivePolicy::stuck_write`] was dropped, with its `open` subscriptions.
    pub fn dropped_slow(&self, open: &AtomicUsize, what: &str) {
        let subscriptions = open.load(Ordering::SeqCst);
        self.metrics.live_closed_slow.inc_by(subscriptions as u64);
        tracing::info!(
            subscriptions,
            "a subscriber's {what} accepted nothing for {} s; dropped it",
            self.policy.stuck_write().as_secs()
        );
    }

    /// Activities being polled now.
    pub fn pollers(&self) -> usize {
        lock(&self.feeds).len()
    }

    /// A subscription to `activity`'s new visits, for a client already
    /// checked for scope. Refusals cost no platform request.
    pub fn subscribe(
        self: &Arc<Self>,
        activity: ActivityId,
        connection: &LiveConnection,
    ) -> Result<impl Stream<Item = async_graphql::Result<LiveVisit>> + use<>, GatewayError> {
        let guard = connection
            .counted
            .then(|| self.reserve(connection))
            .transpose()?;
        let rx = {
            let mut feeds = lock(&self.feeds);
            match feeds.get(&activity) {
                Some(feed) => feed.subscribe(),
                None => {
                    let (feed, rx) = broadcast::channel(self.policy.buffer.max(1));
                    feeds.insert(activity, feed.clone());
                    // Its polls are the starting client's, at live priority.
                    let caller = Caller::new(connection.client.clone(), Priority::Live);
                    tokio::spawn(caller.scope(poller::run(self.clone(), activity, feed)));
                    rx
                }
            }
        };
        let mut shutdown = self.shutdown_signal();
        Ok(Subscriber {
            rx,
            pending: None,
            shutdown: Box::pin(async move {
                let _ = shutdown.wait_for(|down| *down).await;
            }),
            ended: self.is_shutting_down(),
            guard,
            live: self.clone(),
        }
        .into_stream())
    }

    /// Counts a subscription against the limits, or refuses it; the guard
    /// releases its place.
    pub fn reserve(
        self: &Arc<Self>,
        connection: &LiveConnection,
    ) -> Result<SubscriptionGuard, GatewayError> {
        let mut counts = lock(&self.counts);
        if counts.total >= self.policy.max_total {
            return Err(GatewayError::new(
                ErrorCode::RateLimited,
                format!(
                    "the gateway serves at most {} subscriptions at once (LIVE_MAX_SUBSCRIPTIONS); try again later",
                    self.policy.max_total
                ),
            ));
        }
        let mine = counts
            .by_client
            .entry(connection.client.clone())
            .or_default();
        if *mine >= self.policy.max_per_client {
            return Err(GatewayError::new(
                ErrorCode::RateLimited,
                format!(
                    "this client already holds {} subscriptions (LIVE_MAX_SUBSCRIPTIONS_PER_CLIENT): end one first",
                    self.policy.max_per_client
                ),
            ));
        }
        *mine += 1;
        counts.total += 1;
        self.metrics.live_subscriptions.inc();
        connection.open.fetch_add(1, Ordering::SeqCst);
        Ok(SubscriptionGuard {
            live: self.clone(),
            client: connection.client.clone(),
            open: connection.open.clone(),
        })
    }

    /// Removes `activity`'s feed if nobody listens (or `force`); true when
    /// the poller should stop. Subscribing holds the same lock, so no
    /// subscriber can join a feed being retired.
    fn retire(&self, activity: ActivityId, feed: &Feed, force: bool) -> bool {
        let mut feeds = lock(&self.feeds);
        if !force && feed.receiver_count() > 0 {
            return false;
        }
        if feeds.get(&activity).is_some_and(|f| f.same_channel(feed)) {
            feeds.remove(&activity);
        }
        true
    }
}

/// Releases a subscription's place in the limits when it ends.
pub struct SubscriptionGuard {
    live: Arc<Live>,
    client: Arc<str>,
    open: Arc<AtomicUsize>,
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        let mut counts = lock(&self.live.counts);
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                counts.by_client.remove(&self.client);
            }
        }
        self.live.metrics.live_subscriptions.dec();
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An open subscription connection, counted until it drops.
pub struct ConnectionGuard {
    live: Arc<Live>,
    client: Arc<str>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        {
            let mut counts = lock(&self.live.counts);
            if let Some(n) = counts.connections.get_mut(&self.client) {
                *n -= 1;
                if *n == 0 {
                    counts.connections.remove(&self.client);
                }
            }
        }
        self.live.sockets.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// One visit sent to a subscriber: shared by all of them.
pub struct LiveVisit(pub Arc<Visit>);

struct Subscriber {
    rx: broadcast::Receiver<Arc<Batch>>,
    /// The batch being sent, and how many of its visits were.
    pending: Option<(Arc<Batch>, usize)>,
    /// Resolves on shutdown. Made once: with thousands of subscribers, a
    /// fresh waiter per event would contend on the shutdown channel.
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    ended: bool,
    /// Its place in the limits, released when it ends; `None` for a shared
    /// execution (its members hold theirs).
    guard: Option<SubscriptionGuard>,
    live: Arc<Live>,
}

impl Subscriber {
    fn into_stream(self) -> impl Stream<Item = async_graphql::Result<LiveVisit>> {
        futures::stream::unfold(self, |mut s| async move {
            loop {
                if s.ended {
                    return None;
                }
                if let Some((batch, sent)) = &mut s.pending {
                    if let Batch::Visits(visits) = &**batch
                        && let Some(visit) = visits.get(*sent)
                    {
                        *sent += 1;
                        let visit = visit.clone();
                        // A shared execution's deliveries are counted by the
                        // doors, one per member.
                        if s.guard.is_some() {
                            s.live.metrics.live_events_sent.inc();
                        }
                        return Some((Ok(LiveVisit(visit)), s));
                    }
                    s.pending = None;
                }
                let received = tokio::select! {
                    biased;
                    () = &mut s.shutdown => return None,
                    received = s.rx.recv() => received,
                };
                match received {
                    Ok(batch) => match &*batch {
                        Batch::Visits(_) => s.pending = Some((batch.clone(), 0)),
                        Batch::Failed { error, ends } => {
                            s.ended = *ends;
                            return Some((Err(error.extend()), s));
                        }
                    },
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        s.ended = true;
                        s.live.metrics.live_closed_slow.inc();
                        return Some((Err(too_slow(missed)), s));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }
}

/// The error that ends a subscriber that fell behind.
pub fn too_slow(missed: u64) -> async_graphql::Error {
    async_graphql::Error::new(format!(
        "this subscription fell more than LIVE_SUBSCRIBER_BUFFER polls behind ({missed} polls' \
         visits were not read in time) and was closed: read faster, or subscribe again"
    ))
    .extend_with(|_, e| e.set("code", SUBSCRIBER_TOO_SLOW))
}
