//! `weightcast`: distributes AI model weights to many machines at once.
//!
//! This file only parses the command line and dispatches; each command lives
//! in `commands/`.

mod commands;

/// mimalloc instead of glibc's allocator: the scheduler allocates and frees
/// a small message per decision per child, and under load glibc spent a
/// sixth of its CPU in `malloc`/`free` (fastbin consolidation included);
/// with mimalloc it handled 20-21k messages/s at 10,000 peers against
/// 14-16k (bench/results/sched-load/stop26-mimalloc-*). The daemons'
/// transfers measured the same either way.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "weightcast",
    version,
    about = "Distribute AI model weights to many machines at once",
    long_about = "Distribute AI model weights to many machines at once.\n\n\
The origin sends about one copy; nodes pass verified pieces to each other and \
write them straight into memory-mapped caches.\n\n\
Quick start (no cluster needed):   weightcast demo --peers 8 --size 1GiB\n\
One file through a node's daemon:  weightcast get https://host/model.safetensors -o /models/\n\
A Hugging Face repo:               weightcast get hf://org/model@main -o /models/model\n\
A ModelPack artifact:              weightcast get oci://registry/models/llama3:8b -o /models/llama3\n\
Every object under an S3 prefix:   weightcast get s3://bucket/models/llama3/ -o /models/llama3\n\n\
Every flag can also be set by an environment variable (shown in each command's --help) \
or by a WEIGHTCAST_*=value line in the config file (--config, default /etc/weightcast/weightcast.env)."
)]
struct Cli {
    /// Config file of WEIGHTCAST_*=value lines (the environment variables
    /// named in each --help). Flags and the environment override it.
    /// Default: /etc/weightcast/weightcast.env when it exists.
    #[arg(long, global = true, env = "WEIGHTCAST_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Export OpenTelemetry traces to this OTLP/HTTP receiver (e.g.
    /// http://collector:4318; spans go to its /v1/traces). Off by default.
    /// One `get` is one trace, with spans from the client, the daemon, the
    /// scheduler, the seed and its origin reads.
    #[arg(
        long,
        global = true,
        env = "WEIGHTCAST_OTLP_ENDPOINT",
        value_name = "URL"
    )]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download a file (https://), a Hugging Face repo (hf://), an OCI model
    /// artifact (oci://) or objects from object storage (s3://, gs://, az://)
    /// through the local daemon, or in-process when none runs.
    Get(commands::get::GetArgs),
    /// Show what a `get` of an hf:// or oci:// source would fetch, without fetching.
    Inspect(commands::inspect::InspectArgs),
    /// Run a peer on this node: cache, upload server, local API and metrics.
    Daemon(commands::daemon::DaemonArgs),
    /// Run the scheduler that plans which peer serves which.
    Scheduler(commands::scheduler::SchedulerArgs),
    /// Run the manager: clusters, tokens, the Dragonfly-compatible open API (Harbor preheat).
    Manager(commands::manager::ManagerArgs),
    /// Warm an hf:// repo, oci:// artifact, image or URLs into peers' caches before the fleet pulls.
    Preheat(commands::preheat::PreheatArgs),
    /// Which peers hold a task (ls), or evict it everywhere (rm).
    Task(commands::task::TaskArgsCli),
    /// This node's cache: list it (ls), remove a task (rm), collect now (gc).
    Cache(commands::cache::CacheArgsCli),
    /// Run an origin, a scheduler, a seed and N peers in this process on loopback and compare.
    Demo(commands::demo::DemoArgs),
}

fn main() -> std::process::ExitCode {
    // The config file feeds the environment, so parse twice: once to find
    // the file, once with its settings in place.
    if let Err(e) = commands::config_file::load(Cli::parse().config) {
        eprintln!("error: {}", one_line(&e));
        return std::process::ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let default_log = match &cli.command {
        Command::Daemon(_) | Command::Scheduler(_) | Command::Manager(_) => "info",
        Command::Get(_)
        | Command::Demo(_)
        | Command::Inspect(_)
        | Command::Preheat(_)
        | Command::Task(_)
        | Command::Cache(_) => "warn",
    };
    let service = match &cli.command {
        Command::Get(_) => "weightcast-get",
        Command::Inspect(_) => "weightcast-inspect",
        Command::Daemon(_) => "weightcast-daemon",
        Command::Scheduler(_) => "weightcast-scheduler",
        Command::Manager(_) => "weightcast-manager",
        Command::Preheat(_) => "weightcast-preheat",
        Command::Task(_) => "weightcast-task",
        Command::Cache(_) => "weightcast-cache",
        Command::Demo(_) => "weightcast-demo",
    };
    let export = weightcast_telemetry::TraceExport {
        endpoint: cli.otlp_endpoint.clone(),
        service: service.to_string(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // The trace exporter is a task of this runtime: set up inside it.
    let telemetry =
        match runtime.block_on(async { weightcast_telemetry::init(default_log, &export) }) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Get(a) => {
                let span = tracing::info_span!("weightcast get", source = %a.url);
                // Interrupted, the get is dropped: an output being placed
                // loses its temporary file, and the output path keeps
                // what it had.
                tokio::select! {
                    r = tracing::Instrument::instrument(commands::get::run(a), span) => r,
                    () = commands::ready_file::shutdown_signal() => Err(anyhow::anyhow!(
                        "interrupted: the output was left as it was; the verified pieces stay in the cache, so the same get resumes"
                    )),
                }
            }
            Command::Inspect(a) => commands::inspect::run(a).await,
            Command::Daemon(a) => commands::daemon::run(a).await,
            Command::Scheduler(a) => commands::scheduler::run(a).await,
            Command::Manager(a) => commands::manager::run(a).await,
            Command::Preheat(a) => commands::preheat::run(a).await,
            Command::Task(a) => commands::task::run(a).await,
            Command::Demo(a) => commands::demo::run(a).await,
            Command::Cache(a) => commands::cache::run(a).await,
        }
    });
    // The last spans leave before the process does (off the workers:
    // the flush blocks).
    let _ = runtime
        .block_on(async move { tokio::task::spawn_blocking(move || telemetry.shutdown()).await });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line. A cause that the message above it
/// already quotes (many errors put their source in their own text) is not
/// repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    #[test]
    fn causes_already_quoted_are_not_repeated() {
        let io = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let text = io.to_string();
        let e = anyhow::Error::new(io)
            .context(format!("cannot listen on 0.0.0.0:7430 (--listen): {text}"))
            .context("cannot start the engine");
        assert_eq!(
            super::one_line(&e),
            format!("cannot start the engine: cannot listen on 0.0.0.0:7430 (--listen): {text}")
        );
    }
}
