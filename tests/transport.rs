//! `--transport` on a machine without RDMA (the development and CI hosts:
//! their kernel has no RDMA at all). The RDMA path itself is tested with real
//! verbs in the soft-RoCE VM (`scripts/rdma-vm-test`, part of `--slow`).

use std::process::Command;
use weightcast_testkit::cluster::{metric, Cluster};

const BIN: &str = env!("CARGO_BIN_EXE_weightcast");

/// True where this host has an RDMA device: these tests are about hosts
/// without one.
fn host_has_rdma() -> bool {
    std::fs::read_dir("/sys/class/infiniband").is_ok_and(|mut d| d.next().is_some())
}

#[test]
fn transport_rdma_without_a_device_is_a_start_up_error() {
    if host_has_rdma() {
        eprintln!("this host has an RDMA device: nothing to check here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["daemon", "--transport", "rdma", "--listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--transport rdma"), "{err}");
    let bad = Command::new(BIN)
        .args([
            "get",
            "http://127.0.0.1:1/x",
            "-o",
            "/dev/null",
            "--transport",
            "ib",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected auto, rdma or tcp"));
}

#[test]
fn auto_without_a_device_starts_quietly_on_tcp() {
    if host_has_rdma() {
        eprintln!("this host has an RDMA device: nothing to check here");
        return;
    }
    let mut c = Cluster::new(BIN).unwrap();
    let (sched, _) = c.scheduler().unwrap();
    let d = c.daemon("node", &sched, false, &[]).unwrap();
    let page = c.metrics(&d).unwrap();
    assert_eq!(metric(&page, "weightcast_rdma_enabled", ""), 0.0);
    let log = std::fs::read_to_string(c.path("node.log")).unwrap();
    assert!(
        !log.contains("WARN") && !log.contains("ERROR"),
        "no RDMA is not worth a warning:\n{log}"
    );
}
