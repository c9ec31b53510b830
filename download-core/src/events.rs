//! What goes into a [`Download`](crate::Download) and what comes out.
//!
//! `E` is the shell's own error type (an origin or store failure): the core
//! never looks inside it, it only carries it to [`Failure::Shell`], so a
//! caller can still tell a 404 from a full disk.

use std::time::Duration;
use weightcast_types::piece::PieceDigest;
use weightcast_types::PeerId;

/// A candidate parent, as the scheduler described it.
#[derive(Debug, Clone, PartialEq)]
pub struct ParentInfo {
    pub id: PeerId,
    /// `host:port` of its upload server.
    pub addr: String,
    pub seed: bool,
    /// In another zone than this peer: the link to it is the scarce one.
    pub remote: bool,
    /// It serves pieces over RDMA.
    pub rdma: bool,
    /// The pieces it holds, with the digests the task's source recorded.
    pub pieces: Vec<(u32, PieceDigest)>,
}

/// A scheduler message about this task, decoded by the shell.
#[derive(Debug, Clone, PartialEq)]
pub enum SchedulerEvent {
    /// The task's length, learned by its source.
    Meta {
        content_length: u64,
    },
    /// New candidate parents (phase 1's answer).
    Parents(Vec<ParentInfo>),
    /// A parent verified another piece.
    Available {
        parent: PeerId,
        num: u32,
        digest: PieceDigest,
    },
    ParentGone {
        parent: PeerId,
    },
    /// Fetch this task from its origin.
    BackToSource {
        reason: String,
    },
}

/// Who served (or was asked for) a piece.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Origin,
    Parent(PeerId),
}

/// How one piece fetch ended.
#[derive(Debug)]
pub enum PieceOutcome<E> {
    /// In the file and verified against `digest`.
    Verified {
        digest: PieceDigest,
        /// The parent's active uploads when it answered.
        parent_load: Option<u32>,
    },
    /// The parent is at its upload limit: ask it again a little later.
    Busy,
    /// The parent does not hold the piece (any more).
    NotFound,
    /// A seed sent this piece to another peer moments ago: take it from the
    /// peers, and from this parent only after `retry_in`.
    Elsewhere { retry_in: Duration },
    /// The bytes failed their digest check.
    Corrupt { reason: String },
    /// The parent broke (connection, protocol): its pieces come from elsewhere.
    ParentFailed { reason: String },
    /// The origin failed for good (after the fetcher's own retries).
    OriginFailed(E),
    /// Nobody's fault: the fetch task died (a panic) or the piece could not
    /// be claimed for writing. The piece is simply fetched again.
    Lost { reason: String },
}

/// The result of one [`Command::Fetch`].
#[derive(Debug)]
pub struct PieceReport<E> {
    pub num: u32,
    pub from: Source,
    /// The piece's length.
    pub bytes: u64,
    /// How long the transfer took.
    pub took: Duration,
    pub outcome: PieceOutcome<E>,
}

/// Everything the core reacts to.
#[derive(Debug)]
pub enum Input<E> {
    Scheduler(SchedulerEvent),
    /// The stream to the scheduler is back: register again with what we hold.
    Reconnected,
    /// The stream to the scheduler broke.
    SchedulerLost,
    /// A streaming reader waits on this piece: fetch it and the few after it first.
    Wanted(u32),
    /// The answer to [`Command::Open`]: the verified pieces already on disk.
    Opened(Result<Vec<(u32, PieceDigest)>, E>),
    /// The answer to [`Command::Probe`]: the content length at the origin.
    Probed(Result<u64, E>),
    Piece(PieceReport<E>),
    /// The answer to [`Command::CheckWholeDigest`]: the file's sha256.
    WholeDigest(Result<[u8; 32], E>),
    /// The time [`Download::poll_timeout`](crate::Download::poll_timeout) named has come.
    Timeout,
    /// Stop: no new fetches; finish once the pieces in flight are in.
    Shutdown,
}

/// Where a piece comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum FetchFrom {
    Origin,
    Parent {
        id: PeerId,
        addr: String,
        rdma: bool,
        /// The digest the bytes must match.
        expected: Option<PieceDigest>,
    },
}

/// Fetch piece `num` into the task file (claiming it for writing first).
#[derive(Debug, Clone, PartialEq)]
pub struct Fetch {
    pub num: u32,
    pub from: FetchFrom,
}

/// A message for the scheduler about this task (the shell adds the task id).
#[derive(Debug, Clone, PartialEq)]
pub enum ToScheduler {
    Register {
        have: Vec<(u32, PieceDigest)>,
        /// 0 when not known yet.
        content_length: u64,
    },
    Meta {
        content_length: u64,
    },
    PieceDone {
        num: u32,
        digest: PieceDigest,
    },
    PieceFailed {
        num: u32,
        parent: PeerId,
        reason: String,
    },
    /// No piece for the stall timeout: may this peer go to the origin?
    SourceRequest {
        reason: String,
    },
    TaskDone,
    TaskLeft,
}

/// Why a download ended without its file.
#[derive(Debug)]
pub enum Failure<E> {
    /// The shell's own error: the origin, the store.
    Shell(E),
    /// Every piece verified, but the whole file does not match the digest
    /// it must have. The file was discarded.
    DigestMismatch { expected: [u8; 32], got: [u8; 32] },
    /// No piece from peers for this long, and back-to-source is forbidden.
    Stalled { secs: u64 },
    /// The scheduler sent this peer to the origin, and back-to-source is forbidden.
    SourceForbidden { reason: String },
    /// The engine is shutting down.
    ShuttingDown,
}

/// What the shell must do.
#[derive(Debug)]
pub enum Command<E> {
    Send(ToScheduler),
    /// Open (or create and preallocate) the task file of this length, and
    /// answer [`Input::Opened`].
    Open {
        content_length: u64,
    },
    /// Learn the content length from the origin, and answer [`Input::Probed`].
    Probe,
    Fetch(Fetch),
    /// Hash the whole file, and answer [`Input::WholeDigest`].
    CheckWholeDigest,
    /// The file's content is wrong: delete it, so a retry starts clean.
    Discard,
    /// The download is over; the shell stops (aborting what is still in flight).
    Finish(Result<(), Failure<E>>),
}
