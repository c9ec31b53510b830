//! `weightcast preheat`: warms an `hf://` repo, an `oci://` artifact, a
//! registry image or file URLs into the seeds' (or every node's) caches
//! before the fleet pulls, through a scheduler (no manager needed) or the
//! manager's open API. A bar per blob shows the bytes the chosen peers
//! hold; it ends with one line per blob and fails when any peer failed.

use super::cluster_secret::ClusterSecretArgs;
use super::engine_args::{HfArgs, RegistryLogin};
use anyhow::{bail, Context};
use clap::Args;
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use weightcast_manager::client::OpenApi;
use weightcast_manager::resolve::Source;
use weightcast_proto::pb;
use weightcast_types::task_key::owner;

/// Where a cache job goes.
#[derive(Args, Debug, Clone)]
pub struct ViaArgs {
    /// The cluster's scheduler(s), comma-separated (no manager needed).
    #[arg(
        long,
        env = "WEIGHTCAST_SCHEDULER",
        value_delimiter = ',',
        conflicts_with = "manager"
    )]
    pub scheduler: Vec<String>,
    /// The manager's open API instead, e.g. http://mgr:7500.
    #[arg(long, env = "WEIGHTCAST_MANAGER", requires = "token")]
    pub manager: Option<String>,
    /// A personal access token with the `job` scope (`weightcast manager token create`).
    #[arg(long, env = "WEIGHTCAST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// With --scheduler: the cluster secret it requires.
    #[command(flatten)]
    pub cluster_secret: ClusterSecretArgs,
}

pub enum Via {
    Scheduler(Vec<String>),
    Manager(OpenApi),
}

fn endpoint(s: &str) -> String {
    if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    }
}

impl ViaArgs {
    pub fn via(&self) -> anyhow::Result<Via> {
        match (&self.manager, &self.token) {
            (Some(m), Some(t)) => Ok(Via::Manager(OpenApi::new(m, t))),
            _ if !self.scheduler.is_empty() => Ok(Via::Scheduler(
                self.scheduler.iter().map(|s| endpoint(s)).collect(),
            )),
            _ => bail!("give --scheduler URL, or --manager URL with --token"),
        }
    }
}

#[derive(Args, Debug)]
pub struct PreheatArgs {
    /// hf://org/model[@rev], oci://registry/repo:tag, a registry manifest
    /// URL (https://registry/v2/<repo>/manifests/<tag>, with --type image),
    /// or file URLs.
    #[arg(required = true)]
    pub sources: Vec<String>,
    #[command(flatten)]
    pub via: ViaArgs,
    /// single_seed_peer (the seed each task's later downloads draft),
    /// all_seed_peers, or all_peers.
    #[arg(long, default_value = "single_seed_peer")]
    pub scope: String,
    /// For the "all" scopes: only the peers with these IPs.
    #[arg(long, value_delimiter = ',')]
    pub ips: Vec<String>,
    /// For the "all" scopes: this many peers.
    #[arg(long)]
    pub count: Option<u32>,
    /// For the "all" scopes: this percentage of the peers (rounded down, at least 1).
    #[arg(long)]
    pub percentage: Option<u32>,
    /// Peers fetching one task at once (0: all).
    #[arg(long, default_value_t = 0)]
    pub concurrent_peers: u32,
    /// Seconds until what is still pending fails (0: 25 minutes).
    #[arg(long, default_value_t = 0)]
    pub timeout: u64,
    /// `image` for a registry manifest URL; else `file` (hf:// and oci://
    /// are recognised by themselves).
    #[arg(long = "type", default_value = "file")]
    pub kind: String,
    /// In an image index, the platform (os/arch).
    #[arg(long)]
    pub platform: Option<String>,
    /// oci://: talk plain HTTP to the registry.
    #[arg(long)]
    pub plain_http: bool,
    #[command(flatten)]
    pub registry: RegistryLogin,
    #[command(flatten)]
    pub hf: HfArgs,
    /// A header for the origin, 'Name: value' (an Authorization is used as given).
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// &-separated query parameters left out of file task ids (default:
    /// the signing parameters of S3, GCS, OSS, OBS, COS).
    #[arg(long, default_value = "")]
    pub filtered_query_params: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

impl PreheatArgs {
    fn headers(&self) -> anyhow::Result<BTreeMap<String, String>> {
        self.headers
            .iter()
            .map(|h| {
                let (k, v) = h
                    .split_once(':')
                    .with_context(|| format!("invalid --header {h:?}: expected 'Name: value'"))?;
                Ok((k.trim().to_string(), v.trim().to_string()))
            })
            .collect()
    }
}

/// One blob's bar and totals.
struct Row {
    bar: Option<ProgressBar>,
}

/// Bars per blob on a terminal.
struct Bars {
    multi: Option<MultiProgress>,
    rows: BTreeMap<String, Row>,
}

impl Bars {
    fn new(show: bool) -> Self {
        Self {
            multi: show.then(MultiProgress::new),
            rows: BTreeMap::new(),
        }
    }

    /// `key` is a task id; `total` the bytes of all its chosen peers.
    fn set(&mut self, key: &str, name: &str, done: u64, total: u64, msg: String) {
        let multi = self.multi.clone();
        let row = self.rows.entry(key.to_string()).or_insert_with(|| Row {
            bar: multi.map(|m| {
                let b = m.add(ProgressBar::new(total.max(1)));
                b.set_style(
                    ProgressStyle::with_template(
                        "{prefix:40!} {wide_bar} {bytes}/{total_bytes} {msg}",
                    )
                    .expect("valid template"),
                );
                b.set_prefix(name.to_string());
                b
            }),
        });
        if let Some(b) = &row.bar {
            b.set_length(total.max(1));
            b.set_position(done);
            b.set_message(msg);
        }
    }

    fn finish(&self) {
        for r in self.rows.values() {
            if let Some(b) = &r.bar {
                b.finish_and_clear();
            }
        }
    }
}

/// One blob's outcome, for the closing lines.
#[derive(Default, Clone)]
struct Outcome {
    url: String,
    ok: usize,
    failed: Vec<(String, String)>,
}

pub async fn run(a: PreheatArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let show = !a.json && std::io::stderr().is_terminal();
    let mut bars = Bars::new(show);
    let outcomes = match a.via.via()? {
        Via::Scheduler(endpoints) => via_scheduler(&a, &endpoints, &mut bars).await?,
        Via::Manager(api) => via_manager(&a, &api, &mut bars).await?,
    };
    bars.finish();
    let secs = t0.elapsed().as_secs_f64();
    let failed: usize = outcomes.values().map(|o| o.failed.len()).sum();
    if a.json {
        let tasks: Vec<Value> = outcomes
            .iter()
            .map(|(id, o)| json!({"task_id": id, "url": o.url, "succeeded": o.ok, "failed": o.failed.iter().map(|(h, d)| json!({"peer": h, "description": d})).collect::<Vec<_>>()}))
            .collect();
        println!("{}", json!({"seconds": secs, "tasks": tasks}));
    } else {
        for o in outcomes.values() {
            println!(
                "{}  {} peer(s) warm, {} failed",
                o.url,
                o.ok,
                o.failed.len()
            );
            for (h, d) in &o.failed {
                println!("    {h}: {d}");
            }
        }
        println!("preheated {} blob(s) in {secs:.1} s", outcomes.len());
    }
    if failed > 0 {
        bail!("{failed} peer result(s) failed");
    }
    Ok(())
}

async fn via_scheduler(
    a: &PreheatArgs,
    endpoints: &[String],
    bars: &mut Bars,
) -> anyhow::Result<BTreeMap<String, Outcome>> {
    let source = Source {
        kind: a.kind.clone(),
        urls: a.sources.clone(),
        headers: a.headers()?,
        username: a.registry.registry_user.clone(),
        password: a.registry.registry_password.clone(),
        platform: a.platform.clone(),
        filtered_query_params: a.filtered_query_params.clone(),
        hf_endpoint: a.hf.hf_endpoint.clone(),
        hf_token: a.hf.hf_token.clone(),
        plain_http: a.plain_http,
    };
    let blobs = source.resolve().await?;
    if blobs.is_empty() {
        bail!("nothing to preheat: the source resolved to no blob");
    }
    let names: BTreeMap<String, String> = blobs
        .iter()
        .map(|b| (b.task.task_id.clone(), b.name.clone()))
        .collect();
    // Each task to the scheduler that owns it, as daemons route it.
    let mut by_owner: BTreeMap<String, Vec<pb::WarmTask>> = BTreeMap::new();
    for b in blobs {
        let id = b
            .task
            .task_id
            .parse()
            .context("resolved an invalid task id")?;
        let to = owner(&id, endpoints).cloned().unwrap_or_default();
        by_owner.entry(to).or_default().push(b.task);
    }
    let mut streams = Vec::new();
    for (endpoint, tasks) in by_owner {
        let mut client = a.via.cluster_secret.scheduler_client(&endpoint).await?;
        let req = pb::PreheatRequest {
            tasks,
            scope: a.scope.clone(),
            ips: a.ips.clone(),
            count: a.count.unwrap_or(0),
            percentage: a.percentage.unwrap_or(0),
            concurrent_peer_count: a.concurrent_peers,
            timeout_ms: a.timeout * 1000,
        };
        let s = client
            .preheat(req)
            .await
            .map_err(|s| {
                anyhow::anyhow!(
                    "the scheduler at {endpoint} refused the preheat: {}",
                    s.message()
                )
            })?
            .into_inner();
        streams.push(s.map(move |r| (endpoint.clone(), r)));
    }
    let mut all = futures::stream::select_all(streams);
    let mut outcomes: BTreeMap<String, Outcome> = BTreeMap::new();
    while let Some((endpoint, p)) = all.next().await {
        let p = p.map_err(|s| anyhow::anyhow!("{endpoint}: {}", s.message()))?;
        for t in &p.tasks {
            let name = names
                .get(&t.task_id)
                .cloned()
                .unwrap_or_else(|| t.url.clone());
            let done: u64 = t.peers.iter().map(|r| r.bytes).sum();
            let total = t.content_length * t.peers.len() as u64;
            let ok = t
                .peers
                .iter()
                .filter(|r| r.state() == pb::peer_result::State::Success)
                .count();
            bars.set(
                &t.task_id,
                &name,
                done,
                total,
                format!("{ok}/{} peers", t.peers.len()),
            );
            outcomes.insert(
                t.task_id.clone(),
                Outcome {
                    url: name,
                    ok,
                    failed: t
                        .peers
                        .iter()
                        .filter(|r| r.state() == pb::peer_result::State::Failure)
                        .map(|r| (r.hostname.clone(), r.description.clone()))
                        .collect(),
                },
            );
        }
    }
    Ok(outcomes)
}

async fn via_manager(
    a: &PreheatArgs,
    api: &OpenApi,
    bars: &mut Bars,
) -> anyhow::Result<BTreeMap<String, Outcome>> {
    let headers = a.headers()?;
    let mut args = json!({
        "type": if a.kind == "image" { "image" } else { "file" },
        "url": a.sources[0],
        "urls": a.sources,
        "scope": a.scope,
        "ips": a.ips,
        "count": a.count,
        "percentage": a.percentage,
        "concurrent_peer_count": a.concurrent_peers,
        "timeout": a.timeout as i64 * 1_000_000_000,
        "headers": headers,
        "platform": a.platform,
        "filtered_query_params": a.filtered_query_params,
        "plain_http": a.plain_http,
    });
    if let (Some(u), Some(p)) = (&a.registry.registry_user, &a.registry.registry_password) {
        args["username"] = json!(u);
        args["password"] = json!(p);
    }
    let job = api
        .create_job(&json!({"type": "preheat", "args": args}))
        .await?;
    let id = job["id"]
        .as_i64()
        .context("the manager's answer has no job id")?;
    tracing::info!(job = id, "preheat job created");
    let job = wait_job(api, id, |job| {
        for r in results(job) {
            for p in r["progress"].as_array().into_iter().flatten() {
                let peers = p["peers"].as_u64().unwrap_or(0);
                let total = p["content_length"].as_u64().unwrap_or(0) * peers;
                let key = p["task_id"].as_str().unwrap_or("");
                let url = p["url"].as_str().unwrap_or("");
                let msg = format!("{}/{peers} peers", p["succeeded"].as_u64().unwrap_or(0));
                bars.set(key, url, p["bytes"].as_u64().unwrap_or(0), total, msg);
            }
        }
    })
    .await?;
    let mut outcomes: BTreeMap<String, Outcome> = BTreeMap::new();
    for r in results(&job) {
        for s in r["success_tasks"].as_array().into_iter().flatten() {
            let url = s["url"].as_str().unwrap_or("").to_string();
            let o = outcomes.entry(url.clone()).or_default();
            o.url = url;
            o.ok += 1;
        }
        for f in r["failure_tasks"].as_array().into_iter().flatten() {
            let url = f["url"].as_str().unwrap_or("").to_string();
            let o = outcomes.entry(url.clone()).or_default();
            o.url = url;
            o.failed.push((
                f["hostname"].as_str().unwrap_or("").to_string(),
                f["description"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    for s in job["result"]["job_states"].as_array().into_iter().flatten() {
        if let Some(e) = s["error"].as_str().filter(|e| !e.is_empty()) {
            bail!("preheat job {id} failed: {e}");
        }
    }
    Ok(outcomes)
}

fn results(job: &Value) -> Vec<&Value> {
    job["result"]["job_states"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["results"].as_array().into_iter().flatten())
        .collect()
}

/// Polls a job until it is no longer PENDING.
pub async fn wait_job(
    api: &OpenApi,
    id: i64,
    mut on_update: impl FnMut(&Value),
) -> anyhow::Result<Value> {
    loop {
        let job = api.job(id).await?;
        on_update(&job);
        if job["state"] != "PENDING" {
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
