//! The child side: one RC queue pair per parent, set up and driven over the
//! parent's piece connection, reused for every piece of every task.
//!
//! A piece is one `RdmaPiece` request on the control connection, answered by
//! where the verified piece lies in the parent's registered memory; then the
//! child posts RDMA READs of at most `wr_size` bytes, at most `outstanding`
//! in flight on the QP (shared by every piece on it), and waits until every
//! one of them completed ([`reads`](crate::reads)). Completions are polled
//! from a tokio task woken by the completion channel's fd (`AsyncFd`): no
//! thread blocks. A failed work request, a control error or a timeout breaks
//! the connection: its QP goes to the error state (flushing what is in
//! flight, so no late DMA lands in a destination that is handed back), and
//! the next piece builds a new one.
//!
//! The destination is an owned [`WritePermit`]: a file and a byte range,
//! which this crate maps and registers itself. It comes back with the
//! result, once no DMA can land in it; a fetch dropped mid-read leaves it
//! with the read until the flushes are in.

use crate::mr::{MemoryRegion, Registered};
use crate::qp::QueuePair;
use crate::reads::{Completion, Reads, Remote};
use crate::split::wr_size;
use crate::{ffi, RdmaError, RdmaNode};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use weightcast_proto::cluster_auth::ClusterSecrets;
use weightcast_proto::frame::{
    ClientFrame, PieceRequest, RdmaAccept, RdmaGrant, Status, RDMA_ACCEPT_LEN, RDMA_GRANT_LEN,
};
use weightcast_proto::transport::{unauthenticated, FetchReport, ParentAddr, TransportError};
use weightcast_types::{TaskId, WritePermit};

/// Why an RDMA fetch failed: the parent's answer (handled like TCP's), or
/// RDMA itself (the caller may retry over TCP).
#[derive(Debug, thiserror::Error)]
pub enum RdmaFetchError {
    #[error(transparent)]
    Parent(TransportError),
    #[error("parent {addr}: {source}")]
    Rdma {
        addr: String,
        #[source]
        source: RdmaError,
    },
}

/// The reads of one connection's QP.
type Shared = Reads<QueuePair>;

/// A polled work completion, as the reads see it.
fn completion(wc: &ffi::ibv_wc) -> Completion {
    if wc.status == ffi::IBV_WC_SUCCESS {
        return Completion::Success;
    }
    if wc.status == ffi::IBV_WC_WR_FLUSH_ERR {
        return Completion::Flushed;
    }
    let status = match ffi::Verbs::get() {
        Ok(v) => v.status_str(wc.status),
        Err(_) => format!("status {}", wc.status),
    };
    Completion::Failed(RdmaError::Completion {
        status,
        vendor_err: wc.vendor_err,
    })
}

/// Breaks the connection when dropped armed: a control exchange cut in the
/// middle (its future dropped) would leave the stream out of step, and the
/// next request would read this one's answer.
struct CutGuard<'a>(Option<&'a Shared>);

impl CutGuard<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CutGuard<'_> {
    fn drop(&mut self) {
        if let Some(shared) = self.0 {
            shared.break_qp();
        }
    }
}

/// The completion channel's fd, for tokio. It holds the QP (which owns the
/// channel), so the fd stays open until tokio has deregistered it.
struct ChannelFd(std::os::fd::RawFd, #[allow(dead_code)] Arc<Shared>);
impl std::os::fd::AsRawFd for ChannelFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

/// Drains completions whenever the channel fires, until the connection goes.
async fn poll_completions(shared: Arc<Shared>, fd: AsyncFd<ChannelFd>) {
    let mut wcs = [ffi::ibv_wc {
        wr_id: 0,
        status: 0,
        opcode: 0,
        vendor_err: 0,
        byte_len: 0,
        imm_data: 0,
        qp_num: 0,
        src_qp: 0,
        wc_flags: 0,
        pkey_index: 0,
        slid: 0,
        sl: 0,
        dlid_path_bits: 0,
    }; 32];
    loop {
        // Arm first, then drain: a completion between the two still fires.
        if let Err(e) = shared.queue.req_notify() {
            tracing::warn!(error = %e, "RDMA completion queue failed");
            shared.break_qp();
            return;
        }
        loop {
            match shared.queue.poll(&mut wcs) {
                Ok(0) => break,
                Ok(n) => wcs[..n]
                    .iter()
                    .for_each(|wc| shared.dispatch(wc.wr_id, completion(wc))),
                Err(e) => {
                    tracing::warn!(error = %e, "RDMA completion queue failed");
                    shared.break_qp();
                    return;
                }
            }
        }
        loop {
            let Ok(mut guard) = fd.readable().await else {
                return;
            };
            match shared.queue.take_event() {
                Ok(true) => break,
                Ok(false) => guard.clear_ready(),
                Err(e) => {
                    tracing::warn!(error = %e, "RDMA completion channel failed");
                    shared.break_qp();
                    return;
                }
            }
        }
    }
}

/// A connection to one parent: the control stream and the QP.
struct Conn {
    shared: Arc<Shared>,
    control: tokio::sync::Mutex<TcpStream>,
    poller: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

/// The connection to one parent; the async lock makes concurrent first
/// pieces wait for one handshake instead of racing.
type ConnSlot = Arc<tokio::sync::Mutex<Option<Arc<Conn>>>>;

/// RDMA piece transport (child side).
pub struct RdmaTransport {
    node: Arc<RdmaNode>,
    conns: Mutex<HashMap<ParentAddr, ConnSlot>>,
    /// QPs built so far (a rebuilt one counts again).
    pub connects: AtomicU64,
    /// With secrets, the control connection answers the parent's
    /// challenge before the queue pair is set up: the parent's upload
    /// server checks RDMA children as it checks TCP ones.
    secrets: Option<Arc<ClusterSecrets>>,
}

impl RdmaTransport {
    pub fn new(node: Arc<RdmaNode>) -> Self {
        Self::with_cluster_secrets(node, None)
    }

    /// [`RdmaTransport::new`], proving `secrets` to every parent.
    pub fn with_cluster_secrets(node: Arc<RdmaNode>, secrets: Option<Arc<ClusterSecrets>>) -> Self {
        Self {
            node,
            conns: Mutex::new(HashMap::new()),
            connects: AtomicU64::new(0),
            secrets,
        }
    }

    pub fn node(&self) -> &Arc<RdmaNode> {
        &self.node
    }

    async fn connect(&self, addr: &ParentAddr) -> Result<Conn, RdmaError> {
        let cfg = self.node.config;
        let io = RdmaError::Control;
        let mut s = timeout(cfg.control_timeout, TcpStream::connect(&addr.0))
            .await
            .map_err(|_| io(std::io::ErrorKind::TimedOut.into()))?
            .map_err(io)?;
        let _ = s.set_nodelay(true);
        if let Some(secrets) = &self.secrets {
            weightcast_tcp::answer_challenge(&mut s, addr, secrets, cfg.control_timeout)
                .await
                .map_err(|e| io(std::io::Error::other(e)))?;
        }
        let lim = self.node.device.limits;
        let outstanding = cfg
            .outstanding
            .clamp(1, lim.max_qp_init_rd_atom.min(255))
            .min(lim.max_qp_wr);
        let qp = QueuePair::new(&self.node.device, outstanding, outstanding as u8, true)?;
        let mut frame = Vec::with_capacity(64);
        ClientFrame::RdmaConnect(qp.local).encode(&mut frame);
        s.write_all(&frame).await.map_err(io)?;
        let mut b = [0u8; RDMA_ACCEPT_LEN];
        timeout(cfg.control_timeout, s.read_exact(&mut b))
            .await
            .map_err(|_| io(std::io::ErrorKind::TimedOut.into()))?
            .map_err(io)?;
        let accept = RdmaAccept::decode(&b).map_err(|e| {
            match weightcast_tcp::challenge_without_secret(addr, &e) {
                Some(refused) => io(std::io::Error::other(refused)),
                None => e.into(),
            }
        })?;
        match accept.status {
            Status::Ok => {}
            Status::Unsupported => return Err(RdmaError::Refused),
            _ => return Err(RdmaError::ParentSetup),
        }
        qp.connect(&accept.endpoint, 0)?;
        let in_flight = accept.endpoint.max_rd_atomic.clamp(1, outstanding as u8) as usize;
        let fd = qp.channel_fd().ok_or(RdmaError::Broken)?;
        let shared = Arc::new(Shared::new(qp, in_flight));
        // SAFETY: the fd belongs to the channel that `ChannelFd` keeps alive
        // (through `shared`) for as long as the AsyncFd exists.
        let afd = unsafe {
            AsyncFd::register_with_interest(
                ChannelFd(fd, shared.clone()),
                tokio::io::Interest::READABLE,
            )
        }
        .map_err(|e| RdmaError::Control(e.into_parts().1))?;
        let poller = tokio::spawn(poll_completions(shared.clone(), afd));
        self.connects.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(parent = %addr.0, qpn = shared.queue.local.qp_num, remote_qpn = accept.endpoint.qp_num, in_flight, "RDMA queue pair connected");
        Ok(Conn {
            shared,
            control: tokio::sync::Mutex::new(s),
            poller,
        })
    }

    /// The live connection to `addr`, building one if there is none or the
    /// last one broke.
    async fn conn(&self, addr: &ParentAddr) -> Result<Arc<Conn>, RdmaError> {
        let slot = self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(addr.clone())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.shared.is_broken() {
                return Ok(c.clone());
            }
        }
        *slot = None;
        let c = Arc::new(self.connect(addr).await?);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Fetches piece `piece` of `task` from `parent` into the permit's range
    /// of its file (registering the file on first use). The permit comes
    /// back with the result, once no read can land in it any more; if this
    /// future is dropped mid-read, the read keeps it until then.
    pub async fn fetch<W: WritePermit>(
        &self,
        parent: &ParentAddr,
        task: TaskId,
        piece: u32,
        permit: W,
    ) -> (Result<FetchReport, RdmaFetchError>, W) {
        let rdma = |source| RdmaFetchError::Rdma {
            addr: parent.0.clone(),
            source,
        };
        let local = match self.node.region_off_runtime(task, permit.file()).await {
            Ok(r) => r,
            Err(e) => return (Err(rdma(e)), permit),
        };
        let range = permit.range();
        let want = range.end - range.start;
        if local.addr_of(&range).is_none() {
            return (Err(rdma(RdmaError::NotRegistered)), permit);
        }
        let conn = match self.conn(parent).await {
            Ok(c) => c,
            Err(e) => return (Err(rdma(e)), permit),
        };
        let req = PieceRequest { task, piece };
        let grant = match self.ask(&conn, req).await {
            Ok(g) => g,
            Err(e) => {
                conn.shared.break_qp();
                return (Err(rdma(e)), permit);
            }
        };
        let refused = |e| (Err(RdmaFetchError::Parent(e)), ());
        let answer = match grant.status {
            Status::Ok => None,
            Status::NotFound => Some(refused(TransportError::NotFound(parent.0.clone()))),
            Status::Busy => Some(refused(TransportError::Busy(parent.0.clone()))),
            Status::Elsewhere => Some(refused(TransportError::Elsewhere {
                addr: parent.0.clone(),
                retry_in: std::time::Duration::from_millis(grant.length),
            })),
            Status::Failed => Some(refused(TransportError::ParentFailed(parent.0.clone()))),
            Status::Unsupported => Some((Err(rdma(RdmaError::Refused)), ())),
            Status::Unauthenticated => Some(refused(TransportError::Unauthenticated {
                addr: parent.0.clone(),
                reason: unauthenticated::WRONG_SECRET,
            })),
        };
        if let Some((e, ())) = answer {
            return (e, permit);
        }
        if grant.length != want {
            self.done(&conn, req, false).await;
            let e = TransportError::LengthMismatch {
                addr: parent.0.clone(),
                got: grant.length,
                want,
            };
            return (Err(RdmaFetchError::Parent(e)), permit);
        }
        let (r, permit) = self.read(&conn, local, permit, &grant).await;
        self.done(&conn, req, r.is_ok()).await;
        let report = FetchReport {
            bytes: grant.length,
            parent_load: grant.active_uploads,
        };
        (r.map(|()| report).map_err(rdma), permit)
    }

    async fn ask(&self, conn: &Conn, req: PieceRequest) -> Result<RdmaGrant, RdmaError> {
        let t = self.node.config.control_timeout;
        let mut frame = Vec::with_capacity(48);
        ClientFrame::RdmaPiece(req).encode(&mut frame);
        let mut c = conn.control.lock().await;
        let cut = CutGuard(Some(&conn.shared));
        c.write_all(&frame).await.map_err(RdmaError::Control)?;
        let mut b = [0u8; RDMA_GRANT_LEN];
        timeout(t, c.read_exact(&mut b))
            .await
            .map_err(|_| RdmaError::Control(std::io::ErrorKind::TimedOut.into()))?
            .map_err(RdmaError::Control)?;
        cut.disarm();
        Ok(RdmaGrant::decode(&b)?)
    }

    /// Tells the parent the reads of a granted piece are over.
    async fn done(&self, conn: &Conn, req: PieceRequest, ok: bool) {
        let mut frame = Vec::with_capacity(48);
        ClientFrame::RdmaDone { req, ok }.encode(&mut frame);
        let mut c = conn.control.lock().await;
        let cut = CutGuard(Some(&conn.shared));
        if c.write_all(&frame).await.is_ok() {
            cut.disarm();
        }
    }

    /// The piece's reads on the connection's QP, over when every work
    /// request is.
    async fn read<W: WritePermit>(
        &self,
        conn: &Conn,
        local: Arc<Registered<MemoryRegion>>,
        permit: W,
        grant: &RdmaGrant,
    ) -> (Result<(), RdmaError>, W) {
        let step = wr_size(self.node.config.wr_size, self.node.device.limits.max_msg_sz);
        let lkey = local.region.lkey;
        let remote = Remote {
            addr: grant.addr,
            rkey: grant.rkey,
        };
        conn.shared
            .read(
                local,
                lkey,
                permit,
                remote,
                step,
                self.node.config.read_timeout,
            )
            .await
    }
}
