//! The engine: one per daemon (or per in-process `get`). It owns the piece
//! store, the upload server, the origin fetcher and the scheduler link, runs
//! one download per task, and owns every task it spawns: [`Engine::shutdown`]
//! stops them all, letting the pieces in flight land first.

use crate::address;
use crate::cache_gc::{self, EngineCacheHooks};
use crate::config::EngineConfig;
use crate::dispatch;
use crate::download::{DownloadDeps, DownloadSpec, Mode, Progress};
use crate::held;
use crate::load_report;
use crate::metrics::EngineMetrics;
use crate::object_pin::ObjectPins;
use crate::peer_transport::{PeerTransport, StoreRdma};
use crate::place_as_verified::{PlaceAsVerified, Verified};
use crate::request::{GetError, GetRequest, GetSummary, StartError, Validation};
use crate::runs::{Runs, TaskRun};
use crate::scheduler_link::{self, SchedulerLink};
use crate::upload::StoreSource;
use crate::watch::TaskWatch;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weightcast_modelpack::safetensors_check::{self, InvalidSafetensors};
use weightcast_origin::{OriginAuth, OriginError, OriginFetcher, Pinned};
use weightcast_proto::pb;
use weightcast_rdma::{RdmaConfig, RdmaNode, TransportMode};
use weightcast_store::{Store, TaskFile};
use weightcast_tcp::PieceServer;
use weightcast_types::{TaskId, TaskKey};

pub struct Engine {
    config: EngineConfig,
    deps: Arc<DownloadDeps>,
    runs: Arc<Runs>,
    pins: ObjectPins,
    tracker: TaskTracker,
    cancel: CancellationToken,
    pub peer_id: String,
    pub piece_addr: String,
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

/// Checks a URL and drops its fragment: the URL a download fetches (its
/// task id comes from [`task_id`], which also drops signing parameters).
pub fn normalize_url(url: &str) -> Result<String, OriginError> {
    let mut u = OriginFetcher::check_url(url)?;
    u.set_fragment(None);
    Ok(u.to_string())
}

/// The task id of `url` (keyed by `digest` when known): the one rule of
/// [`weightcast_types::task_key`], shared with the endpoints and preheat.
pub fn task_id(url: &str, digest: Option<&[u8; 32]>) -> Result<TaskId, OriginError> {
    TaskKey::of(url, digest)
        .task_id()
        .map_err(|e| OriginError::BadUrl {
            url: e.url,
            why: e.why,
        })
}

/// `sha256:<hex>` (or bare hex) to bytes.
pub fn parse_digest(d: &str) -> Result<[u8; 32], GetError> {
    let hexpart = d.strip_prefix("sha256:").unwrap_or(d);
    let mut out = [0u8; 32];
    hex::decode_to_slice(hexpart, &mut out).map_err(|_| GetError::BadDigest(d.to_string()))?;
    Ok(out)
}

/// A task that is complete in the cache, or a download started or joined.
enum Begun {
    Complete(Arc<TaskFile>),
    Running(TaskId, Arc<TaskRun>),
}

impl Engine {
    /// Binds the upload server and, with a scheduler configured, starts the
    /// link to it (connecting in the background).
    pub async fn start(config: EngineConfig) -> Result<Arc<Engine>, StartError> {
        let store = Arc::new(
            Store::with_policy(&config.data_dir, config.cache.clone())?
                .with_mapped_window(config.mapped_window),
        );
        let metrics = Arc::new(EngineMetrics::default());
        let rdma = open_rdma(&config)?;
        metrics.inc(&metrics.rdma_enabled, rdma.is_some() as u64);
        let listen_err = |source| StartError::Listen {
            addr: config.listen,
            source,
        };
        let listener = TcpListener::bind(config.listen).await.map_err(listen_err)?;
        let bound = listener.local_addr().map_err(listen_err)?;
        let piece_addr = address::piece_addr(
            config.advertise_addr.as_deref(),
            bound,
            config.scheduler.as_deref(),
        );
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let mut server = PieceServer::new(
            Arc::new(StoreSource(store.clone())),
            config.upload_concurrency,
            metrics.uploads.clone(),
        );
        server = server.with_cluster_secrets(config.cluster_secrets.clone());
        if let (true, Some(hold)) = (config.seed, config.seed_send_once) {
            server = server.with_send_once(hold);
        }
        // Test builds only: WEIGHTCAST_FAULT_CORRUPT_UPLOADS makes this peer
        // a parent that sends corrupt pieces (the fault suite's bad peer).
        #[cfg(feature = "fault-injection")]
        if std::env::var_os("WEIGHTCAST_FAULT_CORRUPT_UPLOADS").is_some() {
            tracing::warn!("fault injection: every piece this peer uploads over TCP is corrupted (WEIGHTCAST_FAULT_CORRUPT_UPLOADS)");
            server = server.with_corrupt_uploads();
        }
        if let Some(node) = &rdma {
            server = server.with_rdma(Arc::new(StoreRdma {
                node: node.clone(),
                store: store.clone(),
            }));
        }
        let server = Arc::new(server);
        let stop = cancel.clone();
        tracker.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = server.run(listener) => {}
            }
        });
        let peer_id = format!("{}-{:08x}", config.hostname, rand::random::<u32>());
        let (link_tx, link_rx) = mpsc::channel(scheduler_link::INBOUND_QUEUE);
        let endpoints: Vec<String> = config
            .scheduler
            .iter()
            .chain(config.more_schedulers.iter())
            .cloned()
            .collect();
        let link = config.scheduler.is_some().then(|| {
            SchedulerLink::start(
                endpoints,
                pb::HostInfo {
                    peer_id: peer_id.clone(),
                    hostname: config.hostname.clone(),
                    piece_addr: piece_addr.clone(),
                    zone: config.zone.clone(),
                    rack: config.rack.clone(),
                    seed: config.seed,
                    upload_slots: config.upload_slots,
                    rdma: rdma.is_some(),
                    host_id: config.host_id.clone().unwrap_or_default(),
                },
                config.cluster_secrets.clone(),
                link_tx,
                &tracker,
                cancel.clone(),
            )
        });
        let deps = Arc::new(DownloadDeps {
            peer_id: peer_id.clone(),
            config: weightcast_download_core::Config {
                pieces_in_flight: config.pieces_in_flight,
                pieces_per_parent: config.pieces_per_parent,
                stall_timeout: config.stall_timeout,
                ..Default::default()
            },
            shutdown_grace: config.shutdown_grace,
            origin: OriginFetcher::new(config.origin.clone(), metrics.origin.clone()),
            peers: PeerTransport::new(
                config.transport,
                rdma,
                config.cluster_secrets.clone(),
                metrics.clone(),
            ),
            store,
            link: link.clone(),
            metrics: metrics.clone(),
        });
        let runs = Arc::new(Runs::new(deps.clone(), tracker.clone(), cancel.clone()));
        deps.store.set_hooks(Arc::new(EngineCacheHooks {
            runs: Arc::downgrade(&runs),
            handle: tokio::runtime::Handle::current(),
        }));
        if config.cache.is_bounded() {
            tracker.spawn(cache_gc::run(
                deps.store.clone(),
                config.cache_gc_every,
                cancel.clone(),
            ));
        }
        let stop = cancel.clone();
        let r = runs.clone();
        tracker.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = dispatch::run(r, link_rx) => {}
            }
        });
        if link.is_some() {
            // What finished before a restart is served and announced again.
            let stop = cancel.clone();
            let r = runs.clone();
            tracker.spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = async {
                        let complete = held::open_on_disk(r.deps().store.clone()).await;
                        if complete > 0 {
                            tracing::info!(tasks = complete, "finished swarm tasks on disk are served again");
                        }
                        if r.deps().link.as_ref().is_some_and(|l| l.is_connected()) {
                            held::announce(&r).await;
                        }
                    } => {}
                }
            });
        }
        if let Some(link) = link {
            let stop = cancel.clone();
            tracker.spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = load_report::run(link, metrics) => {}
                }
            });
        }
        tracing::info!(peer = %peer_id, addr = %piece_addr, seed = config.seed, "engine started");
        Ok(Arc::new(Engine {
            config,
            deps,
            runs,
            pins: ObjectPins::new(),
            tracker,
            cancel,
            peer_id,
            piece_addr,
        }))
    }

    /// The piece store (what `weightcast cache` looks at).
    pub fn store(&self) -> &Arc<Store> {
        &self.deps.store
    }

    pub fn metrics(&self) -> &EngineMetrics {
        &self.deps.metrics
    }

    /// Fires when the engine begins to shut down: servers built on the
    /// engine (the local API, the Hub endpoint) stop with it.
    pub fn shutting_down(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stops the engine: no new work; downloads stop fetching and let the
    /// pieces in flight land (up to the configured grace), so that what
    /// was fetched is in the piece table; then every task has ended.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tracker.close();
        let grace = self.config.shutdown_grace + Duration::from_secs(2);
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = self.tracker.len(),
                "tasks still running after the shutdown grace"
            );
        }
        self.deps.store.sync();
    }

    /// The Prometheus page: the counters, and the origin budget shares the
    /// scheduler set.
    fn render_metrics(&self) -> String {
        let mut page = self.metrics().render();
        let mut budgets = weightcast_proto::metrics_text::MetricsText::default();
        for (origin, bytes_per_second) in self.deps.origin.budgets() {
            budgets.sample(
                "weightcast_origin_budget_bytes_per_second",
                "gauge",
                "This peer's share of the cluster's byte-rate budget towards an origin, set by the scheduler (--origin-rate-limit of the scheduler).",
                &[("origin", &origin)],
                bytes_per_second as f64,
            );
        }
        page.push_str(&budgets.finish());
        let store = &self.deps.store;
        let mut cache = weightcast_proto::metrics_text::MetricsText::default();
        cache.sample(
            "weightcast_cache_used_bytes",
            "gauge",
            "Bytes the tasks in this peer's cache hold (each data file is preallocated to its length).",
            &[],
            store.report().used_bytes as f64,
        );
        if let Some(max) = store.policy().max_bytes {
            cache.sample(
                "weightcast_cache_max_bytes",
                "gauge",
                "The cache's bound (--cache-size).",
                &[],
                max as f64,
            );
        }
        cache.sample(
            "weightcast_cache_evictions_total",
            "counter",
            "Tasks evicted from the cache by its bound or TTL since start.",
            &[],
            store.evictions() as f64,
        );
        page.push_str(&cache.finish());
        page
    }

    /// Serves `/metrics` (Prometheus) and `/healthz` until the engine shuts down.
    pub async fn serve_metrics(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        let stop = self.cancel.clone();
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let e = self.clone();
                    async move { e.render_metrics() }
                }),
            )
            .route("/healthz", axum::routing::get(|| async { "ok\n" }));
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    }

    /// Replaces the list of schedulers (from the manager): the tasks of a
    /// scheduler that left move to the others.
    pub fn set_schedulers(&self, endpoints: Vec<String>) {
        if let Some(l) = &self.deps.link {
            l.set_endpoints(endpoints);
        }
    }

    /// The schedulers this engine is linked to.
    pub fn schedulers(&self) -> Vec<String> {
        self.deps
            .link
            .as_ref()
            .map(|l| l.endpoints())
            .unwrap_or_default()
    }

    /// Waits for the scheduler link; `false` when there is none or it is down.
    pub async fn scheduler_connected(&self, timeout: Duration) -> bool {
        match &self.deps.link {
            Some(l) => l.wait_connected(timeout).await,
            None => false,
        }
    }

    /// How a new download starts: in the swarm when there is a scheduler
    /// (if it does not answer, the download core falls back to the origin
    /// after this peer's own jitter, unless back-to-source is forbidden:
    /// then this fails at once), else from the origin.
    async fn mode_for(&self, swarm: bool, back_to_source: bool) -> Result<Mode, GetError> {
        let Some(scheduler) = &self.config.scheduler else {
            return Ok(Mode::Source);
        };
        if !swarm {
            return Ok(Mode::Source);
        }
        if self.scheduler_connected(Duration::from_secs(3)).await {
            return Ok(Mode::Swarm);
        }
        if !back_to_source {
            return Err(GetError::SchedulerUnreachable(scheduler.clone()));
        }
        tracing::warn!(%scheduler, "scheduler unreachable; this download falls back to the origin unless it comes back");
        Ok(Mode::Swarm)
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
        if self.cancel.is_cancelled() {
            return Err(GetError::ShuttingDown);
        }
        // An object that changes in place is named by its version, and its
        // stat (with this node's credentials) comes first.
        let named = self
            .pins
            .name(&self.deps.origin, url, digest, auth.as_ref())
            .await?;
        let digest = named.digest;
        let url = normalize_url(&named.url)?;
        let id = task_id(&url, digest.as_ref())?;
        let store = self.deps.store.clone();
        // Opening a cached task re-hashes it: not on an async worker.
        let cached = tokio::task::spawn_blocking(move || store.open_complete(id))
            .await
            .ok()
            .flatten();
        if let Some(f) = cached {
            if digest.is_none_or(|d| f.sha256() == d) {
                return Ok(Begun::Complete(f));
            }
        }
        let mode = self.mode_for(swarm, back_to_source).await?;
        let run = self.runs.ensure(DownloadSpec {
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

    /// The stat of an object-storage `url` with this node's credentials,
    /// and the pinned URL its task has; `None` for a URL that names its
    /// bytes already. Reused for a few seconds, as [`Engine::get`] and
    /// [`Engine::watch`] reuse it.
    pub async fn pin(&self, url: &str) -> Result<Option<Pinned>, GetError> {
        Ok(self.pins.pin(&self.deps.origin, url, None).await?)
    }

    /// The origin fetcher, with this node's limits and credentials: what an
    /// endpoint lists a store through.
    pub fn origin(&self) -> &OriginFetcher {
        &self.deps.origin
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
        Ok(match self.begin(url, digest, auth, swarm, true).await? {
            Begun::Complete(f) => TaskWatch::complete(f),
            Begun::Running(id, run) => TaskWatch::running(id, self.deps.store.clone(), run),
        })
    }

    /// Downloads `req.url` to `req.output` and reports how it went.
    /// `on_progress` sees (bytes done, total when known).
    pub async fn get(
        &self,
        req: &GetRequest,
        mut on_progress: impl FnMut(&Progress),
    ) -> Result<GetSummary, GetError> {
        self.get_following(req, |p, _| on_progress(p)).await
    }

    /// [`Engine::get`], `on_progress` also handed the task's file once
    /// the store has it: what the local API tells a client that places
    /// the file itself, so that it can copy pieces as they are verified.
    pub async fn get_following(
        &self,
        req: &GetRequest,
        mut on_progress: impl FnMut(&Progress, Option<&Arc<TaskFile>>),
    ) -> Result<GetSummary, GetError> {
        let t0 = Instant::now();
        let digest = req.digest.as_deref().map(parse_digest).transpose()?;
        // An output this process places is copied as pieces land.
        let mut placing = (!req.client_places).then(|| PlaceAsVerified::new(&req.output));
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
                let mut task = None::<Arc<TaskFile>>;
                let file = loop {
                    if let Some(o) = outcome.borrow().clone() {
                        break o;
                    }
                    tokio::select! {
                        r = outcome.changed() => if r.is_err() { return Err(GetError::ShuttingDown) },
                        r = progress.changed() => if r.is_ok() {
                            if task.is_none() {
                                task = self.deps.store.get(&id);
                            }
                            on_progress(&progress.borrow(), task.as_ref());
                            if let (Some(placing), Some(t)) = (placing.as_mut(), task.as_ref()) {
                                placing.advance(|| Verified {
                                    cache_file: t.data_path(),
                                    len: t.layout.content_length,
                                    piece_size: t.layout.piece_size,
                                    mask: t.verified_mask(),
                                }).await?;
                            }
                        },
                    }
                };
                let file = file.map_err(GetError::Download)?;
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
        on_progress(&progress, Some(&file));
        if req.pin {
            self.deps.store.pin(&id, true)?;
        }
        let placement = match placing {
            None => None,
            Some(p) => Some(p.finish(&file.data_path()).await?),
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
