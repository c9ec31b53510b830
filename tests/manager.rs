//! End-to-end, preheat and the manager: real `weightcast` processes (a
//! manager on SQLite or a real PostgreSQL, schedulers, seeds, daemons with
//! registry mirrors), a real registry (Debian's `docker-registry`) holding a
//! ModelPack artifact, Harbor's own requests byte for byte, and `skopeo`
//! pulling through the mirrors. The claim under test is the one Dragonfly
//! users file most: after a preheat says SUCCESS, the pulls cost the origin
//! nothing.

use base64::Engine as _;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use weightcast_modelpack::safetensors_gen;
use weightcast_testkit::cluster::{sha256_file, Cluster, Daemon, Faults};
use weightcast_testkit::containerd::Containerd;
use weightcast_testkit::oci_registry::{self, named, PushLayer, Pusher, Registry};
use weightcast_testkit::postgres::Postgres;
use weightcast_testkit::registry_token::TokenServer;

const BIN: &str = env!("CARGO_BIN_EXE_weightcast");
const MIB: u64 = 1 << 20;
const USER: &str = "harbor-robot";
const PASSWORD: &str = "robot-s3cret";

fn setup(script: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ok = Command::new(root.join(script))
        .status()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(ok.success(), "{script} failed");
}

fn setup_registry() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| setup("scripts/setup-registry"));
}

/// A ModelPack artifact: weights, a config file, a tar+gzip code layer.
fn push_model(c: &Cluster, pusher: &Pusher) -> u64 {
    let dir = c.path("model");
    std::fs::create_dir_all(&dir).unwrap();
    let w = dir.join("model.safetensors");
    safetensors_gen::write(&w, 12 * MIB + 5, 7).unwrap();
    let layers = vec![
        PushLayer {
            media_type: "application/vnd.cncf.model.weight.v1.raw".into(),
            bytes: std::fs::read(&w).unwrap(),
            annotations: named("model.safetensors"),
        },
        PushLayer {
            media_type: "application/vnd.cncf.model.weight.config.v1.raw".into(),
            bytes: br#"{"architectures": ["Test"]}"#.to_vec(),
            annotations: named("config.json"),
        },
        PushLayer {
            media_type: "application/vnd.cncf.model.code.v1.tar+gzip".into(),
            bytes: oci_registry::gzip(&oci_registry::tar_of(&[("handler.py", b"print(1)\n")])),
            annotations: Default::default(),
        },
    ];
    let config = oci_registry::model_config("fake", &layers);
    pusher.model("models/fake", "v1", &config, &layers).unwrap();
    layers.iter().map(|l| l.bytes.len() as u64).sum::<u64>()
        + serde_json::to_vec(&config).unwrap().len() as u64
}

fn blob_bytes(r: &Registry) -> u64 {
    r.blob_bytes_served().values().sum()
}

fn ok(c: &Cluster, what: &str, out: &Output) {
    c.assert_ok(what, out);
}

fn skopeo_pull(c: &Cluster, mirror: &str, to: &Path) {
    let out = Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false", "--retry-times", "0"])
        .arg(format!("docker://{mirror}/models/fake:v1"))
        .arg(format!("oci:{}:v1", to.display()))
        .output()
        .unwrap();
    ok(c, &format!("skopeo copy through the mirror {mirror}"), &out);
}

/// One HTTP/1.1 exchange with the exact bytes given (Harbor's requests are
/// sent as Go's net/http writes them).
fn raw_http(addr: &str, request: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            });
            if len.is_some_and(|l| body.len() >= l) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// Harbor's request as its Dragonfly provider sends it.
fn harbor_request(
    method: &str,
    addr: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&str>,
) -> String {
    let mut r =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: Go-http-client/1.1\r\n");
    if let Some(b) = body {
        r.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    r.push_str("Accept: application/json\r\n");
    if let Some(a) = auth {
        r.push_str(&format!("Authorization: {a}\r\n"));
    }
    if body.is_some() {
        r.push_str("Content-Type: application/json\r\n");
    }
    r.push_str("Accept-Encoding: gzip\r\nConnection: close\r\n\r\n");
    if let Some(b) = body {
        r.push_str(b);
    }
    r
}

fn token(
    c: &Cluster,
    data_dir: &Path,
    database: Option<&str>,
    name: &str,
    extra: &[&str],
) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(["manager", "token", "create", "--name", name, "--data-dir"])
        .arg(data_dir);
    if let Some(d) = database {
        cmd.args(["--database", d]);
    }
    let out = cmd.args(extra).output().unwrap();
    ok(c, "manager token create", &out);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn rfc3339(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() >= 20 && s.ends_with('Z') && s.as_bytes()[10] == b'T')
}

#[test]
fn a_preheat_without_a_manager_makes_mirror_pulls_cost_the_registry_nothing() {
    setup_registry();
    let mut c = Cluster::new(BIN).unwrap();
    let registry = Registry::start(&c.path("registry"), None).unwrap();
    let total = push_model(&c, &Pusher::new(&registry.addr, None));
    let (sched, _) = c.scheduler().unwrap();
    let upstream = format!("http://{}", registry.addr);
    let mirror_args = [
        "--registry-listen",
        "127.0.0.1:0",
        "--registry-upstream",
        upstream.as_str(),
    ];
    c.daemon("seed", &sched, true, &["--registry-upstream", &upstream])
        .unwrap();
    let nodes: Vec<Daemon> = (0..3)
        .map(|i| {
            c.daemon(&format!("node{i}"), &sched, false, &mirror_args)
                .unwrap()
        })
        .collect();
    let t0 = Instant::now();
    let out = Command::new(BIN)
        .args([
            "preheat",
            &format!("oci://{}/models/fake:v1", registry.addr),
            "--plain-http",
            "--scheduler",
            &sched,
            "--scope",
            "all_peers",
            "--json",
        ])
        .env("HOME", c.path("home"))
        .output()
        .unwrap();
    ok(&c, "weightcast preheat oci:// --scope all_peers", &out);
    let secs = t0.elapsed().as_secs_f64();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let tasks = report["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 4, "config and three layers: {report}");
    for t in tasks {
        assert_eq!(t["succeeded"], 4, "every peer (seed + 3 nodes) warm: {t}");
    }
    let during_by_blob = registry.blob_bytes_served();
    let during = blob_bytes(&registry);
    eprintln!("preheat oci:// all_peers (4 peers, {total} blob bytes): {secs:.2} s, registry sent {during} blob bytes ({:.3}x)", during as f64 / total as f64);
    assert!(during as f64 <= total as f64 * 1.1, "{during} for {total}");
    // Now the fleet pulls: through each node's mirror, and with get oci://.
    for (i, n) in nodes.iter().enumerate() {
        let mirror = n.ready.registry_addr.clone().unwrap();
        skopeo_pull(&c, &mirror, &c.path(&format!("pull{i}")));
    }
    let out = c
        .get_command(
            &nodes[0],
            &format!("oci://{}/models/fake:v1", registry.addr),
            &c.path("get-out"),
        )
        .arg("--plain-http")
        .env("HOME", c.path("home"))
        .output()
        .unwrap();
    ok(&c, "get oci:// after the preheat", &out);
    let after = blob_bytes(&registry) - during;
    // `get` reads the small model config blob itself, to check it before
    // any layer moves (it is not a swarm task); no layer byte may come.
    let grown: Vec<(String, u64)> = registry
        .blob_bytes_served()
        .into_iter()
        .map(|(d, n)| (d.clone(), n - during_by_blob.get(&d).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    eprintln!("after the preheat: 3 mirror pulls + 1 get oci:// cost the registry {after} blob bytes ({grown:?})");
    assert!(
        grown.len() <= 1 && grown.iter().all(|(_, n)| *n < 1024),
        "the pulls after the preheat went to the registry: {grown:?}"
    );
    // Cache jobs: who holds the weights, then evict them everywhere.
    let weights = sha256_file(&c.path("get-out/model.safetensors")).unwrap();
    let out = Command::new(BIN)
        .args([
            "task",
            "ls",
            &format!("sha256:{weights}"),
            "--scheduler",
            &sched,
        ])
        .output()
        .unwrap();
    ok(&c, "task ls", &out);
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        listed.lines().filter(|l| l.contains("complete")).count(),
        4,
        "{listed}"
    );
    let out = Command::new(BIN)
        .args([
            "task",
            "rm",
            &format!("sha256:{weights}"),
            "--scheduler",
            &sched,
        ])
        .output()
        .unwrap();
    ok(&c, "task rm", &out);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        text.lines().filter(|l| l.contains("evicted")).count(),
        4,
        "{text}"
    );
    let out = Command::new(BIN)
        .args([
            "task",
            "ls",
            &format!("sha256:{weights}"),
            "--scheduler",
            &sched,
        ])
        .output()
        .unwrap();
    ok(&c, "task ls after rm", &out);
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());
}

/// Harbor against the manager (`database`: PostgreSQL's URL, else SQLite).
fn harbor_preheats_through_the_manager(database: Option<&str>) {
    setup_registry();
    let mut c = Cluster::new(BIN).unwrap();
    // The registry takes only tokens from its realm, as Harbor's does; the
    // preheat's Authorization is a pull token from that realm (what
    // Harbor hands Dragonfly, used as given), the only credential the seed
    // gets. The nodes hold the robot's login and do the token dance.
    let tokens = TokenServer::start(&c.path("token"), USER, PASSWORD).unwrap();
    let registry = Registry::start_with_tokens(&c.path("registry"), &tokens).unwrap();
    let push = tokens
        .token_for("repository:models/fake:pull,push")
        .unwrap();
    let total = push_model(
        &c,
        &Pusher::with_authorization(&registry.addr, Some(format!("Bearer {push}"))),
    );
    let pull_token = tokens.token_for("repository:models/fake:pull").unwrap();
    let mut margs = vec!["--keepalive-ttl", "3"];
    if let Some(d) = database {
        margs.extend(["--database", d]);
    }
    let manager = c.manager("manager", &margs).unwrap();
    let mdir = c.path("manager");
    let mgr_addr = manager.trim_start_matches("http://").to_string();
    let job_token = token(&c, &mdir, database, "harbor", &["--scope", "job"]);
    let cluster_token = token(&c, &mdir, database, "ops", &["--scope", "cluster"]);
    let short = token(
        &c,
        &mdir,
        database,
        "short",
        &["--scope", "job", "--expires", "1s"],
    );
    let (sched, _) = c
        .scheduler_named(
            &weightcast_testkit::cluster::Place::loopback(),
            "scheduler",
            &[
                "--manager",
                &manager,
                "--cluster",
                "gpu-a",
                "--keepalive-interval",
                "1",
            ],
        )
        .unwrap();
    let upstream = format!("http://{}", registry.addr);
    let m = [
        "--manager",
        manager.as_str(),
        "--cluster",
        "gpu-a",
        "--manager-refresh",
        "1",
    ];
    c.daemon(
        "seed",
        "",
        true,
        &[&m[..], &["--registry-upstream", &upstream]].concat(),
    )
    .unwrap();
    let login = ["--registry-user", USER, "--registry-password", PASSWORD];
    let nodes: Vec<Daemon> = (0..3)
        .map(|i| {
            let args = [
                &m[..],
                &[
                    "--registry-listen",
                    "127.0.0.1:0",
                    "--registry-upstream",
                    &upstream,
                ],
                &login[..],
            ]
            .concat();
            c.daemon(&format!("node{i}"), "", false, &args).unwrap()
        })
        .collect();
    let _ = sched;
    // Health check, as Harbor sends it (with the instance's credentials).
    let bearer = format!("Bearer {job_token}");
    let (status, body) = raw_http(
        &mgr_addr,
        &harbor_request("GET", &mgr_addr, "/healthy", Some(&bearer), None),
    );
    assert_eq!((status, body.as_str()), (200, "\"OK\""));
    // Token cases: missing 401, wrong scope 403, expired 403, unknown 401.
    let create = |auth: Option<&str>, body: &str| {
        raw_http(
            &mgr_addr,
            &harbor_request("POST", &mgr_addr, "/oapi/v1/jobs", auth, Some(body)),
        )
    };
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    let harbor_body = format!(
        r#"{{"type":"preheat","args":{{"type":"image","url":"http://{}/v2/models/fake/manifests/v1","tag":"","filtered_query_params":"","headers":{{"Authorization":"Bearer {pull_token}"}},"scope":"","concurrent_count":0,"timeout":0}},"scheduler_cluster_ids":null}}"#,
        registry.addr
    );
    assert_eq!(create(None, &harbor_body).0, 401, "no token");
    assert_eq!(
        create(Some("Bearer wc_not-a-token"), &harbor_body).0,
        401,
        "unknown token"
    );
    assert_eq!(
        create(Some(&basic), &harbor_body).0,
        401,
        "BASIC auth mode is not a token"
    );
    let (s, b) = create(Some(&format!("Bearer {cluster_token}")), &harbor_body);
    assert_eq!(s, 403, "a cluster-scoped token creates no job: {b}");
    std::thread::sleep(Duration::from_millis(1100));
    let (s, b) = create(Some(&format!("Bearer {short}")), &harbor_body);
    assert_eq!((s, b.contains("expired")), (403, true), "{b}");
    let (s, b) = raw_http(
        &mgr_addr,
        &harbor_request(
            "GET",
            &mgr_addr,
            &format!("/oapi/v1/clusters?access_token={cluster_token}"),
            None,
            None,
        ),
    );
    assert_eq!(s, 200, "{b}");
    // The preheat itself.
    let t0 = Instant::now();
    let (status, body) = create(Some(&bearer), &harbor_body);
    assert_eq!(status, 200, "{body}");
    let job: Value = serde_json::from_str(&body).unwrap();
    let id = job["id"].as_i64().expect("an integer id");
    assert!(
        rfc3339(&job["created_at"]) && rfc3339(&job["updated_at"]),
        "{job}"
    );
    assert_eq!(job["state"], "PENDING");
    // Harbor polls (every 10 s; 1 s here) until a terminal state.
    let final_job = loop {
        let (s, b) = raw_http(
            &mgr_addr,
            &harbor_request(
                "GET",
                &mgr_addr,
                &format!("/oapi/v1/jobs/{id}"),
                Some(&bearer),
                None,
            ),
        );
        assert_eq!(s, 200, "{b}");
        let j: Value = serde_json::from_str(&b).unwrap();
        let state = j["state"].as_str().unwrap().to_string();
        assert!(
            ["PENDING", "SUCCESS", "FAILURE"].contains(&state.as_str()),
            "{state}"
        );
        if state != "PENDING" {
            break j;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "still PENDING: {j}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(final_job["state"], "SUCCESS", "{final_job}\n{}", c.logs());
    let states = final_job["result"]["job_states"].as_array().unwrap();
    let ok_tasks = states[0]["results"][0]["success_tasks"].as_array().unwrap();
    assert_eq!(
        ok_tasks.len(),
        4,
        "config + 3 layers on the seed: {final_job}"
    );
    for t in ok_tasks {
        assert!(t["url"]
            .as_str()
            .unwrap()
            .contains("/v2/models/fake/blobs/sha256:"));
        assert_eq!(t["hostname"], "seed");
        assert_eq!(t["ip"], "127.0.0.1");
    }
    assert!(states[0]["results"][0]["failure_tasks"]
        .as_array()
        .unwrap()
        .is_empty());
    let during = blob_bytes(&registry);
    eprintln!("Harbor preheat (single_seed_peer, {} db): {secs:.2} s to SUCCESS incl. 1 s polls; registry sent {during} blob bytes for {total} ({:.3}x)", database.map_or("sqlite", |_| "postgresql"), during as f64 / total as f64);
    assert!(during as f64 <= total as f64 * 1.1);
    // The list answers it too, newest first.
    let (s, b) = raw_http(
        &mgr_addr,
        &harbor_request(
            "GET",
            &mgr_addr,
            "/oapi/v1/jobs?page=1&per_page=5",
            Some(&bearer),
            None,
        ),
    );
    assert_eq!(s, 200);
    assert_eq!(serde_json::from_str::<Value>(&b).unwrap()[0]["id"], id);
    // Three daemons pull through their mirrors: nothing from the registry.
    let children: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            Command::new("skopeo")
                .args(["copy", "--src-tls-verify=false", "--retry-times", "0"])
                .arg(format!(
                    "docker://{}/models/fake:v1",
                    n.ready.registry_addr.clone().unwrap()
                ))
                .arg(format!("oci:{}:v1", c.path(&format!("pull{i}")).display()))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        ok(&c, "skopeo copy through a daemon's mirror", &out);
    }
    let after = blob_bytes(&registry) - during;
    eprintln!(
        "after the Harbor preheat: 3 concurrent mirror pulls cost the registry {after} blob bytes"
    );
    assert_eq!(
        after,
        0,
        "the pulls after the preheat went to the registry\n{}",
        c.logs()
    );
    // The mirrors got their manifests with the robot's login through the
    // realm: the registry client's token dance against a real registry.
    let danced = |issued: &[weightcast_testkit::registry_token::Issued]| {
        issued
            .iter()
            .filter(|i| {
                i.granted
                    && i.subject == USER
                    && i.scopes == ["repository:models/fake:pull".to_string()]
            })
            .count()
    };
    assert!(
        danced(&tokens.issued()) > nodes.len(),
        "the test's pull token and one per mirror: {:?}",
        tokens.issued()
    );
    // `get oci://` with the login: the token dance in the product's
    // registry client, and no layer byte from the registry.
    let before_get = registry.blob_bytes_served();
    let issued_before = danced(&tokens.issued());
    let url = format!("oci://{}/models/fake:v1", registry.addr);
    let out = c
        .get_command(&nodes[0], &url, &c.path("get-out"))
        .args(["--plain-http"])
        .args(login)
        .env("HOME", c.path("home"))
        .env_remove("DOCKER_CONFIG")
        .output()
        .unwrap();
    ok(
        &c,
        "get oci:// with the login after the Harbor preheat",
        &out,
    );
    assert!(
        danced(&tokens.issued()) > issued_before,
        "get asked the realm for a pull token: {:?}",
        tokens.issued()
    );
    let weights = c.path("model/model.safetensors");
    assert_eq!(
        sha256_file(&c.path("get-out/model.safetensors")).unwrap(),
        sha256_file(&weights).unwrap()
    );
    let grown: Vec<(String, u64)> = registry
        .blob_bytes_served()
        .into_iter()
        .map(|(d, n)| (d.clone(), n - before_get.get(&d).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    eprintln!("after the Harbor preheat: get oci:// cost the registry {grown:?} blob bytes (the model config, which get reads itself)");
    assert!(
        grown.len() <= 1 && grown.iter().all(|(_, n)| *n < 1024),
        "get after the preheat fetched layers from the registry: {grown:?}"
    );
    // Without the login the realm grants nothing and get says so in one line.
    let out = c
        .get_command(&nodes[0], &url, &c.path("get-denied"))
        .args(["--plain-http"])
        .env("HOME", c.path("home"))
        .env_remove("DOCKER_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an anonymous get of a private repo");
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(
        tokens
            .issued()
            .iter()
            .any(|i| !i.granted && i.subject.is_empty()),
        "the anonymous get asked the realm: {:?}",
        tokens.issued()
    );
}

#[test]
fn harbor_preheats_through_the_manager_on_sqlite() {
    harbor_preheats_through_the_manager(None);
}

#[test]
fn harbor_preheats_through_the_manager_on_postgresql() {
    setup("scripts/setup-postgres");
    let pg = Postgres::start().unwrap();
    harbor_preheats_through_the_manager(Some(&pg.url));
}

#[test]
fn a_killed_scheduler_of_two_hands_its_tasks_on_and_is_marked_inactive() {
    let mut c = Cluster::new(BIN).unwrap();
    let root = c.path("origin");
    std::fs::create_dir_all(&root).unwrap();
    let file = root.join("model.safetensors");
    safetensors_gen::write(&file, 48 * MIB, 9).unwrap();
    let want = sha256_file(&file).unwrap();
    let (origin, _) = c.origin(&root, Faults::default()).unwrap();
    let manager = c.manager("manager", &["--keepalive-ttl", "2"]).unwrap();
    let cluster_token = token(&c, &c.path("manager"), None, "ops", &["--scope", "cluster"]);
    let place = weightcast_testkit::cluster::Place::loopback();
    let sched_args = [
        "--manager",
        manager.as_str(),
        "--cluster",
        "c1",
        "--keepalive-interval",
        "1",
    ];
    let (a, _) = c.scheduler_named(&place, "sched-a", &sched_args).unwrap();
    let (b, _) = c.scheduler_named(&place, "sched-b", &sched_args).unwrap();
    let m = [
        "--manager",
        manager.as_str(),
        "--cluster",
        "c1",
        "--manager-refresh",
        "1",
    ];
    // The seed is slow enough that the download is in flight at the kill.
    c.daemon(
        "seed",
        "",
        true,
        &[&m[..], &["--origin-rate-limit", "12MB/s"]].concat(),
    )
    .unwrap();
    let nodes: Vec<Daemon> = (0..2)
        .map(|i| c.daemon(&format!("node{i}"), "", false, &m).unwrap())
        .collect();
    let url = format!("{origin}/model.safetensors");
    let id = weightcast_types::TaskKey::Url(&url).task_id().unwrap();
    let endpoints = [a.clone(), b.clone()];
    let owner = weightcast_types::task_key::owner(&id, &endpoints)
        .unwrap()
        .clone();
    let owner_name = if owner == a { "sched-a" } else { "sched-b" };
    let children: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            c.get_command(n, &url, &c.path(&format!("out{i}")))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let killed_at = Instant::now();
    c.proc_named(owner_name).unwrap().kill();
    for child in children {
        let out = child.wait_with_output().unwrap();
        ok(&c, "get while its scheduler is killed", &out);
    }
    for i in 0..2 {
        assert_eq!(sha256_file(&c.path(&format!("out{i}"))).unwrap(), want);
    }
    // The manager marks it inactive within its TTL (2 s) and a sweep.
    let mgr_addr = manager.trim_start_matches("http://").to_string();
    let inactive_after = loop {
        let (_, body) = raw_http(
            &mgr_addr,
            &harbor_request(
                "GET",
                &mgr_addr,
                &format!("/oapi/v1/clusters?access_token={cluster_token}"),
                None,
                None,
            ),
        );
        let v: Value = serde_json::from_str(&body).unwrap();
        let killed = v[0]["schedulers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["addr"] == owner.as_str())
            .cloned();
        if killed.is_some_and(|k| k["state"] == "inactive") {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(15),
            "still active: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "the killed scheduler was marked inactive {:.1} s after the kill",
        inactive_after.as_secs_f64()
    );
    // Daemons moved on: a new download works with one scheduler left.
    let out = c
        .get_command(&nodes[1], &url, &c.path("again"))
        .output()
        .unwrap();
    ok(&c, "get after the kill", &out);
}

/// An OCI image (image config, two tar+gzip layers) pushed as
/// `library/app:<tag>`; returns the manifest's digest and its blobs'
/// (digest, size).
fn push_image(c: &Cluster, pusher: &Pusher, tag: &str, seed: u64) -> (String, Vec<(String, u64)>) {
    let dir = c.path(&format!("image-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let w = dir.join("weights.bin");
    safetensors_gen::write(&w, 6 * MIB + 3, seed).unwrap();
    let big = std::fs::read(&w).unwrap();
    let tars = [
        oci_registry::tar_of(&[("app/weights.bin", big.as_slice())]),
        oci_registry::tar_of(&[("app/run.sh", format!("echo {tag}\n").as_bytes())]),
    ];
    let layers: Vec<Vec<u8>> = tars
        .iter()
        .map(|t| oci_registry::gzip(t.as_slice()))
        .collect();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/app/run.sh"]},
        "rootfs": {"type": "layers", "diff_ids": tars.iter().map(|t| oci_registry::sha256_digest(t.as_slice())).collect::<Vec<_>>()},
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let repo = "library/app";
    let mut blobs = vec![(
        pusher.blob(repo, &config_bytes).unwrap(),
        config_bytes.len() as u64,
    )];
    for l in &layers {
        blobs.push((pusher.blob(repo, l).unwrap(), l.len() as u64));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blobs[0].0, "size": blobs[0].1},
        "layers": blobs[1..].iter().map(|(d, n)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n,
        })).collect::<Vec<_>>(),
    });
    let digest = pusher
        .manifest(
            repo,
            tag,
            "application/vnd.oci.image.manifest.v1+json",
            &serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
    (digest, blobs)
}

#[test]
fn containerd_fetches_an_image_through_the_mirror_with_a_hosts_toml() {
    setup_registry();
    setup("scripts/setup-containerd");
    let mut c = Cluster::new(BIN).unwrap();
    let registry = Registry::start(&c.path("registry"), None).unwrap();
    let pusher = Pusher::new(&registry.addr, None);
    let (v1, v1_blobs) = push_image(&c, &pusher, "v1", 21);
    let (sched, _) = c.scheduler().unwrap();
    let upstream = format!("http://{}", registry.addr);
    c.daemon("seed", &sched, true, &["--registry-upstream", &upstream])
        .unwrap();
    let mirror_args = [
        "--registry-listen",
        "127.0.0.1:0",
        "--registry-upstream",
        upstream.as_str(),
    ];
    let nodes: Vec<Daemon> = (0..2)
        .map(|i| {
            c.daemon(&format!("node{i}"), &sched, false, &mirror_args)
                .unwrap()
        })
        .collect();
    // containerd's socket path must be short: its own directory in /tmp.
    let short = tempfile::Builder::new()
        .prefix("wc-ctr")
        .tempdir_in("/tmp")
        .unwrap();
    let node_containerd = |i: usize| {
        let d = Containerd::start(&short.path().join(format!("n{i}"))).unwrap();
        let mirror = nodes[i].ready.registry_addr.clone().unwrap();
        let hosts = d.hosts_dir("certs.d", &registry.addr, &mirror).unwrap();
        (d, hosts)
    };
    let fetch = |d: &Containerd, hosts: &Path, tag: &str, digest: &str, blobs: &[(String, u64)]| {
        let reference = format!("{}/library/app:{tag}", registry.addr);
        let out = d.fetch(hosts, &reference).unwrap();
        ok(
            &c,
            &format!("ctr content fetch {reference} --hosts-dir"),
            &out,
        );
        let have = d.content_digests().unwrap();
        for want in std::iter::once(digest).chain(blobs.iter().map(|(d, _)| d.as_str())) {
            assert!(
                have.iter().any(|h| h == want),
                "{want} not in containerd's store: {have:?}\n{}",
                d.log_text()
            );
        }
    };
    let served = |blobs: &[(String, u64)]| -> Vec<u64> {
        let all = registry.blob_bytes_served();
        blobs
            .iter()
            .map(|(d, _)| all.get(d).copied().unwrap_or(0))
            .collect()
    };
    // Cold: node0's containerd pulls through node0's mirror; the registry
    // serves each blob about once (to the seed), none twice.
    let (ca, hosts_a) = node_containerd(0);
    let t0 = Instant::now();
    fetch(&ca, &hosts_a, "v1", &v1, &v1_blobs);
    let cold_s = t0.elapsed().as_secs_f64();
    let total: u64 = v1_blobs.iter().map(|(_, n)| n).sum();
    let cold = served(&v1_blobs);
    eprintln!("ctr content fetch through the mirror, cold ({total} blob bytes): {cold_s:.2} s, registry sent {cold:?} for sizes {:?}", v1_blobs.iter().map(|(_, n)| *n).collect::<Vec<_>>());
    for ((d, size), sent) in v1_blobs.iter().zip(&cold) {
        assert!(
            *sent >= *size && *sent as f64 <= *size as f64 * 1.1,
            "{d}: the registry sent {sent} bytes for a {size}-byte blob\n{}",
            c.logs()
        );
    }
    // Another node's containerd: the swarm has it all.
    let (cb, hosts_b) = node_containerd(1);
    fetch(&cb, &hosts_b, "v1", &v1, &v1_blobs);
    assert_eq!(
        served(&v1_blobs),
        cold,
        "a second node's pull went to the registry"
    );
    // A new tag, preheated (as Harbor would, by manifest URL) to every
    // peer: the pull after it costs the registry nothing.
    let (v2, v2_blobs) = push_image(&c, &pusher, "v2", 22);
    let t0 = Instant::now();
    let out = Command::new(BIN)
        .args([
            "preheat",
            &format!("http://{}/v2/library/app/manifests/v2", registry.addr),
            "--type",
            "image",
            "--scheduler",
            &sched,
            "--scope",
            "all_peers",
            "--json",
        ])
        .env("HOME", c.path("home"))
        .output()
        .unwrap();
    ok(
        &c,
        "weightcast preheat --type image --scope all_peers",
        &out,
    );
    let preheat_s = t0.elapsed().as_secs_f64();
    let during: u64 = served(&v2_blobs).iter().sum();
    let v2_total: u64 = v2_blobs.iter().map(|(_, n)| n).sum();
    fetch(&cb, &hosts_b, "v2", &v2, &v2_blobs);
    let after: u64 = served(&v2_blobs).iter().sum::<u64>() - during;
    eprintln!("preheat of an image by manifest URL (all_peers, {v2_total} blob bytes): {preheat_s:.2} s, registry sent {during}; ctr content fetch after it: {after} registry blob bytes");
    assert!(
        during as f64 <= v2_total as f64 * 1.1,
        "{during} for {v2_total}"
    );
    assert_eq!(
        after,
        0,
        "the pull after the preheat went to the registry\n{}",
        c.logs()
    );
}
