//! The tokio shell around one download: it feeds the sans-IO core
//! ([`weightcast_download_core::Download`]) what happens — scheduler
//! messages, finished piece fetches, a streaming reader's wishes, timers,
//! shutdown — and carries out what the core decides against the real store,
//! transports, origin and scheduler link. Every decision lives in the core;
//! this file only does I/O.
//!
//! Every task it spawns (piece fetches, the origin probe, opening the task
//! file, the whole-file hash) lives in one `JoinSet`, so a panicked fetch
//! comes back as a lost piece to fetch again rather than a piece stuck "in
//! flight", a panicked hasher is an internal error rather than a digest
//! mismatch, and nothing outlives the download.

use crate::metrics::EngineMetrics;
use crate::peer_transport::PeerTransport;
use crate::request::{origin_kind, store_kind, ErrorKind};
use crate::scheduler_link::SchedulerLink;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::{Id, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use weightcast_download_core::{
    self as core, Command, Failure, FetchFrom, Input, PieceOutcome, PieceReport, SchedulerEvent,
    Source, ToScheduler,
};
use weightcast_origin::{OriginAuth, OriginError, OriginFetcher};
use weightcast_proto::pb::{self, peer_message::Msg as PeerMsg};
use weightcast_proto::transport::{ParentAddr, TransportError};
use weightcast_store::{RunningSha256, Store, StoreError, TaskFile};
use weightcast_types::TaskId;

pub use weightcast_download_core::{Mode, Progress};

/// What every download of an engine shares.
pub struct DownloadDeps {
    /// This peer's id (it seeds the peer's own piece order).
    pub peer_id: String,
    pub config: core::Config,
    /// How long a shutdown waits for pieces in flight before aborting them.
    pub shutdown_grace: Duration,
    pub store: Arc<Store>,
    pub origin: OriginFetcher,
    /// Piece bytes from parents: RDMA or TCP per parent.
    pub peers: PeerTransport,
    pub link: Option<Arc<SchedulerLink>>,
    pub metrics: Arc<EngineMetrics>,
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

/// What reaches a running download from outside.
#[derive(Debug)]
pub enum TaskEvent {
    Scheduler(SchedulerEvent),
    /// The scheduler stream came back.
    Reconnected,
    /// The scheduler stream broke.
    SchedulerLost,
    /// A reader streams the file and waits on this piece.
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
    #[error("{reason}, but back-to-source is disabled for {url} (--no-back-to-source)")]
    SourceForbidden { url: String, reason: String },
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("internal error while downloading {url}: {what}")]
    Internal { url: String, what: String },
}

impl DownloadError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            DownloadError::Origin(e) => origin_kind(e),
            DownloadError::Store(e) => store_kind(e),
            DownloadError::DigestMismatch { .. } => ErrorKind::DigestMismatch,
            DownloadError::Stalled { .. } => ErrorKind::Stalled,
            DownloadError::SourceForbidden { .. } => ErrorKind::SourceForbidden,
            DownloadError::ShuttingDown => ErrorKind::ShuttingDown,
            DownloadError::Internal { .. } => ErrorKind::Internal,
        }
    }
}

/// The shell's own failures, carried through the core untouched.
#[derive(Debug)]
enum ShellError {
    Origin(OriginError),
    Store(StoreError),
    /// A task of the shell panicked.
    Panicked(String),
}

/// What a finished spawned task hands back.
enum Joined {
    Piece(PieceReport<ShellError>),
    Opened(Result<Arc<TaskFile>, StoreError>),
    Probed(Result<u64, OriginError>),
    Hashed([u8; 32]),
}

/// What a spawned task was, to answer for it if it panics.
enum Spawned {
    Piece { num: u32, from: Source, bytes: u64 },
    Open,
    Probe,
    Hash,
}

struct Shell {
    deps: Arc<DownloadDeps>,
    spec: DownloadSpec,
    file: Option<Arc<TaskFile>>,
    /// Fed piece by piece in file order when the result must match a digest,
    /// so the final check hashes almost nothing.
    whole: Option<RunningSha256>,
    tasks: JoinSet<Joined>,
    spawned: HashMap<Id, Spawned>,
    /// Inputs produced while carrying out commands (a piece that could not
    /// be claimed), fed to the core after the current batch.
    immediate: Vec<Input<ShellError>>,
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// Runs one download to its end: the verified file, or why not.
pub async fn run(
    deps: Arc<DownloadDeps>,
    spec: DownloadSpec,
    mut events: mpsc::Receiver<TaskEvent>,
    progress: watch::Sender<Progress>,
    cancel: CancellationToken,
) -> Result<Arc<TaskFile>, DownloadError> {
    let announce = deps.link.is_some() && spec.swarm;
    let core_spec = core::Spec {
        peer_id: deps.peer_id.clone(),
        digest: spec.digest,
        mode: spec.mode,
        back_to_source: spec.back_to_source,
        announce,
        // A task on disk from an earlier run resumes with what it has.
        resume_length: if announce {
            deps.store.peek_meta(&spec.id).map(|m| m.content_length)
        } else {
            None
        },
        scheduler_up: deps.link.as_ref().is_some_and(|l| l.is_connected()),
    };
    let mut download = core::Download::<ShellError>::new(deps.config.clone(), core_spec, now());
    let mut shell = Shell {
        whole: spec.digest.map(|_| RunningSha256::new()),
        deps,
        spec,
        file: None,
        tasks: JoinSet::new(),
        spawned: HashMap::new(),
        immediate: Vec::new(),
    };
    let mut abort_at: Option<Instant> = None;
    let publish = |p: &Progress| {
        progress.send_if_modified(|old| {
            let changed = old != p;
            if changed {
                *old = p.clone();
            }
            changed
        });
    };
    loop {
        while let Some(cmd) = download.poll_command() {
            if let Some(end) = shell.execute(cmd).await {
                publish(download.progress());
                // Anything still running (after a failure) is dropped here:
                // every transport leaves its destination safe when dropped.
                shell.tasks.abort_all();
                return end;
            }
        }
        if !shell.immediate.is_empty() {
            for input in std::mem::take(&mut shell.immediate) {
                download.handle(now(), input);
            }
            continue;
        }
        publish(download.progress());
        let wake = download.poll_timeout().map(Instant::from_std);
        tokio::select! {
            _ = cancel.cancelled(), if abort_at.is_none() => {
                abort_at = Some(Instant::now() + shell.deps.shutdown_grace);
                download.handle(now(), Input::Shutdown);
            }
            ev = events.recv() => match ev {
                Some(ev) => download.handle(now(), match ev {
                    TaskEvent::Scheduler(s) => Input::Scheduler(s),
                    TaskEvent::Reconnected => Input::Reconnected,
                    TaskEvent::SchedulerLost => Input::SchedulerLost,
                    TaskEvent::Wanted(n) => Input::Wanted(n),
                }),
                // The engine let go of this run: stop as on shutdown.
                None => {
                    abort_at.get_or_insert(Instant::now() + shell.deps.shutdown_grace);
                    download.handle(now(), Input::Shutdown);
                }
            },
            Some(joined) = shell.tasks.join_next_with_id(), if !shell.tasks.is_empty() => {
                let input = shell.joined(joined);
                download.handle(now(), input);
            }
            _ = sleep_until(wake), if wake.is_some() => download.handle(now(), Input::Timeout),
            _ = sleep_until(abort_at), if abort_at.is_some() => {
                tracing::warn!(task = %shell.spec.id, in_flight = shell.tasks.len(), "shutdown grace over; aborting the pieces still in flight");
                shell.tasks.abort_all();
                return Err(DownloadError::ShuttingDown);
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Shell {
    fn track(
        &mut self,
        what: Spawned,
        fut: impl std::future::Future<Output = Joined> + Send + 'static,
    ) {
        // Piece fetches and origin reads stay inside the download's span.
        let handle = self.tasks.spawn(tracing::Instrument::in_current_span(fut));
        self.spawned.insert(handle.id(), what);
    }

    async fn send(&self, m: ToScheduler) {
        let Some(link) = &self.deps.link else { return };
        let task_id = self.spec.id.to_hex();
        let piece = |num: u32, digest: [u8; 32]| pb::Piece {
            num,
            digest: digest.to_vec(),
        };
        let msg = match m {
            ToScheduler::Register {
                have,
                content_length,
            } => PeerMsg::Register(pb::RegisterTask {
                task_id,
                url: self.spec.url.clone(),
                have: have.into_iter().map(|(n, d)| piece(n, d)).collect(),
                content_length,
                digest: self.spec.digest.map(|d| d.to_vec()).unwrap_or_default(),
                // The scheduler's span for this task joins the download's trace.
                traceparent: weightcast_telemetry::traceparent().unwrap_or_default(),
            }),
            ToScheduler::Meta { content_length } => PeerMsg::Meta(pb::TaskMeta {
                task_id,
                content_length,
            }),
            ToScheduler::PieceDone { num, digest } => PeerMsg::PieceDone(pb::PieceDone {
                task_id,
                num,
                digest: digest.to_vec(),
            }),
            ToScheduler::PieceFailed {
                num,
                parent,
                reason,
            } => PeerMsg::PieceFailed(pb::PieceFailed {
                task_id,
                num,
                parent_id: parent,
                reason,
            }),
            ToScheduler::SourceRequest { reason } => {
                tracing::info!(task = %self.spec.id, %reason, "asking the scheduler for leave to fetch from the origin");
                PeerMsg::SourceRequest(pb::SourceRequest { task_id, reason })
            }
            ToScheduler::TaskDone => PeerMsg::TaskDone(pb::TaskDone { task_id }),
            ToScheduler::TaskLeft => PeerMsg::TaskLeft(pb::TaskLeft { task_id }),
        };
        link.send(msg).await;
    }

    /// Carries out one command; `Some` when the download is over.
    async fn execute(
        &mut self,
        cmd: Command<ShellError>,
    ) -> Option<Result<Arc<TaskFile>, DownloadError>> {
        match cmd {
            Command::Send(m) => self.send(m).await,
            Command::Open { content_length } => {
                let (store, id, url) =
                    (self.deps.store.clone(), self.spec.id, self.spec.url.clone());
                // Resuming re-hashes what is on disk: not on an async worker.
                self.track(Spawned::Open, async move {
                    let opened = tokio::task::spawn_blocking(move || {
                        store.open_or_create(id, &url, content_length)
                    })
                    .await;
                    Joined::Opened(opened.unwrap_or_else(|e| {
                        Err(StoreError::Io {
                            path: std::path::PathBuf::new(),
                            source: std::io::Error::other(e),
                        })
                    }))
                });
            }
            Command::Probe => {
                let deps = self.deps.clone();
                let (url, auth) = (self.spec.url.clone(), self.spec.auth.clone());
                self.track(Spawned::Probe, async move {
                    Joined::Probed(
                        deps.origin
                            .stat(&url, auth.as_ref())
                            .await
                            .map(|p| p.content_length),
                    )
                });
            }
            Command::Fetch(f) => self.fetch(f),
            Command::CheckWholeDigest => {
                let Some(file) = self.file.clone() else {
                    self.immediate
                        .push(Input::WholeDigest(Err(ShellError::Panicked(
                            "no file to hash".into(),
                        ))));
                    return None;
                };
                let whole = self.whole.take().unwrap_or_default();
                self.track(Spawned::Hash, async move {
                    let f = file.clone();
                    match tokio::task::spawn_blocking(move || whole.finish(&f)).await {
                        Ok(digest) => {
                            file.remember_sha256(digest);
                            Joined::Hashed(digest)
                        }
                        // Re-raised so the JoinSet reports it as a panic.
                        Err(e) => std::panic::resume_unwind(e.into_panic()),
                    }
                });
            }
            Command::Discard => self.discard(),
            Command::Finish(r) => return Some(self.finish(r)),
        }
        None
    }

    /// Deletes the task's files; its RDMA region goes with them.
    fn discard(&self) {
        if let Some(node) = self.deps.peers.rdma_node() {
            node.evict(&self.spec.id);
        }
        self.deps.store.discard(&self.spec.id);
    }

    fn finish(&self, r: Result<(), Failure<ShellError>>) -> Result<Arc<TaskFile>, DownloadError> {
        let url = self.spec.url.clone();
        match r {
            Ok(()) => self.file.clone().ok_or(DownloadError::Internal {
                url,
                what: "finished without a file".into(),
            }),
            Err(Failure::Shell(ShellError::Origin(e))) => {
                if matches!(e, OriginError::Changed { .. }) {
                    // Its pieces are of two versions: none may be resumed
                    // or served.
                    self.discard();
                }
                Err(DownloadError::Origin(e))
            }
            Err(Failure::Shell(ShellError::Store(e))) => Err(DownloadError::Store(e)),
            Err(Failure::Shell(ShellError::Panicked(what))) => {
                Err(DownloadError::Internal { url, what })
            }
            Err(Failure::DigestMismatch { expected, got }) => Err(DownloadError::DigestMismatch {
                url,
                expected: hex::encode(expected),
                got: hex::encode(got),
            }),
            Err(Failure::Stalled { secs }) => Err(DownloadError::Stalled { url, secs }),
            Err(Failure::SourceForbidden { reason }) => {
                Err(DownloadError::SourceForbidden { url, reason })
            }
            Err(Failure::ShuttingDown) => Err(DownloadError::ShuttingDown),
        }
    }

    fn fetch(&mut self, f: core::Fetch) {
        let num = f.num;
        let from = match &f.from {
            FetchFrom::Origin => Source::Origin,
            FetchFrom::Parent { id, .. } => Source::Parent(id.clone()),
        };
        let Some(file) = self.file.clone() else {
            self.immediate
                .push(lost(num, from, 0, "the task file is not open"));
            return;
        };
        let bytes = file.layout.piece_len(num);
        // One download per task per process: a piece that is neither
        // verified nor in flight here is always free to write.
        let Some(mut write) = file.begin_write(num) else {
            self.immediate
                .push(lost(num, from, bytes, "the piece could not be claimed"));
            return;
        };
        let Some(range) = file.layout.range(num) else {
            self.immediate.push(lost(num, from, bytes, "no such piece"));
            return;
        };
        let deps = self.deps.clone();
        let what = Spawned::Piece {
            num,
            from: from.clone(),
            bytes,
        };
        match f.from {
            FetchFrom::Origin => {
                let (url, auth) = (self.spec.url.clone(), self.spec.auth.clone());
                self.track(what, async move {
                    let t0 = Instant::now();
                    let outcome = match deps
                        .origin
                        .fetch_range(&url, range, write.buf(), auth.as_ref())
                        .await
                    {
                        Ok(_) => match write.commit(None) {
                            Ok(digest) => PieceOutcome::Verified {
                                digest,
                                parent_load: None,
                            },
                            Err(e) => PieceOutcome::OriginFailed(ShellError::Store(e)),
                        },
                        Err(e) => PieceOutcome::OriginFailed(ShellError::Origin(e)),
                    };
                    Joined::Piece(PieceReport {
                        num,
                        from,
                        bytes,
                        took: t0.elapsed(),
                        outcome,
                    })
                });
            }
            FetchFrom::Parent {
                addr,
                rdma,
                expected,
                ..
            } => {
                self.track(what, async move {
                    let t0 = Instant::now();
                    let addr = ParentAddr(addr);
                    // The write comes back whatever happened: a cancelled
                    // RDMA read keeps it until the NIC is done with it.
                    let (fetched, write) = deps.peers.fetch(&addr, rdma, write).await;
                    let outcome = match fetched {
                        // The digest is checked whatever carried the bytes.
                        Ok((report, _carrier)) => match write.commit(expected) {
                            Ok(digest) => PieceOutcome::Verified {
                                digest,
                                parent_load: Some(report.parent_load),
                            },
                            Err(e) => PieceOutcome::Corrupt {
                                reason: e.to_string(),
                            },
                        },
                        Err(TransportError::Busy(_)) => PieceOutcome::Busy,
                        Err(TransportError::NotFound(_)) => PieceOutcome::NotFound,
                        Err(TransportError::Elsewhere { retry_in, .. }) => {
                            PieceOutcome::Elsewhere { retry_in }
                        }
                        Err(e) => PieceOutcome::ParentFailed {
                            reason: weightcast_origin::error_chain(&e),
                        },
                    };
                    Joined::Piece(PieceReport {
                        num,
                        from,
                        bytes,
                        took: t0.elapsed(),
                        outcome,
                    })
                });
            }
        }
    }

    /// Turns a finished (or panicked) task into the core's input.
    fn joined(&mut self, r: Result<(Id, Joined), tokio::task::JoinError>) -> Input<ShellError> {
        let (id, joined) = match r {
            Ok((id, j)) => (id, Ok(j)),
            Err(e) => (e.id(), Err(e)),
        };
        let what = self.spawned.remove(&id);
        let joined = match joined {
            Ok(j) => j,
            Err(e) => {
                let why = if e.is_panic() {
                    "panicked"
                } else {
                    "was cancelled"
                };
                tracing::error!(task = %self.spec.id, "a download task {why}");
                let panicked = |what: &str| ShellError::Panicked(format!("{what} {why}"));
                return match what {
                    Some(Spawned::Piece { num, from, bytes }) => {
                        lost(num, from, bytes, &format!("the piece fetch {why}"))
                    }
                    Some(Spawned::Open) => Input::Opened(Err(panicked("opening the task file"))),
                    Some(Spawned::Probe) => Input::Probed(Err(panicked("the origin probe"))),
                    Some(Spawned::Hash) | None => {
                        Input::WholeDigest(Err(panicked("the whole-file hash")))
                    }
                };
            }
        };
        match joined {
            Joined::Piece(report) => {
                self.count(&report);
                if let PieceOutcome::Verified { .. } = report.outcome {
                    // Up to three pieces of hashing per piece that arrives:
                    // the hash keeps pace with the download and catches up
                    // after a hole in the prefix fills, instead of leaving
                    // the backlog for the end.
                    if let (Some(w), Some(f)) = (&mut self.whole, &self.file) {
                        w.advance(f, 3 * f.layout.piece_size);
                    }
                }
                Input::Piece(report)
            }
            Joined::Opened(r) => Input::Opened(match r {
                Ok(file) => {
                    let have = file.verified_pieces();
                    self.file = Some(file);
                    Ok(have)
                }
                Err(e) => Err(ShellError::Store(e)),
            }),
            Joined::Probed(r) => Input::Probed(r.map_err(ShellError::Origin)),
            Joined::Hashed(d) => Input::WholeDigest(Ok(d)),
        }
    }

    fn count(&self, r: &PieceReport<ShellError>) {
        let m = &self.deps.metrics;
        match (&r.outcome, &r.from) {
            (PieceOutcome::Verified { .. }, Source::Parent(_)) => {
                m.inc(&m.peer_bytes, r.bytes);
                m.inc(&m.pieces_from_peers, 1);
            }
            (PieceOutcome::Verified { .. }, Source::Origin) => m.inc(&m.pieces_from_origin, 1),
            (PieceOutcome::Corrupt { reason }, Source::Parent(p)) => {
                m.inc(&m.piece_failures, 1);
                m.inc(&m.digest_mismatches, 1);
                tracing::warn!(task = %self.spec.id, parent = %p, error = %reason, "dropping parent that sent a bad piece");
            }
            (PieceOutcome::ParentFailed { reason }, Source::Parent(p)) => {
                m.inc(&m.piece_failures, 1);
                tracing::warn!(task = %self.spec.id, parent = %p, error = %reason, "parent failed; its pieces come from elsewhere");
            }
            _ => m.inc(&m.piece_failures, 1),
        }
    }
}

fn lost(num: u32, from: Source, bytes: u64, reason: &str) -> Input<ShellError> {
    Input::Piece(PieceReport {
        num,
        from,
        bytes,
        took: Duration::ZERO,
        outcome: PieceOutcome::Lost {
            reason: reason.to_string(),
        },
    })
}
