//! Piece bytes between peers: RDMA when both ends have it, TCP otherwise,
//! chosen per parent and per piece ([`weightcast_rdma::select`]).
//!
//! An RDMA failure in `auto` mode retries the same piece over TCP at once,
//! into the same destination (the RDMA transport returns only after every
//! read it posted has completed or been flushed), logs once per parent, and
//! sends that parent's next pieces over TCP for a while
//! ([`RDMA_PENALTY`](weightcast_rdma::select::RDMA_PENALTY)).

use crate::metrics::EngineMetrics;
use std::sync::Arc;
use std::time::Instant;
use weightcast_proto::cluster_auth::ClusterSecrets;
use weightcast_proto::frame::QpEndpoint;
use weightcast_proto::transport::{FetchReport, ParentAddr, PieceTransport, TransportError};
use weightcast_rdma::select::{self, FailureLog, Route};
use weightcast_rdma::{RdmaFetchError, RdmaNode, RdmaTransport, TransportMode};
use weightcast_store::{PieceWrite, Store};
use weightcast_tcp::{RdmaPieceLocation, RdmaResponder, RdmaSetupError, TcpTransport};
use weightcast_types::TaskId;

/// Which transport carried a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    Rdma,
    Tcp,
}

pub struct PeerTransport {
    pub mode: TransportMode,
    tcp: TcpTransport,
    rdma: Option<RdmaTransport>,
    failures: FailureLog,
    metrics: Arc<EngineMetrics>,
}

impl PeerTransport {
    /// `secrets`: proved to every parent, over either transport.
    pub fn new(
        mode: TransportMode,
        node: Option<Arc<RdmaNode>>,
        secrets: Option<Arc<ClusterSecrets>>,
        metrics: Arc<EngineMetrics>,
    ) -> Self {
        Self {
            mode,
            tcp: TcpTransport::with_cluster_secrets(secrets.clone()),
            rdma: node.map(|n| RdmaTransport::with_cluster_secrets(n, secrets)),
            failures: FailureLog::default(),
            metrics,
        }
    }

    pub fn rdma_node(&self) -> Option<&Arc<RdmaNode>> {
        self.rdma.as_ref().map(|r| r.node())
    }

    /// Whether this peer takes pieces from a parent that does not serve RDMA.
    pub fn accepts_parent(&self, parent_rdma: bool) -> bool {
        select::route(self.mode, self.rdma.is_some(), parent_rdma, false) != Route::Refuse
    }

    /// Fetches the piece `write` claims from the parent at `addr` into its
    /// slice of the task file. The write
    /// comes back with the result, for the caller to commit or drop; RDMA
    /// owns it while reads are in flight, so dropping this future never
    /// releases the piece under a NIC that still writes into it.
    pub async fn fetch(
        &self,
        addr: &ParentAddr,
        parent_rdma: bool,
        mut write: PieceWrite,
    ) -> (Result<(FetchReport, Carrier), TransportError>, PieceWrite) {
        let (task, num) = (write.task(), write.num());
        let now = Instant::now();
        let failing = self.failures.failing(&addr.0, now);
        let route = select::route(self.mode, self.rdma.is_some(), parent_rdma, failing);
        let rdma = match (route, &self.rdma) {
            (Route::Rdma, Some(r)) => r,
            (Route::Refuse, _) | (Route::Rdma, None) => {
                let e = TransportError::Io {
                    addr: addr.0.clone(),
                    source: std::io::Error::other(
                        "--transport rdma: this parent does not serve RDMA",
                    ),
                };
                return (Err(e), write);
            }
            (Route::Tcp, _) => {
                let r = self.tcp_fetch(addr, task, num, write.buf()).await;
                return (r, write);
            }
        };
        let (outcome, mut write) = rdma.fetch(addr, task, num, write).await;
        match outcome {
            Ok(r) => {
                self.metrics.inc(&self.metrics.rdma_bytes, r.bytes);
                (Ok((r, Carrier::Rdma)), write)
            }
            Err(RdmaFetchError::Parent(e)) => (Err(e), write),
            Err(RdmaFetchError::Rdma { addr: a, source }) => {
                self.metrics.inc(&self.metrics.rdma_failures, 1);
                let first = self.failures.record(&addr.0, now);
                if !select::retry_over_tcp(self.mode) {
                    let e = TransportError::Io {
                        addr: a,
                        source: std::io::Error::other(source),
                    };
                    return (Err(e), write);
                }
                if first {
                    tracing::warn!(parent = %addr.0, error = %source, "RDMA with this parent failed; its pieces go over TCP for now (logged once per parent)");
                } else {
                    tracing::debug!(parent = %addr.0, error = %source, "RDMA failed again; retrying the piece over TCP");
                }
                self.metrics.inc(&self.metrics.rdma_fallbacks, 1);
                // Every RDMA read of the piece is over: the write came back.
                let r = self.tcp_fetch(addr, task, num, write.buf()).await;
                (r, write)
            }
        }
    }

    async fn tcp_fetch(
        &self,
        addr: &ParentAddr,
        task: TaskId,
        num: u32,
        dst: &mut [u8],
    ) -> Result<(FetchReport, Carrier), TransportError> {
        let r = self.tcp.fetch_piece(addr, task, num, dst).await?;
        self.metrics.inc(&self.metrics.tcp_bytes, r.bytes);
        Ok((r, Carrier::Tcp))
    }
}

/// The parent side of RDMA for the upload server: QPs from the device,
/// piece locations from the store's verified pieces.
pub struct StoreRdma {
    pub node: Arc<RdmaNode>,
    pub store: Arc<Store>,
}

impl RdmaResponder for StoreRdma {
    fn accept(
        &self,
        child: &QpEndpoint,
    ) -> Result<(QpEndpoint, Box<dyn std::any::Any + Send>), RdmaSetupError> {
        let (ep, qp) = self.node.accept(child)?;
        Ok((ep, Box::new(qp)))
    }

    fn expose(&self, task: &TaskId, num: u32) -> Result<Option<RdmaPieceLocation>, RdmaSetupError> {
        let Some(file) = self.store.get(task) else {
            return Ok(None);
        };
        // Only a verified piece is ever exposed.
        let Some(piece) = file.verified_piece(num) else {
            return Ok(None);
        };
        let loc = self
            .node
            .piece_location(*task, piece.file(), piece.range())?;
        Ok(Some(RdmaPieceLocation {
            addr: loc.addr,
            rkey: loc.rkey,
            length: loc.length,
        }))
    }
}
