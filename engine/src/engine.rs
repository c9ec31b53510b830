//! The engine: one per daemon (or per in-process `get`). It owns the piece
//! store, the upload server, the origin fetcher and the scheduler link, and
//! runs one [`download`](crate::download) per task.

use crate::download::{self, DownloadError, DownloadSpec, Mode, Progress, TaskEvent};
use crate::metrics::EngineMetrics;
use crate::origin::{OriginAuth, OriginConfig, OriginError, OriginFetcher};
use crate::peer_transport::{PeerTransport, StoreRdma};
use crate::scheduler_link::{LinkEvent, SchedulerLink};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use weightcast_modelpack::safetensors_check::{self, InvalidSafetensors};
use weightcast_proto::pb::{
    self, peer_message::Msg as PeerMsg, scheduler_message::Msg as SchedMsg,
};
use weightcast_rdma::{RdmaConfig, RdmaNode, TransportMode};
use weightcast_store::export::{self, ExportError, Placement};
use weightcast_store::{Store, StoreError, TaskFile, VerifiedPiece};
use weightcast_tcp::{PieceServer, PieceSource};
use weightcast_types::TaskId;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    /// Upload server address; port 0 picks one.
    pub listen: SocketAddr,
    /// Address other peers dial; defaults to the listen address, or, when
    /// that is unspecified (0.0.0.0), the address this host routes to the
    /// scheduler from.
    pub advertise_addr: Option<String>,
    pub hostname: String,
    pub zone: String,
    pub rack: String,
    pub seed: bool,
    /// Scheduler endpoint (`http://host:port`); `None`: no swarm, origin only.
    pub scheduler: Option<String>,
    /// Children the scheduler may plan onto this peer.
    pub upload_slots: u32,
    /// Pieces sent at once; more requests are answered `Busy`. Few uploads
    /// at full rate beat many slow ones: a piece can only be forwarded once
    /// it is whole.
    pub upload_concurrency: u32,
    /// Pieces in flight per task.
    pub pieces_in_flight: usize,
    /// Pieces in flight per task from one parent.
    pub pieces_per_parent: u32,
    /// With no piece from peers for this long, go to the origin (or fail).
    pub stall_timeout: Duration,
    pub origin: OriginConfig,
    /// How piece bytes move between peers (`--transport`).
    pub transport: TransportMode,
    /// RDMA device to use (`--rdma-device`); default: the first with an
    /// active port.
    pub rdma_device: Option<String>,
}

impl EngineConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            listen: "0.0.0.0:0".parse().expect("valid"),
            advertise_addr: None,
            hostname: local_hostname(),
            zone: String::new(),
            rack: String::new(),
            seed: false,
            scheduler: None,
            upload_slots: 16,
            upload_concurrency: 4,
            pieces_in_flight: 8,
            pieces_per_parent: 4,
            stall_timeout: Duration::from_secs(30),
            origin: OriginConfig::default(),
            transport: TransportMode::Auto,
            rdma_device: None,
        }
    }
}

pub fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// What the engine's parts share.
pub struct EngineCtx {
    pub config: EngineConfig,
    pub peer_id: String,
    pub store: Arc<Store>,
    pub origin: OriginFetcher,
    /// Piece bytes from parents: RDMA or TCP per parent.
    pub peers: PeerTransport,
    pub link: Option<Arc<SchedulerLink>>,
    pub metrics: Arc<EngineMetrics>,
}

/// A `get` as the CLI and the local API ask for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetRequest {
    pub url: String,
    pub output: PathBuf,
    /// Required whole-file sha256, hex.
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default = "yes")]
    pub back_to_source: bool,
    /// Credentials for the URL's origin (sent there only).
    #[serde(default)]
    pub auth: Option<OriginAuth>,
    /// A check the finished file must pass before it is exposed.
    #[serde(default)]
    pub validate: Option<Validation>,
    /// `false`: fetch from the origin without the swarm (small files that
    /// are not worth a scheduler round trip, or that only this node may read).
    #[serde(default = "yes")]
    pub swarm: bool,
    /// The caller puts the file at `output` itself, from
    /// [`GetSummary::cache_path`]: a daemon does not see the filesystem of
    /// a caller in another mount namespace (an init container).
    #[serde(default)]
    pub client_places: bool,
}

fn yes() -> bool {
    true
}

impl GetRequest {
    pub fn new(url: impl Into<String>, output: impl Into<PathBuf>) -> Self {
        Self {
            url: url.into(),
            output: output.into(),
            digest: None,
            back_to_source: true,
            auth: None,
            validate: None,
            swarm: true,
            client_places: false,
        }
    }
}

/// What a file must be before it is exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Validation {
    /// A sound `.safetensors` file (header and tensor offsets).
    Safetensors,
}

/// What a finished `get` reports (`--json` prints it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GetSummary {
    pub url: String,
    pub output: PathBuf,
    pub task_id: String,
    pub bytes: u64,
    pub seconds: f64,
    pub bytes_per_second: f64,
    pub from_peers: u64,
    pub from_origin: u64,
    /// Bytes that were already in the cache.
    pub from_cache: u64,
    /// How the file was put at `output`.
    pub placement: Option<Placement>,
    /// The verified cache file, for a caller that places it itself.
    #[serde(default)]
    pub cache_path: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error(transparent)]
    Origin(#[from] OriginError),
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Output(#[from] ExportError),
    #[error("invalid --digest {0:?}: expected sha256:<64 hex characters>")]
    BadDigest(String),
    #[error(
        "the scheduler at {0} is unreachable and back-to-source is disabled (--no-back-to-source)"
    )]
    SchedulerUnreachable(String),
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Invalid(#[from] InvalidSafetensors),
}

/// Why the engine did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("--transport rdma, but {0}")]
    RdmaUnavailable(weightcast_rdma::RdmaError),
}

/// Opens RDMA as `--transport` asks: never for `tcp`; for `auto`, when a
/// device is there (its absence is not worth more than a debug line); for
/// `rdma`, or fails.
fn open_rdma(config: &EngineConfig) -> Result<Option<Arc<RdmaNode>>, StartError> {
    if config.transport == TransportMode::Tcp {
        return Ok(None);
    }
    match RdmaNode::open(config.rdma_device.as_deref(), RdmaConfig::default()) {
        Ok(node) => {
            tracing::info!(device = %node.device.name, port = node.device.port, gid = %weightcast_rdma::device::format_gid(&node.device.gid), "RDMA enabled: piece bytes move by RDMA READ where the parent has RDMA too");
            Ok(Some(node))
        }
        Err(e) if config.transport == TransportMode::Rdma => Err(StartError::RdmaUnavailable(e)),
        Err(e) if e.is_absent() && config.rdma_device.is_none() => {
            tracing::debug!(reason = %e, "no RDMA; piece bytes go over TCP");
            Ok(None)
        }
        Err(e) => {
            tracing::warn!(error = %e, "RDMA device unusable; piece bytes go over TCP");
            Ok(None)
        }
    }
}

type Outcome = Option<Result<Arc<TaskFile>, String>>;

/// A download in progress, shared by every `get` of the same task.
struct TaskRun {
    events: mpsc::UnboundedSender<TaskEvent>,
    progress: watch::Receiver<Progress>,
    outcome: watch::Receiver<Outcome>,
}

pub struct Engine {
    ctx: Arc<EngineCtx>,
    runs: Arc<Mutex<HashMap<TaskId, Arc<TaskRun>>>>,
    pub peer_id: String,
    pub piece_addr: String,
}

struct StoreSource(Arc<Store>);

impl PieceSource for StoreSource {
    type Piece = VerifiedPiece;
    fn verified_piece(&self, task: &TaskId, num: u32) -> Option<VerifiedPiece> {
        self.0.get(task)?.verified_piece(num)
    }
}

/// The address this host uses towards `endpoint` (no packet is sent).
fn route_addr_towards(endpoint: &str) -> Option<std::net::IpAddr> {
    let hostport = endpoint
        .split("://")
        .nth(1)
        .unwrap_or(endpoint)
        .split('/')
        .next()?;
    let target = std::net::ToSocketAddrs::to_socket_addrs(hostport)
        .ok()?
        .next()?;
    let bind = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(target).ok()?;
    Some(s.local_addr().ok()?.ip())
}

/// Normalizes a URL for task ids: the same file under cosmetic URL variants is one task.
pub fn normalize_url(url: &str) -> Result<String, OriginError> {
    let mut u = OriginFetcher::check_url(url)?;
    u.set_fragment(None);
    Ok(u.to_string())
}

pub fn parse_digest(d: &str) -> Result<[u8; 32], GetError> {
    let hexpart = d.strip_prefix("sha256:").unwrap_or(d);
    let mut out = [0u8; 32];
    hex::decode_to_slice(hexpart, &mut out).map_err(|_| GetError::BadDigest(d.to_string()))?;
    Ok(out)
}

impl Engine {
    /// Binds the upload server and, with a scheduler configured, starts the
    /// link to it (connecting in the background).
    pub async fn start(config: EngineConfig) -> Result<Arc<Engine>, StartError> {
        let store = Arc::new(Store::new(&config.data_dir)?);
        let metrics = Arc::new(EngineMetrics::default());
        let rdma = open_rdma(&config)?;
        metrics.inc(&metrics.rdma_enabled, rdma.is_some() as u64);
        let io = |source| StoreError::Io {
            path: config.data_dir.clone(),
            source,
        };
        let listener = TcpListener::bind(config.listen).await.map_err(io)?;
        let bound = listener.local_addr().map_err(io)?;
        let host = match &config.advertise_addr {
            Some(a) => a.clone(),
            None if !bound.ip().is_unspecified() => bound.ip().to_string(),
            None => config
                .scheduler
                .as_deref()
                .and_then(route_addr_towards)
                .map(|ip| ip.to_string())
                .unwrap_or_else(|| "127.0.0.1".to_string()),
        };
        let piece_addr = if host.contains(':')
            && !host.starts_with('[')
            && host.parse::<std::net::Ipv6Addr>().is_ok()
        {
            format!("[{host}]:{}", bound.port())
        } else if host.contains(':') {
            host // already host:port
        } else {
            format!("{host}:{}", bound.port())
        };
        let mut server = PieceServer::new(
            Arc::new(StoreSource(store.clone())),
            config.upload_concurrency,
            metrics.uploads.clone(),
        );
        if let Some(node) = &rdma {
            server = server.with_rdma(Arc::new(StoreRdma {
                node: node.clone(),
                store: store.clone(),
            }));
        }
        let server = Arc::new(server);
        tokio::spawn(async move {
            if let Err(e) = server.run(listener).await {
                tracing::error!(error = %e, "upload server stopped");
            }
        });
        let peer_id = format!("{}-{:08x}", config.hostname, rand::random::<u32>());
        let (link_tx, link_rx) = mpsc::unbounded_channel();
        let link = config.scheduler.clone().map(|endpoint| {
            SchedulerLink::start(
                endpoint,
                pb::HostInfo {
                    peer_id: peer_id.clone(),
                    hostname: config.hostname.clone(),
                    piece_addr: piece_addr.clone(),
                    zone: config.zone.clone(),
                    rack: config.rack.clone(),
                    seed: config.seed,
                    upload_slots: config.upload_slots,
                    rdma: rdma.is_some(),
                },
                link_tx,
            )
        });
        let ctx = Arc::new(EngineCtx {
            peer_id: peer_id.clone(),
            origin: OriginFetcher::new(config.origin.clone(), metrics.clone()),
            peers: PeerTransport::new(config.transport, rdma, metrics.clone()),
            config,
            store,
            link,
            metrics,
        });
        let engine = Arc::new(Engine {
            ctx,
            runs: Arc::new(Mutex::new(HashMap::new())),
            peer_id,
            piece_addr,
        });
        tokio::spawn(Self::dispatch(Arc::downgrade(&engine), link_rx));
        tokio::spawn(Self::report_load(Arc::downgrade(&engine)));
        tracing::info!(peer = %engine.peer_id, addr = %engine.piece_addr, seed = engine.ctx.config.seed, "engine started");
        Ok(engine)
    }

    pub fn metrics(&self) -> &EngineMetrics {
        &self.ctx.metrics
    }

    /// Serves `/metrics` (Prometheus) and `/healthz` until the listener fails.
    pub async fn serve_metrics(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let e = self.clone();
                    async move { e.metrics().render() }
                }),
            )
            .route("/healthz", axum::routing::get(|| async { "ok\n" }));
        axum::serve(listener, app).await
    }

    /// Waits for the scheduler link; `false` when there is none or it is down.
    pub async fn scheduler_connected(&self, timeout: Duration) -> bool {
        match &self.ctx.link {
            Some(l) => l.wait_connected(timeout).await,
            None => false,
        }
    }

    /// Routes scheduler messages to their task's download.
    async fn dispatch(engine: std::sync::Weak<Engine>, mut rx: mpsc::UnboundedReceiver<LinkEvent>) {
        while let Some(ev) = rx.recv().await {
            let Some(engine) = engine.upgrade() else {
                return;
            };
            match ev {
                LinkEvent::Reconnected => {
                    let runs: Vec<Arc<TaskRun>> = match engine.runs.lock() {
                        Ok(r) => r.values().cloned().collect(),
                        Err(_) => return,
                    };
                    for run in runs {
                        let _ = run.events.send(TaskEvent::Reconnected);
                    }
                }
                LinkEvent::Message(SchedMsg::SeedTask(s)) => {
                    let Ok(id) = s.task_id.parse::<TaskId>() else {
                        continue;
                    };
                    tracing::info!(task = %id, url = %s.url, "seeding task from its origin");
                    engine.ensure_run(DownloadSpec {
                        id,
                        url: s.url,
                        digest: None,
                        mode: Mode::Source,
                        back_to_source: true,
                        auth: None,
                        swarm: true,
                    });
                }
                LinkEvent::Message(m) => {
                    let task_id = match &m {
                        SchedMsg::Meta(x) => &x.task_id,
                        SchedMsg::Parents(x) => &x.task_id,
                        SchedMsg::Available(x) => &x.task_id,
                        SchedMsg::ParentGone(x) => &x.task_id,
                        SchedMsg::BackToSource(x) => &x.task_id,
                        SchedMsg::SeedTask(x) => &x.task_id,
                    };
                    let Ok(id) = task_id.parse::<TaskId>() else {
                        continue;
                    };
                    // A message for a finished task has no run: nothing to do.
                    let run = engine.runs.lock().ok().and_then(|r| r.get(&id).cloned());
                    if let Some(run) = run {
                        let _ = run.events.send(TaskEvent::Scheduler(m));
                    }
                }
            }
        }
    }

    /// Tells the scheduler how loaded this peer's upload server is.
    async fn report_load(engine: std::sync::Weak<Engine>) {
        let mut last = u32::MAX;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let Some(engine) = engine.upgrade() else {
                return;
            };
            let Some(link) = &engine.ctx.link else { return };
            let now = engine
                .ctx
                .metrics
                .uploads
                .active
                .load(std::sync::atomic::Ordering::Relaxed);
            if now != last {
                link.send(PeerMsg::Load(pb::Load {
                    active_uploads: now,
                }));
                last = now;
            }
        }
    }

    /// Joins the download of `spec.id`, starting it if none runs.
    fn ensure_run(&self, spec: DownloadSpec) -> Arc<TaskRun> {
        let mut runs = self.runs.lock().expect("runs lock");
        if let Some(r) = runs.get(&spec.id) {
            return r.clone();
        }
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (progress_tx, progress_rx) = watch::channel(Progress::default());
        let (outcome_tx, outcome_rx) = watch::channel(None);
        let run = Arc::new(TaskRun {
            events: events_tx,
            progress: progress_rx,
            outcome: outcome_rx,
        });
        runs.insert(spec.id, run.clone());
        let ctx = self.ctx.clone();
        let all_runs = self.runs.clone();
        let id = spec.id;
        ctx.metrics.inc(&ctx.metrics.tasks_active, 1);
        tokio::spawn(async move {
            let url = spec.url.clone();
            // Readers must never see progress end before the outcome is in:
            // this copy of the sender lives until the outcome is sent.
            let progress_alive = progress_tx.clone();
            let r = download::run(ctx.clone(), spec, events_rx, progress_tx).await;
            ctx.metrics.dec(&ctx.metrics.tasks_active);
            let outcome = match r {
                Ok(d) => {
                    ctx.metrics.inc(&ctx.metrics.tasks_completed, 1);
                    tracing::info!(task = %id, %url, from_peers = d.progress.from_peers, from_origin = d.progress.from_origin, "task complete");
                    Ok(d.file)
                }
                Err(e) => {
                    ctx.metrics.inc(&ctx.metrics.tasks_failed, 1);
                    tracing::info!(task = %id, %url, error = %e, "task failed");
                    Err(e.to_string())
                }
            };
            if let Ok(mut runs) = all_runs.lock() {
                runs.remove(&id);
            }
            let _ = outcome_tx.send(Some(outcome));
            drop(progress_alive);
        });
        run
    }

    /// How a new download starts: in the swarm when the scheduler answers,
    /// else from the origin (unless back-to-source is forbidden).
    async fn mode_for(&self, swarm: bool, back_to_source: bool) -> Result<Mode, GetError> {
        if !swarm {
            return Ok(Mode::Source);
        }
        if self.ctx.link.is_some() && self.scheduler_connected(Duration::from_secs(3)).await {
            return Ok(Mode::Swarm);
        }
        match &self.ctx.config.scheduler {
            Some(s) if !back_to_source => Err(GetError::SchedulerUnreachable(s.clone())),
            Some(s) => {
                tracing::warn!(scheduler = %s, "scheduler unreachable; downloading straight from the origin");
                Ok(Mode::Source)
            }
            None => Ok(Mode::Source),
        }
    }

    /// The task of `url` (keyed by `digest` when known): complete in the
    /// cache, or a download started or joined. What `get` and `watch` share.
    async fn begin(
        &self,
        url: &str,
        digest: Option<[u8; 32]>,
        auth: Option<OriginAuth>,
        swarm: bool,
        back_to_source: bool,
    ) -> Result<Begun, GetError> {
        let url = normalize_url(url)?;
        let id = match &digest {
            Some(d) => TaskId::from_sha256(d),
            None => TaskId::from_url(&url),
        };
        if let Some(f) = self.ctx.store.open_complete(id) {
            if digest.is_none_or(|d| f.sha256() == d) {
                return Ok(Begun::Complete(f));
            }
        }
        let mode = self.mode_for(swarm, back_to_source).await?;
        let run = self.ensure_run(DownloadSpec {
            id,
            url,
            digest,
            mode,
            back_to_source,
            auth,
            swarm,
        });
        Ok(Begun::Running(id, run))
    }

    /// Starts (or joins) the download of `url` and hands back a handle to
    /// read its pieces as they are verified: what a streaming reader (the
    /// Hugging Face endpoint) needs.
    pub async fn watch(
        &self,
        url: &str,
        digest: Option<[u8; 32]>,
        auth: Option<OriginAuth>,
        swarm: bool,
    ) -> Result<TaskWatch, GetError> {
        let (id, run) = match self.begin(url, digest, auth, swarm, true).await? {
            Begun::Complete(f) => return Ok(TaskWatch(WatchState::Complete(f))),
            Begun::Running(id, run) => (id, run),
        };
        Ok(TaskWatch(WatchState::Running {
            id,
            store: self.ctx.store.clone(),
            progress: run.progress.clone(),
            outcome: run.outcome.clone(),
            run,
            wanted: None,
        }))
    }

    /// Downloads `req.url` to `req.output` and reports how it went.
    /// `on_progress` sees (bytes done, total when known).
    pub async fn get(
        &self,
        req: &GetRequest,
        mut on_progress: impl FnMut(&Progress),
    ) -> Result<GetSummary, GetError> {
        let t0 = Instant::now();
        let digest = req.digest.as_deref().map(parse_digest).transpose()?;
        let begun = self
            .begin(
                &req.url,
                digest,
                req.auth.clone(),
                req.swarm,
                req.back_to_source,
            )
            .await?;
        let (id, file, progress) = match begun {
            Begun::Complete(f) => {
                let len = f.layout.content_length;
                let done = Progress {
                    total: Some(len),
                    done: len,
                    resumed: len,
                    ..Default::default()
                };
                (f.id, f, done)
            }
            Begun::Running(id, run) => {
                let mut progress = run.progress.clone();
                let mut outcome = run.outcome.clone();
                let file = loop {
                    if let Some(o) = outcome.borrow().clone() {
                        break o;
                    }
                    tokio::select! {
                        r = outcome.changed() => if r.is_err() { return Err(GetError::ShuttingDown) },
                        r = progress.changed() => if r.is_ok() { on_progress(&progress.borrow()) },
                    }
                };
                let file = file.map_err(|msg| GetError::Download(DownloadError::Failed(msg)))?;
                let p = progress.borrow().clone();
                (id, file, p)
            }
        };
        if let Some(Validation::Safetensors) = req.validate {
            let path = file.data_path();
            tokio::task::spawn_blocking(move || safetensors_check::validate_file(&path))
                .await
                .map_err(|_| GetError::ShuttingDown)?
                .map_err(|e| match e {
                    // Name the file the user asked for, not the cache file.
                    InvalidSafetensors::Invalid { why, .. } => InvalidSafetensors::Invalid {
                        path: req.url.clone(),
                        why,
                    },
                    e => e,
                })?;
        }
        on_progress(&progress);
        let placement = match req.client_places {
            true => None,
            false => Some(export::place(&file.data_path(), &req.output)?),
        };
        let seconds = t0.elapsed().as_secs_f64();
        let bytes = file.layout.content_length;
        Ok(GetSummary {
            url: req.url.clone(),
            output: req.output.clone(),
            task_id: id.to_hex(),
            bytes,
            seconds,
            bytes_per_second: bytes as f64 / seconds.max(1e-9),
            from_peers: progress.from_peers,
            from_origin: progress.from_origin,
            from_cache: progress.resumed,
            placement,
            cache_path: Some(file.data_path()),
        })
    }
}

enum Begun {
    Complete(Arc<TaskFile>),
    Running(TaskId, Arc<TaskRun>),
}

/// A download seen from a streaming reader: pieces as they are verified.
pub struct TaskWatch(WatchState);

enum WatchState {
    Complete(Arc<TaskFile>),
    Running {
        id: TaskId,
        store: Arc<Store>,
        run: Arc<TaskRun>,
        progress: watch::Receiver<Progress>,
        outcome: watch::Receiver<Outcome>,
        wanted: Option<u32>,
    },
}

impl TaskWatch {
    /// Waits for `ready` to give a value, re-checking after every verified
    /// piece; fails when the download does.
    async fn wait<T>(
        &mut self,
        mut ready: impl FnMut(&Arc<TaskFile>, bool) -> Option<T>,
    ) -> Result<T, GetError> {
        loop {
            match &mut self.0 {
                WatchState::Complete(f) => {
                    return ready(f, true).ok_or(GetError::ShuttingDown);
                }
                WatchState::Running {
                    id,
                    store,
                    progress,
                    outcome,
                    ..
                } => {
                    let done = outcome.borrow().clone();
                    match done {
                        Some(Ok(f)) => self.0 = WatchState::Complete(f),
                        Some(Err(msg)) => {
                            return Err(GetError::Download(DownloadError::Failed(msg)))
                        }
                        None => {
                            if let Some(v) = store.get(id).and_then(|f| ready(&f, false)) {
                                return Ok(v);
                            }
                            tokio::select! {
                                r = outcome.changed() => if r.is_err() { return Err(GetError::ShuttingDown) },
                                // Progress only ends after the outcome is in:
                                // the next turn sees it.
                                _ = progress.changed() => {},
                            }
                        }
                    }
                }
            }
        }
    }

    /// The task's file, once its length is known.
    pub async fn file(&mut self) -> Result<Arc<TaskFile>, GetError> {
        self.wait(|f, _| Some(f.clone())).await
    }

    /// Piece `num`, once verified. The last piece is handed out only after
    /// the whole file matched its digest, so a reader never receives all of
    /// a file that turns out wrong.
    pub async fn piece(&mut self, num: u32) -> Result<VerifiedPiece, GetError> {
        if let WatchState::Running { run, wanted, .. } = &mut self.0 {
            if *wanted != Some(num) {
                *wanted = Some(num);
                let _ = run.events.send(TaskEvent::Wanted(num));
            }
        }
        self.wait(|f, complete| {
            let last = f.layout.piece_count().saturating_sub(1);
            if num == last && !complete {
                return None;
            }
            f.verified_piece(num)
        })
        .await
    }
}
