//! `weightcast-bench link`: the single-link path at its physical limit.
//!
//! One parent (a seed daemon that fetched the file from the origin) and one
//! child daemon move one file, and in the same run the ceilings of that
//! link are measured on the same bytes:
//!
//! - **loopback**: iperf3 between the two ends, and sha256 of the file on
//!   the machine's cores (the child verifies every piece with sha256), with
//!   BLAKE3 beside it as the candidate faster piece digest. Target: the
//!   child at ≥ 90% of the lower ceiling.
//! - **emulated link** (root): the two ends in network namespaces with tbf
//!   caps (see [`netns`](crate::netns)); iperf3 over the same caps. Target:
//!   ≥ 95% of iperf3.
//! - **memory**: daemons moving 64 MiB … 4 GiB on a real disk, each under a
//!   cgroup memory limit (v2 where its memory controller is available, else
//!   v1), with VmHWM, RssAnon and RssFile of both daemons and the cgroup's
//!   OOM kills and peak.
//!
//! The child's time is from its `get` request to its last piece verified
//! (its piece-byte counter, polled every 20 ms): the copy of the finished
//! file to the output, which a real user may not need, is left out.

use crate::netns::{Caps, Net};
use crate::stats::median;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weightcast_testkit::cluster::{http_get, metric, Cluster, Daemon, Faults, Place};
use weightcast_types::byte_size;
use weightcast_types::piece::PieceLayout;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// The child on loopback against iperf3 and the hashing ceiling.
    Loopback,
    /// The child on an emulated capped link against iperf3 on it.
    Emulated,
    /// Daemon memory from small to large files, under a cgroup limit.
    Memory,
}

#[derive(clap::Args)]
pub struct LinkArgs {
    /// What to measure (default: all three).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub parts: Vec<Part>,
    /// The file moved in the loopback and emulated parts.
    #[arg(long, default_value = "4GiB", value_parser = byte_size::parse)]
    pub size: u64,
    /// Runs of each part: tables give the median and the range.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Where the loopback and emulated parts keep their files: tmpfs by
    /// default, so that the disk does not time the network.
    #[arg(long, default_value = "/dev/shm")]
    pub dir: PathBuf,
    /// The emulated link's rate, e.g. 1gbit.
    #[arg(long, default_value = "1gbit", value_parser = crate::netns::parse_bits)]
    pub bandwidth: u64,
    /// File sizes of the memory part.
    #[arg(long, value_delimiter = ',', default_value = "64MiB,1GiB,4GiB", value_parser = byte_size::parse)]
    pub memory_sizes: Vec<u64>,
    /// Where the memory part keeps its files: a real disk (tmpfs pages are
    /// the file itself and cannot be dropped).
    #[arg(long, default_value = "/var/tmp")]
    pub memory_dir: PathBuf,
    /// memory.max of each daemon's cgroup in the memory part.
    #[arg(long, default_value = "512MiB", value_parser = byte_size::parse)]
    pub cgroup_limit: u64,
    /// Memory-part sizes to run again with `--mapped-window 0` (every page
    /// kept mapped), for comparison.
    #[arg(long, value_delimiter = ',', value_parser = byte_size::parse)]
    pub unwindowed_sizes: Vec<u64>,
    /// The weightcast binary (default: beside this one).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Where to write link.md. Default: print only.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A line naming the machine, for the results' header.
    #[arg(long, default_value = "")]
    pub machine: String,
}

/// Bytes per second as MB/s and Gbit/s.
fn rate(bps: f64) -> String {
    format!("{:.0} MB/s ({:.2} Gbit/s)", bps / 1e6, bps * 8.0 / 1e9)
}

/// Median and range of a series, formatted by `f`.
fn summary(xs: &[f64], f: impl Fn(f64) -> String) -> String {
    let mut v = xs.to_vec();
    let m = median(&mut v);
    match (v.first(), v.last()) {
        (Some(lo), Some(hi)) if v.len() > 1 => format!("{} ({} – {})", f(m), f(*lo), f(*hi)),
        _ => f(m),
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// A file of `size` pseudo-random bytes (incompressible, like weights).
fn write_data(path: &Path, size: u64) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let mut f = std::io::BufWriter::with_capacity(
        8 << 20,
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?,
    );
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 4 << 20];
    let mut left = size;
    while left > 0 {
        for w in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// Hash throughputs over the same bytes, in bytes per second.
#[derive(Debug, Clone, Copy)]
struct Hashing {
    sha256_1: f64,
    sha256_all: f64,
    blake3_1: f64,
    blake3_all: f64,
}

/// Hashes the file's pieces (its real piece size) on 1 and on `threads`
/// threads, sha256 and BLAKE3; the pages are mapped and populated first, so
/// this is the hash alone. Returns the whole file's sha256 too.
fn hashing(path: &Path, threads: usize) -> Result<(Hashing, String)> {
    let file = std::fs::File::open(path)?;
    // SAFETY: the benchmark's own data file, which nothing writes while it is
    // mapped here.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&file)? };
    let piece = PieceLayout::for_length(map.len() as u64).piece_size as usize;
    let pieces: Vec<&[u8]> = map.chunks(piece).collect();
    let len = map.len() as f64;
    let timed = |threads: usize, f: &(dyn Fn(&[u8]) + Sync)| {
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for t in 0..threads {
                let pieces = &pieces;
                s.spawn(move || {
                    for p in pieces.iter().skip(t).step_by(threads) {
                        f(p);
                    }
                });
            }
        });
        len / t0.elapsed().as_secs_f64()
    };
    let sha = |p: &[u8]| {
        std::hint::black_box(<sha2::Sha256 as sha2::Digest>::digest(p));
    };
    let b3 = |p: &[u8]| {
        std::hint::black_box(blake3::hash(p));
    };
    let whole = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(&map[..]);
        hex::encode(h.finalize())
    };
    Ok((
        Hashing {
            sha256_1: timed(1, &sha),
            sha256_all: timed(threads, &sha),
            blake3_1: timed(1, &b3),
            blake3_all: timed(threads, &b3),
        },
        whole,
    ))
}

/// Bytes per second iperf3 moves from `from` to `to` (listening at
/// `to_ip`), one stream, `bytes` of it.
fn iperf3(from: &Place, to: &Place, to_ip: &str, bytes: u64) -> Result<f64> {
    let port = 5201 + (std::process::id() % 1000) as u16;
    let mut server = to
        .command(Path::new("iperf3"))
        .args(["-s", "-1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start iperf3: install it (scripts/setup-bench)")?;
    let mut last = String::new();
    let mut result = None;
    for _ in 0..50 {
        let out = from
            .command(Path::new("iperf3"))
            .args(["-c", to_ip, "-p", &port.to_string(), "-J", "-n"])
            .arg(bytes.to_string())
            .output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bits) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            result = Some(bits / 8.0);
            break;
        }
        last = v["error"].as_str().unwrap_or("no JSON").to_string();
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();
    result.with_context(|| format!("iperf3 failed: {last}"))
}

/// Memory figures of a process, from /proc/<pid>/status, in bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Mem {
    hwm: u64,
    anon: u64,
    file: u64,
    shmem: u64,
}

fn mem_of(pid: u32) -> Mem {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Mem {
        hwm: kb("VmHWM:"),
        anon: kb("RssAnon:"),
        file: kb("RssFile:"),
        shmem: kb("RssShmem:"),
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

/// One child download: seconds from the request to the last piece, and
/// from its first piece to its last.
struct ChildRun {
    to_last: f64,
    first_to_last: f64,
    /// Bytes verified at the first poll that saw any.
    first_bytes: u64,
    child: Mem,
    parent: Mem,
}

/// The parent side of a link: origin, scheduler and a seed holding the file.
struct Parent {
    c: Cluster,
    url: String,
    sha: String,
    scheduler: String,
    seed: Daemon,
    size: u64,
    /// Where the gets put their outputs (deleted at once): a disk, so
    /// that a tmpfs holds only the origin's file and the two caches.
    out_dir: PathBuf,
}

impl Parent {
    /// Serves `data` (with whole-file digest `sha`) from an origin at
    /// `place`, and has a seed daemon there fetch it.
    fn start(
        bin: &Path,
        dir: &Path,
        place: &Place,
        data: &Path,
        sha: &str,
        out_dir: &Path,
    ) -> Result<(Self, f64)> {
        let mut c = Cluster::new_in(bin, dir)?;
        let files = data.parent().context("the data file has a directory")?;
        let name = data
            .file_name()
            .and_then(|n| n.to_str())
            .context("the data file has a name")?;
        let (origin, _) = c.origin_at(place, &bench_bin()?, files, &Faults::default())?;
        let (scheduler, _) = c.scheduler_at(place)?;
        let seed_dir = c.path("parent");
        let seed = c.daemon_at(place, "parent", &seed_dir, &scheduler, true, &[])?;
        let url = format!("{origin}/{name}");
        let size = std::fs::metadata(data)?.len();
        let parent = Self {
            c,
            url,
            sha: sha.to_string(),
            scheduler,
            seed,
            size,
            out_dir: out_dir.to_path_buf(),
        };
        let out = parent.out_dir.join("parent-out.bin");
        let t0 = Instant::now();
        parent.get(place, &parent.seed, &out, false)?;
        let secs = t0.elapsed().as_secs_f64();
        let _ = std::fs::remove_file(&out);
        Ok((parent, secs))
    }

    /// Runs `get` through `d` at `place` to `out`, checking the result.
    fn get(&self, place: &Place, d: &Daemon, out: &Path, peers_only: bool) -> Result<()> {
        let o = self.get_command(place, d, out, peers_only).output()?;
        check_get(&o, self.size, peers_only)
    }

    fn get_command(&self, place: &Place, d: &Daemon, out: &Path, peers_only: bool) -> Command {
        let mut cmd = place.command(&self.c.bin);
        cmd.args(["get", &self.url, "--json", "--data-dir"])
            .arg(&d.data_dir)
            .arg("-o")
            .arg(out)
            .args(["--digest", &format!("sha256:{}", self.sha)])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        if peers_only {
            cmd.arg("--no-back-to-source");
        }
        cmd
    }

    /// A fresh child daemon at `place` fetches the file from the seed.
    fn child_run(&mut self, place: &Place, name: &str, extra: &[&str]) -> Result<ChildRun> {
        let dir = self.c.path(name);
        let scheduler = self.scheduler.clone();
        let d = self
            .c
            .daemon_at(place, name, &dir, &scheduler, false, extra)?;
        let out = self.out_dir.join(format!("{name}-out.bin"));
        let metrics = d.ready.metrics_addr.clone();
        let verified = || {
            http_get(&metrics, "/metrics")
                .ok()
                .and_then(|p| metric(&p, "weightcast_download_bytes_total", "source=\"peer\""))
                .map_or(0, |b| b as u64)
        };
        let t0 = Instant::now();
        let get = self
            .get_command(place, &d, &out, true)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut first: Option<(Instant, u64)> = None;
        let last = loop {
            let b = verified();
            let now = Instant::now();
            if b > 0 && first.is_none() {
                first = Some((now, b));
            }
            if b >= self.size {
                break now;
            }
            if now - t0 > Duration::from_secs(3600) {
                bail!("the child did not finish within an hour");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let o = get.wait_with_output()?;
        check_get(&o, self.size, true)?;
        let child = mem_of(self.c.proc(d.proc).pid());
        let parent = mem_of(self.c.proc(self.seed.proc).pid());
        let _ = self.c.proc(d.proc).terminate(Duration::from_secs(10));
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_dir_all(&dir);
        let (t_first, first_bytes) = first.unwrap_or((t0, 0));
        Ok(ChildRun {
            to_last: (last - t0).as_secs_f64(),
            first_to_last: (last - t_first).as_secs_f64(),
            first_bytes,
            child,
            parent,
        })
    }
}

fn check_get(o: &std::process::Output, size: u64, peers_only: bool) -> Result<()> {
    if !o.status.success() {
        bail!("a get failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).context("the get printed no JSON summary")?;
    if v["bytes"].as_u64() != Some(size) {
        bail!("the get moved {} of {size} bytes", v["bytes"]);
    }
    if peers_only && v["from_peers"].as_u64() != Some(size) {
        bail!("the child did not take the whole file from its parent: {v}");
    }
    Ok(())
}

fn bench_bin() -> Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name("weightcast-bench"))
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// One run of the loopback part: every ceiling, then the child.
struct LoopbackRun {
    iperf: f64,
    hash: Hashing,
    child: ChildRun,
}

fn loopback(a: &LinkArgs, bin: &Path, md: &mut String) -> Result<()> {
    let place = Place::loopback();
    let work = tempfile::Builder::new()
        .prefix("weightcast-link-")
        .tempdir_in(&a.dir)?;
    let data = work.path().join("files/model.bin");
    eprintln!(
        "loopback: writing {} to {}",
        byte_size::format(a.size),
        data.display()
    );
    write_data(&data, a.size)?;
    let sha = weightcast_testkit::cluster::sha256_file(&data)?;
    let outs = tempfile::Builder::new()
        .prefix("weightcast-link-out-")
        .tempdir_in(&a.memory_dir)?;
    let (mut parent, seed_secs) =
        Parent::start(bin, work.path(), &place, &data, &sha, outs.path())?;
    eprintln!("  the seed fetched it from the origin in {seed_secs:.1} s");
    let mut runs = Vec::new();
    for run in 1..=a.runs.max(1) {
        let iperf = iperf3(&place, &place, "127.0.0.1", a.size)?;
        let (hash, _) = hashing(&data, cores())?;
        let child = parent.child_run(&place, &format!("child{run}"), &[])?;
        let r = LoopbackRun { iperf, hash, child };
        let wc = a.size as f64 / r.child.to_last;
        eprintln!(
            "  run {run}: child {} | iperf3 {} | sha256 {} on 1 core, {} on {} | blake3 {} / {}",
            rate(wc),
            rate(r.iperf),
            rate(r.hash.sha256_1),
            rate(r.hash.sha256_all),
            cores(),
            rate(r.hash.blake3_1),
            rate(r.hash.blake3_all),
        );
        runs.push(r);
    }
    let col = |f: &dyn Fn(&LoopbackRun) -> f64| runs.iter().map(f).collect::<Vec<_>>();
    let size = a.size as f64;
    let wc = col(&|r| size / r.child.to_last);
    let wc_first = col(&|r| (size - r.child.first_bytes as f64) / r.child.first_to_last);
    let lower = col(&|r| r.iperf.min(r.hash.sha256_all));
    let ratio = col(&|r| size / r.child.to_last / r.iperf.min(r.hash.sha256_all));
    let vs_iperf = col(&|r| size / r.child.to_last / r.iperf);
    let vs_sha = col(&|r| size / r.child.to_last / r.hash.sha256_all);
    let n = cores();
    md.push_str(&format!(
        "## Loopback: one parent, one child, {} on tmpfs ({} runs, median (range))\n\n",
        byte_size::format(a.size),
        runs.len()
    ));
    md.push_str("| what | figure |\n|---|---|\n");
    let rows: Vec<(String, String)> = vec![
        (
            "iperf3, 1 stream (link ceiling)".into(),
            summary(&col(&|r| r.iperf), rate),
        ),
        (
            "sha256, 1 core".into(),
            summary(&col(&|r| r.hash.sha256_1), rate),
        ),
        (
            format!("sha256, {n} cores (hashing ceiling)"),
            summary(&col(&|r| r.hash.sha256_all), rate),
        ),
        (
            "blake3, 1 core".into(),
            summary(&col(&|r| r.hash.blake3_1), rate),
        ),
        (
            format!("blake3, {n} cores"),
            summary(&col(&|r| r.hash.blake3_all), rate),
        ),
        ("lower ceiling".into(), summary(&lower, rate)),
        (
            "**weightcast child** (request → last piece verified)".into(),
            summary(&wc, rate),
        ),
        (
            "weightcast child (first piece → last)".into(),
            summary(&wc_first, rate),
        ),
        (
            "**child / lower ceiling** (target ≥ 90%)".into(),
            summary(&ratio, pct),
        ),
        ("child / iperf3".into(), summary(&vs_iperf, pct)),
        (
            format!("child / sha256 on {n} cores"),
            summary(&vs_sha, pct),
        ),
        (
            "child VmHWM / RssAnon / RssFile+Shmem at the end".into(),
            mem_cell(runs.iter().map(|r| r.child.child)),
        ),
        (
            "parent VmHWM / RssAnon / RssFile+Shmem at the end".into(),
            mem_cell(runs.iter().map(|r| r.child.parent)),
        ),
    ];
    for (k, v) in rows {
        md.push_str(&format!("| {k} | {v} |\n"));
    }
    md.push('\n');
    Ok(())
}

/// The last run's memory figures of one side.
fn mem_cell(ms: impl Iterator<Item = Mem>) -> String {
    ms.last().map_or("-".into(), |m| {
        format!(
            "{} / {} / {}",
            mib(m.hwm),
            mib(m.anon),
            mib(m.file + m.shmem)
        )
    })
}

fn emulated(a: &LinkArgs, bin: &Path, md: &mut String) -> Result<()> {
    crate::netns::check_privileges()?;
    let mut net = Net::new(1, None)?;
    let caps = Caps {
        up: Some(a.bandwidth),
        down: Some(a.bandwidth),
    };
    let p = net.add_host("parent", 0, caps)?;
    let ch = net.add_host("child", 0, caps)?;
    let at = |h: &crate::netns::NetHost| Place::in_ns(&h.ns, &h.ip);
    let work = tempfile::Builder::new()
        .prefix("weightcast-link-")
        .tempdir_in(&a.dir)?;
    let data = work.path().join("files/model.bin");
    eprintln!(
        "emulated {} Mbit/s link: writing {}",
        a.bandwidth / 1_000_000,
        byte_size::format(a.size)
    );
    write_data(&data, a.size)?;
    let sha = weightcast_testkit::cluster::sha256_file(&data)?;
    let outs = tempfile::Builder::new()
        .prefix("weightcast-link-out-")
        .tempdir_in(&a.memory_dir)?;
    let (mut parent, seed_secs) =
        Parent::start(bin, work.path(), &at(&p), &data, &sha, outs.path())?;
    eprintln!("  the seed fetched it from the origin in {seed_secs:.1} s");
    let mut iperfs = Vec::new();
    let mut wcs = Vec::new();
    let mut ratios = Vec::new();
    let mut mems = Vec::new();
    for run in 1..=a.runs.max(1) {
        let iperf = iperf3(&at(&p), &at(&ch), &ch.ip, a.size)?;
        let r = parent.child_run(&at(&ch), &format!("child{run}"), &[])?;
        let wc = a.size as f64 / r.to_last;
        eprintln!(
            "  run {run}: child {} | iperf3 {} | {}",
            rate(wc),
            rate(iperf),
            pct(wc / iperf)
        );
        iperfs.push(iperf);
        wcs.push(wc);
        ratios.push(wc / iperf);
        mems.push(r.child);
    }
    drop(parent);
    drop(net);
    md.push_str(&format!(
        "## Emulated {} Mbit/s link (tbf on both ends' up and down), {} on tmpfs ({} runs)\n\n",
        a.bandwidth / 1_000_000,
        byte_size::format(a.size),
        wcs.len()
    ));
    md.push_str("| what | figure |\n|---|---|\n");
    md.push_str(&format!(
        "| iperf3, 1 stream | {} |\n",
        summary(&iperfs, rate)
    ));
    md.push_str(&format!(
        "| **weightcast child** (request → last piece verified) | {} |\n",
        summary(&wcs, rate)
    ));
    md.push_str(&format!(
        "| **child / iperf3** (target ≥ 95%) | {} |\n",
        summary(&ratios, pct)
    ));
    md.push_str(&format!(
        "| child VmHWM / RssAnon / RssFile+Shmem at the end | {} |\n\n",
        mem_cell(mems.into_iter())
    ));
    Ok(())
}

/// A memory cgroup made for one daemon, removed on drop.
struct MemCgroup {
    dir: PathBuf,
    v2: bool,
}

impl MemCgroup {
    /// A cgroup limited to `limit` bytes: v2 where its memory controller is
    /// enabled or can be, else v1. `Err`: why neither can be made.
    fn create(name: &str, limit: u64) -> std::result::Result<Self, String> {
        let mut why = Vec::new();
        for base in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
            let base = Path::new(base);
            let controllers =
                std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
            if !controllers.split_whitespace().any(|c| c == "memory") {
                why.push(format!(
                    "{}: no memory controller in cgroup v2",
                    base.display()
                ));
                continue;
            }
            let _ = std::fs::write(base.join("cgroup.subtree_control"), "+memory");
            let dir = base.join(name);
            let made = std::fs::create_dir(&dir)
                .and_then(|_| std::fs::write(dir.join("memory.max"), limit.to_string()))
                .and_then(|_| std::fs::write(dir.join("memory.swap.max"), "0").or(Ok(())));
            match made {
                Ok(()) => return Ok(Self { dir, v2: true }),
                Err(e) => {
                    let _ = std::fs::remove_dir(&dir);
                    why.push(format!("{}: {e}", dir.display()));
                }
            }
        }
        let dir = Path::new("/sys/fs/cgroup/memory").join(name);
        let made = std::fs::create_dir(&dir)
            .and_then(|_| std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string()));
        match made {
            Ok(()) => Ok(Self { dir, v2: false }),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                why.push(format!("{} (cgroup v1): {e}", dir.display()));
                Err(why.join("; "))
            }
        }
    }

    fn add(&self, pid: u32) -> Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("cannot move {pid} into {}", self.dir.display()))
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    /// `key value` lines' value.
    fn field(text: &str, key: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
    }

    fn oom_kills(&self) -> Option<u64> {
        if self.v2 {
            Self::field(&self.read("memory.events"), "oom_kill ")
        } else {
            Self::field(&self.read("memory.oom_control"), "oom_kill ")
        }
    }

    /// The most memory (page cache included) the cgroup held.
    fn peak(&self) -> Option<u64> {
        let f = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        self.read(f).trim().parse().ok()
    }

    /// How often the limit was reached (reclaim had to run).
    fn limit_hits(&self) -> Option<u64> {
        if self.v2 {
            Self::field(&self.read("memory.events"), "max ")
        } else {
            self.read("memory.failcnt").trim().parse().ok()
        }
    }

    fn kind(&self) -> &'static str {
        if self.v2 {
            "v2 memory.max"
        } else {
            "v1 memory.limit_in_bytes"
        }
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("warning: could not remove {}", self.dir.display());
    }
}

struct MemoryRow {
    size: u64,
    window: &'static str,
    seed_secs: f64,
    child_secs: f64,
    parent: Mem,
    child: Mem,
    /// Per cgroup (parent, child): OOM kills, peak, limit hits.
    cg: Option<[CgroupFigures; 2]>,
}

/// A cgroup's OOM kills, peak and limit hits, when it could read them.
type CgroupFigures = (Option<u64>, Option<u64>, Option<u64>);

fn memory(a: &LinkArgs, bin: &Path, md: &mut String) -> Result<()> {
    let place = Place::loopback();
    let mut rows = Vec::new();
    let mut cg_note = String::new();
    let mut cases: Vec<(u64, bool)> = a.memory_sizes.iter().map(|&s| (s, true)).collect();
    cases.extend(a.unwindowed_sizes.iter().map(|&s| (s, false)));
    for (size, windowed) in cases {
        let work = tempfile::Builder::new()
            .prefix("weightcast-link-mem-")
            .tempdir_in(&a.memory_dir)?;
        let data = work.path().join("files/model.bin");
        eprintln!(
            "memory: {} on {} ({})",
            byte_size::format(size),
            a.memory_dir.display(),
            if windowed {
                "default window"
            } else {
                "--mapped-window 0"
            }
        );
        write_data(&data, size)?;
        let sha = weightcast_testkit::cluster::sha256_file(&data)?;
        // Written pages of the data file are not the daemons': out of the way.
        drop_cache(&data);
        let args: &[&str] = if windowed {
            &[]
        } else {
            &["--mapped-window", "0"]
        };
        let tag = format!("wclink{}-{}", std::process::id(), rows.len());
        let cgs = match (
            MemCgroup::create(&format!("{tag}-parent"), a.cgroup_limit),
            MemCgroup::create(&format!("{tag}-child"), a.cgroup_limit),
        ) {
            (Ok(p), Ok(c)) => Some((p, c)),
            (Err(why), _) | (_, Err(why)) => {
                cg_note = format!("no cgroup limit: {why}");
                eprintln!("  skipping the cgroup limit: {why}");
                None
            }
        };
        // The parent's daemon joins its cgroup before it fetches anything:
        // start it by hand rather than through Parent::start.
        let mut c = Cluster::new_in(bin, work.path())?;
        let files = data.parent().context("the data file has a directory")?;
        let (origin, _) = c.origin_at(&place, &bench_bin()?, files, &Faults::default())?;
        let (scheduler, _) = c.scheduler_at(&place)?;
        let seed = c.daemon_at(&place, "parent", &c.path("parent"), &scheduler, true, args)?;
        if let Some((p, _)) = &cgs {
            p.add(c.proc(seed.proc).pid())?;
        }
        let child_dir = c.path("child");
        let child = c.daemon_at(&place, "child", &child_dir, &scheduler, false, args)?;
        if let Some((_, ch)) = &cgs {
            ch.add(c.proc(child.proc).pid())?;
        }
        let mut parent = Parent {
            c,
            url: format!("{origin}/model.bin"),
            sha,
            scheduler,
            seed,
            size,
            out_dir: work.path().to_path_buf(),
        };
        let out = parent.c.path("parent-out.bin");
        let t0 = Instant::now();
        parent.get(&place, &parent.seed, &out, false)?;
        let seed_secs = t0.elapsed().as_secs_f64();
        let _ = std::fs::remove_file(&out);
        let out = parent.c.path("child-out.bin");
        let t0 = Instant::now();
        parent.get(&place, &child, &out, true)?;
        let child_secs = t0.elapsed().as_secs_f64();
        let _ = std::fs::remove_file(&out);
        let pm = mem_of(parent.c.proc(parent.seed.proc).pid());
        let cm = mem_of(parent.c.proc(child.proc).pid());
        let cg = cgs.as_ref().map(|(p, c)| {
            [
                (p.oom_kills(), p.peak(), p.limit_hits()),
                (c.oom_kills(), c.peak(), c.limit_hits()),
            ]
        });
        if let Some((p, _)) = &cgs {
            cg_note = format!(
                "each daemon in a cgroup of its own, {} = {}",
                p.kind(),
                byte_size::format(a.cgroup_limit)
            );
        }
        let row = MemoryRow {
            size,
            window: if windowed {
                "32 MiB (default)"
            } else {
                "0 (every page kept)"
            },
            seed_secs,
            child_secs,
            parent: pm,
            child: cm,
            cg,
        };
        eprintln!(
            "  parent VmHWM {} RssAnon {} RssFile {} | child VmHWM {} RssAnon {} RssFile {} | cgroups {:?}",
            mib(pm.hwm), mib(pm.anon), mib(pm.file), mib(cm.hwm), mib(cm.anon), mib(cm.file), row.cg
        );
        rows.push(row);
        // Processes first, then their cgroups.
        drop(parent);
        drop(cgs);
    }
    md.push_str(&format!(
        "## Memory: a seed fetches the file from the origin, a child from the seed, on disk ({}); {}\n\n",
        a.memory_dir.display(),
        if cg_note.is_empty() { "no cgroup" } else { &cg_note }
    ));
    md.push_str("| file | mapped window | seed get | child get | parent VmHWM | parent RssAnon | parent RssFile | child VmHWM | child RssAnon | child RssFile | OOM kills (parent, child) | cgroup peak (parent, child) | limit hits (parent, child) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let opt = |x: Option<u64>, f: &dyn Fn(u64) -> String| x.map_or("-".to_string(), f);
    for r in &rows {
        let (oom, peak, hits) = match &r.cg {
            Some([p, c]) => (
                format!(
                    "{}, {}",
                    opt(p.0, &|x| x.to_string()),
                    opt(c.0, &|x| x.to_string())
                ),
                format!("{}, {}", opt(p.1, &mib), opt(c.1, &mib)),
                format!(
                    "{}, {}",
                    opt(p.2, &|x| x.to_string()),
                    opt(c.2, &|x| x.to_string())
                ),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        md.push_str(&format!(
            "| {} | {} | {:.1} s | {:.1} s | {} | {} | {} | {} | {} | {} | {oom} | {peak} | {hits} |\n",
            byte_size::format(r.size),
            r.window,
            r.seed_secs,
            r.child_secs,
            mib(r.parent.hwm),
            mib(r.parent.anon),
            mib(r.parent.file),
            mib(r.child.hwm),
            mib(r.child.anon),
            mib(r.child.file),
        ));
    }
    md.push('\n');
    Ok(())
}

/// Drops a file's clean pages from the page cache (after writing it back).
fn drop_cache(path: &Path) {
    use std::os::fd::AsRawFd;
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.sync_all();
        // SAFETY: a plain syscall on a descriptor `f` keeps open.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
}

pub fn run(a: LinkArgs) -> Result<()> {
    let bin = weightcast_testkit::cluster::weightcast_bin(a.bin.clone())?;
    let parts = if a.parts.is_empty() {
        vec![Part::Loopback, Part::Emulated, Part::Memory]
    } else {
        a.parts.clone()
    };
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut md = format!(
        "# The single-link path\n\n`{command}`\n\n{} ({} cores). The child verifies every piece with sha256 and also keeps the whole file's running sha256: two hash passes over each byte.\n\n",
        a.machine,
        cores()
    );
    for part in parts {
        match part {
            Part::Loopback => loopback(&a, &bin, &mut md)?,
            Part::Emulated => emulated(&a, &bin, &mut md)?,
            Part::Memory => memory(&a, &bin, &mut md)?,
        }
    }
    println!("{md}");
    if let Some(out) = &a.out {
        std::fs::create_dir_all(out)?;
        let name = if a.parts.len() == 1 {
            format!("{:?}.md", a.parts[0]).to_lowercase()
        } else {
            "link.md".into()
        };
        std::fs::write(out.join(name), &md)?;
    }
    Ok(())
}
