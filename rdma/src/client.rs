//! The child side: one RC queue pair per parent, set up and driven over the
//! parent's piece connection, reused for every piece of every task.
//!
//! A piece is one `RdmaPiece` request on the control connection, answered by
//! where the verified piece lies in the parent's registered memory; then the
//! child posts RDMA READs of at most `wr_size` bytes, at most `outstanding`
//! in flight on the QP (shared by every piece on it), and waits until every
//! one of them completed. Completions are polled from a tokio task woken by
//! the completion channel's fd (`AsyncFd`): no thread blocks. A failed work
//! request, a control error or a timeout breaks the connection: its QP goes
//! to the error state (flushing what is in flight, so no late DMA lands in a
//! destination that is handed back), and the next piece builds a new one.

use crate::mr::{MemoryRegion, Registered};
use crate::qp::QueuePair;
use crate::split::{work_requests, wr_size};
use crate::{ffi, RdmaError, RdmaNode};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};
use tokio::time::timeout;
use weightcast_proto::frame::{
    ClientFrame, PieceRequest, RdmaAccept, RdmaGrant, Status, RDMA_ACCEPT_LEN, RDMA_GRANT_LEN,
};
use weightcast_proto::transport::{FetchReport, ParentAddr, PieceTransport, TransportError};
use weightcast_types::TaskId;

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

/// One piece read in flight: its work requests still to complete (plus one
/// held by the poster until it has posted them all) and its first error.
struct Op {
    remaining: AtomicUsize,
    error: Mutex<Option<RdmaError>>,
    done: Notify,
}

impl Op {
    fn complete(&self, n: usize) {
        if self.remaining.fetch_sub(n, Ordering::AcqRel) == n {
            self.done.notify_one();
        }
    }

    fn fail(&self, e: RdmaError) {
        let mut err = self.error.lock().unwrap_or_else(|p| p.into_inner());
        // The first real error wins over the flushes it causes.
        if err.is_none() || matches!(*err, Some(RdmaError::Broken)) {
            *err = Some(e);
        }
    }
}

struct Shared {
    qp: QueuePair,
    ops: Mutex<HashMap<u64, Arc<Op>>>,
    /// Send-queue slots: one per RDMA READ in flight.
    slots: Semaphore,
    broken: AtomicBool,
}

impl Shared {
    fn break_qp(&self) {
        if !self.broken.swap(true, Ordering::AcqRel) {
            self.qp.set_error();
        }
    }

    fn dispatch(&self, wc: &ffi::ibv_wc) {
        self.slots.add_permits(1);
        let op = self
            .ops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&wc.wr_id)
            .cloned();
        let Some(op) = op else {
            if wc.status != ffi::IBV_WC_SUCCESS {
                self.break_qp();
            }
            return;
        };
        if wc.status != ffi::IBV_WC_SUCCESS {
            let status = match ffi::Verbs::get() {
                Ok(v) => v.status_str(wc.status),
                Err(_) => format!("status {}", wc.status),
            };
            if wc.status == ffi::IBV_WC_WR_FLUSH_ERR {
                op.fail(RdmaError::Broken);
            } else {
                op.fail(RdmaError::Completion {
                    status,
                    vendor_err: wc.vendor_err,
                });
            }
            self.break_qp();
        }
        op.complete(1);
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
        if let Err(e) = shared.qp.req_notify() {
            tracing::warn!(error = %e, "RDMA completion queue failed");
            shared.break_qp();
            return;
        }
        loop {
            match shared.qp.poll(&mut wcs) {
                Ok(0) => break,
                Ok(n) => wcs[..n].iter().for_each(|wc| shared.dispatch(wc)),
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
            match shared.qp.take_event() {
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
    next_op: AtomicU64,
    /// QPs built so far (a rebuilt one counts again).
    pub connects: AtomicU64,
}

impl RdmaTransport {
    pub fn new(node: Arc<RdmaNode>) -> Self {
        Self {
            node,
            conns: Mutex::new(HashMap::new()),
            next_op: AtomicU64::new(1),
            connects: AtomicU64::new(0),
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
        let accept = RdmaAccept::decode(&b)?;
        match accept.status {
            Status::Ok => {}
            Status::Unsupported => return Err(RdmaError::Refused),
            _ => return Err(RdmaError::ParentSetup),
        }
        qp.connect(&accept.endpoint, 0)?;
        let in_flight = accept.endpoint.max_rd_atomic.clamp(1, outstanding as u8) as usize;
        let fd = qp.channel_fd().ok_or(RdmaError::Broken)?;
        let shared = Arc::new(Shared {
            qp,
            ops: Mutex::new(HashMap::new()),
            slots: Semaphore::new(in_flight),
            broken: AtomicBool::new(false),
        });
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
        tracing::debug!(parent = %addr.0, qpn = shared.qp.local.qp_num, remote_qpn = accept.endpoint.qp_num, in_flight, "RDMA queue pair connected");
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
            if !c.shared.broken.load(Ordering::Acquire) {
                return Ok(c.clone());
            }
        }
        *slot = None;
        let c = Arc::new(self.connect(addr).await?);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Fetches piece `piece` of `task` from `parent` into `dst`, which lies
    /// inside `local` (the task's registered region).
    pub async fn fetch(
        &self,
        parent: &ParentAddr,
        task: TaskId,
        piece: u32,
        dst: &mut [u8],
        local: &Registered<MemoryRegion>,
    ) -> Result<FetchReport, RdmaFetchError> {
        let rdma = |source| RdmaFetchError::Rdma {
            addr: parent.0.clone(),
            source,
        };
        let Some(_) = local.offset_of(dst.as_ptr(), dst.len()) else {
            return Err(rdma(RdmaError::NotRegistered));
        };
        let conn = self.conn(parent).await.map_err(rdma)?;
        let req = PieceRequest { task, piece };
        let grant = match self.ask(&conn, req).await {
            Ok(g) => g,
            Err(e) => {
                conn.shared.break_qp();
                return Err(rdma(e));
            }
        };
        match grant.status {
            Status::Ok => {}
            Status::NotFound => {
                return Err(RdmaFetchError::Parent(TransportError::NotFound(
                    parent.0.clone(),
                )))
            }
            Status::Busy => {
                return Err(RdmaFetchError::Parent(TransportError::Busy(
                    parent.0.clone(),
                )))
            }
            Status::Failed => {
                return Err(RdmaFetchError::Parent(TransportError::ParentFailed(
                    parent.0.clone(),
                )))
            }
            Status::Unsupported => return Err(rdma(RdmaError::Refused)),
        }
        if grant.length != dst.len() as u64 {
            self.done(&conn, req, false).await;
            return Err(RdmaFetchError::Parent(TransportError::LengthMismatch {
                addr: parent.0.clone(),
                got: grant.length,
                want: dst.len() as u64,
            }));
        }
        let r = self.read(&conn, dst, local, &grant).await;
        self.done(&conn, req, r.is_ok()).await;
        r.map_err(rdma)?;
        Ok(FetchReport {
            bytes: grant.length,
            parent_load: grant.active_uploads,
        })
    }

    async fn ask(&self, conn: &Conn, req: PieceRequest) -> Result<RdmaGrant, RdmaError> {
        let t = self.node.config.control_timeout;
        let mut frame = Vec::with_capacity(48);
        ClientFrame::RdmaPiece(req).encode(&mut frame);
        let mut c = conn.control.lock().await;
        c.write_all(&frame).await.map_err(RdmaError::Control)?;
        let mut b = [0u8; RDMA_GRANT_LEN];
        timeout(t, c.read_exact(&mut b))
            .await
            .map_err(|_| RdmaError::Control(std::io::ErrorKind::TimedOut.into()))?
            .map_err(RdmaError::Control)?;
        Ok(RdmaGrant::decode(&b)?)
    }

    /// Tells the parent the reads of a granted piece are over.
    async fn done(&self, conn: &Conn, req: PieceRequest, ok: bool) {
        let mut frame = Vec::with_capacity(48);
        ClientFrame::RdmaDone { req, ok }.encode(&mut frame);
        let mut c = conn.control.lock().await;
        if c.write_all(&frame).await.is_err() {
            conn.shared.break_qp();
        }
    }

    /// Posts the piece's reads and waits until every one has completed:
    /// only then may `dst` be handed back, whatever happened.
    async fn read(
        &self,
        conn: &Conn,
        dst: &mut [u8],
        local: &Registered<MemoryRegion>,
        grant: &RdmaGrant,
    ) -> Result<(), RdmaError> {
        let shared = &conn.shared;
        let step = wr_size(self.node.config.wr_size, self.node.device.limits.max_msg_sz);
        let wrs: Vec<(u64, u32)> = work_requests(dst.len() as u64, step).collect();
        let id = self.next_op.fetch_add(1, Ordering::Relaxed);
        let op = Arc::new(Op {
            remaining: AtomicUsize::new(wrs.len() + 1),
            error: Mutex::new(None),
            done: Notify::new(),
        });
        shared
            .ops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, op.clone());
        let base = dst.as_mut_ptr() as u64;
        let mut posted = 0;
        for (off, len) in &wrs {
            if shared.broken.load(Ordering::Acquire) {
                op.fail(RdmaError::Broken);
                break;
            }
            let Ok(permit) = shared.slots.acquire().await else {
                op.fail(RdmaError::Broken);
                break;
            };
            // Returned by the poller when this WR's completion arrives.
            permit.forget();
            // SAFETY: `dst` is exclusively ours and inside `local`, and this
            // function does not return before every posted WR completed.
            let r = unsafe {
                shared.qp.post_read(
                    id,
                    base + off,
                    local.region.lkey,
                    *len,
                    grant.addr + off,
                    grant.rkey,
                )
            };
            if let Err(e) = r {
                shared.slots.add_permits(1);
                op.fail(e);
                shared.break_qp();
                break;
            }
            posted += 1;
        }
        // Release the poster's hold and the WRs never posted.
        op.complete(wrs.len() - posted + 1);
        let limit = self.node.config.read_timeout;
        let mut timed_out = false;
        while op.remaining.load(Ordering::Acquire) > 0 {
            match timeout(limit, op.done.notified()).await {
                Ok(()) => {}
                Err(_) if !timed_out => {
                    // Flush everything in flight; the flushes complete the op.
                    timed_out = true;
                    op.fail(RdmaError::Timeout {
                        bytes: dst.len() as u64,
                        secs: limit.as_secs(),
                    });
                    shared.break_qp();
                }
                Err(_) => {
                    tracing::error!(
                        remaining = op.remaining.load(Ordering::Acquire),
                        "RDMA work requests not flushed after the QP went to error; still waiting"
                    );
                }
            }
        }
        shared
            .ops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let err = op.error.lock().unwrap_or_else(|p| p.into_inner()).take();
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The transport contract: the destination must lie in the task's region,
/// registered beforehand with [`RdmaNode::region`]. RDMA failures come back
/// as I/O errors; callers that want to fall back to TCP use
/// [`RdmaTransport::fetch`], which tells them apart.
impl PieceTransport for RdmaTransport {
    async fn fetch_piece<'a>(
        &'a self,
        parent: &'a ParentAddr,
        task: TaskId,
        piece: u32,
        dst: &'a mut [u8],
    ) -> Result<FetchReport, TransportError> {
        let Some(local) = self.node.registered(&task) else {
            return Err(TransportError::Io {
                addr: parent.0.clone(),
                source: std::io::Error::other(RdmaError::NotRegistered),
            });
        };
        match self.fetch(parent, task, piece, dst, &local).await {
            Ok(r) => Ok(r),
            Err(RdmaFetchError::Parent(e)) => Err(e),
            Err(RdmaFetchError::Rdma { addr, source }) => Err(TransportError::Io {
                addr,
                source: std::io::Error::other(source),
            }),
        }
    }
}
