//! What an engine is told at start: where its cache lives, how it is known
//! to the swarm, and its limits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use weightcast_origin::OriginConfig;
use weightcast_proto::cluster_auth::ClusterSecrets;
use weightcast_rdma::TransportMode;
use weightcast_store::CachePolicy;

/// How long a seed refuses to send a piece again after a child received
/// it (see [`EngineConfig::seed_send_once`]): long enough for the child's
/// announcement to reach its siblings through the scheduler, who then take
/// the piece from it. Shorter would help where the piece went to a peer
/// whose uplink is slow (every other child then waits for that peer or for
/// the hold to end): on the broadcast simulator, heterogeneous (a quarter
/// of the uplinks at B/10) 16 hosts at 100 Mbit/s gave 1.40 × T* with 5 s
/// and 1.22 with 500 ms, and plain fan-out kept 1.000 seed copies down to
/// 100 ms. The emulator refuted it (stop 25, 3 runs each): with 500 ms the
/// fan-out's seed host sent 1.10–1.13 S instead of 1.05 and heterogeneous
/// got slower (1.88 instead of 1.80 × S/B, seed host 1.40–2.11 S), as
/// announcements reach siblings later on a busy scheduler than in the
/// simulator, which delivers them at once; with the scheduler's delayed-ACK
/// stall fixed, 500 ms still gave fan-out 1.26 × S/B and 1.12 S from the
/// seed host (5 s: 1.22 and 1.05 S), heterogeneous 1.63 (5 s: 1.66).
/// What helps the slow receivers instead (stop 26) is the seed telling
/// them apart: a child whose first copies the seed had to send again is a
/// poor spreader, gets nothing from the seed while a good child is around,
/// and what it holds is not held for it (`weightcast_tcp::SendOnce`).
pub const SEED_SEND_ONCE: Duration = Duration::from_secs(5);

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
    /// An explicit host identity (`--host-id`); default: the host name
    /// together with the advertised address.
    pub host_id: Option<String>,
    pub zone: String,
    pub rack: String,
    pub seed: bool,
    /// Scheduler endpoint (`http://host:port`); `None`: no swarm, origin only.
    pub scheduler: Option<String>,
    /// More schedulers of the same cluster: each task is owned by one of
    /// them (see `scheduler_link`).
    pub more_schedulers: Vec<String>,
    /// Children the scheduler may plan onto this peer.
    pub upload_slots: u32,
    /// Pieces sent at once; more requests wait in a short queue, then are
    /// answered `Busy`. A piece can only be forwarded once it is whole, so
    /// fewer uploads at a higher rate each forward sooner; but with every
    /// host both uploading and downloading (16 pieces in flight per child),
    /// 4 slots per host left children waiting in the queues while their
    /// downlinks idled: 8 measured better on the 16-host emulator (slowest
    /// 1.34 vs 1.41 × S/B; heterogeneous 1.70 vs 1.78) and in the
    /// simulator (1.16 vs 1.29), see bench/results/cluster/knobs-stop24.
    pub upload_concurrency: u32,
    /// A seed sends each piece once per this long: a child asking for a
    /// piece the seed just sent to another is told to take it from the
    /// peers (see `weightcast_tcp::SendOnce`). `None`: always send.
    /// Default [`SEED_SEND_ONCE`].
    pub seed_send_once: Option<Duration>,
    /// Bytes of verified pieces each task file keeps mapped; older ones
    /// are unmapped and dropped from the page cache (see
    /// `weightcast_store::resident`). 0: keep every page.
    pub mapped_window: u64,
    /// Pieces in flight per task.
    pub pieces_in_flight: usize,
    /// Pieces in flight per task from one parent.
    pub pieces_per_parent: u32,
    /// With no piece from peers for this long, go to the origin (or fail).
    pub stall_timeout: Duration,
    /// How long a shutdown waits for the pieces in flight before it aborts them.
    pub shutdown_grace: Duration,
    pub origin: OriginConfig,
    /// How piece bytes move between peers (`--transport`).
    pub transport: TransportMode,
    /// RDMA device to use (`--rdma-device`); default: the first with an
    /// active port.
    pub rdma_device: Option<String>,
    /// What bounds the cache (`--cache-size`, `--cache-ttl`, watermarks).
    pub cache: CachePolicy,
    /// How often the cache is collected between downloads.
    pub cache_gc_every: Duration,
    /// The cluster secret (`--cluster-secret-file`): proved to schedulers
    /// and parents, required of children. `None`: no authentication.
    pub cluster_secrets: Option<Arc<ClusterSecrets>>,
}

impl EngineConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            advertise_addr: None,
            hostname: local_hostname(),
            host_id: None,
            zone: String::new(),
            rack: String::new(),
            seed: false,
            scheduler: None,
            more_schedulers: Vec::new(),
            upload_slots: 16,
            upload_concurrency: 8,
            seed_send_once: Some(SEED_SEND_ONCE),
            mapped_window: weightcast_store::DEFAULT_MAPPED_WINDOW,
            pieces_in_flight: 16,
            pieces_per_parent: 4,
            stall_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            origin: OriginConfig::default(),
            transport: TransportMode::Auto,
            rdma_device: None,
            cache: CachePolicy::default(),
            cache_gc_every: Duration::from_secs(60),
            cluster_secrets: None,
        }
    }
}

/// This machine's host name (`localhost` when it has none).
pub fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
