//! Scheduler metrics in Prometheus format.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use weightcast_proto::metrics_text::MetricsText;
use weightcast_scheduler_core::Stats;

/// A copy of the core's numbers, refreshed by the service after each event.
#[derive(Default)]
pub struct SchedulerMetrics {
    inner: Mutex<Snapshot>,
    /// Requests refused for a missing or wrong cluster token (counted by
    /// the gRPC interceptor, before any session exists).
    pub refused_unauthenticated: Arc<AtomicU64>,
}

#[derive(Default, Clone)]
pub struct Snapshot {
    pub hosts: u64,
    pub tasks: u64,
    pub upload_load: u64,
    pub messages: u64,
    /// Peer messages dropped at decoding (see [`crate::wire::Rejected`]).
    pub rejected_messages: u64,
    /// Peers disconnected because their outbound queue was full.
    pub slow_peers_disconnected: u64,
    /// Cache jobs (preheats, evictions) started, running now, and the
    /// per-peer results of those that ended.
    pub jobs_started: u64,
    pub jobs_active: u64,
    pub job_peer_successes: u64,
    pub job_peer_failures: u64,
    pub stats: Stats,
}

impl SchedulerMetrics {
    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        if let Ok(mut s) = self.inner.lock() {
            f(&mut s);
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        self.inner.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn render(&self) -> String {
        let s = self.snapshot();
        let mut m = MetricsText::default();
        m.gauge("weightcast_scheduler_hosts", "Connected peers.", s.hosts)
            .gauge(
                "weightcast_scheduler_tasks",
                "Tasks with at least one peer.",
                s.tasks,
            )
            .gauge(
                "weightcast_scheduler_upload_load",
                "Sum of active uploads reported by peers.",
                s.upload_load,
            )
            .counter(
                "weightcast_scheduler_messages_total",
                "Messages received from peers.",
                s.messages,
            )
            .counter(
                "weightcast_scheduler_rejected_messages_total",
                "Peer messages dropped before scheduling: a malformed task id or digest, a repeated hello, an unknown message.",
                s.rejected_messages,
            )
            .counter(
                "weightcast_scheduler_slow_peers_disconnected_total",
                "Peers disconnected because they did not read their scheduler messages fast enough (they reconnect and register again).",
                s.slow_peers_disconnected,
            )
            .counter(
                "weightcast_scheduler_cache_jobs_total",
                "Cache jobs (preheats and evictions) started.",
                s.jobs_started,
            )
            .gauge(
                "weightcast_scheduler_cache_jobs_active",
                "Cache jobs running now.",
                s.jobs_active,
            )
            .counter(
                "weightcast_scheduler_cache_job_peer_successes_total",
                "Per-peer, per-task results of finished cache jobs that succeeded.",
                s.job_peer_successes,
            )
            .counter(
                "weightcast_scheduler_cache_job_peer_failures_total",
                "Per-peer, per-task results of finished cache jobs that failed (or timed out).",
                s.job_peer_failures,
            )
            .counter(
                "weightcast_scheduler_seeds_triggered_total",
                "Tasks handed to a seed peer.",
                s.stats.seeds_triggered,
            )
            .counter(
                "weightcast_scheduler_back_to_source_total",
                "Peers told to fetch from the origin themselves.",
                s.stats.back_to_source,
            )
            .counter(
                "weightcast_scheduler_source_requests_total",
                "Stalled peers that asked to fetch from the origin.",
                s.stats.source_requests,
            )
            .counter(
                "weightcast_scheduler_source_grants_total",
                "Stalled peers granted back-to-source within the task's budget (--max-back-to-source).",
                s.stats.source_grants,
            )
            .counter(
                "weightcast_scheduler_source_refusals_total",
                "Requests for back-to-source refused because the task's budget was full.",
                s.stats.source_refusals,
            )
            .counter(
                "weightcast_scheduler_parents_assigned_total",
                "Candidate parents handed to children.",
                s.stats.parents_assigned,
            )
            .counter(
                "weightcast_scheduler_piece_failures_total",
                "Piece failures reported by children.",
                s.stats.piece_failures,
            )
            .counter(
                "weightcast_scheduler_digest_conflicts_total",
                "Piece digests that disagreed with the source's.",
                s.stats.digest_conflicts,
            )
            .counter(
                "weightcast_scheduler_refused_unauthenticated_total",
                "Requests refused for a missing or wrong cluster token (--cluster-secret-file).",
                self.refused_unauthenticated.load(Ordering::Relaxed),
            );
        m.finish()
    }
}
