//! `weightcast-bench cluster`: the network-namespace cluster emulator.
//!
//! Builds a virtual cluster (a switch, one namespace per host, tbf caps on
//! every host's upload and download), runs real `weightcast` binaries in it
//! and, in the same run, the baselines: every peer straight from the origin,
//! and a BitTorrent swarm (aria2 + opentracker, the origin host as the only
//! seeder). Needs root and iproute2; BitTorrent needs aria2, opentracker and
//! mktorrent (`scripts/setup-bench` installs them).

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use weightcast_bench::scenarios::{self, Scenario, Setup, System};
use weightcast_bench::{byte_size, netns, report};

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
}

fn main() {
    let pid = std::process::id();
    // Ctrl-C / SIGTERM: delete every namespace of this run before exiting.
    let _ = ctrlc::set_handler(move || {
        netns::teardown(pid);
        eprintln!("interrupted: emulated cluster torn down");
        std::process::exit(130);
    });
    let result = match Cli::parse().command {
        Command::Cluster(a) => cluster(a),
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
    let bin = weightcast_bench::cluster::weightcast_bin(a.bin)?;
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
    };
    eprintln!(
        "{} peers x {}, every host capped at {} Mbit/s: S/B = {:.1} s",
        a.peers,
        byte_size::format(a.size),
        a.bandwidth / 1_000_000,
        setup.bound_secs()
    );
    let mut results = Vec::new();
    for &sc in &scenarios {
        for &sys in &systems {
            eprintln!("== {sc:?} / {sys:?} ...");
            let r = scenarios::run(&setup, sc, sys)?;
            eprintln!(
                "   slowest {:.2} x S/B, mean {:.2} x S/B, origin host upload {:.2} x S",
                r.slowest_ratio(),
                r.mean_ratio(),
                r.origin_host_upload as f64 / a.size as f64
            );
            if let Some([pieces, busy]) = r.seed_uploads {
                eprintln!("   seed uploaded {pieces} pieces; refused {busy} requests as busy");
            }
            results.push(r);
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
