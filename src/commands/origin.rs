//! `weightcast origin`: a test origin (hidden from --help).

use super::ready_file;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct OriginArgs {
    /// Directory whose files are served at /<relative path>.
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:7480")]
    pub listen: SocketAddr,
    /// Answer the first N requests with 503 and Retry-After: 1.
    #[arg(long, default_value_t = 0)]
    pub fail_first: u32,
    /// Write {"addr"} here once serving.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

pub async fn run(a: OriginArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(a.listen).await?;
    let addr = listener.local_addr()?;
    let (_stats, task) = weightcast_bench::origin::serve(listener, a.dir.clone(), a.fail_first);
    if let Some(f) = &a.ready_file {
        ready_file::write(f, &serde_json::json!({"addr": addr.to_string()}))?;
    }
    tracing::info!(%addr, dir = %a.dir.display(), "origin serving (stats at /_stats)");
    tokio::select! {
        _ = task => {}
        _ = ready_file::shutdown_signal() => {}
    }
    Ok(())
}
