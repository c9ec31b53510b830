//! A real PostgreSQL server in a temporary directory, for the manager's
//! tests: Debian's server binaries (`scripts/setup-postgres` installs
//! them), `initdb` and `pg_ctl` run as the unprivileged `postgres` user
//! when the tests run as root (the server refuses to run as root), on a
//! free loopback port, stopped on drop.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

use std::process::Command;

pub struct Postgres {
    /// `postgres://wc@127.0.0.1:<port>/weightcast`.
    pub url: String,
    dir: PathBuf,
    as_user: Option<String>,
    /// Its own directory (owned by `postgres`, so not inside a root-only one).
    _root: tempfile::TempDir,
}

/// The directory holding `initdb` and `pg_ctl`.
fn bin_dir() -> Result<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if d.join("initdb").exists() {
                return Ok(d);
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed: run scripts/setup-postgres")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .context("no initdb under /usr/lib/postgresql: run scripts/setup-postgres")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Postgres {
    fn run(&self, program: &Path, args: &[&str]) -> Result<()> {
        let mut c = match &self.as_user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        let out = c
            .args(args)
            .output()
            .with_context(|| format!("run {}", program.display()))?;
        if !out.status.success() {
            bail!(
                "{} {:?} failed:\n{}{}",
                program.display(),
                args,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Initializes a cluster in a temporary directory and starts it.
    pub fn start() -> Result<Self> {
        let bin = bin_dir()?;
        let root = tempfile::Builder::new()
            .prefix("weightcast-pg-")
            .tempdir()?;
        let dir = root.path().to_path_buf();
        let data = dir.join("pgdata");
        let as_user = is_root().then(|| "postgres".to_string());
        if as_user.is_some() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()?;
            if !ok.success() {
                bail!("chown {} to postgres failed", dir.display());
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let pg = Postgres {
            url: format!("postgres://wc@127.0.0.1:{port}/weightcast"),
            dir: data.clone(),
            as_user,
            _root: root,
        };
        let data_s = data.display().to_string();
        pg.run(
            &bin.join("initdb"),
            &[
                "-D",
                &data_s,
                "-A",
                "trust",
                "-U",
                "wc",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )?;
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            dir.display()
        );
        let log = dir.join("postgres.log").display().to_string();
        pg.run(
            &bin.join("pg_ctl"),
            &["-D", &data_s, "-o", &opts, "-l", &log, "-w", "start"],
        )?;
        pg.run(
            &bin.join("createdb"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "wc",
                "weightcast",
            ],
        )?;
        Ok(pg)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Ok(bin) = bin_dir() {
            let data = self.dir.display().to_string();
            let _ = self.run(
                &bin.join("pg_ctl"),
                &["-D", &data, "-m", "immediate", "stop"],
            );
        }
    }
}
