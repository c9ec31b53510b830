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
use weightcast_testkit::oci_registry::{self, named, PushLayer, Pusher, Registry};
use weightcast_testkit::postgres::Postgres;

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
fn push_model(c: &Cluster, registry: &Registry, auth: Option<(&str, &str)>) -> u64 {
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
    Pusher::new(&registry.addr, auth)
        .model("models/fake", "v1", &config, &layers)
        .unwrap();
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
    let total = push_model(&c, &registry, None);
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
    // The registry needs credentials; only the preheat's Authorization
    // (what Harbor hands Dragonfly, used as given) carries them to the seed.
    let registry = Registry::start(&c.path("registry"), Some((USER, PASSWORD))).unwrap();
    let total = push_model(&c, &registry, Some((USER, PASSWORD)));
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
        r#"{{"type":"preheat","args":{{"type":"image","url":"http://{}/v2/models/fake/manifests/v1","tag":"","filtered_query_params":"","headers":{{"Authorization":"{basic}"}},"scope":"","concurrent_count":0,"timeout":0}},"scheduler_cluster_ids":null}}"#,
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
