//! The weightcast manager: what a fleet of clusters needs beyond a
//! scheduler, without Redis and with one database.
//!
//! - [`db`]: the one query layer over an embedded SQLite (default, under
//!   `--data-dir`) or PostgreSQL (several replicas share it), with its
//!   embedded migrations. The job queue lives there too: replicas claim
//!   jobs with row locks and leases ([`db::Db::claim_job`]).
//! - [`api`]: the HTTP server: Dragonfly's open API as Harbor ≥ 2.12 calls
//!   it (`/healthy`, `/oapi/v1/jobs`, `/oapi/v1/clusters`), and the cluster
//!   registry's keepalives and scheduler lists.
//! - [`console`]: the web console at `/` (sign-in, clusters, rollout,
//!   preheat jobs, tasks, tokens), its assets embedded in the binary.
//! - [`tokens`]: personal access tokens (hashed, scoped, expiring).
//! - [`jobs`]: the job shapes (create body, args, answer and result).
//! - [`resolve`]: a preheat's source (image manifest URL, `oci://`, `hf://`,
//!   file URLs) turned into tasks with the ids a later pull computes.
//! - [`worker`]: runs claimed jobs against one scheduler per cluster.
//! - [`client`]: keepalives, scheduler lists and the open API, for the
//!   scheduler, the daemon and the CLI.
//! - [`time_format`]: RFC 3339 timestamps.

pub mod api;
pub mod client;
pub mod console;
pub mod db;
pub mod jobs;
pub mod resolve;
pub mod time_format;
pub mod tokens;
pub mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weightcast_proto::cluster_auth::ClusterSecrets;

pub use db::{Db, DbError};

/// What `weightcast manager` is told.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub data_dir: PathBuf,
    /// `postgres://...`; `None`: SQLite under `data_dir`.
    pub database: Option<String>,
    /// A scheduler or seed not heard from within this is marked inactive.
    pub keepalive_ttl: Duration,
    /// The Hub `hf://` preheats resolve against by default.
    pub hf_endpoint: String,
    pub hf_token: Option<String>,
    /// Sets the console's root password at start if no user has one yet
    /// (first start); later changes go through `manager user set-password`.
    pub root_password: Option<String>,
    /// The cluster secret proved to schedulers (`--cluster-secret-file`),
    /// for jobs and the console; `None`: none sent.
    pub cluster_secrets: Option<Arc<ClusterSecrets>>,
}

/// A running manager.
pub struct Manager {
    pub addr: SocketAddr,
    cancel: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

impl Manager {
    /// Opens the database and serves on `listener`: the API, the stale
    /// instance sweep and the job worker.
    pub async fn start(config: ManagerConfig, listener: TcpListener) -> Result<Manager, DbError> {
        let addr = listener.local_addr().map_err(|source| DbError::DataDir {
            path: "listener".into(),
            source,
        })?;
        let db = Db::open(config.database.as_deref(), &config.data_dir).await?;
        if let Some(pw) = &config.root_password {
            if db.user_password(console::session::ROOT).await?.is_none() {
                console::session::set_password(&db, console::session::ROOT, pw)
                    .await
                    .map_err(|e| DbError::Conflict(e.to_string()))?;
                tracing::info!("console: root password set (first start)");
            }
        }
        let shared = Arc::new(api::Shared {
            db: db.clone(),
            ttl: config.keepalive_ttl,
            metrics: Default::default(),
            cluster_secrets: config.cluster_secrets.clone(),
        });
        let cancel = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let app = api::router(shared.clone()).merge(console::router(Arc::new(console::Console {
            shared: shared.clone(),
            hf_endpoint: config.hf_endpoint.clone(),
            hf_token: config.hf_token.clone(),
        })));
        let stop = cancel.clone();
        tasks.spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                tracing::warn!(error = %e, "the manager's HTTP server stopped");
            }
        });
        // Stale rows are the classic complaint: sweep several times per TTL.
        let sweep = (config.keepalive_ttl / 4).max(Duration::from_millis(200));
        let stop = cancel.clone();
        let s = shared.clone();
        let ttl = config.keepalive_ttl;
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(sweep) => {}
                }
                match s.db.mark_stale(ttl).await {
                    Ok(stale) => {
                        for i in &stale {
                            tracing::warn!(kind = %i.kind, cluster = %i.cluster, addr = %i.addr, host = %i.hostname, "no keepalive within {ttl:?}: marked inactive");
                        }
                        s.metrics.marked_inactive.fetch_add(stale.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot sweep stale instances"),
                }
            }
        });
        let worker = worker::Worker {
            db,
            owner: format!(
                "{}-{}-{:08x}",
                hostname(),
                std::process::id(),
                rand::random::<u32>()
            ),
            ttl,
            hf_endpoint: config.hf_endpoint.clone(),
            hf_token: config.hf_token.clone(),
            cluster_secrets: config.cluster_secrets.clone(),
        };
        tasks.spawn(worker.run(cancel.clone()));
        Ok(Manager {
            addr,
            cancel,
            tasks,
        })
    }

    /// Stops serving and waits for the manager's tasks.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "manager".into())
}
