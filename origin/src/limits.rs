//! Per-origin limits: how many requests are in flight to one origin at
//! once, and how many bytes per second it sends. They are shared by every
//! task of a process and kept by [`OriginKey`], so a seed peer cannot flood
//! a hub or a registry however many tasks it runs, and one slow origin
//! holds up no other.

use crate::origin_key::OriginKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// The limits of every origin, created on first use.
pub struct OriginLimits {
    concurrency: usize,
    rate: Option<u64>,
    by_origin: Mutex<HashMap<OriginKey, Arc<OriginLimit>>>,
}

impl OriginLimits {
    /// `concurrency` requests at once and `rate` bytes per second (none:
    /// no cap) towards each origin.
    pub fn new(concurrency: usize, rate: Option<u64>) -> Self {
        Self {
            concurrency: concurrency.max(1),
            rate,
            by_origin: Mutex::new(HashMap::new()),
        }
    }

    /// Every origin's budget share in force now (`scheme://host:port`,
    /// bytes per second).
    pub fn budgets(&self) -> Vec<(String, u64)> {
        let all = self.by_origin.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<(String, u64)> = all
            .iter()
            .filter_map(|(k, l)| Some((k.as_str().to_string(), l.budget()?)))
            .collect();
        v.sort();
        v
    }

    pub fn of(&self, origin: &OriginKey) -> Arc<OriginLimit> {
        let mut all = self.by_origin.lock().unwrap_or_else(|p| p.into_inner());
        all.entry(origin.clone())
            .or_insert_with(|| {
                Arc::new(OriginLimit {
                    slots: Semaphore::new(self.concurrency),
                    rate: self.rate.map(RateLimit::new),
                    budget: Mutex::new(None),
                })
            })
            .clone()
    }
}

/// One origin's limits.
pub struct OriginLimit {
    slots: Semaphore,
    /// This process's own cap (`--origin-rate-limit` of the daemon).
    rate: Option<RateLimit>,
    /// This peer's share of the cluster's budget for the origin, when the
    /// scheduler sets one (`scheduler --origin-rate-limit`).
    budget: Mutex<Option<Arc<RateLimit>>>,
}

impl OriginLimit {
    /// A request slot, held for one attempt.
    pub async fn slot(&self) -> Option<SemaphorePermit<'_>> {
        // The semaphore is never closed: `None` cannot happen in practice.
        self.slots.acquire().await.ok()
    }

    /// Waits until `bytes` more may arrive under both the process's own cap
    /// and the cluster budget's share.
    pub async fn pace(&self, bytes: usize) {
        if let Some(r) = &self.rate {
            r.take(bytes).await;
        }
        let budget = self
            .budget
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(b) = budget {
            b.take(bytes).await;
        }
    }

    /// Sets (or, with `None`, lifts) this peer's share of the cluster budget.
    pub fn set_budget(&self, bytes_per_second: Option<u64>) {
        *self.budget.lock().unwrap_or_else(|p| p.into_inner()) =
            bytes_per_second.map(|b| Arc::new(RateLimit::new(b)));
    }

    /// The share of the cluster budget in force, bytes per second.
    pub fn budget(&self) -> Option<u64> {
        self.budget
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|r| r.rate as u64)
    }
}

/// A token bucket that lets a chunk go into debt and makes the next wait:
/// chunks arrive in whatever sizes the network gives, so the bucket holds
/// one second of bytes and a chunk larger than what is left is let through.
pub struct RateLimit {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    pub fn new(bytes_per_second: u64) -> Self {
        let rate = bytes_per_second.max(1) as f64;
        Self {
            rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    /// Takes `bytes` from the bucket, waiting while it is in debt.
    pub async fn take(&self, bytes: usize) {
        let wait = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let refill = now.duration_since(s.1).as_secs_f64() * self.rate;
            s.0 = (s.0 + refill).min(self.rate);
            s.1 = now;
            s.0 -= bytes as f64;
            (s.0 < 0.0).then(|| Duration::from_secs_f64(-s.0 / self.rate))
        };
        if let Some(w) = wait {
            tokio::time::sleep(w).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rate_limit_spaces_out_bytes() {
        let r = RateLimit::new(1000);
        let t0 = Instant::now();
        r.take(1000).await; // the initial burst
        assert!(t0.elapsed() < Duration::from_millis(1));
        r.take(2000).await; // 2 s of debt
        assert!(
            t0.elapsed() >= Duration::from_millis(1900),
            "{:?}",
            t0.elapsed()
        );
    }

    #[tokio::test]
    async fn limits_are_per_origin() {
        let limits = OriginLimits::new(1, None);
        let a = OriginKey::of(&reqwest::Url::parse("https://a.example/").unwrap());
        let b = OriginKey::of(&reqwest::Url::parse("https://b.example/").unwrap());
        let la = limits.of(&a);
        let held = la.slot().await;
        assert!(held.is_some());
        assert!(la.slots.try_acquire().is_err(), "a's one slot is taken");
        assert!(limits.of(&a).slots.try_acquire().is_err(), "the same limit");
        assert!(
            limits.of(&b).slots.try_acquire().is_ok(),
            "b is not held up"
        );
    }
}
