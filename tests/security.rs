//! End-to-end security: real daemons and `get` runs, a non-root client
//! against a root daemon's socket, a bounded cache.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use weightcast_testkit::cluster::{sha256_file, Cluster, Daemon, Faults};

const BIN: &str = env!("CARGO_BIN_EXE_weightcast");
const NOBODY: u32 = 65534;
const MIB: u64 = 1 << 20;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Files of `size` bytes named `names` under `<cluster>/files`.
fn files(c: &Cluster, names: &[&str], size: u64) -> PathBuf {
    let dir = c.path("files");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, n) in names.iter().enumerate() {
        let bytes: Vec<u8> = (0..size)
            .map(|b| (b as u8) ^ (i as u8).wrapping_mul(37))
            .collect();
        std::fs::write(dir.join(n), bytes).unwrap();
    }
    dir
}

/// `weightcast get` through `daemon`'s socket, as `uid` (0: root).
fn get_as(uid: u32, d: &Daemon, url: &str, out: &Path, extra: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.args(["get", url, "--json", "--daemon"])
        .arg(&d.ready.socket)
        .arg("-o")
        .arg(out)
        .args(extra)
        .env("NO_COLOR", "1")
        .env("HOME", "/nonexistent")
        .stdin(Stdio::null());
    if uid != 0 {
        c.uid(uid).gid(uid);
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_non_root_client_cannot_make_the_daemon_write_where_it_could_not() {
    let mut c = Cluster::new(BIN).unwrap();
    // Others must be able to reach the socket and the cache files.
    chmod(c.dir.path(), 0o755);
    let dir = files(&c, &["model.bin"], 3 * MIB + 11);
    let sha = sha256_file(&dir.join("model.bin")).unwrap();
    let (origin, _) = c.origin(&dir, Faults::default()).unwrap();
    let url = format!("{origin}/model.bin");
    let roots = c.path("roots");
    std::fs::create_dir_all(&roots).unwrap();
    chmod(&roots, 0o755);
    let d = c
        .daemon(
            "node",
            "",
            false,
            &["--output-root", roots.to_str().unwrap()],
        )
        .unwrap();
    // The node's admin opened the socket to its users.
    chmod(&d.ready.socket, 0o666);

    // A directory of nobody's under the root, one of root's, one outside.
    let mine = roots.join("nobody");
    std::fs::create_dir(&mine).unwrap();
    std::os::unix::fs::chown(&mine, Some(NOBODY), Some(NOBODY)).unwrap();
    let roots_dir = roots.join("root-owned");
    std::fs::create_dir(&roots_dir).unwrap();
    chmod(&roots_dir, 0o755);
    let outside = c.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    chmod(&outside, 0o777);
    // nobody's own symlink into root's directory.
    std::os::unix::fs::symlink(&roots_dir, mine.join("sneaky")).unwrap();

    let daemon_places = ["--daemon-places"];
    // Into root's directory: refused before anything is fetched.
    let o = get_as(
        NOBODY,
        &d,
        &url,
        &roots_dir.join("model.bin"),
        &daemon_places,
    );
    assert!(
        !o.status.success(),
        "nobody made the daemon write into root's directory"
    );
    assert!(stderr(&o).contains("may not write"), "{}", stderr(&o));
    assert!(!roots_dir.join("model.bin").exists());
    // Through a symlink of its own into root's directory: the same.
    let o = get_as(
        NOBODY,
        &d,
        &url,
        &mine.join("sneaky/model.bin"),
        &daemon_places,
    );
    assert!(!o.status.success(), "{}", stderr(&o));
    assert!(!roots_dir.join("model.bin").exists());
    // A world-writable directory outside the roots: refused for nobody and
    // for root alike (a root init container with the socket mounted).
    for uid in [NOBODY, 0] {
        let o = get_as(uid, &d, &url, &outside.join("model.bin"), &daemon_places);
        assert!(!o.status.success(), "uid {uid}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("outside this daemon's output roots"),
            "{}",
            stderr(&o)
        );
        assert!(!outside.join("model.bin").exists());
    }
    // Into its own directory: placed, and the file is nobody's.
    let out = mine.join("model.bin");
    let o = get_as(NOBODY, &d, &url, &out, &daemon_places);
    c.assert_ok("get --daemon-places as nobody", &o);
    assert_eq!(sha256_file(&out).unwrap(), sha);
    let meta = std::fs::metadata(&out).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (NOBODY, NOBODY));

    // The default `get` places the file itself, as the calling user: into
    // its own directory it works, into root's the kernel says no.
    let out = mine.join("client-placed.bin");
    let o = get_as(NOBODY, &d, &url, &out, &[]);
    c.assert_ok("get as nobody", &o);
    assert_eq!(sha256_file(&out).unwrap(), sha);
    assert_eq!(std::fs::metadata(&out).unwrap().uid(), NOBODY);
    let o = get_as(NOBODY, &d, &url, &roots_dir.join("client.bin"), &[]);
    assert!(!o.status.success());
    assert!(!roots_dir.join("client.bin").exists());
}

#[test]
fn a_daemon_without_output_roots_places_nothing_itself_and_get_still_works() {
    let mut c = Cluster::new(BIN).unwrap();
    let dir = files(&c, &["a.bin"], MIB + 5);
    let sha = sha256_file(&dir.join("a.bin")).unwrap();
    let (origin, _) = c.origin(&dir, Faults::default()).unwrap();
    let url = format!("{origin}/a.bin");
    let d = c.daemon("node", "", false, &[]).unwrap();
    let out = c.path("out/a.bin");
    let o = get_as(0, &d, &url, &out, &["--daemon-places"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no --output-root"), "{}", stderr(&o));
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let o = get_as(0, &d, &url, &out, &[]);
    c.assert_ok("get", &o);
    assert_eq!(sha256_file(&out).unwrap(), sha);
}

/// The bytes the task data files under `data_dir` hold.
fn cache_bytes(data_dir: &Path) -> u64 {
    let Ok(dirs) = std::fs::read_dir(data_dir.join("tasks")) else {
        return 0;
    };
    dirs.filter_map(|d| std::fs::metadata(d.ok()?.path().join("data")).ok())
        .map(|m| m.len())
        .sum()
}

#[test]
fn a_full_cache_evicts_the_least_recently_used_and_keeps_serving() {
    let mut c = Cluster::new(BIN).unwrap();
    let names: Vec<String> = (0..8).map(|i| format!("f{i}.bin")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let size = 3 * MIB;
    let dir = files(&c, &refs, size);
    let (origin, _) = c.origin(&dir, Faults::default()).unwrap();
    let bound = 10 * MIB;
    let d = c
        .daemon(
            "node",
            "",
            false,
            &["--cache-size", "10MiB", "--cache-gc-interval", "1s"],
        )
        .unwrap();
    let out = c.path("out");
    std::fs::create_dir_all(&out).unwrap();
    // f0 is pinned: it stays whatever comes after.
    let mut peak = 0;
    for (i, n) in names.iter().enumerate() {
        let pin: &[&str] = if i == 0 { &["--pin"] } else { &[] };
        let o = get_as(0, &d, &format!("{origin}/{n}"), &out.join(n), pin);
        c.assert_ok(&format!("get {n}"), &o);
        assert_eq!(
            sha256_file(&out.join(n)).unwrap(),
            sha256_file(&dir.join(n)).unwrap()
        );
        peak = peak.max(cache_bytes(&d.data_dir));
        assert!(
            cache_bytes(&d.data_dir) <= bound,
            "after {n}: {} bytes in a {bound}-byte cache",
            cache_bytes(&d.data_dir)
        );
    }
    let ls = Command::new(BIN)
        .args(["cache", "ls", "--json", "--daemon"])
        .arg(&d.ready.socket)
        .output()
        .unwrap();
    c.assert_ok("cache ls", &ls);
    let report: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    let entries = report["entries"].as_array().unwrap();
    let urls: Vec<&str> = entries.iter().map(|e| e["url"].as_str().unwrap()).collect();
    assert!(
        urls.iter().any(|u| u.ends_with("/f0.bin")),
        "the pinned task stays: {urls:?}"
    );
    assert!(
        urls.iter().any(|u| u.ends_with("/f7.bin")),
        "the newest stays: {urls:?}"
    );
    assert!(
        !urls.iter().any(|u| u.ends_with("/f1.bin")),
        "the oldest unpinned went: {urls:?}"
    );
    let page = c.metrics(&d).unwrap();
    let evictions =
        weightcast_testkit::cluster::must_metric(&page, "weightcast_cache_evictions_total", "");
    assert!(evictions >= 4.0, "{evictions} evictions");
    // An evicted file is fetched again, and the cache still holds its bound.
    let o = get_as(
        0,
        &d,
        &format!("{origin}/f1.bin"),
        &out.join("again.bin"),
        &[],
    );
    c.assert_ok("get f1 again", &o);
    assert!(cache_bytes(&d.data_dir) <= bound);
    // cache rm removes even the pinned task; gc runs.
    let rm = Command::new(BIN)
        .args([
            "cache",
            "rm",
            &format!("{origin}/f0.bin"),
            "--json",
            "--daemon",
        ])
        .arg(&d.ready.socket)
        .output()
        .unwrap();
    c.assert_ok("cache rm", &rm);
    let r: serde_json::Value = serde_json::from_slice(&rm.stdout).unwrap();
    assert_eq!(r["evicted"].as_array().unwrap().len(), 1, "{r}");
    let gc = Command::new(BIN)
        .args(["cache", "gc", "--daemon"])
        .arg(&d.ready.socket)
        .output()
        .unwrap();
    c.assert_ok("cache gc", &gc);
    // A file larger than the whole cache is refused, clearly.
    std::fs::write(dir.join("huge.bin"), vec![1u8; (11 * MIB) as usize]).unwrap();
    let o = get_as(
        0,
        &d,
        &format!("{origin}/huge.bin"),
        &out.join("huge.bin"),
        &[],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--cache-size"), "{}", stderr(&o));
    eprintln!(
        "cache figures: 9 downloads of 3 MiB through a 10 MiB cache, peak {peak} bytes on disk, {evictions} evictions"
    );
}
