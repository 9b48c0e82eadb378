//! Fair turns at the platform budget (docs/architecture.md). The budget alone serves
//! callers in the order they came: a client that keeps many platform requests
//! queued (statistics over long ranges, ranges shifted a millisecond at a
//! time, subscriptions on ever-new activities) makes another client's request
//! wait behind all of its own, past `UPSTREAM_MAX_BUDGET_WAIT_MS`. So callers
//! queue here first: one at a time (the head) takes its budget slot and waits
//! for it, then the next is chosen by priority (reads a person waits for,
//! then live polls, then statistics' bulk reads; a priority passed over
//! three turns in a row goes next) and, within a priority, by client in
//! turn, each client's own requests in order. Another client's
//! request then waits behind at most one request of each client ahead of it.
//! A client has at most `UPSTREAM_MAX_QUEUED_PER_CLIENT` requests here;
//! beyond that its own request is refused at once, nobody else's.
//!
//! Who is asking travels as a task-local [`Caller`], set where the work
//! starts (an HTTP request, a live poller); work outside one (background
//! refreshes) is the gateway's own, at the lowest priority.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

/// Which requests go first: a lower value first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Reads a person waits for (`userVisits`).
    Interactive = 0,
    /// Live polls.
    Live = 1,
    /// Statistics' bulk reads, and the gateway's own background refreshes.
    Stats = 2,
}

/// Who is asking for platform requests, and at what priority.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The client's bucket: key name, JWT subject or `ip:<addr>`.
    pub client: Arc<str>,
    pub priority: Priority,
}

tokio::task_local! {
    static CALLER: Caller;
}

impl Caller {
    pub fn new(client: Arc<str>, priority: Priority) -> Self {
        Self { client, priority }
    }

    /// The caller of the current task; the gateway itself, at the lowest
    /// priority, outside any.
    pub fn current() -> Self {
        CALLER.try_with(Clone::clone).unwrap_or_else(|_| Self {
            client: "(gateway)".into(),
            priority: Priority::Stats,
        })
    }

    /// Runs `work` as this caller.
    pub fn scope<F: Future>(self, work: F) -> impl Future<Output = F::Output> {
        CALLER.scope(self, work)
    }

    /// Runs `work` as the current caller at `priority`.
    pub async fn at_priority<F: Future>(priority: Priority, work: F) -> F::Output {
        Self {
            priority,
            ..Self::current()
        }
        .scope(work)
        .await
    }
}

/// Why a caller got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its slot is further away than it may wait (time queued included).
    Budget,
    /// Its client already has the most requests queued it may have.
    ClientQueueFull,
}

impl Refused {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Budget => "budget",
            Self::ClientQueueFull => "client_queue_full",
        }
    }
}

/// The queue in front of the budget, shared by the process.
#[derive(Debug)]
pub struct FairQueue {
    max_per_client: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// A caller (the head) is taking its slot; the others wait their turn.
    busy: bool,
    /// The client of the latest head: when it is next in line again, a
    /// client that came meanwhile goes first.
    last: Option<Arc<str>>,
    next_id: u64,
    /// The waiting callers, by priority.
    classes: [Turns; 3],
    /// Turns given to a higher priority while this one had callers waiting.
    passed: [u32; 3],
    /// Requests queued by client: waiting, or the head.
    queued: HashMap<Arc<str>, usize>,
}

/// One priority's waiting callers: clients in turn, each client's in order.
#[derive(Debug, Default)]
struct Turns {
    order: VecDeque<Arc<str>>,
    waiting: HashMap<Arc<str>, VecDeque<(u64, oneshot::Sender<()>)>>,
}

impl Turns {
    fn push(&mut self, client: &Arc<str>, id: u64, turn: oneshot::Sender<()>) {
        let mine = self.waiting.entry(client.clone()).or_default();
        if mine.is_empty() {
            self.order.push_back(client.clone());
        }
        mine.push_back((id, turn));
    }

    /// The first waiter of the client whose turn it is; that client then
    /// goes to the back.
    fn pop(&mut self) -> Option<(Arc<str>, oneshot::Sender<()>)> {
        let client = self.order.pop_front()?;
        let mine = self.waiting.get_mut(&client)?;
        let (_, turn) = mine.pop_front()?;
        if mine.is_empty() {
            self.waiting.remove(&client);
        } else {
            self.order.push_back(client.clone());
        }
        Some((client, turn))
    }

    /// Takes a waiter out; false when it is not here (its turn came).
    fn remove(&mut self, client: &Arc<str>, id: u64) -> bool {
        let Some(mine) = self.waiting.get_mut(client) else {
            return false;
        };
        let Some(at) = mine.iter().position(|(i, _)| *i == id) else {
            return false;
        };
        mine.remove(at);
        if mine.is_empty() {
            self.waiting.remove(client);
            self.order.retain(|c| c != client);
        }
        true
    }
}

/// A priority passed over this many turns in a row while it waited takes
/// the next: live polls and statistics keep at least one turn in
/// `PASSED_OVER + 1` each under a steady flow of `userVisits`.
const PASSED_OVER: u32 = 3;

impl State {
    /// Gives the next waiter its turn, if any: by priority, unless a lower
    /// one has been passed over for [`PASSED_OVER`] turns.
    fn next(&mut self) {
        let passed_over = (1..self.classes.len())
            .find(|&c| self.passed[c] >= PASSED_OVER && !self.classes[c].order.is_empty());
        for c in passed_over.into_iter().chain(0..self.classes.len()) {
            let class = &mut self.classes[c];
            if class.order.len() > 1 && class.order.front() == self.last.as_ref() {
                class.order.rotate_left(1);
            }
            while let Some((client, turn)) = class.pop() {
                // A waiter's receiver lives until it has left the queue
                // (under this lock), so a send only fails if it was dropped
                // otherwise: then the next one.
                if turn.send(()).is_ok() {
                    self.busy = true;
                    self.last = Some(client);
                    self.passed[c] = 0;
                    for lower in c + 1..self.classes.len() {
                        if !self.classes[lower].order.is_empty() {
                            self.passed[lower] += 1;
                        }
                    }
                    return;
                }
            }
        }
    }
}

/// A caller's place: waiting (with its id and the news of its turn), or the
/// head. Dropped, it leaves the queue, or gives the turn to the next.
struct Ticket<'a> {
    queue: &'a FairQueue,
    client: Arc<str>,
    priority: Priority,
    waiting: Option<(u64, oneshot::Receiver<()>)>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut s = self.queue.lock();
        if let Some(n) = s.queued.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                s.queued.remove(&self.client);
            }
        }
        if let Some((id, _)) = &self.waiting
            && s.classes[self.priority as usize].remove(&self.client, *id)
        {
            return;
        }
        // The head (or just made it): the next one's turn.
        s.busy = false;
        s.next();
    }
}

impl FairQueue {
    pub fn new(max_per_client: usize) -> Self {
        Self {
            max_per_client: max_per_client.max(1),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for `caller`'s turn, then for its slot from `acquire` (given
    /// what is left of `max_wait`), which holds the turn until it answers.
    /// Answers the whole wait.
    pub async fn take<F, Fut>(
        &self,
        caller: Caller,
        max_wait: Duration,
        acquire: F,
    ) -> Result<Duration, Refused>
    where
        F: FnOnce(Duration) -> Fut,
        Fut: Future<Output = Result<Duration, Duration>>,
    {
        let started = Instant::now();
        let mut ticket = {
            let mut s = self.lock();
            let queued = s.queued.entry(caller.client.clone()).or_default();
            if *queued >= self.max_per_client {
                return Err(Refused::ClientQueueFull);
            }
            *queued += 1;
            let mut ticket = Ticket {
                queue: self,
                client: caller.client,
                priority: caller.priority,
                waiting: None,
            };
            if s.busy {
                let id = s.next_id;
                s.next_id += 1;
                let (turn, told) = oneshot::channel();
                s.classes[ticket.priority as usize].push(&ticket.client, id, turn);
                ticket.waiting = Some((id, told));
            } else {
                s.busy = true;
                s.last = Some(ticket.client.clone());
            }
            ticket
        };
        if let Some((_, told)) = &mut ticket.waiting {
            // Dropped on the way out, the ticket leaves the queue.
            if tokio::time::timeout_at(started + max_wait, told)
                .await
                .is_err()
            {
                return Err(Refused::Budget);
            }
        }
        let left = max_wait.saturating_sub(started.elapsed());
        let slot = acquire(left).await;
        drop(ticket);
        slot.map(|_| started.elapsed()).map_err(|_| Refused::Budget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::budget::Budget;

    /// One request a second, no burst beyond the first.
    fn slow() -> Budget {
        Budget::new(1.0, 1, Duration::from_secs(30))
    }

    fn caller(client: &str, priority: Priority) -> Caller {
        Caller::new(client.into(), priority)
    }

    /// Starts each caller in order (each queued before the next starts) and
    /// answers who got a slot, in the order they got it.
    async fn order(
        queue: Arc<FairQueue>,
        budget: Arc<Budget>,
        callers: Vec<(&'static str, Caller)>,
        max_wait: Duration,
    ) -> Vec<&'static str> {
        // The burst is spent: the first caller waits for its slot, as head.
        budget.acquire(Duration::ZERO).await.unwrap();
        let served = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, caller) in callers {
            let (queue, budget, served) = (queue.clone(), budget.clone(), served.clone());
            tasks.push(tokio::spawn(async move {
                let r = queue
                    .take(caller, max_wait, |left| budget.acquire(left))
                    .await;
                if r.is_ok() {
                    served.lock().unwrap().push(name);
                }
            }));
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(served).unwrap().into_inner().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn clients_take_turns_within_a_priority() {
        let queue = Arc::new(FairQueue::new(100));
        let budget = Arc::new(slow());
        let i = Priority::Interactive;
        let mut callers = vec![("a0", caller("a", i))];
        callers.extend(
            ["a1", "a2", "a3", "a4"]
                .into_iter()
                .map(|n| (n, caller("a", i))),
        );
        callers.push(("b0", caller("b", i)));
        callers.push(("b1", caller("b", i)));
        callers.push(("c0", caller("c", i)));
        let start = Instant::now();
        let served = order(queue, budget, callers, Duration::from_secs(60)).await;
        // a0 was the head when the others came; then b, c, a in turn.
        assert_eq!(
            served,
            ["a0", "b0", "c0", "a1", "b1", "a2", "a3", "a4"],
            "round robin across clients, each client's in order"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(8), "one a second");
    }

    #[tokio::test(start_paused = true)]
    async fn interactive_reads_go_before_live_polls_before_statistics() {
        let queue = Arc::new(FairQueue::new(100));
        let budget = Arc::new(slow());
        let callers = vec![
            ("head", caller("x", Priority::Stats)),
            ("stats", caller("a", Priority::Stats)),
            ("live", caller("a", Priority::Live)),
            ("stats2", caller("b", Priority::Stats)),
            ("read", caller("c", Priority::Interactive)),
            ("live2", caller("c", Priority::Live)),
        ];
        let served = order(queue, budget, callers, Duration::from_secs(60)).await;
        assert_eq!(served, ["head", "read", "live", "live2", "stats", "stats2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_flow_of_reads_does_not_hold_live_polls_and_statistics_back() {
        let queue = Arc::new(FairQueue::new(100));
        let budget = Arc::new(slow());
        let mut callers = vec![("head", caller("x", Priority::Stats))];
        let reads = ["r1", "r2", "r3", "r4", "r5", "r6", "r7"];
        for (n, name) in reads.into_iter().enumerate() {
            let client: &'static str = ["c1", "c2", "c3", "c4", "c5", "c6", "c7"][n];
            callers.push((name, caller(client, Priority::Interactive)));
        }
        callers.push(("live", caller("p", Priority::Live)));
        callers.push(("stats", caller("s", Priority::Stats)));
        callers.push(("stats2", caller("s", Priority::Stats)));
        let served = order(queue, budget, callers, Duration::from_secs(60)).await;
        // Three reads, then the live poll and the statistics passed over
        // meanwhile; three reads again, then statistics' next.
        assert_eq!(
            served,
            [
                "head", "r1", "r2", "r3", "live", "stats", "r4", "r5", "r6", "stats2", "r7"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn another_client_waits_behind_one_request_of_a_client_that_fills_the_queue() {
        let queue = Arc::new(FairQueue::new(1000));
        let budget = Arc::new(slow());
        let abuser = caller("abuser", Priority::Interactive);
        // Without the queue, 50 requests ahead at 1/s: the victim's slot
        // would be 50 s away.
        let mut held = Vec::new();
        for _ in 0..50 {
            let (queue, budget, abuser) = (queue.clone(), budget.clone(), abuser.clone());
            held.push(tokio::spawn(async move {
                let _ = queue
                    .take(abuser, Duration::from_secs(600), |left| {
                        budget.acquire(left)
                    })
                    .await;
            }));
            tokio::task::yield_now().await;
        }
        let waited = queue
            .take(
                caller("victim", Priority::Interactive),
                Duration::from_secs(3),
                |left| budget.acquire(left),
            )
            .await
            .unwrap();
        assert!(waited <= Duration::from_secs(2), "waited {waited:?}");
        for t in held {
            t.abort();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_dropped_while_queued_leaves_the_queue() {
        let queue = Arc::new(FairQueue::new(100));
        let budget = Arc::new(slow());
        budget.acquire(Duration::ZERO).await.unwrap();
        let head = {
            let (queue, budget) = (queue.clone(), budget.clone());
            tokio::spawn(async move {
                queue
                    .take(
                        caller("a", Priority::Interactive),
                        Duration::from_secs(5),
                        |l| budget.acquire(l),
                    )
                    .await
            })
        };
        tokio::task::yield_now().await;
        // Queued behind the head, then given up after 100 ms.
        let gone = tokio::time::timeout(
            Duration::from_millis(100),
            queue.take(
                caller("b", Priority::Interactive),
                Duration::from_secs(5),
                |l| budget.acquire(l),
            ),
        );
        assert!(gone.await.is_err());
        assert_eq!(head.await.unwrap(), Ok(Duration::from_secs(1)));
        let start = Instant::now();
        let next = queue
            .take(caller("c", Priority::Stats), Duration::from_secs(5), |l| {
                budget.acquire(l)
            })
            .await;
        assert_eq!(next, Ok(Duration::from_secs(1)), "next after the head");
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        let s = queue.lock();
        assert!(!s.busy && s.queued.is_empty(), "{s:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_dropped_while_waiting_for_its_slot_passes_the_turn_and_the_slot_on() {
        let queue = FairQueue::new(100);
        let budget = slow();
        budget.acquire(Duration::ZERO).await.unwrap();
        // The head's slot is 1 s away; it gives up after 100 ms.
        let head = tokio::time::timeout(
            Duration::from_millis(100),
            queue.take(
                caller("a", Priority::Interactive),
                Duration::from_secs(5),
                |l| budget.acquire(l),
            ),
        );
        let next = async {
            tokio::task::yield_now().await;
            queue
                .take(caller("b", Priority::Stats), Duration::from_secs(5), |l| {
                    budget.acquire(l)
                })
                .await
        };
        let (head, next) = tokio::join!(head, next);
        assert!(head.is_err());
        assert_eq!(next, Ok(Duration::from_secs(1)), "the head's slot, at 1 s");
    }

    #[tokio::test(start_paused = true)]
    async fn time_queued_counts_against_the_wait() {
        let queue = Arc::new(FairQueue::new(100));
        let budget = Arc::new(slow());
        // The head takes the burst; a second waits 1 s for its slot; a third
        // may wait 1.5 s: it is refused when that is over, not later.
        let first = queue
            .take(caller("a", Priority::Interactive), Duration::ZERO, |l| {
                budget.acquire(l)
            })
            .await;
        assert_eq!(first, Ok(Duration::ZERO));
        let second = queue.take(
            caller("a", Priority::Interactive),
            Duration::from_secs(5),
            |l| budget.acquire(l),
        );
        let third = async {
            tokio::task::yield_now().await;
            let start = Instant::now();
            let r = queue
                .take(
                    caller("b", Priority::Interactive),
                    Duration::from_millis(1500),
                    |l| budget.acquire(l),
                )
                .await;
            (r, start.elapsed())
        };
        let (second, (third, waited)) = tokio::join!(second, third);
        assert_eq!(second, Ok(Duration::from_secs(1)));
        assert_eq!(third, Err(Refused::Budget), "its slot was 2 s away");
        assert!(waited <= Duration::from_millis(1500), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_over_its_bound_is_refused_at_once_and_nobody_else() {
        let queue = Arc::new(FairQueue::new(3));
        let budget = Arc::new(slow());
        budget.acquire(Duration::ZERO).await.unwrap();
        let mut held = Vec::new();
        for _ in 0..3 {
            let (queue, budget) = (queue.clone(), budget.clone());
            held.push(tokio::spawn(async move {
                queue
                    .take(caller("a", Priority::Live), Duration::from_secs(60), |l| {
                        budget.acquire(l)
                    })
                    .await
            }));
            tokio::task::yield_now().await;
        }
        let start = Instant::now();
        let over = queue
            .take(caller("a", Priority::Live), Duration::from_secs(60), |l| {
                budget.acquire(l)
            })
            .await;
        assert_eq!(over, Err(Refused::ClientQueueFull));
        assert_eq!(start.elapsed(), Duration::ZERO, "at once");
        let other = queue
            .take(caller("b", Priority::Live), Duration::from_secs(60), |l| {
                budget.acquire(l)
            })
            .await;
        assert!(other.is_ok(), "another client is not refused");
        for t in held {
            assert!(t.await.unwrap().is_ok());
        }
        // Once served, the client may queue again.
        assert!(
            queue
                .take(caller("a", Priority::Live), Duration::from_secs(60), |l| {
                    budget.acquire(l)
                })
                .await
                .is_ok()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_caller_is_the_task_locals_or_the_gateway_at_the_lowest_priority() {
        let outside = Caller::current();
        assert_eq!(outside.priority, Priority::Stats);
        let (client, priority) = caller("web", Priority::Interactive)
            .scope(async {
                let stats = Caller::at_priority(Priority::Stats, async { Caller::current() }).await;
                assert_eq!((&*stats.client, stats.priority), ("web", Priority::Stats));
                let c = Caller::current();
                (c.client, c.priority)
            })
            .await;
        assert_eq!((&*client, priority), ("web", Priority::Interactive));
    }
}
