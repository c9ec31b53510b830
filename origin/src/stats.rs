//! Counters of what the fetcher asked of origins, shared with whoever
//! renders metrics (the engine's `/metrics`), so that this crate needs no
//! metrics format of its own.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct OriginStats {
    /// Attempts sent to origins (each retry is one more).
    pub requests: AtomicU64,
    /// Body bytes received into pieces.
    pub bytes: AtomicU64,
    /// Attempts that failed and were tried again.
    pub retries: AtomicU64,
}

impl OriginStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
}
