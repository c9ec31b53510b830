//! End-to-end: who may fetch from the origin is the scheduler's decision.
//! Real processes on loopback: the test origin counts every byte it sends.

use std::path::PathBuf;
use std::process::{Child, Output};
use std::time::{Duration, Instant};
use weightcast_testkit::cluster::{
    assert_origin_sent_about_one_copy, metric, must_metric, origin_stats, sha256_file, Cluster,
    Daemon, Faults, Place,
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

fn spawn_get(c: &Cluster, d: &Daemon, url: &str, out: &std::path::Path) -> Child {
    c.get_command(d, url, out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn summary(c: &Cluster, out: &Output) -> serde_json::Value {
    c.assert_ok("get", out);
    serde_json::from_slice(&out.stdout).expect("get --json prints one JSON summary")
}

fn scheduler_metric(addr: &str, name: &str) -> f64 {
    let page = weightcast_testkit::cluster::http_get(addr, "/metrics").unwrap();
    must_metric(&page, name, "")
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Cloned machines all named `localhost`, with distinct addresses (here
/// 127.0.0.x, which Linux routes to loopback), the seed among them: one
/// swarm, and the origin sends about one copy.
#[test]
fn daemons_that_share_a_host_name_but_not_an_address_form_a_swarm() {
    let mut c = Cluster::new(BIN).unwrap();
    let size = 32 * MIB;
    let (files, sha) = model(&c, "model.safetensors", size, 11);
    let (origin, origin_addr) = c.origin(&files, Faults::default()).unwrap();
    let (sched, _) = c.scheduler().unwrap();
    let same = ["--hostname", "localhost"];
    c.daemon("seed", &sched, true, &same).unwrap();
    let daemons: Vec<Daemon> = (2..5)
        .map(|i| {
            let place = Place {
                ns: None,
                ip: format!("127.0.0.{i}"),
            };
            let name = format!("node{i}");
            let dir = c.path(&name);
            c.daemon_at(&place, &name, &dir, &sched, false, &same)
                .unwrap()
        })
        .collect();
    let url = format!("{origin}/model.safetensors");
    let gets: Vec<(Child, PathBuf)> = daemons
        .iter()
        .map(|d| {
            let out = c.path(&format!("out-{}/model.safetensors", d.name));
            (spawn_get(&c, d, &url, &out), out)
        })
        .collect();
    for (child, out) in gets {
        let s = summary(&c, &child.wait_with_output().unwrap());
        assert_eq!(sha256_file(&out).unwrap(), sha);
        assert_eq!(s["from_peers"], size, "every byte from the swarm: {s}");
    }
    assert_origin_sent_about_one_copy(&origin_addr, size, "the swarm formed");
}

/// A peer that stalls with its scheduler answering waits for a grant; with
/// the budget at 0 there is none, so it never fetches from the origin; a
/// seed that connects then takes the task over and the download ends.
#[test]
fn a_stalled_peer_with_a_reachable_scheduler_does_not_go_to_the_origin_without_a_grant() {
    let mut c = Cluster::new(BIN).unwrap();
    let size = 8 * MIB;
    let (files, sha) = model(&c, "model.safetensors", size, 12);
    let (origin, origin_addr) = c.origin(&files, Faults::default()).unwrap();
    let (sched, sched_metrics) = c.scheduler_with(&["--max-back-to-source", "0"]).unwrap();
    let d = c
        .daemon("node", &sched, false, &["--stall-timeout", "1"])
        .unwrap();
    let url = format!("{origin}/model.safetensors");
    let out = c.path("out/model.safetensors");
    let get = spawn_get(&c, &d, &url, &out);
    // It asks (more than once: every stall timeout) and is refused.
    wait_until("a refused request", Duration::from_secs(30), || {
        scheduler_metric(&sched_metrics, "weightcast_scheduler_source_requests_total") >= 2.0
    });
    assert_eq!(
        origin_stats(&origin_addr).unwrap().bytes_served,
        0,
        "nobody went to the origin without a grant"
    );
    assert!(scheduler_metric(&sched_metrics, "weightcast_scheduler_source_refusals_total") >= 2.0);
    assert_eq!(
        scheduler_metric(&sched_metrics, "weightcast_scheduler_source_grants_total"),
        0.0
    );
    // A seed arrives: it takes the orphaned task, and the peer finishes.
    c.daemon("seed", &sched, true, &[]).unwrap();
    let s = summary(&c, &get.wait_with_output().unwrap());
    assert_eq!(sha256_file(&out).unwrap(), sha);
    assert_eq!(s["from_origin"], 0, "{s}");
    assert_eq!(s["from_peers"], size, "{s}");
}

/// The seed dies mid-download: peers stall and ask; at most
/// `--max-back-to-source` of them fetch from the origin, and everyone ends
/// with the right file.
#[test]
fn max_back_to_source_bounds_how_many_peers_fetch_from_the_origin_when_the_seed_dies() {
    let mut c = Cluster::new(BIN).unwrap();
    let size = 48 * MIB;
    let (files, sha) = model(&c, "model.safetensors", size, 13);
    let (origin, _) = c.origin(&files, Faults::default()).unwrap();
    let (sched, sched_metrics) = c.scheduler_with(&["--max-back-to-source", "2"]).unwrap();
    let seed = c
        .daemon("seed", &sched, true, &["--origin-rate-limit", "8MB/s"])
        .unwrap();
    let daemons: Vec<Daemon> = (0..6)
        .map(|i| {
            c.daemon(
                &format!("node{i}"),
                &sched,
                false,
                &["--stall-timeout", "2"],
            )
            .unwrap()
        })
        .collect();
    let url = format!("{origin}/model.safetensors");
    let gets: Vec<(Child, PathBuf)> = daemons
        .iter()
        .map(|d| {
            let out = c.path(&format!("out-{}/model.safetensors", d.name));
            (spawn_get(&c, d, &url, &out), out)
        })
        .collect();
    let downloaded = |c: &Cluster, d: &Daemon| {
        c.metrics(d)
            .ok()
            .and_then(|p| metric(&p, "weightcast_download_bytes_total", ""))
            .unwrap_or(0.0)
    };
    wait_until("the swarm is under way", Duration::from_secs(60), || {
        downloaded(&c, &daemons[0]) >= (8 * MIB) as f64
    });
    c.proc(seed.proc).kill();
    let mut from_origin = Vec::new();
    for (child, out) in gets {
        let s = summary(&c, &child.wait_with_output().unwrap());
        assert_eq!(sha256_file(&out).unwrap(), sha);
        from_origin.push(s["from_origin"].as_u64().unwrap());
    }
    let went = from_origin.iter().filter(|b| **b > 0).count();
    assert!(
        went <= 2,
        "{went} peers fetched from the origin, the budget is 2: {from_origin:?}"
    );
    assert!(went >= 1, "someone had to fetch what the seed never sent");
    let grants = scheduler_metric(&sched_metrics, "weightcast_scheduler_source_grants_total");
    let back = scheduler_metric(&sched_metrics, "weightcast_scheduler_back_to_source_total");
    assert!(
        back <= 2.0,
        "{back} peers were sent to the origin ({grants} grants)"
    );
}

/// `scheduler --origin-rate-limit HOST=RATE`: the peers fetching from that
/// origin share RATE, each told its part, and together they stay within it.
#[test]
fn the_per_origin_budget_is_shared_by_the_seeds_and_holds() {
    let mut c = Cluster::new(BIN).unwrap();
    let size = 16 * MIB;
    let (files, _) = model(&c, "a.safetensors", size, 14);
    model(&c, "b.safetensors", size, 15);
    let (origin, origin_addr) = c.origin(&files, Faults::default()).unwrap();
    let rate = 8_000_000u64;
    let budget = format!("{origin_addr}={rate}");
    let (sched, _) = c.scheduler_with(&["--origin-rate-limit", &budget]).unwrap();
    let seeds: Vec<Daemon> = (0..2)
        .map(|i| c.daemon(&format!("seed{i}"), &sched, true, &[]).unwrap())
        .collect();
    let d = c.daemon("node", &sched, false, &[]).unwrap();
    let t0 = Instant::now();
    let gets: Vec<Child> = ["a", "b"]
        .iter()
        .map(|f| {
            let out = c.path(&format!("out/{f}.safetensors"));
            spawn_get(&c, &d, &format!("{origin}/{f}.safetensors"), &out)
        })
        .collect();
    // While both fetch, the shares add up to the budget.
    let shares = |c: &Cluster| -> f64 {
        seeds
            .iter()
            .filter_map(|s| {
                metric(
                    &c.metrics(s).ok()?,
                    "weightcast_origin_budget_bytes_per_second",
                    "",
                )
            })
            .sum()
    };
    wait_until(
        "the seeds got their shares",
        Duration::from_secs(30),
        || shares(&c) > 0.0,
    );
    let seen = shares(&c);
    assert!(
        seen <= rate as f64 + 1.0,
        "the shares told to the seeds add up to {seen}, over the budget {rate}"
    );
    for g in gets {
        c.assert_ok("get", &g.wait_with_output().unwrap());
    }
    let secs = t0.elapsed().as_secs_f64();
    let served = origin_stats(&origin_addr).unwrap().bytes_served as f64;
    // One second of burst is allowed by the token bucket.
    let allowed = rate as f64 * (secs + 1.0);
    assert!(
        served <= allowed,
        "the origin sent {served} bytes in {secs:.1} s; the budget allows {allowed}"
    );
}
