//! The simulator's one door to the production cores: the real scheduler
//! core (`weightcast-scheduler-core`) and the real download core
//! (`weightcast-download-core`), each behind a thin wrapper that speaks
//! simulated time ([`Nanos`]) and plain values.
//!
//! This is the only module that names the cores' types, so that when their
//! inputs and outputs change (a new outcome, a new message), the simulator
//! changes here and nowhere else. It does what the engine's shell
//! (`engine/src/download.rs`, `engine/src/dispatch.rs`) does between the
//! same cores and real sockets: scheduler messages become download inputs,
//! download commands become actions for the simulated world.

use super::net::Nanos;
use std::time::{Duration, Instant};
use weightcast_download_core as dl;
use weightcast_scheduler_core as sc;
use weightcast_types::piece::PieceDigest;
use weightcast_types::{PeerId, TaskId};

pub use sc::{Config as SchedulerConfig, PeerEvent, ToPeer};
pub use weightcast_download_core::Config as DownloadConfig;

/// Simulated time as the cores' `Instant`: a fixed base plus the
/// simulated nanoseconds. The cores only compare and subtract instants, so
/// the base never shows in a result.
#[derive(Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn new() -> Self {
        Self(Instant::now())
    }

    pub fn at(&self, t: Nanos) -> Instant {
        self.0 + Duration::from_nanos(t)
    }

    pub fn nanos(&self, t: Instant) -> Nanos {
        t.saturating_duration_since(self.0).as_nanos() as Nanos
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// How a node describes itself to the scheduler.
pub struct NodeInfo<'a> {
    pub peer_id: &'a str,
    pub hostname: &'a str,
    pub piece_addr: &'a str,
    pub zone: &'a str,
    pub seed: bool,
    pub upload_slots: u32,
}

/// A message from the scheduler for one node.
pub struct ToNode {
    pub to: PeerId,
    pub msg: ToPeer,
}

/// The scheduler's counters, as the results report them.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SchedulerStats {
    pub seeds_triggered: u64,
    pub back_to_source: u64,
    pub source_requests: u64,
    pub source_grants: u64,
    pub source_refusals: u64,
    pub parents_assigned: u64,
    pub piece_failures: u64,
}

/// The real scheduler core, fed simulated time.
pub struct Scheduler {
    core: sc::Core,
    clock: Clock,
}

fn outbound(out: Vec<sc::Outbound>) -> Vec<ToNode> {
    out.into_iter()
        .map(|o| ToNode {
            to: o.to,
            msg: o.msg,
        })
        .collect()
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, clock: Clock) -> Self {
        Self {
            core: sc::Core::new(config),
            clock,
        }
    }

    pub fn hello(&mut self, n: &NodeInfo<'_>, now: Nanos) -> Vec<ToNode> {
        let info = sc::HostInfo {
            peer_id: n.peer_id.to_string(),
            hostname: n.hostname.to_string(),
            piece_addr: n.piece_addr.to_string(),
            zone: n.zone.to_string(),
            rack: String::new(),
            seed: n.seed,
            upload_slots: n.upload_slots,
            rdma: false,
            host_id: String::new(),
        };
        outbound(self.core.hello(info, self.clock.at(now)))
    }

    pub fn handle(&mut self, from: &str, event: PeerEvent, now: Nanos) -> Vec<ToNode> {
        outbound(self.core.handle(from, event, self.clock.at(now)))
    }

    pub fn disconnect(&mut self, peer: &str, now: Nanos) -> Vec<ToNode> {
        outbound(self.core.disconnect(peer, self.clock.at(now)))
    }

    pub fn stats(&self) -> SchedulerStats {
        let s = &self.core.stats;
        SchedulerStats {
            seeds_triggered: s.seeds_triggered,
            back_to_source: s.back_to_source,
            source_requests: s.source_requests,
            source_grants: s.source_grants,
            source_refusals: s.source_refusals,
            parents_assigned: s.parents_assigned,
            piece_failures: s.piece_failures,
        }
    }
}

/// What the peer's uploads in progress are, as its load report says.
pub fn load_report(active_uploads: u32) -> PeerEvent {
    PeerEvent::Load { active_uploads }
}

/// Whether a scheduler message orders a seed to fetch the task (the engine
/// then starts a source-mode download, as `dispatch.rs` does).
pub fn is_seed_order(msg: &ToPeer) -> bool {
    matches!(msg, ToPeer::SeedTask { .. })
}

/// What a simulated shell must do for a download (the core's commands,
/// with the task id and piece digests the world does not need to know).
#[derive(Debug)]
pub enum Action {
    /// A message for the scheduler.
    Send(PeerEvent),
    /// Create the task file; answer [`PeerDownload::opened`].
    Open,
    /// Ask the origin for the length; answer [`PeerDownload::probed`].
    Probe,
    /// Fetch piece `num` from the origin.
    FetchOrigin { num: u32 },
    /// Fetch piece `num` from a parent; the bytes must match `expected`.
    FetchParent {
        num: u32,
        parent: PeerId,
        expected: Option<PieceDigest>,
    },
    /// The whole-file check: answer [`PeerDownload::whole_digest`].
    CheckWholeDigest,
    /// The download is over: `Ok` with every piece verified.
    Finished(Result<(), String>),
}

/// How a simulated piece fetch ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Verified {
        digest: PieceDigest,
        parent_load: Option<u32>,
    },
    Busy,
    NotFound,
    /// A seed sent this piece to another peer moments ago.
    Elsewhere {
        retry_in: Duration,
    },
    Corrupt,
    ParentFailed,
}

/// The simulator's shell errors: none happen (the origin never fails), but
/// the core's type needs one.
#[derive(Debug)]
pub struct NoError;

/// One node's download: the real download core, fed simulated time.
pub struct PeerDownload {
    core: dl::Download<NoError>,
    task: TaskId,
    url: String,
    clock: Clock,
}

impl PeerDownload {
    /// A swarm download (a peer's `get`), or a source one (a seed told to
    /// fetch the task).
    pub fn new(
        config: DownloadConfig,
        peer_id: &str,
        task: TaskId,
        url: &str,
        source: bool,
        clock: Clock,
        now: Nanos,
    ) -> Self {
        let spec = dl::Spec {
            peer_id: peer_id.to_string(),
            digest: None,
            mode: if source {
                dl::Mode::Source
            } else {
                dl::Mode::Swarm
            },
            back_to_source: true,
            announce: true,
            resume_length: None,
            scheduler_up: true,
        };
        Self {
            core: dl::Download::new(config, spec, clock.at(now)),
            task,
            url: url.to_string(),
            clock,
        }
    }

    /// One line on why a download that is not done has nothing in flight:
    /// its parents by kind, those holding a piece it lacks, and their
    /// in-flight counts and waits as its phase-2 choice sees them.
    pub fn stall_summary(&self, have: &[bool], now: Nanos) -> String {
        let now = self.clock.at(now);
        let choice = self.core.parent_choice();
        let missing: Vec<u32> = (0..have.len() as u32)
            .filter(|n| !have[*n as usize])
            .collect();
        let mut s = format!(
            "{} missing, {} in flight; parents:",
            missing.len(),
            self.core.in_flight()
        );
        for (id, p) in &choice.parents {
            let holds = missing.iter().filter(|n| p.pieces.contains_key(n)).count();
            s.push_str(&format!(
                " [{id} seed={} remote={} holds_missing={holds} inflight={} busy={} elsewhere={}]",
                p.seed,
                p.remote,
                p.inflight,
                p.busy_until.is_some_and(|t| t > now),
                p.elsewhere.values().filter(|t| **t > now).count()
            ));
        }
        s
    }

    fn input(&mut self, now: Nanos, input: dl::Input<NoError>) {
        self.core.handle(self.clock.at(now), input);
    }

    /// A scheduler message about this task.
    pub fn deliver(&mut self, now: Nanos, msg: ToPeer) {
        let ev = match msg {
            ToPeer::Meta { content_length } => dl::SchedulerEvent::Meta { content_length },
            ToPeer::Parents(ps) => dl::SchedulerEvent::Parents(
                ps.into_iter()
                    .map(|p| dl::ParentInfo {
                        id: p.peer_id,
                        addr: p.addr,
                        seed: p.seed,
                        remote: p.remote,
                        rdma: p.rdma,
                        pieces: p.pieces,
                    })
                    .collect(),
            ),
            ToPeer::Available {
                parent,
                num,
                digest,
            } => dl::SchedulerEvent::Available {
                parent,
                num,
                digest,
            },
            ToPeer::ParentGone { parent } => dl::SchedulerEvent::ParentGone { parent },
            ToPeer::BackToSource { reason } => dl::SchedulerEvent::BackToSource {
                reason: reason.as_str().to_string(),
            },
            // The seed order is the world's (it starts a download); the
            // origin has no rate budget in the simulation, and there are
            // no cache jobs.
            ToPeer::SeedTask { .. }
            | ToPeer::OriginBudget { .. }
            | ToPeer::Preheat { .. }
            | ToPeer::DeleteCache => return,
        };
        self.input(now, dl::Input::Scheduler(ev));
    }

    pub fn opened(&mut self, now: Nanos) {
        self.input(now, dl::Input::Opened(Ok(Vec::new())));
    }

    pub fn probed(&mut self, now: Nanos, content_length: u64) {
        self.input(now, dl::Input::Probed(Ok(content_length)));
    }

    pub fn whole_digest(&mut self, now: Nanos, digest: [u8; 32]) {
        self.input(now, dl::Input::WholeDigest(Ok(digest)));
    }

    pub fn timeout(&mut self, now: Nanos) {
        self.input(now, dl::Input::Timeout);
    }

    /// A piece fetch ended: `from` is `None` for the origin.
    pub fn piece(
        &mut self,
        now: Nanos,
        num: u32,
        from: Option<&str>,
        bytes: u64,
        took: Nanos,
        outcome: Outcome,
    ) {
        let outcome = match outcome {
            Outcome::Verified {
                digest,
                parent_load,
            } => dl::PieceOutcome::Verified {
                digest,
                parent_load,
            },
            Outcome::Busy => dl::PieceOutcome::Busy,
            Outcome::NotFound => dl::PieceOutcome::NotFound,
            Outcome::Elsewhere { retry_in } => dl::PieceOutcome::Elsewhere { retry_in },
            Outcome::Corrupt => dl::PieceOutcome::Corrupt {
                reason: "digest mismatch".into(),
            },
            Outcome::ParentFailed => dl::PieceOutcome::ParentFailed {
                reason: "connection reset".into(),
            },
        };
        let report = dl::PieceReport {
            num,
            from: match from {
                Some(p) => dl::Source::Parent(p.to_string()),
                None => dl::Source::Origin,
            },
            bytes,
            took: Duration::from_nanos(took),
            outcome,
        };
        self.input(now, dl::Input::Piece(report));
    }

    /// The next thing to do, if any.
    pub fn next_action(&mut self) -> Option<Action> {
        let cmd = self.core.poll_command()?;
        let task = self.task;
        Some(match cmd {
            dl::Command::Send(m) => Action::Send(match m {
                dl::ToScheduler::Register {
                    have,
                    content_length,
                } => PeerEvent::Register {
                    task,
                    url: self.url.clone(),
                    have,
                    content_length: (content_length > 0).then_some(content_length),
                    // The simulated tasks are keyed by URL.
                    digest: None,
                },
                dl::ToScheduler::Meta { content_length } => PeerEvent::Meta {
                    task,
                    content_length,
                },
                dl::ToScheduler::PieceDone { num, digest } => {
                    PeerEvent::PieceDone { task, num, digest }
                }
                dl::ToScheduler::PieceFailed { num, parent, .. } => {
                    PeerEvent::PieceFailed { task, num, parent }
                }
                dl::ToScheduler::SourceRequest { .. } => PeerEvent::SourceRequest { task },
                dl::ToScheduler::TaskDone => PeerEvent::TaskDone { task },
                dl::ToScheduler::TaskLeft => PeerEvent::TaskLeft { task },
            }),
            dl::Command::Open { .. } => Action::Open,
            dl::Command::Probe => Action::Probe,
            dl::Command::Fetch(f) => match f.from {
                dl::FetchFrom::Origin => Action::FetchOrigin { num: f.num },
                dl::FetchFrom::Parent { id, expected, .. } => Action::FetchParent {
                    num: f.num,
                    parent: id,
                    expected,
                },
            },
            dl::Command::CheckWholeDigest => Action::CheckWholeDigest,
            // Nothing on disk to delete in a simulation.
            dl::Command::Discard => return self.next_action(),
            dl::Command::Finish(r) => Action::Finished(r.map_err(|f| format!("{f:?}"))),
        })
    }

    /// When the core wants [`PeerDownload::timeout`] if nothing else happens.
    pub fn poll_timeout(&self) -> Option<Nanos> {
        self.core.poll_timeout().map(|t| self.clock.nanos(t))
    }

    /// Pieces in flight now.
    pub fn in_flight(&self) -> usize {
        self.core.in_flight()
    }

    /// Candidate parents known now.
    pub fn parent_count(&self) -> usize {
        self.core.parent_count()
    }

    pub fn is_finished(&self) -> bool {
        self.core.is_finished()
    }

    pub fn source_requests(&self) -> u32 {
        self.core.source_requests()
    }
}
