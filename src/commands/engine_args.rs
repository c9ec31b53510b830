//! Flags shared by every command that runs an engine (`daemon`, in-process `get`).

use super::cluster_secret::ClusterSecretArgs;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use weightcast_engine::{EngineConfig, TransportMode};
use weightcast_modelpack::oci_artifact::LayerFilter;
use weightcast_origin::hub::DEFAULT_ENDPOINT;
use weightcast_origin::{Credentials, HubClient, OriginAuth, OriginConfig};
use weightcast_store::{cache, CachePolicy};
use weightcast_types::byte_size;

/// Which part of an oci:// artifact to fetch.
#[derive(Args, Debug, Clone)]
pub struct OciSelect {
    /// In an oci:// image index, the platform to pick (os/arch[/variant]).
    #[arg(long, env = "WEIGHTCAST_PLATFORM")]
    pub platform: Option<String>,
    /// oci://: only these layers: kinds (weight, weight.config, doc, code,
    /// dataset), media types or path globs; comma-separated or repeated.
    #[arg(long, value_delimiter = ',')]
    pub include: Vec<String>,
    /// oci://: skip these layers (same forms as --include).
    #[arg(long, value_delimiter = ',')]
    pub exclude: Vec<String>,
}

impl OciSelect {
    pub fn filter(&self) -> LayerFilter {
        LayerFilter {
            include: self.include.clone(),
            exclude: self.exclude.clone(),
        }
    }
}

/// How to reach an OCI registry.
#[derive(Args, Debug, Clone)]
pub struct RegistryArgs {
    /// Talk plain HTTP to the registry (loopback and lab registries).
    #[arg(long, env = "WEIGHTCAST_PLAIN_HTTP")]
    pub plain_http: bool,
    #[command(flatten)]
    pub login: RegistryLogin,
}

impl RegistryArgs {
    pub fn credentials(&self, registry: &str) -> anyhow::Result<Credentials> {
        self.login.credentials(registry)
    }
}

/// Who to be towards a registry.
#[derive(Args, Debug, Clone)]
pub struct RegistryLogin {
    /// Registry user name. Without it, ~/.docker/config.json (or
    /// $DOCKER_CONFIG/config.json) is read, else the pull is anonymous.
    #[arg(long, env = "WEIGHTCAST_REGISTRY_USER")]
    pub registry_user: Option<String>,
    /// Registry password or token for --registry-user.
    #[arg(long, env = "WEIGHTCAST_REGISTRY_PASSWORD", hide_env_values = true)]
    pub registry_password: Option<String>,
}

impl RegistryLogin {
    pub fn credentials(&self, registry: &str) -> anyhow::Result<Credentials> {
        match (&self.registry_user, &self.registry_password) {
            (Some(user), Some(password)) => Ok(Credentials::Basic {
                user: user.clone(),
                password: password.clone(),
            }),
            (Some(_), None) | (None, Some(_)) => {
                anyhow::bail!("--registry-user and --registry-password go together")
            }
            (None, None) => Ok(Credentials::from_docker_config(registry)?),
        }
    }
}

/// Where the Hugging Face Hub is, and the token for it.
#[derive(Args, Debug, Clone)]
pub struct HfArgs {
    /// The origin Hugging Face Hub (or a mirror of it).
    #[arg(long, env = "HF_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub hf_endpoint: String,
    /// Hugging Face token for gated and private repos. It is sent to the
    /// --hf-endpoint host only, never to its CDN, and never logged.
    #[arg(long, env = "HF_TOKEN", hide_env_values = true)]
    pub hf_token: Option<String>,
}

impl HfArgs {
    pub fn hub(&self) -> anyhow::Result<HubClient> {
        Ok(HubClient::new(&self.hf_endpoint)?)
    }

    /// The `Authorization` value for the Hub.
    pub fn authorization(&self) -> Option<String> {
        self.hf_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(|t| format!("Bearer {t}"))
    }

    /// The token as an origin credential bound to the Hub's host.
    pub fn credential(&self) -> anyhow::Result<Option<OriginAuth>> {
        match self.authorization() {
            Some(a) => Ok(Some(OriginAuth::new(&self.hf_endpoint, a).map_err(
                |_| {
                    anyhow::anyhow!(
                        "invalid --hf-endpoint {:?}: expected http(s)://host[:port]",
                        self.hf_endpoint
                    )
                },
            )?)),
            None => Ok(None),
        }
    }
}

/// How much the cache may hold, and for how long.
#[derive(Args, Debug, Clone)]
pub struct CacheArgs {
    /// The most the cache may hold: bytes (50GiB) or a share of the data
    /// dir's filesystem (80%). The least recently used tasks that are not
    /// in use (downloading, served, read) or pinned are evicted to make
    /// room; a task that cannot fit is refused. Default: no bound.
    #[arg(long, env = "WEIGHTCAST_CACHE_SIZE")]
    pub cache_size: Option<String>,
    /// Evict tasks unused for this long, e.g. 3600s, 90m, 24h, 7d. Default: never.
    #[arg(long, env = "WEIGHTCAST_CACHE_TTL", value_parser = parse_duration)]
    pub cache_ttl: Option<Duration>,
    /// Eviction starts when the cache holds more than this percentage of --cache-size...
    #[arg(long, env = "WEIGHTCAST_CACHE_HIGH_WATERMARK", default_value_t = 90)]
    pub cache_high_watermark: u8,
    /// ...and goes on until it holds less than this percentage.
    #[arg(long, env = "WEIGHTCAST_CACHE_LOW_WATERMARK", default_value_t = 80)]
    pub cache_low_watermark: u8,
    /// How often the cache is collected between downloads (TTL, watermarks).
    #[arg(long, env = "WEIGHTCAST_CACHE_GC_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub cache_gc_interval: Duration,
}

impl CacheArgs {
    /// The policy for a cache in `data_dir`.
    pub fn policy(&self, data_dir: &std::path::Path) -> anyhow::Result<CachePolicy> {
        if self.cache_low_watermark > self.cache_high_watermark || self.cache_high_watermark > 100 {
            anyhow::bail!("--cache-low-watermark must be at most --cache-high-watermark, and both at most 100");
        }
        let max_bytes = match &self.cache_size {
            Some(s) => {
                std::fs::create_dir_all(data_dir)?;
                Some(cache::parse_cache_size(s, data_dir).map_err(anyhow::Error::msg)?)
            }
            None => None,
        };
        Ok(CachePolicy {
            max_bytes,
            high_watermark: self.cache_high_watermark as f64 / 100.0,
            low_watermark: self.cache_low_watermark as f64 / 100.0,
            ttl: self.cache_ttl,
        })
    }
}

/// `90`, `90s`, `15m`, `24h`, `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 90s, 15m, 24h, 7d"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("invalid duration {s:?}: the unit is s, m, h or d")),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Scheduler endpoint, e.g. http://10.0.0.5:7400 (several, comma-separated:
    /// each task is owned by one of them). Without one, files come straight
    /// from the origin (through the same piece engine).
    #[arg(long, env = "WEIGHTCAST_SCHEDULER", value_delimiter = ',')]
    pub scheduler: Vec<String>,
    /// Address other peers use to reach this one (IP or host, optionally
    /// with :port). Default: the listen address, or when that is 0.0.0.0 the
    /// local address that routes to the scheduler.
    #[arg(long, env = "WEIGHTCAST_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// Host name reported to the scheduler; peers with the same host name
    /// never serve each other. Default: this machine's host name.
    #[arg(long, env = "WEIGHTCAST_HOSTNAME")]
    pub hostname: Option<String>,
    /// This host's identity towards the scheduler: peers of one host never
    /// serve each other. Default: the host name together with the advertised
    /// address (so cloned machines sharing a host name are still distinct).
    #[arg(long, env = "WEIGHTCAST_HOST_ID")]
    pub host_id: Option<String>,
    /// Topology label: peers prefer parents in their own zone.
    #[arg(long, env = "WEIGHTCAST_ZONE", default_value = "")]
    pub zone: String,
    /// Topology label: peers prefer parents in their own rack (within the zone).
    #[arg(long, env = "WEIGHTCAST_RACK", default_value = "")]
    pub rack: String,
    /// Children the scheduler may plan onto this peer.
    #[arg(long, env = "WEIGHTCAST_UPLOAD_SLOTS", default_value_t = 16)]
    pub upload_slots: u32,
    /// Pieces sent to other peers at once (more wait in a short queue): few
    /// uploads at a high rate each let pieces complete, and be forwarded,
    /// sooner; too few leave children waiting while their downlinks idle.
    #[arg(long, env = "WEIGHTCAST_UPLOAD_CONCURRENCY", default_value_t = 8)]
    pub upload_concurrency: u32,
    /// Bytes of verified pieces each file keeps mapped in memory (the most
    /// recently written or served); older pieces are unmapped and dropped
    /// from the page cache, so memory stays flat however big the file. 0
    /// keeps every page (a container's memory limit then counts them all).
    #[arg(long, env = "WEIGHTCAST_MAPPED_WINDOW", default_value = "32MiB", value_parser = byte_size::parse)]
    pub mapped_window: u64,
    /// Pieces of one task fetched at once, spread over the parents: one
    /// per parent when there are enough of them.
    #[arg(long, env = "WEIGHTCAST_PIECES_IN_FLIGHT", default_value_t = 16)]
    pub pieces_in_flight: usize,
    /// At most this many pieces of one task from one parent at once (with
    /// few parents, so that each link keeps a pipeline).
    #[arg(long, env = "WEIGHTCAST_PIECES_PER_PARENT", default_value_t = 4)]
    pub pieces_per_parent: u32,
    /// Requests in flight to one origin at once (this process).
    #[arg(long, env = "WEIGHTCAST_ORIGIN_CONCURRENCY", default_value_t = 8)]
    pub origin_concurrency: usize,
    /// Byte-rate cap towards one origin, e.g. 200MB/s. Default: none.
    #[arg(long, env = "WEIGHTCAST_ORIGIN_RATE_LIMIT", value_parser = byte_size::parse)]
    pub origin_rate_limit: Option<u64>,
    /// Retries of a failed origin request (backoff doubles; Retry-After honoured).
    #[arg(long, env = "WEIGHTCAST_ORIGIN_RETRIES", default_value_t = 5)]
    pub origin_retries: u32,
    /// How long an origin body may send nothing before the read is given up
    /// and retried from where it stopped (e.g. 60s, 2m; at least 1s).
    #[arg(long, env = "WEIGHTCAST_ORIGIN_READ_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub origin_read_timeout: Duration,
    /// Seconds without a piece from peers before going to the origin (or
    /// failing, with --no-back-to-source).
    #[arg(long, env = "WEIGHTCAST_STALL_TIMEOUT", default_value_t = 30)]
    pub stall_timeout: u64,
    /// How piece bytes move between peers: `auto` (RDMA READ where both
    /// ends have an RDMA device, TCP otherwise), `rdma` (RDMA only: an error
    /// without a device, parents without RDMA are not used) or `tcp`.
    #[arg(long, env = "WEIGHTCAST_TRANSPORT", default_value = "auto")]
    pub transport: TransportMode,
    /// RDMA device (e.g. mlx5_0, rxe0). Default: the first with an active port.
    #[arg(long, env = "WEIGHTCAST_RDMA_DEVICE")]
    pub rdma_device: Option<String>,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub cluster_secret: ClusterSecretArgs,
}

impl EngineArgs {
    /// The engine's configuration; `hf` gives this peer's own Hub token
    /// (a seed's, for gated files the Hub serves without a CDN redirect).
    pub fn config(
        &self,
        data_dir: PathBuf,
        listen: std::net::SocketAddr,
        seed: bool,
        hf: &HfArgs,
    ) -> anyhow::Result<EngineConfig> {
        let cache = self.cache.policy(&data_dir)?;
        let mut c = EngineConfig::new(data_dir);
        c.cache = cache;
        c.cache_gc_every = self.cache.cache_gc_interval.max(Duration::from_millis(100));
        c.listen = listen;
        c.advertise_addr = self.advertise_addr.clone();
        if let Some(h) = &self.hostname {
            c.hostname = h.clone();
        }
        c.host_id = self.host_id.clone();
        c.zone = self.zone.clone();
        c.rack = self.rack.clone();
        c.seed = seed;
        let mut endpoints = self.scheduler.iter().map(|s| {
            if s.contains("://") {
                s.clone()
            } else {
                format!("http://{s}")
            }
        });
        c.scheduler = endpoints.next();
        c.more_schedulers = endpoints.collect();
        c.upload_slots = self.upload_slots;
        c.upload_concurrency = self.upload_concurrency.max(1);
        c.mapped_window = self.mapped_window;
        c.pieces_in_flight = self.pieces_in_flight.max(1);
        c.pieces_per_parent = self.pieces_per_parent.max(1);
        c.stall_timeout = Duration::from_secs(self.stall_timeout.max(1));
        c.transport = self.transport;
        c.rdma_device = self.rdma_device.clone();
        weightcast_origin::http::set_read_timeout(self.origin_read_timeout);
        c.cluster_secrets = self.cluster_secret.load()?;
        c.origin = OriginConfig {
            concurrency: self.origin_concurrency,
            rate_limit: self.origin_rate_limit,
            retries: self.origin_retries,
            credentials: hf.credential()?.into_iter().collect(),
            ..OriginConfig::default()
        };
        Ok(c)
    }
}

/// The default data dir: $WEIGHTCAST_DATA_DIR, else /var/lib/weightcast when
/// writable (where a node's daemon lives), else ~/.cache/weightcast.
pub fn default_data_dir() -> PathBuf {
    let system = PathBuf::from("/var/lib/weightcast");
    let writable = |p: &std::path::Path| {
        std::fs::create_dir_all(p).is_ok() && tempfile::tempfile_in(p).is_ok()
    };
    if writable(&system) {
        return system;
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("weightcast")
}
