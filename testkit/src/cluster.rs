//! Real `weightcast` processes on loopback, for end-to-end tests and
//! benchmarks: an origin, a scheduler, seeds, daemons and `get` runs.
//!
//! Every process writes its log to the cluster's directory and is killed
//! when the [`Cluster`] is dropped, also when a test panics.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::origin::{Faults, TestOrigin};
pub use weightcast_store::sha256_file;

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A child process killed on drop.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident anonymous memory (heap, stacks), from /proc: file pages of
    /// mmap'd caches are page cache, not counted here.
    pub fn rss_anon_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// Sends SIGTERM and waits up to `within` for the process to exit;
    /// `None` if it is still running then (it is killed on drop).
    pub fn terminate(&mut self, within: Duration) -> Result<Option<std::process::ExitStatus>> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .context("run kill -TERM")?;
        if !sent.success() {
            bail!("kill -TERM {} failed: {sent}", self.pid());
        }
        let t0 = Instant::now();
        while t0.elapsed() < within {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(None)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The ready file a daemon writes into its data dir.
#[derive(Debug, Clone, Deserialize)]
pub struct DaemonReady {
    pub peer_id: String,
    pub piece_addr: String,
    pub metrics_addr: String,
    pub socket: PathBuf,
    /// The Hugging Face endpoint, when started with `--hf-listen`.
    #[serde(default)]
    pub hf_addr: Option<String>,
    /// The registry mirror, when started with `--registry-listen`.
    #[serde(default)]
    pub registry_addr: Option<String>,
    /// The S3 endpoint, when started with `--s3-listen`.
    #[serde(default)]
    pub s3_addr: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct ServerReady {
    addr: String,
    #[serde(default)]
    metrics_addr: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Daemon {
    pub name: String,
    pub data_dir: PathBuf,
    pub ready: DaemonReady,
    /// Index into the cluster's processes.
    pub proc: usize,
}

/// Where a process runs: a network namespace (or this one) and the IP it
/// listens on there.
#[derive(Debug, Clone)]
pub struct Place {
    pub ns: Option<String>,
    pub ip: String,
}

impl Place {
    pub fn loopback() -> Self {
        Self {
            ns: None,
            ip: "127.0.0.1".into(),
        }
    }

    pub fn in_ns(ns: &str, ip: &str) -> Self {
        Self {
            ns: Some(ns.into()),
            ip: ip.into(),
        }
    }

    /// `program args` run in this place.
    pub fn command(&self, program: &Path) -> Command {
        match &self.ns {
            None => Command::new(program),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
        }
    }
}

pub struct Cluster {
    pub bin: PathBuf,
    pub dir: tempfile::TempDir,
    procs: Vec<Proc>,
    origins: Vec<TestOrigin>,
}

/// `GET http://addr/path` over a plain TCP socket (no client library needed).
pub fn http_get(addr: &str, path: &str) -> Result<String> {
    let mut s = std::net::TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let (_, b) = body
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    Ok(b.to_string())
}

/// Sum of the samples of `name` (every label set) in a Prometheus text page;
/// `labels` narrows it to samples whose labels contain that text. `None`
/// when no sample matches: a renamed or missing metric is not a zero.
pub fn metric(page: &str, name: &str, labels: &str) -> Option<f64> {
    let values: Vec<f64> = page
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// [`metric`], for a metric that must be on the page.
pub fn must_metric(page: &str, name: &str, labels: &str) -> f64 {
    metric(page, name, labels)
        .unwrap_or_else(|| panic!("no sample of {name}{{{labels}}} on the metrics page:\n{page}"))
}

impl Cluster {
    /// `bin`: the `weightcast` binary under test.
    pub fn new(bin: impl Into<PathBuf>) -> Result<Self> {
        Self::new_in(bin, &std::env::temp_dir())
    }

    /// A cluster whose processes keep their files under `parent` (the
    /// emulator puts them on tmpfs: its hosts share one disk, where real
    /// ones each have their own).
    pub fn new_in(bin: impl Into<PathBuf>, parent: &Path) -> Result<Self> {
        Ok(Self {
            bin: bin.into(),
            dir: tempfile::Builder::new()
                .prefix("weightcast-cluster-")
                .tempdir_in(parent)?,
            procs: Vec::new(),
            origins: Vec::new(),
        })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Starts `weightcast <args>` with its output in `<name>.log`.
    pub fn spawn(&mut self, name: &str, args: &[String]) -> Result<usize> {
        let bin = self.bin.clone();
        self.spawn_at(&Place::loopback(), &bin, name, args)
    }

    /// Starts `program <args>` at `place`, its output in `<name>.log`.
    pub fn spawn_at(
        &mut self,
        place: &Place,
        program: &Path,
        name: &str,
        args: &[String],
    ) -> Result<usize> {
        self.spawn_with_env(place, program, name, args, &[])
    }

    /// [`Cluster::spawn_at`] with environment changes: `(name, Some(v))`
    /// sets a variable, `(name, None)` removes it.
    pub fn spawn_with_env(
        &mut self,
        place: &Place,
        program: &Path,
        name: &str,
        args: &[String],
        env: &[(&str, Option<&str>)],
    ) -> Result<usize> {
        let log = self.path(&format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut command = place.command(program);
        for (k, v) in env {
            match v {
                Some(v) => command.env(k, v),
                None => command.env_remove(k),
            };
        }
        let child = command
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("start {}", program.display()))?;
        self.procs.push(Proc {
            name: name.to_string(),
            log,
            child,
        });
        Ok(self.procs.len() - 1)
    }

    pub fn proc(&mut self, i: usize) -> &mut Proc {
        &mut self.procs[i]
    }

    /// The process started under `name` (the scheduler is `scheduler`).
    pub fn proc_named(&mut self, name: &str) -> Option<&mut Proc> {
        self.procs.iter_mut().find(|p| p.name == name)
    }

    /// The last lines of a process's log, for failure messages.
    pub fn log_tail(&self, i: usize) -> String {
        let s = std::fs::read_to_string(&self.procs[i].log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The tail of every process's log, each under its name: what a failed
    /// end-to-end test prints.
    pub fn logs(&self) -> String {
        (0..self.procs.len())
            .map(|i| format!("--- {} ---\n{}\n", self.procs[i].name, self.log_tail(i)))
            .collect()
    }

    /// Asserts that a command succeeded; else fails with its output and
    /// every process's log.
    pub fn assert_ok(&self, what: &str, out: &std::process::Output) {
        assert!(
            out.status.success(),
            "{what} failed:\n{}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
    }

    fn wait_ready<T: for<'de> Deserialize<'de>>(&mut self, i: usize, file: &Path) -> Result<T> {
        let t0 = Instant::now();
        loop {
            if let Ok(bytes) = std::fs::read(file) {
                if let Ok(v) = serde_json::from_slice(&bytes) {
                    return Ok(v);
                }
            }
            if !self.procs[i].is_running() {
                bail!(
                    "{} exited before it was ready:\n{}",
                    self.procs[i].name,
                    self.log_tail(i)
                );
            }
            if t0.elapsed() > READY_TIMEOUT {
                bail!(
                    "{} not ready after {:?}:\n{}",
                    self.procs[i].name,
                    READY_TIMEOUT,
                    self.log_tail(i)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a test origin serving `root` in this process (on a thread of
    /// its own); returns its base URL and address. It stops with the cluster.
    pub fn origin(&mut self, root: &Path, faults: Faults) -> Result<(String, String)> {
        let o = TestOrigin::start(root.to_path_buf(), faults)?;
        let r = (o.url(), o.addr.clone());
        self.origins.push(o);
        Ok(r)
    }

    /// Starts a test origin as a process at `place` (a network namespace):
    /// `program origin --dir ... --listen ...`, where `program` is a binary
    /// with that subcommand (`weightcast-bench`).
    pub fn origin_at(
        &mut self,
        place: &Place,
        program: &Path,
        root: &Path,
        faults: &Faults,
    ) -> Result<(String, String)> {
        let ready = self.path("origin.ready");
        let args = vec![
            "origin".into(),
            "--dir".into(),
            root.display().to_string(),
            "--listen".into(),
            format!("{}:0", place.ip),
            "--fail-first".into(),
            faults.fail_first.to_string(),
            "--ready-file".into(),
            ready.display().to_string(),
        ];
        let i = self.spawn_at(place, program, "origin", &args)?;
        let r: ServerReady = self.wait_ready(i, &ready)?;
        Ok((format!("http://{}", r.addr), r.addr))
    }

    /// Starts a scheduler; returns its endpoint and metrics address.
    pub fn scheduler(&mut self) -> Result<(String, String)> {
        self.scheduler_at(&Place::loopback())
    }

    /// [`Cluster::scheduler`] with extra flags.
    pub fn scheduler_with(&mut self, extra: &[&str]) -> Result<(String, String)> {
        self.scheduler_at_with(&Place::loopback(), extra)
    }

    pub fn scheduler_at(&mut self, place: &Place) -> Result<(String, String)> {
        self.scheduler_named(place, "scheduler", &[])
    }

    /// A scheduler at `place` with extra flags.
    pub fn scheduler_at_with(&mut self, place: &Place, extra: &[&str]) -> Result<(String, String)> {
        self.scheduler_named(place, "scheduler", extra)
    }

    /// A scheduler named `name` with `extra` flags (`--manager`, ...).
    pub fn scheduler_named(
        &mut self,
        place: &Place,
        name: &str,
        extra: &[&str],
    ) -> Result<(String, String)> {
        let listen = format!("{}:0", place.ip);
        self.scheduler_listening(place, name, &listen, extra)
    }

    /// A scheduler named `name` listening on `listen` (`ip:port`): a
    /// scheduler restarted where its peers look for it.
    pub fn scheduler_listening(
        &mut self,
        place: &Place,
        name: &str,
        listen: &str,
        extra: &[&str],
    ) -> Result<(String, String)> {
        let ready = self.path(&format!("{name}.ready"));
        let _ = std::fs::remove_file(&ready);
        let mut args: Vec<String> = vec![
            "scheduler".into(),
            "--listen".into(),
            listen.into(),
            "--metrics-listen".into(),
            format!("{}:0", place.ip),
            "--ready-file".into(),
            ready.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let bin = self.bin.clone();
        let i = self.spawn_at(place, &bin, name, &args)?;
        let r: ServerReady = self.wait_ready(i, &ready)?;
        Ok((
            format!("http://{}", r.addr),
            r.metrics_addr.unwrap_or_default(),
        ))
    }

    /// Starts a manager named `name` on loopback with its data under the
    /// cluster dir (SQLite) unless `extra` names `--database`; returns its
    /// base URL.
    pub fn manager(&mut self, name: &str, extra: &[&str]) -> Result<String> {
        let ready = self.path(&format!("{name}.ready"));
        let mut args: Vec<String> = vec![
            "manager".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            self.path(name).display().to_string(),
            "--ready-file".into(),
            ready.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let bin = self.bin.clone();
        let i = self.spawn_at(&Place::loopback(), &bin, name, &args)?;
        let r: ServerReady = self.wait_ready(i, &ready)?;
        Ok(format!("http://{}", r.addr))
    }

    /// Starts a daemon named `name` with its own data dir and hostname
    /// (`scheduler` empty: none given, e.g. with `--manager` in `extra`).
    pub fn daemon(
        &mut self,
        name: &str,
        scheduler: &str,
        seed: bool,
        extra: &[&str],
    ) -> Result<Daemon> {
        let data_dir = self.path(name);
        self.daemon_in(name, &data_dir, scheduler, seed, extra)
    }

    /// Like [`Cluster::daemon`] on a given data dir (to restart one).
    pub fn daemon_in(
        &mut self,
        name: &str,
        data_dir: &Path,
        scheduler: &str,
        seed: bool,
        extra: &[&str],
    ) -> Result<Daemon> {
        self.daemon_at(&Place::loopback(), name, data_dir, scheduler, seed, extra)
    }

    /// A daemon at `place`, listening on its IP.
    pub fn daemon_at(
        &mut self,
        place: &Place,
        name: &str,
        data_dir: &Path,
        scheduler: &str,
        seed: bool,
        extra: &[&str],
    ) -> Result<Daemon> {
        self.daemon_with_env(place, name, data_dir, scheduler, seed, extra, &[])
    }

    /// [`Cluster::daemon_at`] with environment changes (as
    /// [`Cluster::spawn_with_env`] takes them): a daemon's credentials.
    #[allow(clippy::too_many_arguments)]
    pub fn daemon_with_env(
        &mut self,
        place: &Place,
        name: &str,
        data_dir: &Path,
        scheduler: &str,
        seed: bool,
        extra: &[&str],
        env: &[(&str, Option<&str>)],
    ) -> Result<Daemon> {
        std::fs::create_dir_all(data_dir)?;
        let ready_file = data_dir.join("daemon.json");
        let _ = std::fs::remove_file(&ready_file);
        let mut args: Vec<String> = vec![
            "daemon".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen".into(),
            format!("{}:0", place.ip),
            "--metrics-listen".into(),
            format!("{}:0", place.ip),
        ];
        if !scheduler.is_empty() {
            args.extend(["--scheduler".into(), scheduler.into()]);
        }
        // The daemon's name is its host name unless `extra` gives one.
        if !extra.contains(&"--hostname") {
            args.extend(["--hostname".into(), name.into()]);
        }
        if seed {
            args.push("--seed".into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let bin = self.bin.clone();
        let i = self.spawn_with_env(place, &bin, name, &args, env)?;
        let ready = self.wait_ready(i, &ready_file)?;
        Ok(Daemon {
            name: name.into(),
            data_dir: data_dir.to_path_buf(),
            ready,
            proc: i,
        })
    }

    /// A `weightcast get --json` command through `daemon`, ready to run.
    pub fn get_command(&self, daemon: &Daemon, url: &str, output: &Path) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(["get", url, "--json", "--data-dir"])
            .arg(&daemon.data_dir)
            .arg("-o")
            .arg(output)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        c
    }

    pub fn metrics(&self, daemon: &Daemon) -> Result<String> {
        http_get(&daemon.ready.metrics_addr, "/metrics")
    }
}

/// The `weightcast` binary to benchmark: `explicit`, else the one built
/// beside the running benchmark.
pub fn weightcast_bin(explicit: Option<PathBuf>) -> Result<PathBuf> {
    let bin = match explicit {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("weightcast"),
    };
    if !bin.exists() {
        bail!(
            "{} not found: build it (cargo build --release) or pass --bin",
            bin.display()
        );
    }
    Ok(std::path::absolute(bin)?)
}

/// Asserts that the test origin at `addr` sent at most 1.1 copies of a
/// `size`-byte file (the swarm, not every peer, went to it); `why` says
/// what that shows. Returns the bytes it sent.
pub fn assert_origin_sent_about_one_copy(addr: &str, size: u64, why: &str) -> u64 {
    let served = origin_stats(addr)
        .expect("the test origin answers /_stats")
        .bytes_served;
    assert!(
        served as f64 <= 1.1 * size as f64,
        "the origin sent {served} bytes for a {size}-byte file: {why}"
    );
    served
}

/// `GET /_stats` of the test origin.
pub fn origin_stats(addr: &str) -> Result<weightcast_engine::file_server::StatsSnapshot> {
    Ok(serde_json::from_str(&http_get(addr, "/_stats")?)?)
}
