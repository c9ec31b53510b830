//! Piece transport over RDMA verbs.
//!
//! A child reads a verified piece straight from its parent's registered,
//! mmap'd task file into its own, with one-sided RDMA READs: the parent's CPU
//! never touches the bytes, and neither side copies them.
//!
//! - [`ffi`]: libibverbs, loaded at run time (`dlopen`), so one binary runs
//!   everywhere: without the library or a device, `--transport auto` is TCP.
//! - [`device`]: device, port and GID discovery; the protection domain.
//! - [`mr`]: one memory region per task file, which this crate maps itself
//!   from the file it is given (no address crosses into it), registered
//!   lazily, dropped on eviction.
//! - [`qp`]: RC queue pairs, one per parent connection, reused across pieces
//!   and tasks.
//! - [`split`]: a piece read cut into work requests within the device limits.
//! - `reads`: the reads in flight on one QP, each owning its destination's
//!   [`WritePermit`](weightcast_types::WritePermit) until its last work
//!   request is over, also when its future is dropped (cancellation-safe).
//! - [`client`]: the child side ([`RdmaTransport`]): QP setup over the piece
//!   connection, outstanding reads, completions polled through tokio.
//! - [`select`]: which transport a piece takes, and what a failure means.
//!
//! The parent side is [`RdmaNode::accept`] and [`RdmaNode::piece_location`];
//! the TCP piece server calls them (through the engine) when a child asks.

pub mod client;
pub mod device;
pub mod ffi;
pub mod mr;
pub mod qp;
mod reads;
pub mod select;
pub mod split;

pub use client::{RdmaFetchError, RdmaTransport};
pub use device::Device;
pub use select::TransportMode;

use mr::{FileId, MemoryRegion, RegionTable, Registered};
use std::fs::File;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use weightcast_proto::frame::QpEndpoint;
use weightcast_types::TaskId;

#[derive(Debug, thiserror::Error)]
pub enum RdmaError {
    #[error("RDMA unavailable: {0}")]
    Library(String),
    #[error("no RDMA device found")]
    NoDevice,
    #[error("RDMA device {0} not found")]
    DeviceNotFound(String),
    #[error("RDMA device {0} has no active port")]
    NoActivePort(String),
    #[error("RDMA device {0} has no usable GID")]
    NoGid(String),
    #[error("{call} failed: {source}")]
    Verbs {
        call: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot register {bytes} bytes for RDMA: {source} (raise the memlock limit, e.g. LimitMEMLOCK=infinity, or run as root)")]
    Register {
        bytes: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("RDMA READ failed: {status} (vendor error {vendor_err:#x})")]
    Completion { status: String, vendor_err: u32 },
    #[error("the parent does not serve RDMA")]
    Refused,
    #[error("RDMA setup failed on the parent")]
    ParentSetup,
    #[error("RDMA control connection: {0}")]
    Control(#[source] std::io::Error),
    #[error("RDMA control frame: {0}")]
    Frame(#[from] weightcast_proto::frame::FrameError),
    #[error("RDMA READ of {bytes} bytes got no completion within {secs} s")]
    Timeout { bytes: u64, secs: u64 },
    #[error("the destination is not inside a registered region")]
    NotRegistered,
    #[error("cannot map the task file for RDMA: {0}")]
    File(#[source] std::io::Error),
    #[error("the queue pair broke during the read")]
    Broken,
}

impl RdmaError {
    pub(crate) fn verbs(call: &'static str) -> Self {
        RdmaError::Verbs {
            call,
            source: std::io::Error::last_os_error(),
        }
    }

    /// Errors that only mean "this machine has no RDMA": `--transport auto`
    /// says nothing about them beyond a debug line.
    pub fn is_absent(&self) -> bool {
        matches!(
            self,
            RdmaError::Library(_) | RdmaError::NoDevice | RdmaError::NoActivePort(_)
        )
    }
}

/// Tuning of the RDMA data plane (see the README's design figures).
#[derive(Debug, Clone, Copy)]
pub struct RdmaConfig {
    /// Bytes per RDMA READ work request (bounded by the port's max_msg_sz).
    pub wr_size: u64,
    /// RDMA READs in flight per queue pair (bounded by the device).
    pub outstanding: u32,
    /// A read with no completion for this long fails (and the QP is reset).
    pub read_timeout: Duration,
    /// TCP connect and control-frame answers.
    pub control_timeout: Duration,
}

impl Default for RdmaConfig {
    fn default() -> Self {
        Self {
            wr_size: split::DEFAULT_WR_SIZE,
            outstanding: 16,
            read_timeout: Duration::from_secs(60),
            control_timeout: Duration::from_secs(20),
        }
    }
}

/// One process's RDMA state: the device, and the task regions that both the
/// child side (destination of reads) and the parent side (source) use.
pub struct RdmaNode {
    pub device: Arc<Device>,
    pub config: RdmaConfig,
    regions: RegionTable<MemoryRegion>,
}

/// Where a parent's piece lies for a child's RDMA READ: an address in the
/// parent's registered mapping (meaningful to the NIC only), its rkey and
/// its length, as the grant frame carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemotePiece {
    pub addr: u64,
    pub rkey: u32,
    pub length: u64,
}

/// A parent-side QP, connected to one child; dropped with its connection.
pub struct ServerQp(#[allow(dead_code)] qp::QueuePair);

impl RdmaNode {
    /// Opens the device (`name`, or the first with an active port).
    pub fn open(name: Option<&str>, config: RdmaConfig) -> Result<Arc<Self>, RdmaError> {
        let device = Arc::new(Device::open(name)?);
        Ok(Arc::new(Self {
            device,
            config,
            regions: RegionTable::default(),
        }))
    }

    /// The region of `task` over `file`, which this crate maps (shared)
    /// and registers on first use; blocks for as long as registration takes.
    pub fn region(
        &self,
        task: TaskId,
        file: &File,
    ) -> Result<Arc<Registered<MemoryRegion>>, RdmaError> {
        let id = FileId::of(file)?;
        self.regions.get_or_register(task, id, || {
            let t0 = std::time::Instant::now();
            let mr = MemoryRegion::register_file(&self.device, file, id.len)?;
            tracing::debug!(%task, bytes = id.len, ms = t0.elapsed().as_millis() as u64, "registered task file for RDMA");
            let base = mr.base();
            Ok(Registered::new(mr, id, base, id.len))
        })
    }

    /// [`RdmaNode::region`] from async code: registering pins the whole
    /// file, which takes time in proportion to its size, so the first time
    /// it runs on the blocking pool, not on an async worker.
    pub async fn region_off_runtime(
        self: &Arc<Self>,
        task: TaskId,
        file: &File,
    ) -> Result<Arc<Registered<MemoryRegion>>, RdmaError> {
        let id = FileId::of(file)?;
        if let Some(r) = self.regions.get(&task, &id) {
            return Ok(r);
        }
        let file = file.try_clone().map_err(RdmaError::File)?;
        let node = self.clone();
        tokio::task::spawn_blocking(move || node.region(task, &file))
            .await
            .unwrap_or(Err(RdmaError::Broken))
    }

    /// Where bytes `range` of `task`'s `file` lie for a child's RDMA READ
    /// (registering the file on first use). The caller hands out only
    /// ranges of verified pieces.
    pub fn piece_location(
        &self,
        task: TaskId,
        file: &File,
        range: Range<u64>,
    ) -> Result<RemotePiece, RdmaError> {
        let region = self.region(task, file)?;
        let addr = region.addr_of(&range).ok_or(RdmaError::NotRegistered)?;
        Ok(RemotePiece {
            addr,
            rkey: region.region.rkey,
            length: range.end - range.start,
        })
    }

    /// Deregisters the task's region (once no read uses it any more).
    pub fn evict(&self, task: &TaskId) {
        if self.regions.evict(task) {
            tracing::debug!(%task, "RDMA region released");
        }
    }

    /// Parent side of the handshake: a new QP connected to the child's,
    /// allowing remote reads. Returns this side's endpoint and the QP, which
    /// lives as long as the child's connection.
    pub fn accept(&self, child: &QpEndpoint) -> Result<(QpEndpoint, ServerQp), RdmaError> {
        let want = child
            .max_rd_atomic
            .min(self.device.limits.max_qp_rd_atom.min(255) as u8)
            .max(1);
        let qp = qp::QueuePair::new(&self.device, 1, want, false)?;
        qp.connect(child, ffi::IBV_ACCESS_REMOTE_READ)?;
        Ok((qp.local, ServerQp(qp)))
    }
}
