//! The one retry policy of cwfs: exponential backoff with full jitter,
//! bounded in attempts and in total time. Only the store layer retries; the
//! SDK's own retries are off so that attempts are counted once.
//!
//! Retried: 5xx, throttling (503 SlowDown), RequestTimeout, connection
//! refused/reset, timeouts, bodies that break or stall. Not retried: answers
//! that another attempt cannot change (404, 412, 416, other 4xx). A 403 is
//! the credentials layer's business (renew once, then EACCES).

use std::time::Duration;

use super::{StoreError, StoreErrorKind};

/// How hard to try.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per operation, including the first.
    pub max_attempts: u32,
    /// Give up once this much time has passed since the first attempt.
    pub deadline: Duration,
    /// The first backoff's ceiling; doubles per attempt.
    pub base: Duration,
    /// The largest backoff ceiling.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            deadline: Duration::from_secs(30),
            base: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// May another attempt cure this error?
    pub fn retryable(e: &StoreError) -> bool {
        matches!(
            e.kind,
            StoreErrorKind::Server
                | StoreErrorKind::Timeout
                | StoreErrorKind::Network
                | StoreErrorKind::Protocol
        )
    }

    /// The wait before attempt `attempt + 1` (attempt counts from 1), for a
    /// random `r` in [0, 1): full jitter, uniform in [0, ceiling).
    pub fn backoff(&self, attempt: u32, r: f64) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max_backoff);
        ceiling.mul_f64(r.clamp(0.0, 1.0))
    }

    /// Decide after a failed attempt: `Some(wait)` to try again.
    pub fn next(&self, e: &StoreError, attempt: u32, elapsed: Duration) -> Option<Duration> {
        if !Self::retryable(e) || attempt >= self.max_attempts {
            return None;
        }
        let wait = self.backoff(attempt, fastrand::f64());
        (elapsed + wait < self.deadline).then_some(wait)
    }
}

/// The error to report once retries are exhausted.
pub fn exhausted(mut e: StoreError, attempts: u32, elapsed: Duration) -> StoreError {
    if attempts > 1 {
        e.detail = format!(
            "{} (after {attempts} attempts over {:.1}s)",
            e.detail,
            elapsed.as_secs_f64()
        );
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(kind: StoreErrorKind) -> StoreError {
        StoreError::new(kind, "GetObject", "k", "x")
    }

    #[test]
    fn backoff_is_full_jitter_and_capped() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1, 0.0), Duration::ZERO);
        assert!(p.backoff(1, 0.999) < Duration::from_millis(100));
        assert!(p.backoff(4, 0.999) < Duration::from_millis(800));
        assert!(p.backoff(4, 0.999) > Duration::from_millis(700));
        for a in [10, 30, u32::MAX] {
            assert!(p.backoff(a, 0.999) <= p.max_backoff);
        }
    }

    #[test]
    fn bounded_in_attempts_and_time() {
        let p = RetryPolicy::default();
        let e = err(StoreErrorKind::Server);
        assert!(p.next(&e, 1, Duration::ZERO).is_some());
        assert!(p.next(&e, 10, Duration::ZERO).is_none(), "attempts");
        assert!(p.next(&e, 2, Duration::from_secs(31)).is_none(), "deadline");
        for k in [
            StoreErrorKind::NotFound,
            StoreErrorKind::PreconditionFailed,
            StoreErrorKind::AccessDenied,
            StoreErrorKind::InvalidRange,
        ] {
            assert!(
                p.next(&err(k), 1, Duration::ZERO).is_none(),
                "{k:?} is final"
            );
        }
        for k in [
            StoreErrorKind::Timeout,
            StoreErrorKind::Network,
            StoreErrorKind::Protocol,
        ] {
            assert!(
                p.next(&err(k), 1, Duration::ZERO).is_some(),
                "{k:?} is retried"
            );
        }
        let x = exhausted(err(StoreErrorKind::Server), 3, Duration::from_millis(1500));
        assert!(x.to_string().contains("after 3 attempts over 1.5s"), "{x}");
    }
}
