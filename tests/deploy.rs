//! The Kubernetes examples in `deploy/kubernetes` parse, and every
//! `weightcast` command in them uses flags and environment variables that
//! exist (clap refuses an unknown flag even before `--help`).

use serde::Deserialize;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_weightcast");

fn weightcast_containers(doc: &serde_yaml::Value) -> Vec<serde_yaml::Value> {
    let spec = &doc["spec"]["template"]["spec"];
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| spec[*k].as_sequence())
        .flatten()
        .filter(|c| {
            c["image"]
                .as_str()
                .is_some_and(|i| i.contains("weightcast"))
        })
        .cloned()
        .collect()
}

#[test]
fn kubernetes_examples_parse_and_use_only_real_flags() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                doc["kind"].as_str().is_some(),
                "{}: a document without kind",
                path.display()
            );
            for c in weightcast_containers(&doc) {
                let args: Vec<String> = c["args"]
                    .as_sequence()
                    .expect("weightcast containers pass args")
                    .iter()
                    .map(|a| a.as_str().expect("string args").to_string())
                    .collect();
                let out = Command::new(BIN)
                    .args(&args)
                    .arg("--help")
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}: `weightcast {}` is refused: {}",
                    path.display(),
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
                let help = String::from_utf8_lossy(&out.stdout);
                for env in c["env"].as_sequence().into_iter().flatten() {
                    let name = env["name"].as_str().unwrap();
                    if name.starts_with("WEIGHTCAST_") {
                        assert!(
                            help.contains(name),
                            "{}: {name} is not a `weightcast {}` variable",
                            path.display(),
                            args[0]
                        );
                    }
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 4, "only {checked} weightcast containers found");
}
