//! The Hugging Face endpoint benchmark: the real `huggingface_hub` client
//! (`hf download`, newest 2.x) on N nodes at once, straight from a test Hub
//! (with its LFS CDN) and, in the same run, through each node's weightcast
//! daemon (`HF_ENDPOINT=http://<daemon>`, a scheduler and one seed). Prints
//! both, the throughput ratio and the CDN bytes; then the time to first
//! byte of a cold-cache GET of the file through a fresh daemon, against the
//! Hub's own.
//!
//! ```text
//! cargo build --release --workspace && target/release/hf-endpoint --peers 3 --size 1GiB
//! ```
//! Loopback has no bandwidth limit: every copy the CDN sends costs it
//! nothing here, so the direct baseline is as fast as it will ever be; what
//! this shows is the endpoint's own cost and the origin load.

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;
use weightcast_modelpack::safetensors_gen;
use weightcast_testkit::cluster::{sha256_file, Cluster, Daemon};
use weightcast_testkit::hf_hub::{self, Content, FileSpec, HubConfig, RepoKind, RepoSpec, TestHub};
use weightcast_types::byte_size;

#[derive(Parser)]
#[command(about = "huggingface_hub through weightcast daemons vs straight from the Hub")]
struct Args {
    /// Nodes downloading at once.
    #[arg(long, default_value_t = 3)]
    peers: usize,
    /// Size of the repo's weights file, e.g. 1GiB.
    #[arg(long, default_value = "1GiB", value_parser = byte_size::parse)]
    size: u64,
    /// The weightcast binary (default: beside this one).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Also write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

const REPO: &str = "bench/model";

/// The `hf` CLI of the client venv (installed by scripts/setup-hf-clients).
fn hf_cli() -> Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ok = Command::new(root.join("scripts/setup-hf-clients"))
        .stdout(Stdio::null())
        .status()
        .context("run scripts/setup-hf-clients")?;
    if !ok.success() {
        bail!("scripts/setup-hf-clients failed");
    }
    Ok(std::path::absolute(
        root.join("target/hf-clients/v2/bin/hf"),
    )?)
}

fn hub(rt: &tokio::runtime::Runtime, weights: &Path) -> Result<TestHub> {
    let repo = RepoSpec {
        kind: RepoKind::Model,
        id: REPO.into(),
        branch: "main".into(),
        commit: "b".repeat(40),
        files: vec![
            FileSpec {
                path: "config.json".into(),
                content: Content::Bytes(bytes::Bytes::from_static(b"{\"model_type\": \"bench\"}")),
                lfs: false,
            },
            FileSpec {
                path: "model.safetensors".into(),
                content: Content::File(weights.to_path_buf()),
                lfs: true,
            },
        ],
        token: None,
    };
    rt.block_on(async {
        let h = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let cdn = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        hf_hub::serve(h, cdn, vec![repo], HubConfig::default()).await
    })
}

struct Run {
    seconds: f64,
    cdn_bytes: u64,
}

/// `hf download` on every endpoint at once; checks every output.
fn download_all(hf: &Path, c: &Cluster, endpoints: &[String], sha: &str, tag: &str) -> Result<f64> {
    let t0 = Instant::now();
    let children = endpoints
        .iter()
        .enumerate()
        .map(|(i, ep)| {
            let out = c.path(&format!("{tag}-{i}"));
            let child = Command::new(hf)
                .args(["download", REPO, "--local-dir"])
                .arg(&out)
                .env("HF_ENDPOINT", ep)
                .env("HF_HOME", c.path(&format!("{tag}-home-{i}")))
                .env("HF_HUB_DISABLE_TELEMETRY", "1")
                .env("HF_HUB_DISABLE_UPDATE_CHECK", "1")
                .env("HF_HUB_DISABLE_XET", "1")
                .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
                .env_remove("HF_TOKEN")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()?;
            Ok((child, out))
        })
        .collect::<Result<Vec<_>>>()?;
    for (child, out) in children {
        let o = child.wait_with_output()?;
        if !o.status.success() {
            bail!(
                "hf download failed: {}\n{}",
                String::from_utf8_lossy(&o.stderr),
                c.logs()
            );
        }
        if sha256_file(&out.join("model.safetensors"))? != sha {
            bail!("{} does not match the Hub's file", out.display());
        }
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// Seconds until the first body byte of a GET of `url` (redirects followed).
fn first_byte(rt: &tokio::runtime::Runtime, url: &str) -> Result<f64> {
    rt.block_on(async {
        let client = reqwest::Client::new();
        let t0 = Instant::now();
        let mut resp = client.get(url).send().await?.error_for_status()?;
        match resp.chunk().await? {
            Some(c) if !c.is_empty() => Ok(t0.elapsed().as_secs_f64()),
            _ => bail!("{url} sent no body"),
        }
    })
}

fn swarm(c: &mut Cluster, hub: &TestHub, peers: usize) -> Result<Vec<Daemon>> {
    let (sched, _) = c.scheduler()?;
    let origin = ["--hf-endpoint", hub.hub_url.as_str()];
    c.daemon("seed", &sched, true, &origin)?;
    (0..peers)
        .map(|i| {
            let mut extra = origin.to_vec();
            extra.extend(["--hf-listen", "127.0.0.1:0"]);
            c.daemon(&format!("node{i}"), &sched, false, &extra)
        })
        .collect()
}

fn endpoint(d: &Daemon) -> Result<String> {
    let addr = d
        .ready
        .hf_addr
        .as_deref()
        .context("daemon without --hf-listen")?;
    Ok(format!("http://{addr}"))
}

fn main() -> Result<()> {
    let a = Args::parse();
    let bin = weightcast_testkit::cluster::weightcast_bin(a.bin)?;
    let hf = hf_cli()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let files = tempfile::tempdir()?;
    let weights = files.path().join("model.safetensors");
    safetensors_gen::write(&weights, a.size, 1)?;
    let sha = sha256_file(&weights)?;

    let direct = {
        let hub = hub(&rt, &weights)?;
        let c = Cluster::new(&bin)?;
        let endpoints = vec![hub.hub_url.clone(); a.peers];
        let seconds = download_all(&hf, &c, &endpoints, &sha, "direct")?;
        Run {
            seconds,
            cdn_bytes: hub.stats.snapshot().cdn_bytes_served,
        }
    };
    let through = {
        let hub = hub(&rt, &weights)?;
        let mut c = Cluster::new(&bin)?;
        let daemons = swarm(&mut c, &hub, a.peers)?;
        let endpoints = daemons.iter().map(endpoint).collect::<Result<Vec<_>>>()?;
        let seconds = download_all(&hf, &c, &endpoints, &sha, "swarm")?;
        Run {
            seconds,
            cdn_bytes: hub.stats.snapshot().cdn_bytes_served,
        }
    };
    // Cold caches on both sides: a fresh Hub and a fresh daemon.
    let resolve = format!("/{REPO}/resolve/main/model.safetensors");
    let (ttfb_direct, ttfb_daemon) = {
        let hub = hub(&rt, &weights)?;
        let direct = first_byte(&rt, &format!("{}{resolve}", hub.hub_url))?;
        let mut c = Cluster::new(&bin)?;
        let daemons = swarm(&mut c, &hub, 1)?;
        let through = first_byte(&rt, &format!("{}{resolve}", endpoint(&daemons[0])?))?;
        (direct, through)
    };

    let size = a.size as f64;
    println!(
        "huggingface_hub `hf download` on loopback: {} nodes x {} (+ config.json)",
        a.peers,
        byte_size::format(a.size)
    );
    println!(
        "{:<34} {:>9} {:>14} {:>13}",
        "way in", "seconds", "aggregate", "CDN / file"
    );
    for (name, r) in [
        ("straight from the Hub (baseline)", &direct),
        ("through weightcast daemons", &through),
    ] {
        println!(
            "{:<34} {:>9.2} {:>12}/s {:>12.2}x",
            name,
            r.seconds,
            byte_size::format((size * a.peers as f64 / r.seconds) as u64),
            r.cdn_bytes as f64 / size
        );
    }
    println!(
        "throughput ratio daemons/direct: {:.2}x; CDN bytes ratio: {:.3}x",
        direct.seconds / through.seconds,
        through.cdn_bytes as f64 / direct.cdn_bytes.max(1) as f64
    );
    println!(
        "first byte of {} on a cold cache: {:.3} s through a daemon, {:.3} s from the Hub (client timeout: 10 s)",
        byte_size::format(a.size),
        ttfb_daemon,
        ttfb_direct
    );
    if let Some(p) = a.json {
        let v = serde_json::json!({
            "peers": a.peers, "size": a.size,
            "direct": {"seconds": direct.seconds, "cdn_bytes": direct.cdn_bytes},
            "through_daemons": {"seconds": through.seconds, "cdn_bytes": through.cdn_bytes},
            "throughput_ratio": direct.seconds / through.seconds,
            "first_byte_seconds": {"daemon_cold": ttfb_daemon, "hub": ttfb_direct},
        });
        std::fs::write(p, serde_json::to_vec_pretty(&v)?)?;
    }
    Ok(())
}
