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
    refilled_at: Instant,
    paused_until: Instant,
}

impl Budget {
    pub fn new(rate_per_second: f64, burst: u32, pause_cap: Duration) -> Self {
        let now = Instant::now();
        Self {
            rate_per_second,
            burst: f64::from(burst.max(1)),
            pause_cap,
            state: Mutex::new(State {
                tokens: f64::from(burst.max(1)),
                refilled_at: now,
                paused_until: now,
            }),
        }
    }

    /// Waits for a slot. `Err(wait)` without waiting when the slot is further
    /// away than `max_wait`.
    pub async fn acquire(&self, max_wait: Duration) -> Result<Duration, Duration> {
        let wait = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let elapsed = now.saturating_duration_since(s.refilled_at).as_secs_f64();
            s.tokens = (s.tokens + elapsed * self.rate_per_second).min(self.burst);
            s.refilled_at = now;
            let queue_wait = if s.tokens >= 1.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64((1.0 - s.tokens) / self.rate_per_second)
            };
            let pause_wait = s.paused_until.saturating_duration_since(now);
            let wait = queue_wait.max(pause_wait);
            if wait > max_wait {
                return Err(wait);
            }
            s.tokens -= 1.0;
            wait
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(wait)
    }

    /// The platform said "too many requests": no new request before `for`
    /// (capped) has passed, and the bucket restarts empty.
    pub fn pause(&self, r#for: Duration) {
        let r#for = r#for.min(self.pause_cap);
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let until = Instant::now() + r#for;
        if until > s.paused_until {
            s.paused_until = until;
        }
        s.tokens = s.tokens.min(0.0);
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
}
