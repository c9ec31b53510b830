//! Piece bytes between peers: RDMA when both ends have it, TCP otherwise,
//! chosen per parent and per piece ([`weightcast_rdma::select`]).
//!
//! An RDMA failure in `auto` mode retries the same piece over TCP at once,
//! into the same destination (the RDMA transport returns only after every
//! read it posted has completed or been flushed), logs once per parent, and
//! sends that parent's next pieces over TCP for a while
//! ([`RDMA_PENALTY`](weightcast_rdma::select::RDMA_PENALTY)).

use crate::metrics::EngineMetrics;
use crate::store::{Store, TaskFile};
use std::sync::Arc;
use std::time::Instant;
use weightcast_proto::frame::QpEndpoint;
use weightcast_proto::transport::{FetchReport, ParentAddr, PieceTransport, TransportError};
use weightcast_rdma::select::{self, FailureLog, Route};
use weightcast_rdma::{RdmaFetchError, RdmaNode, RdmaTransport, TransportMode};
use weightcast_tcp::{RdmaPieceLocation, RdmaResponder, TcpTransport};
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
    pub fn new(
        mode: TransportMode,
        node: Option<Arc<RdmaNode>>,
        metrics: Arc<EngineMetrics>,
    ) -> Self {
        Self {
            mode,
            tcp: TcpTransport::new(),
            rdma: node.map(RdmaTransport::new),
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

    /// Fetches piece `num` of `file` from the parent at `addr` into `dst`
    /// (the piece's slice of `file`'s mapping).
    pub async fn fetch(
        &self,
        addr: &ParentAddr,
        parent_rdma: bool,
        file: &Arc<TaskFile>,
        num: u32,
        dst: &mut [u8],
    ) -> Result<(FetchReport, Carrier), TransportError> {
        let task = file.id;
        let now = Instant::now();
        let failing = self.failures.failing(&addr.0, now);
        let route = select::route(self.mode, self.rdma.is_some(), parent_rdma, failing);
        let rdma = match (route, &self.rdma) {
            (Route::Rdma, Some(r)) => r,
            (Route::Refuse, _) | (Route::Rdma, None) => {
                return Err(TransportError::Io {
                    addr: addr.0.clone(),
                    source: std::io::Error::other(
                        "--transport rdma: this parent does not serve RDMA",
                    ),
                })
            }
            (Route::Tcp, _) => {
                return self.tcp_fetch(addr, task, num, dst).await;
            }
        };
        let outcome = match file.raw_mapping() {
            None => Err(RdmaFetchError::Rdma {
                addr: addr.0.clone(),
                source: weightcast_rdma::RdmaError::NotRegistered,
            }),
            Some((base, len)) => match local_region(rdma.node(), file, base as usize, len).await {
                Err(source) => Err(RdmaFetchError::Rdma {
                    addr: addr.0.clone(),
                    source,
                }),
                Ok(local) => rdma.fetch(addr, task, num, dst, &local).await,
            },
        };
        match outcome {
            Ok(r) => {
                self.metrics.inc(&self.metrics.rdma_bytes, r.bytes);
                Ok((r, Carrier::Rdma))
            }
            Err(RdmaFetchError::Parent(e)) => Err(e),
            Err(RdmaFetchError::Rdma { addr: a, source }) => {
                self.metrics.inc(&self.metrics.rdma_failures, 1);
                let first = self.failures.record(&addr.0, now);
                if !select::retry_over_tcp(self.mode) {
                    return Err(TransportError::Io {
                        addr: a,
                        source: std::io::Error::other(source),
                    });
                }
                if first {
                    tracing::warn!(parent = %addr.0, error = %source, "RDMA with this parent failed; its pieces go over TCP for now (logged once per parent)");
                } else {
                    tracing::debug!(parent = %addr.0, error = %source, "RDMA failed again; retrying the piece over TCP");
                }
                self.metrics.inc(&self.metrics.rdma_fallbacks, 1);
                self.tcp_fetch(addr, task, num, dst).await
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

/// The task's registered region. Registering pins the whole file, which
/// takes time in proportion to its size: the first time, it runs on the
/// blocking pool, not on an async worker.
async fn local_region(
    node: &Arc<RdmaNode>,
    file: &Arc<TaskFile>,
    base: usize,
    len: usize,
) -> Result<
    Arc<weightcast_rdma::mr::Registered<weightcast_rdma::mr::MemoryRegion>>,
    weightcast_rdma::RdmaError,
> {
    if let Some(r) = node.registered(&file.id) {
        if r.base == base && r.len == len {
            return Ok(r);
        }
    }
    let (node, file) = (node.clone(), file.clone());
    tokio::task::spawn_blocking(move || node.region(file.id, base as *mut u8, len, file.clone()))
        .await
        .unwrap_or(Err(weightcast_rdma::RdmaError::Broken))
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
    ) -> Result<(QpEndpoint, Box<dyn std::any::Any + Send>), String> {
        let (ep, qp) = self.node.accept(child).map_err(|e| e.to_string())?;
        Ok((ep, Box::new(qp)))
    }

    fn expose(&self, task: &TaskId, num: u32) -> Result<Option<RdmaPieceLocation>, String> {
        let Some(file) = self.store.get(task) else {
            return Ok(None);
        };
        // Only a verified piece is ever exposed.
        if file.verified(num).is_none() {
            return Ok(None);
        }
        let (Some((base, len)), Some(range)) = (file.raw_mapping(), file.layout.range(num)) else {
            return Ok(None);
        };
        let region = self
            .node
            .region(*task, base, len, file.clone())
            .map_err(|e| e.to_string())?;
        Ok(Some(RdmaPieceLocation {
            addr: region.base as u64 + range.start,
            rkey: region.region.rkey,
            length: range.end - range.start,
        }))
    }
}
