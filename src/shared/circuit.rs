//! When to use Redis and when to skip it: a circuit breaker as a pure state
//! machine (the caller brings the clock), so it is tested on a paused one.
//!
//! Closed: commands go to Redis. `threshold` consecutive failures open it:
//! commands skip Redis at once (no timeout paid per request) until a probe
//! (`PING` on a fresh connection, every `probe_every`) succeeds. Each change
//! of what operators see (sharing or not) is reported once, so it is logged
//! once.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    /// Skipping Redis; the next probe is due at `probe_at`.
    Open {
        probe_at: Instant,
    },
}

/// What the caller should log and publish: Redis became usable or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Up,
    Down,
}

#[derive(Debug)]
pub struct Circuit {
    state: State,
    failures: u32,
    threshold: u32,
    probe_every: Duration,
    /// The state last reported; `None` before the first, so that starting
    /// with Redis down is reported too.
    reported: Option<Change>,
}

impl Circuit {
    /// Starts open with a probe due now: nothing is shared before Redis has
    /// answered once.
    pub fn new(threshold: u32, probe_every: Duration, now: Instant) -> Self {
        Self {
            state: State::Open { probe_at: now },
            failures: 0,
            threshold: threshold.max(1),
            probe_every,
            reported: None,
        }
    }

    /// Whether a command may go to Redis now.
    pub fn allows(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether a probe is due (only while open).
    pub fn probe_due(&self, now: Instant) -> bool {
        matches!(self.state, State::Open { probe_at } if now >= probe_at)
    }

    /// A command (or a probe) succeeded.
    pub fn success(&mut self) -> Option<Change> {
        self.failures = 0;
        self.state = State::Closed;
        self.report(Change::Up)
    }

    /// A command failed or timed out.
    pub fn failure(&mut self, now: Instant) -> Option<Change> {
        self.failures = self.failures.saturating_add(1);
        match self.state {
            State::Closed if self.failures < self.threshold => None,
            State::Closed => {
                self.state = State::Open {
                    probe_at: now + self.probe_every,
                };
                self.report(Change::Down)
            }
            State::Open { .. } => {
                self.state = State::Open {
                    probe_at: now + self.probe_every,
                };
                self.report(Change::Down)
            }
        }
    }

    fn report(&mut self, change: Change) -> Option<Change> {
        if self.reported == Some(change) {
            return None;
        }
        self.reported = Some(change);
        Some(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn starts_open_with_a_probe_due_and_reports_the_first_outcome_either_way() {
        let mut c = Circuit::new(3, EVERY, Instant::now());
        assert!(!c.allows());
        assert!(c.probe_due(Instant::now()));
        assert_eq!(c.success(), Some(Change::Up));
        assert!(c.allows());

        let mut down = Circuit::new(3, EVERY, Instant::now());
        assert_eq!(down.failure(Instant::now()), Some(Change::Down));
        assert!(!down.probe_due(Instant::now()), "next probe a second later");
        tokio::time::advance(EVERY).await;
        assert!(down.probe_due(Instant::now()));
        assert_eq!(down.failure(Instant::now()), None, "already reported");
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_a_success_in_between_resets_them() {
        let mut c = Circuit::new(3, EVERY, Instant::now());
        c.success();
        assert_eq!(c.failure(Instant::now()), None);
        assert_eq!(c.failure(Instant::now()), None);
        c.success();
        assert_eq!(c.failure(Instant::now()), None);
        assert_eq!(c.failure(Instant::now()), None);
        assert!(c.allows(), "two in a row: still closed");
        assert_eq!(c.failure(Instant::now()), Some(Change::Down));
        assert!(!c.allows());
        // Failures of commands already in flight change nothing visible.
        assert_eq!(c.failure(Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn probes_every_interval_while_open_and_closes_on_the_first_success() {
        let mut c = Circuit::new(1, EVERY, Instant::now());
        c.success();
        assert_eq!(c.failure(Instant::now()), Some(Change::Down));
        for _ in 0..5 {
            assert!(!c.probe_due(Instant::now()));
            tokio::time::advance(EVERY).await;
            assert!(c.probe_due(Instant::now()));
            assert_eq!(c.failure(Instant::now()), None, "a failed probe");
        }
        tokio::time::advance(EVERY).await;
        assert!(c.probe_due(Instant::now()));
        assert_eq!(c.success(), Some(Change::Up));
        assert!(c.allows() && !c.probe_due(Instant::now()));
        assert_eq!(c.success(), None, "reported once");
    }
}
