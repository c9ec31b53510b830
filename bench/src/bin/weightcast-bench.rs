//! `weightcast-bench cluster`: the network-namespace cluster emulator.
//!
//! Builds a virtual cluster (a switch, one namespace per host, tbf caps on
//! every host's upload and download), runs real `weightcast` binaries in it
//! and, in the same run, the baselines: every peer straight from the origin,
//! and a BitTorrent swarm (aria2 + opentracker, the origin host as the only
//! seeder). Needs root and iproute2; BitTorrent needs aria2, opentracker and
//! mktorrent (`scripts/setup-bench` installs them).
//!
//! `weightcast-bench hf-hub`: serves a directory as one repo of a
//! Hugging Face–compatible test hub (see `weightcast_testkit::hf_hub`), for
//! running the real `huggingface_hub` client or weightcast against it.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use weightcast_bench::scenarios::{self, Scenario, SeedPlacement, Setup, System, Variant};
use weightcast_bench::{netns, report};
use weightcast_types::byte_size;

#[derive(Parser)]
#[command(about = "weightcast benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenarios on an emulated cluster of bandwidth-capped hosts.
    Cluster(ClusterArgs),
    /// Serve a directory as a Hugging Face repo (hub + LFS CDN) until killed.
    HfHub(HfHubArgs),
    /// Serve a directory over HTTP with Range, counting bytes (the test origin) until killed.
    Origin(OriginArgs),
}

#[derive(clap::Args)]
struct OriginArgs {
    /// Directory whose files are served at /<relative path>.
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:7480")]
    listen: std::net::SocketAddr,
    /// Answer the first N requests with 503 and Retry-After: 1.
    #[arg(long, default_value_t = 0)]
    fail_first: u32,
    /// Write {"addr"} here once serving.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

/// The test origin until killed.
fn origin(a: OriginArgs) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(a.listen).await?;
        let addr = listener.local_addr()?;
        let faults = weightcast_testkit::origin::Faults {
            fail_first: a.fail_first,
            ..Default::default()
        };
        let (_stats, task) = weightcast_testkit::origin::serve(listener, a.dir, faults);
        if let Some(f) = &a.ready_file {
            let tmp = f.with_extension("tmp");
            std::fs::write(
                &tmp,
                serde_json::json!({"addr": addr.to_string()}).to_string(),
            )?;
            std::fs::rename(&tmp, f)?;
        }
        let _ = task.await;
        Ok(())
    })
}

#[derive(clap::Args)]
struct HfHubArgs {
    /// Where the hub listens: what HF_ENDPOINT should point to.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: std::net::SocketAddr,
    /// Where the CDN that LFS files redirect to listens.
    #[arg(long, default_value = "127.0.0.1:7401")]
    cdn_listen: std::net::SocketAddr,
    /// Repo id, `org/name`.
    #[arg(long)]
    repo: String,
    /// Directory whose files (recursively) make up the repo.
    #[arg(long)]
    dir: PathBuf,
    /// Serve it as a dataset instead of a model.
    #[arg(long)]
    dataset: bool,
    /// Gate the repo: downloads need `Authorization: Bearer <token>`.
    #[arg(long)]
    token: Option<String>,
    /// Write the hub URL here once listening (for scripts to wait on).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Tree API entries per page.
    #[arg(long, default_value_t = weightcast_testkit::hf_hub::HubConfig::default().tree_page_size)]
    tree_page_size: usize,
}

/// `100mbit`, `1gbit`, `500kbit`, or plain bits per second.
fn parse_bits(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = if let Some(n) = t.strip_suffix("gbit") {
        (n, 1e9)
    } else if let Some(n) = t.strip_suffix("mbit") {
        (n, 1e6)
    } else if let Some(n) = t.strip_suffix("kbit") {
        (n, 1e3)
    } else {
        (t.as_str(), 1.0)
    };
    num.trim()
        .parse::<f64>()
        .map(|n| (n * mult) as u64)
        .map_err(|_| format!("invalid bandwidth {s:?}: use e.g. 100mbit"))
}

#[derive(clap::Args)]
struct ClusterArgs {
    /// Scenarios to run (default: all four).
    #[arg(long, value_enum, value_delimiter = ',')]
    scenario: Vec<Scenario>,
    /// Systems to compare (default: all three).
    #[arg(long, value_enum, value_delimiter = ',')]
    systems: Vec<System>,
    /// Downloading peers.
    #[arg(long, default_value_t = 16)]
    peers: usize,
    /// Artifact size.
    #[arg(long, default_value = "256MiB", value_parser = byte_size::parse)]
    size: u64,
    /// Every host's upload and download cap (B), e.g. 100mbit.
    #[arg(long, default_value = "100mbit", value_parser = parse_bits)]
    bandwidth: u64,
    /// The weightcast binary (default: beside this one).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Where to write results (markdown, JSON, SVG). Default: print only.
    #[arg(long)]
    out: Option<PathBuf>,
    /// A line naming the machine, for the results' header.
    #[arg(long, default_value = "")]
    machine: String,
    /// Runs of each scenario, system and variant: tables show the median
    /// and the range.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Where weightcast's seed runs: on the origin host, on a host of its
    /// own, or both (each a row of its own).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "origin")]
    seed_placement: Vec<SeedPlacement>,
    /// Also run weightcast with one host name for every host (cloned VMs,
    /// namespaces of one machine).
    #[arg(long)]
    shared_hostname: bool,
    /// Print each run's link utilisation, second by second.
    #[arg(long)]
    timeline: bool,
    /// Extra flags for every weightcast daemon, space-separated (tuning
    /// experiments), e.g. "--pieces-per-parent 2".
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    daemon_args: String,
    /// BitTorrent piece sizes to try; each is a row of its own, so the
    /// table shows BitTorrent at its best.
    #[arg(long, value_delimiter = ',', default_value = "4MiB", value_parser = byte_size::parse)]
    bt_piece_sizes: Vec<u64>,
}

fn main() {
    let command = Cli::parse().command;
    // The hub touches no namespaces: keep it clear of the cluster clean-up.
    let command = match command {
        Command::HfHub(a) => {
            if let Err(e) = hf_hub(a) {
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
            return;
        }
        Command::Origin(a) => {
            if let Err(e) = origin(a) {
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
            return;
        }
        other => other,
    };
    let pid = std::process::id();
    // Ctrl-C / SIGTERM: delete every namespace of this run before exiting.
    let _ = ctrlc::set_handler(move || {
        netns::teardown(pid);
        eprintln!("interrupted: emulated cluster torn down");
        std::process::exit(130);
    });
    let result = match command {
        Command::Cluster(a) => cluster(a),
        Command::HfHub(_) | Command::Origin(_) => unreachable!("handled above"),
    };
    netns::teardown(pid);
    let left = netns::leftover_namespaces(pid);
    if let Err(e) = &result {
        eprintln!("error: {e:#}");
    }
    if !left.is_empty() {
        eprintln!("error: namespaces left behind: {left:?}");
        std::process::exit(1);
    }
    std::process::exit(if result.is_ok() { 0 } else { 1 });
}

fn cluster(a: ClusterArgs) -> Result<()> {
    netns::check_privileges()?;
    let bin = weightcast_testkit::cluster::weightcast_bin(a.bin)?;
    let scenarios = if a.scenario.is_empty() {
        vec![
            Scenario::Fanout,
            Scenario::Heterogeneous,
            Scenario::Zones,
            Scenario::Churn,
        ]
    } else {
        a.scenario
    };
    let systems = if a.systems.is_empty() {
        vec![System::Weightcast, System::Bittorrent, System::Direct]
    } else {
        a.systems
    };
    let work = std::env::temp_dir().join("weightcast-bench");
    let setup = Setup {
        bin,
        peers: a.peers,
        size: a.size,
        bandwidth: a.bandwidth,
        work,
        daemon_args: a.daemon_args.split_whitespace().map(String::from).collect(),
    };
    eprintln!(
        "{} peers x {}, every host capped at {} Mbit/s: S/B = {:.1} s",
        a.peers,
        byte_size::format(a.size),
        a.bandwidth / 1_000_000,
        setup.bound_secs()
    );
    let mut variants: Vec<(System, Variant)> = Vec::new();
    for &sys in &systems {
        match sys {
            System::Bittorrent => variants.extend(a.bt_piece_sizes.iter().map(|&bt_piece| {
                (
                    sys,
                    Variant {
                        bt_piece,
                        ..Variant::default()
                    },
                )
            })),
            System::Weightcast | System::HfWeightcast => {
                for &seed in &a.seed_placement {
                    for shared_hostname in [false, true] {
                        if shared_hostname && !a.shared_hostname {
                            continue;
                        }
                        variants.push((
                            sys,
                            Variant {
                                seed,
                                shared_hostname,
                                ..Variant::default()
                            },
                        ));
                    }
                }
            }
            _ => variants.push((sys, Variant::default())),
        }
    }
    let mut results = Vec::new();
    for &sc in &scenarios {
        for &(sys, variant) in &variants {
            for run in 1..=a.runs.max(1) {
                eprintln!(
                    "== {sc:?} / {sys:?} {} (run {run} of {}) ...",
                    variant.label(sys),
                    a.runs.max(1)
                );
                let r = scenarios::run(&setup, sc, sys, variant)?;
                eprintln!(
                    "   slowest {:.2} x S/B, median {:.2} x S/B, origin {} copies, seed host upload {}",
                    r.slowest_ratio(),
                    r.median_ratio(),
                    r.origin_http_bytes
                        .map_or("-".into(), |b| format!("{:.3}", b as f64 / a.size as f64)),
                    r.seed_host_upload
                        .map_or("-".into(), |b| format!("{:.2} S", b as f64 / a.size as f64)),
                );
                if let Some([pieces, busy]) = r.seed_uploads {
                    eprintln!("   seed uploaded {pieces} pieces; refused {busy} requests as busy");
                }
                if a.timeline {
                    eprintln!(
                        "   t(s)  seed-up  peer-down  peer-up  cpu   (links; cpu of the machine)"
                    );
                    for (t, s, d, u, cpu) in r.utilisation() {
                        eprintln!("   {t:5.1}  {s:7.2}  {d:9.2}  {u:7.2}  {cpu:4.2}");
                    }
                }
                results.push(r);
            }
        }
    }
    let header = format!(
        "{} peers, {}, every host (and the origin host) capped at {} Mbit/s up and down; S/B = {:.1} s. {}",
        a.peers,
        byte_size::format(a.size),
        a.bandwidth / 1_000_000,
        setup.bound_secs(),
        a.machine
    );
    let md = report::markdown(&results, &header);
    println!("{md}");
    if let Some(out) = a.out {
        std::fs::create_dir_all(&out)?;
        std::fs::write(out.join("cluster.md"), &md)?;
        std::fs::write(
            out.join("cluster.json"),
            serde_json::to_vec_pretty(&results)?,
        )?;
        for &sc in &scenarios {
            report::cdf_svg(
                &results,
                sc,
                &out.join(format!("cdf-{sc:?}.svg").to_lowercase()),
            )?;
        }
    }
    Ok(())
}

fn hf_hub(a: HfHubArgs) -> Result<()> {
    use weightcast_testkit::hf_hub::{self, HubConfig, RepoKind, RepoSpec};
    let kind = if a.dataset {
        RepoKind::Dataset
    } else {
        RepoKind::Model
    };
    let spec = RepoSpec::from_dir(kind, &a.repo, &a.dir, a.token)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let hub_listener = tokio::net::TcpListener::bind(a.listen).await?;
        let cdn_listener = tokio::net::TcpListener::bind(a.cdn_listen).await?;
        let config = HubConfig {
            tree_page_size: a.tree_page_size,
        };
        let files = spec.files.len();
        let hub = hf_hub::serve(hub_listener, cdn_listener, vec![spec], config).await?;
        eprintln!(
            "serving {files} files as {} at {} (CDN {})",
            a.repo, hub.hub_url, hub.cdn_url
        );
        println!("{}", hub.hub_url);
        if let Some(f) = &a.ready_file {
            // Write then rename, so a watcher never reads a partial URL.
            let tmp = f.with_extension("tmp");
            std::fs::write(&tmp, format!("{}\n", hub.hub_url))?;
            std::fs::rename(&tmp, f)?;
        }
        // Scripts stop the hub with SIGTERM: remove the ready file then too,
        // so a stale one never announces a hub that is gone.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
        drop(hub);
        if let Some(f) = &a.ready_file {
            let _ = std::fs::remove_file(f);
        }
        Ok(())
    })
}
