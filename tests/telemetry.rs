//! End-to-end: one `get` through a swarm is one OpenTelemetry trace with
//! spans from the client, the daemon, the scheduler and the seed. Real
//! processes on loopback export over OTLP/HTTP to a receiver that decodes
//! the exports with the OpenTelemetry project's own protobuf definitions
//! (`opentelemetry-proto`, installed by `scripts/setup-otel-receiver`).

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weightcast_testkit::cluster::{sha256_file, Cluster, Faults};

const BIN: &str = env!("CARGO_BIN_EXE_weightcast");
const MIB: u64 = 1 << 20;

/// The Python receiver, stopped on drop.
struct Receiver {
    child: Child,
    url: String,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn receiver(c: &Cluster, spans: &Path) -> Receiver {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ok = Command::new(root.join("scripts/setup-otel-receiver"))
        .status()
        .expect("run scripts/setup-otel-receiver");
    assert!(ok.success(), "scripts/setup-otel-receiver failed");
    let port_file = c.path("otlp.port");
    let child = Command::new(root.join("target/otel-receiver/bin/python"))
        .arg(root.join("testkit/python/otlp_receiver.py"))
        .arg(&port_file)
        .arg(spans)
        .stdout(Stdio::null())
        .spawn()
        .expect("the OTLP receiver");
    let t0 = Instant::now();
    let port = loop {
        if let Ok(p) = std::fs::read_to_string(&port_file) {
            break p.trim().to_string();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the OTLP receiver did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    Receiver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

fn read_spans(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn one_get_through_the_swarm_is_one_trace_across_four_processes() {
    let mut c = Cluster::new(BIN).unwrap();
    let files = c.path("files");
    std::fs::create_dir_all(&files).unwrap();
    let model = files.join("model.safetensors");
    weightcast_modelpack::safetensors_gen::write(&model, 24 * MIB, 9).unwrap();
    let spans_file = c.path("spans.jsonl");
    let rx = receiver(&c, &spans_file);
    let otlp = ["--otlp-endpoint", rx.url.as_str()];
    let (origin, _) = c.origin(&files, Faults::default()).unwrap();
    let (scheduler, _) = c
        .scheduler_named(
            &weightcast_testkit::cluster::Place::loopback(),
            "scheduler",
            &otlp,
        )
        .unwrap();
    let _seed = c.daemon("seed", &scheduler, true, &otlp).unwrap();
    let node = c.daemon("node", &scheduler, false, &otlp).unwrap();
    let out = c.path("out/model.safetensors");
    let url = format!("{origin}/model.safetensors");
    let got = c
        .get_command(&node, &url, &out)
        .args(otlp)
        .output()
        .unwrap();
    c.assert_ok("get", &got);
    assert_eq!(sha256_file(&out).unwrap(), sha256_file(&model).unwrap());

    // The client's root span names the trace; wait for every process's
    // spans of it (daemons export in batches, every few seconds).
    let t0 = Instant::now();
    let (trace, services, pids, names) = loop {
        let spans = read_spans(&spans_file);
        let root = spans
            .iter()
            .find(|s| s["name"] == "weightcast get" && s["parent_span_id"] == "");
        if let Some(root) = root {
            let trace = root["trace_id"].as_str().unwrap_or_default().to_string();
            let of_trace: Vec<&Value> = spans
                .iter()
                .filter(|s| s["trace_id"] == trace.as_str())
                .collect();
            let services: BTreeSet<String> = of_trace
                .iter()
                .filter_map(|s| s["service"].as_str().map(str::to_string))
                .collect();
            let pids: BTreeSet<i64> = of_trace.iter().filter_map(|s| s["pid"].as_i64()).collect();
            let mut names: BTreeMap<String, usize> = BTreeMap::new();
            for s in &of_trace {
                *names
                    .entry(s["name"].as_str().unwrap_or_default().to_string())
                    .or_default() += 1;
            }
            let done = pids.len() >= 4 && names.contains_key("origin fetch");
            if done || t0.elapsed() > Duration::from_secs(30) {
                break (trace, services, pids, names);
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no root span of the get arrived: {:?}",
            read_spans(&spans_file)
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!(
        "trace {trace}: services {services:?}, {} processes, spans {names:?}",
        pids.len()
    );
    for service in [
        "weightcast-get",
        "weightcast-daemon",
        "weightcast-scheduler",
    ] {
        assert!(
            services.contains(service),
            "no {service} span in the trace: {services:?}"
        );
    }
    // client, node daemon, scheduler, seed daemon
    assert!(
        pids.len() >= 4,
        "spans from {} processes: {names:?}",
        pids.len()
    );
    for name in [
        "get file",
        "daemon get",
        "download",
        "schedule task",
        "seed order",
        "origin fetch",
    ] {
        assert!(
            names.contains_key(name),
            "no {name:?} span in the trace: {names:?}"
        );
    }
    // Every span but the root has its parent in the same trace.
    let spans = read_spans(&spans_file);
    let of_trace: Vec<&Value> = spans
        .iter()
        .filter(|s| s["trace_id"] == trace.as_str())
        .collect();
    let ids: BTreeSet<&str> = of_trace
        .iter()
        .filter_map(|s| s["span_id"].as_str())
        .collect();
    let orphans: Vec<&&Value> = of_trace
        .iter()
        .filter(|s| {
            let p = s["parent_span_id"].as_str().unwrap_or_default();
            !p.is_empty() && !ids.contains(p)
        })
        .collect();
    assert!(
        orphans.is_empty(),
        "spans whose parent is not in the trace: {orphans:?}"
    );
}
