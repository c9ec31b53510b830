//! End-to-end, OCI: a real registry (Debian's `docker-registry`, installed
//! by `scripts/setup-registry`), ModelPack artifacts pushed over the
//! distribution API, real `weightcast` processes, and `skopeo` through the
//! daemon's registry mirror.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use weightcast_modelpack::safetensors_gen;
use weightcast_testkit::cluster::{Cluster, Daemon};
use weightcast_testkit::oci_registry::{self, named, PushLayer, Pusher, Registry};

const BIN: &str = env!("CARGO_BIN_EXE_weightcast");
const MIB: u64 = 1 << 20;
const USER: &str = "puller";
const PASSWORD: &str = "s3cret-pw";

fn setup() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let ok = Command::new(root.join("scripts/setup-registry"))
            .status()
            .expect("run scripts/setup-registry");
        assert!(ok.success(), "scripts/setup-registry failed");
    });
}

fn media(kind: &str, packing: &str) -> String {
    format!("application/vnd.cncf.model.{kind}.v1.{packing}")
}

/// The files of the test model, as they must appear after a `get`.
struct Model {
    files: Vec<(String, Vec<u8>)>,
    layers: Vec<PushLayer>,
}

fn model(dir: &Path) -> Model {
    std::fs::create_dir_all(dir).unwrap();
    let w = dir.join("model.safetensors");
    safetensors_gen::write(&w, 24 * MIB + 77, 5).unwrap();
    let weights = std::fs::read(&w).unwrap();
    let config = br#"{"architectures": ["Test"]}"#.to_vec();
    let pbtxt = b"name: \"fake\"\nbackend: \"python\"\n".to_vec();
    let readme = b"# fake model\n".to_vec();
    let handler = b"def handle(data, ctx):\n    return data\n".to_vec();
    let vocab = br#"{"a": 1}"#.to_vec();
    let train = vec![9u8; 3 * MIB as usize];
    let code = oci_registry::gzip(&oci_registry::tar_of(&[
        ("handler.py", &handler),
        ("tokenizer/vocab.json", &vocab),
    ]));
    let data = oci_registry::tar_of(&[("data/train.bin", &train)]);
    let layer = |kind: &str, packing: &str, bytes: Vec<u8>, path: Option<&str>| PushLayer {
        media_type: media(kind, packing),
        bytes,
        annotations: path.map(named).unwrap_or_default(),
    };
    Model {
        files: vec![
            ("model.safetensors".into(), weights.clone()),
            ("config.json".into(), config.clone()),
            ("config.pbtxt".into(), pbtxt.clone()),
            ("README.md".into(), readme.clone()),
            ("handler.py".into(), handler),
            ("tokenizer/vocab.json".into(), vocab),
            ("data/train.bin".into(), train),
        ],
        layers: vec![
            layer("weight", "raw", weights, Some("model.safetensors")),
            layer("weight.config", "raw", config, Some("config.json")),
            layer("weight.config", "raw", pbtxt, Some("config.pbtxt")),
            layer("doc", "raw", readme, Some("README.md")),
            layer("code", "tar+gzip", code, None),
            layer("dataset", "tar", data, None),
        ],
    }
}

struct Fixture {
    c: Cluster,
    registry: Registry,
    private: Registry,
    model: Model,
    digest: String,
}

fn fixture() -> Fixture {
    setup();
    let c = Cluster::new(BIN).unwrap();
    let registry = Registry::start(&c.path("registry"), None).unwrap();
    let private = Registry::start(&c.path("private"), Some((USER, PASSWORD))).unwrap();
    let model = model(&c.path("model"));
    let config = oci_registry::model_config("fake", &model.layers);
    let digest = Pusher::new(&registry.addr, None)
        .model("models/fake", "v1", &config, &model.layers)
        .unwrap();
    Pusher::new(&private.addr, Some((USER, PASSWORD)))
        .model("models/private", "v1", &config, &model.layers[1..4])
        .unwrap();
    let evil = oci_registry::tar_of(&[("ok.txt", b"fine"), ("../escape.txt", b"gotcha")]);
    let evil = vec![PushLayer {
        media_type: media("code", "tar"),
        bytes: evil,
        annotations: Default::default(),
    }];
    Pusher::new(&registry.addr, None)
        .model(
            "models/evil",
            "v1",
            &oci_registry::model_config("evil", &evil),
            &evil,
        )
        .unwrap();
    Fixture {
        c,
        registry,
        private,
        model,
        digest,
    }
}

impl Fixture {
    fn url(&self, repo_ref: &str) -> String {
        format!("oci://{}/{repo_ref}", self.registry.addr)
    }

    fn get(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("get")
            .args(args)
            .env_remove("DOCKER_CONFIG")
            .env("HOME", self.c.path("home"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn ok(&self, what: &str, out: &Output) {
        self.c.assert_ok(what, out);
    }

    /// Asserts that `dir/<prefix>` holds the model's files selected by `keep`.
    fn assert_files(&self, dir: &Path, keep: impl Fn(&str) -> bool) {
        for (path, bytes) in self.model.files.iter().filter(|(p, _)| keep(p)) {
            let got = std::fs::read(dir.join(path))
                .unwrap_or_else(|e| panic!("{}: {e}", dir.join(path).display()));
            assert!(&got == bytes, "{path} differs from the pushed file");
        }
    }

    fn layer_bytes(&self) -> u64 {
        self.model.layers.iter().map(|l| l.bytes.len() as u64).sum()
    }
}

fn no_leftovers(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().to_string();
        assert!(
            !name.starts_with(".weightcast"),
            "{name} left in {}",
            dir.display()
        );
    }
}

#[test]
fn three_daemons_get_a_modelpack_artifact_and_the_registry_sends_each_blob_about_once() {
    let mut f = fixture();
    let (sched, _) = f.c.scheduler().unwrap();
    f.c.daemon("seed", &sched, true, &[]).unwrap();
    let daemons: Vec<Daemon> = (0..3)
        .map(|i| f.c.daemon(&format!("node{i}"), &sched, false, &[]).unwrap())
        .collect();
    let url = f.url("models/fake:v1");
    let outs: Vec<PathBuf> = (0..3).map(|i| f.c.path(&format!("out{i}"))).collect();
    let children: Vec<_> = daemons
        .iter()
        .zip(&outs)
        .map(|(d, out)| {
            f.get(&[
                &url,
                "--plain-http",
                "--json",
                "-o",
                out.to_str().unwrap(),
                "--data-dir",
            ])
            .arg(&d.data_dir)
            .spawn()
            .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        f.ok("get oci:// through a daemon", &out);
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(s["resolved"], f.digest.as_str());
    }
    for out in &outs {
        f.assert_files(out, |_| true);
        no_leftovers(out);
    }
    let served: u64 = f.registry.blob_bytes_served().values().sum();
    let layers = f.layer_bytes();
    let ratio = served as f64 / layers as f64;
    eprintln!(
        "the registry served {served} blob bytes for {layers} layer bytes on 3 nodes ({ratio:.3}x)"
    );
    // The model config (a few hundred bytes) is read by each `get`.
    assert!(
        ratio <= 1.1,
        "the registry served {ratio:.3}x the layer bytes"
    );

    // By digest, weights only, through a daemon's cache.
    let weights = f.c.path("weights-only");
    let by_digest = f.url(&format!("models/fake@{}", f.digest));
    let out = f
        .get(&[
            &by_digest,
            "--plain-http",
            "--include",
            "weight",
            "-o",
            weights.to_str().unwrap(),
            "--data-dir",
        ])
        .arg(&daemons[0].data_dir)
        .output()
        .unwrap();
    f.ok("get --include weight", &out);
    f.assert_files(&weights, |p| p == "model.safetensors");
    assert!(!weights.join("README.md").exists());
    assert!(
        !weights.join("config.json").exists(),
        "weight.config is not weight"
    );
}

#[test]
fn layouts_inspect_credentials_and_hostile_archives() {
    let f = fixture();
    let url = f.url("models/fake:v1");
    let cache = f.c.path("cache");
    let cache = cache.to_str().unwrap();

    let triton = f.c.path("triton");
    let out = f
        .get(&[
            &url,
            "--plain-http",
            "--layout",
            "triton",
            "--model-name",
            "fake",
            "--model-version",
            "2",
            "-o",
            triton.to_str().unwrap(),
            "--data-dir",
            cache,
        ])
        .output()
        .unwrap();
    f.ok("triton layout", &out);
    f.assert_files(&triton.join("fake/2"), |p| p != "config.pbtxt");
    assert!(
        triton.join("fake/config.pbtxt").is_file(),
        "config.pbtxt beside the versions"
    );
    assert!(!triton.join("fake/2/config.pbtxt").exists());

    let ts = f.c.path("torchserve");
    let out = f
        .get(&[
            &url,
            "--plain-http",
            "--layout",
            "torchserve",
            "--model-name",
            "fake",
            "--exclude",
            "dataset",
            "-o",
            ts.to_str().unwrap(),
            "--data-dir",
            cache,
        ])
        .output()
        .unwrap();
    f.ok("torchserve layout", &out);
    f.assert_files(&ts.join("fake"), |p| !p.starts_with("data/"));
    assert!(!ts.join("fake/data").exists(), "--exclude dataset");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ts.join("fake/MAR-INF/MANIFEST.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["model"]["modelName"], "fake");
    assert_eq!(manifest["model"]["handler"], "handler.py");
    assert_eq!(manifest["model"]["serializedFile"], "model.safetensors");

    // inspect: what a get would fetch, without fetching.
    let before: u64 = f.registry.blob_bytes_served().values().sum();
    let out = Command::new(BIN)
        .args(["inspect", &url, "--plain-http", "--json"])
        .output()
        .unwrap();
    f.ok("inspect", &out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["resolved"], f.digest.as_str());
    assert_eq!(v["files"].as_array().unwrap().len(), 6);
    assert_eq!(v["total_bytes"], f.layer_bytes());
    assert_eq!(v["files"][0]["path"], "model.safetensors");
    assert_eq!(v["files"][0]["media_type"], media("weight", "raw"));
    let after: u64 = f.registry.blob_bytes_served().values().sum();
    assert!(
        after - before < 4096,
        "inspect read only the manifest and config"
    );

    // Credentials: right ones work, wrong or missing ones fail in one line.
    let private = format!("oci://{}/models/private:v1", f.private.addr);
    let p = f.c.path("private-out");
    let p = p.to_str().unwrap();
    let out = f
        .get(&[
            &private,
            "--plain-http",
            "--registry-user",
            USER,
            "--registry-password",
            PASSWORD,
            "-o",
            p,
            "--data-dir",
            cache,
        ])
        .output()
        .unwrap();
    f.ok("get with credentials", &out);
    f.assert_files(Path::new(p), |x| x == "config.json" || x == "README.md");
    // The same credentials from a docker config.json.
    let docker = f.c.path("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let auth = base64_of(&format!("{USER}:{PASSWORD}"));
    std::fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#,
            f.private.addr
        ),
    )
    .unwrap();
    let p2 = f.c.path("private-docker");
    let out = f
        .get(&[
            &private,
            "--plain-http",
            "-o",
            p2.to_str().unwrap(),
            "--data-dir",
            cache,
        ])
        .env("DOCKER_CONFIG", &docker)
        .output()
        .unwrap();
    f.ok("get with ~/.docker/config.json", &out);
    for (args, want) in [
        (
            vec!["--registry-user", USER, "--registry-password", "wrong"],
            "refused the credentials",
        ),
        (vec![], "refused the credentials"),
    ] {
        let denied = f.c.path("denied");
        let mut all = vec![
            private.as_str(),
            "--plain-http",
            "-o",
            denied.to_str().unwrap(),
            "--data-dir",
            cache,
        ];
        all.extend(args.iter().copied());
        let out = f.get(&all).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(want), "expected {want:?} in: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(!denied.join("config.json").exists());
    }

    // A tar layer with a `../` entry: refused, nothing outside -o.
    let evil_out = f.c.path("evil/out");
    let out = f
        .get(&[
            &f.url("models/evil:v1"),
            "--plain-http",
            "-o",
            evil_out.to_str().unwrap(),
            "--data-dir",
            cache,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("'..'"), "{err}");
    assert!(!f.c.path("evil/escape.txt").exists());
    assert!(
        !evil_out.join("ok.txt").exists(),
        "a refused archive leaves nothing"
    );
    no_leftovers(&evil_out);

    // Bad input.
    for (args, want) in [
        (vec!["oci://registry"], "invalid OCI reference"),
        (
            vec![&*f.url("models/missing:v1"), "--plain-http"],
            "not found",
        ),
        (
            vec![&*url, "--plain-http", "--layout", "hf-cache"],
            "hf-cache is for hf://",
        ),
        (
            vec![&*url, "--plain-http", "--layout", "triton"],
            "needs --model-name",
        ),
        (
            vec![&*url, "--plain-http", "--include", "nothing-like-this"],
            "no layer is left",
        ),
    ] {
        let bad = f.c.path("bad");
        let mut all = args.clone();
        all.extend(["-o", bad.to_str().unwrap(), "--data-dir", cache]);
        let out = f.get(&all).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(want), "{args:?}: expected {want:?} in: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
    }
}

fn base64_of(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &x)| n | (x as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The digests in an OCI layout directory: its manifest and every blob.
fn oci_layout_digests(dir: &Path) -> Vec<String> {
    let mut d: Vec<String> = std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    d.sort();
    d
}

#[test]
fn skopeo_through_the_daemon_mirror_gets_the_registrys_digests() {
    let mut f = fixture();
    let (sched, _) = f.c.scheduler().unwrap();
    let upstream = format!("http://{}", f.registry.addr);
    f.c.daemon("seed", &sched, true, &["--registry-upstream", &upstream])
        .unwrap();
    let d =
        f.c.daemon(
            "node0",
            &sched,
            false,
            &[
                "--registry-listen",
                "127.0.0.1:0",
                "--registry-upstream",
                &upstream,
            ],
        )
        .unwrap();
    let mirror = d
        .ready
        .registry_addr
        .clone()
        .expect("the daemon serves --registry-listen");
    let copy = |from: &str, to: &Path| {
        let out = Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false", "--retry-times", "0"])
            .arg(format!("docker://{from}/models/fake:v1"))
            .arg(format!("oci:{}:v1", to.display()))
            .output()
            .unwrap();
        f.ok(&format!("skopeo copy from {from}"), &out);
    };
    let direct = f.c.path("skopeo-direct");
    let through = f.c.path("skopeo-mirror");
    copy(&mirror, &through);
    let served_after_mirror: u64 = f.registry.blob_bytes_served().values().sum();
    copy(&f.registry.addr, &direct);
    assert_eq!(oci_layout_digests(&direct), oci_layout_digests(&through));
    let index = |dir: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap()
    };
    assert_eq!(
        index(&direct)["manifests"][0]["digest"],
        index(&through)["manifests"][0]["digest"]
    );
    assert_eq!(index(&through)["manifests"][0]["digest"], f.digest.as_str());
    // Through the mirror the blobs came from the swarm's seed: about once.
    let layers = f.layer_bytes() as f64;
    assert!(
        served_after_mirror as f64 <= layers * 1.1,
        "{served_after_mirror} bytes for {layers}"
    );
}
