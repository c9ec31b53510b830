//! Which transport carries a piece, and what an RDMA failure leads to.
//!
//! Plain functions of plain facts, so every case is tested without a device.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `--transport` on `daemon` and `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportMode {
    /// RDMA where both ends have it and the handshake works, TCP otherwise.
    #[default]
    Auto,
    /// Piece data between peers over RDMA only: no device is a start-up
    /// error, a parent without RDMA is not used, and a failed read fails.
    Rdma,
    /// TCP only: RDMA is not even loaded.
    Tcp,
}

impl std::str::FromStr for TransportMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "rdma" => Ok(Self::Rdma),
            "tcp" => Ok(Self::Tcp),
            other => Err(format!(
                "unknown transport {other:?}: expected auto, rdma or tcp"
            )),
        }
    }
}

impl std::fmt::Display for TransportMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Rdma => "rdma",
            Self::Tcp => "tcp",
        })
    }
}

/// How one piece is fetched from one parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Rdma,
    Tcp,
    /// `--transport rdma` and this parent cannot do it.
    Refuse,
}

/// The route for a piece from a parent. `local_rdma`: this process opened a
/// device. `parent_rdma`: the parent advertised RDMA. `parent_failing`: RDMA
/// with this parent failed a moment ago (auto mode then uses TCP for a while
/// instead of failing every piece first).
pub fn route(
    mode: TransportMode,
    local_rdma: bool,
    parent_rdma: bool,
    parent_failing: bool,
) -> Route {
    match mode {
        TransportMode::Tcp => Route::Tcp,
        TransportMode::Auto if local_rdma && parent_rdma && !parent_failing => Route::Rdma,
        TransportMode::Auto => Route::Tcp,
        TransportMode::Rdma if local_rdma && parent_rdma => Route::Rdma,
        TransportMode::Rdma => Route::Refuse,
    }
}

/// After an RDMA failure (not a parent's answer like "not found"): retry the
/// piece over TCP? Only in auto mode.
pub fn retry_over_tcp(mode: TransportMode) -> bool {
    mode == TransportMode::Auto
}

/// How long auto mode sends a parent's pieces over TCP after RDMA with it
/// failed: long enough not to fail every piece twice, short enough that a
/// rebuilt QP is tried again soon.
pub const RDMA_PENALTY: Duration = Duration::from_secs(30);

/// Per-parent RDMA failure memory: when RDMA with a parent failed, and
/// whether that was already logged (once per parent, not per piece).
#[derive(Default)]
pub struct FailureLog {
    parents: Mutex<HashMap<String, (Instant, bool)>>,
}

impl FailureLog {
    /// Records a failure at `now`; `true` the first time for this parent,
    /// when the caller should log it.
    pub fn record(&self, parent: &str, now: Instant) -> bool {
        let mut p = self.parents.lock().unwrap_or_else(|e| e.into_inner());
        match p.get_mut(parent) {
            Some(e) => {
                e.0 = now;
                false
            }
            None => {
                p.insert(parent.to_string(), (now, true));
                true
            }
        }
    }

    /// RDMA with `parent` failed within [`RDMA_PENALTY`] of `now`.
    pub fn failing(&self, parent: &str, now: Instant) -> bool {
        let p = self.parents.lock().unwrap_or_else(|e| e.into_inner());
        p.get(parent)
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) < RDMA_PENALTY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TransportMode::{Auto, Rdma as RdmaOnly, Tcp as TcpOnly};

    #[test]
    fn the_route_follows_the_mode_and_both_ends() {
        // (mode, local, parent, failing) -> route
        let table = [
            (Auto, true, true, false, Route::Rdma),
            (Auto, true, false, false, Route::Tcp),
            (Auto, false, true, false, Route::Tcp),
            (Auto, false, false, false, Route::Tcp),
            (Auto, true, true, true, Route::Tcp),
            (TcpOnly, true, true, false, Route::Tcp),
            (TcpOnly, false, false, false, Route::Tcp),
            (RdmaOnly, true, true, false, Route::Rdma),
            (RdmaOnly, true, true, true, Route::Rdma),
            (RdmaOnly, true, false, false, Route::Refuse),
            (RdmaOnly, false, true, false, Route::Refuse),
        ];
        for (mode, local, parent, failing, want) in table {
            assert_eq!(
                route(mode, local, parent, failing),
                want,
                "{mode} local={local} parent={parent} failing={failing}"
            );
        }
        assert!(retry_over_tcp(Auto));
        assert!(!retry_over_tcp(RdmaOnly));
        assert!(!retry_over_tcp(TcpOnly));
    }

    #[test]
    fn modes_parse_and_print() {
        for m in [Auto, RdmaOnly, TcpOnly] {
            assert_eq!(m.to_string().parse::<TransportMode>().unwrap(), m);
        }
        assert!("ib".parse::<TransportMode>().is_err());
    }

    #[test]
    fn a_failure_is_logged_once_per_parent_and_expires() {
        let log = FailureLog::default();
        let t0 = Instant::now();
        assert!(!log.failing("a", t0));
        assert!(log.record("a", t0), "first failure: log it");
        assert!(!log.record("a", t0), "second: quiet");
        assert!(log.record("b", t0), "another parent: log it");
        assert!(log.failing("a", t0 + Duration::from_secs(1)));
        assert!(!log.failing("a", t0 + RDMA_PENALTY + Duration::from_secs(1)));
        assert!(
            !log.record("a", t0 + RDMA_PENALTY * 2),
            "logged once per parent, even later"
        );
        assert!(log.failing("a", t0 + RDMA_PENALTY * 2));
    }
}
