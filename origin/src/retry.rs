//! When to try a failed origin request again: exponential backoff with
//! jitter, capped, and the origin's own `Retry-After` (429, 503) honoured
//! under the same cap. Only failures that another attempt may cure are
//! retried ([`OriginError::retryable`]).

use crate::error::OriginError;
use crate::stats::OriginStats;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub retries: u32,
    /// The first wait; each next one doubles.
    pub first_backoff: Duration,
    /// The longest wait (also caps `Retry-After`).
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: 5,
            first_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// The backoff state of one request across its attempts.
pub struct Backoff<'a> {
    policy: RetryPolicy,
    stats: &'a OriginStats,
    url: &'a str,
    tries: u32,
    next: Duration,
}

impl<'a> Backoff<'a> {
    pub fn new(policy: RetryPolicy, stats: &'a OriginStats, url: &'a str) -> Self {
        Self {
            policy,
            stats,
            url,
            tries: 0,
            next: policy.first_backoff,
        }
    }

    /// Waits before the next attempt, or gives `e` back when it is final.
    pub async fn after(&mut self, e: OriginError) -> Result<(), OriginError> {
        if !e.retryable() || self.tries >= self.policy.retries {
            return Err(e);
        }
        self.tries += 1;
        OriginStats::add(&self.stats.retries, 1);
        let jitter = Duration::from_millis(rand::random::<u64>() % 100);
        let wait = e
            .retry_after()
            .unwrap_or(self.next + jitter)
            .min(self.policy.max_backoff);
        tracing::warn!(url = %self.url, error = %e, attempt = self.tries, wait_ms = wait.as_millis() as u64, "origin request failed; retrying");
        tokio::time::sleep(wait).await;
        self.next = (self.next * 2).min(self.policy.max_backoff);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;
    use tokio::time::Instant;

    fn unavailable(retry_after: Option<u64>) -> OriginError {
        OriginError::Status {
            url: "u".into(),
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_honours_retry_after_and_gives_up() {
        let stats = OriginStats::default();
        let policy = RetryPolicy {
            retries: 3,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
        };
        let mut b = Backoff::new(policy, &stats, "u");
        let t0 = Instant::now();
        b.after(unavailable(None)).await.unwrap();
        let first = t0.elapsed();
        assert!(first >= Duration::from_secs(1) && first < Duration::from_millis(1100));
        b.after(unavailable(None)).await.unwrap();
        let second = t0.elapsed() - first;
        assert!(second >= Duration::from_secs(2) && second < Duration::from_millis(2100));
        // The origin's word, capped at max_backoff.
        let t1 = Instant::now();
        b.after(unavailable(Some(60))).await.unwrap();
        assert_eq!(t1.elapsed(), Duration::from_secs(10));
        assert!(
            b.after(unavailable(None)).await.is_err(),
            "3 retries, no more"
        );
        assert_eq!(stats.retries(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn final_errors_are_not_retried() {
        let stats = OriginStats::default();
        let mut b = Backoff::new(RetryPolicy::default(), &stats, "u");
        let t0 = Instant::now();
        let not_found = OriginError::Status {
            url: "u".into(),
            status: StatusCode::NOT_FOUND,
            retry_after: None,
        };
        assert!(b.after(not_found).await.is_err());
        assert_eq!(t0.elapsed(), Duration::ZERO);
        assert_eq!(stats.retries(), 0);
    }
}
