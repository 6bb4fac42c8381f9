//! The [`CredentialRenewer`]: fetches credentials in the background, well
//! before they expire, and publishes them for the S3 client to read from
//! memory. No S3 request ever waits for a renewal.
//!
//! Schedule: a renewal is due when a third of the keys' lifetime remains
//! (about every 10 minutes for CoreWeave's 15-minute keys), up to a twelfth
//! of the lifetime earlier at random, so many nodes do not renew in step.
//! A failed renewal keeps the current keys and is retried with exponential
//! backoff and jitter, several times before the keys expire; each failure is
//! logged at WARN with the time left.
//!
//! A request rejected for stale keys (`ExpiredToken`, `InvalidAccessKeyId`,
//! a 403) asks for an immediate renewal through
//! [`CredentialsHandle::renew_after_rejection`] and is retried once with the
//! new keys. Keys fetched less than [`FRESH`] ago are not renewed again for
//! a rejection: such a 403 is a real permission error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{watch, Notify};

use super::{Credentials, Fetcher};

/// Keys younger than this are not renewed because of a rejection.
pub const FRESH: Duration = Duration::from_secs(5);
/// How long a rejected request waits for renewed keys before giving up.
const REJECTION_WAIT: Duration = Duration::from_secs(5);
/// First retry delay after a failed renewal; doubles per failure.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest delay between renewal attempts (also bounds how long a mount
/// whose keys expired takes to recover once the endpoint is back).
const BACKOFF_MAX: Duration = Duration::from_secs(15);

/// What the renewer publishes.
#[derive(Debug, Clone)]
pub struct Published {
    pub creds: Credentials,
    /// Increases with every successful fetch.
    pub generation: u64,
    pub fetched_at: Instant,
    pub fetched_wall: SystemTime,
    /// The error of the latest attempt, when the latest attempt failed.
    pub last_failure: Option<String>,
}

/// When the next renewal is due, `remaining` before expiry of keys that
/// live `lifetime`; `r` in [0, 1] picks the jitter.
pub fn renewal_delay(lifetime: Duration, remaining: Duration, r: f64) -> Duration {
    let jitter = (lifetime / 12).mul_f64(r.clamp(0.0, 1.0));
    remaining.saturating_sub(lifetime / 3 + jitter)
}

/// Delay before retry number `failures` (1 = after the first failure).
/// Half fixed, half random ("equal jitter"), so retries never hammer; while
/// the keys are valid, at most a quarter of the time left, so several
/// retries happen before they expire.
pub fn backoff_delay(failures: u32, remaining: Option<Duration>, r: f64) -> Duration {
    let exp = BACKOFF_BASE
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    let d = exp.mul_f64(0.5 + 0.5 * r.clamp(0.0, 1.0));
    match remaining {
        Some(rem) if !rem.is_zero() => d.min(rem / 4).max(Duration::from_millis(100)),
        _ => d,
    }
}

/// Shared between the renewer task, the provider and the store.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) tx: watch::Sender<Arc<Published>>,
    forced: Notify,
    forced_generation: AtomicU64,
    pub(super) renewable: bool,
    pub(super) source: String,
}

/// What the store holds: the current keys, and a way to ask for new ones.
#[derive(Debug, Clone)]
pub struct CredentialsHandle {
    pub(super) shared: Arc<Shared>,
}

impl CredentialsHandle {
    pub(super) fn new(first: Credentials, renewable: bool, source: String) -> CredentialsHandle {
        let published = Published {
            creds: first,
            generation: 1,
            fetched_at: Instant::now(),
            fetched_wall: SystemTime::now(),
            last_failure: None,
        };
        let (tx, _) = watch::channel(Arc::new(published));
        CredentialsHandle {
            shared: Arc::new(Shared {
                tx,
                forced: Notify::new(),
                forced_generation: AtomicU64::new(0),
                renewable,
                source,
            }),
        }
    }

    /// The keys in force now (a memory read).
    pub fn current(&self) -> Arc<Published> {
        self.shared.tx.borrow().clone()
    }

    pub fn generation(&self) -> u64 {
        self.shared.tx.borrow().generation
    }

    pub fn source(&self) -> &str {
        &self.shared.source
    }

    /// A message when the current keys have expired (renewal is failing),
    /// so requests fail fast instead of being sent with dead keys.
    pub fn expired(&self) -> Option<String> {
        let cur = self.current();
        let expires = cur.creds.expires_at?;
        let ago = SystemTime::now().duration_since(expires).ok()?;
        Some(format!(
            "the S3 credentials from {} expired {}s ago and renewing them is failing ({}); \
             the mount recovers by itself once renewal succeeds",
            self.shared.source,
            ago.as_secs(),
            cur.last_failure
                .as_deref()
                .unwrap_or("no attempt finished yet")
        ))
    }

    /// A request signed with generation `seen` was rejected as if the keys
    /// were stale. Returns true when newer keys are available to retry with.
    pub async fn renew_after_rejection(&self, seen: u64) -> bool {
        if !self.shared.renewable {
            return false;
        }
        let cur = self.current();
        if cur.generation > seen {
            return true;
        }
        if cur.fetched_at.elapsed() < FRESH || cur.last_failure.is_some() {
            return false;
        }
        let mut rx = self.shared.tx.subscribe();
        self.shared
            .forced_generation
            .fetch_max(seen, Ordering::SeqCst);
        self.shared.forced.notify_one();
        tracing::info!(
            generation = seen,
            "credentials rejected by the store; renewing now"
        );
        let wait = async {
            loop {
                if rx.changed().await.is_err() {
                    return false;
                }
                let p = rx.borrow_and_update().clone();
                if p.generation > seen {
                    return true;
                }
                if p.last_failure.is_some() {
                    return false;
                }
            }
        };
        tokio::time::timeout(REJECTION_WAIT, wait)
            .await
            .unwrap_or(false)
    }
}

/// The background task that keeps the keys fresh.
pub struct CredentialRenewer {
    handle: CredentialsHandle,
    fetcher: Fetcher,
}

impl CredentialRenewer {
    pub(super) fn new(handle: CredentialsHandle, fetcher: Fetcher) -> Self {
        CredentialRenewer { handle, fetcher }
    }

    /// Run until the runtime shuts down.
    pub async fn run(self) {
        let shared = &self.handle.shared;
        let mut failures = 0u32;
        loop {
            let cur = self.handle.current();
            let remaining = cur
                .creds
                .expires_at
                .map(|e| e.duration_since(SystemTime::now()).unwrap_or_default());
            let delay = match (failures, cur.creds.expires_at) {
                (0, Some(expires)) => {
                    let lifetime = expires.duration_since(cur.fetched_wall).unwrap_or_default();
                    renewal_delay(lifetime, remaining.unwrap_or_default(), fastrand::f64())
                }
                (0, None) => return, // keys that never expire need no renewal
                (n, _) => backoff_delay(n, remaining, fastrand::f64()),
            };
            let forced = shared.forced.notified();
            tokio::pin!(forced);
            // Register before checking, so a request between the check and
            // the wait is not lost.
            forced.as_mut().enable();
            if shared.forced_generation.load(Ordering::SeqCst) < cur.generation {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = &mut forced => {}
                }
            }
            match self.fetcher.fetch().await {
                Ok(creds) => {
                    failures = 0;
                    let expires_in = creds
                        .expires_at
                        .and_then(|e| e.duration_since(SystemTime::now()).ok());
                    let generation = cur.generation + 1;
                    tracing::info!(
                        generation,
                        access_key_id = %creds.access_key_id,
                        expires_in_s = expires_in.map(|d| d.as_secs()),
                        "renewed credentials"
                    );
                    shared.tx.send_replace(Arc::new(Published {
                        creds,
                        generation,
                        fetched_at: Instant::now(),
                        fetched_wall: SystemTime::now(),
                        last_failure: None,
                    }));
                }
                Err(e) => {
                    failures += 1;
                    let left = remaining.map(|r| r.as_secs());
                    tracing::warn!(
                        attempt = failures,
                        time_left_s = left,
                        error = %e,
                        "renewing credentials failed; keeping the current keys and retrying"
                    );
                    let msg = e.to_string();
                    shared.tx.send_modify(|p| {
                        let mut next = (**p).clone();
                        next.last_failure = Some(msg);
                        *p = Arc::new(next);
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn renews_when_a_third_remains() {
        let life = 15 * MIN;
        assert_eq!(renewal_delay(life, life, 0.0), 10 * MIN);
        let earliest = renewal_delay(life, life, 1.0);
        assert_eq!(earliest, 10 * MIN - life / 12);
        for r in [0.0, 0.3, 0.99] {
            let d = renewal_delay(life, life, r);
            assert!(d <= 10 * MIN && d >= earliest);
        }
        assert_eq!(
            renewal_delay(life, Duration::from_secs(60), 0.5),
            Duration::ZERO,
            "overdue"
        );
        let five = Duration::from_secs(5);
        assert!(renewal_delay(five, five, 1.0) >= Duration::from_millis(2900));
    }

    #[test]
    fn backoff_grows_is_jittered_and_bounded() {
        assert!(backoff_delay(1, None, 0.0) >= Duration::from_millis(250));
        assert!(backoff_delay(1, None, 1.0) <= BACKOFF_BASE);
        assert!(backoff_delay(4, None, 0.0) >= Duration::from_secs(2));
        for n in [10, 20, 100, u32::MAX] {
            assert!(backoff_delay(n, None, 1.0) <= BACKOFF_MAX, "{n}");
            assert!(backoff_delay(n, None, 0.0) >= BACKOFF_MAX / 2, "{n}");
        }
        // While keys are valid, several retries fit before expiry.
        assert!(backoff_delay(10, Some(Duration::from_secs(8)), 1.0) <= Duration::from_secs(2));
        assert!(
            backoff_delay(10, Some(Duration::from_millis(10)), 1.0) >= Duration::from_millis(100)
        );
    }
}
