//! A real OCI registry on loopback for tests and benchmarks: Debian's
//! `docker-registry` (distribution 2.8), anonymous, behind htpasswd, or
//! behind a token realm ([`crate::registry_token`], as Harbor runs it),
//! with artifacts pushed over the distribution API and the bytes it served
//! read back from its access log. `scripts/setup-registry` installs it.

use crate::registry_token::TokenServer;
use anyhow::{bail, Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Registry {
    /// `127.0.0.1:<port>`.
    pub addr: String,
    log: PathBuf,
    child: Child,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A bcrypt htpasswd line, made by Python's `crypt` (as the registry needs).
fn htpasswd_line(user: &str, password: &str) -> Result<String> {
    let out = Command::new("python3")
        .args([
            "-W",
            "ignore",
            "-c",
            "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))",
            password,
        ])
        .output()
        .context("run python3 for a bcrypt hash")?;
    if !out.status.success() {
        bail!(
            "python3 crypt failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(format!(
        "{user}:{}",
        String::from_utf8_lossy(&out.stdout).trim()
    ))
}

impl Registry {
    /// Starts a registry storing under `dir`; with `user`, it requires
    /// that user's basic auth.
    pub fn start(dir: &Path, user: Option<(&str, &str)>) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let auth = match user {
            Some((u, p)) => {
                let file = dir.join("htpasswd");
                std::fs::write(&file, htpasswd_line(u, p)? + "\n")?;
                Some(format!(
                    "auth:\n  htpasswd:\n    realm: weightcast-test\n    path: {}\n",
                    file.display()
                ))
            }
            None => None,
        };
        Self::start_with(dir, auth)
    }

    /// Starts a registry storing under `dir` that takes only tokens from
    /// `tokens`' realm (distribution's `auth: token:`, Harbor's scheme).
    pub fn start_with_tokens(dir: &Path, tokens: &TokenServer) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        Self::start_with(dir, Some(tokens.registry_auth_yaml()))
    }

    fn start_with(dir: &Path, auth: Option<String>) -> Result<Self> {
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.join("data").display()
        );
        if let Some(a) = auth {
            config.push_str(&a);
        }
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = dir.join("registry.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("start docker-registry (scripts/setup-registry installs it)")?;
        let mut r = Registry { addr, log, child };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(&r.addr).is_err() {
            if let Ok(Some(s)) = r.child.try_wait() {
                bail!("docker-registry exited ({s}):\n{}", r.log_text());
            }
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("docker-registry did not listen on {} in 20 s", r.addr);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(r)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Body bytes the registry sent for each blob digest (successful GETs
    /// only: a 401's error body is no blob byte), read from its "response
    /// completed" log lines.
    pub fn blob_bytes_served(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for line in self.log_text().lines() {
            if !line.contains("response completed") || !line.contains("http.request.method=GET") {
                continue;
            }
            let field = |name: &str| {
                let i = line.find(name)? + name.len();
                let rest = line[i..].trim_start_matches('"');
                rest.split(['"', ' ']).next().map(str::to_string)
            };
            let (Some(uri), Some(written), Some(status)) = (
                field("http.request.uri="),
                field("http.response.written="),
                field("http.response.status="),
            ) else {
                continue;
            };
            if !status.starts_with('2') {
                continue;
            }
            if let Some((_, digest)) = uri.split_once("/blobs/") {
                *out.entry(digest.to_string()).or_insert(0) += written.parse::<u64>().unwrap_or(0);
            }
        }
        out
    }
}

/// One layer to push: its media type, bytes and annotations.
pub struct PushLayer {
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub annotations: BTreeMap<String, String>,
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Pushes blobs and a manifest over the distribution API.
pub struct Pusher {
    client: reqwest::blocking::Client,
    base: String,
    /// The whole `Authorization` value sent with every request.
    authorization: Option<String>,
}

impl Pusher {
    /// Pushes with a Basic login, or anonymously.
    pub fn new(registry: &str, auth: Option<(&str, &str)>) -> Self {
        use base64::Engine as _;
        Self::with_authorization(
            registry,
            auth.map(|(u, p)| {
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                )
            }),
        )
    }

    /// Pushes with `authorization` as given (`Bearer <push token>`).
    pub fn with_authorization(registry: &str, authorization: Option<String>) -> Self {
        Self {
            client: reqwest::blocking::Client::new(),
            base: format!("http://{registry}"),
            authorization,
        }
    }

    fn req(&self, r: reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder {
        match &self.authorization {
            Some(a) => r.header(reqwest::header::AUTHORIZATION, a),
            None => r,
        }
    }

    /// Uploads `bytes` (one monolithic PUT); returns its digest.
    pub fn blob(&self, repo: &str, bytes: &[u8]) -> Result<String> {
        let digest = sha256_digest(bytes);
        let r = self
            .req(
                self.client
                    .post(format!("{}/v2/{repo}/blobs/uploads/", self.base)),
            )
            .send()?;
        if r.status().as_u16() != 202 {
            bail!(
                "starting an upload: {} {}",
                r.status(),
                r.text().unwrap_or_default()
            );
        }
        let loc = r
            .headers()
            .get("location")
            .context("no upload Location")?
            .to_str()?
            .to_string();
        let url = if loc.starts_with("http") {
            loc
        } else {
            format!("{}{loc}", self.base)
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        let r = self
            .req(self.client.put(format!("{url}{sep}digest={digest}")))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()?;
        if r.status().as_u16() != 201 {
            bail!(
                "uploading {digest}: {} {}",
                r.status(),
                r.text().unwrap_or_default()
            );
        }
        Ok(digest)
    }

    /// Pushes a manifest under `reference`; returns its digest.
    pub fn manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<String> {
        let r = self
            .req(
                self.client
                    .put(format!("{}/v2/{repo}/manifests/{reference}", self.base)),
            )
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()?;
        if r.status().as_u16() != 201 {
            bail!(
                "pushing manifest {repo}:{reference}: {} {}",
                r.status(),
                r.text().unwrap_or_default()
            );
        }
        Ok(sha256_digest(body))
    }

    /// Pushes a ModelPack artifact (config + layers) as `repo:tag`; returns
    /// the manifest's digest.
    pub fn model(
        &self,
        repo: &str,
        tag: &str,
        config: &serde_json::Value,
        layers: &[PushLayer],
    ) -> Result<String> {
        let config_bytes = serde_json::to_vec(config)?;
        let config_digest = self.blob(repo, &config_bytes)?;
        let mut descs = Vec::new();
        for l in layers {
            let digest = self.blob(repo, &l.bytes)?;
            descs.push(json!({
                "mediaType": l.media_type,
                "digest": digest,
                "size": l.bytes.len(),
                "annotations": l.annotations,
            }));
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.cncf.model.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.cncf.model.config.v1+json",
                "digest": config_digest,
                "size": config_bytes.len(),
            },
            "layers": descs,
        });
        self.manifest(
            repo,
            tag,
            "application/vnd.oci.image.manifest.v1+json",
            &serde_json::to_vec(&manifest)?,
        )
    }
}

/// A ModelPack config naming `layers`' digests in `modelfs.diffIds`.
pub fn model_config(name: &str, layers: &[PushLayer]) -> serde_json::Value {
    json!({
        "descriptor": {"name": name, "version": "1.0", "family": "test"},
        "config": {"format": "safetensors", "precision": "bf16"},
        "modelfs": {"type": "layers", "diffIds": layers.iter().map(|l| sha256_digest(&l.bytes)).collect::<Vec<_>>()},
    })
}

/// A tar archive of `(path, content)` files.
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        let gnu = h.as_gnu_mut().expect("gnu header");
        gnu.name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, *data).expect("in-memory tar");
    }
    b.into_inner().expect("in-memory tar")
}

/// `bytes` gzip-compressed.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("in-memory gzip");
    e.finish().expect("in-memory gzip")
}

/// The annotations that name a layer's file.
pub fn named(path: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("org.cncf.model.filepath".to_string(), path.to_string())])
}
