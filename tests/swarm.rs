//! End-to-end: real `weightcast` processes (origin, scheduler, seed, daemons,
//! `get`) talking over real loopback sockets.

use std::path::Path;
use std::process::{Child, Output};
use std::time::{Duration, Instant};
use weightcast_modelpack::safetensors_gen;
use weightcast_testkit::cluster::{
    metric, must_metric, origin_stats, sha256_file, Cluster, Daemon, Faults,
};

const BIN: &str = env!("CARGO_BIN_EXE_weightcast");
const MIB: u64 = 1 << 20;

fn model(c: &Cluster, size: u64) -> (std::path::PathBuf, String) {
    let dir = c.path("files");
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("model.safetensors");
    safetensors_gen::write(&f, size, 7).unwrap();
    let sha = sha256_file(&f).unwrap();
    (dir, sha)
}

fn summary(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "get failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).expect("get --json prints one JSON summary")
}

fn downloaded(c: &Cluster, d: &Daemon) -> f64 {
    // The daemon may not answer yet: nothing downloaded then.
    c.metrics(d)
        .ok()
        .and_then(|page| metric(&page, "weightcast_download_bytes_total", ""))
        .unwrap_or(0.0)
}

/// Waits until `d` has downloaded at least `bytes` (per its metrics).
fn wait_downloaded(c: &Cluster, d: &Daemon, bytes: u64) {
    let t0 = Instant::now();
    while downloaded(c, d) < bytes as f64 {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{} never reached {bytes} bytes",
            d.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn_get(c: &Cluster, d: &Daemon, url: &str, out: &Path) -> Child {
    c.get_command(d, url, out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn four_daemons_fetch_256_mib_and_the_origin_sends_about_one_copy() {
    let Swarm {
        mut c,
        size,
        sha,
        url,
        origin_addr,
        sched,
        sched_metrics,
    } = swarm(256 * MIB, &[]);
    let daemons: Vec<Daemon> = (0..4)
        .map(|i| c.daemon(&format!("node{i}"), &sched, false, &[]).unwrap())
        .collect();
    let gets: Vec<(Child, std::path::PathBuf)> = daemons
        .iter()
        .map(|d| {
            let out = c.path(&format!("out-{}/model.safetensors", d.name));
            (spawn_get(&c, d, &url, &out), out)
        })
        .collect();
    let mut from_peers = 0;
    for (child, out) in gets {
        let s = summary(&child.wait_with_output().unwrap());
        assert_eq!(s["bytes"], size);
        assert_eq!(sha256_file(&out).unwrap(), sha, "{}", out.display());
        from_peers += s["from_peers"].as_u64().unwrap();
    }
    let served = origin_stats(&origin_addr).unwrap().bytes_served;
    eprintln!(
        "origin served {served} bytes = {:.3}x the file",
        served as f64 / size as f64
    );
    assert!(
        served as f64 <= 1.1 * size as f64,
        "origin served {served} bytes for a {size}-byte file"
    );
    assert_eq!(
        from_peers,
        4 * size,
        "the daemons' bytes all came through the swarm"
    );
    let page = weightcast_testkit::cluster::http_get(&sched_metrics, "/metrics").unwrap();
    assert_eq!(must_metric(&page, "weightcast_scheduler_hosts", ""), 5.0);
    assert_eq!(
        must_metric(&page, "weightcast_scheduler_seeds_triggered_total", ""),
        1.0
    );
    let uploaded: f64 = daemons
        .iter()
        .map(|d| must_metric(&c.metrics(d).unwrap(), "weightcast_upload_bytes_total", ""))
        .sum();
    assert!(uploaded > 0.0, "daemons served each other");
}

/// An origin serving a model of `size` bytes, a scheduler, and a seed
/// started with `seed_args`: the start of every swarm test.
struct Swarm {
    c: Cluster,
    size: u64,
    sha: String,
    url: String,
    origin_addr: String,
    sched: String,
    sched_metrics: String,
}

fn swarm(size: u64, seed_args: &[&str]) -> Swarm {
    let mut c = Cluster::new(BIN).unwrap();
    let (files, sha) = model(&c, size);
    let (origin, origin_addr) = c.origin(&files, Faults::default()).unwrap();
    let (sched, sched_metrics) = c.scheduler().unwrap();
    c.daemon("seed", &sched, true, seed_args).unwrap();
    Swarm {
        c,
        size,
        sha,
        url: format!("{origin}/model.safetensors"),
        origin_addr,
        sched,
        sched_metrics,
    }
}

/// A 64 MiB swarm whose seed's origin rate limit keeps a download going long
/// enough to interfere with it.
fn slow_seed_swarm() -> (Cluster, u64, String, String, String) {
    let s = swarm(64 * MIB, &["--origin-rate-limit", "16MB/s"]);
    (s.c, s.size, s.sha, s.url, s.sched)
}

#[test]
fn a_parent_killed_mid_download_does_not_stop_the_others() {
    let (mut c, size, sha, url, sched) = slow_seed_swarm();
    let daemons: Vec<Daemon> = (0..3)
        .map(|i| c.daemon(&format!("node{i}"), &sched, false, &[]).unwrap())
        .collect();
    let mut gets: Vec<(Child, std::path::PathBuf)> = daemons
        .iter()
        .map(|d| {
            let out = c.path(&format!("out-{}/model.safetensors", d.name));
            (spawn_get(&c, d, &url, &out), out)
        })
        .collect();
    wait_downloaded(&c, &daemons[0], 12 * MIB);
    c.proc(daemons[0].proc).kill();
    let (mut killed_get, killed_out) = gets.remove(0);
    for (child, out) in gets {
        let s = summary(&child.wait_with_output().unwrap());
        assert_eq!(s["bytes"], size);
        assert_eq!(sha256_file(&out).unwrap(), sha);
    }
    // The killed daemon's client fails; it never leaves a partial output.
    assert!(!killed_get.wait().unwrap().success());
    assert!(!killed_out.exists());
}

/// A daemon stopped mid-download, by SIGTERM (it drains and exits 0) or
/// SIGKILL, resumes after a restart and fetches only what it lacked.
#[test]
fn a_restarted_daemon_resumes_and_fetches_only_what_it_lacked() {
    for graceful in [true, false] {
        let (mut c, size, sha, url, sched) = slow_seed_swarm();
        let d = c.daemon("node", &sched, false, &[]).unwrap();
        let out = c.path("out/model.safetensors");
        let mut first = spawn_get(&c, &d, &url, &out);
        wait_downloaded(&c, &d, 16 * MIB);
        if graceful {
            let status = c.proc(d.proc).terminate(Duration::from_secs(20)).unwrap();
            assert!(
                status.is_some_and(|s| s.success()),
                "SIGTERM: the daemon drains and exits 0, got {status:?}:\n{}",
                c.logs()
            );
        } else {
            c.proc(d.proc).kill();
        }
        assert!(!first.wait().unwrap().success());
        assert!(!out.exists(), "no partial output");
        let data_dir = d.data_dir.clone();
        let d = c.daemon_in("node", &data_dir, &sched, false, &[]).unwrap();
        let s = summary(&spawn_get(&c, &d, &url, &out).wait_with_output().unwrap());
        assert_eq!(sha256_file(&out).unwrap(), sha);
        let resumed = s["from_cache"].as_u64().unwrap();
        let fetched = s["from_peers"].as_u64().unwrap() + s["from_origin"].as_u64().unwrap();
        assert!(resumed >= 12 * MIB, "resumed only {resumed} bytes");
        assert_eq!(resumed + fetched, size, "nothing fetched twice: {s}");
        assert_eq!(
            downloaded(&c, &d),
            fetched as f64,
            "the restarted daemon downloaded only the missing pieces"
        );
    }
}

fn get(c: &Cluster, args: &[&str], data_dir: &str) -> Output {
    std::process::Command::new(BIN)
        .arg("get")
        .args(args)
        .arg("--data-dir")
        .arg(c.path(data_dir))
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

/// A failed command printed exactly one line, an error.
fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(
        err.lines().count(),
        1,
        "expected one error line, got:\n{err}"
    );
    assert!(err.starts_with("error: "), "{err}");
    err
}

#[test]
fn bad_input_fails_with_one_clear_line_and_writes_nothing() {
    let mut c = Cluster::new(BIN).unwrap();
    let (files, sha) = model(&c, 5 * MIB);
    let (origin, _) = c.origin(&files, Faults::default()).unwrap();
    let out = c.path("out/model.safetensors");
    let out_s = out.to_str().unwrap();

    let model_url = format!("{origin}/model.safetensors");
    let missing_url = format!("{origin}/missing.bin");
    let wrong = format!("sha256:{}", "0".repeat(64));
    // (extra arguments after `URL -o OUT`, data dir, what the error must say)
    let cases: [(&str, &[&str], &str, &str); 5] = [
        ("ftp://x/y", &[], "d1", "invalid URL"),
        (&missing_url, &[], "d2", "404"),
        (&model_url, &["--digest", &wrong], "d3", "digest mismatch"),
        (&model_url, &["--digest", "sha256:xyz"], "d3", "--digest"),
        (
            &model_url,
            &["--daemon", "/nonexistent.sock"],
            "d4",
            "no weightcast daemon",
        ),
    ];
    for (url, extra, data_dir, says) in cases {
        let args = [&[url, "-o", out_s][..], extra].concat();
        let e = one_line_error(&get(&c, &args, data_dir));
        assert!(e.contains(says), "{args:?}: {e}");
    }
    assert!(!out.exists(), "no output after a failure");

    // The right digest works, and a second get is a cache hit.
    let right = format!("sha256:{sha}");
    let args = [
        model_url.as_str(),
        "-o",
        out_s,
        "--digest",
        right.as_str(),
        "--json",
    ];
    let s = summary(&get(&c, &args, "d5"));
    assert_eq!(s["from_origin"], 5 * MIB);
    let s = summary(&get(&c, &args, "d5"));
    assert_eq!(s["from_cache"], 5 * MIB);
    assert_eq!(sha256_file(&out).unwrap(), sha);
}

#[test]
fn the_scheduler_names_an_address_it_cannot_take_and_stops_cleanly_on_sigterm() {
    let mut c = Cluster::new(BIN).unwrap();
    let (sched, sched_metrics) = c.scheduler().unwrap();
    let _daemon = c.daemon("node0", &sched, false, &[]).unwrap();
    let hosts = || {
        let page = weightcast_testkit::cluster::http_get(&sched_metrics, "/metrics").unwrap();
        must_metric(&page, "weightcast_scheduler_hosts", "")
    };
    let t0 = Instant::now();
    while hosts() < 1.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the daemon never connected"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A second scheduler on the same address says which address and flag.
    let addr = sched.trim_start_matches("http://");
    let out = std::process::Command::new(BIN)
        .args([
            "scheduler",
            "--listen",
            addr,
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let e = one_line_error(&out);
    assert!(
        e.contains(&format!("cannot listen on {addr} (--listen)")) && e.contains("in use"),
        "{e}"
    );
    // SIGTERM with a peer session open: a prompt, clean exit.
    let status = c
        .proc_named("scheduler")
        .unwrap()
        .terminate(Duration::from_secs(10))
        .unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "scheduler after SIGTERM: {status:?}\n{}",
        c.logs()
    );
}

#[test]
fn without_a_scheduler_get_falls_back_to_the_origin_unless_told_not_to() {
    let mut c = Cluster::new(BIN).unwrap();
    let (files, sha) = model(&c, 3 * MIB);
    let (origin, _) = c.origin(&files, Faults::default()).unwrap();
    let out = c.path("out.bin");
    let url = format!("{origin}/model.safetensors");
    let dead = "http://127.0.0.1:1";
    let o = get(
        &c,
        &[&url, "-o", out.to_str().unwrap(), "--scheduler", dead],
        "d1",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("scheduler unreachable"));
    assert_eq!(sha256_file(&out).unwrap(), sha);
    let e = one_line_error(&get(
        &c,
        &[
            &url,
            "-o",
            c.path("out2.bin").to_str().unwrap(),
            "--scheduler",
            dead,
            "--no-back-to-source",
        ],
        "d2",
    ));
    assert!(e.contains("unreachable"), "{e}");
    // The same setting from a config file.
    let conf = c.path("weightcast.env");
    let with_config = |out: &str, data_dir: &str| {
        let out = c.path(out);
        let args = [
            url.as_str(),
            "-o",
            out.to_str().unwrap(),
            "--config",
            conf.to_str().unwrap(),
        ];
        get(&c, &args, data_dir)
    };
    std::fs::write(&conf, format!("# test\nWEIGHTCAST_SCHEDULER={dead}\n")).unwrap();
    let o = with_config("out3.bin", "d3");
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("scheduler unreachable"));
    std::fs::write(&conf, "SCHEDULER=x\n").unwrap();
    let e = one_line_error(&with_config("out4.bin", "d4"));
    assert!(e.contains("weightcast.env:1"), "{e}");
}

#[test]
fn origin_throttling_is_retried_after_its_retry_after() {
    let mut c = Cluster::new(BIN).unwrap();
    let (files, sha) = model(&c, 2 * MIB);
    let (origin, addr) = c
        .origin(
            &files,
            Faults {
                fail_first: 2,
                ..Faults::default()
            },
        )
        .unwrap();
    let out = c.path("out.bin");
    let t0 = Instant::now();
    let s = summary(&get(
        &c,
        &[
            &format!("{origin}/model.safetensors"),
            "-o",
            out.to_str().unwrap(),
            "--json",
        ],
        "d",
    ));
    assert_eq!(s["bytes"], 2 * MIB);
    assert_eq!(sha256_file(&out).unwrap(), sha);
    assert_eq!(origin_stats(&addr).unwrap().refused_on_purpose, 2);
    // Two 503s with Retry-After: 1 each mean at least two seconds of waiting.
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "Retry-After was not honoured"
    );
}

#[test]
fn a_peer_serving_corrupt_pieces_is_dropped_and_reported() {
    use std::os::unix::fs::FileExt;
    let Swarm {
        mut c,
        size,
        sha,
        url,
        sched,
        sched_metrics,
        ..
    } = swarm(16 * MIB, &[]);
    let bad = c.daemon("bad", &sched, false, &[]).unwrap();
    summary(
        &spawn_get(&c, &bad, &url, &c.path("bad-out.bin"))
            .wait_with_output()
            .unwrap(),
    );
    // Flip bytes in every piece of `bad`'s cache file; it still claims them.
    let task_dir = std::fs::read_dir(bad.data_dir.join("tasks"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(task_dir.join("data"))
        .unwrap();
    let piece_size = weightcast_types::piece::PieceLayout::for_length(size).piece_size;
    for piece in 0..(size / piece_size) {
        f.write_at(b"corrupt!", piece * piece_size + 100).unwrap();
    }
    drop(f);
    // `good` prefers the non-seed parent first, so it meets the bad pieces.
    let good = c.daemon("good", &sched, false, &[]).unwrap();
    let out = c.path("good-out.bin");
    summary(&spawn_get(&c, &good, &url, &out).wait_with_output().unwrap());
    assert_eq!(
        sha256_file(&out).unwrap(),
        sha,
        "only verified bytes reach the output"
    );
    let m = c.metrics(&good).unwrap();
    assert!(
        must_metric(&m, "weightcast_digest_mismatches_total", "") >= 1.0,
        "{m}"
    );
    let page = weightcast_testkit::cluster::http_get(&sched_metrics, "/metrics").unwrap();
    assert!(
        must_metric(&page, "weightcast_scheduler_piece_failures_total", "") >= 1.0,
        "the bad parent was reported"
    );
}

/// An output is a file of its own: what a user does to it (truncate it,
/// overwrite bytes in it) neither crashes the daemon that placed it (a
/// truncated shared mapping would SIGBUS) nor changes what it serves.
#[test]
fn a_user_truncating_or_editing_an_output_changes_nothing_its_daemon_serves() {
    use std::os::unix::fs::FileExt;
    let Swarm {
        mut c,
        size,
        sha,
        url,
        origin_addr,
        sched,
        ..
    } = swarm(16 * MIB, &[]);
    let first = c.daemon("first", &sched, false, &[]).unwrap();
    let out = c.path("first-out/model.safetensors");
    let s = summary(
        &spawn_get(&c, &first, &url, &out)
            .wait_with_output()
            .unwrap(),
    );
    assert_eq!(sha256_file(&out).unwrap(), sha);
    let placement = s["placement"].as_str().unwrap_or_default().to_string();
    assert!(
        placement == "copy" || placement == "reflink",
        "placed as {placement:?}: {s}"
    );
    let served_by_origin = origin_stats(&origin_addr).unwrap().bytes_served;
    // The seed goes: `first`, complete, is the only one left to serve.
    c.proc_named("seed").unwrap().kill();
    let uploaded = |c: &Cluster| {
        must_metric(
            &c.metrics(&first).unwrap(),
            "weightcast_upload_bytes_total",
            "",
        )
    };
    let fetch_from_first = |c: &mut Cluster, name: &str| {
        let before = uploaded(c);
        let d = c.daemon(name, &sched, false, &[]).unwrap();
        let child_out = c.path(&format!("{name}-out.bin"));
        let s = summary(
            &spawn_get(c, &d, &url, &child_out)
                .wait_with_output()
                .unwrap(),
        );
        assert_eq!(sha256_file(&child_out).unwrap(), sha, "{name}'s copy");
        assert_eq!(s["from_peers"], size, "{name}: {s}");
        let m = c.metrics(&d).unwrap();
        assert_eq!(
            must_metric(&m, "weightcast_digest_mismatches_total", ""),
            0.0,
            "{name} got only good pieces: {m}"
        );
        let served = uploaded(c) - before;
        eprintln!("first served {served} bytes to {name}");
        assert!(
            served >= size as f64,
            "first served {name} only {served} bytes"
        );
        c.proc(d.proc).kill();
    };

    // 1. The user truncates the output to nothing.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&out)
        .unwrap()
        .set_len(0)
        .unwrap();
    fetch_from_first(&mut c, "second");
    assert!(c.proc(first.proc).is_running(), "{}", c.logs());

    // 2. `first` places the file again (a cache hit), and the user
    //    overwrites bytes in every piece of it.
    let s = summary(
        &spawn_get(&c, &first, &url, &out)
            .wait_with_output()
            .unwrap(),
    );
    assert_eq!(s["from_cache"], size, "{s}");
    assert_eq!(sha256_file(&out).unwrap(), sha);
    let f = std::fs::OpenOptions::new().write(true).open(&out).unwrap();
    let piece_size = weightcast_types::piece::PieceLayout::for_length(size).piece_size;
    for piece in 0..(size / piece_size) {
        f.write_at(b"edited by the user", piece * piece_size + 100)
            .unwrap();
    }
    drop(f);
    assert_ne!(sha256_file(&out).unwrap(), sha);
    fetch_from_first(&mut c, "third");

    assert!(c.proc(first.proc).is_running(), "{}", c.logs());
    assert!(c.metrics(&first).is_ok(), "first still answers");
    assert_eq!(
        origin_stats(&origin_addr).unwrap().bytes_served,
        served_by_origin,
        "the children's bytes all came from the swarm"
    );
}
