//! `weightcast scheduler`.

use super::cluster_secret::ClusterSecretArgs;
use super::ready_file;
use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct SchedulerArgs {
    /// gRPC address peers connect to. Port 0 picks one.
    #[arg(
        long,
        env = "WEIGHTCAST_SCHEDULER_LISTEN",
        default_value = "0.0.0.0:7400"
    )]
    pub listen: SocketAddr,
    /// Prometheus /metrics address. Port 0 picks one.
    #[arg(
        long,
        env = "WEIGHTCAST_SCHEDULER_METRICS_LISTEN",
        default_value = "127.0.0.1:7401"
    )]
    pub metrics_listen: SocketAddr,
    /// Candidate parents handed to each child.
    #[arg(long, env = "WEIGHTCAST_CANDIDATE_PARENTS", default_value_t = 16)]
    pub candidate_parents: usize,
    /// Shape of the peer graph: `mesh` lets two peers trade pieces both ways
    /// (pieces themselves never cycle); `dag` never lets a peer serve one of
    /// its own ancestors (Dragonfly's rule; slower under bandwidth limits).
    #[arg(
        long,
        env = "WEIGHTCAST_PEER_GRAPH",
        value_enum,
        default_value = "mesh"
    )]
    pub peer_graph: PeerGraph,
    /// Peers of one task allowed to fetch it from the origin at once besides
    /// its seed: stalled peers the scheduler grants back-to-source, and a
    /// peer standing in for a source that left. A peer connected to the
    /// scheduler never goes to the origin without this grant.
    #[arg(long, env = "WEIGHTCAST_MAX_BACK_TO_SOURCE", default_value_t = 2)]
    pub max_back_to_source: usize,
    /// A cluster-wide byte-rate budget towards one origin, HOST=RATE (e.g.
    /// cdn-lfs.huggingface.co=500MB/s, or host:port=...), split evenly among
    /// the peers fetching from it at the moment. Repeatable; in the
    /// environment, comma-separated.
    #[arg(
        long = "origin-rate-limit",
        env = "WEIGHTCAST_SCHEDULER_ORIGIN_RATE_LIMITS",
        value_delimiter = ',',
        value_parser = parse_origin_limit
    )]
    pub origin_rate_limits: Vec<(String, u64)>,
    /// Write {"addr","metrics_addr"} here once serving (for scripts using port 0).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Register with this manager (http://mgr:7500) and keep alive, so
    /// daemons with --manager find this scheduler and the open API's jobs
    /// reach it.
    #[arg(long, env = "WEIGHTCAST_MANAGER")]
    pub manager: Option<String>,
    /// The cluster this scheduler serves (with --manager).
    #[arg(long, env = "WEIGHTCAST_CLUSTER", default_value = "default")]
    pub cluster: String,
    /// The address peers and the manager dial for this scheduler (IP or
    /// host, optionally :port). Default: the listen address, or when that
    /// is 0.0.0.0 the local address that routes to the manager.
    #[arg(long, env = "WEIGHTCAST_SCHEDULER_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// Seconds between keepalives to the manager.
    #[arg(long, env = "WEIGHTCAST_KEEPALIVE_INTERVAL", default_value_t = 5)]
    pub keepalive_interval: u64,
    /// Peers (and the manager) must prove this secret to register,
    /// announce or run jobs.
    #[command(flatten)]
    pub cluster_secret: ClusterSecretArgs,
}

/// `HOST=RATE` (`RATE` as `500MB/s`, `1GiB`, or bytes per second).
fn parse_origin_limit(s: &str) -> Result<(String, u64), String> {
    let (host, rate) = s.split_once('=').ok_or_else(|| {
        format!(
            "invalid --origin-rate-limit {s:?}: expected HOST=RATE, e.g. huggingface.co=500MB/s"
        )
    })?;
    let host = host.trim();
    if host.is_empty() || host.contains('/') {
        return Err(format!(
            "invalid --origin-rate-limit {s:?}: {host:?} is not a host (give host or host:port, no scheme)"
        ));
    }
    let rate = weightcast_types::byte_size::parse(rate)?;
    if rate == 0 {
        return Err(format!(
            "invalid --origin-rate-limit {s:?}: the rate must be above 0"
        ));
    }
    Ok((host.to_ascii_lowercase(), rate))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PeerGraph {
    Dag,
    Mesh,
}

pub async fn run(a: SchedulerArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", a.listen))?;
    let metrics_listener = tokio::net::TcpListener::bind(a.metrics_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--metrics-listen)", a.metrics_listen))?;
    let config = weightcast_scheduler::Config {
        candidate_parents: a.candidate_parents.max(1),
        acyclic: a.peer_graph == PeerGraph::Dag,
        max_back_to_source: a.max_back_to_source,
        origin_rate_limits: a.origin_rate_limits.iter().cloned().collect(),
        ..Default::default()
    };
    let secrets = a.cluster_secret.load()?;
    if secrets.is_some() {
        tracing::info!("peers must prove the cluster secret (--cluster-secret-file)");
    }
    let mut handle = weightcast_scheduler::serve_authenticated(listener, config, secrets)?;
    let metrics_addr = handle.serve_metrics(metrics_listener)?;
    if let Some(f) = &a.ready_file {
        ready_file::write(
            f,
            &serde_json::json!({"addr": handle.addr.to_string(), "metrics_addr": metrics_addr.to_string()}),
        )?;
    }
    let keepalive = tokio_util::sync::CancellationToken::new();
    if let Some(manager) = &a.manager {
        let base = weightcast_manager::client::base(manager);
        let addr = weightcast_engine::address::piece_addr(
            a.advertise_addr.as_deref(),
            handle.addr,
            Some(&base),
        );
        let who = weightcast_manager::api::KeepAlive {
            kind: "scheduler".into(),
            cluster: a.cluster.clone(),
            hostname: weightcast_engine::local_hostname(),
            addr: format!("http://{addr}"),
        };
        tracing::info!(manager = %base, cluster = %a.cluster, addr = %who.addr, "registering with the manager");
        tokio::spawn(weightcast_manager::client::keep_alive(
            base,
            who,
            std::time::Duration::from_secs(a.keepalive_interval.max(1)),
            keepalive.clone(),
        ));
    }
    tracing::info!(addr = %handle.addr, metrics = %metrics_addr, "scheduler ready");
    tokio::select! {
        r = handle.stopped() => {
            r.context("the scheduler's gRPC server failed")?;
            anyhow::bail!("the scheduler's gRPC server stopped by itself");
        }
        _ = ready_file::shutdown_signal() => {}
    }
    keepalive.cancel();
    tracing::info!("shutting down: ending peer sessions");
    match tokio::time::timeout(SHUTDOWN_GRACE, handle.shutdown()).await {
        Ok(r) => r.context("the scheduler's gRPC server failed while shutting down")?,
        Err(_) => tracing::warn!(
            grace = ?SHUTDOWN_GRACE,
            "peer connections did not close in time; exiting anyway"
        ),
    }
    Ok(())
}

/// How long a graceful shutdown may take before the process exits anyway:
/// sessions end at once, so only a peer that never closes its connection
/// makes it wait this long.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
