//! `rdma-vm-check`: the RDMA end-to-end test and transport benchmark, run
//! inside the soft-RoCE VM (scripts/rdma-vm-test boots it; the host cannot
//! run verbs). It needs an active RDMA port (rxe0 there).
//!
//! 1. End to end: an origin, a scheduler, a seed and two daemons (all
//!    `--transport auto`) move a file; beside them a daemon started with
//!    `--transport tcp` gets it too. Every output's sha256 must match, the
//!    two RDMA daemons' peer bytes must all have come over RDMA (none over
//!    TCP, no fallback), and the TCP daemon's all over TCP.
//! 2. Benchmark, same run: one more daemon fetches the file from the
//!    (complete) swarm over RDMA, then another over TCP; both times and the
//!    ratio are reported. Soft-RoCE under TCG emulation proves correctness,
//!    not speed: the NIC is software and the CPU is emulated.
//!
//! The verdict goes to `--verdict DIR`: `verdict` (PASS/FAIL), `verdict.json`
//! (every check, the numbers) and the daemons' logs on failure: qemu's exit
//! status says nothing about the guest.

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use weightcast_modelpack::safetensors_gen;
use weightcast_testkit::cluster::{metric, sha256_file, Cluster, Daemon, Faults};
use weightcast_types::byte_size;

#[derive(Parser)]
#[command(about = "RDMA end-to-end check and RDMA-vs-TCP benchmark (inside the soft-RoCE VM)")]
struct Args {
    /// The weightcast binary.
    #[arg(long)]
    bin: Option<PathBuf>,
    /// File size, e.g. 64MiB.
    #[arg(long, default_value = "64MiB", value_parser = byte_size::parse)]
    size: u64,
    /// Directory for the verdict files.
    #[arg(long)]
    verdict: PathBuf,
    /// Seconds one `get` may take.
    #[arg(long, default_value_t = 300)]
    get_timeout: u64,
}

struct Checks {
    list: Vec<serde_json::Value>,
    failed: usize,
}

impl Checks {
    fn check(&mut self, name: &str, ok: bool, detail: String) {
        println!("{} {name}: {detail}", if ok { "ok  " } else { "FAIL" });
        self.failed += (!ok) as usize;
        self.list
            .push(json!({"check": name, "ok": ok, "detail": detail}));
    }
}

/// Waits for a `get --json`, killing it at the deadline; returns its summary.
fn finish(mut child: Child, deadline: Instant) -> Result<serde_json::Value> {
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("get did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("get failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn spawn_get(c: &Cluster, d: &Daemon, url: &str) -> Result<(Child, PathBuf)> {
    let out = c.path(&format!("out-{}/model.safetensors", d.name));
    std::fs::create_dir_all(out.parent().expect("has a parent"))?;
    let child = c
        .get_command(d, url, &out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    Ok((child, out))
}

fn transport_bytes(c: &Cluster, d: &Daemon, transport: &str) -> f64 {
    c.metrics(d)
        .ok()
        .and_then(|page| {
            metric(
                &page,
                "weightcast_peer_bytes_total",
                &format!("transport=\"{transport}\""),
            )
        })
        .unwrap_or(0.0)
}

fn main() -> std::process::ExitCode {
    let a = Args::parse();
    let _ = std::fs::create_dir_all(&a.verdict);
    let verdict = a.verdict.clone();
    let (pass, report) = match run(&a) {
        Ok((checks, bench)) => (
            checks.failed == 0,
            json!({"checks": checks.list, "failed": checks.failed, "bench": bench}),
        ),
        Err(e) => {
            println!("FAIL: {e:#}");
            (false, json!({"error": format!("{e:#}")}))
        }
    };
    let _ = std::fs::write(
        verdict.join("verdict.json"),
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    );
    let _ = std::fs::write(
        verdict.join("verdict"),
        if pass { "PASS\n" } else { "FAIL\n" },
    );
    if pass {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

fn run(a: &Args) -> Result<(Checks, serde_json::Value)> {
    let t_start = Instant::now();
    let bin = weightcast_testkit::cluster::weightcast_bin(a.bin.clone())?;
    let mut c = Cluster::new(&bin)?;
    let files = c.path("files");
    std::fs::create_dir_all(&files)?;
    safetensors_gen::write(&files.join("model.safetensors"), a.size, 11)?;
    let sha = sha256_file(&files.join("model.safetensors"))?;
    let (origin, _) = c.origin(&files, Faults::default())?;
    let url = format!("{origin}/model.safetensors");
    let (sched, _) = c.scheduler()?;
    let mut checks = Checks {
        list: Vec::new(),
        failed: 0,
    };
    let result = (|| -> Result<serde_json::Value> {
        let seed = c.daemon("seed", &sched, true, &[])?;
        let rdma: Vec<Daemon> = (0..2)
            .map(|i| c.daemon(&format!("rdma{i}"), &sched, false, &[]))
            .collect::<Result<_>>()?;
        let tcp = c.daemon("tcp0", &sched, false, &["--transport", "tcp"])?;
        for d in rdma.iter().chain([&seed]) {
            let on = metric(&c.metrics(d)?, "weightcast_rdma_enabled", "").unwrap_or(-1.0);
            checks.check(
                &format!("{} has RDMA", d.name),
                on == 1.0,
                format!("weightcast_rdma_enabled {on}"),
            );
        }
        let deadline = || Instant::now() + Duration::from_secs(a.get_timeout);
        // The two RDMA daemons at once, then the TCP one beside them.
        let t0 = Instant::now();
        let gets: Vec<_> = rdma
            .iter()
            .map(|d| spawn_get(&c, d, &url))
            .collect::<Result<_>>()?;
        let mut outs = Vec::new();
        for ((child, out), d) in gets.into_iter().zip(&rdma) {
            let s = finish(child, deadline()).with_context(|| format!("{}'s get", d.name))?;
            outs.push((d, out, s));
        }
        let swarm_secs = t0.elapsed().as_secs_f64();
        let (child, out) = spawn_get(&c, &tcp, &url)?;
        let s = finish(child, deadline()).context("tcp0's get")?;
        outs.push((&tcp, out, s));
        for (d, out, s) in &outs {
            let got = sha256_file(out)?;
            checks.check(
                &format!("{} output digest", d.name),
                got == sha,
                format!("sha256 {got}"),
            );
            checks.check(
                &format!("{} got the file from peers", d.name),
                s["from_peers"].as_u64() == Some(a.size),
                format!(
                    "from_peers {} from_origin {}",
                    s["from_peers"], s["from_origin"]
                ),
            );
        }
        let size = a.size as f64;
        for d in &rdma {
            let (r, t) = (
                transport_bytes(&c, d, "rdma"),
                transport_bytes(&c, d, "tcp"),
            );
            checks.check(
                &format!("{} piece bytes over RDMA only", d.name),
                r == size && t == 0.0,
                format!("rdma {r} tcp {t}"),
            );
            let fb = metric(&c.metrics(d)?, "weightcast_rdma_fallbacks_total", "").unwrap_or(-1.0);
            checks.check(
                &format!("{} no TCP fallback", d.name),
                fb == 0.0,
                format!("fallbacks {fb}"),
            );
        }
        let (r, t) = (
            transport_bytes(&c, &tcp, "rdma"),
            transport_bytes(&c, &tcp, "tcp"),
        );
        checks.check(
            "tcp0 (--transport tcp) piece bytes over TCP only",
            r == 0.0 && t == size,
            format!("rdma {r} tcp {t}"),
        );
        let up: f64 = std::iter::once(&seed)
            .chain(&rdma)
            .map(|d| {
                c.metrics(d)
                    .ok()
                    .and_then(|page| {
                        metric(
                            &page,
                            "weightcast_upload_transport_bytes_total",
                            "transport=\"rdma\"",
                        )
                    })
                    .unwrap_or(0.0)
            })
            .sum();
        checks.check(
            "parents served the RDMA daemons by RDMA READ",
            up == 2.0 * size,
            format!("upload rdma bytes {up}"),
        );

        // Benchmark: one daemon over RDMA, then one over TCP, from the
        // complete swarm (seed, rdma0, rdma1 hold every piece). tcp0 goes
        // first: as a parent it would serve the RDMA daemon over TCP.
        c.proc(tcp.proc).kill();
        std::thread::sleep(Duration::from_secs(1));
        let mut bench = serde_json::Map::new();
        for (name, extra) in [
            ("bench-rdma", vec![]),
            ("bench-tcp", vec!["--transport", "tcp"]),
        ] {
            let d = c.daemon(name, &sched, false, &extra)?;
            let (child, out) = spawn_get(&c, &d, &url)?;
            let s = finish(child, deadline()).with_context(|| format!("{name}'s get"))?;
            let secs = s["seconds"].as_f64().unwrap_or(f64::NAN);
            let ok = sha256_file(&out)? == sha;
            let (r, t) = (
                transport_bytes(&c, &d, "rdma"),
                transport_bytes(&c, &d, "tcp"),
            );
            let carried = if name == "bench-rdma" { r } else { t };
            checks.check(
                &format!("{name} digest and transport"),
                ok && carried == size,
                format!("{secs:.2} s, rdma {r} tcp {t}"),
            );
            bench.insert(
                name.into(),
                json!({"seconds": secs, "mb_per_s": size / secs / 1e6}),
            );
        }
        let r = bench["bench-rdma"]["mb_per_s"].as_f64().unwrap_or(0.0);
        let t = bench["bench-tcp"]["mb_per_s"].as_f64().unwrap_or(0.0);
        println!(
            "bench ({} from a complete swarm, soft-RoCE under TCG emulation): RDMA {r:.1} MB/s, TCP {t:.1} MB/s, RDMA/TCP {:.2}x",
            byte_size::format(a.size),
            r / t.max(1e-9)
        );
        bench.insert("rdma_over_tcp".into(), json!(r / t.max(1e-9)));
        bench.insert("swarm_seconds".into(), json!(swarm_secs));
        bench.insert("size_bytes".into(), json!(a.size));
        Ok(serde_json::Value::Object(bench))
    })();
    let bench = match result {
        Ok(b) => b,
        Err(e) => {
            checks.check("run", false, format!("{e:#}"));
            serde_json::Value::Null
        }
    };
    if checks.failed > 0 {
        // Keep the daemons' logs for the host to show.
        if let Ok(dir) = std::fs::read_dir(c.dir.path()) {
            for e in dir.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    let _ = std::fs::copy(&p, a.verdict.join(e.file_name()));
                }
            }
        }
    }
    println!("total {:.1} s", t_start.elapsed().as_secs_f64());
    Ok((checks, bench))
}
