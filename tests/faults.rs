//! End-to-end fault suite: real processes on loopback, a fault injected
//! on purpose, and every output that survives verified against the
//! origin's bytes. The test origin counts every byte it sends, so "nothing
//! fetched twice" is measured, not assumed.

use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::{Duration, Instant};
use weightcast_testkit::cluster::{
    assert_origin_sent_about_one_copy, http_get, metric, must_metric, origin_stats, sha256_file,
    Cluster, Daemon, Faults, Place,
};

const BIN: &str = env!("CARGO_BIN_EXE_weightcast");
const MIB: u64 = 1 << 20;

fn model(c: &Cluster, name: &str, size: u64, seed: u64) -> (PathBuf, String) {
    let dir = c.path("files");
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join(name);
    weightcast_modelpack::safetensors_gen::write(&f, size, seed).unwrap();
    (dir, sha256_file(&f).unwrap())
}

fn spawn_get(c: &Cluster, d: &Daemon, url: &str, out: &Path, extra: &[&str]) -> Child {
    c.get_command(d, url, out)
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn summary(c: &Cluster, out: &Output) -> serde_json::Value {
    c.assert_ok("get", out);
    serde_json::from_slice(&out.stdout).expect("get --json prints one JSON summary")
}

fn daemon_metric(c: &Cluster, d: &Daemon, name: &str) -> f64 {
    c.metrics(d)
        .ok()
        .and_then(|p| metric(&p, name, ""))
        .unwrap_or(0.0)
}

fn scheduler_metric(addr: &str, name: &str) -> f64 {
    http_get(addr, "/metrics")
        .ok()
        .and_then(|p| metric(&p, name, ""))
        .unwrap_or(0.0)
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A loopback address with a port free now, for a process that must come
/// back on the same address after a restart.
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// The scheduler dies mid-download and comes back on its address: the
/// peers reconnect and register what they hold, and finish with the origin
/// sending about one copy. Then, with every download over, one daemon
/// restarted and the scheduler restarted once more, nobody downloads any
/// more: only the announcements of finished tasks tell the new scheduler who
/// holds the file. With the seed gone, a newcomer that may not use the
/// origin is served by those complete peers.
#[test]
fn a_scheduler_killed_mid_download_comes_back_and_learns_what_every_peer_holds() {
    let mut c = Cluster::new(BIN).unwrap();
    let size = 48 * MIB;
    let (files, sha) = model(&c, "model.safetensors", size, 21);
    let (origin, origin_addr) = c.origin(&files, Faults::default()).unwrap();
    let listen = free_addr();
    let here = Place::loopback();
    let (sched, sched_metrics) = c
        .scheduler_listening(&here, "scheduler", &listen, &[])
        .unwrap();
    c.daemon("seed", &sched, true, &["--origin-rate-limit", "12MB/s"])
        .unwrap();
    let daemons: Vec<Daemon> = (0..3)
        .map(|i| c.daemon(&format!("node{i}"), &sched, false, &[]).unwrap())
        .collect();
    let url = format!("{origin}/model.safetensors");
    let gets: Vec<(Child, PathBuf)> = daemons
        .iter()
        .map(|d| {
            let out = c.path(&format!("out-{}/model.safetensors", d.name));
            (spawn_get(&c, d, &url, &out, &[]), out)
        })
        .collect();
    // Every peer holds pieces when the scheduler dies.
    wait_until("every peer is under way", Duration::from_secs(60), || {
        daemons
            .iter()
            .all(|d| daemon_metric(&c, d, "weightcast_download_bytes_total") >= (4 * MIB) as f64)
    });
    c.proc_named("scheduler").unwrap().kill();
    std::thread::sleep(Duration::from_millis(500));
    let (_, sched_metrics2) = c
        .scheduler_listening(&here, "scheduler-again", &listen, &[])
        .unwrap();
    assert_ne!(sched_metrics, sched_metrics2);
    for (child, out) in gets {
        summary(&c, &child.wait_with_output().unwrap());
        assert_eq!(sha256_file(&out).unwrap(), sha, "{}", out.display());
    }
    let served =
        assert_origin_sent_about_one_copy(&origin_addr, size, "across the scheduler restart");

    // node0's daemon restarts: its finished task is on disk only.
    c.proc(daemons[0].proc).kill();
    let dir0 = daemons[0].data_dir.clone();
    let node0 = c.daemon_in("node0", &dir0, &sched, false, &[]).unwrap();
    // The scheduler restarts once more: no download runs anywhere now.
    c.proc_named("scheduler-again").unwrap().kill();
    // And the seed is gone for good.
    c.proc_named("seed").unwrap().kill();
    let (_, sched_metrics3) = c
        .scheduler_listening(&here, "scheduler-third", &listen, &[])
        .unwrap();
    wait_until("the three nodes reconnect", Duration::from_secs(30), || {
        scheduler_metric(&sched_metrics3, "weightcast_scheduler_hosts") >= 3.0
    });
    wait_until(
        "the finished task is announced",
        Duration::from_secs(30),
        || scheduler_metric(&sched_metrics3, "weightcast_scheduler_tasks") >= 1.0,
    );
    // A moment for the last announcements to land.
    std::thread::sleep(Duration::from_millis(500));
    let newcomer = c.daemon("newcomer", &sched, false, &[]).unwrap();
    let out = c.path("out-newcomer/model.safetensors");
    let s = summary(
        &c,
        &spawn_get(&c, &newcomer, &url, &out, &["--no-back-to-source"])
            .wait_with_output()
            .unwrap(),
    );
    assert_eq!(sha256_file(&out).unwrap(), sha);
    assert_eq!(s["from_peers"], size, "all from the complete peers: {s}");
    assert_eq!(
        origin_stats(&origin_addr).unwrap().bytes_served,
        served,
        "the newcomer cost the origin nothing"
    );
    let from_node0 = daemon_metric(&c, &node0, "weightcast_upload_bytes_total");
    eprintln!("the restarted node0 served the newcomer {from_node0} bytes");
}

/// A peer whose uploads are all corrupt (fault injection, test builds
/// only): every bad piece is caught by its digest, fetched elsewhere, the
/// peer reported, and the scheduler keeps it off the reporter's parents;
/// every output is right.
#[test]
fn a_peer_that_serves_corrupt_bytes_is_caught_reported_and_routed_around() {
    let mut c = Cluster::new(BIN).unwrap();
    let size = 32 * MIB;
    let (files, sha) = model(&c, "model.safetensors", size, 22);
    let (origin, origin_addr) = c.origin(&files, Faults::default()).unwrap();
    let (sched, sched_metrics) = c.scheduler().unwrap();
    c.daemon("seed", &sched, true, &[]).unwrap();
    let url = format!("{origin}/model.safetensors");
    // The liar first gets the file honestly; what it serves is corrupt.
    let liar_dir = c.path("liar");
    let liar = c
        .daemon_with_env(
            &Place::loopback(),
            "liar",
            &liar_dir,
            &sched,
            false,
            &[],
            &[("WEIGHTCAST_FAULT_CORRUPT_UPLOADS", Some("1"))],
        )
        .unwrap();
    let out = c.path("out-liar/model.safetensors");
    summary(
        &c,
        &spawn_get(&c, &liar, &url, &out, &[])
            .wait_with_output()
            .unwrap(),
    );
    assert_eq!(
        sha256_file(&out).unwrap(),
        sha,
        "the liar's own copy is right"
    );
    let per_parent = 2u32;
    let children: Vec<Daemon> = (0..4)
        .map(|i| {
            c.daemon(
                &format!("node{i}"),
                &sched,
                false,
                &["--pieces-per-parent", &per_parent.to_string()],
            )
            .unwrap()
        })
        .collect();
    let gets: Vec<(Child, PathBuf)> = children
        .iter()
        .map(|d| {
            let out = c.path(&format!("out-{}/model.safetensors", d.name));
            (spawn_get(&c, d, &url, &out, &[]), out)
        })
        .collect();
    for (child, out) in gets {
        summary(&c, &child.wait_with_output().unwrap());
        assert_eq!(
            sha256_file(&out).unwrap(),
            sha,
            "no corrupt byte in {}",
            out.display()
        );
    }
    let corrupt_sent = must_metric(
        &c.metrics(&liar).unwrap(),
        "weightcast_upload_pieces_total",
        "",
    );
    let caught: Vec<f64> = children
        .iter()
        .map(|d| daemon_metric(&c, d, "weightcast_digest_mismatches_total"))
        .collect();
    eprintln!("the liar sent {corrupt_sent} corrupt pieces; caught per child: {caught:?}");
    assert!(
        corrupt_sent >= 1.0,
        "the liar was never asked for a piece: the test proved nothing"
    );
    assert_eq!(
        caught.iter().sum::<f64>(),
        corrupt_sent,
        "every corrupt piece the liar sent was caught"
    );
    for (d, n) in children.iter().zip(&caught) {
        // Caught at most once per piece it had in flight from the liar: the
        // child dropped it at the first bad piece, and the scheduler (told
        // by PieceFailed) never handed it back.
        assert!(
            *n <= per_parent as f64,
            "{} caught {n} corrupt pieces: the liar was handed back to it",
            d.name
        );
    }
    let reporters = caught.iter().filter(|n| **n > 0.0).count() as f64;
    assert!(
        scheduler_metric(&sched_metrics, "weightcast_scheduler_piece_failures_total") >= reporters,
        "each child that caught one reported the liar"
    );
    assert_origin_sent_about_one_copy(
        &origin_addr,
        size,
        "the refetches came from the swarm, not the origin",
    );
}

/// `cargo build` of the product never turns fault injection on; only the
/// test build (the root crate's dev-dependencies) does.
#[test]
fn the_shipped_build_has_no_fault_injection() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tree = |edges: &str| {
        let out = std::process::Command::new(&cargo)
            .args(["tree", "--offline", "-p", "weightcast", "-e", edges])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cargo tree: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let shipped = tree("features,no-dev");
    assert!(
        shipped.contains("weightcast-engine feature \"default\""),
        "cargo tree printed features: {shipped}"
    );
    assert!(
        !shipped.contains("fault-injection"),
        "the product build enables fault injection:\n{shipped}"
    );
    assert!(
        tree("features").contains("fault-injection"),
        "the test build should enable it (else the corrupt-peer test is not testing)"
    );
}

/// One `get` through `d`; its output and how it went.
fn get_via(c: &Cluster, d: &Daemon, url: &str, out: &Path) -> Output {
    spawn_get(c, d, url, out, &[]).wait_with_output().unwrap()
}

/// The origin fails the first requests (500, then 429 with Retry-After):
/// each is retried, and the file is right.
#[test]
fn origin_errors_and_throttling_are_retried() {
    for status in [500u16, 429] {
        let mut c = Cluster::new(BIN).unwrap();
        let size = 4 * MIB;
        let (files, sha) = model(&c, "model.safetensors", size, 31);
        let faults = Faults {
            fail_first: 2,
            fail_status: status,
            ..Faults::default()
        };
        let (origin, addr) = c.origin(&files, faults).unwrap();
        let d = c.daemon("node", "", false, &[]).unwrap();
        let out = c.path("out.bin");
        let t0 = Instant::now();
        let s = summary(
            &c,
            &get_via(&c, &d, &format!("{origin}/model.safetensors"), &out),
        );
        assert_eq!(s["bytes"], size);
        assert_eq!(sha256_file(&out).unwrap(), sha, "status {status}");
        let st = origin_stats(&addr).unwrap();
        assert_eq!(st.refused_on_purpose, 2, "status {status}");
        assert!(
            st.bytes_served <= size + 1,
            "status {status}: nothing fetched twice ({} bytes)",
            st.bytes_served
        );
        assert!(
            t0.elapsed() >= Duration::from_secs(2),
            "status {status}: Retry-After: 1, twice, was not waited for"
        );
    }
}

/// Fetches an 8 MiB file through a daemon (with `daemon_args`) from an
/// origin that breaks `broken` bodies halfway as `faults` says: the file is
/// right, exactly those bodies broke, and at most their pieces were sent
/// again. The cluster and daemon stay for more checks.
fn broken_bodies_resume(faults: Faults, broken: u64, daemon_args: &[&str]) -> (Cluster, Daemon) {
    let mut c = Cluster::new(BIN).unwrap();
    let size = 8 * MIB;
    let (files, sha) = model(&c, "model.safetensors", size, 32);
    let (origin, addr) = c.origin(&files, faults).unwrap();
    let d = c.daemon("node", "", false, daemon_args).unwrap();
    let out = c.path("out.bin");
    summary(
        &c,
        &get_via(&c, &d, &format!("{origin}/model.safetensors"), &out),
    );
    assert_eq!(sha256_file(&out).unwrap(), sha);
    let st = origin_stats(&addr).unwrap();
    assert_eq!(st.refused_on_purpose, broken, "bodies broken on purpose");
    let piece = weightcast_types::piece::PieceLayout::for_length(size).piece_size;
    // The length is learnt from a one-byte ranged read (`bytes=0-0`).
    let probe = 1;
    assert!(
        st.bytes_served <= size + broken * piece + probe,
        "at most the broken chunks were sent again: {} for {size}",
        st.bytes_served
    );
    (c, d)
}

/// The origin cuts the connection halfway through several bodies: each
/// read resumes where it broke off, and the file is right.
#[test]
fn a_connection_reset_mid_body_resumes_where_it_broke_off() {
    let faults = Faults {
        reset_first: 3,
        ..Faults::default()
    };
    broken_bodies_resume(faults, 3, &[]);
}

/// The origin stops sending halfway through two bodies and keeps the
/// connections open: the read timeout (`--origin-read-timeout 2s` here,
/// 60 s by default) gives each up, the read resumes where it stalled, and
/// the file is right.
#[test]
fn a_stalled_body_times_out_and_resumes_where_it_stopped() {
    let faults = Faults {
        stall_first: 2,
        ..Faults::default()
    };
    let (c, d) = broken_bodies_resume(faults, 2, &["--origin-read-timeout", "2s"]);
    assert!(
        daemon_metric(&c, &d, "weightcast_origin_retries_total") >= 2.0,
        "each stall was a retried read"
    );
}

/// The object changes at the origin mid-download (another ETag): one
/// clear error, no output, nothing of it left in the cache; the next
/// download fetches the new version whole.
#[test]
fn an_object_that_changes_mid_download_fails_cleanly_and_is_never_mixed() {
    let mut c = Cluster::new(BIN).unwrap();
    let size = 16 * MIB;
    let (d, url, _old) = slow_node(&mut c, size, 33, "4MB/s");
    let out = c.path("out.bin");
    let first = spawn_get(&c, &d, &url, &out, &[]);
    wait_until("the download is under way", Duration::from_secs(30), || {
        daemon_metric(&c, &d, "weightcast_download_bytes_total") >= (2 * MIB) as f64
    });
    // Rewritten in place: same length, other bytes, another ETag.
    let (_, new) = model(&c, "model.safetensors", size, 34);
    let failed = first.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        !failed.status.success(),
        "a mixed file was placed: {stderr}"
    );
    assert!(
        stderr.contains("changed while it was being downloaded"),
        "one clear error: {stderr}"
    );
    assert!(!out.exists(), "no output from two versions");
    let tasks: Vec<_> = std::fs::read_dir(d.data_dir.join("tasks"))
        .unwrap()
        .collect();
    assert!(tasks.is_empty(), "the mixed pieces were discarded");
    assert!(c.proc(d.proc).is_running(), "the daemon stays up");
    summary(&c, &get_via(&c, &d, &url, &out));
    assert_eq!(sha256_file(&out).unwrap(), new, "the new version, whole");
}

/// The data dir is a tmpfs too small for a download: one clear error, the
/// daemon stays up, a download that fits works meanwhile, and once space
/// is freed the big one works. Needs root (to mount); skipped otherwise.
#[test]
fn a_full_disk_is_one_clear_error_and_the_daemon_keeps_serving() {
    let mut c = Cluster::new(BIN).unwrap();
    let mnt = c.path("small-disk");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=40m", "tmpfs"])
        .arg(&mnt)
        .output();
    match mounted {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs (needs root): {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("SKIPPED: cannot run mount: {e}");
            return;
        }
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let big = 32 * MIB;
    let (files, big_sha) = model(&c, "big.safetensors", big, 35);
    let (_, small_sha) = model(&c, "small.safetensors", 4 * MIB, 36);
    let (origin, _) = c.origin(&files, Faults::default()).unwrap();
    let data = mnt.join("data");
    let d = c.daemon_in("node", &data, "", false, &[]).unwrap();
    // 20 MiB of the 40 are taken: the big file does not fit.
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![1u8; 20 * MIB as usize]).unwrap();
    let out = c.path("out/big.bin");
    let failed = get_via(&c, &d, &format!("{origin}/big.safetensors"), &out);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success());
    assert!(
        stderr.contains("not enough disk space") && stderr.contains("free space"),
        "a clear error that says what to do: {stderr}"
    );
    assert!(!out.exists());
    assert!(c.proc(d.proc).is_running(), "the daemon stays up");
    // Another task, that fits, is unaffected.
    let small = c.path("out/small.bin");
    summary(
        &c,
        &get_via(&c, &d, &format!("{origin}/small.safetensors"), &small),
    );
    assert_eq!(sha256_file(&small).unwrap(), small_sha);
    // Space freed: the big one works now.
    std::fs::remove_file(&filler).unwrap();
    summary(
        &c,
        &get_via(&c, &d, &format!("{origin}/big.safetensors"), &out),
    );
    assert_eq!(sha256_file(&out).unwrap(), big_sha);
}

/// One daemon that fetches a `size`-byte model from an origin at `rate`:
/// a download slow enough to act on while it runs. The daemon, the file's
/// URL and its sha256.
fn slow_node(c: &mut Cluster, size: u64, seed: u64, rate: &str) -> (Daemon, String, String) {
    let (files, sha) = model(c, "model.safetensors", size, seed);
    let (origin, _) = c.origin(&files, Faults::default()).unwrap();
    let d = c
        .daemon("node", "", false, &["--origin-rate-limit", rate])
        .unwrap();
    (d, format!("{origin}/model.safetensors"), sha)
}

/// Nothing beside `out` under a placement's temporary name.
fn assert_no_temporary_files(out: &Path) {
    let dir = out.parent().unwrap();
    let left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".weightcast-"))
        .collect();
    assert!(
        left.is_empty(),
        "temporary files left in {}: {left:?}",
        dir.display()
    );
}

/// A `get` stopped by SIGTERM (a pod being deleted) or Ctrl-C while its
/// output is being placed piece by piece: it fails, the old output stays
/// as it was, no temporary file is left, and the next get completes.
#[test]
fn an_interrupted_get_leaves_the_old_output_and_no_temporary_file() {
    let mut c = Cluster::new(BIN).unwrap();
    let size = 64 * MIB;
    let (d, url, sha) = slow_node(&mut c, size, 39, "8MB/s");
    let out = c.path("out/model.safetensors");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, b"the previous version").unwrap();
    for signal in ["TERM", "INT"] {
        let get = spawn_get(&c, &d, &url, &out, &[]);
        // The output is placed while the download runs: its temporary
        // file is there before the download ends.
        let dir = out.parent().unwrap().to_path_buf();
        wait_until(
            "the output's temporary file",
            Duration::from_secs(30),
            || {
                std::fs::read_dir(&dir).unwrap().any(|e| {
                    e.unwrap()
                        .file_name()
                        .to_string_lossy()
                        .contains(".weightcast-")
                })
            },
        );
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &get.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal}");
        let o = get.wait_with_output().unwrap();
        assert!(!o.status.success(), "signal {signal}: the get did not fail");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.contains("interrupted"), "signal {signal}: {stderr}");
        assert_eq!(std::fs::read(&out).unwrap(), b"the previous version");
        assert_no_temporary_files(&out);
        // Bytes already downloaded stay downloaded: the daemon goes on.
        if daemon_metric(&c, &d, "weightcast_download_bytes_total") >= size as f64 {
            break;
        }
    }
    c.assert_ok("get", &get_via(&c, &d, &url, &out));
    assert_eq!(sha256_file(&out).unwrap(), sha);
    assert_no_temporary_files(&out);
}

/// SIGKILL mid-download from the origin: after a restart the daemon
/// resumes from its piece table, and the origin sends the file about once
/// (only the pieces in flight at the kill are sent again).
#[test]
fn a_daemon_killed_mid_download_resumes_and_the_origin_sends_the_rest_only() {
    let mut c = Cluster::new(BIN).unwrap();
    let size = 32 * MIB;
    let (files, sha) = model(&c, "model.safetensors", size, 37);
    let (origin, addr) = c.origin(&files, Faults::default()).unwrap();
    let args = ["--origin-rate-limit", "8MB/s"];
    let d = c.daemon("node", "", false, &args).unwrap();
    let url = format!("{origin}/model.safetensors");
    let out = c.path("out.bin");
    let mut first = spawn_get(&c, &d, &url, &out, &[]);
    wait_until("the download is under way", Duration::from_secs(30), || {
        daemon_metric(&c, &d, "weightcast_download_bytes_total") >= (8 * MIB) as f64
    });
    c.proc(d.proc).kill();
    assert!(!first.wait().unwrap().success());
    assert!(!out.exists(), "no partial output");
    assert_no_temporary_files(&out);
    // What the origin was still writing to the dead daemon's sockets.
    std::thread::sleep(Duration::from_millis(300));
    let before = origin_stats(&addr).unwrap().bytes_served;
    let dir = d.data_dir.clone();
    let d = c.daemon_in("node", &dir, "", false, &args).unwrap();
    let s = summary(&c, &get_via(&c, &d, &url, &out));
    assert_eq!(sha256_file(&out).unwrap(), sha);
    let resumed = s["from_cache"].as_u64().unwrap();
    let fetched = s["from_origin"].as_u64().unwrap();
    assert!(resumed >= 4 * MIB, "resumed only {resumed} bytes: {s}");
    assert_eq!(
        resumed + fetched,
        size,
        "the piece table and the file agree: {s}"
    );
    let served = origin_stats(&addr).unwrap().bytes_served;
    // After the restart only the rest came (and the 1-byte length probe).
    assert!(
        (fetched..=fetched + 1).contains(&(served - before)),
        "after the restart the origin sent {} bytes for the {fetched} missing",
        served - before
    );
    let piece = weightcast_types::piece::PieceLayout::for_length(size).piece_size;
    // At most the pieces in flight at the kill (16 by default) fetched
    // twice, and the two 1-byte length probes (first start, restart).
    let in_flight = 16 * piece + 2;
    assert!(
        served <= size + in_flight,
        "the origin sent {served} bytes for {size}: more than the pieces in flight at the kill again"
    );
}

/// An origin without Range support (Debian's `python3 -m http.server`):
/// not an error. The seed reads the pieces from one GET in order, each
/// verified as it fills, and serves the swarm; every output is right.
#[test]
fn an_origin_without_range_support_is_streamed_in_order_by_the_seed() {
    let mut c = Cluster::new(BIN).unwrap();
    let size = 24 * MIB;
    let (files, sha) = model(&c, "model.safetensors", size, 38);
    let addr = free_addr();
    let port = addr.rsplit(':').next().unwrap().to_string();
    // Debian's python3, when there; else whichever is on the PATH.
    let python = match Path::new("/usr/bin/python3").exists() {
        true => Path::new("/usr/bin/python3"),
        false => Path::new("python3"),
    };
    let args: Vec<String> = [
        "-m",
        "http.server",
        &port,
        "--bind",
        "127.0.0.1",
        "--directory",
        files.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    c.spawn_at(&Place::loopback(), python, "python-http-server", &args)
        .unwrap();
    wait_until(
        "python3 -m http.server listens",
        Duration::from_secs(20),
        || std::net::TcpStream::connect(&addr).is_ok(),
    );
    let url = format!("http://{addr}/model.safetensors");
    // It really ignores Range: a ranged GET gets the whole file.
    let probe = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "GET /model.safetensors HTTP/1.0\r\nHost: {addr}\r\nRange: bytes=0-0\r\n\r\n"
        )
        .unwrap();
        let mut head = vec![0u8; 512];
        let n = s.read(&mut head).unwrap();
        String::from_utf8_lossy(&head[..n]).to_string()
    };
    assert!(probe.starts_with("HTTP/1.0 200"), "{probe}");
    let (sched, _) = c.scheduler().unwrap();
    c.daemon("seed", &sched, true, &[]).unwrap();
    let daemons: Vec<Daemon> = (0..2)
        .map(|i| c.daemon(&format!("node{i}"), &sched, false, &[]).unwrap())
        .collect();
    let gets: Vec<(Child, PathBuf)> = daemons
        .iter()
        .map(|d| {
            let out = c.path(&format!("out-{}/model.safetensors", d.name));
            (spawn_get(&c, d, &url, &out, &[]), out)
        })
        .collect();
    for (child, out) in gets {
        let s = summary(&c, &child.wait_with_output().unwrap());
        assert_eq!(s["bytes"], size);
        assert_eq!(sha256_file(&out).unwrap(), sha, "{}", out.display());
    }
    // And a lone daemon, its own source, streams it too.
    let lone = c.daemon("lone", "", false, &[]).unwrap();
    let out = c.path("out-lone/model.safetensors");
    summary(&c, &get_via(&c, &lone, &url, &out));
    assert_eq!(sha256_file(&out).unwrap(), sha);
}
