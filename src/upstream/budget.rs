//! The platform request budget: one token bucket shared by every upstream
//! call of the process. Callers reserve a slot and wait for it (a queue, not a
//! refusal) up to a limit; a 429 pauses the bucket instead of hammering on.
//! Uses tokio's clock, so tests run on a paused one.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct Budget {
    rate_per_second: f64,
    burst: f64,
    pause_cap: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// May go negative: each negative unit is a caller queued for a slot.
    tokens: f64,
    /// The bucket's clock: refills count from here. In the future during a
    /// pause, so nothing refills until the platform said it is ready again.
    refilled_at: Instant,
}

impl Budget {
    pub fn new(rate_per_second: f64, burst: u32, pause_cap: Duration) -> Self {
        Self {
            rate_per_second,
            burst: f64::from(burst.max(1)),
            pause_cap,
            state: Mutex::new(State {
                tokens: f64::from(burst.max(1)),
                refilled_at: Instant::now(),
            }),
        }
    }

    /// Waits for a slot. `Err(wait)` without waiting when the slot is further
    /// away than `max_wait`.
    pub async fn acquire(&self, max_wait: Duration) -> Result<Duration, Duration> {
        let wait = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if now > s.refilled_at {
                let elapsed = (now - s.refilled_at).as_secs_f64();
                s.tokens = (s.tokens + elapsed * self.rate_per_second).min(self.burst);
                s.refilled_at = now;
            }
            // Callers queue behind the pause, then one per 1/rate.
            let paused = s.refilled_at - now;
            let queued = if s.tokens >= 1.0 {
                0.0
            } else {
                (1.0 - s.tokens) / self.rate_per_second
            };
            let wait = paused + Duration::from_secs_f64(queued);
            if wait > max_wait {
                return Err(wait);
            }
            s.tokens -= 1.0;
            wait
        };
        if !wait.is_zero() {
            // A caller dropped while queued (client gone, deadline) gives its
            // slot back, so the callers behind it move up.
            let slot = Reserved(Some(self));
            tokio::time::sleep(wait).await;
            slot.keep();
        }
        Ok(wait)
    }

    /// How many slots could be taken within `within` from now, a read-only
    /// estimate: the tokens there now (negative while callers are queued),
    /// plus the rate over `within` less what is left of a pause.
    pub fn reach(&self, within: Duration) -> f64 {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, paused) = if now > s.refilled_at {
            let elapsed = (now - s.refilled_at).as_secs_f64();
            (
                (s.tokens + elapsed * self.rate_per_second).min(self.burst),
                Duration::ZERO,
            )
        } else {
            (s.tokens, s.refilled_at - now)
        };
        tokens + within.saturating_sub(paused).as_secs_f64() * self.rate_per_second
    }

    pub fn rate_per_second(&self) -> f64 {
        self.rate_per_second
    }

    /// The platform said "too many requests": nothing before `for` (capped)
    /// has passed, then one request, then the sustained rate: no burst the
    /// moment the pause ends.
    pub fn pause(&self, r#for: Duration) {
        let until = Instant::now() + r#for.min(self.pause_cap);
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if until > s.refilled_at {
            s.refilled_at = until;
        }
        s.tokens = s.tokens.min(1.0);
    }
}

/// A slot taken but not yet used: returned to the bucket unless kept.
struct Reserved<'a>(Option<&'a Budget>);

impl Reserved<'_> {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if let Some(budget) = self.0 {
            let mut s = budget.state.lock().unwrap_or_else(|p| p.into_inner());
            s.tokens = (s.tokens + 1.0).min(budget.burst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_then_callers_queue_at_the_rate() {
        let b = Budget::new(2.0, 3, Duration::from_secs(30));
        for _ in 0..3 {
            assert_eq!(b.acquire(Duration::from_secs(5)).await, Ok(Duration::ZERO));
        }
        let start = Instant::now();
        b.acquire(Duration::from_secs(5)).await.unwrap();
        b.acquire(Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(1),
            "two more at 2/s take a second"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_longer_than_allowed_is_refused_at_once() {
        let b = Budget::new(1.0, 1, Duration::from_secs(30));
        b.acquire(Duration::ZERO).await.unwrap();
        let start = Instant::now();
        assert!(b.acquire(Duration::from_millis(500)).await.is_err());
        assert_eq!(start.elapsed(), Duration::ZERO);
        // The refused caller did not take a slot.
        assert!(b.acquire(Duration::from_secs(1)).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_caller_that_is_cancelled_gives_its_slot_back() {
        let b = Budget::new(1.0, 1, Duration::from_secs(30));
        b.acquire(Duration::ZERO).await.unwrap();
        // Queued for 1 s, then dropped after 100 ms.
        let cancelled = tokio::time::timeout(
            Duration::from_millis(100),
            b.acquire(Duration::from_secs(5)),
        );
        assert!(cancelled.await.is_err());
        let start = Instant::now();
        b.acquire(Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(900),
            "next in line, not behind the cancelled caller"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_reach_counts_free_slots_the_rate_queued_callers_and_a_pause() {
        let b = Budget::new(2.0, 3, Duration::from_secs(30));
        let reach = |secs: f64| b.reach(Duration::from_secs_f64(secs));
        assert_eq!(reach(0.0), 3.0, "the burst, at once");
        assert_eq!(reach(8.0), 19.0, "then the rate");
        for _ in 0..3 {
            b.acquire(Duration::ZERO).await.unwrap();
        }
        assert_eq!(reach(8.0), 16.0, "the burst is spent");
        // One more queues for half a second: its slot is taken.
        let queued = b.acquire(Duration::from_secs(5));
        let both = async {
            tokio::task::yield_now().await;
            reach(8.0)
        };
        let (waited, during) = futures::join!(queued, both);
        assert_eq!(waited, Ok(Duration::from_millis(500)));
        assert_eq!(during, 15.0, "a queued caller's slot is not there");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(reach(0.0), 2.0, "refilled at the rate, up to the burst");
        b.acquire(Duration::ZERO).await.unwrap();
        // A pause counts no refill until it ends, and caps the slots at one.
        b.pause(Duration::from_secs(4));
        assert_eq!(reach(8.0), 1.0 + 4.0 * 2.0);
        assert_eq!(reach(2.0), 1.0, "nothing more within the pause");
        assert_eq!(b.rate_per_second(), 2.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_caller_and_is_capped() {
        let b = Budget::new(100.0, 10, Duration::from_secs(5));
        b.pause(Duration::from_secs(60));
        let start = Instant::now();
        assert!(
            b.acquire(Duration::from_secs(4)).await.is_err(),
            "the pause is longer than the wait"
        );
        b.acquire(Duration::from_secs(6)).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(5), "capped at 5 s");
    }

    #[tokio::test(start_paused = true)]
    async fn callers_held_by_a_pause_leave_at_the_rate_not_in_a_burst() {
        let b = Budget::new(10.0, 20, Duration::from_secs(30));
        b.pause(Duration::from_secs(2));
        let start = Instant::now();
        let waits: Vec<Duration> =
            futures::future::join_all((0..4).map(|_| b.acquire(Duration::from_secs(10))))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [2000, 2100, 2200, 2300]);
        assert_eq!(start.elapsed(), Duration::from_millis(2300));
    }
}
