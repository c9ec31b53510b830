//! End-to-end: a cluster secret (`--cluster-secret-file`) between real
//! `weightcast` processes. With it a swarm works as before; a process
//! without it (or with a wrong one) can neither register with the
//! scheduler nor take pieces from a peer; and the secret rotates while
//! every process keeps running.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use weightcast_modelpack::safetensors_gen;
use weightcast_proto::frame::{
    AuthChallenge, AuthProof, PieceRequest, ResponseHeader, Status, AUTH_CHALLENGE_LEN,
    RESPONSE_HEADER_LEN,
};
use weightcast_testkit::cluster::{
    assert_origin_sent_about_one_copy, http_get, must_metric, sha256_file, Cluster, Daemon, Faults,
};
use weightcast_types::TaskId;

const BIN: &str = env!("CARGO_BIN_EXE_weightcast");
const MIB: u64 = 1 << 20;
const OLD: &str = "old-cluster-secret-5b1f0c3e9a7d";
const NEW: &str = "new-cluster-secret-c8e2a4f61b09";
/// Longer than the secret file's recheck interval (2 s).
const FILE_SETTLES: Duration = Duration::from_millis(2600);

/// A file of `size` bytes under the cluster's `files/`, and its sha256.
fn model(c: &Cluster, name: &str, size: u64, seed: u64) -> (PathBuf, String) {
    let dir = c.path("files");
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join(name);
    safetensors_gen::write(&f, size, seed).unwrap();
    let sha = sha256_file(&f).unwrap();
    (dir, sha)
}

/// A secret file for the process `name`, holding `lines` (each node of a
/// real cluster has its own copy, so the test gives each process one).
fn secret_file(c: &Cluster, name: &str, lines: &[&str]) -> String {
    let p = c.path(&format!("{name}.secret"));
    write_secrets(&p, lines);
    p.display().to_string()
}

fn write_secrets(p: &Path, lines: &[&str]) {
    // Written beside and renamed into place, as a config tool would.
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, lines.join("\n") + "\n").unwrap();
    std::fs::rename(&tmp, p).unwrap();
}

/// `get` of `url` through `d` into `out-<name>/<file>`; asserts success
/// and the sha256, returns the JSON summary.
fn get(c: &Cluster, d: &Daemon, url: &str, file: &str, sha: &str) -> serde_json::Value {
    let out = c.path(&format!("out-{}/{file}", d.name));
    let r = c.get_command(d, url, &out).output().unwrap();
    c.assert_ok(&format!("get through {}", d.name), &r);
    assert_eq!(sha256_file(&out).unwrap(), sha, "{}", out.display());
    serde_json::from_slice(&r.stdout).expect("get --json prints one JSON summary")
}

fn scheduler_metric(addr: &str, name: &str) -> f64 {
    must_metric(&http_get(addr, "/metrics").unwrap(), name, "")
}

/// Waits up to 30 s for `what` to hold.
fn eventually(what: &str, c: &Cluster, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "never: {what}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn log_of(c: &Cluster, d: &Daemon) -> String {
    std::fs::read_to_string(c.path(&format!("{}.log", d.name))).unwrap_or_default()
}

#[test]
fn a_swarm_with_a_cluster_secret_shares_pieces_and_the_origin_sends_about_one_copy() {
    let mut c = Cluster::new(BIN).unwrap();
    let size = 48 * MIB;
    let (files, sha) = model(&c, "model.safetensors", size, 7);
    let (origin, origin_addr) = c.origin(&files, Faults::default()).unwrap();
    let url = format!("{origin}/model.safetensors");
    let secret = secret_file(&c, "cluster", &[OLD]);
    let auth = ["--cluster-secret-file", secret.as_str()];
    let (sched, sched_metrics) = c.scheduler_with(&auth).unwrap();
    c.daemon("seed", &sched, true, &auth).unwrap();
    let daemons: Vec<Daemon> = (0..3)
        .map(|i| c.daemon(&format!("node{i}"), &sched, false, &auth).unwrap())
        .collect();
    let gets: Vec<_> = daemons
        .iter()
        .map(|d| {
            let out = c.path(&format!("out-{}/model.safetensors", d.name));
            c.get_command(d, &url, &out)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut from_peers = 0;
    for (d, g) in daemons.iter().zip(gets) {
        let r = g.wait_with_output().unwrap();
        c.assert_ok(&format!("get through {}", d.name), &r);
        let s: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        from_peers += s["from_peers"].as_u64().unwrap();
        let out = c.path(&format!("out-{}/model.safetensors", d.name));
        assert_eq!(sha256_file(&out).unwrap(), sha);
    }
    assert_eq!(
        from_peers,
        3 * size,
        "every daemon's bytes came from authenticated peers"
    );
    assert_origin_sent_about_one_copy(
        &origin_addr,
        size,
        "the authenticated swarm shared the pieces",
    );
    assert_eq!(
        scheduler_metric(&sched_metrics, "weightcast_scheduler_hosts"),
        4.0
    );
    assert_eq!(
        scheduler_metric(
            &sched_metrics,
            "weightcast_scheduler_refused_unauthenticated_total"
        ),
        0.0
    );
    for d in &daemons {
        let page = c.metrics(d).unwrap();
        assert_eq!(
            must_metric(&page, "weightcast_upload_refused_unauthenticated_total", ""),
            0.0,
            "{}",
            d.name
        );
    }
}

/// Opens a piece connection to `addr` as a stranger: reads the challenge,
/// sends `first` (a piece request, or a proof), and returns the parent's
/// answer and whether it closed the connection afterwards.
fn stranger(addr: &str, first: &[u8]) -> (ResponseHeader, bool) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut challenge = [0u8; AUTH_CHALLENGE_LEN];
    s.read_exact(&mut challenge).unwrap();
    AuthChallenge::decode(&challenge).expect("a parent with a secret opens with a challenge");
    s.write_all(first).unwrap();
    let mut h = [0u8; RESPONSE_HEADER_LEN];
    s.read_exact(&mut h).unwrap();
    let header = ResponseHeader::decode(&h).unwrap();
    let mut rest = Vec::new();
    // The end of the stream (or a reset: the parent may close while the
    // stranger's bytes are unread); a timeout would mean it kept it open.
    let closed = match s.read_to_end(&mut rest) {
        Ok(_) => rest.is_empty(),
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    (header, closed)
}

#[test]
fn a_process_without_the_secret_cannot_register_or_take_pieces() {
    let mut c = Cluster::new(BIN).unwrap();
    let size = 8 * MIB;
    let (files, sha) = model(&c, "model.safetensors", size, 3);
    let (origin, _) = c.origin(&files, Faults::default()).unwrap();
    let url = format!("{origin}/model.safetensors");
    let secret = secret_file(&c, "cluster", &[OLD]);
    let auth = ["--cluster-secret-file", secret.as_str()];
    let (sched, sched_metrics) = c.scheduler_with(&auth).unwrap();
    let seed = c.daemon("seed", &sched, true, &auth).unwrap();
    // The seed holds the file, so there are pieces to steal.
    get(&c, &seed, &url, "model.safetensors", &sha);

    // No secret: the scheduler refuses the session, with a clear reason.
    let none = c.daemon("no-secret", &sched, false, &[]).unwrap();
    eventually(
        "the scheduler refused the peer without a secret",
        &c,
        || {
            let log = log_of(&c, &none);
            log.contains("the scheduler refused this peer") && log.contains("no cluster token")
        },
    );
    // A wrong secret: refused too, saying it matches none.
    let wrong_file = secret_file(&c, "wrong", &["a-wrong-secret-3f9d1c7e0b2a"]);
    let wrong = c
        .daemon(
            "wrong-secret",
            &sched,
            false,
            &["--cluster-secret-file", &wrong_file],
        )
        .unwrap();
    eventually(
        "the scheduler refused the peer with a wrong secret",
        &c,
        || {
            let log = log_of(&c, &wrong);
            log.contains("the scheduler refused this peer") && log.contains("matches none")
        },
    );
    assert!(
        scheduler_metric(
            &sched_metrics,
            "weightcast_scheduler_refused_unauthenticated_total"
        ) >= 2.0
    );
    assert_eq!(
        scheduler_metric(&sched_metrics, "weightcast_scheduler_hosts"),
        1.0,
        "only the seed registered"
    );

    // Pieces: a stranger on the seed's upload port gets a challenge and,
    // whatever it sends instead of the right answer, a refusal and a
    // closed connection, never a byte of a piece.
    // The task the seed holds (its id does not matter: the refusal comes
    // before any request is read).
    let task = TaskId([0x5a; 32]);
    let request = PieceRequest { task, piece: 0 }.encode();
    let (h, closed) = stranger(&seed.ready.piece_addr, &request);
    assert_eq!(
        h.status,
        Status::Unauthenticated,
        "a piece request instead of a proof"
    );
    assert!(closed, "the connection is closed after the refusal");
    let forged = AuthProof { proof: [7; 32] }.encode();
    let (h, closed) = stranger(&seed.ready.piece_addr, &forged);
    assert_eq!(h.status, Status::Unauthenticated, "a forged proof");
    assert!(closed);
    assert_eq!(
        must_metric(
            &c.metrics(&seed).unwrap(),
            "weightcast_upload_refused_unauthenticated_total",
            ""
        ),
        2.0
    );
    // Neither refused daemon became a peer of the swarm meanwhile.
    assert_eq!(
        scheduler_metric(&sched_metrics, "weightcast_scheduler_hosts"),
        1.0
    );
}

#[test]
fn the_secret_rotates_while_every_process_keeps_running() {
    let mut c = Cluster::new(BIN).unwrap();
    let size = 16 * MIB;
    let (files, sha) = model(&c, "model.safetensors", size, 11);
    let (origin, origin_addr) = c.origin(&files, Faults::default()).unwrap();
    let url = format!("{origin}/model.safetensors");
    let names = ["scheduler", "seed", "node0", "node1"];
    let paths: Vec<String> = names.iter().map(|n| secret_file(&c, n, &[OLD])).collect();
    let flag = |i: usize| ["--cluster-secret-file".to_string(), paths[i].clone()];
    let f = flag(0);
    let (sched, sched_metrics) = c.scheduler_with(&[f[0].as_str(), f[1].as_str()]).unwrap();
    let mut daemons = Vec::new();
    for (i, name) in names.iter().enumerate().skip(1) {
        let f = flag(i);
        daemons.push(
            c.daemon(
                name,
                &sched,
                *name == "seed",
                &[f[0].as_str(), f[1].as_str()],
            )
            .unwrap(),
        );
    }
    let mut procs: Vec<usize> = daemons.iter().map(|d| d.proc).collect();
    let sched_pid = c.proc_named("scheduler").expect("the scheduler runs").pid();
    let pids_before: Vec<u32> = procs.iter().map(|&i| c.proc(i).pid()).collect();
    let s = get(&c, &daemons[1], &url, "model.safetensors", &sha);
    assert_eq!(
        s["from_peers"].as_u64(),
        Some(size),
        "node0 through the swarm"
    );

    // The rotation, on every node in turn: accept the new secret too,
    // then prove with it, then drop the old one.
    for lines in [[OLD, NEW].as_slice(), &[NEW, OLD], &[NEW]] {
        for p in &paths {
            write_secrets(Path::new(p), lines);
        }
        std::thread::sleep(FILE_SETTLES);
    }

    // node1 has opened no piece connection yet: every one it opens now is
    // proved with the new secret alone, to parents that accept nothing else.
    let s = get(&c, &daemons[2], &url, "model.safetensors", &sha);
    assert_eq!(
        s["from_peers"].as_u64(),
        Some(size),
        "node1 through the swarm"
    );
    // A process started now with the new secret registers and downloads;
    // one with only the retired secret is refused.
    let new_file = secret_file(&c, "late", &[NEW]);
    let late = c
        .daemon("late", &sched, false, &["--cluster-secret-file", &new_file])
        .unwrap();
    let s = get(&c, &late, &url, "model.safetensors", &sha);
    assert_eq!(
        s["from_peers"].as_u64(),
        Some(size),
        "late through the swarm"
    );
    let old_file = secret_file(&c, "retired", &[OLD]);
    let retired = c
        .daemon(
            "retired",
            &sched,
            false,
            &["--cluster-secret-file", &old_file],
        )
        .unwrap();
    eventually("the retired secret is refused", &c, || {
        log_of(&c, &retired).contains("matches none")
    });
    assert_origin_sent_about_one_copy(
        &origin_addr,
        size,
        "the swarm kept sharing across the rotation",
    );
    assert!(
        scheduler_metric(
            &sched_metrics,
            "weightcast_scheduler_refused_unauthenticated_total"
        ) >= 1.0
    );
    // Nothing was restarted: the same processes, all still running.
    let scheduler = c.proc_named("scheduler").expect("the scheduler runs");
    assert_eq!(scheduler.pid(), sched_pid);
    assert!(scheduler.is_running(), "the scheduler still runs");
    for (i, pid) in procs.drain(..).zip(pids_before) {
        assert_eq!(c.proc(i).pid(), pid);
        assert!(c.proc(i).is_running(), "{} still runs", c.proc(i).name);
    }
}
