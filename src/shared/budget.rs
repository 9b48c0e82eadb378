//! The platform budget of all replicas together, in Redis: GCRA (the
//! "theoretical arrival time" form of a token bucket) in one Lua script, on
//! Redis's own clock (`TIME`), so replicas with skewed clocks still agree and
//! a reservation is atomic. A caller is told how long to wait for its slot
//! (a queue, not a refusal) or, when that is longer than it may wait, is
//! refused without taking one. A 429's pause moves the arrival time forward
//! for everyone: nothing before the pause ends, then one request per
//! interval, no burst, exactly like the local bucket ([`crate::upstream`]).

use std::time::Duration;

use redis::Script;
use reqwest::Url;

use super::{KEY_PREFIX, Redis};

/// KEYS[1]: the budget. ARGV: operation (`take` or `pause`), the interval
/// between requests (µs), the burst, then `take`'s longest wait or `pause`'s
/// length (µs). `take` answers the wait in µs, or `-1 - wait` when refused;
/// `pause` answers 0. Garbage under the key (not a string, not a number, or
/// an arrival time more than an hour ahead, which no pause reaches) counts as
/// an idle budget and is overwritten.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local arg = tonumber(ARGV[4])
local stored = redis.pcall('GET', KEYS[1])
if type(stored) ~= 'string' then stored = '' end
local tat = tonumber(stored) or 0
if tat < now or tat > now + 3600000000 then tat = now end
local new_tat
local answer = 0
if ARGV[1] == 'pause' then
  new_tat = now + arg + (burst - 1) * interval
  if new_tat <= tat then return 0 end
else
  new_tat = tat + interval
  local wait = new_tat - burst * interval - now
  if wait < 0 then wait = 0 end
  if wait > arg then return -1 - math.floor(wait) end
  answer = math.floor(wait)
end
local ttl_ms = math.ceil((new_tat - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
return answer
";

/// The shared budget; `None` answers mean "Redis unavailable: use your share".
#[derive(Debug, Clone)]
pub struct SharedBudget {
    redis: Redis,
    key: String,
    interval_us: u64,
    burst: u32,
}

fn script() -> &'static Script {
    static SCRIPT_: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT_.get_or_init(|| Script::new(SCRIPT))
}

/// One budget per platform.
pub fn budget_key(base: &Url) -> String {
    format!("{KEY_PREFIX}:budget:{}", super::platform_id(base))
}

impl SharedBudget {
    pub fn new(redis: Redis, base: &Url, rate_per_second: f64, burst: u32) -> Self {
        Self {
            redis,
            key: budget_key(base),
            interval_us: ((1_000_000.0 / rate_per_second).round() as u64).max(1),
            burst: burst.max(1),
        }
    }

    /// Reserves a slot: `Some(Ok(wait))` to wait before sending,
    /// `Some(Err(wait))` when the slot is further than `max_wait` (nothing
    /// taken), `None` when Redis cannot be asked.
    pub async fn reserve(&self, max_wait: Duration) -> Option<Result<Duration, Duration>> {
        let answer = self.run("budget", "take", max_wait).await?;
        Some(if answer >= 0 {
            Ok(Duration::from_micros(answer.unsigned_abs()))
        } else {
            Err(Duration::from_micros((-1 - answer).unsigned_abs()))
        })
    }

    /// Pauses every replica for `r#for` (already capped by the caller).
    pub async fn pause(&self, r#for: Duration) {
        let _ = self.run("budget_pause", "pause", r#for).await;
    }

    /// The script's `operation` with its duration argument, in µs.
    async fn run(&self, op: &'static str, operation: &str, arg: Duration) -> Option<i64> {
        let arg_us = u64::try_from(arg.as_micros()).unwrap_or(u64::MAX / 2);
        self.redis
            .run(op, |mut c| async move {
                script()
                    .key(&self.key)
                    .arg(operation)
                    .arg(self.interval_us)
                    .arg(self.burst)
                    .arg(arg_us)
                    .invoke_async(&mut c)
                    .await
            })
            .await
    }
}
