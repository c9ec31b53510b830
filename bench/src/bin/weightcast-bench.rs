//! `weightcast-bench cluster`: the network-namespace cluster emulator.
//!
//! Builds a virtual cluster (a switch, one namespace per host, tbf caps on
//! every host's upload and download), runs real `weightcast` binaries in it
//! and, in the same run, the baselines: every peer straight from the origin,
//! and a BitTorrent swarm (aria2 + opentracker, the origin host as the only
//! seeder). Needs root and iproute2; BitTorrent needs aria2, opentracker and
//! mktorrent (`scripts/setup-bench` installs them).
//!
//! `weightcast-bench link`: one parent and one child at the link's limit
//! (see `weightcast_bench::link`); needs iperf3, and root for the emulated
//! link and the cgroup limit.
//!
//! `weightcast-bench hf-hub`: serves a directory as one repo of a
//! Hugging Face–compatible test hub (see `weightcast_testkit::hf_hub`), for
//! running the real `huggingface_hub` client or weightcast against it.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use weightcast_bench::scenarios::{self, Scenario, SeedPlacement, Setup, System, Variant};
use weightcast_bench::simulate::{self, Params};
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
    /// Simulate a broadcast on the real scheduler and download cores over a
    /// discrete-event network (deterministic; no root, no processes).
    Simulate(SimulateArgs),
    /// Load one real `weightcast scheduler` process on loopback with
    /// thousands of gRPC sessions of simulated peers.
    SchedLoad(SchedLoadArgs),
    /// One parent, one child: weightcast against iperf3 and the hashing
    /// ceiling on loopback, against iperf3 on an emulated link, and the
    /// daemons' memory from small to large files under a cgroup limit.
    Link(weightcast_bench::link::LinkArgs),
}

#[derive(clap::Args)]
struct SchedLoadArgs {
    /// The `weightcast` binary (its `scheduler` subcommand is run).
    #[arg(long, default_value = "target/release/weightcast")]
    bin: PathBuf,
    /// Peers besides the seed (comma-separated for several runs).
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    peers: Vec<usize>,
    /// Pieces of the task.
    #[arg(long, default_value_t = 64)]
    pieces: u32,
    /// Pieces each peer announces in the paced phase.
    #[arg(long, default_value_t = 4)]
    announce_per_peer: u32,
    /// Announcements per second, all peers together, in the paced phase.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Registrations per second.
    #[arg(long, default_value_t = 2000)]
    register_rate: u64,
    /// Sessions opened at once while connecting.
    #[arg(long, default_value_t = 64)]
    connect_parallel: usize,
    /// Where to write sched-load.md and sched-load.json.
    #[arg(long)]
    out: Option<PathBuf>,
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
    #[arg(long, default_value = "100mbit", value_parser = netns::parse_bits)]
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
    #[arg(long, value_delimiter = ',', default_value = "256KiB,1MiB,4MiB", value_parser = byte_size::parse)]
    bt_piece_sizes: Vec<u64>,
}

/// `100us`, `1ms`, `2s`, `0`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim().to_ascii_lowercase();
    let (num, scale) = if let Some(n) = t.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        (t.as_str(), 1.0)
    };
    num.trim()
        .parse::<f64>()
        .ok()
        .filter(|n| *n >= 0.0 && n.is_finite())
        .map(|n| Duration::from_secs_f64(n * scale))
        .ok_or_else(|| format!("invalid duration {s:?}: use e.g. 100us, 1ms or 2s"))
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// Receivers (downloading peers; seeds come on top).
    #[arg(long, default_value_t = 1000)]
    peers: usize,
    /// Several N in one go (comma-separated); also plots slowest / T* against N.
    #[arg(long, value_delimiter = ',')]
    sweep: Vec<usize>,
    /// The file's size.
    #[arg(long, default_value = "10GiB", value_parser = byte_size::parse)]
    size: u64,
    /// Every host's upload and download capacity (B).
    #[arg(long, default_value = "25gbit", value_parser = netns::parse_bits)]
    bandwidth: u64,
    /// Piece size: `auto` only, the rule every component shares
    /// (`PieceLayout::for_length`: about 2,000 pieces, 256 KiB to 64 MiB).
    #[arg(long, default_value = "auto")]
    piece_size: String,
    /// Zones the hosts are spread over, round robin.
    #[arg(long, default_value_t = 1)]
    zones: usize,
    /// Each zone's link out and in (default: 1/16 of its hosts' bandwidth).
    #[arg(long, value_parser = netns::parse_bits)]
    zone_bandwidth: Option<u64>,
    /// A quarter of the peers upload at B/10.
    #[arg(long)]
    heterogeneous: bool,
    /// Fraction of peers killed when the mean peer is half done.
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    #[arg(long, default_value_t = 1)]
    seeds: usize,
    /// The origin host's upload cap (default: B).
    #[arg(long, value_parser = netns::parse_bits)]
    origin_bandwidth: Option<u64>,
    /// Run the first seed on the origin's host, as the emulator does.
    #[arg(long)]
    seed_on_origin: bool,
    /// One-way latency between hosts of a zone and to the scheduler.
    #[arg(long, default_value = "100us", value_parser = parse_duration)]
    latency: Duration,
    /// Added one-way between zones.
    #[arg(long, default_value = "1ms", value_parser = parse_duration)]
    zone_latency: Duration,
    /// Pieces a host uploads at once (the daemon's --upload-concurrency).
    #[arg(long, default_value_t = 8)]
    upload_concurrency: u32,
    /// Requests a host queues per upload slot before answering `Busy` (the
    /// upload server's queue; 0: none).
    #[arg(long, default_value_t = 2)]
    upload_queue_per_slot: u32,
    /// The longest a queued request waits for a slot before `Busy`.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    upload_queue_wait: Duration,
    /// Children the scheduler may plan onto a host (--upload-slots).
    #[arg(long, default_value_t = 16)]
    upload_slots: u32,
    /// A seed sends each piece once per this long (0: always send; the
    /// daemon's default, `weightcast_engine::config::SEED_SEND_ONCE`).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    seed_send_once: Duration,
    /// Pieces in flight per download (the daemon's --pieces-in-flight).
    #[arg(long, default_value_t = 16)]
    pieces_in_flight: usize,
    /// Pieces in flight per download from one parent.
    #[arg(long, default_value_t = 4)]
    pieces_per_parent: u32,
    /// How long a child leaves a parent alone after a `Busy` answer.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    busy_backoff: Duration,
    /// The scheduler's candidate parents per child.
    #[arg(long, default_value_t = 16)]
    candidate_parents: usize,
    /// Fraction of B that carries piece bytes (0.956: TCP/IP over 1500-byte frames).
    #[arg(long, default_value_t = 1.0)]
    goodput: f64,
    /// A piece's hash check at this rate (e.g. 2GB/s); default: instant.
    #[arg(long, value_parser = byte_size::parse)]
    hash_rate: Option<u64>,
    /// Peers start spread evenly over this long.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    arrival_spread: Duration,
    /// Simulated time after which a run stops, done or not (default:
    /// 100 × S/B + 10 min).
    #[arg(long, value_parser = parse_duration)]
    time_limit: Option<Duration>,
    /// Where to write simulate.md, simulate.json and the SVG plots.
    #[arg(long)]
    out: Option<PathBuf>,
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
        Command::Simulate(a) => {
            if let Err(e) = simulate(a) {
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
            return;
        }
        Command::SchedLoad(a) => {
            if let Err(e) = sched_load(a) {
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
        Command::Link(a) => weightcast_bench::link::run(a),
        Command::HfHub(_) | Command::Origin(_) | Command::Simulate(_) | Command::SchedLoad(_) => {
            unreachable!("handled above")
        }
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

fn sched_load(a: SchedLoadArgs) -> Result<()> {
    use weightcast_bench::sched_load::{self, LoadParams};
    if !a.bin.exists() {
        anyhow::bail!(
            "{}: no weightcast binary there; build it (cargo build --release) or give --bin",
            a.bin.display()
        );
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut results = Vec::new();
    for &peers in &a.peers {
        let p = LoadParams {
            bin: a.bin.clone(),
            peers,
            pieces: a.pieces.max(1),
            announce_per_peer: a.announce_per_peer,
            rate: a.rate.max(1),
            register_rate: a.register_rate.max(1),
            connect_parallel: a.connect_parallel.max(1),
        };
        eprintln!("loading the scheduler with {peers} peers ...");
        let r = sched_load::run(&p)?;
        eprintln!(
            "   announce -> available p50 {:.0} us p99 {:.0} us; burst {:.0} messages/s; {:.1} KiB per peer",
            r.available.p50_us,
            r.available.p99_us,
            r.burst_messages_per_sec,
            r.rss_per_peer_bytes / 1024.0
        );
        results.push(r);
    }
    let md = sched_load::markdown(&results);
    println!("{md}");
    if let Some(out) = &a.out {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("sched-load.md"), format!("`{command}`\n\n{md}"))?;
        std::fs::write(
            out.join("sched-load.json"),
            serde_json::to_vec_pretty(&results)?,
        )?;
    }
    Ok(())
}

fn simulate(a: SimulateArgs) -> Result<()> {
    if a.piece_size != "auto" {
        anyhow::bail!(
            "--piece-size {}: only `auto` is possible, because the cores cut every file by one rule (PieceLayout::for_length); change that rule to simulate other sizes",
            a.piece_size
        );
    }
    if !(0.0..1.0).contains(&a.churn) {
        anyhow::bail!(
            "--churn {}: give a fraction of the peers, from 0 to below 1",
            a.churn
        );
    }
    if a.seeds == 0 {
        anyhow::bail!("--seeds 0: the simulation needs a seed to fetch from the origin");
    }
    let ns = if a.sweep.is_empty() {
        vec![a.peers]
    } else {
        a.sweep.clone()
    };
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut results = Vec::new();
    for &n in &ns {
        let mut p = Params::new(n, a.size, a.bandwidth);
        p.zones = a.zones.max(1);
        p.zone_bandwidth = a.zone_bandwidth;
        p.heterogeneous = a.heterogeneous;
        p.churn = a.churn;
        p.seeds = a.seeds;
        p.origin_bandwidth = a.origin_bandwidth;
        p.seed_on_origin = a.seed_on_origin;
        p.latency = a.latency;
        p.zone_latency = a.zone_latency;
        p.upload_concurrency = a.upload_concurrency.max(1);
        p.upload_queue_per_slot = a.upload_queue_per_slot;
        p.upload_queue_wait = a.upload_queue_wait;
        p.upload_slots = a.upload_slots;
        p.seed_send_once = Some(a.seed_send_once).filter(|d| !d.is_zero());
        p.goodput = a.goodput;
        p.hash_rate = a.hash_rate.map(|r| r as f64);
        p.arrival_spread = a.arrival_spread;
        p.download.pieces_in_flight = a.pieces_in_flight.max(1);
        p.download.pieces_per_parent = a.pieces_per_parent.max(1);
        p.download.busy_backoff = a.busy_backoff;
        p.scheduler.candidate_parents = a.candidate_parents.max(1);
        if let Some(t) = a.time_limit {
            p.time_limit = t;
        }
        eprintln!(
            "simulating {n} peers x {} at {}: S/B = {:.3} s, T* = {:.3} s ...",
            byte_size::format(a.size),
            simulate::report::bits(a.bandwidth),
            p.s_over_b(),
            p.t_star()
        );
        let r = simulate::run(p);
        eprintln!(
            "   slowest {:.3} s = {:.3} T*, p50 {:.3} T*, origin {:.3} copies, seed {:.3} copies; {} events in {:.1} s",
            r.slowest(),
            r.slowest() / r.t_star,
            r.quantile(0.5) / r.t_star,
            r.origin_copies(),
            r.seed_copies(),
            r.events,
            r.wall_secs
        );
        let mut first: Vec<f64> = r.first_piece_secs.iter().flatten().copied().collect();
        first.sort_by(f64::total_cmp);
        let at = |q: f64| {
            first
                .get(((first.len().max(1) - 1) as f64 * q) as usize)
                .copied()
                .unwrap_or(0.0)
        };
        eprintln!(
            "   first piece: p50 {:.3} s, max {:.3} s; busy {} not-found {} elsewhere {}; mean goodput {:.3} of N·B",
            at(0.5),
            at(1.0),
            r.busy_answers,
            r.not_found_answers,
            r.elsewhere_answers,
            r.timeline.iter().map(|s| s.goodput).sum::<f64>() / r.timeline.len().max(1) as f64
        );
        for line in &r.stalled {
            eprintln!("   not done: {line}");
        }
        results.push(r);
    }
    let md = simulate::report::markdown(&results);
    println!("{md}");
    let incomplete = results.iter().filter(|r| !r.all_complete()).count();
    if let Some(out) = &a.out {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("simulate.md"), format!("`{command}`\n\n{md}"))?;
        std::fs::write(
            out.join("simulate.json"),
            serde_json::to_vec_pretty(&results)?,
        )?;
        for r in &results {
            simulate::report::cdf_svg(r, &out.join(format!("cdf-{}.svg", r.peers)))?;
            simulate::report::timeline_svg(r, &out.join(format!("timeline-{}.svg", r.peers)))?;
        }
        if results.len() > 1 {
            simulate::report::ratio_svg(&results, &out.join("ratio.svg"))?;
        }
    }
    if incomplete > 0 {
        anyhow::bail!(
            "{incomplete} run(s) ended with peers that did not get the file (see the table)"
        );
    }
    Ok(())
}
