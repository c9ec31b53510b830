//! A real S3 server on loopback for tests: moto's standalone server (from
//! PyPI, with boto3 and the AWS CLI in the virtualenv that
//! `scripts/setup-s3-clients` makes under `target/s3-clients`), behind a
//! counting proxy of ours that records, per object, the body bytes the
//! server sent for GETs: how often the swarm went to the store.
//!
//! Buckets, objects and IAM users are made with boto3 while moto checks
//! nothing ([`S3Store::python`]); [`S3Store::enforce_auth`] then turns on
//! moto's IAM: from there every request must carry a SigV4 signature of a
//! key made through IAM, and is allowed only by that user's policies.
//! The proxy forwards the client's `Host` header unchanged, so signatures
//! made for the proxy's address verify at moto.

use anyhow::{bail, Context, Result};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// What the store served for one path (`/bucket/key`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Served {
    pub gets: u64,
    pub heads: u64,
    /// Body bytes of successful GETs.
    pub get_bytes: u64,
}

type Counts = Arc<Mutex<BTreeMap<String, Served>>>;

pub struct S3Store {
    /// `http://127.0.0.1:<port>` of the proxy: what every client uses.
    pub url: String,
    /// moto itself, for setup.
    moto_url: String,
    clients: PathBuf,
    log: PathBuf,
    child: Child,
    counts: Counts,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for S3Store {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Headers that belong to one hop, not to the request.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "transfer-encoding" | "te" | "upgrade" | "proxy-connection"
    )
}

struct ProxyState {
    client: reqwest::Client,
    upstream: String,
    counts: Counts,
}

async fn forward(State(p): State<Arc<ProxyState>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let target = format!(
        "{}{}",
        p.upstream,
        req.uri()
            .path_and_query()
            .map(|x| x.as_str())
            .unwrap_or("/")
    );
    let mut headers = axum::http::HeaderMap::new();
    for (n, v) in req.headers() {
        if !hop_by_hop(n) && n != "content-length" {
            headers.append(n.clone(), v.clone());
        }
    }
    let body = match axum::body::to_bytes(req.into_body(), 1 << 30).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let resp = match p
        .client
        .request(method.clone(), &target)
        .headers(headers)
        .body(body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = resp.status();
    let object = path.trim_start_matches('/').contains('/');
    if object {
        let mut counts = p.counts.lock().unwrap_or_else(|e| e.into_inner());
        let c = counts.entry(path.clone()).or_default();
        match method.as_str() {
            "GET" => c.gets += 1,
            "HEAD" => c.heads += 1,
            _ => {}
        }
    }
    let mut out = Response::builder().status(status);
    for (n, v) in resp.headers() {
        if !hop_by_hop(n) {
            out = out.header(n, v);
        }
    }
    let counting = object && method == "GET" && status.is_success();
    let counts = p.counts.clone();
    let stream = resp.bytes_stream().map(move |chunk| {
        if let (true, Ok(c)) = (counting, &chunk) {
            let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
            counts.entry(path.clone()).or_default().get_bytes += c.len() as u64;
        }
        chunk
    });
    out.body(Body::from_stream(stream))
        .unwrap_or_else(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response())
}

impl S3Store {
    /// Starts moto (its log in `dir`) and the counting proxy in front of
    /// it. `clients` is the virtualenv of `scripts/setup-s3-clients`.
    pub fn start(clients: &Path, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let moto_url = format!("http://127.0.0.1:{port}");
        let log = dir.join("moto.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(clients.join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("HOME", dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("start moto_server (scripts/setup-s3-clients installs it)")?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let url = format!("http://{}", listener.local_addr()?);
        let counts: Counts = Arc::default();
        let state = Arc::new(ProxyState {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            upstream: moto_url.clone(),
            counts: counts.clone(),
        });
        let app = axum::Router::new().fallback(forward).with_state(state);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let server = axum::serve(listener, app);
                tokio::select! {
                    _ = stopped => {}
                    _ = server => {}
                }
            });
        });
        let mut s = Self {
            url,
            moto_url,
            clients: clients.to_path_buf(),
            log,
            child,
            counts,
            stop: Some(stop),
            thread: Some(thread),
        };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(s.moto_url.trim_start_matches("http://")).is_err() {
            if let Ok(Some(status)) = s.child.try_wait() {
                bail!("moto_server exited ({status}):\n{}", s.log_text());
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("moto_server did not listen on {} in 30 s", s.moto_url);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(s)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The virtualenv's python, running `script` with `MOTO_URL` (moto
    /// itself, for setup) and `S3_URL` (the proxy) in its environment.
    pub fn python(&self, script: &str, env: &[(&str, &str)]) -> Result<Output> {
        let out = Command::new(self.clients.join("bin/python"))
            .args(["-c", script])
            .env("MOTO_URL", &self.moto_url)
            .env("S3_URL", &self.url)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .context("run the s3-clients python")?;
        Ok(out)
    }

    /// From now on every request needs a signature of an IAM user's key,
    /// and that user's policies allow or deny it.
    pub fn enforce_auth(&self) -> Result<()> {
        let r = reqwest::blocking::Client::new()
            .post(format!("{}/moto-api/reset-auth", self.moto_url))
            .body("0")
            .send()?;
        if !r.status().is_success() {
            bail!("moto refused reset-auth: {}", r.status());
        }
        Ok(())
    }

    /// What the store served, by path (`/bucket/key`).
    pub fn served(&self) -> BTreeMap<String, Served> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
