//! `weightcast task ls|rm`: which peers hold a task, and evicting it
//! everywhere, through a scheduler or the manager.

use super::preheat::{Via, ViaArgs};
use anyhow::Context;
use clap::{Args, Subcommand};
use futures::StreamExt;
use weightcast_manager::jobs::TaskArgs;
use weightcast_manager::worker::task_of;
use weightcast_proto::pb;

#[derive(Args, Debug)]
pub struct TaskArgsCli {
    #[command(subcommand)]
    pub command: TaskCommand,
}

#[derive(Subcommand, Debug)]
pub enum TaskCommand {
    /// Lists the peers that hold a task: a URL, sha256:<hex> (an LFS file,
    /// an OCI blob) or a task id.
    Ls {
        task: String,
        #[command(flatten)]
        via: ViaArgs,
    },
    /// Evicts a task from every peer's cache.
    Rm {
        task: String,
        #[command(flatten)]
        via: ViaArgs,
    },
}

fn args_of(task: &str) -> TaskArgs {
    let mut a = TaskArgs::default();
    if task.starts_with("sha256:") {
        a.digest = Some(task.to_string());
    } else if task.len() == 64 && task.bytes().all(|b| b.is_ascii_hexdigit()) {
        a.task_id = Some(task.to_string());
    } else {
        a.url = Some(task.to_string());
    }
    a
}

pub async fn run(a: TaskArgsCli) -> anyhow::Result<()> {
    let (task, via, remove) = match &a.command {
        TaskCommand::Ls { task, via } => (task, via, false),
        TaskCommand::Rm { task, via } => (task, via, true),
    };
    let targs = args_of(task);
    let id = task_of(&targs).map_err(anyhow::Error::msg)?;
    match via.via()? {
        Via::Scheduler(endpoints) => {
            for endpoint in endpoints {
                let mut client = via.cluster_secret.scheduler_client(&endpoint).await?;
                if remove {
                    let mut s = client
                        .delete_tasks(pb::DeleteTasksRequest {
                            task_ids: vec![id.to_hex()],
                            timeout_ms: 0,
                        })
                        .await
                        .map_err(|s| anyhow::anyhow!("{endpoint}: {}", s.message()))?
                        .into_inner();
                    let mut last = None;
                    while let Some(p) = s.next().await {
                        last = Some(p.map_err(|s| anyhow::anyhow!("{endpoint}: {}", s.message()))?);
                    }
                    let mut failed = 0;
                    for r in last
                        .iter()
                        .flat_map(|p| p.tasks.iter())
                        .flat_map(|t| t.peers.iter())
                    {
                        let what = match r.state() {
                            pb::peer_result::State::Success if r.held => "evicted",
                            pb::peer_result::State::Success => "not cached",
                            _ => {
                                failed += 1;
                                "FAILED"
                            }
                        };
                        println!("{}\t{}\t{}\t{}", r.hostname, r.addr, what, r.description);
                    }
                    if failed > 0 {
                        anyhow::bail!("{failed} peers could not evict task {id}");
                    }
                } else {
                    let reply = client
                        .stat_task(pb::StatTaskRequest {
                            task_id: id.to_hex(),
                        })
                        .await
                        .map_err(|s| anyhow::anyhow!("{endpoint}: {}", s.message()))?
                        .into_inner();
                    for p in reply.peers {
                        let state = if p.held { "complete" } else { "partial" };
                        let kind = if p.seed { "seed" } else { "peer" };
                        println!(
                            "{}\t{}\t{kind}\t{state}\t{} bytes",
                            p.hostname, p.addr, p.bytes
                        );
                    }
                }
            }
            Ok(())
        }
        Via::Manager(api) => {
            let kind = if remove { "delete_task" } else { "get_task" };
            let body = serde_json::json!({"type": kind, "args": targs_json(&targs)});
            let job = api.create_job(&body).await?;
            let id = job["id"]
                .as_i64()
                .context("the manager's answer has no job id")?;
            let job = super::preheat::wait_job(&api, id, |_| {}).await?;
            println!("{}", serde_json::to_string_pretty(&job["result"])?);
            if job["state"] != "SUCCESS" {
                anyhow::bail!("job {id} ended {}", job["state"]);
            }
            Ok(())
        }
    }
}

fn targs_json(a: &TaskArgs) -> serde_json::Value {
    serde_json::json!({"task_id": a.task_id, "url": a.url, "digest": a.digest})
}
