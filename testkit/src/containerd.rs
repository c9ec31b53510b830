//! A real containerd daemon (Debian's `containerd`) with its own root,
//! state and socket in a directory, and its `ctr` client pulling through a
//! registry mirror named in a `hosts.toml`, as a node's containerd is set
//! up to use a local mirror. `scripts/setup-containerd` installs it.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The namespace the tests' content lives in.
const NAMESPACE: &str = "weightcast-test";

pub struct Containerd {
    dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    child: Child,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Containerd {
    /// Starts containerd under `dir` (which must be short: its socket
    /// path is limited to 107 bytes), without the CRI and snapshotters a
    /// content fetch does not need.
    pub fn start(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("c.sock");
        if socket.as_os_str().len() > 100 {
            bail!(
                "{} is too long for a unix socket; start containerd in a shorter directory",
                socket.display()
            );
        }
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
  level = "info"
[metrics]
  address = ""
"#,
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = socket.display(),
        );
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config)?;
        let log = dir.join("containerd.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("start containerd (scripts/setup-containerd installs it)")?;
        let mut c = Self {
            dir: dir.to_path_buf(),
            socket,
            log,
            child,
        };
        let t0 = Instant::now();
        loop {
            if let Ok(Some(s)) = c.child.try_wait() {
                bail!("containerd exited ({s}):\n{}", c.log_text());
            }
            if c.ctr(&["version"])?.status.success() {
                break;
            }
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("containerd did not answer in 20 s:\n{}", c.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(c)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `ctr` against this daemon, in the tests' namespace.
    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", NAMESPACE])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("run ctr (scripts/setup-containerd installs it)")
    }

    /// Writes a hosts directory sending pulls of `registry` (`host:port`)
    /// to the plain-HTTP `mirror` (`host:port`), with the registry itself
    /// as the fallback; returns it for `--hosts-dir`.
    pub fn hosts_dir(&self, name: &str, registry: &str, mirror: &str) -> Result<PathBuf> {
        let dir = self.dir.join(name);
        let host = dir.join(registry);
        std::fs::create_dir_all(&host)?;
        std::fs::write(
            host.join("hosts.toml"),
            format!(
                "server = \"http://{registry}\"\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )?;
        Ok(dir)
    }

    /// `ctr content fetch` of `reference` with `hosts_dir`.
    pub fn fetch(&self, hosts_dir: &Path, reference: &str) -> Result<Output> {
        let hosts = hosts_dir.to_string_lossy().to_string();
        self.ctr(&["content", "fetch", "--hosts-dir", &hosts, reference])
    }

    /// The digests in the content store.
    pub fn content_digests(&self) -> Result<Vec<String>> {
        let out = self.ctr(&["content", "ls", "--quiet"])?;
        if !out.status.success() {
            bail!(
                "ctr content ls failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect())
    }
}
