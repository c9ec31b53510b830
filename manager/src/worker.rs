//! The job queue's consumer: each manager replica claims pending jobs from
//! the database (one at a time, under a lease it keeps renewing), carries
//! them out against one active scheduler per cluster, and writes their
//! progress and result back. A replica that dies stops renewing; its jobs
//! become claimable again when the lease runs out, and another replica
//! runs them (a preheat is idempotent: peers that hold a task report it
//! done at once).

use crate::db::{now_ms, Db, Instance};
use crate::jobs::{self, ClusterState, PreheatArgs, TaskArgs};
use crate::resolve::Source;
use futures::StreamExt;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use weightcast_proto::cluster_auth::{self, AuthedSchedulerClient, ClusterSecrets};
use weightcast_proto::pb;
use weightcast_types::task_key::{parse_filtered, TaskKey};
use weightcast_types::TaskId;

/// How long a claim holds without renewal.
pub const LEASE: Duration = Duration::from_secs(30);
/// How often a running job's state is written (and its lease renewed).
const WRITE_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Worker {
    pub db: Db,
    /// This replica's name in `jobs.claimed_by`.
    pub owner: String,
    /// A scheduler not heard from within this is not used.
    pub ttl: Duration,
    /// The Hub `hf://` preheats resolve against unless the args name one.
    pub hf_endpoint: String,
    pub hf_token: Option<String>,
    /// Proved to schedulers (see [`weightcast_proto::cluster_auth`]).
    pub cluster_secrets: Option<Arc<ClusterSecrets>>,
}

fn host_ip(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

fn state_name(p: &pb::PeerResult) -> &'static str {
    match p.state() {
        pb::peer_result::State::Pending => "PENDING",
        pb::peer_result::State::Success => "SUCCESS",
        pb::peer_result::State::Failure => "FAILURE",
    }
}

/// A preheat's `results[0]` from the scheduler's job state.
fn preheat_result(p: &pb::JobProgress, cluster_id: i64) -> Value {
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    let mut progress = Vec::new();
    for t in &p.tasks {
        let mut bytes = 0u64;
        for r in &t.peers {
            bytes += r.bytes;
            let entry = json!({"url": t.url, "hostname": r.hostname, "ip": host_ip(&r.addr)});
            match r.state() {
                pb::peer_result::State::Success => ok.push(entry),
                pb::peer_result::State::Failure => {
                    let mut e = entry;
                    e["description"] = json!(r.description);
                    failed.push(e);
                }
                pb::peer_result::State::Pending => {}
            }
        }
        progress.push(json!({
            "task_id": t.task_id,
            "url": t.url,
            "content_length": t.content_length,
            "peers": t.peers.len(),
            "succeeded": t.peers.iter().filter(|r| state_name(r) == "SUCCESS").count(),
            "failed": t.peers.iter().filter(|r| state_name(r) == "FAILURE").count(),
            "bytes": bytes,
        }));
    }
    json!({
        "success_tasks": ok,
        "failure_tasks": failed,
        "scheduler_cluster_id": cluster_id,
        "progress": progress,
    })
}

fn delete_result(p: &pb::JobProgress, cluster_id: i64) -> Value {
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for t in &p.tasks {
        for r in &t.peers {
            let mut e = json!({
                "hostname": r.hostname,
                "ip": host_ip(&r.addr),
                "host_type": if r.seed { "super" } else { "normal" },
                "description": r.description,
            });
            match r.state() {
                pb::peer_result::State::Success => {
                    if r.held {
                        ok.push(e)
                    }
                }
                _ => {
                    e["description"] = json!(r.description);
                    failed.push(e)
                }
            }
        }
    }
    json!({"success_tasks": ok, "failure_tasks": failed, "scheduler_cluster_id": cluster_id})
}

/// The task id a `get_task`/`delete_task` names.
pub fn task_of(a: &TaskArgs) -> Result<TaskId, String> {
    if let Some(t) = a.task_id.as_deref().filter(|t| !t.is_empty()) {
        return t.parse().map_err(|e| format!("args.task_id: {e}"));
    }
    if let Some(d) = a.digest.as_deref().filter(|d| !d.is_empty()) {
        let mut out = [0u8; 32];
        hex::decode_to_slice(d.strip_prefix("sha256:").unwrap_or(d), &mut out)
            .map_err(|_| format!("args.digest {d:?}: expected sha256:<64 hex>"))?;
        return Ok(TaskId::from_sha256(&out));
    }
    let url = a
        .url
        .as_deref()
        .or(a.content_for_calculating_task_id.as_deref())
        .filter(|u| !u.is_empty())
        .ok_or("args needs task_id, digest or url")?;
    let filtered = parse_filtered(a.filtered_query_params.as_deref().unwrap_or(""));
    TaskKey::Url(url)
        .task_id_filtering(&filtered)
        .map_err(|e| e.to_string())
}

impl Worker {
    /// Claims and runs jobs until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let running = Arc::new(tokio::sync::Semaphore::new(8));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
            loop {
                let Ok(permit) = running.clone().try_acquire_owned() else {
                    break;
                };
                match self.db.claim_job(&self.owner, LEASE).await {
                    Ok(Some(job)) => {
                        tracing::info!(job = job.id, kind = %job.kind, "running job");
                        let w = self.clone();
                        let stop = cancel.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = stop.cancelled() => {}
                                _ = w.run_job(job) => {}
                            }
                            drop(permit);
                        });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot claim jobs");
                        break;
                    }
                }
            }
        }
    }

    /// The clusters a job goes to, each with the scheduler that serves it
    /// (or none active).
    async fn targets(&self, ids: &[i64]) -> Result<Vec<(i64, Vec<Instance>)>, String> {
        let clusters = self.db.clusters().await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for (id, _) in clusters
            .iter()
            .filter(|(id, _)| ids.is_empty() || ids.contains(id))
        {
            let active = self
                .db
                .active("scheduler", *id, self.ttl)
                .await
                .map_err(|e| e.to_string())?;
            if ids.is_empty() && active.is_empty() {
                continue;
            }
            out.push((*id, active));
        }
        if out.is_empty() {
            return Err("candidate schedulers not found".into());
        }
        Ok(out)
    }

    async fn run_job(&self, job: crate::db::JobRow) {
        let ids: Vec<i64> = serde_json::from_str(&job.cluster_ids).unwrap_or_default();
        let started = now_ms();
        let parts: Arc<Mutex<Vec<ClusterState>>> = Arc::new(Mutex::new(Vec::new()));
        let write = |state: &str, parts: &[ClusterState]| {
            let result = jobs::group_result(&job.group_uuid, state, started, now_ms(), parts);
            let db = self.db.clone();
            let (id, owner, state) = (job.id, self.owner.clone(), state.to_string());
            async move {
                db.update_job(id, &owner, &state, &result.to_string(), LEASE)
                    .await
                    .unwrap_or(false)
            }
        };
        let fail_all = |error: String| ClusterState {
            cluster_id: 0,
            state: "FAILURE".into(),
            error,
            created_at: started,
            updated_at: now_ms(),
            result: json!({"success_tasks": [], "failure_tasks": [], "scheduler_cluster_id": 0}),
        };
        let targets = match self.targets(&ids).await {
            Ok(t) => t,
            Err(e) => {
                write("FAILURE", &[fail_all(e)]).await;
                return;
            }
        };
        // Preheats resolve once for every cluster.
        let plan = match job.kind.as_str() {
            jobs::PREHEAT => {
                let args: PreheatArgs = serde_json::from_str(&job.args).unwrap_or_default();
                match self.preheat_request(&args).await {
                    Ok(r) => Plan::Preheat(r),
                    Err(e) => {
                        write("FAILURE", &[fail_all(e)]).await;
                        return;
                    }
                }
            }
            jobs::GET_TASK | jobs::DELETE_TASK => {
                let args: TaskArgs = serde_json::from_str(&job.args).unwrap_or_default();
                match task_of(&args) {
                    Ok(t) if job.kind == jobs::GET_TASK => Plan::Stat(t),
                    Ok(t) => Plan::Delete(
                        t,
                        args.timeout
                            .filter(|n| *n > 0)
                            .map(|n| n as u64 / 1_000_000)
                            .unwrap_or(0),
                    ),
                    Err(e) => {
                        write("FAILURE", &[fail_all(e)]).await;
                        return;
                    }
                }
            }
            other => {
                write(
                    "FAILURE",
                    &[fail_all(format!("unknown job type {other:?}"))],
                )
                .await;
                return;
            }
        };
        {
            let mut p = parts.lock().unwrap_or_else(|e| e.into_inner());
            for (id, _) in &targets {
                p.push(ClusterState {
                    cluster_id: *id,
                    state: "STARTED".into(),
                    created_at: started,
                    updated_at: started,
                    result: json!({"success_tasks": [], "failure_tasks": [], "scheduler_cluster_id": id}),
                    ..Default::default()
                });
            }
        }
        let all =
            futures::future::join_all(targets.iter().enumerate().map(|(i, (cluster, sched))| {
                let parts = parts.clone();
                let plan = &plan;
                let secrets = self.cluster_secrets.as_ref();
                async move {
                    let set = |state: &str, error: String, result: Option<Value>| {
                        let mut p = parts.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(c) = p.get_mut(i) {
                            c.state = state.to_string();
                            c.error = error;
                            c.updated_at = now_ms();
                            if let Some(r) = result {
                                c.result = r;
                            }
                        }
                    };
                    if sched.is_empty() {
                        set("FAILURE", "candidate schedulers not found".into(), None);
                        return;
                    }
                    let addrs: Vec<String> = sched.iter().map(|i| i.addr.clone()).collect();
                    let r = run_on(&addrs, secrets, *cluster, plan, &|p: Value| {
                        set("STARTED", String::new(), Some(p))
                    })
                    .await;
                    match r {
                        Ok((ok, result)) => set(
                            if ok { "SUCCESS" } else { "FAILURE" },
                            String::new(),
                            Some(result),
                        ),
                        Err(e) => set("FAILURE", e, None),
                    }
                }
            }));
        tokio::pin!(all);
        let mut tick = tokio::time::interval(WRITE_EVERY);
        loop {
            tokio::select! {
                _ = &mut all => break,
                _ = tick.tick() => {
                    let snapshot = parts.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    if !write("PENDING", &snapshot).await {
                        tracing::warn!(job = job.id, "the job is gone or another replica holds it; stopping here");
                        return;
                    }
                }
            }
        }
        let snapshot = parts.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let state = if snapshot.iter().any(|p| p.state == "FAILURE") {
            "FAILURE"
        } else {
            "SUCCESS"
        };
        tracing::info!(job = job.id, state, "job over");
        write(state, &snapshot).await;
    }

    async fn preheat_request(&self, a: &PreheatArgs) -> Result<pb::PreheatRequest, String> {
        let source = Source {
            kind: a.kind.clone(),
            urls: a.all_urls(),
            headers: a.headers.clone().unwrap_or_default(),
            username: a.username.clone(),
            password: a.password.clone(),
            platform: a.platform.clone().filter(|p| !p.is_empty()),
            filtered_query_params: a.filtered_query_params.clone().unwrap_or_default(),
            hf_endpoint: a
                .hf_endpoint
                .clone()
                .unwrap_or_else(|| self.hf_endpoint.clone()),
            hf_token: a.hf_token.clone().or_else(|| self.hf_token.clone()),
            plain_http: a.plain_http.unwrap_or(false),
        };
        let blobs = source.resolve().await.map_err(|e| e.to_string())?;
        Ok(pb::PreheatRequest {
            tasks: blobs.into_iter().map(|b| b.task).collect(),
            scope: a.scope.clone().unwrap_or_default(),
            ips: a.ips.clone().unwrap_or_default(),
            count: a.count.unwrap_or(0),
            percentage: a.percentage.unwrap_or(0),
            concurrent_peer_count: a.concurrent_peer_count.unwrap_or(0).clamp(0, 1000) as u32,
            timeout_ms: a.timeout().map_or(0, |t| t.as_millis() as u64),
        })
    }
}

/// The job states of several schedulers as one.
fn merged(parts: &[Option<pb::JobProgress>]) -> pb::JobProgress {
    let mut out = pb::JobProgress {
        finished: true,
        ..Default::default()
    };
    for p in parts {
        match p {
            Some(p) => {
                out.tasks.extend(p.tasks.iter().cloned());
                out.finished &= p.finished;
            }
            None => out.finished = false,
        }
    }
    out
}

enum Plan {
    Preheat(pb::PreheatRequest),
    Stat(TaskId),
    /// The task and the timeout in ms (0: the scheduler's default).
    Delete(TaskId, u64),
}

async fn connect(
    endpoint: &str,
    secrets: Option<&Arc<ClusterSecrets>>,
) -> Result<AuthedSchedulerClient, String> {
    cluster_auth::connect_scheduler(endpoint, secrets.cloned())
        .await
        .map_err(|e| format!("scheduler {endpoint}: cannot connect: {e}"))
}

/// Runs the plan on a cluster's active schedulers: a preheat's tasks each
/// to the scheduler that owns them (as daemons route them), a lookup to the
/// task's owner, an eviction through one (it reaches every peer).
/// Answers `(all succeeded, results[0])`.
async fn run_on(
    schedulers: &[String],
    secrets: Option<&Arc<ClusterSecrets>>,
    cluster: i64,
    plan: &Plan,
    progress: &(dyn Fn(Value) + Sync),
) -> Result<(bool, Value), String> {
    let owner_of = |t: &TaskId| {
        weightcast_types::task_key::owner(t, schedulers)
            .cloned()
            .unwrap_or_default()
    };
    match plan {
        Plan::Preheat(req) => {
            let mut by_owner: std::collections::BTreeMap<String, Vec<pb::WarmTask>> =
                Default::default();
            for t in &req.tasks {
                let id: TaskId = t.task_id.parse().map_err(|e| format!("{e}"))?;
                by_owner.entry(owner_of(&id)).or_default().push(t.clone());
            }
            let mut streams = Vec::new();
            for (endpoint, tasks) in by_owner {
                let mut client = connect(&endpoint, secrets).await?;
                let s = client
                    .preheat(pb::PreheatRequest {
                        tasks,
                        ..req.clone()
                    })
                    .await
                    .map_err(|s| format!("scheduler {endpoint}: {}", s.message()))?
                    .into_inner();
                let i = streams.len();
                streams.push(s.map(move |p| (i, endpoint.clone(), p)));
            }
            let mut latest: Vec<Option<pb::JobProgress>> = vec![None; streams.len()];
            let mut all = futures::stream::select_all(streams);
            while let Some((i, endpoint, p)) = all.next().await {
                let p = p.map_err(|s| format!("scheduler {endpoint}: {}", s.message()))?;
                latest[i] = Some(p);
                progress(preheat_result(&merged(&latest), cluster));
            }
            let last = merged(&latest);
            if latest.iter().any(Option::is_none) {
                return Err("a scheduler sent no job state".into());
            }
            let ok = last.finished
                && last
                    .tasks
                    .iter()
                    .all(|t| t.peers.iter().all(|r| state_name(r) == "SUCCESS"));
            Ok((ok, preheat_result(&last, cluster)))
        }
        Plan::Delete(task, timeout_ms) => {
            let mut client = connect(&owner_of(task), secrets).await?;
            let mut stream = client
                .delete_tasks(pb::DeleteTasksRequest {
                    task_ids: vec![task.to_hex()],
                    timeout_ms: *timeout_ms,
                })
                .await
                .map_err(|s| s.message().to_string())?
                .into_inner();
            let mut last = None;
            while let Some(p) = stream.next().await {
                last = Some(p.map_err(|s| s.message().to_string())?);
            }
            let last = last.ok_or("the scheduler sent no job state")?;
            let ok = last
                .tasks
                .iter()
                .all(|t| t.peers.iter().all(|r| state_name(r) == "SUCCESS"));
            Ok((ok, delete_result(&last, cluster)))
        }
        Plan::Stat(task) => {
            let mut client = connect(&owner_of(task), secrets).await?;
            let reply = client
                .stat_task(pb::StatTaskRequest {
                    task_id: task.to_hex(),
                })
                .await
                .map_err(|s| s.message().to_string())?
                .into_inner();
            let now = crate::time_format::rfc3339(now_ms());
            let peers: Vec<Value> = reply
                .peers
                .iter()
                .map(|p| {
                    json!({
                        "id": p.peer_id,
                        "hostname": p.hostname,
                        "ip": host_ip(&p.addr),
                        "host_type": if p.seed { "super" } else { "normal" },
                        "created_at": now,
                        "updated_at": now,
                        "IsFinished": state_name(p) == "SUCCESS",
                        "bytes": p.bytes,
                    })
                })
                .collect();
            Ok((
                true,
                json!({"peers": peers, "scheduler_cluster_id": cluster, "task_id": task.to_hex()}),
            ))
        }
    }
}
