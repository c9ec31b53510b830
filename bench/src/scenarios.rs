//! The emulator's scenarios: each run builds a fresh virtual cluster
//! ([`crate::netns`]), starts one system on it (weightcast, every peer
//! straight from the origin, or a real BitTorrent swarm), times every peer
//! and reads the bytes each capped link carried from `tc`.
//!
//! Placement is the same for every system by default: the origin host
//! (capped like any host) runs the origin and, for weightcast, the seed peer
//! and, for BitTorrent, the tracker and the only initial seeder. So every
//! system has the same upload capacity, and "origin host upload" compares
//! them fairly. [`Variant`] moves weightcast's seed to a host of its own
//! (capped the same: it must then fetch the file over its link too) and
//! gives every weightcast host the same host name (cloned VMs, or network
//! namespaces sharing one machine's name); for BitTorrent it sets the piece
//! size, so a baseline runs at its best one.

use crate::netns::{Caps, Net, NetHost};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};
use weightcast_testkit::cluster::{origin_stats, sha256_file, Cluster, Faults, Place};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Weightcast,
    Direct,
    Bittorrent,
    /// The real `huggingface_hub` client (`hf download`) on every peer,
    /// straight from a test Hub whose LFS CDN runs on the origin host.
    HfDirect,
    /// The same client on every peer, through its node's weightcast
    /// daemon (`HF_ENDPOINT=http://127.0.0.1:7410`).
    HfWeightcast,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// N peers, every host capped at B.
    Fanout,
    /// A quarter of the peers upload at B/10.
    Heterogeneous,
    /// Two zones joined by a link capped at B/2.
    Zones,
    /// A quarter of the peers are killed when the mean peer is halfway.
    Churn,
}

/// Where weightcast's seed runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SeedPlacement {
    /// On the origin host, sharing its capped link.
    Origin,
    /// On a host of its own, capped like every host.
    Own,
}

/// One way of running a system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Variant {
    pub seed: SeedPlacement,
    /// Every weightcast host reports the same host name.
    pub shared_hostname: bool,
    /// BitTorrent's piece size.
    pub bt_piece: u64,
}

impl Default for Variant {
    fn default() -> Self {
        Self {
            seed: SeedPlacement::Origin,
            shared_hostname: false,
            bt_piece: 4 << 20,
        }
    }
}

impl Variant {
    /// What distinguishes this variant for `system`, for tables.
    pub fn label(&self, system: System) -> String {
        match system {
            System::Bittorrent => format!("{} KiB pieces", self.bt_piece >> 10),
            System::Weightcast | System::HfWeightcast => {
                let mut l = match self.seed {
                    SeedPlacement::Origin => "seed on the origin host".to_string(),
                    SeedPlacement::Own => "seed on its own host".to_string(),
                };
                if self.shared_hostname {
                    l.push_str(", one host name for all");
                }
                l
            }
            System::Direct | System::HfDirect => String::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Setup {
    pub bin: PathBuf,
    pub peers: usize,
    pub size: u64,
    /// Link rate, bits per second.
    pub bandwidth: u64,
    /// Where the generated model file is kept across runs.
    pub work: PathBuf,
    /// Extra flags for every weightcast daemon (tuning experiments).
    pub daemon_args: Vec<String>,
}

impl Setup {
    /// S/B: the least time any receiver needs.
    pub fn bound_secs(&self) -> f64 {
        self.size as f64 * 8.0 / self.bandwidth as f64
    }

    fn model(&self) -> Result<(PathBuf, String)> {
        let dir = self.work.join(format!("files-{}", self.size));
        let f = dir.join("model.safetensors");
        let sha_file = dir.join("model.sha256");
        if let (true, Ok(sha)) = (f.exists(), std::fs::read_to_string(&sha_file)) {
            return Ok((dir, sha));
        }
        std::fs::create_dir_all(&dir)?;
        weightcast_modelpack::safetensors_gen::write(&f, self.size, 3)?;
        let sha = sha256_file(&f)?;
        std::fs::write(&sha_file, &sha)?;
        Ok((dir, sha))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub scenario: Scenario,
    pub system: System,
    pub variant: Variant,
    pub peers: usize,
    pub size: u64,
    pub bandwidth_bits: u64,
    pub bound_secs: f64,
    /// Completion time per peer from the common start; `None` for a peer
    /// killed on purpose.
    pub peer_secs: Vec<Option<f64>>,
    /// Bytes the origin host put on its capped link.
    pub origin_host_upload: u64,
    /// Bytes the seed's host put on its link (the origin host's, when the
    /// seed runs there).
    pub seed_host_upload: Option<u64>,
    /// Bytes the HTTP origin served (body bytes), where an HTTP origin is used.
    pub origin_http_bytes: Option<u64>,
    /// Heterogeneous: bytes the slow hosts uploaded.
    pub slow_hosts_upload: Option<u64>,
    /// Zones: bytes that crossed the inter-zone link.
    pub cross_zone: Option<u64>,
    /// weightcast: pieces the seed uploaded, and requests it refused as busy.
    pub seed_uploads: Option<[u64; 2]>,
    /// Link byte counters about once a second: where the time went.
    pub timeline: Vec<Sample>,
    /// Each peer host's TCP loss counters at the end of the run (the same
    /// order as `peer_secs`; see [`crate::netns::TCP_LOSS_COUNTERS`]).
    pub peer_tcp: Vec<std::collections::BTreeMap<String, u64>>,
}

/// Cumulative link bytes at one moment of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub secs: f64,
    /// The machine's (busy, total) CPU ticks from `/proc/stat`.
    pub cpu_busy_ticks: (u64, u64),
    /// The seed's host (the origin host for systems without a seed).
    pub seed_host_up: u64,
    /// Every peer host's download, summed.
    pub peers_down: u64,
    /// Every peer host's upload, summed.
    pub peers_up: u64,
    /// Each peer host's (uploaded, downloaded) bytes, in `peer_secs` order:
    /// which peers were slow, and when.
    pub peer_links: Vec<(u64, u64)>,
}

impl RunResult {
    /// The timeline as rates, each a fraction of one link's capacity:
    /// (seconds, seed host upload, mean peer download, mean peer upload,
    /// the machine's CPU busy fraction).
    pub fn utilisation(&self) -> Vec<(f64, f64, f64, f64, f64)> {
        let link = self.bandwidth_bits as f64 / 8.0;
        let n = self.peers.max(1) as f64;
        self.timeline
            .windows(2)
            .map(|w| {
                let dt = (w[1].secs - w[0].secs).max(1e-3);
                let rate = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / dt / link;
                let (b0, t0) = w[0].cpu_busy_ticks;
                let (b1, t1) = w[1].cpu_busy_ticks;
                let cpu = b1.saturating_sub(b0) as f64 / (t1.saturating_sub(t0)).max(1) as f64;
                (
                    w[1].secs,
                    rate(w[0].seed_host_up, w[1].seed_host_up),
                    rate(w[0].peers_down, w[1].peers_down) / n,
                    rate(w[0].peers_up, w[1].peers_up) / n,
                    cpu,
                )
            })
            .collect()
    }
}

impl RunResult {
    fn finished(&self) -> Vec<f64> {
        self.peer_secs.iter().flatten().copied().collect()
    }

    pub fn slowest_ratio(&self) -> f64 {
        self.finished().into_iter().fold(0.0, f64::max) / self.bound_secs
    }

    pub fn mean_ratio(&self) -> f64 {
        let f = self.finished();
        f.iter().sum::<f64>() / f.len().max(1) as f64 / self.bound_secs
    }

    /// The median peer's completion time / (S/B).
    pub fn median_ratio(&self) -> f64 {
        crate::stats::median(&mut self.finished()) / self.bound_secs
    }
}

/// A peer's download, whichever system runs it.
struct PeerRun {
    host: NetHost,
    child: Child,
    /// BitTorrent: aria2 touches this file when the download completes.
    done_marker: Option<PathBuf>,
    output: PathBuf,
    /// Processes to kill for churn (daemon, client).
    procs: Vec<usize>,
    secs: Option<f64>,
    killed: bool,
}

pub fn run(
    setup: &Setup,
    scenario: Scenario,
    system: System,
    variant: Variant,
) -> Result<RunResult> {
    let (files, sha) = setup.model()?;
    let b = setup.bandwidth;
    let zones = if scenario == Scenario::Zones { 2 } else { 1 };
    let mut net = Net::new(zones, (zones == 2).then_some(b / 2))?;
    let capped = Caps {
        up: Some(b),
        down: Some(b),
    };
    let origin = net.add_host("origin", 0, capped)?;
    let sched = net.add_host("sched", 0, Caps::default())?;
    let weightcast = matches!(system, System::Weightcast | System::HfWeightcast);
    let seed_host = match (weightcast, variant.seed) {
        (true, SeedPlacement::Own) => Some(net.add_host("seedhost", 0, capped)?),
        _ => None,
    };
    let seed_at = seed_host.as_ref().unwrap_or(&origin).clone();
    // Every weightcast host, the seed's too, may report one host name.
    let hostname = |h: &NetHost| match variant.shared_hostname {
        true => "localhost".to_string(),
        false => h.name.clone(),
    };
    let slow = |i: usize| scenario == Scenario::Heterogeneous && i < setup.peers / 4;
    let mut peers = Vec::new();
    for i in 0..setup.peers {
        let caps = Caps {
            up: Some(if slow(i) { b / 10 } else { b }),
            down: Some(b),
        };
        peers.push(net.add_host(&format!("p{i:02}"), i % zones, caps)?);
    }
    // Every emulated host writes its cache and output to one machine's
    // disk, which real hosts do not share: on tmpfs (where there is room
    // for two copies per peer), that shared disk does not time the run.
    let shm = Path::new("/dev/shm");
    let room = 2 * setup.size * (setup.peers as u64 + 2) + (1 << 30);
    let mut c = match free_bytes(shm) {
        Some(free) if free > room => Cluster::new_in(&setup.bin, shm)?,
        _ => Cluster::new(&setup.bin)?,
    };
    let at = |h: &NetHost| Place::in_ns(&h.ns, &h.ip);
    let hf = matches!(system, System::HfDirect | System::HfWeightcast);
    // The Hugging Face systems get their bytes from a test Hub's CDN on the
    // origin host; the others from the plain origin.
    let (origin_url, origin_addr) = if hf {
        hf_hub_at(&mut c, &at(&origin), &files)?
    } else {
        c.origin_at(&at(&origin), &bench_bin()?, &files, &Faults::default())?
    };
    let url = format!("{origin_url}/model.safetensors");
    let mut seed_daemon = None;
    let mut runs: Vec<PeerRun> = match system {
        System::Weightcast => {
            let (endpoint, _) = c.scheduler_at(&at(&sched))?;
            // Zone labels let the scheduler and phase 2 keep traffic local.
            let zone = |h: &NetHost| format!("zone-{}", h.zone);
            let seed_args =
                ["--zone", &zone(&seed_at), "--hostname", &hostname(&seed_at)].map(String::from);
            let mut seed_args: Vec<&str> = seed_args.iter().map(String::as_str).collect();
            seed_args.extend(setup.daemon_args.iter().map(String::as_str));
            seed_daemon = Some(c.daemon_at(
                &at(&seed_at),
                "seed",
                &c.path("seed"),
                &endpoint,
                true,
                &seed_args,
            )?);
            let mut daemons = Vec::new();
            for h in &peers {
                let (z, n) = (zone(h), hostname(h));
                let mut args = vec!["--zone", &z, "--hostname", &n];
                args.extend(setup.daemon_args.iter().map(String::as_str));
                let d = c.daemon_at(&at(h), &h.name, &c.path(&h.name), &endpoint, false, &args)?;
                daemons.push(d);
            }
            let mut runs = Vec::new();
            for (h, d) in peers.iter().zip(daemons) {
                let out = c.path(&format!("{}-out/model.safetensors", h.name));
                let mut cmd = at(h).command(&c.bin);
                cmd.args(["get", &url, "-q", "--data-dir"])
                    .arg(&d.data_dir)
                    .arg("-o")
                    .arg(&out);
                runs.push(PeerRun::spawn(h, cmd, out, None, vec![d.proc])?);
            }
            runs
        }
        System::Direct => {
            let mut runs = Vec::new();
            for h in &peers {
                let out = c.path(&format!("{}-out/model.safetensors", h.name));
                let mut cmd = at(h).command(&c.bin);
                cmd.args(["get", &url, "-q", "--data-dir"])
                    .arg(c.path(&h.name))
                    .arg("-o")
                    .arg(&out);
                runs.push(PeerRun::spawn(h, cmd, out, None, vec![])?);
            }
            runs
        }
        System::Bittorrent => bittorrent(&mut c, &origin, &peers, &files, variant.bt_piece)?,
        System::HfDirect => {
            let mut runs = Vec::new();
            for h in &peers {
                let dir = c.path(&format!("{}-out", h.name));
                let cmd = hf_download(&c, &at(h), &origin_url, &dir)?;
                runs.push(PeerRun::spawn(
                    h,
                    cmd,
                    dir.join("model.safetensors"),
                    None,
                    vec![],
                )?);
            }
            runs
        }
        System::HfWeightcast => {
            let (endpoint, _) = c.scheduler_at(&at(&sched))?;
            let hub = ["--hf-endpoint", origin_url.as_str()];
            let seed_name = hostname(&seed_at);
            let mut seed_args = hub.to_vec();
            seed_args.extend(["--hostname", &seed_name]);
            seed_daemon = Some(c.daemon_at(
                &at(&seed_at),
                "seed",
                &c.path("seed"),
                &endpoint,
                true,
                &seed_args,
            )?);
            let mut runs = Vec::new();
            for h in &peers {
                let n = hostname(h);
                let mut extra = hub.to_vec();
                extra.extend(["--hf-listen", "127.0.0.1:7410", "--hostname", &n]);
                let d = c.daemon_at(&at(h), &h.name, &c.path(&h.name), &endpoint, false, &extra)?;
                let dir = c.path(&format!("{}-out", h.name));
                let cmd = hf_download(&c, &at(h), "http://127.0.0.1:7410", &dir)?;
                runs.push(PeerRun::spawn(
                    h,
                    cmd,
                    dir.join("model.safetensors"),
                    None,
                    vec![d.proc],
                )?);
            }
            runs
        }
    };
    let t0 = Instant::now();
    let timeout = Duration::from_secs_f64(setup.bound_secs() * (setup.peers as f64 + 4.0) + 120.0);
    let mut churned = scenario != Scenario::Churn;
    let mut timeline = Vec::new();
    let mut last_sample = t0;
    loop {
        if last_sample.elapsed() >= Duration::from_secs(1) || timeline.is_empty() {
            last_sample = Instant::now();
            let links = net.link_bytes();
            let of = |h: &NetHost| links.get(&h.name).copied().unwrap_or_default();
            timeline.push(Sample {
                cpu_busy_ticks: cpu_ticks(),
                secs: t0.elapsed().as_secs_f64(),
                seed_host_up: of(&seed_at).0,
                peers_down: peers.iter().map(|h| of(h).1).sum(),
                peers_up: peers.iter().map(|h| of(h).0).sum(),
                peer_links: peers.iter().map(&of).collect(),
            });
        }
        let mut pending = 0;
        for r in runs.iter_mut().filter(|r| r.secs.is_none() && !r.killed) {
            if r.is_done()? {
                r.secs = Some(t0.elapsed().as_secs_f64());
            } else {
                pending += 1;
            }
        }
        if pending == 0 {
            break;
        }
        if !churned {
            let mean = peers.iter().map(|h| net.downloaded(h)).sum::<u64>() / peers.len() as u64;
            if mean >= setup.size / 2 {
                for r in runs.iter_mut().take(setup.peers / 4) {
                    r.killed = true;
                    let _ = r.child.kill();
                    for p in r.procs.clone() {
                        c.proc(p).kill();
                    }
                }
                churned = true;
            }
        }
        if t0.elapsed() > timeout {
            bail!(
                "{scenario:?}/{system:?}: peers still downloading after {timeout:?} (logs in {})",
                c.dir.path().display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for r in runs.iter().filter(|r| !r.killed) {
        let got =
            sha256_file(&r.output).with_context(|| format!("{} has no output", r.host.name))?;
        if got != sha {
            bail!(
                "{scenario:?}/{system:?}: {} got a file that does not match the origin",
                r.host.name
            );
        }
    }
    let origin_http_bytes = match system {
        System::Bittorrent => None,
        System::HfDirect | System::HfWeightcast => {
            let stats = weightcast_testkit::cluster::http_get(&origin_addr, "/_stats")?;
            let stats: weightcast_testkit::hf_hub::HubStatsSnapshot = serde_json::from_str(&stats)?;
            Some(stats.cdn_bytes_served)
        }
        _ => Some(origin_stats(&origin_addr)?.bytes_served),
    };
    let slow_hosts_upload = (scenario == Scenario::Heterogeneous).then(|| {
        peers
            .iter()
            .enumerate()
            .filter(|(i, _)| slow(*i))
            .map(|(_, h)| net.uploaded(h))
            .sum()
    });
    let seed_uploads = seed_daemon.and_then(|d| c.metrics(&d).ok()).map(|m| {
        let g = |n: &str| weightcast_testkit::cluster::metric(&m, n, "").unwrap_or(0.0) as u64;
        [
            g("weightcast_upload_pieces_total"),
            g("weightcast_upload_refused_busy_total"),
        ]
    });
    let seed_host_upload = weightcast.then(|| net.uploaded(&seed_at));
    let result = RunResult {
        timeline,
        seed_uploads,
        seed_host_upload,
        scenario,
        system,
        variant,
        peers: setup.peers,
        size: setup.size,
        bandwidth_bits: b,
        bound_secs: setup.bound_secs(),
        peer_secs: runs.iter().map(|r| r.secs).collect(),
        origin_host_upload: net.uploaded(&origin),
        origin_http_bytes,
        slow_hosts_upload,
        cross_zone: (zones == 2).then(|| net.cross_zone()),
        peer_tcp: peers.iter().map(|h| net.tcp_counters(h)).collect(),
    };
    drop(runs);
    if let Some(keep) = std::env::var_os("WEIGHTCAST_BENCH_KEEP") {
        // For a look at the processes' logs after the run.
        let to =
            PathBuf::from(keep).join(format!("{scenario:?}-{system:?}-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&to);
        for e in std::fs::read_dir(c.dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.path().extension().is_some_and(|x| x == "log") {
                let _ = std::fs::copy(e.path(), to.join(e.file_name()));
            }
        }
        eprintln!("   logs kept in {}", to.display());
    }
    drop(c);
    drop(net);
    Ok(result)
}

/// The machine's (busy, total) CPU ticks so far, from `/proc/stat`.
fn cpu_ticks() -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let Some(cpu) = stat.lines().next() else {
        return (0, 0);
    };
    let f: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = f.iter().sum();
    // idle and iowait are the 4th and 5th fields.
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Free bytes on the filesystem holding `dir` (from `df`), if it says.
fn free_bytes(dir: &Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// A test Hub serving `files` as repo `bench/model` at `place` (hub on port
/// 7400, its CDN on 7401). Returns the hub's URL and the CDN's address
/// (where `/_stats` counts the LFS bytes).
/// This benchmark binary: it also runs the test servers (`origin`,
/// `hf-hub`) inside the emulated hosts.
fn bench_bin() -> Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name("weightcast-bench"))
}

fn hf_hub_at(c: &mut Cluster, place: &Place, files: &Path) -> Result<(String, String)> {
    let bench = bench_bin()?;
    let ready = c.path("hf-hub.ready");
    let args = [
        "hf-hub".to_string(),
        "--repo".into(),
        "bench/model".into(),
        "--dir".into(),
        files.display().to_string(),
        "--listen".into(),
        format!("{}:7400", place.ip),
        "--cdn-listen".into(),
        format!("{}:7401", place.ip),
        "--ready-file".into(),
        ready.display().to_string(),
    ];
    let i = c.spawn_at(place, &bench, "hf-hub", &args)?;
    let t0 = Instant::now();
    while !ready.exists() {
        if !c.proc(i).is_running() || t0.elapsed() > Duration::from_secs(120) {
            bail!("the test Hub did not start:\n{}", c.log_tail(i));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((
        format!("http://{}:7400", place.ip),
        format!("{}:7401", place.ip),
    ))
}

/// `hf download bench/model --local-dir dir` at `place`, against `endpoint`.
fn hf_download(
    c: &Cluster,
    place: &Place,
    endpoint: &str,
    dir: &Path,
) -> Result<std::process::Command> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let hf = root.join("target/hf-clients/v2/bin/hf");
    if !hf.exists() {
        let ok = std::process::Command::new(root.join("scripts/setup-hf-clients")).status()?;
        if !ok.success() {
            bail!("scripts/setup-hf-clients failed");
        }
    }
    let mut cmd = place.command(&std::path::absolute(hf)?);
    cmd.args(["download", "bench/model", "--local-dir"])
        .arg(dir)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", c.path(&format!("hf-home-{}", place.ip)))
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_UPDATE_CHECK", "1")
        .env("HF_HUB_DISABLE_XET", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .env("HF_HUB_DOWNLOAD_TIMEOUT", "60")
        .env_remove("HF_TOKEN");
    Ok(cmd)
}

impl PeerRun {
    fn spawn(
        host: &NetHost,
        mut cmd: std::process::Command,
        output: PathBuf,
        done_marker: Option<PathBuf>,
        procs: Vec<usize>,
    ) -> Result<Self> {
        if let Some(p) = output.parent() {
            std::fs::create_dir_all(p)?;
        }
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("start the client on {}", host.name))?;
        Ok(Self {
            host: host.clone(),
            child,
            done_marker,
            output,
            procs,
            secs: None,
            killed: false,
        })
    }

    fn is_done(&mut self) -> Result<bool> {
        if let Some(m) = &self.done_marker {
            return Ok(m.exists());
        }
        match self.child.try_wait()? {
            None => Ok(false),
            Some(s) if s.success() => Ok(true),
            Some(s) => bail!("the client on {} failed ({s})", self.host.name),
        }
    }
}

impl Drop for PeerRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// opentracker and aria2 seeders/leechers; the origin host is the only
/// initial seeder.
fn bittorrent(
    c: &mut Cluster,
    origin: &NetHost,
    peers: &[NetHost],
    files: &Path,
    piece: u64,
) -> Result<Vec<PeerRun>> {
    if !piece.is_power_of_two() || !(16 << 10..=64 << 20).contains(&piece) {
        bail!("BitTorrent piece size {piece} is not a power of two from 16 KiB to 64 MiB");
    }
    let which = |p: &str| -> Result<PathBuf> {
        for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
            let f = Path::new(dir).join(p);
            if f.exists() {
                return Ok(f);
            }
        }
        bail!("{p} not found: install aria2, opentracker and mktorrent (scripts/setup-bench does)")
    };
    let (aria2, tracker, mktorrent) =
        (which("aria2c")?, which("opentracker")?, which("mktorrent")?);
    let place = Place::in_ns(&origin.ns, &origin.ip);
    let torrent = c.path("model.torrent");
    let out = std::process::Command::new(&mktorrent)
        .args([
            "-l",
            &piece.trailing_zeros().to_string(),
            "-a",
            &format!("http://{}:6969/announce", origin.ip),
            "-o",
        ])
        .arg(&torrent)
        .arg(files.join("model.safetensors"))
        .output()?;
    if !out.status.success() {
        bail!("mktorrent failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Debian's opentracker only tracks whitelisted info hashes.
    let show = std::process::Command::new(&aria2)
        .arg("-S")
        .arg(&torrent)
        .output()?;
    let info_hash = String::from_utf8_lossy(&show.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Info Hash: ").map(|h| h.trim().to_string()))
        .context("aria2c -S printed no info hash")?;
    let whitelist = c.path("whitelist");
    std::fs::write(&whitelist, format!("{info_hash}\n"))?;
    let tracker_args = ["-i", &origin.ip, "-p", "6969", "-P", "6969", "-w"].map(String::from);
    let mut tracker_args = tracker_args.to_vec();
    tracker_args.push(whitelist.display().to_string());
    c.spawn_at(&place, &tracker, "opentracker", &tracker_args)?;
    let hook = c.path("done-hook.sh");
    std::fs::write(&hook, "#!/bin/sh\ntouch \"$3.done\"\n")?;
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let common = |dir: &Path| -> Vec<String> {
        vec![
            "--seed-ratio=0.0".into(),
            "--enable-dht=false".into(),
            "--enable-dht6=false".into(),
            "--bt-enable-lpd=false".into(),
            "--file-allocation=none".into(),
            "--quiet=true".into(),
            format!("--dir={}", dir.display()),
            torrent.display().to_string(),
        ]
    };
    let mut seed_args = vec!["--check-integrity=true".to_string()];
    seed_args.extend(common(files));
    c.spawn_at(&place, &aria2, "aria2-origin", &seed_args)?;
    // Let the tracker hear of the seeder before the swarm starts.
    std::thread::sleep(Duration::from_secs(2));
    let mut runs = Vec::new();
    for h in peers {
        let dir = c.path(&format!("{}-out", h.name));
        std::fs::create_dir_all(&dir)?;
        let mut cmd = Place::in_ns(&h.ns, &h.ip).command(&aria2);
        cmd.arg(format!("--on-bt-download-complete={}", hook.display()))
            .args(common(&dir));
        let output = dir.join("model.safetensors");
        let marker = dir.join("model.safetensors.done");
        runs.push(PeerRun::spawn(h, cmd, output, Some(marker), vec![])?);
    }
    Ok(runs)
}
