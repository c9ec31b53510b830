//! Engine metrics in Prometheus format.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use weightcast_origin::OriginStats;
use weightcast_proto::metrics_text::MetricsText;
use weightcast_tcp::UploadStats;

#[derive(Default)]
pub struct EngineMetrics {
    /// What the origin fetcher asked of origins.
    pub origin: Arc<OriginStats>,
    pub peer_bytes: AtomicU64,
    /// Peer piece bytes by transport (the two sum to `peer_bytes`, give or
    /// take pieces that arrived but failed their digest).
    pub rdma_bytes: AtomicU64,
    pub tcp_bytes: AtomicU64,
    /// RDMA reads that failed (any cause but the parent's answer).
    pub rdma_failures: AtomicU64,
    /// Pieces retried over TCP after an RDMA failure.
    pub rdma_fallbacks: AtomicU64,
    /// 1 when this peer opened an RDMA device.
    pub rdma_enabled: AtomicU64,
    pub pieces_from_peers: AtomicU64,
    pub pieces_from_origin: AtomicU64,
    pub piece_failures: AtomicU64,
    pub digest_mismatches: AtomicU64,
    pub tasks_completed: AtomicU64,
    pub tasks_failed: AtomicU64,
    pub tasks_active: AtomicU64,
    pub uploads: Arc<UploadStats>,
}

impl EngineMetrics {
    pub fn inc(&self, c: &AtomicU64, by: u64) {
        c.fetch_add(by, Ordering::Relaxed);
    }

    pub fn dec(&self, c: &AtomicU64) {
        c.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let u = &self.uploads;
        let mut m = MetricsText::default();
        m.sample(
            "weightcast_download_bytes_total",
            "counter",
            "Piece bytes downloaded, by source.",
            &[("source", "peer")],
            g(&self.peer_bytes) as f64,
        )
        .sample(
            "weightcast_download_bytes_total",
            "counter",
            "Piece bytes downloaded, by source.",
            &[("source", "origin")],
            self.origin.bytes() as f64,
        )
        .sample(
            "weightcast_peer_bytes_total",
            "counter",
            "Piece bytes received from peers, by transport.",
            &[("transport", "rdma")],
            g(&self.rdma_bytes) as f64,
        )
        .sample(
            "weightcast_peer_bytes_total",
            "counter",
            "Piece bytes received from peers, by transport.",
            &[("transport", "tcp")],
            g(&self.tcp_bytes) as f64,
        )
        .counter(
            "weightcast_rdma_failures_total",
            "RDMA piece reads that failed (QP, completion or control errors).",
            g(&self.rdma_failures),
        )
        .counter(
            "weightcast_rdma_fallbacks_total",
            "Pieces retried over TCP after an RDMA failure.",
            g(&self.rdma_fallbacks),
        )
        .gauge(
            "weightcast_rdma_enabled",
            "1 when this peer moves pieces over RDMA.",
            g(&self.rdma_enabled),
        )
        .sample(
            "weightcast_pieces_total",
            "counter",
            "Verified pieces downloaded, by source.",
            &[("source", "peer")],
            g(&self.pieces_from_peers) as f64,
        )
        .sample(
            "weightcast_pieces_total",
            "counter",
            "Verified pieces downloaded, by source.",
            &[("source", "origin")],
            g(&self.pieces_from_origin) as f64,
        )
        .counter(
            "weightcast_piece_failures_total",
            "Piece fetches that failed (any source).",
            g(&self.piece_failures),
        )
        .counter(
            "weightcast_digest_mismatches_total",
            "Pieces dropped because their digest did not match.",
            g(&self.digest_mismatches),
        )
        .counter(
            "weightcast_origin_requests_total",
            "HTTP requests sent to origins.",
            self.origin.requests(),
        )
        .counter(
            "weightcast_origin_retries_total",
            "Origin requests retried.",
            self.origin.retries(),
        )
        .counter(
            "weightcast_tasks_completed_total",
            "Tasks downloaded and verified.",
            g(&self.tasks_completed),
        )
        .counter(
            "weightcast_tasks_failed_total",
            "Tasks that failed.",
            g(&self.tasks_failed),
        )
        .gauge(
            "weightcast_tasks_active",
            "Tasks downloading now.",
            g(&self.tasks_active),
        )
        .counter(
            "weightcast_upload_bytes_total",
            "Piece bytes uploaded to peers.",
            u.bytes.load(Ordering::Relaxed),
        )
        .sample(
            "weightcast_upload_transport_bytes_total",
            "counter",
            "Piece bytes uploaded to peers, by transport.",
            &[("transport", "rdma")],
            u.rdma_bytes.load(Ordering::Relaxed) as f64,
        )
        .sample(
            "weightcast_upload_transport_bytes_total",
            "counter",
            "Piece bytes uploaded to peers, by transport.",
            &[("transport", "tcp")],
            u.bytes
                .load(Ordering::Relaxed)
                .saturating_sub(u.rdma_bytes.load(Ordering::Relaxed)) as f64,
        )
        .counter(
            "weightcast_rdma_queue_pairs_accepted_total",
            "RDMA queue pairs connected for children.",
            u.rdma_connects.load(Ordering::Relaxed),
        )
        .counter(
            "weightcast_upload_pieces_total",
            "Pieces uploaded to peers.",
            u.pieces.load(Ordering::Relaxed),
        )
        .counter(
            "weightcast_upload_refused_elsewhere_total",
            "Piece requests a seed answered with: take it from the peers, it sent it moments ago.",
            u.refused_elsewhere.load(Ordering::Relaxed),
        )
        .counter(
            "weightcast_upload_refused_busy_total",
            "Piece requests refused at the upload limit.",
            u.refused_busy.load(Ordering::Relaxed),
        )
        .counter(
            "weightcast_upload_refused_unauthenticated_total",
            "Piece connections closed because the child did not prove the cluster secret.",
            u.refused_unauthenticated.load(Ordering::Relaxed),
        )
        .gauge(
            "weightcast_upload_active",
            "Uploads in flight (upload load).",
            u.active.load(Ordering::Relaxed) as u64,
        );
        m.finish()
    }
}
