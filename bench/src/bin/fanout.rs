//! Fan-out benchmark: M peers on loopback fetch one file through the swarm
//! (scheduler, one seed, M daemons), and, in the same run, the same M clients
//! fetch it straight from the origin. Prints both, and the ratios.
//!
//! ```text
//! cargo build --release && target/release/fanout --peers 8 --size 512MiB
//! ```
//! Loopback has no bandwidth limit, so this measures the engine's own cost
//! (hashing, copies, scheduling) and the origin load; the network-namespace
//! cluster emulator is what shows bandwidth-bound behaviour.

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Instant;
use weightcast_modelpack::safetensors_gen;
use weightcast_testkit::cluster::{origin_stats, sha256_file, Cluster, Faults};
use weightcast_types::byte_size;

#[derive(Parser)]
#[command(about = "weightcast swarm vs direct origin downloads on loopback")]
struct Args {
    /// Downloading peers.
    #[arg(long, default_value_t = 8)]
    peers: usize,
    /// File size, e.g. 512MiB.
    #[arg(long, default_value = "512MiB", value_parser = byte_size::parse)]
    size: u64,
    /// The weightcast binary (default: beside this one).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Also write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

struct Run {
    seconds: f64,
    origin_bytes: u64,
    /// Largest resident anonymous memory of a daemon after the run.
    max_daemon_rss_anon: Option<u64>,
}

/// Starts every command at once and waits for all; checks outputs.
fn run_all(c: &Cluster, cmds: Vec<(std::process::Command, PathBuf)>, sha: &str) -> Result<f64> {
    let t0 = Instant::now();
    let children: Vec<_> = cmds
        .into_iter()
        .map(|(mut cmd, out)| {
            Ok((
                cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?,
                out,
            ))
        })
        .collect::<Result<_>>()?;
    for (child, out) in children {
        let o = child.wait_with_output()?;
        if !o.status.success() {
            bail!("a get failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        if sha256_file(&out)? != sha {
            bail!("{} does not match the origin", out.display());
        }
    }
    let _ = c;
    Ok(t0.elapsed().as_secs_f64())
}

fn main() -> Result<()> {
    let a = Args::parse();
    let bin = weightcast_testkit::cluster::weightcast_bin(a.bin)?;
    let url_path = "model.safetensors";
    // Baseline: every peer straight from the origin, in-process engines.
    let direct = {
        let mut c = Cluster::new(&bin)?;
        let files = c.path("files");
        std::fs::create_dir_all(&files)?;
        safetensors_gen::write(&files.join(url_path), a.size, 1)?;
        let sha = sha256_file(&files.join(url_path))?;
        let (origin, addr) = c.origin(&files, Faults::default())?;
        let cmds = (0..a.peers)
            .map(|i| {
                let out = c.path(&format!("direct-{i}/out.bin"));
                let mut cmd = std::process::Command::new(&bin);
                cmd.args(["get", &format!("{origin}/{url_path}"), "-q", "--data-dir"])
                    .arg(c.path(&format!("direct-{i}")))
                    .arg("-o")
                    .arg(&out);
                (cmd, out)
            })
            .collect();
        let seconds = run_all(&c, cmds, &sha)?;
        (
            Run {
                seconds,
                origin_bytes: origin_stats(&addr)?.bytes_served,
                max_daemon_rss_anon: None,
            },
            sha,
        )
    };
    let (direct, sha) = direct;
    let swarm = {
        let mut c = Cluster::new(&bin)?;
        let files = c.path("files");
        std::fs::create_dir_all(&files)?;
        safetensors_gen::write(&files.join(url_path), a.size, 1)?;
        let (origin, addr) = c.origin(&files, Faults::default())?;
        let (sched, _) = c.scheduler()?;
        c.daemon("seed", &sched, true, &[])?;
        let daemons = (0..a.peers)
            .map(|i| c.daemon(&format!("node{i}"), &sched, false, &[]))
            .collect::<Result<Vec<_>>>()
            .context("start daemons")?;
        let cmds = daemons
            .iter()
            .map(|d| {
                let out = c.path(&format!("{}-out.bin", d.name));
                (c.get_command(d, &format!("{origin}/{url_path}"), &out), out)
            })
            .collect();
        let seconds = run_all(&c, cmds, &sha)?;
        let mut rss = daemons
            .iter()
            .filter_map(|d| c.proc(d.proc).rss_anon_bytes())
            .collect::<Vec<_>>();
        rss.sort();
        Run {
            seconds,
            origin_bytes: origin_stats(&addr)?.bytes_served,
            max_daemon_rss_anon: rss.last().copied(),
        }
    };
    let size = a.size as f64;
    println!(
        "fan-out on loopback: {} peers x {}",
        a.peers,
        byte_size::format(a.size)
    );
    println!(
        "{:<28} {:>10} {:>14} {:>16}",
        "system", "seconds", "aggregate", "origin / file"
    );
    for (name, r) in [
        ("direct from origin (baseline)", &direct),
        ("weightcast swarm", &swarm),
    ] {
        println!(
            "{:<28} {:>10.2} {:>12}/s {:>15.2}x",
            name,
            r.seconds,
            byte_size::format((size * a.peers as f64 / r.seconds) as u64),
            r.origin_bytes as f64 / size
        );
    }
    println!(
        "ratio swarm/direct: time {:.2}x, origin bytes {:.3}x",
        swarm.seconds / direct.seconds,
        swarm.origin_bytes as f64 / direct.origin_bytes.max(1) as f64
    );
    if let Some(rss) = swarm.max_daemon_rss_anon {
        println!(
            "largest daemon heap (RssAnon) after the run: {} for a {} file",
            byte_size::format(rss),
            byte_size::format(a.size)
        );
    }
    if let Some(p) = a.json {
        let v = serde_json::json!({
            "peers": a.peers, "size": a.size,
            "direct": {"seconds": direct.seconds, "origin_bytes": direct.origin_bytes},
            "swarm": {"seconds": swarm.seconds, "origin_bytes": swarm.origin_bytes, "max_daemon_rss_anon": swarm.max_daemon_rss_anon},
        });
        std::fs::write(p, serde_json::to_vec_pretty(&v)?)?;
    }
    Ok(())
}
