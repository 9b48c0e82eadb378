//! Per-client request rate limits: one token bucket per client (API key name,
//! JWT subject, else IP address), answered with `RATE_LIMITED`. A key may
//! carry its own rate.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// A sustained rate and the burst above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl Rate {
    /// Zeros are taken as 1 (settings and the keys file refuse them).
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN),
            burst: NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN),
        }
    }

    fn limiter(self) -> DefaultKeyedRateLimiter<Arc<str>> {
        RateLimiter::keyed(Quota::per_second(self.per_second).allow_burst(self.burst))
    }
}

/// Buckets for every client: one keyed limiter for the default rate, and
/// one per distinct rate that keys carry (a handful: one per keys-file
/// line at most), made when first needed.
pub struct ClientLimiter {
    default_rate: Rate,
    default: DefaultKeyedRateLimiter<Arc<str>>,
    own: RwLock<HashMap<Rate, Arc<DefaultKeyedRateLimiter<Arc<str>>>>>,
}

impl ClientLimiter {
    pub fn new(default_rate: Rate) -> Self {
        Self {
            default_rate,
            default: default_rate.limiter(),
            own: RwLock::new(HashMap::new()),
        }
    }

    /// `Err(wait)` when the client must slow down. `rate` is the client's
    /// own, if it has one; else the default applies.
    pub fn check(&self, client: &Arc<str>, rate: Option<Rate>) -> Result<(), Duration> {
        let outcome = match rate.filter(|&r| r != self.default_rate) {
            None => self.default.check_key(client),
            Some(rate) => self.limiter_for(rate).check_key(client),
        };
        outcome.map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    fn limiter_for(&self, rate: Rate) -> Arc<DefaultKeyedRateLimiter<Arc<str>>> {
        let found = self
            .own
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&rate)
            .cloned();
        found.unwrap_or_else(|| {
            self.own
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .entry(rate)
                .or_insert_with(|| Arc::new(rate.limiter()))
                .clone()
        })
    }

    /// Forgets clients whose buckets are full again, so memory stays
    /// bounded, and the limiters of rates nobody is using (a key whose rate
    /// changed, or was removed). A request racing with the removal may find
    /// a fresh bucket once: it is let through, which a flood cannot exploit.
    pub fn forget_idle(&self) {
        self.default.retain_recent();
        self.default.shrink_to_fit();
        let mut own = self.own.write().unwrap_or_else(|p| p.into_inner());
        own.retain(|_, limiter| {
            limiter.retain_recent();
            limiter.shrink_to_fit();
            !limiter.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_over_its_burst_is_told_to_wait_and_others_are_not() {
        let l = ClientLimiter::new(Rate::new(1, 3));
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        for _ in 0..3 {
            assert!(l.check(&a, None).is_ok());
        }
        let wait = l.check(&a, None).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(l.check(&b, None).is_ok());
    }

    #[test]
    fn a_client_with_its_own_rate_is_held_to_it() {
        let l = ClientLimiter::new(Rate::new(1, 2));
        let (slow, fast, plain): (Arc<str>, Arc<str>, Arc<str>) =
            ("slow".into(), "fast".into(), "plain".into());
        let own_slow = Some(Rate::new(1, 1));
        let own_fast = Some(Rate::new(1000, 50));
        assert!(l.check(&slow, own_slow).is_ok());
        assert!(l.check(&slow, own_slow).is_err());
        for _ in 0..50 {
            assert!(l.check(&fast, own_fast).is_ok());
        }
        // A rate equal to the default shares the default's buckets.
        assert!(l.check(&plain, Some(Rate::new(1, 2))).is_ok());
        assert!(l.check(&plain, None).is_ok());
        assert!(l.check(&plain, None).is_err());
        assert_eq!(l.own.read().unwrap().len(), 2);
    }

    #[test]
    fn idle_limiters_of_own_rates_are_dropped() {
        let l = ClientLimiter::new(Rate::new(1, 2));
        // A burst of 1 at 1000/s is full again after a millisecond.
        let k: Arc<str> = "k".into();
        assert!(l.check(&k, Some(Rate::new(1000, 1))).is_ok());
        std::thread::sleep(Duration::from_millis(20));
        l.forget_idle();
        assert!(l.own.read().unwrap().is_empty());
    }
}
