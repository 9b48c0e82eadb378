//! The platform budget's one front, what the REST client asks before each
//! attempt: clients take their turn ([`FairQueue`]), then the slot comes from
//! the budget of all replicas in Redis when it answers, else from this
//! process's share of it (`EXPECTED_REPLICAS`); a 429 pauses both.
//!
//! Asked per attempt, under the retries rather than once per page above
//! them: the platform counts every request, retries included, and a retry
//! after a 429 must wait out the pause the 429 set.

use std::sync::Arc;
use std::time::Duration;

use super::UpstreamConfig;
use super::budget::Budget;
use super::fair::{Caller, FairQueue, Refused};
use crate::page::Reach;
use crate::shared::Redis;
use crate::shared::budget::SharedBudget;
use crate::telemetry::Metrics;

pub struct BudgetFront {
    /// This process's bucket: the whole budget, or its share of it when
    /// it cannot be shared through Redis.
    local: Budget,
    /// The budget of all replicas together, when Redis is configured.
    shared: Option<SharedBudget>,
    /// Clients take turns at the budget.
    fair: FairQueue,
    retry_after_cap: Duration,
    metrics: Arc<Metrics>,
}

impl BudgetFront {
    /// The budget of `config`, split between `replicas` (with Redis, shared
    /// by all of them; this process's share is then the fallback).
    pub fn new(
        config: &UpstreamConfig,
        redis: Option<&Redis>,
        replicas: u32,
        metrics: Arc<Metrics>,
    ) -> Self {
        let replicas = replicas.max(1);
        Self {
            local: Budget::new(
                config.rate_per_second / f64::from(replicas),
                config.burst.div_ceil(replicas),
                config.retry_after_cap,
            ),
            shared: redis.map(|r| {
                SharedBudget::new(
                    r.clone(),
                    &config.base,
                    config.rate_per_second,
                    config.burst,
                )
            }),
            fair: FairQueue::new(config.max_queued_per_client),
            retry_after_cap: config.retry_after_cap,
            metrics,
        }
    }

    /// A slot for the current [`Caller`], in its turn: the time queued and
    /// the slot's wait together at most `max_wait`.
    pub async fn acquire(&self, max_wait: Duration) -> Result<Duration, Refused> {
        self.fair
            .take(Caller::current(), max_wait, |left| self.slot(left))
            .await
    }

    /// A slot in the shared budget, or in this process's share of it when
    /// Redis cannot be asked. `Err(wait)` when the slot is too far away.
    async fn slot(&self, max_wait: Duration) -> Result<Duration, Duration> {
        if let Some(shared) = &self.shared
            && let Some(answer) = shared.reserve(max_wait).await
        {
            let wait = answer?;
            if !wait.is_zero() {
                self.metrics.shared_budget_waits.inc();
                tokio::time::sleep(wait).await;
            }
            return Ok(wait);
        }
        self.local.acquire(max_wait).await
    }

    /// The platform said "too many requests": pause this process's bucket
    /// and, through Redis, every replica's.
    pub async fn pause(&self, r#for: Duration) {
        self.local.pause(r#for);
        if let Some(shared) = &self.shared {
            shared.pause(r#for.min(self.retry_after_cap)).await;
        }
    }

    /// What this process's share can give within `within`.
    pub fn reach(&self, within: Duration) -> Reach {
        Reach {
            requests: self.local.reach(within),
            rate: self.local.rate_per_second(),
        }
    }
}
