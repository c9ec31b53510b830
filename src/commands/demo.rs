//! `weightcast demo`: the whole system in one process on real loopback
//! sockets — an origin serving a generated safetensors file, a scheduler, a
//! seed peer and N peers that all download it at once.

use anyhow::{bail, Context};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weightcast_engine::file_server;
use weightcast_engine::{Engine, EngineConfig, GetRequest, Validation};
use weightcast_modelpack::safetensors_gen;
use weightcast_store::sha256_file;
use weightcast_types::byte_size;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Peers downloading at once (besides the seed).
    #[arg(long, default_value_t = 8)]
    pub peers: usize,
    /// Size of the generated model file, e.g. 256MiB or 1GiB.
    #[arg(long, default_value = "256MiB", value_parser = byte_size::parse)]
    pub size: u64,
    /// Cap the origin at this rate (e.g. 100MB/s) to see the swarm take over.
    #[arg(long, value_parser = byte_size::parse)]
    pub origin_rate_limit: Option<u64>,
    /// Keep the demo's files here instead of a temporary directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

pub async fn run(a: DemoArgs) -> anyhow::Result<()> {
    if a.peers == 0 {
        bail!("--peers must be at least 1");
    }
    let tmp;
    let root = match &a.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("weightcast-demo-")
                .tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let files = root.join("origin");
    std::fs::create_dir_all(&files)?;
    let model = files.join("model.safetensors");
    eprintln!(
        "generating a {} safetensors file ...",
        byte_size::format(a.size)
    );
    {
        let model = model.clone();
        let size = a.size;
        tokio::task::spawn_blocking(move || safetensors_gen::write(&model, size, 42)).await??;
    }
    let want = sha256_file(&model)?;

    let origin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let origin_addr = origin_listener.local_addr()?;
    let origin_stats = std::sync::Arc::new(file_server::ServedStats::default());
    tokio::spawn(file_server::serve(
        origin_listener,
        files.clone(),
        origin_stats.clone(),
    ));
    let sched_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sched = weightcast_scheduler::serve(sched_listener, Default::default())?;
    let endpoint = format!("http://{}", sched.addr);

    let engine = |name: String, seed: bool| {
        let mut c = EngineConfig::new(root.join(&name));
        c.listen = "127.0.0.1:0".parse().expect("valid");
        c.hostname = name;
        c.seed = seed;
        c.scheduler = Some(endpoint.clone());
        c.origin.rate_limit = a.origin_rate_limit;
        c
    };
    let _seed = Engine::start(engine("seed".into(), true)).await?;
    let mut peers = Vec::new();
    for i in 0..a.peers {
        peers.push(Engine::start(engine(format!("peer-{i:02}"), false)).await?);
    }
    for p in &peers {
        if !p.scheduler_connected(Duration::from_secs(10)).await {
            bail!("peers could not reach the in-process scheduler at {endpoint}");
        }
    }
    eprintln!(
        "origin http://{origin_addr}, scheduler {endpoint}, 1 seed, {} peers: downloading ...",
        a.peers
    );
    let url = format!("http://{origin_addr}/model.safetensors");
    let t0 = Instant::now();
    let mut runs = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        let p: Arc<Engine> = p.clone();
        let req = GetRequest {
            digest: Some(format!("sha256:{want}")),
            validate: Some(Validation::Safetensors),
            ..GetRequest::new(
                &url,
                root.join(format!("peer-{i:02}/out/model.safetensors")),
            )
        };
        runs.push(tokio::spawn(async move { p.get(&req, |_| {}).await }));
    }
    let mut rows = Vec::new();
    for (i, r) in runs.into_iter().enumerate() {
        let s = r.await.context("peer task panicked")??;
        let ok = sha256_file(&s.output)? == want;
        rows.push((format!("peer-{i:02}"), s, ok));
    }
    let total = t0.elapsed();
    println!(
        "{:<9} {:>8} {:>12} {:>12} {:>12} {:>9}",
        "peer", "seconds", "throughput", "from origin", "from peers", "verified"
    );
    for (name, s, ok) in &rows {
        println!(
            "{:<9} {:>8.2} {:>10}/s {:>12} {:>12} {:>9}",
            name,
            s.seconds,
            byte_size::format(s.bytes_per_second as u64),
            byte_size::format(s.from_origin),
            byte_size::format(s.from_peers),
            if *ok { "sha256 ok" } else { "MISMATCH" }
        );
    }
    let served = origin_stats.snapshot().bytes_served;
    println!(
        "\n{} peers got {} each in {:.2} s. The origin served {} = {:.2}x the file (direct downloads would be {}x).",
        a.peers,
        byte_size::format(a.size),
        total.as_secs_f64(),
        byte_size::format(served),
        served as f64 / a.size.max(1) as f64,
        a.peers
    );
    if rows.iter().any(|r| !r.2) {
        bail!("a peer's output did not match the origin's sha256");
    }
    Ok(())
}
