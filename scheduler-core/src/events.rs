//! What goes into the [`Core`](crate::Core) and what comes out.
//!
//! These are the core's own types, not the protobuf messages: task ids are
//! [`TaskId`]s and digests [`PieceDigest`]s, already checked, so the core has
//! no parse errors to handle. The service decodes the wire format into these
//! at its edge (and rejects what does not decode there).

use std::fmt;
use weightcast_types::piece::PieceDigest;
use weightcast_types::{PeerId, TaskId};

/// Who a peer is, as it said in its hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// Unique per peer process run.
    pub peer_id: PeerId,
    /// Peers on the same hostname never serve each other.
    pub hostname: String,
    /// `host:port` of its upload server, handed to its children.
    pub piece_addr: String,
    /// Empty when unknown; topology counts only when both sides know it.
    pub zone: String,
    pub rack: String,
    pub seed: bool,
    /// How many children it is willing to serve at once (0 counts as 1).
    pub upload_slots: u32,
    /// It serves piece bytes over RDMA.
    pub rdma: bool,
    /// An explicit host identity; empty: the host is its hostname together
    /// with the address of `piece_addr`.
    pub host_id: String,
}

impl HostInfo {
    /// Whether two peers run on one host: the same explicit id, or else the
    /// same host name *and* the same address. Cloned VMs all named
    /// `localhost`, or network namespaces sharing a machine's UTS name, are
    /// different hosts as long as their addresses differ.
    pub fn same_host(&self, other: &HostInfo) -> bool {
        if !self.host_id.is_empty() || !other.host_id.is_empty() {
            return self.host_id == other.host_id;
        }
        self.hostname == other.hostname
            && addr_host(&self.piece_addr) == addr_host(&other.piece_addr)
    }
}

/// The host part of `host:port` (or `[v6]:port`).
pub(crate) fn addr_host(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((h, _)) => h,
        None => addr,
    }
}

/// Anything a connected peer says after its hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// The peer wants (or already holds part of) a task.
    Register {
        task: TaskId,
        url: String,
        /// Pieces already verified on its disk (a resumed download).
        have: Vec<(u32, PieceDigest)>,
        /// Known content length (a resume).
        content_length: Option<u64>,
        /// The whole file's sha256 when the task is keyed by it: kept only
        /// when `task` is that digest's id, and handed to the task's seed.
        digest: Option<PieceDigest>,
    },
    /// The task's source learned the content length from the origin.
    Meta { task: TaskId, content_length: u64 },
    /// The peer verified a piece.
    PieceDone {
        task: TaskId,
        num: u32,
        digest: PieceDigest,
    },
    /// A piece from `parent` failed (connection, digest, refusal).
    PieceFailed {
        task: TaskId,
        num: u32,
        parent: PeerId,
    },
    /// The peer holds the whole task: it needs no parents any more.
    TaskDone { task: TaskId },
    /// The peer dropped the task.
    TaskLeft { task: TaskId },
    /// The peer's uploads in progress right now.
    Load { active_uploads: u32 },
    /// No piece reached the peer for its stall timeout: may it fetch from
    /// the origin?
    SourceRequest { task: TaskId },
    /// Why the peer's download of a task failed (after its `TaskLeft`):
    /// what a preheat reports for that peer.
    TaskFailed { task: TaskId, reason: String },
    /// The peer answered a [`ToPeer::DeleteCache`]: whether it held the
    /// task, or why it could not evict it.
    CacheDeleted {
        task: TaskId,
        held: bool,
        error: Option<String>,
    },
}

/// A message for one peer about one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub to: PeerId,
    pub task: TaskId,
    pub msg: ToPeer,
}

/// What the scheduler tells a peer about a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToPeer {
    /// To a seed: fetch this task from its origin and serve it. `digest`:
    /// the whole file's sha256 when the task is keyed by it, so that the
    /// seed can check the order (its task id must be the URL's or the
    /// digest's) and the bytes.
    SeedTask {
        url: String,
        digest: Option<PieceDigest>,
    },
    /// The task's content length.
    Meta { content_length: u64 },
    /// New candidate parents (phase 1's answer).
    Parents(Vec<ParentEntry>),
    /// One of the peer's parents verified another piece.
    Available {
        parent: PeerId,
        num: u32,
        digest: PieceDigest,
    },
    /// One of the peer's parents left the task.
    ParentGone { parent: PeerId },
    /// Fetch the task from its origin yourself; others will be pointed at you.
    BackToSource { reason: SourceReason },
    /// This peer's share of the byte-rate budget towards `origin`
    /// (`scheme://host:port`), 0 for none. `task` of the [`Outbound`] is the
    /// task whose start or end changed the split.
    OriginBudget {
        origin: String,
        bytes_per_second: u64,
    },
    /// A cache job (preheat): fetch this task into your cache. With
    /// `from_origin` the peer is the task's source (as with
    /// [`ToPeer::SeedTask`]), else it joins the swarm for it. The
    /// `authorization` (an `Authorization` value for the task's origin, such
    /// as the pull token Harbor hands out) is used as given.
    Preheat {
        url: String,
        digest: Option<PieceDigest>,
        authorization: Option<String>,
        from_origin: bool,
    },
    /// A cache job: evict this task from your cache, and answer
    /// [`PeerEvent::CacheDeleted`].
    DeleteCache,
}

/// One candidate parent handed to a child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentEntry {
    pub peer_id: PeerId,
    /// `host:port` of its upload server.
    pub addr: String,
    pub seed: bool,
    /// The pieces it holds, with the digests the task's source recorded.
    pub pieces: Vec<(u32, PieceDigest)>,
    /// In another zone than the child: the link between them is the scarce one.
    pub remote: bool,
    /// It serves pieces over RDMA.
    pub rdma: bool,
}

/// Why a peer is sent back to source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceReason {
    /// The seed ring names this very peer for the task.
    IsTheSeed,
    /// No seed peer is connected.
    NoSeed,
    /// The task's source left, and this peer had the most pieces.
    SourceLeft,
    /// The peer stalled and the scheduler granted it the origin, within the
    /// task's back-to-source budget.
    Granted,
}

impl SourceReason {
    /// The sentence peers log.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceReason::IsTheSeed => "this peer is the task's seed",
            SourceReason::NoSeed => "no seed peer is connected to the scheduler",
            SourceReason::SourceLeft => "the task's source left and this peer has the most of it",
            SourceReason::Granted => "the peer stalled and was granted back-to-source",
        }
    }
}

impl fmt::Display for SourceReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
