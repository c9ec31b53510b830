//! End-to-end, the manager's web console in a real browser: Debian's
//! headless Chromium driven over WebDriver (chromedriver, `fantoccini`),
//! against a real manager, scheduler, seed and daemons. It signs in,
//! creates a preheat from the form and watches it reach SUCCESS with a row
//! per peer, watches a running download's progress bar move on the
//! rollout view, evicts a task and sees it gone, and creates a token that
//! is shown once. Screenshots of the pages go to `docs/`.
//!
//! Also here: every metric the Grafana dashboard (`deploy/grafana/`)
//! queries exists on a running daemon, scheduler or manager.

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weightcast_modelpack::safetensors_gen;
use weightcast_testkit::cluster::{http_get, sha256_file, Cluster, Daemon, Faults, Place};

const BIN: &str = env!("CARGO_BIN_EXE_weightcast");
const MIB: u64 = 1 << 20;
const PASSWORD: &str = "console-s3cret-pw";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A swarm registered with a manager: one scheduler, a seed whose origin
/// rate limit keeps a big download going for seconds, and `nodes` daemons.
struct Fleet {
    c: Cluster,
    manager: String,
    scheduler_metrics: String,
    origin: String,
    nodes: Vec<Daemon>,
    seed: Daemon,
}

fn fleet(nodes: usize, scheduler_extra: &[&str]) -> Fleet {
    let mut c = Cluster::new(BIN).unwrap();
    let files = c.path("files");
    std::fs::create_dir_all(&files).unwrap();
    safetensors_gen::write(&files.join("small.safetensors"), 3 * MIB + 11, 3).unwrap();
    safetensors_gen::write(&files.join("big.safetensors"), 64 * MIB, 5).unwrap();
    let (origin, origin_addr) = c.origin(&files, Faults::default()).unwrap();
    let manager = c
        .manager(
            "manager",
            &["--keepalive-ttl", "5", "--root-password", PASSWORD],
        )
        .unwrap();
    let budget = scheduler_extra
        .iter()
        .map(|a| a.replace("ORIGIN", &origin_addr))
        .collect::<Vec<_>>();
    let mut sched_args = vec![
        "--manager",
        manager.as_str(),
        "--cluster",
        "gpu-a",
        "--keepalive-interval",
        "1",
    ];
    sched_args.extend(budget.iter().map(String::as_str));
    let (_, scheduler_metrics) = c
        .scheduler_named(&Place::loopback(), "scheduler", &sched_args)
        .unwrap();
    let m = [
        "--manager",
        manager.as_str(),
        "--cluster",
        "gpu-a",
        "--manager-refresh",
        "1",
    ];
    let seed_args = [&m[..], &["--origin-rate-limit", "12MB/s"]].concat();
    let seed = c.daemon("seed", "", true, &seed_args).unwrap();
    let nodes = (0..nodes)
        .map(|i| c.daemon(&format!("node{i}"), "", false, &m).unwrap())
        .collect();
    Fleet {
        c,
        manager,
        scheduler_metrics,
        origin,
        nodes,
        seed,
    }
}

/// chromedriver on a free port, stopped on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromedriver(log: &Path) -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .arg(format!("--log-path={}", log.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (scripts/setup-browser installs it)");
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "chromedriver did not listen"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Driver { child, port }
}

async fn browser(d: &Driver, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--force-device-scale-factor=1",
                "--window-size=1280,800",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::native()
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", d.port))
        .await
        .expect("a Chromium session through chromedriver")
}

/// Clicks the element `at` names.
async fn click(b: &Client, at: Locator<'_>) {
    b.find(at).await.unwrap().click().await.unwrap();
}

/// Types `keys` into the element `at` names.
async fn type_into(b: &Client, at: Locator<'_>, keys: &str) {
    b.find(at).await.unwrap().send_keys(keys).await.unwrap();
}

/// The text of `css`. Live updates replace parts of the page, so an
/// element found may be gone when read: find it again (for up to 5 s).
async fn text(b: &Client, css: &str) -> String {
    let t0 = Instant::now();
    loop {
        match text_of(b, css).await {
            Some(t) => return t,
            None if t0.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            None => panic!("the page has no readable {css}"),
        }
    }
}

/// The text of `css`, or `None` while the page does not have it.
async fn text_of(b: &Client, css: &str) -> Option<String> {
    b.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

/// Waits (up to `secs`) until `check` holds on the page, re-reading it.
async fn until<F, Fut>(what: &str, secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while !check().await {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn count(b: &Client, css: &str) -> usize {
    b.find_all(Locator::Css(css))
        .await
        .map(|v| v.len())
        .unwrap_or(0)
}

async fn screenshot(b: &Client, width: u32, height: u32, name: &str) {
    b.set_window_size(width, height).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let png = b.screenshot().await.unwrap();
    let out = root().join("docs").join(name);
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, png).unwrap();
    b.set_window_size(1280, 800).await.unwrap();
}

fn query(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One raw HTTP request to the manager (for what the browser does not
/// show: status codes of refused requests).
fn post(addr: &str, path: &str, cookie: Option<&str>, body: &str) -> (u16, String) {
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: wc_session={c}\r\n"));
    raw(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{cookie}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn raw(addr: &str, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (status, buf)
}

/// A plain test: the fleet is set up by testkit's blocking helpers (which
/// run their own runtimes), and only the browser session runs on tokio.
#[test]
fn the_console_in_chromium_preheats_shows_a_rollout_and_evicts() {
    let ok = Command::new(root().join("scripts/setup-browser"))
        .status()
        .expect("run scripts/setup-browser");
    assert!(ok.success(), "scripts/setup-browser failed");
    let f = fleet(2, &[]);
    let driver = chromedriver(&f.c.path("chromedriver.log"));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(walk_through_the_console(&f, &driver));
}

async fn walk_through_the_console(f: &Fleet, driver: &Driver) {
    let mgr = f.manager.clone();
    let mgr_addr = mgr.trim_start_matches("http://").to_string();
    let client = browser(driver, &f.c.path("chromium-profile")).await;
    let b = &client;

    // Nothing without a session: the console sends the browser to sign in.
    let (status, head) = raw(
        &mgr_addr,
        &format!("GET /clusters HTTP/1.1\r\nHost: {mgr_addr}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status, 303, "{head}");
    assert!(head.contains("location: /login"), "{head}");
    let (status, _) = post(&mgr_addr, "/tokens", None, "csrf=x&name=evil&scope_job=on");
    assert_eq!(status, 401, "a POST without a session");

    // Sign in (a wrong password first).
    b.goto(&format!("{mgr}/")).await.unwrap();
    assert!(b.current_url().await.unwrap().path().starts_with("/login"));
    type_into(b, Locator::Id("password"), "wrong-password").await;
    click(b, Locator::Css("form button[type=submit]")).await;
    until("the refusal", 10, || async move {
        b.source()
            .await
            .unwrap_or_default()
            .contains("Wrong user name or password")
    })
    .await;
    type_into(b, Locator::Id("password"), PASSWORD).await;
    click(b, Locator::Css("form button[type=submit]")).await;
    until("the clusters page", 10, || async move {
        b.current_url()
            .await
            .map(|u| u.path() == "/clusters")
            .unwrap_or(false)
    })
    .await;
    let cookie = b.get_named_cookie("wc_session").await.unwrap();
    assert_eq!(
        cookie.http_only(),
        Some(true),
        "the session cookie is HttpOnly"
    );

    // Clusters: the scheduler and the seed keep alive; three peers listed.
    until("3 peers on the clusters page", 30, || async move {
        let _ = b.refresh().await;
        count(b, "#peers tr.peer").await == 3
    })
    .await;
    let instances = text(b, "main").await;
    assert!(
        instances.contains("Cluster gpu-a")
            && instances.contains("Scheduler")
            && instances.contains("Seed peer"),
        "{instances}"
    );
    assert!(instances.contains("active"), "{instances}");
    screenshot(b, 1280, 800, "console-clusters.png").await;
    screenshot(b, 390, 844, "console-clusters-390.png").await;

    // A preheat from the form, to every peer, watched live to SUCCESS.
    let small = format!("{}/small.safetensors", f.origin);
    b.goto(&format!("{mgr}/jobs")).await.unwrap();
    type_into(b, Locator::Id("job-url"), &small).await;
    click(b, Locator::Css("#job-scope option[value=all_peers]")).await;
    click(b, Locator::Css("form.grid button[type=submit]")).await;
    until("the job page", 10, || async move {
        b.current_url()
            .await
            .map(|u| u.path().starts_with("/jobs/"))
            .unwrap_or(false)
    })
    .await;
    let t0 = Instant::now();
    until(
        "the preheat's SUCCESS (live, without a reload)",
        60,
        || async move { text_of(b, "#job-state").await.as_deref() == Some("SUCCESS") },
    )
    .await;
    eprintln!(
        "preheat from the console: SUCCESS after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let rows = count(b, "tr.peer-result[data-state=SUCCESS]").await;
    assert_eq!(rows, 3, "a SUCCESS row per peer (seed + 2 nodes)");
    screenshot(b, 1280, 800, "console-preheat.png").await;
    b.goto(&format!("{mgr}/jobs")).await.unwrap();
    assert_eq!(
        count(b, "#jobs tr.job").await,
        1,
        "the history lists the job"
    );

    // A running download's progress bar moves on the rollout view.
    let big = format!("{}/big.safetensors", f.origin);
    let out = f.c.path("big-out");
    let mut get =
        f.c.get_command(&f.nodes[0], &big, &out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
    b.goto(&format!("{mgr}/rollout?q={}", query(&big)))
        .await
        .unwrap();
    let mut seen = BTreeSet::new();
    let mut shot = false;
    let t0 = Instant::now();
    loop {
        for p in b
            .find_all(Locator::Css("tr.holder progress"))
            .await
            .unwrap_or_default()
        {
            if let Ok(Some(v)) = p.attr("value").await {
                seen.insert(v.parse::<u64>().unwrap_or(0));
            }
        }
        if !shot && seen.iter().filter(|v| **v > 0).count() >= 2 {
            screenshot(b, 1280, 800, "console-rollout.png").await;
            screenshot(b, 390, 844, "console-rollout-390.png").await;
            shot = true;
        }
        if get.try_wait().unwrap().is_some() && seen.iter().filter(|v| **v > 0).count() >= 3 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "the download did not finish: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(get.wait().unwrap().success(), "get of the big file");
    let distinct: Vec<u64> = seen.iter().copied().filter(|v| *v > 0).collect();
    eprintln!(
        "rollout view: {} distinct progress values seen without a reload",
        distinct.len()
    );
    assert!(distinct.len() >= 3, "the progress bar moved: {distinct:?}");
    until(
        "the rollout view showing the download complete",
        20,
        || async move {
            text_of(b, "#live")
                .await
                .is_some_and(|t| t.contains("peers complete") && !t.contains("fetching"))
        },
    )
    .await;

    // Where the bytes came from, and when each peer finished: the seed
    // fetched the one copy from the origin, node0 got it from peers.
    until(
        "the sources line and the completion plot",
        20,
        || async move { count(b, "svg#cdf[data-done='2']").await == 1 },
    )
    .await;
    let sources = b.find(Locator::Css("p.sources")).await.unwrap();
    let origin_bytes = sources.attr("data-origin-bytes").await.unwrap();
    let peer_bytes = sources.attr("data-peer-bytes").await.unwrap();
    assert_eq!(
        origin_bytes.as_deref(),
        Some("67108864"),
        "one copy from the origin"
    );
    assert_eq!(
        peer_bytes.as_deref(),
        Some("67108864"),
        "one copy from peers"
    );
    screenshot(b, 1280, 800, "console-rollout-done.png").await;

    // Tasks: who holds the preheated file; evict it (with a confirm); gone.
    b.goto(&format!("{mgr}/tasks?q={}", query(&small)))
        .await
        .unwrap();
    assert_eq!(
        count(b, "tr.holder").await,
        3,
        "3 holders of the preheated file"
    );
    click(b, Locator::Css("a.danger")).await;
    assert!(text(b, "main").await.contains("Evict from every cache?"));
    click(b, Locator::Id("confirm-evict")).await;
    until("the eviction's SUCCESS", 60, || async move {
        text_of(b, "#job-state").await.as_deref() == Some("SUCCESS")
    })
    .await;
    b.goto(&format!("{mgr}/tasks?q={}", query(&small)))
        .await
        .unwrap();
    assert!(text(b, "main").await.contains("No peer holds this task."));
    assert_eq!(count(b, "tr.holder").await, 0);

    // Tokens: shown once, then only its name.
    b.goto(&format!("{mgr}/tokens")).await.unwrap();
    type_into(b, Locator::Id("tok-name"), "harbor").await;
    click(b, Locator::Css("form.grid button[type=submit]")).await;
    // The submit navigates: wait for the new page, not the old one.
    let token = b
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("new-token"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(token.starts_with("wc_"), "{token}");
    let (status, _) = raw(
        &mgr_addr,
        &format!("GET /oapi/v1/clusters HTTP/1.1\r\nHost: {mgr_addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status, 403, "a job-scoped token may not list clusters");
    b.goto(&format!("{mgr}/tokens")).await.unwrap();
    assert!(
        !b.source().await.unwrap().contains(&token),
        "the token is never shown twice"
    );
    screenshot(b, 1280, 800, "console-tokens.png").await;
    click(b, Locator::Css("#tokens button.danger")).await;
    until("the revoked token", 10, || async move {
        text(b, "#tokens").await.contains("inactive")
    })
    .await;

    // A forged POST with the session cookie but without its CSRF token.
    let forged = post(
        &mgr_addr,
        "/tokens",
        Some(cookie.value()),
        "csrf=x&name=forged&scope_job=on",
    );
    assert_eq!(forged.0, 403, "CSRF check: {}", forged.1);
    client.close().await.unwrap();
    assert_eq!(
        sha256_file(&out).unwrap(),
        sha256_file(&f.c.path("files/big.safetensors")).unwrap()
    );
}

/// The metric names a Grafana dashboard's queries use.
fn dashboard_metrics(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = BTreeSet::new();
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, exprs: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    if k == "expr" {
                        if let Some(s) = x.as_str() {
                            exprs.push(s.to_string());
                        }
                    }
                    walk(x, exprs);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, exprs)),
            _ => {}
        }
    }
    walk(&v, &mut exprs);
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("weightcast_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            out.insert(name);
        }
    }
    out
}

fn exposed(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_metric_the_grafana_dashboard_queries_exists() {
    let wanted = dashboard_metrics(&root().join("deploy/grafana/weightcast.json"));
    assert!(
        wanted.len() >= 20,
        "the dashboard queries {} metrics",
        wanted.len()
    );
    // A scheduler-set origin budget, so that the budget gauge exists
    // while a download runs; scraped all along the download.
    let f = fleet(1, &["--origin-rate-limit", "ORIGIN=40MB/s"]);
    let mgr = f.manager.trim_start_matches("http://").to_string();
    let mut get =
        f.c.get_command(
            &f.nodes[0],
            &format!("{}/big.safetensors", f.origin),
            &f.c.path("o"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut have = BTreeSet::new();
    loop {
        let done = get.try_wait().unwrap().is_some();
        for text in [
            f.c.metrics(&f.nodes[0]).unwrap(),
            f.c.metrics(&f.seed).unwrap(),
            http_get(&f.scheduler_metrics, "/metrics").unwrap(),
            http_get(&mgr, "/metrics").unwrap(),
        ] {
            have.extend(exposed(&text));
        }
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(get.wait().unwrap().success(), "the get during the scrapes");
    let missing: Vec<&String> = wanted.iter().filter(|m| !have.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics nobody exposes: {missing:?}"
    );
    eprintln!("the dashboard's {} metrics all exist", wanted.len());
}
