//! `weightcast cache ls|rm|gc`: this node's cache, through its daemon, or
//! on the data dir itself when no daemon runs.

use super::engine_args::{default_data_dir, CacheArgs};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use weightcast_engine::cache_admin::{self, CacheOp};
use weightcast_engine::local_api;
use weightcast_store::{CacheReport, Store};
use weightcast_types::byte_size;

#[derive(Args, Debug)]
pub struct CacheArgsCli {
    #[command(subcommand)]
    pub command: CacheCommand,
    /// The node's data dir (its daemon's socket is there).
    #[arg(long, env = "WEIGHTCAST_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// The daemon's socket. It must answer.
    #[arg(long, env = "WEIGHTCAST_DAEMON_SOCKET", global = true)]
    pub daemon: Option<PathBuf>,
    /// Print the report as JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// With no daemon running: the bound `gc` applies.
    #[command(flatten)]
    pub cache: CacheArgs,
}

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// The tasks in the cache, least recently used first.
    Ls,
    /// Removes a task (a task id or the URL it was fetched from), pinned or
    /// not, unless it is in use.
    Rm { task: String },
    /// Evicts now what the bound and the TTL say must go.
    Gc,
}

pub async fn run(a: CacheArgsCli) -> anyhow::Result<()> {
    let op = match &a.command {
        CacheCommand::Ls => CacheOp::Ls,
        CacheCommand::Rm { task } => CacheOp::Rm { task: task.clone() },
        CacheCommand::Gc => CacheOp::Gc,
    };
    let data_dir = a.data_dir.clone().unwrap_or_else(default_data_dir);
    let (socket, must_answer) = match &a.daemon {
        Some(s) => (s.clone(), true),
        None => (local_api::socket_path(&data_dir), false),
    };
    let report = match local_api::connect(&socket).await {
        Some(stream) => local_api::cache_via_daemon(stream, &socket, op).await?,
        None if must_answer => {
            anyhow::bail!("no weightcast daemon answers on {}", socket.display())
        }
        None => {
            let policy = a.cache.policy(&data_dir)?;
            let store = Store::with_policy(&data_dir, policy)?;
            tokio::task::spawn_blocking(move || cache_admin::apply(&store, &op)).await??
        }
    };
    print(&a, &report)
}

fn print(a: &CacheArgsCli, r: &CacheReport) -> anyhow::Result<()> {
    if a.json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    if matches!(a.command, CacheCommand::Ls) {
        println!(
            "{:<64}  {:>10}  {:>8}  {:<6}  URL",
            "TASK", "SIZE", "IDLE", "STATE"
        );
        for e in &r.entries {
            let state = match (e.in_use, e.pinned, e.complete) {
                (true, _, _) => "in-use",
                (_, true, _) => "pinned",
                (_, _, true) => "done",
                _ => "part",
            };
            println!(
                "{}  {:>10}  {:>7}s  {:<6}  {}",
                e.task_id,
                byte_size::format(e.bytes),
                e.idle_seconds,
                state,
                e.url
            );
        }
    }
    for id in &r.evicted {
        println!("removed {id}");
    }
    let bound = r
        .max_bytes
        .map(|m| format!(" of {}", byte_size::format(m)))
        .unwrap_or_default();
    eprintln!(
        "{} tasks, {}{bound}",
        r.entries.len(),
        byte_size::format(r.used_bytes)
    );
    Ok(())
}
