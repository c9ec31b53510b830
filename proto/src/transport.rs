//! The contract of a piece transport that copies with the CPU (TCP).
//!
//! A transport moves one piece from a parent into a slice of the child's
//! mmap'd task file. It does not verify digests: the engine does that for
//! every transport alike, after the bytes land. A transport that writes by
//! DMA (RDMA) cannot borrow the slice, since the NIC may go on writing after
//! a dropped future's borrow ends: it takes an owned
//! [`WritePermit`](weightcast_types::WritePermit) instead.

use std::future::Future;
use weightcast_types::TaskId;

/// Where a parent's piece server listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ParentAddr(pub String);

/// What a finished transfer tells the child about its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchReport {
    pub bytes: u64,
    /// The parent's active uploads when it answered.
    pub parent_load: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("parent {0} does not hold this piece")]
    NotFound(String),
    #[error("parent {0} is at its upload limit")]
    Busy(String),
    /// A seed sent this piece to another peer moments ago: get it from the
    /// peers, and from this parent only after `retry_in`.
    #[error("parent {addr} sent this piece to another peer moments ago")]
    Elsewhere {
        addr: String,
        retry_in: std::time::Duration,
    },
    #[error("parent {addr} sent {got} bytes for a {want}-byte piece")]
    LengthMismatch { addr: String, got: u64, want: u64 },
    #[error("parent {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parent {addr}: {source}")]
    Frame {
        addr: String,
        #[source]
        source: crate::frame::FrameError,
    },
    #[error("parent {0} failed to read its copy of the piece")]
    ParentFailed(String),
    /// The cluster-secret handshake failed: a configuration error, not a
    /// fault of the parent's copy.
    #[error("parent {addr} refused this peer: {reason}")]
    Unauthenticated { addr: String, reason: &'static str },
}

/// [`TransportError::Unauthenticated`]'s reasons, as the child can tell them.
pub mod unauthenticated {
    pub const NO_SECRET: &str =
        "the parent requires the cluster secret and this peer has none (--cluster-secret-file)";
    pub const WRONG_SECRET: &str = "this peer's cluster secret is not one the parent accepts (a wrong or retired --cluster-secret-file)";
    pub const NO_CHALLENGE: &str = "this peer has a cluster secret but the parent sent no challenge (is --cluster-secret-file set on the parent?)";
}

pub trait PieceTransport: Send + Sync + 'static {
    /// Fetches piece `piece` of `task` from `parent` into `dst`, whose length
    /// is the piece length.
    fn fetch_piece<'a>(
        &'a self,
        parent: &'a ParentAddr,
        task: TaskId,
        piece: u32,
        dst: &'a mut [u8],
    ) -> impl Future<Output = Result<FetchReport, TransportError>> + Send + 'a;
}
