//! End-to-end, object storage: a real S3 server on loopback (moto, with
//! IAM users and SigV4 enforced) behind a proxy that counts what it
//! served, real `weightcast` processes (a scheduler, a seed, daemons with
//! `--s3-listen`), and the real AWS CLI and boto3 as clients, all installed
//! by `scripts/setup-s3-clients`.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use weightcast_modelpack::safetensors_gen;
use weightcast_testkit::cluster::{sha256_file, Cluster, Daemon, Place};
use weightcast_testkit::s3_store::S3Store;

const BIN: &str = env!("CARGO_BIN_EXE_weightcast");
const MIB: u64 = 1 << 20;
/// The key that clients of the daemons' S3 endpoints sign with.
const CLIENT_KEY: &str = "AKIAWEIGHTCASTCLIENT";
const CLIENT_SECRET: &str = "client/secret+key";

fn clients() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let ok = Command::new(root.join("scripts/setup-s3-clients"))
            .stdout(Stdio::null())
            .status()
            .expect("run scripts/setup-s3-clients");
        assert!(ok.success(), "scripts/setup-s3-clients failed");
        root.join("target/s3-clients")
    })
}

/// Makes the buckets `models` and `private`, the objects in `OBJECTS`
/// (JSON: bucket, key, file, sha256 checksum?, multipart?), and IAM users:
/// `reader` (get, head and list everywhere), `writer` (everything) and
/// `denied` (no policy). Prints their keys as JSON.
const SETUP: &str = r#"
import json, os, boto3
from boto3.s3.transfer import TransferConfig
kw = dict(endpoint_url=os.environ["MOTO_URL"], aws_access_key_id="setup",
          aws_secret_access_key="setup", region_name="us-east-1")
s3, iam = boto3.client("s3", **kw), boto3.client("iam", **kw)
for b in ["models", "private"]:
    s3.create_bucket(Bucket=b)
for o in json.loads(os.environ["OBJECTS"]):
    extra = {"ChecksumAlgorithm": "SHA256"} if o.get("sha256") else {}
    if o.get("multipart"):
        cfg = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
        s3.upload_file(o["file"], o["bucket"], o["key"], Config=cfg)
    elif o.get("file"):
        with open(o["file"], "rb") as f:
            s3.put_object(Bucket=o["bucket"], Key=o["key"], Body=f.read(), **extra)
    else:
        s3.put_object(Bucket=o["bucket"], Key=o["key"], Body=b"")
policies = {
    # moto (5.2 on) names a permission after the operation: HeadObject needs
    # s3:HeadObject (AWS: s3:GetObject), HeadBucket s3:HeadBucket (AWS:
    # s3:ListBucket). s3:Head* grants both on every moto 5.
    "reader": {"Effect": "Allow", "Action": ["s3:Get*", "s3:List*", "s3:Head*"], "Resource": "*"},
    "writer": {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
    "denied": None,
}
keys = {}
for user, statement in policies.items():
    iam.create_user(UserName=user)
    if statement:
        iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [statement]}))
    k = iam.create_access_key(UserName=user)["AccessKey"]
    keys[user] = [k["AccessKeyId"], k["SecretAccessKey"]]
print(json.dumps(keys))
"#;

/// One object of the store, and the file it was made from.
struct Object {
    bucket: &'static str,
    key: String,
    file: Option<PathBuf>,
    sha256: bool,
    multipart: bool,
}

struct Fixture {
    c: Cluster,
    store: S3Store,
    keys: BTreeMap<String, (String, String)>,
    objects: Vec<Object>,
}

impl Fixture {
    /// A store holding `objects`, with auth enforced.
    fn new(objects: Vec<Object>) -> Self {
        let c = Cluster::new(BIN).unwrap();
        let store = S3Store::start(clients(), &c.path("s3")).unwrap();
        let spec: Vec<Value> = objects
            .iter()
            .map(|o| {
                serde_json::json!({
                    "bucket": o.bucket, "key": o.key, "file": o.file,
                    "sha256": o.sha256, "multipart": o.multipart,
                })
            })
            .collect();
        let out = store
            .python(
                SETUP,
                &[("OBJECTS", &serde_json::to_string(&spec).unwrap())],
            )
            .unwrap();
        assert!(
            out.status.success(),
            "setup failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            store.log_text()
        );
        let keys: BTreeMap<String, (String, String)> =
            serde_json::from_slice(&out.stdout).expect("the setup prints the users' keys");
        store.enforce_auth().unwrap();
        Fixture {
            c,
            store,
            keys,
            objects,
        }
    }

    fn key(&self, user: &str) -> (&str, &str) {
        let (id, secret) = &self.keys[user];
        (id, secret)
    }

    /// The AWS environment of a weightcast process: `user`'s key (none
    /// for `None`), nothing from this machine's own AWS setup, and never
    /// the instance metadata service.
    fn aws_env(
        &self,
        user: Option<&str>,
        endpoint: Option<&str>,
    ) -> Vec<(&'static str, Option<String>)> {
        let (id, secret) = match user {
            Some(u) => {
                let (i, s) = self.key(u);
                (Some(i.to_string()), Some(s.to_string()))
            }
            None => (None, None),
        };
        vec![
            ("AWS_ACCESS_KEY_ID", id),
            ("AWS_SECRET_ACCESS_KEY", secret),
            ("AWS_SESSION_TOKEN", None),
            ("AWS_PROFILE", None),
            ("AWS_CONFIG_FILE", Some("/nonexistent/aws-config".into())),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                Some("/nonexistent/aws-credentials".into()),
            ),
            ("AWS_EC2_METADATA_DISABLED", Some("true".into())),
            ("AWS_REGION", Some("us-east-1".into())),
            ("AWS_ENDPOINT_URL", endpoint.map(str::to_string)),
            ("AWS_ENDPOINT_URL_S3", None),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", None),
            ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", None),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", None),
            ("AWS_SKIP_SIGNATURE", None),
        ]
    }

    fn daemon(&mut self, name: &str, sched: &str, seed: bool, user: Option<&str>) -> Daemon {
        let env = self.aws_env(user, None);
        let env: Vec<(&str, Option<&str>)> = env.iter().map(|(k, v)| (*k, v.as_deref())).collect();
        let upstream = self.store.url.clone();
        let access = format!("{CLIENT_KEY}:{CLIENT_SECRET}");
        let extra = [
            "--s3-listen",
            "127.0.0.1:0",
            "--s3-upstream",
            &upstream,
            "--s3-access-key",
            &access,
        ];
        let data_dir = self.c.path(name);
        self.c
            .daemon_with_env(
                &Place::loopback(),
                name,
                &data_dir,
                sched,
                seed,
                &extra,
                &env,
            )
            .unwrap()
    }

    /// `weightcast get URL ARGS` with `user`'s key and the store as
    /// `AWS_ENDPOINT_URL`.
    fn get(&self, user: Option<&str>, url: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(["get", url]).args(args);
        for (k, v) in self.aws_env(user, Some(&self.store.url)) {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.env("HOME", self.c.path("home"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// A client of a daemon's S3 endpoint (the AWS CLI, boto3): the
    /// endpoint's client key, nothing of this machine's AWS setup.
    fn client(&self, program: &Path, endpoint: &str, secret: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("AWS_ENDPOINT_URL", format!("http://{endpoint}"))
            .env("AWS_ACCESS_KEY_ID", CLIENT_KEY)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/aws-credentials",
            )
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env("HOME", self.c.path("home"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn ok(&self, what: &str, out: &Output) {
        assert!(
            out.status.success(),
            "{what} failed:\n{}\n{}\n{}\n--- moto ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.c.logs(),
            tail(&self.store.log_text())
        );
    }

    /// The objects under `bucket/prefix` that are files (not `dir/`
    /// markers), by their path below the prefix.
    fn files_under(&self, bucket: &str, prefix: &str) -> Vec<(String, &Path)> {
        self.objects
            .iter()
            .filter(|o| o.bucket == bucket && o.key.starts_with(prefix))
            .filter_map(|o| Some((o.key[prefix.len()..].to_string(), o.file.as_deref()?)))
            .collect()
    }

    /// Asserts that `dir` holds exactly the files under `bucket/prefix`.
    fn assert_tree(&self, dir: &Path, bucket: &str, prefix: &str) {
        let want = self.files_under(bucket, prefix);
        for (rel, src) in &want {
            let got = dir.join(rel);
            assert_eq!(
                sha256_file(&got).unwrap_or_else(|e| panic!("{}: {e}", got.display())),
                sha256_file(src).unwrap(),
                "{} differs from the stored object",
                got.display()
            );
        }
        let found = walk(dir);
        assert_eq!(found.len(), want.len(), "{}: {found:?}", dir.display());
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The files under `dir`, relative, sorted.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn object(bucket: &'static str, key: &str, file: Option<PathBuf>) -> Object {
    Object {
        bucket,
        key: key.into(),
        file,
        sha256: false,
        multipart: false,
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// `get`'s failure: exactly one line on stderr, starting with `error:`.
fn one_error_line(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "expected one line, got:\n{err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

/// Reads every page of `/models/llama/` through a daemon's endpoint, with
/// the calls Triton's S3 filesystem makes too (HeadBucket, a prefix
/// listing, HeadObject, GetObject), and downloads each object to `OUT`.
const BOTO3_CLIENT: &str = r#"
import hashlib, json, os, boto3
from botocore.exceptions import ClientError
s3 = boto3.client("s3")
out = os.environ["OUT"]
keys, token, pages = [], None, 0
while True:
    kw = dict(Bucket="models", Prefix="llama/", MaxKeys=2)
    if token:
        kw["ContinuationToken"] = token
    r = s3.list_objects_v2(**kw)
    pages += 1
    keys += [c["Key"] for c in r.get("Contents", [])]
    if not r["IsTruncated"]:
        break
    token = r["NextContinuationToken"]
top = s3.list_objects_v2(Bucket="models", Prefix="llama/", Delimiter="/")
s3.head_bucket(Bucket="models")
sizes = {}
for k in keys:
    if k.endswith("/"):
        continue
    sizes[k] = s3.head_object(Bucket="models", Key=k)["ContentLength"]
    dest = os.path.join(out, k[len("llama/"):])
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    s3.download_file("models", k, dest)
r = s3.get_object(Bucket="models", Key="llama/model.safetensors", Range="bytes=100-199")
part = r["Body"].read()
try:
    s3.head_object(Bucket="models", Key="llama/missing.bin")
    missing = "found"
except ClientError as e:
    missing = e.response["Error"]["Code"]
print(json.dumps({
    "pages": pages, "keys": keys, "sizes": sizes,
    "prefixes": [p["Prefix"] for p in top.get("CommonPrefixes", [])],
    "top": [c["Key"] for c in top.get("Contents", [])],
    "location": s3.get_bucket_location(Bucket="models")["LocationConstraint"],
    "range": [r["ContentRange"], hashlib.sha256(part).hexdigest()],
    "missing": missing,
}))
"#;

#[test]
fn get_and_aws_s3_sync_through_three_daemons_match_the_bucket_and_the_store_serves_each_object_about_once(
) {
    let src = std::env::temp_dir().join(format!("weightcast-s3-src-{}", std::process::id()));
    let model = src.join("model.safetensors");
    let shard = src.join("shard.safetensors");
    std::fs::create_dir_all(&src).unwrap();
    safetensors_gen::write(&model, 24 * MIB, 11).unwrap();
    safetensors_gen::write(&shard, 11 * MIB + 123, 12).unwrap();
    let objects = vec![
        Object {
            sha256: true,
            ..object("models", "llama/model.safetensors", Some(model.clone()))
        },
        // Multipart: an ETag of its parts, and no sha256 of the whole file.
        Object {
            multipart: true,
            ..object("models", "llama/shard.safetensors", Some(shard.clone()))
        },
        object(
            "models",
            "llama/config.json",
            Some(write(&src, "config.json", br#"{"model_type": "llama"}"#)),
        ),
        object(
            "models",
            "llama/tokenizer/vocab.json",
            Some(write(&src, "vocab.json", br#"{"a": 1, "b": 2}"#)),
        ),
        object("models", "llama/empty/", None),
        object(
            "models",
            "llama/__init__.py",
            Some(write(&src, "__init__.py", b"")),
        ),
        object(
            "models",
            "other/unrelated.bin",
            Some(write(&src, "unrelated.bin", &[5u8; 1000])),
        ),
    ];
    let mut f = Fixture::new(objects);
    let (sched, _) = f.c.scheduler().unwrap();
    f.daemon("seed", &sched, true, Some("reader"));
    let daemons: Vec<Daemon> = (0..3)
        .map(|i| f.daemon(&format!("node{i}"), &sched, false, Some("reader")))
        .collect();
    let endpoint = |d: &Daemon| {
        d.ready
            .s3_addr
            .clone()
            .expect("the daemon serves --s3-listen")
    };
    let outs: Vec<PathBuf> = (0..3).map(|i| f.c.path(&format!("out{i}"))).collect();

    // All three at once: `get` through node0, `aws s3 sync` through
    // node1's endpoint, boto3 through node2's.
    let get = f
        .get(
            Some("reader"),
            "s3://models/llama/",
            &["--json", "--data-dir"],
        )
        .arg(&daemons[0].data_dir)
        .arg("-o")
        .arg(&outs[0])
        .spawn()
        .unwrap();
    let sync = f
        .client(
            &clients().join("bin/aws"),
            &endpoint(&daemons[1]),
            CLIENT_SECRET,
        )
        .args(["s3", "sync", "s3://models/llama"])
        .arg(&outs[1])
        .arg("--no-progress")
        .spawn()
        .unwrap();
    let boto3 = f
        .client(
            &clients().join("bin/python"),
            &endpoint(&daemons[2]),
            CLIENT_SECRET,
        )
        .args(["-c", BOTO3_CLIENT])
        .env("OUT", &outs[2])
        .spawn()
        .unwrap();
    let get = get.wait_with_output().unwrap();
    f.ok("get s3://models/llama/ through node0", &get);
    let sync = sync.wait_with_output().unwrap();
    f.ok("aws s3 sync through node1's endpoint", &sync);
    let boto3 = boto3.wait_with_output().unwrap();
    f.ok("boto3 through node2's endpoint", &boto3);

    for out in &outs {
        f.assert_tree(out, "models", "llama/");
    }
    let summary: Value = serde_json::from_slice(&get.stdout).unwrap();
    assert_eq!(summary["files"].as_array().unwrap().len(), 5, "{summary}");

    let b: Value = serde_json::from_slice(&boto3.stdout).unwrap();
    assert_eq!(b["pages"], 3, "6 keys at 2 a page: {b}");
    assert_eq!(
        b["keys"],
        serde_json::json!([
            "llama/__init__.py",
            "llama/config.json",
            "llama/empty/",
            "llama/model.safetensors",
            "llama/shard.safetensors",
            "llama/tokenizer/vocab.json"
        ])
    );
    assert_eq!(
        b["prefixes"],
        serde_json::json!(["llama/empty/", "llama/tokenizer/"])
    );
    assert_eq!(
        b["top"],
        serde_json::json!([
            "llama/__init__.py",
            "llama/config.json",
            "llama/model.safetensors",
            "llama/shard.safetensors"
        ])
    );
    assert_eq!(
        b["location"],
        Value::Null,
        "us-east-1 is an empty LocationConstraint"
    );
    assert_eq!(b["sizes"]["llama/shard.safetensors"], 11 * MIB + 123);
    let model_bytes = std::fs::read(&model).unwrap();
    let want_range = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        &model_bytes[100..200],
    ));
    assert_eq!(
        b["range"],
        serde_json::json!([format!("bytes 100-199/{}", model_bytes.len()), want_range])
    );
    assert_eq!(b["missing"], "404");

    // What the store sent, counted by the proxy in front of it.
    let served = f.store.served();
    println!("S3 bytes per object (served / size), 3 daemons + 1 seed:");
    for (rel, src) in f.files_under("models", "llama/") {
        let size = std::fs::metadata(src).unwrap().len();
        let got = served
            .get(&format!("/models/llama/{rel}"))
            .map_or(0, |s| s.get_bytes);
        let ratio = got as f64 / size.max(1) as f64;
        println!("  llama/{rel}: {got} / {size} = {ratio:.3}x");
        assert!(
            got >= size && got as f64 <= 1.1 * size as f64,
            "llama/{rel}: the store served {got} bytes of a {size}-byte object\n{}",
            f.c.logs()
        );
    }
    assert_eq!(
        served
            .get("/models/other/unrelated.bin")
            .map_or(0, |s| s.get_bytes),
        0,
        "nothing outside the prefix was read"
    );
    let _ = std::fs::remove_dir_all(&src);
}

#[test]
fn layouts_credentials_and_private_objects() {
    let src = std::env::temp_dir().join(format!("weightcast-s3-src2-{}", std::process::id()));
    let weights = src.join("model.safetensors");
    std::fs::create_dir_all(&src).unwrap();
    safetensors_gen::write(&weights, 6 * MIB, 21).unwrap();
    let secret = write(&src, "secret.bin", &vec![42u8; (2 * MIB) as usize]);
    let objects = vec![
        Object {
            sha256: true,
            ..object("models", "triton/model.safetensors", Some(weights))
        },
        object(
            "models",
            "triton/config.pbtxt",
            Some(write(
                &src,
                "config.pbtxt",
                b"name: \"llama\"\nbackend: \"python\"\n",
            )),
        ),
        object(
            "models",
            "triton/handler.py",
            Some(write(
                &src,
                "handler.py",
                b"def handle(data, ctx):\n    return data\n",
            )),
        ),
        object(
            "models",
            "triton/config.json",
            Some(write(&src, "config.json", b"{}")),
        ),
        object("private", "secret.bin", Some(secret.clone())),
    ];
    let f = Fixture::new(objects);
    let data = f.c.path("data");
    let data = data.to_str().unwrap();

    // A Triton model repository, from Triton's own URL form (the endpoint
    // in the URL, a directory without its trailing slash).
    let repo = f.c.path("triton-repo");
    let url = format!(
        "s3://{}/models/triton",
        f.store.url.trim_start_matches("http://")
    );
    let out = f
        .get(
            Some("reader"),
            &url,
            &[
                "--layout",
                "triton",
                "--model-name",
                "llama",
                "--data-dir",
                data,
                "-o",
            ],
        )
        .arg(&repo)
        .output()
        .unwrap();
    f.ok("get --layout triton", &out);
    assert_eq!(
        walk(&repo),
        [
            "llama/1/config.json",
            "llama/1/handler.py",
            "llama/1/model.safetensors",
            "llama/config.pbtxt"
        ]
    );
    assert_eq!(
        std::fs::read(repo.join("llama/config.pbtxt")).unwrap(),
        std::fs::read(src.join("config.pbtxt")).unwrap()
    );

    let store_dir = f.c.path("model-store");
    let out = f
        .get(
            Some("reader"),
            "s3://models/triton/",
            &[
                "--layout",
                "torchserve",
                "--model-name",
                "llama",
                "--data-dir",
                data,
                "-o",
            ],
        )
        .arg(&store_dir)
        .output()
        .unwrap();
    f.ok("get --layout torchserve", &out);
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(store_dir.join("llama/MAR-INF/MANIFEST.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["model"]["serializedFile"], "model.safetensors");
    assert_eq!(manifest["model"]["handler"], "handler.py");

    // Denied, missing and unknown: one line, nothing written.
    let denied_out = f.c.path("denied");
    let err = one_error_line(
        &f.get(
            Some("denied"),
            "s3://models/triton/",
            &["--data-dir", data, "-o"],
        )
        .arg(&denied_out)
        .output()
        .unwrap(),
    );
    assert!(
        err.contains("access denied") && err.contains("AWS_ACCESS_KEY_ID"),
        "{err}"
    );
    let err = one_error_line(
        &f.get(None, "s3://models/triton/", &["--data-dir", data, "-o"])
            .arg(&denied_out)
            .output()
            .unwrap(),
    );
    assert!(err.contains("no S3 credentials"), "{err}");
    let err = one_error_line(
        &f.get(
            Some("reader"),
            "s3://nosuchbucket/x/",
            &["--data-dir", data, "-o"],
        )
        .arg(&denied_out)
        .output()
        .unwrap(),
    );
    assert!(err.contains("no such bucket"), "{err}");
    assert!(!denied_out.exists(), "a failed get leaves nothing behind");

    // A changed object is a new task: the same cache, new bytes.
    let cfg_out = f.c.path("config.json");
    let first = f
        .get(
            Some("reader"),
            "s3://models/triton/config.json",
            &["--json", "--data-dir", data, "-o"],
        )
        .arg(&cfg_out)
        .output()
        .unwrap();
    f.ok("get one object", &first);
    let (wid, wsecret) = f.key("writer");
    let put = f
        .store
        .python(
            "import boto3, os; boto3.client('s3', endpoint_url=os.environ['S3_URL'], region_name='us-east-1')\
             .put_object(Bucket='models', Key='triton/config.json', Body=b'{\"v\": 2}')",
            &[("AWS_ACCESS_KEY_ID", wid), ("AWS_SECRET_ACCESS_KEY", wsecret)],
        )
        .unwrap();
    f.ok("overwrite the object", &put);
    let second = f
        .get(
            Some("reader"),
            "s3://models/triton/config.json",
            &["--json", "--data-dir", data, "-o"],
        )
        .arg(&cfg_out)
        .output()
        .unwrap();
    f.ok("get the changed object", &second);
    assert_eq!(std::fs::read(&cfg_out).unwrap(), br#"{"v": 2}"#);
    let id = |o: &Output| {
        serde_json::from_slice::<Value>(&o.stdout).unwrap()["files"][0]["task_id"].clone()
    };
    assert_ne!(id(&first), id(&second), "a changed object is a new task");

    // A private object through the swarm: a node with credentials gets it
    // (the seed fetched it); a node without any cannot, not with `get`
    // and not through its S3 endpoint, although its peers hold it.
    let mut f = f;
    let (sched, _) = f.c.scheduler().unwrap();
    f.daemon("seed", &sched, true, Some("reader"));
    let with = f.daemon("with-creds", &sched, false, Some("reader"));
    let without = f.daemon("without-creds", &sched, false, None);
    let got = f.c.path("secret-ok.bin");
    let out = f
        .get(Some("reader"), "s3://private/secret.bin", &["--data-dir"])
        .arg(&with.data_dir)
        .arg("-o")
        .arg(&got)
        .output()
        .unwrap();
    f.ok("get the private object with credentials", &out);
    assert_eq!(sha256_file(&got).unwrap(), sha256_file(&secret).unwrap());
    let stolen = f.c.path("secret-stolen.bin");
    let err = one_error_line(
        &f.get(None, "s3://private/secret.bin", &["--data-dir"])
            .arg(&without.data_dir)
            .arg("-o")
            .arg(&stolen)
            .output()
            .unwrap(),
    );
    assert!(err.contains("no S3 credentials"), "{err}");
    assert!(!stolen.exists());
    let endpoint_of = |d: &Daemon| d.ready.s3_addr.clone().unwrap();
    const READ: &str = r#"
import boto3, sys
from botocore.exceptions import ClientError
try:
    boto3.client("s3").get_object(Bucket=sys.argv[1], Key=sys.argv[2])["Body"].read()
    print("read")
except ClientError as e:
    print(e.response["Error"]["Code"])
"#;
    let read = |d: &Daemon, secret: &str, bucket: &str, key: &str| {
        let out = f
            .client(&clients().join("bin/python"), &endpoint_of(d), secret)
            .args(["-c", READ, bucket, key])
            .output()
            .unwrap();
        f.ok("boto3 get_object", &out);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        read(&without, CLIENT_SECRET, "private", "secret.bin"),
        "AccessDenied"
    );
    assert_eq!(read(&with, CLIENT_SECRET, "private", "secret.bin"), "read");
    assert_eq!(
        read(&with, "not-the-secret", "private", "secret.bin"),
        "SignatureDoesNotMatch",
        "the endpoint checks its clients' signatures"
    );
    let served = f.store.served();
    assert_eq!(
        served.get("/private/secret.bin").map_or(0, |s| s.get_bytes),
        2 * MIB,
        "the store sent the private object once, to the seed"
    );
    let _ = std::fs::remove_dir_all(&src);
}
