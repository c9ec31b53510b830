//! What the console asks the schedulers: the peers connected to a
//! cluster's active schedulers (the `ListPeers` RPC), and who holds a task
//! and how much of it (`StatTask`, asked of the task's owner, as daemons
//! route it). The manager keeps no peer table of its own: the schedulers
//! know the peers, and asking them is one small RPC per page view.

use crate::db::{Db, DbError};
use crate::jobs::TaskArgs;
use crate::resolve::Source;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use weightcast_proto::cluster_auth::{self, AuthedSchedulerClient, ClusterSecrets};
use weightcast_proto::pb;
use weightcast_types::TaskId;

/// How long one scheduler may take to answer the console.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{0}")]
    Query(String),
}

/// A peer and the cluster it was listed in.
#[derive(Debug, Clone)]
pub struct ListedPeer {
    pub cluster: String,
    pub summary: pb::PeerSummary,
}

/// One task as a cluster's owner scheduler sees it.
#[derive(Debug, Clone, Default)]
pub struct TaskHolders {
    pub cluster: String,
    pub content_length: u64,
    pub peers: Vec<pb::PeerResult>,
    /// Why this cluster could not be asked.
    pub error: Option<String>,
}

/// A task the console shows, with a name for people.
#[derive(Debug, Clone)]
pub struct NamedTask {
    pub name: String,
    pub task: TaskId,
}

async fn client(
    endpoint: &str,
    secrets: Option<&Arc<ClusterSecrets>>,
) -> Result<AuthedSchedulerClient, String> {
    let ch = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| format!("scheduler {endpoint}: {e}"))?
        .connect_timeout(ASK_TIMEOUT)
        .timeout(ASK_TIMEOUT)
        .connect()
        .await
        .map_err(|e| format!("scheduler {endpoint}: cannot connect: {e}"))?;
    Ok(cluster_auth::scheduler_client(ch, secrets.cloned()))
}

/// `(cluster id, name, active scheduler endpoints)` of every cluster, or
/// of `only`.
async fn clusters(
    db: &Db,
    ttl: Duration,
    only: Option<i64>,
) -> Result<Vec<(i64, String, Vec<String>)>, DbError> {
    let mut out = Vec::new();
    for (id, name) in db.clusters().await? {
        if only.is_some_and(|o| o != id) {
            continue;
        }
        let active = db.active("scheduler", id, ttl).await?;
        out.push((id, name, active.into_iter().map(|i| i.addr).collect()));
    }
    Ok(out)
}

/// Every peer of the clusters (or of `only`), each once, with the errors
/// of schedulers that did not answer.
pub async fn peers(
    db: &Db,
    ttl: Duration,
    secrets: Option<&Arc<ClusterSecrets>>,
    only: Option<i64>,
) -> Result<(Vec<ListedPeer>, Vec<String>), FleetError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (_, name, schedulers) in clusters(db, ttl, only).await? {
        for endpoint in schedulers {
            let reply = match client(&endpoint, secrets).await {
                Ok(mut c) => c
                    .list_peers(pb::ListPeersRequest {})
                    .await
                    .map_err(|s| format!("scheduler {endpoint}: {}", s.message())),
                Err(e) => Err(e),
            };
            match reply {
                Ok(r) => {
                    for p in r.into_inner().peers {
                        let id = p
                            .host
                            .as_ref()
                            .map(|h| h.peer_id.clone())
                            .unwrap_or_default();
                        if seen.insert(id) {
                            out.push(ListedPeer {
                                cluster: name.clone(),
                                summary: p,
                            });
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
        }
    }
    Ok((out, errors))
}

/// Who holds `task` in each cluster.
pub async fn holders(
    db: &Db,
    ttl: Duration,
    secrets: Option<&Arc<ClusterSecrets>>,
    task: &TaskId,
) -> Result<Vec<TaskHolders>, FleetError> {
    let mut out = Vec::new();
    for (_, name, schedulers) in clusters(db, ttl, None).await? {
        let Some(owner) = weightcast_types::task_key::owner(task, &schedulers) else {
            continue;
        };
        let reply = match client(owner, secrets).await {
            Ok(mut c) => c
                .stat_task(pb::StatTaskRequest {
                    task_id: task.to_hex(),
                })
                .await
                .map_err(|s| format!("scheduler {owner}: {}", s.message())),
            Err(e) => Err(e),
        };
        out.push(match reply {
            Ok(r) => {
                let r = r.into_inner();
                TaskHolders {
                    cluster: name,
                    content_length: r.content_length,
                    peers: r.peers,
                    error: None,
                }
            }
            Err(e) => TaskHolders {
                cluster: name,
                error: Some(e),
                ..Default::default()
            },
        });
    }
    Ok(out)
}

/// The tasks a search names: an `hf://` or `oci://` reference (resolved
/// as `get` resolves it, into its files or blobs), a task id, a
/// `sha256:` digest, or a URL (its task id without signing parameters).
pub async fn search(
    q: &str,
    hf_endpoint: &str,
    hf_token: Option<&str>,
) -> Result<Vec<NamedTask>, FleetError> {
    let q = q.trim();
    if q.starts_with("hf://") || q.starts_with("oci://") {
        let source = Source {
            kind: "file".into(),
            urls: vec![q.to_string()],
            hf_endpoint: hf_endpoint.to_string(),
            hf_token: hf_token.map(str::to_string),
            ..Default::default()
        };
        let blobs = source
            .resolve()
            .await
            .map_err(|e| FleetError::Query(e.to_string()))?;
        return blobs
            .into_iter()
            .map(|b| {
                let task =
                    b.task
                        .task_id
                        .parse()
                        .map_err(|e: weightcast_types::ids::InvalidTaskId| {
                            FleetError::Query(e.to_string())
                        })?;
                Ok(NamedTask { name: b.name, task })
            })
            .collect();
    }
    let args = if q.len() == 64 && q.bytes().all(|b| b.is_ascii_hexdigit()) {
        TaskArgs {
            task_id: Some(q.to_string()),
            ..Default::default()
        }
    } else if q.starts_with("sha256:") {
        TaskArgs {
            digest: Some(q.to_string()),
            ..Default::default()
        }
    } else {
        TaskArgs {
            url: Some(q.to_string()),
            ..Default::default()
        }
    };
    let task = crate::worker::task_of(&args).map_err(FleetError::Query)?;
    Ok(vec![NamedTask {
        name: q.to_string(),
        task,
    }])
}
