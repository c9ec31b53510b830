//! One task's download: the loop that turns scheduler hints into verified
//! pieces.
//!
//! A task starts either in *swarm* mode (register with the scheduler, wait
//! for its metadata and parents, fetch pieces from parents by phase-2 choice)
//! or in *source* mode (probe the origin, fetch pieces with ranged GETs).
//! Swarm mode turns into source mode when the scheduler says so
//! (`BackToSource`), or, when back-to-source is allowed, after no piece
//! arrived for the stall timeout. Every piece is verified before it counts;
//! a parent that sends a bad piece or breaks is dropped and reported.

use crate::engine::EngineCtx;
use crate::origin::{OriginAuth, OriginError};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use weightcast_download_core::parent_choice::{ParentChoice, ParentView};
use weightcast_proto::pb::{
    self, peer_message::Msg as PeerMsg, scheduler_message::Msg as SchedMsg,
};
use weightcast_proto::transport::{ParentAddr, TransportError};
use weightcast_store::{RunningSha256, StoreError, TaskFile};
use weightcast_types::piece::{digest_from_slice, PieceDigest};
use weightcast_types::{PeerId, TaskId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Swarm,
    Source,
}

#[derive(Debug, Clone)]
pub struct DownloadSpec {
    pub id: TaskId,
    pub url: String,
    /// Whole-file sha256 the result must have.
    pub digest: Option<[u8; 32]>,
    pub mode: Mode,
    pub back_to_source: bool,
    /// Credentials for the origin of `url` (a gated repo's token).
    pub auth: Option<OriginAuth>,
    /// `false`: a private download, never announced to the scheduler (the
    /// file is small, or only this node's credentials can fetch it).
    pub swarm: bool,
}

/// Live numbers of one download, for progress output.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub total: Option<u64>,
    pub done: u64,
    pub from_peers: u64,
    pub from_origin: u64,
    /// Bytes already verified on disk when the download started.
    pub resumed: u64,
}

#[derive(Debug)]
pub enum TaskEvent {
    Scheduler(SchedMsg),
    Reconnected,
    /// A reader streams the file and waits on this piece: fetch it and the
    /// few after it first.
    Wanted(u32),
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(transparent)]
    Origin(#[from] OriginError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("digest mismatch for {url}: expected sha256:{expected}, got sha256:{got}")]
    DigestMismatch {
        url: String,
        expected: String,
        got: String,
    },
    #[error(
        "no peer served {url} for {secs} s and back-to-source is disabled (--no-back-to-source)"
    )]
    Stalled { url: String, secs: u64 },
    /// A download shared with another `get` failed; the message is its error.
    #[error("{0}")]
    Failed(String),
    #[error("the scheduler told this peer to fetch {url} from the origin, but back-to-source is disabled (--no-back-to-source)")]
    SourceForbidden { url: String },
}

/// What a finished download hands back.
pub struct Downloaded {
    pub file: Arc<TaskFile>,
    pub progress: Progress,
}

enum PieceOutcome {
    Ok {
        digest: PieceDigest,
        load: Option<u32>,
    },
    Transport(TransportError),
    Origin(OriginError),
    Digest(StoreError),
}

struct PieceResult {
    num: u32,
    bytes: u64,
    /// `None`: the origin.
    parent: Option<PeerId>,
    took: Duration,
    outcome: PieceOutcome,
}

struct Download {
    ctx: Arc<EngineCtx>,
    /// Set when the result must match `spec.digest`.
    whole: Option<RunningSha256>,
    spec: DownloadSpec,
    mode: Mode,
    file: Option<Arc<TaskFile>>,
    choice: ParentChoice,
    inflight: JoinSet<PieceResult>,
    inflight_pieces: BTreeSet<u32>,
    /// The piece a streaming reader waits on.
    wanted: Option<u32>,
    last_progress: Instant,
    progress: Progress,
    progress_tx: watch::Sender<Progress>,
}

pub async fn run(
    ctx: Arc<EngineCtx>,
    spec: DownloadSpec,
    mut events: mpsc::UnboundedReceiver<TaskEvent>,
    progress_tx: watch::Sender<Progress>,
) -> Result<Downloaded, DownloadError> {
    let mut d = Download {
        whole: spec.digest.map(|_| RunningSha256::new()),
        choice: ParentChoice::new(ctx.config.pieces_per_parent, &ctx.peer_id),
        mode: spec.mode,
        ctx,
        spec,
        file: None,
        inflight: JoinSet::new(),
        inflight_pieces: BTreeSet::new(),
        wanted: None,
        last_progress: Instant::now(),
        progress: Progress::default(),
        progress_tx,
    };
    let r = d.drive(&mut events).await;
    if r.is_err() {
        d.send(PeerMsg::TaskLeft(pb::TaskLeft {
            task_id: d.spec.id.to_hex(),
        }));
    }
    r
}

impl Download {
    fn send(&self, m: PeerMsg) {
        if let (Some(link), true) = (&self.ctx.link, self.spec.swarm) {
            link.send(m);
        }
    }

    fn register(&self) {
        let (have, content_length) = match &self.file {
            Some(f) => (
                f.verified_pieces()
                    .into_iter()
                    .map(|(num, d)| pb::Piece {
                        num,
                        digest: d.to_vec(),
                    })
                    .collect(),
                f.layout.content_length,
            ),
            None => (Vec::new(), 0),
        };
        self.send(PeerMsg::Register(pb::RegisterTask {
            task_id: self.spec.id.to_hex(),
            url: self.spec.url.clone(),
            have,
            content_length,
        }));
    }

    fn open(&mut self, len: u64) -> Result<(), DownloadError> {
        if self.file.is_some() {
            return Ok(());
        }
        let f = self
            .ctx
            .store
            .open_or_create(self.spec.id, &self.spec.url, len)?;
        self.progress.total = Some(len);
        self.progress.resumed = f.verified_bytes();
        self.progress.done = self.progress.resumed;
        // Pieces resumed from disk make this peer a parent at once.
        for (num, d) in f.verified_pieces() {
            self.send(PeerMsg::PieceDone(pb::PieceDone {
                task_id: self.spec.id.to_hex(),
                num,
                digest: d.to_vec(),
            }));
        }
        self.file = Some(f);
        self.progress_tx.send_replace(self.progress.clone());
        Ok(())
    }

    /// Fetches from the origin from now on, learning the length if needed.
    /// `why` is logged when a swarm download turns to the origin; `None` for
    /// a planned source (a seed, or no swarm).
    async fn go_to_source(&mut self, why: Option<&str>) -> Result<(), DownloadError> {
        if !self.spec.back_to_source {
            return Err(DownloadError::SourceForbidden {
                url: self.spec.url.clone(),
            });
        }
        if let (Some(why), Mode::Swarm) = (why, self.mode) {
            tracing::warn!(url = %self.spec.url, "{why}; fetching from the origin");
        }
        self.mode = Mode::Source;
        if self.file.is_none() {
            let probe = self
                .ctx
                .origin
                .probe(&self.spec.url, self.spec.auth.as_ref())
                .await?;
            self.open(probe.content_length)?;
        }
        let len = self.file.as_ref().map_or(0, |f| f.layout.content_length);
        self.send(PeerMsg::Meta(pb::TaskMeta {
            task_id: self.spec.id.to_hex(),
            content_length: len,
        }));
        Ok(())
    }

    async fn drive(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<TaskEvent>,
    ) -> Result<Downloaded, DownloadError> {
        let swarm = self.ctx.link.is_some() && self.spec.swarm;
        if swarm {
            // A task on disk from an earlier run resumes with what it has.
            if let Some(meta) = self.ctx.store.peek_meta(&self.spec.id) {
                self.open(meta.content_length)?;
            }
            self.register();
        }
        if self.mode == Mode::Source {
            self.go_to_source(None).await?;
        }
        let stall = self.ctx.config.stall_timeout;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            if let Some(f) = &self.file {
                if f.is_complete() && self.inflight.is_empty() {
                    break;
                }
            }
            self.fill();
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.on_event(ev).await?,
                    // The engine is shutting down.
                    None => return Err(DownloadError::Stalled { url: self.spec.url.clone(), secs: 0 }),
                },
                Some(res) = self.inflight.join_next(), if !self.inflight.is_empty() => {
                    if let Ok(res) = res {
                        self.on_piece(res)?;
                    }
                }
                _ = tick.tick() => {
                    if self.last_progress.elapsed() > stall && self.mode == Mode::Swarm {
                        if self.spec.back_to_source {
                            self.go_to_source(Some(&format!("no piece arrived from peers for {} s", stall.as_secs()))).await?;
                        } else {
                            return Err(DownloadError::Stalled { url: self.spec.url.clone(), secs: stall.as_secs() });
                        }
                    }
                }
            }
        }
        let file = self.file.clone().expect("complete implies open");
        if let Some(want) = self.spec.digest {
            let f = file.clone();
            let whole = self.whole.take().unwrap_or_default();
            let got = tokio::task::spawn_blocking(move || {
                let got = whole.finish(&f);
                f.remember_sha256(got);
                got
            })
            .await
            .unwrap_or([0; 32]);
            if got != want {
                // Evicted: its RDMA region goes with it.
                if let Some(node) = self.ctx.peers.rdma_node() {
                    node.evict(&self.spec.id);
                }
                self.ctx.store.discard(&self.spec.id);
                return Err(DownloadError::DigestMismatch {
                    url: self.spec.url.clone(),
                    expected: hex::encode(want),
                    got: hex::encode(got),
                });
            }
        }
        self.send(PeerMsg::TaskDone(pb::TaskDone {
            task_id: self.spec.id.to_hex(),
        }));
        Ok(Downloaded {
            file,
            progress: self.progress.clone(),
        })
    }

    async fn on_event(&mut self, ev: TaskEvent) -> Result<(), DownloadError> {
        match ev {
            TaskEvent::Wanted(num) => self.wanted = Some(num),
            TaskEvent::Reconnected => {
                self.choice.parents.clear();
                self.register();
                if self.mode == Mode::Source {
                    if let Some(f) = &self.file {
                        self.send(PeerMsg::Meta(pb::TaskMeta {
                            task_id: self.spec.id.to_hex(),
                            content_length: f.layout.content_length,
                        }));
                    }
                }
            }
            TaskEvent::Scheduler(m) => match m {
                SchedMsg::Meta(m) => self.open(m.content_length)?,
                SchedMsg::Parents(p) => {
                    for parent in p.parents {
                        if !self.ctx.peers.accepts_parent(parent.rdma) {
                            tracing::debug!(task = %self.spec.id, parent = %parent.peer_id, "skipping a parent without RDMA (--transport rdma)");
                            continue;
                        }
                        let mut v = ParentView::new(parent.addr, parent.seed);
                        v.remote = parent.remote;
                        v.rdma = parent.rdma;
                        for piece in parent.pieces {
                            if let Some(d) = digest_from_slice(&piece.digest) {
                                v.pieces.insert(piece.num, d);
                            }
                        }
                        tracing::debug!(task = %self.spec.id, parent = %parent.peer_id, pieces = v.pieces.len(), "new parent");
                        self.choice.parents.insert(parent.peer_id, v);
                    }
                }
                SchedMsg::Available(a) => {
                    if let (Some(p), Some(piece)) =
                        (self.choice.parents.get_mut(&a.parent_id), a.piece)
                    {
                        if let Some(d) = digest_from_slice(&piece.digest) {
                            p.pieces.insert(piece.num, d);
                        }
                    }
                }
                SchedMsg::ParentGone(g) => {
                    self.choice.parents.remove(&g.parent_id);
                }
                SchedMsg::BackToSource(b) => {
                    self.go_to_source(Some(&format!("scheduler: {}", b.reason)))
                        .await?;
                }
                SchedMsg::SeedTask(_) => {}
            },
        }
        Ok(())
    }

    /// Starts piece fetches until the pipeline is full or nothing is fetchable.
    fn fill(&mut self) {
        let Some(file) = self.file.clone() else {
            return;
        };
        let max = self.ctx.config.pieces_in_flight;
        // Nothing is verified while this loop runs: one snapshot serves every pick.
        let missing = file.missing_pieces();
        while self.inflight.len() < max {
            let next = self.next_piece(&missing, |n| file.layout.piece_len(n));
            let Some((num, parent)) = next else { return };
            // One download per task per process: a piece that is neither
            // verified nor in flight here is always free to write.
            let Some(mut write) = file.begin_write(num) else {
                return;
            };
            let bytes = file.layout.piece_len(num);
            let range = file.layout.range(num).expect("piece in range");
            self.inflight_pieces.insert(num);
            let ctx = self.ctx.clone();
            match parent {
                None => {
                    let url = self.spec.url.clone();
                    let auth = self.spec.auth.clone();
                    self.inflight.spawn(async move {
                        let t0 = Instant::now();
                        let outcome = match ctx
                            .origin
                            .fetch_range(&url, range, write.buf(), auth.as_ref())
                            .await
                        {
                            Ok(_) => match write.commit(None) {
                                Ok(digest) => PieceOutcome::Ok { digest, load: None },
                                Err(e) => PieceOutcome::Digest(e),
                            },
                            Err(e) => PieceOutcome::Origin(e),
                        };
                        PieceResult {
                            num,
                            bytes,
                            parent: None,
                            took: t0.elapsed(),
                            outcome,
                        }
                    });
                }
                Some(parent) => {
                    let view = &self.choice.parents[&parent];
                    let addr = ParentAddr(view.addr.clone());
                    let parent_rdma = view.rdma;
                    let expected = view.pieces.get(&num).copied();
                    self.choice.started(&parent, bytes);
                    self.inflight.spawn(async move {
                        let t0 = Instant::now();
                        let outcome = match ctx.peers.fetch(&addr, parent_rdma, write).await {
                            // The digest is checked whatever carried the bytes.
                            (Ok((report, _carrier)), write) => match write.commit(expected) {
                                Ok(digest) => PieceOutcome::Ok {
                                    digest,
                                    load: Some(report.parent_load),
                                },
                                Err(e) => PieceOutcome::Digest(e),
                            },
                            (Err(e), _) => PieceOutcome::Transport(e),
                        };
                        PieceResult {
                            num,
                            bytes,
                            parent: Some(parent),
                            took: t0.elapsed(),
                            outcome,
                        }
                    });
                }
            }
        }
    }

    /// The next piece to fetch and from where (`None`: the origin). Pieces a
    /// streaming reader is about to need come first; then, from the origin,
    /// front to back, and from peers, by phase-2 choice.
    fn next_piece(
        &mut self,
        missing: &[u32],
        piece_len: impl Fn(u32) -> u64,
    ) -> Option<(u32, Option<PeerId>)> {
        let inflight = &self.inflight_pieces;
        let free = || missing.iter().copied().filter(|n| !inflight.contains(n));
        let window = self.ctx.config.pieces_in_flight as u32;
        let urgent = self.wanted.map(|w| w..w.saturating_add(window));
        let is_urgent = |n: &u32| urgent.as_ref().is_some_and(|r| r.contains(n));
        match self.mode {
            Mode::Source => free()
                .find(is_urgent)
                .or_else(|| free().next())
                .map(|n| (n, None)),
            Mode::Swarm => {
                let now = Instant::now();
                let first = match urgent {
                    Some(_) => self.choice.pick(free().filter(is_urgent), &piece_len, now),
                    None => None,
                };
                first
                    .or_else(|| self.choice.pick(free(), &piece_len, now))
                    .map(|(n, p)| (n, Some(p)))
            }
        }
    }

    fn on_piece(&mut self, r: PieceResult) -> Result<(), DownloadError> {
        self.inflight_pieces.remove(&r.num);
        let m = &self.ctx.metrics;
        let ok = matches!(r.outcome, PieceOutcome::Ok { .. });
        if let Some(p) = &r.parent {
            let load = match &r.outcome {
                PieceOutcome::Ok { load, .. } => *load,
                _ => None,
            };
            self.choice.finished(p, r.bytes, ok.then_some(r.took), load);
        }
        match r.outcome {
            PieceOutcome::Ok { digest, .. } => {
                // About one piece of hashing per piece that arrives keeps
                // pace with the download; a backlog waits for the end.
                if let (Some(w), Some(f)) = (&mut self.whole, &self.file) {
                    w.advance(f, f.layout.piece_size);
                }
                self.last_progress = Instant::now();
                self.progress.done += r.bytes;
                if r.parent.is_some() {
                    self.progress.from_peers += r.bytes;
                    m.inc(&m.peer_bytes, r.bytes);
                    m.inc(&m.pieces_from_peers, 1);
                } else {
                    self.progress.from_origin += r.bytes;
                    m.inc(&m.pieces_from_origin, 1);
                }
                self.progress_tx.send_replace(self.progress.clone());
                self.send(PeerMsg::PieceDone(pb::PieceDone {
                    task_id: self.spec.id.to_hex(),
                    num: r.num,
                    digest: digest.to_vec(),
                }));
            }
            PieceOutcome::Origin(e) => {
                m.inc(&m.piece_failures, 1);
                return Err(e.into());
            }
            PieceOutcome::Digest(e) => {
                m.inc(&m.piece_failures, 1);
                m.inc(&m.digest_mismatches, 1);
                match r.parent {
                    Some(p) => {
                        tracing::warn!(task = %self.spec.id, parent = %p, error = %e, "dropping parent that sent a bad piece");
                        self.drop_parent(&p, r.num, &e.to_string());
                    }
                    None => return Err(e.into()),
                }
            }
            PieceOutcome::Transport(e) => {
                m.inc(&m.piece_failures, 1);
                let Some(p) = r.parent else { return Ok(()) };
                match e {
                    TransportError::Busy(_) => {
                        if let Some(v) = self.choice.parents.get_mut(&p) {
                            v.busy_until = Some(Instant::now() + Duration::from_millis(100));
                        }
                    }
                    TransportError::NotFound(_) => {
                        if let Some(v) = self.choice.parents.get_mut(&p) {
                            v.pieces.remove(&r.num);
                        }
                    }
                    e => {
                        tracing::warn!(task = %self.spec.id, parent = %p, error = %e, "parent failed; its pieces come from elsewhere");
                        self.drop_parent(&p, r.num, &e.to_string());
                    }
                }
            }
        }
        Ok(())
    }

    fn drop_parent(&mut self, parent: &str, num: u32, reason: &str) {
        self.choice.parents.remove(parent);
        self.send(PeerMsg::PieceFailed(pb::PieceFailed {
            task_id: self.spec.id.to_hex(),
            num,
            parent_id: parent.to_string(),
            reason: reason.to_string(),
        }));
    }
}
