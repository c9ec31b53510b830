//! End-to-end, Hugging Face: a test Hub (with a separate CDN origin) in this
//! process, real `weightcast` processes (scheduler, seed, daemons with
//! `--hf-listen`), and the real `huggingface_hub` client (newest 2.x and
//! 0.36.x, installed by `scripts/setup-hf-clients`) pointed at a daemon.

use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use weightcast_modelpack::safetensors_gen;
use weightcast_testkit::cluster::{must_metric, Cluster, Daemon};
use weightcast_testkit::hf_hub::{self, Content, FileSpec, HubConfig, RepoKind, RepoSpec, TestHub};

const BIN: &str = env!("CARGO_BIN_EXE_weightcast");
const MIB: u64 = 1 << 20;
const TOKEN: &str = "hf_test_token_1234";
const MODEL_COMMIT: &str = "1111111111111111111111111111111111111111";
const GATED_COMMIT: &str = "2222222222222222222222222222222222222222";
const DATA_COMMIT: &str = "3333333333333333333333333333333333333333";
const EVIL_COMMIT: &str = "4444444444444444444444444444444444444444";
const BROKEN_COMMIT: &str = "5555555555555555555555555555555555555555";

/// The real client's virtualenvs, installed once per test run.
fn clients() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let ok = Command::new(root.join("scripts/setup-hf-clients"))
            .stdout(Stdio::null())
            .status()
            .expect("run scripts/setup-hf-clients");
        assert!(ok.success(), "scripts/setup-hf-clients failed");
        root.join("target/hf-clients")
    })
}

fn file(path: &str, content: Content, lfs: bool) -> FileSpec {
    FileSpec {
        path: path.into(),
        content,
        lfs,
    }
}

fn bytes(s: &str) -> Content {
    Content::Bytes(Bytes::from(s.to_string()))
}

/// Repos of the test Hub, with their big files written under `dir`.
fn repos(dir: &Path) -> Vec<RepoSpec> {
    std::fs::create_dir_all(dir).unwrap();
    let weights = dir.join("model.safetensors");
    safetensors_gen::write(&weights, 48 * MIB, 1).unwrap();
    let shard = dir.join("shard.safetensors");
    safetensors_gen::write(&shard, 9 * MIB + 123, 2).unwrap();
    let gated = dir.join("gated.safetensors");
    safetensors_gen::write(&gated, 6 * MIB, 3).unwrap();
    let parquet = dir.join("0.parquet");
    std::fs::write(&parquet, vec![7u8; (5 * MIB) as usize]).unwrap();
    let spec = |kind, id: &str, commit: &str, files, token| RepoSpec {
        kind,
        id: id.into(),
        branch: "main".into(),
        commit: commit.into(),
        files,
        token,
    };
    vec![
        spec(
            RepoKind::Model,
            "org/model",
            MODEL_COMMIT,
            vec![
                file("config.json", bytes(r#"{"model_type": "test"}"#), false),
                file("sub/deep/notes.txt", bytes("nested\n"), false),
                file("model.safetensors", Content::File(weights), true),
                file("shards/shard.safetensors", Content::File(shard), true),
            ],
            None,
        ),
        spec(
            RepoKind::Model,
            "org/gated",
            GATED_COMMIT,
            vec![
                file("config.json", bytes("{}"), false),
                file("gated.safetensors", Content::File(gated), true),
            ],
            Some(TOKEN.into()),
        ),
        spec(
            RepoKind::Dataset,
            "org/data",
            DATA_COMMIT,
            vec![
                file("README.md", bytes("# data\n"), false),
                file("train/0.parquet", Content::File(parquet), true),
                file("test/0.parquet", bytes("small"), false),
            ],
            None,
        ),
        spec(
            RepoKind::Model,
            "evil/escape",
            EVIL_COMMIT,
            vec![
                file("ok.txt", bytes("fine"), false),
                file("../escape.txt", bytes("gotcha"), false),
            ],
            None,
        ),
        spec(
            RepoKind::Model,
            "org/broken",
            BROKEN_COMMIT,
            vec![file(
                "model.safetensors",
                Content::Bytes(Bytes::from_static(
                    b"\xff\xff\xff\xff\x00\x00\x00\x00{}not safetensors",
                )),
                true,
            )],
            None,
        ),
    ]
}

struct Fixture {
    c: Cluster,
    rt: tokio::runtime::Runtime,
    hub: TestHub,
    repos: Vec<RepoSpec>,
}

fn fixture() -> Fixture {
    let c = Cluster::new(BIN).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let repos = repos(&c.path("hub-files"));
    let hub = rt
        .block_on(async {
            let h = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let cdn = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            hf_hub::serve(h, cdn, repos.clone(), HubConfig::default()).await
        })
        .unwrap();
    Fixture { c, rt, hub, repos }
}

impl Fixture {
    fn repo(&self, id: &str) -> &RepoSpec {
        self.repos.iter().find(|r| r.id == id).unwrap()
    }

    /// Asserts that `dir` holds every file of `repo` (selected by `keep`), byte for byte.
    fn assert_same_files(&self, id: &str, dir: &Path, keep: impl Fn(&str) -> bool) {
        for f in self.repo(id).files.iter().filter(|f| keep(&f.path)) {
            let want = match &f.content {
                Content::Bytes(b) => b.to_vec(),
                Content::File(p) => std::fs::read(p).unwrap(),
            };
            let got = std::fs::read(dir.join(&f.path))
                .unwrap_or_else(|e| panic!("{}: {e}", dir.join(&f.path).display()));
            assert!(got == want, "{} differs from the Hub's", f.path);
        }
    }

    fn lfs_bytes(&self, id: &str) -> u64 {
        self.repo(id)
            .files
            .iter()
            .filter(|f| f.lfs)
            .map(|f| match &f.content {
                Content::Bytes(b) => b.len() as u64,
                Content::File(p) => std::fs::metadata(p).unwrap().len(),
            })
            .sum()
    }

    /// A scheduler, a seed, and `n` daemons serving the Hub endpoint.
    fn swarm(&mut self, n: usize) -> Vec<Daemon> {
        let (sched, _) = self.c.scheduler().unwrap();
        let hub = ["--hf-endpoint", self.hub.hub_url.as_str()];
        self.c.daemon("seed", &sched, true, &hub).unwrap();
        (0..n)
            .map(|i| {
                let mut extra = hub.to_vec();
                extra.extend(["--hf-listen", "127.0.0.1:0"]);
                self.c
                    .daemon(&format!("node{i}"), &sched, false, &extra)
                    .unwrap()
            })
            .collect()
    }

    /// A client command (`v2/bin/hf`, `v036/bin/huggingface-cli`, `v2/bin/python`)
    /// pointed at `endpoint`, with its own empty cache and no ambient token.
    fn client(&self, program: &str, endpoint: &str, home: &str) -> Command {
        let mut cmd = Command::new(clients().join(program));
        cmd.env("HF_ENDPOINT", endpoint)
            .env("HF_HOME", self.c.path(home))
            .env("HF_HUB_DISABLE_TELEMETRY", "1")
            .env("HF_HUB_DISABLE_UPDATE_CHECK", "1")
            .env("HF_HUB_DISABLE_XET", "1")
            .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            .env_remove("HF_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn get(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("get")
            .args(args)
            .args(["--hf-endpoint", &self.hub.hub_url, "--data-dir"])
            .arg(self.c.path("get-cache"))
            .env_remove("HF_TOKEN")
            .env_remove("HF_ENDPOINT")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

fn endpoint(d: &Daemon) -> String {
    format!(
        "http://{}",
        d.ready
            .hf_addr
            .as_deref()
            .expect("daemon serves --hf-listen")
    )
}

impl Fixture {
    /// Asserts that a command succeeded; else shows its output and every
    /// process's log.
    fn ok(&self, what: &str, out: &Output) {
        self.c.assert_ok(what, out);
    }

    fn wait(&self, what: &str, child: std::process::Child) -> Output {
        let out = child.wait_with_output().unwrap();
        self.ok(what, &out);
        out
    }
}

#[test]
fn real_clients_download_through_the_swarm_and_the_cdn_sends_each_byte_about_once() {
    let mut f = fixture();
    let daemons = f.swarm(3);
    let out = |name: &str| f.c.path(name);
    // Three nodes at once, three ways in: `hf download` (2.x),
    // `huggingface-cli download` (0.36.x), and `snapshot_download`.
    let hf2 = f
        .client("v2/bin/hf", &endpoint(&daemons[0]), "home0")
        .args(["download", "org/model", "--local-dir"])
        .arg(out("hf2"))
        .spawn()
        .unwrap();
    let cli036 = f
        .client("v036/bin/huggingface-cli", &endpoint(&daemons[1]), "home1")
        .args(["download", "org/model", "--local-dir"])
        .arg(out("cli036"))
        .spawn()
        .unwrap();
    let snapshot = f
        .client("v2/bin/python", &endpoint(&daemons[2]), "home2")
        .arg("-c")
        .arg("import sys; from huggingface_hub import snapshot_download; print(snapshot_download('org/model', revision='main'))")
        .spawn()
        .unwrap();
    f.wait("hf download", hf2);
    f.wait("huggingface-cli download", cli036);
    let snap = f.wait("snapshot_download", snapshot);
    let snap_dir = PathBuf::from(String::from_utf8_lossy(&snap.stdout).trim());
    assert!(
        snap_dir.ends_with(format!("snapshots/{MODEL_COMMIT}")),
        "{}",
        snap_dir.display()
    );
    let all = |_: &str| true;
    f.assert_same_files("org/model", &out("hf2"), all);
    f.assert_same_files("org/model", &out("cli036"), all);
    f.assert_same_files("org/model", &snap_dir, all);

    let stats = f.hub.stats.snapshot();
    let lfs = f.lfs_bytes("org/model");
    let ratio = stats.cdn_bytes_served as f64 / lfs as f64;
    eprintln!(
        "CDN served {} bytes for {lfs} LFS bytes fetched by 3 nodes ({ratio:.3}x)",
        stats.cdn_bytes_served
    );
    assert!(
        ratio <= 1.1,
        "the CDN served {ratio:.3}x the LFS bytes; the swarm should send about one copy"
    );
    assert_eq!(stats.cdn_requests_with_authorization, 0);
    let from_peers: f64 = daemons
        .iter()
        .map(|d| {
            must_metric(
                &f.c.metrics(d).unwrap(),
                "weightcast_download_bytes_total",
                "source=\"peer\"",
            )
        })
        .sum();
    assert!(
        from_peers >= lfs as f64 * 2.0,
        "the daemons got {from_peers} bytes from peers"
    );

    // A gated repo: with the token through the same daemon it works, and the
    // token still never reaches the CDN; without it the client fails cleanly.
    let gated = f
        .client("v2/bin/hf", &endpoint(&daemons[0]), "home0")
        .env("HF_TOKEN", TOKEN)
        .args(["download", "org/gated", "--local-dir"])
        .arg(out("gated"))
        .output()
        .unwrap();
    f.ok("gated download with a token", &gated);
    f.assert_same_files("org/gated", &out("gated"), all);
    let refused = f
        .client("v2/bin/hf", &endpoint(&daemons[1]), "home1")
        .args(["download", "org/gated", "--local-dir"])
        .arg(out("gated-no-token"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("gated") || err.contains("401"),
        "unclear error: {err}"
    );
    assert!(!out("gated-no-token").join("gated.safetensors").exists());
    let wrong = f
        .client("v036/bin/huggingface-cli", &endpoint(&daemons[2]), "home2")
        .env("HF_TOKEN", "hf_wrong")
        .args(["download", "org/gated", "gated.safetensors", "--local-dir"])
        .arg(out("gated-wrong"))
        .output()
        .unwrap();
    assert!(
        !wrong.status.success(),
        "a wrong token must not download a gated file"
    );
    assert_eq!(f.hub.stats.snapshot().cdn_requests_with_authorization, 0);

    // A dataset repo, one file, through the 0.36.x client.
    let data = f
        .client("v036/bin/huggingface-cli", &endpoint(&daemons[2]), "home2")
        .args([
            "download",
            "org/data",
            "train/0.parquet",
            "--repo-type",
            "dataset",
            "--local-dir",
        ])
        .arg(out("data"))
        .output()
        .unwrap();
    f.ok("dataset download", &data);
    f.assert_same_files("org/data", &out("data"), |p| p == "train/0.parquet");
    drop(f.rt);
}

#[test]
fn get_writes_plain_and_hf_cache_layouts_that_huggingface_hub_finds_offline() {
    let f = fixture();
    let plain = f.c.path("plain");
    f.ok(
        "get plain",
        &f.get(&[
            "hf://org/model@main",
            "-o",
            plain.to_str().unwrap(),
            "--json",
        ]),
    );
    f.assert_same_files("org/model", &plain, |_| true);

    let hub_cache = f.c.path("hub-cache");
    f.ok(
        "get hf-cache",
        &f.get(&[
            "hf://org/model",
            "--layout",
            "hf-cache",
            "-o",
            hub_cache.to_str().unwrap(),
        ]),
    );
    let found = Command::new(clients().join("v2/bin/python"))
        .env("HF_HUB_CACHE", &hub_cache)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .arg("-c")
        .arg(
            "from huggingface_hub import hf_hub_download\n\
             for p in ['config.json', 'sub/deep/notes.txt', 'model.safetensors', 'shards/shard.safetensors']:\n    \
             print(hf_hub_download('org/model', p, local_files_only=True))",
        )
        .output()
        .unwrap();
    f.ok("hf_hub_download(local_files_only=True)", &found);
    let paths: Vec<&str> = std::str::from_utf8(&found.stdout)
        .unwrap()
        .lines()
        .collect();
    assert_eq!(paths.len(), 4);
    let snapshot = hub_cache.join(format!("models--org--model/snapshots/{MODEL_COMMIT}"));
    f.assert_same_files("org/model", &snapshot, |_| true);
    let main_ref = std::fs::read_to_string(hub_cache.join("models--org--model/refs/main")).unwrap();
    assert_eq!(main_ref, MODEL_COMMIT);

    // A dataset at a commit, selected by a glob; a gated repo with a token.
    let data = f.c.path("data");
    f.ok(
        "get dataset glob",
        &f.get(&[
            &format!("hf://datasets/org/data@{DATA_COMMIT}/train/*.parquet"),
            "-o",
            data.to_str().unwrap(),
        ]),
    );
    f.assert_same_files("org/data", &data, |p| p.starts_with("train/"));
    assert!(
        !data.join("README.md").exists(),
        "the glob selects train/ only"
    );
    let gated = f.c.path("gated");
    f.ok(
        "get gated with a token",
        &f.get(&[
            "hf://org/gated",
            "-o",
            gated.to_str().unwrap(),
            "--hf-token",
            TOKEN,
        ]),
    );
    f.assert_same_files("org/gated", &gated, |_| true);
    assert_eq!(f.hub.stats.snapshot().cdn_requests_with_authorization, 0);
}

#[test]
fn hostile_or_broken_repos_and_bad_input_fail_with_one_clear_line() {
    let f = fixture();
    let out = f.c.path("out");
    let o = out.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["hf://evil/escape", "-o", o], "'..'"),
        (&["hf://org/broken", "-o", o], "not a valid safetensors"),
        (&["hf://org/gated", "-o", o], "--hf-token"),
        (
            &["hf://org/gated", "-o", o, "--hf-token", "hf_wrong"],
            "refused",
        ),
        (&["hf://org/missing", "-o", o], "not found"),
        (&["hf://org/model@nope", "-o", o], "revision not found"),
        (
            &["hf://org/model/nothing/*.bin", "-o", o],
            "no file of the repo matches",
        ),
        (&["hf://org", "-o", o], "invalid Hugging Face URI"),
        (
            &["hf://org/model", "-o", o, "--digest", "sha256:00"],
            "--digest is for http(s) URLs",
        ),
    ];
    for (args, want) in cases {
        let r = f.get(args);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{args:?} should fail");
        assert!(err.contains(want), "{args:?}: expected {want:?} in: {err}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: one line, got: {err}"
        );
    }
    assert!(
        !f.c.path("escape.txt").exists(),
        "nothing may land outside -o"
    );
    assert!(
        !out.join("model.safetensors").exists(),
        "an invalid file is not exposed"
    );
    // A directory under -o that is a symlink out of it is refused too.
    let trap = f.c.path("trap");
    let outside = f.c.path("outside");
    std::fs::create_dir_all(&trap).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, trap.join("sub")).unwrap();
    let r = f.get(&["hf://org/model/sub", "-o", trap.to_str().unwrap()]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("symlink"));
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "nothing written through the symlink"
    );
}

#[test]
fn an_hf_preheat_with_all_peers_makes_hf_download_cost_the_cdn_nothing() {
    let mut f = fixture();
    let (sched, _) = f.c.scheduler().unwrap();
    let hub = ["--hf-endpoint", f.hub.hub_url.as_str()];
    f.c.daemon("seed", &sched, true, &hub).unwrap();
    let daemons: Vec<Daemon> = (0..2)
        .map(|i| {
            let mut extra = hub.to_vec();
            extra.extend(["--hf-listen", "127.0.0.1:0"]);
            f.c.daemon(&format!("node{i}"), &sched, false, &extra)
                .unwrap()
        })
        .collect();
    let t0 = std::time::Instant::now();
    let out = Command::new(BIN)
        .args([
            "preheat",
            "hf://org/model@main",
            "--scheduler",
            &sched,
            "--scope",
            "all_peers",
            "--json",
            "--hf-endpoint",
        ])
        .arg(&f.hub.hub_url)
        .env_remove("HF_TOKEN")
        .output()
        .unwrap();
    f.ok("weightcast preheat hf:// --scope all_peers", &out);
    let secs = t0.elapsed().as_secs_f64();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tasks = report["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2, "the two LFS files: {report}");
    assert!(
        tasks.iter().all(|t| t["succeeded"] == 3),
        "seed + 2 nodes: {report}"
    );
    let lfs = f.lfs_bytes("org/model");
    let during = f.hub.stats.snapshot().cdn_bytes_served;
    eprintln!("preheat hf:// all_peers (3 peers, {lfs} LFS bytes): {secs:.2} s, the CDN sent {during} bytes ({:.3}x)", during as f64 / lfs as f64);
    assert!(during as f64 <= lfs as f64 * 1.1);
    let dl = f
        .client("v2/bin/hf", &endpoint(&daemons[1]), "home-preheated")
        .args(["download", "org/model", "--local-dir"])
        .arg(f.c.path("after-preheat"))
        .spawn()
        .unwrap();
    f.wait("hf download after the preheat", dl);
    f.assert_same_files("org/model", &f.c.path("after-preheat"), |_| true);
    let after = f.hub.stats.snapshot().cdn_bytes_served - during;
    eprintln!("after the preheat: hf download through a daemon cost the CDN {after} bytes");
    assert_eq!(
        after,
        0,
        "the download after the preheat went to the CDN\n{}",
        f.c.logs()
    );
}
