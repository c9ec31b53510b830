//! `weightcast daemon`: a node's peer.

use super::engine_args::{default_data_dir, EngineArgs, HfArgs, RegistryLogin};
use super::ready_file;
use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use weightcast_engine::endpoint_access::EndpointAccess;
use weightcast_engine::registry_mirror::RegistryMirror;
use weightcast_engine::s3_endpoint::{S3Endpoint, S3EndpointConfig};
use weightcast_engine::sigv4::AccessKeys;
use weightcast_engine::{hf_endpoint, local_api, Engine};
use weightcast_origin::{docker_config_logins, OriginAuth};

#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// Cache and state directory; the local API socket is `<dir>/weightcast.sock`.
    /// Default: /var/lib/weightcast when writable, else ~/.cache/weightcast.
    #[arg(long, env = "WEIGHTCAST_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The local API socket that `get` talks to (mount its directory into
    /// init containers). Default: <data-dir>/weightcast.sock.
    #[arg(long, env = "WEIGHTCAST_SOCKET")]
    pub socket: Option<PathBuf>,
    /// A directory under which the daemon itself may place files that local
    /// API clients ask for (repeat it, or comma-separate in the
    /// environment); each file only where the client's own uid could write
    /// (checked by its socket credentials), and given to that uid. Without
    /// one the daemon places no file itself: `weightcast get` places its
    /// file as the calling user, which needs no root.
    #[arg(
        long = "output-root",
        env = "WEIGHTCAST_OUTPUT_ROOTS",
        value_delimiter = ','
    )]
    pub output_roots: Vec<PathBuf>,
    /// Act as a seed peer: the scheduler hands this peer tasks to fetch from their origin.
    #[arg(long, env = "WEIGHTCAST_SEED")]
    pub seed: bool,
    /// Upload server address (piece bytes to other peers). Port 0 picks one.
    #[arg(long, env = "WEIGHTCAST_LISTEN", default_value = "0.0.0.0:7430")]
    pub listen: SocketAddr,
    /// Prometheus /metrics address. Port 0 picks one.
    #[arg(
        long,
        env = "WEIGHTCAST_METRICS_LISTEN",
        default_value = "127.0.0.1:7431"
    )]
    pub metrics_listen: SocketAddr,
    /// Serve a Hugging Face Hub endpoint here, e.g. 127.0.0.1:7410: point
    /// `HF_ENDPOINT=http://127.0.0.1:7410` at it and `hf download`,
    /// `snapshot_download` and `from_pretrained` fetch through the swarm.
    #[arg(long, env = "WEIGHTCAST_HF_LISTEN")]
    pub hf_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub hf: HfArgs,
    /// Serve a pull-through OCI registry mirror here, e.g. 127.0.0.1:7420:
    /// registry clients on the node pull from it and blobs come through the
    /// swarm. Needs --registry-upstream.
    #[arg(
        long,
        env = "WEIGHTCAST_REGISTRY_LISTEN",
        requires = "registry_upstream"
    )]
    pub registry_listen: Option<SocketAddr>,
    /// The registry the mirror pulls from, e.g. https://registry.example or
    /// http://127.0.0.1:5000.
    #[arg(long, env = "WEIGHTCAST_REGISTRY_UPSTREAM")]
    pub registry_upstream: Option<String>,
    /// Credentials for the upstream registry (the mirror's and a seed's blob
    /// fetches); else ~/.docker/config.json, else anonymous.
    #[command(flatten)]
    pub registry: RegistryLogin,
    /// Get this cluster's schedulers from the manager (http://mgr:7500)
    /// instead of --scheduler, and keep the list fresh; a seed also
    /// registers itself there.
    #[arg(long, env = "WEIGHTCAST_MANAGER")]
    pub manager: Option<String>,
    /// The cluster whose schedulers to use (with --manager).
    #[arg(long, env = "WEIGHTCAST_CLUSTER", default_value = "default")]
    pub cluster: String,
    /// Seconds between refreshes of the scheduler list (and a seed's keepalives).
    #[arg(long, env = "WEIGHTCAST_MANAGER_REFRESH", default_value_t = 10)]
    pub manager_refresh: u64,
    /// The access token that clients on other hosts present to the Hugging
    /// Face endpoint and the registry mirror (X-Weightcast-Token, a Basic
    /// login's password, or HF_ENDPOINT=http://node:7410/t/<token>).
    /// Without it both may listen on loopback only.
    #[arg(long, env = "WEIGHTCAST_ENDPOINT_TOKEN", hide_env_values = true)]
    pub endpoint_token: Option<String>,
    #[command(flatten)]
    pub s3: S3EndpointArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// The cluster's schedulers from the manager, waiting up to 30 s for one.
async fn schedulers_from(manager: &str, cluster: &str) -> anyhow::Result<Vec<String>> {
    let t0 = std::time::Instant::now();
    loop {
        match weightcast_manager::client::schedulers(manager, cluster).await {
            Ok(list) if !list.is_empty() => return Ok(list),
            Ok(_) if t0.elapsed() > std::time::Duration::from_secs(30) => {
                anyhow::bail!("the manager at {manager} lists no active scheduler in cluster {cluster:?}: start one with --manager {manager} --cluster {cluster}")
            }
            Err(e) if t0.elapsed() > std::time::Duration::from_secs(30) => return Err(e.into()),
            _ => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
        }
    }
}

/// The daemon's S3-compatible endpoint.
#[derive(Args, Debug)]
pub struct S3EndpointArgs {
    /// Serve an S3-compatible endpoint (reads: list, head, ranged get) here,
    /// e.g. 127.0.0.1:7440: `AWS_ENDPOINT_URL=http://127.0.0.1:7440 aws s3
    /// sync ...`, boto3 and Triton's `s3://127.0.0.1:7440/bucket/path` read
    /// through the swarm. The daemon reads the store with its own AWS
    /// credentials (environment, ~/.aws, instance role).
    #[arg(long, env = "WEIGHTCAST_S3_LISTEN")]
    pub s3_listen: Option<SocketAddr>,
    /// The store the endpoint reads, e.g. https://s3.us-east-1.amazonaws.com
    /// or http://minio.internal:9000. Default: AWS_ENDPOINT_URL, else AWS in
    /// AWS_REGION.
    #[arg(long, env = "WEIGHTCAST_S3_UPSTREAM")]
    pub s3_upstream: Option<String>,
    /// The region the endpoint's GetBucketLocation answers. Default:
    /// AWS_REGION, else us-east-1.
    #[arg(long, env = "WEIGHTCAST_S3_REGION")]
    pub s3_region: Option<String>,
    /// An access key that clients of the endpoint sign with (SigV4), as
    /// ACCESS_KEY_ID:SECRET_ACCESS_KEY; repeat it, or comma-separate in the
    /// environment. Without one no signature is checked, and the endpoint
    /// may listen on loopback only.
    #[arg(
        long = "s3-access-key",
        env = "WEIGHTCAST_S3_ACCESS_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub s3_access_keys: Vec<String>,
}

impl S3EndpointArgs {
    fn config(&self) -> anyhow::Result<S3EndpointConfig> {
        let keys = AccessKeys::parse(self.s3_access_keys.iter().map(String::as_str))?;
        let region = self
            .s3_region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "us-east-1".into());
        Ok(S3EndpointConfig {
            upstream: self.s3_upstream.clone(),
            region,
            keys,
        })
    }
}

pub async fn run(a: DaemonArgs) -> anyhow::Result<()> {
    let data_dir = a.data_dir.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let socket = a
        .socket
        .clone()
        .unwrap_or_else(|| local_api::socket_path(&data_dir));
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create socket dir {}", dir.display()))?;
    }
    let policy = weightcast_engine::output_access::OutputPolicy::new(&a.output_roots)?;
    let api = local_api::bind(&socket)
        .await
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    let mut config = a.engine.config(data_dir.clone(), a.listen, a.seed, &a.hf)?;
    if let Some(manager) = &a.manager {
        let list = schedulers_from(manager, &a.cluster).await?;
        tracing::info!(%manager, cluster = %a.cluster, schedulers = ?list, "schedulers from the manager");
        let mut it = list.into_iter();
        config.scheduler = it.next();
        config.more_schedulers = it.collect();
    }
    // A seed fetches the upstream registry's blobs with the daemon's login.
    let upstream = match &a.registry_upstream {
        Some(u) => Some((u.clone(), registry_host(u)?)),
        None => None,
    };
    if let Some((url, host)) = &upstream {
        if let Some(h) = a.registry.credentials(host)?.basic_header() {
            config.origin.credentials.push(OriginAuth::new(url, h)?);
        }
    }
    // And every registry login of the daemon's docker config: a seed trades
    // it for pull tokens where a registry asks for one.
    for (host, creds) in docker_config_logins()? {
        if let Some(h) = creds.basic_header() {
            for scheme in ["https", "http"] {
                config
                    .origin
                    .credentials
                    .push(OriginAuth::new(&format!("{scheme}://{host}/"), h.clone())?);
            }
        }
    }
    let engine = Engine::start(config)
        .await
        .context("cannot start the engine")?;
    let metrics_listener = tokio::net::TcpListener::bind(a.metrics_listen)
        .await
        .with_context(|| format!("cannot listen on {} for metrics", a.metrics_listen))?;
    let metrics_addr = metrics_listener.local_addr()?;
    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(engine.clone().serve_metrics(metrics_listener));
    let e = engine.clone();
    servers.spawn(async move {
        local_api::serve(api, e, policy).await;
        Ok(())
    });
    let access = EndpointAccess::new(a.endpoint_token.as_deref());
    if let Some(addr) = a.registry_listen {
        access.check_bind("--registry-listen", addr)?;
    }
    if let Some(addr) = a.hf_listen {
        access.check_bind("--hf-listen", addr)?;
    }
    let registry_addr = match (a.registry_listen, &upstream) {
        (Some(addr), Some((url, host))) => {
            let mirror = RegistryMirror::new(engine.clone(), url, a.registry.credentials(host)?)?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for the registry mirror"))?;
            let bound = listener.local_addr()?;
            tracing::info!(addr = %bound, upstream = %url, "registry mirror ready");
            servers.spawn(mirror.serve(listener, access.clone()));
            Some(bound.to_string())
        }
        _ => None,
    };
    let s3_addr = match a.s3.s3_listen {
        Some(addr) => {
            let config = a.s3.config()?;
            if config.keys.is_empty() && !addr.ip().is_loopback() {
                anyhow::bail!("--s3-listen {addr} is not a loopback address: give the endpoint --s3-access-key ID:SECRET for its clients to sign with, or listen on 127.0.0.1");
            }
            let signed = !config.keys.is_empty();
            let endpoint = S3Endpoint::new(engine.clone(), config)?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for the S3 endpoint"))?;
            let bound = listener.local_addr()?;
            if a.s3
                .s3_upstream
                .as_deref()
                .is_some_and(|u| u.trim_end_matches('/').ends_with(&format!("//{bound}")))
            {
                anyhow::bail!(
                    "--s3-upstream is this daemon's own --s3-listen: point it at the store"
                );
            }
            tracing::info!(addr = %bound, upstream = a.s3.s3_upstream.as_deref().unwrap_or("the AWS environment's"), signed, "S3 endpoint ready");
            servers.spawn(endpoint.serve(listener));
            Some(bound.to_string())
        }
        None => None,
    };
    let hf_addr = match a.hf_listen {
        Some(addr) => {
            let hub = a.hf.hub()?;
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} for the Hugging Face endpoint")
            })?;
            let bound = listener.local_addr()?;
            if hub.endpoint().ends_with(&format!("//{bound}")) {
                anyhow::bail!("--hf-endpoint {} is this daemon's own --hf-listen: point it at the origin Hub (HF_ENDPOINT in the daemon's environment is read as the origin)", hub.endpoint());
            }
            tracing::info!(addr = %bound, origin = %hub.endpoint(), "Hugging Face endpoint ready");
            servers.spawn(hf_endpoint::serve(
                listener,
                engine.clone(),
                hub,
                access.clone(),
            ));
            Some(bound.to_string())
        }
        None => None,
    };
    if let Some(manager) = a.manager.clone() {
        let every = std::time::Duration::from_secs(a.manager_refresh.max(1));
        if a.seed {
            let who = weightcast_manager::api::KeepAlive {
                kind: "seed_peer".into(),
                cluster: a.cluster.clone(),
                hostname: config_hostname(&a),
                addr: engine.piece_addr.clone(),
            };
            let stop = engine.shutting_down();
            servers.spawn(async move {
                weightcast_manager::client::keep_alive(manager.clone(), who, every, stop).await;
                Ok(())
            });
        }
        let (e, cluster, manager) = (
            engine.clone(),
            a.cluster.clone(),
            a.manager.clone().unwrap_or_default(),
        );
        let stop = engine.shutting_down();
        servers.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(every) => {}
                }
                match weightcast_manager::client::schedulers(&manager, &cluster).await {
                    Ok(mut list) if !list.is_empty() => {
                        list.sort();
                        let mut now = e.schedulers();
                        now.sort();
                        if list != now {
                            tracing::info!(schedulers = ?list, "the manager's scheduler list changed");
                            e.set_schedulers(list);
                        }
                    }
                    Ok(_) => tracing::debug!("the manager lists no active scheduler; keeping the current ones"),
                    Err(error) => tracing::debug!(%error, "cannot refresh the scheduler list"),
                }
            }
        });
    }
    if (!a.engine.scheduler.is_empty() || a.manager.is_some())
        && !engine
            .scheduler_connected(std::time::Duration::from_secs(3))
            .await
    {
        tracing::warn!("scheduler not reachable yet; retrying in the background, downloads go to the origin meanwhile");
    }
    ready_file::write(
        &data_dir.join("daemon.json"),
        &serde_json::json!({
            "peer_id": engine.peer_id,
            "piece_addr": engine.piece_addr,
            "metrics_addr": metrics_addr.to_string(),
            "socket": socket,
            "hf_addr": hf_addr,
            "registry_addr": registry_addr,
            "s3_addr": s3_addr,
        }),
    )?;
    tracing::info!(data_dir = %data_dir.display(), socket = %socket.display(), metrics = %metrics_addr, "daemon ready");
    ready_file::shutdown_signal().await;
    tracing::info!("shutting down: letting the pieces in flight land");
    // No new clients from here on.
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(data_dir.join("daemon.json"));
    engine.shutdown().await;
    while let Some(r) = servers.join_next().await {
        if let Ok(Err(e)) = r {
            tracing::warn!(error = %e, "a server ended with an error");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// `host[:port]` of a registry URL.
fn registry_host(url: &str) -> anyhow::Result<String> {
    let u = reqwest::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .with_context(|| {
            format!("invalid --registry-upstream {url:?}: expected http(s)://host[:port]")
        })?;
    let host = u.host_str().context("--registry-upstream names no host")?;
    Ok(match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    })
}

fn config_hostname(a: &DaemonArgs) -> String {
    a.engine
        .hostname
        .clone()
        .unwrap_or_else(weightcast_engine::local_hostname)
}
