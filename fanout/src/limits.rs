//! Rate limits of the live endpoint: connects per client IP and per principal, counted in Redis
//! so that every fanout instance shares the budget (a fixed one-minute window per key, the same
//! scheme as the query API's limits: `gps:rl:<scope>:<id>:<window>`), and `subscribe` messages
//! per connection, a token bucket in memory (a connection lives on one instance).
//!
//! Redis unavailable: the connect limit lets the connect through and logs it (the credential
//! check, which needs the database, still runs); refusing every dashboard because the limiter's
//! store is down would turn a Redis outage into a live-view outage.

use crate::error::ApiError;
use redis::aio::ConnectionManager;
use std::time::Duration;
use tokio::time::Instant;

/// Length of a connect-limit window.
const WINDOW_SECS: u64 = 60;

/// Count one connect of `id` in `scope` (`fanout_ip`, `fanout_principal`); refused with the
/// seconds left in the window once more than `limit` happened in it. `limit` 0: no limit.
pub async fn check_connect(
    redis: &ConnectionManager,
    scope: &'static str,
    per: &'static str,
    id: &str,
    limit: u64,
) -> Result<(), ApiError> {
    if limit == 0 {
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let key = format!("gps:rl:{scope}:{id}:{}", now / WINDOW_SECS);
    let mut redis = redis.clone();
    let counted: Result<(u64,), redis::RedisError> = redis::pipe()
        .atomic()
        .incr(&key, 1u64)
        .expire(&key, WINDOW_SECS as i64 + 1)
        .ignore()
        .query_async(&mut redis)
        .await;
    match counted {
        Ok((count,)) if count > limit => Err(ApiError::RateLimited {
            per,
            retry_after: WINDOW_SECS - now % WINDOW_SECS,
        }),
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(error = %e, scope, "connect limit check skipped: redis unavailable");
            Ok(())
        }
    }
}

/// A token bucket of `subscribe` messages: `burst` tokens, refilled at `per_minute`.
#[derive(Debug)]
pub struct SubscribeBucket {
    burst: f64,
    per_sec: f64,
    tokens: f64,
    at: Instant,
}

impl SubscribeBucket {
    /// A full bucket.
    pub fn new(burst: u32, per_minute: u32) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            per_sec: f64::from(per_minute.max(1)) / 60.0,
            tokens: f64::from(burst.max(1)),
            at: Instant::now(),
        }
    }

    /// Take a token at `now`; otherwise how long until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_its_burst_then_its_rate() {
        let mut bucket = SubscribeBucket::new(3, 60);
        let start = Instant::now();
        for _ in 0..3 {
            assert!(bucket.take(start).is_ok());
        }
        let wait = bucket.take(start).unwrap_err();
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // One token a second comes back, never more than the burst.
        assert!(bucket.take(start + Duration::from_secs(1)).is_ok());
        assert!(bucket.take(start + Duration::from_secs(1)).is_err());
        let later = start + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(bucket.take(later).is_ok());
        }
        assert!(bucket.take(later).is_err());
    }
}
