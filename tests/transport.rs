//! `--transport` as a host's RDMA hardware allows. The development and CI
//! hosts have no RDMA at all (their kernel lacks it), so the no-device
//! branches are what runs here; the RDMA path itself is tested with real
//! verbs in the soft-RoCE VM (`scripts/rdma-vm-test`, part of `--slow`).
//! On a host with a device each test checks the other side instead.

use std::process::Command;
use weightcast_testkit::cluster::{must_metric, Cluster};

const BIN: &str = env!("CARGO_BIN_EXE_weightcast");

/// True where this host has an RDMA device.
fn host_has_rdma() -> bool {
    std::fs::read_dir("/sys/class/infiniband").is_ok_and(|mut d| d.next().is_some())
}

#[test]
fn transport_rdma_needs_a_device_and_bad_names_are_refused() {
    let bad = Command::new(BIN)
        .args(["get", "http://127.0.0.1:1/x", "-o", "/dev/null"])
        .args(["--transport", "ib"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected auto, rdma or tcp"));

    let mut c = Cluster::new(BIN).unwrap();
    let (sched, _) = c.scheduler().unwrap();
    if host_has_rdma() {
        let d = c
            .daemon("node", &sched, false, &["--transport", "rdma"])
            .unwrap();
        let page = c.metrics(&d).unwrap();
        assert_eq!(must_metric(&page, "weightcast_rdma_enabled", ""), 1.0);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["daemon", "--transport", "rdma", "--listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0", "--scheduler", &sched])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--transport rdma"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn auto_uses_rdma_where_there_is_a_device_and_starts_quietly_on_tcp_where_not() {
    let mut c = Cluster::new(BIN).unwrap();
    let (sched, _) = c.scheduler().unwrap();
    let d = c.daemon("node", &sched, false, &[]).unwrap();
    let page = c.metrics(&d).unwrap();
    let enabled = must_metric(&page, "weightcast_rdma_enabled", "");
    if host_has_rdma() {
        assert_eq!(enabled, 1.0, "auto opens the device");
        return;
    }
    assert_eq!(enabled, 0.0);
    let log = std::fs::read_to_string(c.path("node.log")).unwrap();
    assert!(
        !log.contains("WARN") && !log.contains("ERROR"),
        "no RDMA is not worth a warning:\n{log}"
    );
}
