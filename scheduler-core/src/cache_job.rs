//! Cache jobs: what a preheat or an eviction asks of the peers, and what
//! each peer answered.
//!
//! A job names tasks (already resolved to task ids and origin URLs by whoever
//! asked: the manager, or `weightcast preheat` itself) and a set of peers
//! chosen by [`Scope`] and [`PeerFilter`]. The core sends each chosen peer
//! its order, follows the peer's own reports (`TaskDone`, `TaskLeft`,
//! `TaskFailed`, `CacheDeleted`, a disconnect) and keeps one
//! [`PeerResult`] per task and peer until the job is over.

use std::fmt;
use std::time::Duration;
use weightcast_types::piece::PieceDigest;
use weightcast_types::{PeerId, TaskId};

/// A job's number, unique within one scheduler run.
pub type JobId = u64;

/// Which peers a preheat warms (Dragonfly's three scopes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// The seed the seed ring names for each task: the one every later
    /// download of that task would draft.
    #[default]
    SingleSeedPeer,
    /// Every seed peer (narrowed by the [`PeerFilter`]).
    AllSeedPeers,
    /// Every peer, seeds included (narrowed by the [`PeerFilter`]).
    AllPeers,
}

impl Scope {
    /// Dragonfly's names; the empty string (what Harbor sends without an
    /// explicit scope) is `single_seed_peer`.
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "" | "single_seed_peer" => Some(Scope::SingleSeedPeer),
            "all_seed_peers" => Some(Scope::AllSeedPeers),
            "all_peers" => Some(Scope::AllPeers),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::SingleSeedPeer => "single_seed_peer",
            Scope::AllSeedPeers => "all_seed_peers",
            Scope::AllPeers => "all_peers",
        }
    }
}

/// Narrows the "all" scopes: `ips` first, else `count` peers, else
/// `percentage` of them (rounded down, at least one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerFilter {
    pub ips: Vec<String>,
    pub count: Option<u32>,
    pub percentage: Option<u32>,
}

/// One task to warm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmTask {
    pub task: TaskId,
    /// Where its bytes are (a signed URL keeps its signature here; only the
    /// task id is normalized).
    pub url: String,
    /// The whole file's sha256, when known: the peers check it.
    pub digest: Option<PieceDigest>,
    /// An `Authorization` value for the origin, used as given.
    pub authorization: Option<String>,
}

/// A preheat, as the core takes it.
#[derive(Debug, Clone)]
pub struct PreheatJob {
    pub tasks: Vec<WarmTask>,
    pub scope: Scope,
    pub filter: PeerFilter,
    /// Peers ordered per task at once (0: no limit).
    pub concurrent_peers: usize,
    /// After this, what is still pending fails.
    pub timeout: Duration,
}

/// Where one peer stands on one task of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultState {
    Pending,
    Success,
    Failure,
}

/// One peer's answer for one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerResult {
    pub peer_id: PeerId,
    pub hostname: String,
    /// `host:port` of its upload server.
    pub addr: String,
    pub seed: bool,
    pub state: ResultState,
    /// Why it failed, or what it did ("evicted", "not cached").
    pub description: String,
    /// Bytes of the task it holds now (when the length is known).
    pub bytes: u64,
    /// It holds (or, for an eviction, held) the task.
    pub held: bool,
    /// It fetched the task from the origin (the task's source, or a peer
    /// granted back-to-source); the others got their bytes from peers.
    pub from_origin: bool,
    /// How long after the task's first registration it finished.
    pub done_after: Option<std::time::Duration>,
}

/// A job's results for one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskResults {
    pub task: TaskId,
    pub url: String,
    pub content_length: Option<u64>,
    pub peers: Vec<PeerResult>,
}

/// A job as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobStatus {
    pub id: JobId,
    pub tasks: Vec<TaskResults>,
    /// No result is pending any more.
    pub finished: bool,
}

/// Why a job was not started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobRefused {
    NoTasks,
    /// `single_seed_peer`/`all_seed_peers` with no seed connected.
    NoSeed,
    /// No connected peer matches the scope and filter.
    NoPeers,
}

impl fmt::Display for JobRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobRefused::NoTasks => "the job names no task",
            JobRefused::NoSeed => "no seed peer is connected to this scheduler: start daemons with --seed, or use the scope all_peers",
            JobRefused::NoPeers => "no connected peer matches the scope and its ips/count/percentage",
        })
    }
}

impl std::error::Error for JobRefused {}
