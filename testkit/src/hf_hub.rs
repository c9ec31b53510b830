//! A Hugging Face–compatible test hub: the endpoints the real
//! `huggingface_hub` client (2.x and 0.36.x) and weightcast's own origin
//! fetcher call, on two listeners, so that tests and benchmarks can point
//! `HF_ENDPOINT` at a machine-local "Hub" and count exactly what it served.
//!
//! - The HUB answers `/api/{models,datasets}/{repo}/revision/{rev}`,
//!   `/api/.../tree/{rev}[/{path}]` (paginated with `Link`), and
//!   `HEAD`/`GET .../resolve/{rev}/{path}`: small files directly (with Range),
//!   LFS files with a `302` to the CDN and `X-Linked-*` headers, like the real
//!   Hub does.
//! - The CDN is a separate origin (another port) that serves LFS blobs by
//!   sha256 behind a signed, expiring URL, so a client must follow a
//!   cross-origin redirect, and must not leak its token there
//!   ([`HubStatsSnapshot::cdn_requests_with_authorization`] stays 0).
//!
//! Both listeners answer `GET /_stats` with a [`HubStatsSnapshot`] as JSON so
//! that another process (a Python benchmark, a `weightcast` run) can read the
//! counters.

use anyhow::{ensure, Context as _};
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use weightcast_engine::http_body::content_response as ranged;

/// How long a signed CDN URL stays valid, like the real Hub's (1 h).
const SIGNATURE_TTL_SECS: u64 = 3600;

/// Files at least this large are LFS in [`RepoSpec::from_dir`] (besides the
/// `*.safetensors` / `*.bin` that the Hub's default `.gitattributes` puts in
/// LFS), so that any big file takes the redirect-to-CDN path.
const LFS_THRESHOLD: u64 = 1 << 20;

const X_ERROR_CODE: HeaderName = HeaderName::from_static("x-error-code");
const X_REPO_COMMIT: HeaderName = HeaderName::from_static("x-repo-commit");
const X_LINKED_ETAG: HeaderName = HeaderName::from_static("x-linked-etag");
const X_LINKED_SIZE: HeaderName = HeaderName::from_static("x-linked-size");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RepoKind {
    Model,
    Dataset,
}

impl RepoKind {
    /// The segment after `/api/` (`models`, `datasets`).
    pub fn api_segment(self) -> &'static str {
        match self {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        }
    }

    /// What precedes `{repo}/resolve/` in a download URL: nothing for
    /// models, `datasets/` for datasets.
    pub fn url_prefix(self) -> &'static str {
        match self {
            RepoKind::Model => "",
            RepoKind::Dataset => "datasets/",
        }
    }
}

pub use weightcast_engine::http_body::Content;

#[derive(Debug, Clone)]
pub struct FileSpec {
    /// Repo-relative path; served verbatim (even hostile ones like
    /// `../escape.txt`, so clients' path checks can be tested).
    pub path: String,
    pub content: Content,
    /// Stored in LFS: `/resolve` redirects to the CDN.
    pub lfs: bool,
}

#[derive(Debug, Clone)]
pub struct RepoSpec {
    pub kind: RepoKind,
    /// `org/name`.
    pub id: String,
    /// The one branch, e.g. `main`; resolves to `commit`.
    pub branch: String,
    /// 40 lowercase hex digits.
    pub commit: String,
    pub files: Vec<FileSpec>,
    /// `Some`: gated; `/resolve` needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

impl RepoSpec {
    /// The sha256 (hex) of an LFS file's content: the blob name the CDN and
    /// [`HubStatsSnapshot::cdn_bytes_by_blob`] use. `None` for a missing or
    /// non-LFS path, or an unreadable file. Hashes on each call (blocking).
    pub fn lfs_sha256(&self, path: &str) -> Option<String> {
        let f = self.files.iter().find(|f| f.lfs && f.path == path)?;
        hash_content(&f.content).ok().map(|h| h.sha256)
    }

    /// Every regular file under `dir` (recursively, `/`-separated relative
    /// paths) as one repo at branch `main`. Files of 1 MiB or more and
    /// `*.safetensors` / `*.bin` are LFS. The commit is derived from the
    /// paths and sizes, so it is stable across runs of the same tree.
    pub fn from_dir(
        kind: RepoKind,
        id: &str,
        dir: &Path,
        token: Option<String>,
    ) -> anyhow::Result<RepoSpec> {
        let mut found = Vec::new();
        walk(dir, dir, &mut found)?;
        found.sort();
        let mut commit = Sha1::new();
        let mut files = Vec::new();
        for (path, size) in found {
            commit.update(format!("{path}\0{size}\n").as_bytes());
            let lfs =
                size >= LFS_THRESHOLD || path.ends_with(".safetensors") || path.ends_with(".bin");
            files.push(FileSpec {
                content: Content::File(dir.join(&path)),
                path,
                lfs,
            });
        }
        Ok(RepoSpec {
            kind,
            id: id.to_string(),
            branch: "main".to_string(),
            commit: hex::encode(commit.finalize()),
            files,
            token,
        })
    }
}

/// Collects `(relative path, size)` of regular files under `dir`.
fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, u64)>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else if meta.is_file() {
            let rel = path.strip_prefix(root)?;
            let parts: Option<Vec<&str>> =
                rel.components().map(|c| c.as_os_str().to_str()).collect();
            let parts = parts.with_context(|| format!("non-UTF-8 path {}", rel.display()))?;
            out.push((parts.join("/"), meta.len()));
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Tree API entries per page: small by default so that every test
    /// exercises `Link` pagination.
    pub tree_page_size: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig { tree_page_size: 3 }
    }
}

#[derive(Debug, Default)]
pub struct HubStats {
    pub hub_requests: AtomicU64,
    pub hub_bytes_served: AtomicU64,
    pub cdn_requests: AtomicU64,
    pub cdn_bytes_served: AtomicU64,
    pub cdn_requests_with_authorization: AtomicU64,
    pub hub_requests_with_bad_token: AtomicU64,
    cdn_bytes_by_blob: Mutex<BTreeMap<String, u64>>,
}

/// What `GET /_stats` answers (on both listeners).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct HubStatsSnapshot {
    /// Requests to the hub listener (all endpoints but `/_stats`).
    pub hub_requests: u64,
    /// Body bytes of `/resolve` answered directly (non-LFS files).
    pub hub_bytes_served: u64,
    /// Requests to the CDN listener (but `/_stats`).
    pub cdn_requests: u64,
    /// Body bytes the CDN sent (all blobs).
    pub cdn_bytes_served: u64,
    /// Body bytes the CDN sent per blob (sha256 hex).
    pub cdn_bytes_by_blob: BTreeMap<String, u64>,
    /// Must stay 0: the token never goes to the CDN.
    pub cdn_requests_with_authorization: u64,
    /// `/resolve` of a gated repo with a wrong token.
    pub hub_requests_with_bad_token: u64,
}

impl HubStats {
    pub fn snapshot(&self) -> HubStatsSnapshot {
        HubStatsSnapshot {
            hub_requests: self.hub_requests.load(Ordering::Relaxed),
            hub_bytes_served: self.hub_bytes_served.load(Ordering::Relaxed),
            cdn_requests: self.cdn_requests.load(Ordering::Relaxed),
            cdn_bytes_served: self.cdn_bytes_served.load(Ordering::Relaxed),
            cdn_bytes_by_blob: self.by_blob().clone(),
            cdn_requests_with_authorization: self
                .cdn_requests_with_authorization
                .load(Ordering::Relaxed),
            hub_requests_with_bad_token: self.hub_requests_with_bad_token.load(Ordering::Relaxed),
        }
    }

    /// A panic elsewhere cannot leave a counter map half-updated, so a
    /// poisoned lock is still safe to use.
    fn by_blob(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        self.cdn_bytes_by_blob
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// A running hub and CDN; both servers stop when this is dropped.
pub struct TestHub {
    /// `http://host:port` of the hub: what `HF_ENDPOINT` should be.
    pub hub_url: String,
    /// `http://host:port` of the CDN that LFS redirects point to.
    pub cdn_url: String,
    pub stats: Arc<HubStats>,
    sha256: HashMap<(RepoKind, String, String), String>,
    hub_task: JoinHandle<()>,
    cdn_task: JoinHandle<()>,
}

impl TestHub {
    /// The sha256 (hex) of any file the hub serves, computed at
    /// [`serve`] time (LFS or not).
    pub fn file_sha256(&self, kind: RepoKind, repo: &str, path: &str) -> Option<&str> {
        self.sha256
            .get(&(kind, repo.to_string(), path.to_string()))
            .map(String::as_str)
    }

    /// `{hub_url}/[datasets/]{repo}/resolve/{rev}/{path}`.
    pub fn resolve_url(&self, kind: RepoKind, repo: &str, rev: &str, path: &str) -> String {
        format!(
            "{}/{}{repo}/resolve/{rev}/{path}",
            self.hub_url,
            kind.url_prefix()
        )
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.hub_task.abort();
        self.cdn_task.abort();
    }
}

/// Sizes and digests of one file, computed once at [`serve`] time.
struct Hashes {
    size: u64,
    sha256: String,
    /// `git hash-object`: sha1 of `blob <len>\0` + bytes.
    git_oid: String,
}

fn git_oid(data: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", data.len()).as_bytes());
    h.update(data);
    hex::encode(h.finalize())
}

/// Hashes by streaming, so multi-GiB files never sit in memory.
fn hash_content(content: &Content) -> std::io::Result<Hashes> {
    match content {
        Content::Bytes(b) => Ok(Hashes {
            size: b.len() as u64,
            sha256: hex::encode(Sha256::digest(b)),
            git_oid: git_oid(b),
        }),
        Content::File(path) => {
            let mut file = std::fs::File::open(path)?;
            let len = file.metadata()?.len();
            let mut sha256 = Sha256::new();
            let mut sha1 = Sha1::new();
            sha1.update(format!("blob {len}\0").as_bytes());
            let mut buf = vec![0u8; 1 << 20];
            let mut read = 0u64;
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                sha256.update(&buf[..n]);
                sha1.update(&buf[..n]);
                read += n as u64;
            }
            if read != len {
                return Err(std::io::Error::other(format!(
                    "{} changed size while being hashed",
                    path.display()
                )));
            }
            Ok(Hashes {
                size: len,
                sha256: hex::encode(sha256.finalize()),
                git_oid: hex::encode(sha1.finalize()),
            })
        }
    }
}

/// The git-lfs pointer file that the repo's git tree holds for an LFS file.
fn lfs_pointer(sha256: &str, size: u64) -> String {
    format!("version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n")
}

struct HubFile {
    content: Content,
    lfs: bool,
    size: u64,
    sha256: String,
    /// The git blob oid of the content (non-LFS) or of its pointer (LFS).
    git_oid: String,
}

struct TreeEntry {
    path: String,
    json: Value,
}

struct HubRepo {
    branch: String,
    commit: String,
    token: Option<String>,
    files: BTreeMap<String, HubFile>,
    dirs: BTreeSet<String>,
    /// Files and directories, sorted by path.
    tree: Vec<TreeEntry>,
    revision_json: Value,
}

impl HubRepo {
    /// A branch name (or `refs/heads/<branch>`) or the full commit.
    fn resolve(&self, rev: &str) -> Option<&str> {
        let is_branch =
            rev == self.branch || rev.strip_prefix("refs/heads/") == Some(self.branch.as_str());
        (is_branch || rev.eq_ignore_ascii_case(&self.commit)).then_some(self.commit.as_str())
    }
}

struct Hub {
    repos: HashMap<(RepoKind, String), HubRepo>,
    stats: Arc<HubStats>,
    hub_url: String,
    cdn_url: String,
    secret: String,
    page_size: usize,
}

struct Cdn {
    /// sha256 → (content, size).
    blobs: HashMap<String, (Content, u64)>,
    stats: Arc<HubStats>,
    secret: String,
}

fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Every proper ancestor directory of `path` (`a/b/c` → `a`, `a/b`).
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/')
        .map(move |(i, _)| &path[..i])
        .filter(|d| !d.is_empty())
}

fn build_repo(spec: RepoSpec, hashes: Vec<Hashes>) -> anyhow::Result<HubRepo> {
    let mut files = BTreeMap::new();
    let mut dirs = BTreeSet::new();
    for (f, h) in spec.files.into_iter().zip(hashes) {
        dirs.extend(ancestors(&f.path).map(str::to_string));
        let git_oid = if f.lfs {
            git_oid(lfs_pointer(&h.sha256, h.size).as_bytes())
        } else {
            h.git_oid
        };
        let file = HubFile {
            content: f.content,
            lfs: f.lfs,
            size: h.size,
            sha256: h.sha256,
            git_oid,
        };
        ensure!(
            files.insert(f.path.clone(), file).is_none(),
            "{}: duplicate path {:?}",
            spec.id,
            f.path
        );
    }
    let mut tree: Vec<TreeEntry> = dirs
        .iter()
        .map(|d| TreeEntry {
            path: d.clone(),
            json: json!({
                "type": "directory",
                // Any 40-hex oid will do: clients only use directories to list.
                "oid": hex::encode(Sha1::digest(format!("tree {d}").as_bytes())),
                "path": d,
            }),
        })
        .collect();
    for (path, f) in &files {
        let mut entry = json!({
            "type": "file",
            "oid": f.git_oid,
            "size": f.size,
            "path": path,
        });
        if f.lfs {
            entry["lfs"] = json!({
                "oid": f.sha256,
                "size": f.size,
                "pointerSize": lfs_pointer(&f.sha256, f.size).len(),
            });
        }
        tree.push(TreeEntry {
            path: path.clone(),
            json: entry,
        });
    }
    tree.sort_by(|a, b| a.path.cmp(&b.path));
    let revision_json = json!({
        "id": spec.id,
        "sha": spec.commit,
        "siblings": files.keys().map(|p| json!({"rfilename": p})).collect::<Vec<_>>(),
        "private": false,
        "disabled": false,
        "gated": if spec.token.is_some() { json!("manual") } else { json!(false) },
        "lastModified": "2024-01-01T00:00:00.000Z",
        "tags": [],
    });
    Ok(HubRepo {
        branch: spec.branch,
        commit: spec.commit,
        token: spec.token,
        files,
        dirs,
        tree,
        revision_json,
    })
}

/// Starts the hub on `hub` and the CDN on `cdn`. Hashes every file first
/// (on a blocking thread), so large `Content::File`s take a while.
pub async fn serve(
    hub: TcpListener,
    cdn: TcpListener,
    repos: Vec<RepoSpec>,
    config: HubConfig,
) -> anyhow::Result<TestHub> {
    let hub_url = format!("http://{}", hub.local_addr()?);
    let cdn_url = format!("http://{}", cdn.local_addr()?);
    for r in &repos {
        ensure!(
            is_commit(&r.commit),
            "{}: commit {:?} is not 40 lowercase hex",
            r.id,
            r.commit
        );
    }
    let hashed = tokio::task::spawn_blocking(move || {
        repos
            .into_iter()
            .map(|r| {
                let hashes = r
                    .files
                    .iter()
                    .map(|f| {
                        hash_content(&f.content).with_context(|| format!("{}: {}", r.id, f.path))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                Ok((r, hashes))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })
    .await??;

    let stats = Arc::new(HubStats::default());
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let mut repo_map = HashMap::new();
    let mut blobs = HashMap::new();
    let mut sha256 = HashMap::new();
    for (spec, hashes) in hashed {
        let key = (spec.kind, spec.id.clone());
        let repo = build_repo(spec, hashes)?;
        for (path, f) in &repo.files {
            sha256.insert((key.0, key.1.clone(), path.clone()), f.sha256.clone());
            if f.lfs {
                blobs.insert(f.sha256.clone(), (f.content.clone(), f.size));
            }
        }
        ensure!(
            repo_map.insert(key.clone(), repo).is_none(),
            "duplicate repo {:?} {}",
            key.0,
            key.1
        );
    }

    let hub_state = Arc::new(Hub {
        repos: repo_map,
        stats: stats.clone(),
        hub_url: hub_url.clone(),
        cdn_url: cdn_url.clone(),
        secret: secret.clone(),
        page_size: config.tree_page_size.max(1),
    });
    let cdn_state = Arc::new(Cdn {
        blobs,
        stats: stats.clone(),
        secret,
    });
    let hub_app = axum::Router::new()
        .route("/_stats", axum::routing::get(hub_stats))
        .fallback(hub_handler)
        .with_state(hub_state);
    let cdn_app = axum::Router::new()
        .route("/_stats", axum::routing::get(cdn_stats))
        .route("/blobs/:sha256", axum::routing::get(cdn_blob))
        .with_state(cdn_state);
    let hub_task = tokio::spawn(async move {
        if let Err(e) = axum::serve(hub, hub_app).await {
            tracing::warn!("test hub stopped: {e}");
        }
    });
    let cdn_task = tokio::spawn(async move {
        if let Err(e) = axum::serve(cdn, cdn_app).await {
            tracing::warn!("test hub CDN stopped: {e}");
        }
    });
    tracing::info!(%hub_url, %cdn_url, "test hub listening");
    Ok(TestHub {
        hub_url,
        cdn_url,
        stats,
        sha256,
        hub_task,
        cdn_task,
    })
}

async fn hub_stats(State(h): State<Arc<Hub>>) -> impl IntoResponse {
    axum::Json(h.stats.snapshot())
}

async fn cdn_stats(State(c): State<Arc<Cdn>>) -> impl IntoResponse {
    axum::Json(c.stats.snapshot())
}

/// A JSON error in the Hub's shape: `X-Error-Code` tells clients which
/// exception to raise (the status alone is ambiguous).
fn hub_error(status: StatusCode, code: Option<&'static str>, msg: &str) -> Response {
    let mut resp = (status, axum::Json(json!({ "error": msg }))).into_response();
    if let Some(code) = code {
        resp.headers_mut()
            .insert(X_ERROR_CODE, HeaderValue::from_static(code));
    }
    resp
}

fn with_commit(mut resp: Response, commit: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(commit) {
        resp.headers_mut().insert(X_REPO_COMMIT, v);
    }
    resp
}

/// Decodes `%XX` escapes of one path segment; `None` on bad escapes or
/// non-UTF-8 results.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Decodes each segment and joins them with `/`, so an encoded `%2F` and a
/// literal `/` end up the same (the client encodes revisions, not paths).
fn decode_segments(segs: &[&str]) -> Option<String> {
    let parts: Option<Vec<String>> = segs.iter().map(|s| percent_decode(s)).collect();
    Some(parts?.join("/"))
}

enum Route<'a> {
    Revision(RepoKind, String, String),
    Tree(RepoKind, String, String, String),
    Resolve(RepoKind, String, String, String),
    NotFound(&'a str),
}

fn route(path: &str) -> Option<Route<'_>> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let kind_of = |s: &str| match s {
        "models" => Some(RepoKind::Model),
        "datasets" => Some(RepoKind::Dataset),
        _ => None,
    };
    let repo_id = |org: &str, name: &str| -> Option<String> {
        Some(format!(
            "{}/{}",
            percent_decode(org)?,
            percent_decode(name)?
        ))
    };
    Some(match segs.as_slice() {
        ["api", kind, org, name, "revision", rev @ ..] if !rev.is_empty() => {
            Route::Revision(kind_of(kind)?, repo_id(org, name)?, decode_segments(rev)?)
        }
        ["api", kind, org, name, "tree", rev, sub @ ..] => Route::Tree(
            kind_of(kind)?,
            repo_id(org, name)?,
            percent_decode(rev)?,
            decode_segments(sub)?.trim_end_matches('/').to_string(),
        ),
        ["datasets", org, name, "resolve", rev, file @ ..] if !file.is_empty() => Route::Resolve(
            RepoKind::Dataset,
            repo_id(org, name)?,
            percent_decode(rev)?,
            decode_segments(file)?,
        ),
        [org, name, "resolve", rev, file @ ..] if !file.is_empty() => Route::Resolve(
            RepoKind::Model,
            repo_id(org, name)?,
            percent_decode(rev)?,
            decode_segments(file)?,
        ),
        _ => Route::NotFound(path),
    })
}

async fn hub_handler(
    State(h): State<Arc<Hub>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    h.stats.hub_requests.fetch_add(1, Ordering::Relaxed);
    if method != Method::GET && method != Method::HEAD {
        return hub_error(StatusCode::METHOD_NOT_ALLOWED, None, "method not allowed");
    }
    let resp = match route(uri.path()) {
        None => hub_error(StatusCode::BAD_REQUEST, None, "malformed path"),
        Some(Route::NotFound(p)) => {
            tracing::debug!(path = p, "test hub: no such endpoint");
            hub_error(StatusCode::NOT_FOUND, None, "no such endpoint")
        }
        Some(Route::Revision(kind, id, rev)) => revision(&h, kind, &id, &rev),
        Some(Route::Tree(kind, id, rev, sub)) => tree(&h, kind, &id, &rev, &sub, &uri, &headers),
        Some(Route::Resolve(kind, id, rev, path)) => {
            resolve(&h, &method, kind, &id, &rev, &path, &headers).await
        }
    };
    if method == Method::HEAD {
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, Body::empty());
    }
    resp
}

/// Why [`find`] failed: the Hub's `X-Error-Code` and a message.
struct NotFound(&'static str, String);

impl IntoResponse for NotFound {
    fn into_response(self) -> Response {
        hub_error(StatusCode::NOT_FOUND, Some(self.0), &self.1)
    }
}

/// Looks up a repo and revision, or the Hub's 404 for either.
fn find<'a>(
    h: &'a Hub,
    kind: RepoKind,
    id: &str,
    rev: &str,
) -> Result<(&'a HubRepo, &'a str), NotFound> {
    let repo = h
        .repos
        .get(&(kind, id.to_string()))
        .ok_or_else(|| NotFound("RepoNotFound", format!("Repository not found: {id}")))?;
    let commit = repo
        .resolve(rev)
        .ok_or_else(|| NotFound("RevisionNotFound", format!("Invalid rev id: {rev}")))?;
    Ok((repo, commit))
}

fn revision(h: &Hub, kind: RepoKind, id: &str, rev: &str) -> Response {
    match find(h, kind, id, rev) {
        Ok((repo, _)) => axum::Json(repo.revision_json.clone()).into_response(),
        Err(e) => e.into_response(),
    }
}

fn tree(
    h: &Hub,
    kind: RepoKind,
    id: &str,
    rev: &str,
    sub: &str,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response {
    let (repo, commit) = match find(h, kind, id, rev) {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    if !sub.is_empty() && !repo.dirs.contains(sub) {
        return with_commit(
            hub_error(
                StatusCode::NOT_FOUND,
                Some("EntryNotFound"),
                &format!("{sub} is not a directory of {id}"),
            ),
            commit,
        );
    }
    let query: HashMap<String, String> = Query::try_from_uri(uri).map(|q| q.0).unwrap_or_default();
    let recursive = query
        .get("recursive")
        .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    let cursor: usize = query
        .get("cursor")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let prefix = if sub.is_empty() {
        String::new()
    } else {
        format!("{sub}/")
    };
    let listed: Vec<&Value> = repo
        .tree
        .iter()
        .filter(|e| match e.path.strip_prefix(&prefix) {
            Some(rest) => !rest.is_empty() && (recursive || !rest.contains('/')),
            None => false,
        })
        .map(|e| &e.json)
        .collect();
    let end = listed.len().min(cursor.saturating_add(h.page_size));
    let page: Vec<&Value> = listed.get(cursor..end).unwrap_or_default().to_vec();
    let mut resp = axum::Json(page).into_response();
    if end < listed.len() {
        // Clients fetch the `next` URL as-is, without their original query,
        // so it must carry every parameter plus the cursor.
        let base = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(|host| format!("http://{host}"))
            .unwrap_or_else(|| h.hub_url.clone());
        let mut params: Vec<&str> = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("cursor="))
            .collect();
        let cursor_param = format!("cursor={end}");
        params.push(&cursor_param);
        let link = format!("<{base}{}?{}>; rel=\"next\"", uri.path(), params.join("&"));
        if let Ok(v) = HeaderValue::from_str(&link) {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    with_commit(resp, commit)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The CDN URL signature: only the hub (which knows the secret) can mint
/// URLs, and they expire, like the real Hub's signed CloudFront URLs.
fn sign(secret: &str, sha256: &str, expires: u64) -> String {
    let mut h = Sha256::new();
    h.update(secret.as_bytes());
    h.update(sha256.as_bytes());
    h.update(expires.to_string().as_bytes());
    hex::encode(h.finalize())
}

async fn resolve(
    h: &Hub,
    method: &Method,
    kind: RepoKind,
    id: &str,
    rev: &str,
    path: &str,
    headers: &HeaderMap,
) -> Response {
    let (repo, commit) = match find(h, kind, id, rev) {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    if let Some(token) = &repo.token {
        let auth = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or(""));
        match auth {
            None => {
                return with_commit(
                    hub_error(
                        StatusCode::UNAUTHORIZED,
                        Some("GatedRepo"),
                        &format!("Access to {id} is restricted: log in"),
                    ),
                    commit,
                )
            }
            Some(a) if a.strip_prefix("Bearer ") != Some(token.as_str()) => {
                h.stats
                    .hub_requests_with_bad_token
                    .fetch_add(1, Ordering::Relaxed);
                return with_commit(
                    hub_error(
                        StatusCode::FORBIDDEN,
                        Some("GatedRepo"),
                        &format!("Access to {id} is restricted: this token has no access"),
                    ),
                    commit,
                );
            }
            Some(_) => {}
        }
    }
    let Some(file) = repo.files.get(path) else {
        return with_commit(
            hub_error(
                StatusCode::NOT_FOUND,
                Some("EntryNotFound"),
                &format!("{path} does not exist in {id} at {commit}"),
            ),
            commit,
        );
    };
    let resp = if file.lfs {
        let expires = now_secs() + SIGNATURE_TTL_SECS;
        let location = format!(
            "{}/blobs/{}?sig={}&expires={expires}",
            h.cdn_url,
            file.sha256,
            sign(&h.secret, &file.sha256, expires)
        );
        let etag = format!("\"{}\"", file.sha256);
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::FOUND;
        let hs = resp.headers_mut();
        for (name, value) in [
            (header::LOCATION, location),
            (X_LINKED_ETAG, etag.clone()),
            (X_LINKED_SIZE, file.size.to_string()),
            (header::ETAG, etag),
            (header::CONTENT_LENGTH, "0".to_string()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                hs.insert(name, v);
            }
        }
        resp
    } else {
        let stats = h.stats.clone();
        ranged(
            method,
            headers,
            &file.content,
            file.size,
            Some(&format!("\"{}\"", file.git_oid)),
            move |n| {
                stats.hub_bytes_served.fetch_add(n, Ordering::Relaxed);
            },
        )
        .await
    };
    with_commit(resp, commit)
}

async fn cdn_blob(
    State(c): State<Arc<Cdn>>,
    method: Method,
    UrlPath(sha256): UrlPath<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    c.stats.cdn_requests.fetch_add(1, Ordering::Relaxed);
    if headers.contains_key(header::AUTHORIZATION) {
        c.stats
            .cdn_requests_with_authorization
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%sha256, "test CDN: a client sent Authorization to the CDN");
    }
    let expires = query.get("expires").and_then(|e| e.parse::<u64>().ok());
    let valid = match (query.get("sig"), expires) {
        (Some(sig), Some(expires)) => {
            expires >= now_secs() && *sig == sign(&c.secret, &sha256, expires)
        }
        _ => false,
    };
    if !valid {
        return (StatusCode::FORBIDDEN, "bad, missing or expired signature\n").into_response();
    }
    let Some((content, size)) = c.blobs.get(&sha256) else {
        return (StatusCode::NOT_FOUND, "no such blob\n").into_response();
    };
    let stats = c.stats.clone();
    let blob = sha256.clone();
    ranged(
        &method,
        &headers,
        content,
        *size,
        Some(&format!("\"{sha256}\"")),
        move |n| {
            stats.cdn_bytes_served.fetch_add(n, Ordering::Relaxed);
            *stats.by_blob().entry(blob.clone()).or_default() += n;
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use reqwest::header::HeaderMap as RHeaders;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    fn bytes(n: usize, seed: u8) -> Bytes {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>()
            .into()
    }

    fn file(path: &str, content: Content, lfs: bool) -> FileSpec {
        FileSpec {
            path: path.into(),
            content,
            lfs,
        }
    }

    /// A model with small, nested, in-memory LFS and on-disk LFS files, a
    /// hostile path, a gated model and a dataset.
    async fn start(dir: &Path) -> TestHub {
        let big = dir.join("big.bin");
        std::fs::write(&big, bytes(700_000, 7)).unwrap();
        let model = RepoSpec {
            kind: RepoKind::Model,
            id: "org/name".into(),
            branch: "main".into(),
            commit: COMMIT.into(),
            files: vec![
                file("config.json", Content::Bytes("hello\n".into()), false),
                file("sub/dir/x.json", Content::Bytes("{}".into()), false),
                file("sub/a.txt", Content::Bytes(bytes(1000, 1)), false),
                file("model.safetensors", Content::File(big), true),
                file("small.bin", Content::Bytes(bytes(5000, 2)), true),
                file("../escape.txt", Content::Bytes("x".into()), false),
            ],
            token: None,
        };
        let gated = RepoSpec {
            id: "org/gated".into(),
            files: vec![file("config.json", Content::Bytes("{}".into()), false)],
            token: Some("hf_secret".into()),
            ..model.clone()
        };
        let dataset = RepoSpec {
            kind: RepoKind::Dataset,
            id: "org/data".into(),
            commit: "f".repeat(40),
            files: vec![file("train.csv", Content::Bytes("a,b\n".into()), false)],
            ..model.clone()
        };
        serve(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            vec![model, gated, dataset],
            HubConfig::default(),
        )
        .await
        .unwrap()
    }

    /// The `json` feature of reqwest is off in this workspace.
    trait JsonBody {
        async fn json_body<T: serde::de::DeserializeOwned>(self) -> T;
    }

    impl JsonBody for reqwest::Response {
        async fn json_body<T: serde::de::DeserializeOwned>(self) -> T {
            serde_json::from_slice(&self.bytes().await.unwrap()).unwrap()
        }
    }

    fn header<'a>(h: &'a RHeaders, name: &str) -> &'a str {
        h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    #[test]
    fn helpers() {
        // `git hash-object` of "hello\n".
        assert_eq!(
            git_oid(b"hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
        assert_eq!(
            percent_decode("refs%2Fpr%2F1").as_deref(),
            Some("refs/pr/1")
        );
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(ancestors("a/b/c").collect::<Vec<_>>(), ["a", "a/b"]);
        assert_eq!(ancestors("../x").collect::<Vec<_>>(), [".."]);
        assert_eq!(
            lfs_pointer(&"0".repeat(64), 123_456_789).len(),
            134,
            "what the real Hub reports for files of 100 MB to 1 GB"
        );
    }

    #[tokio::test]
    async fn revision_by_branch_commit_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let hub = start(dir.path()).await;
        let c = client();
        for rev in ["main", COMMIT, "refs%2Fheads%2Fmain"] {
            let r = c
                .get(format!(
                    "{}/api/models/org/name/revision/{rev}",
                    hub.hub_url
                ))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{rev}");
            let v: Value = r.json_body().await;
            assert_eq!(v["id"], "org/name");
            assert_eq!(v["sha"], COMMIT);
            assert_eq!(v["gated"], false);
            let names: Vec<&str> = v["siblings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["rfilename"].as_str().unwrap())
                .collect();
            assert!(names.contains(&"sub/dir/x.json") && names.contains(&"../escape.txt"));
        }
        let v: Value = c
            .get(format!(
                "{}/api/models/org/gated/revision/main",
                hub.hub_url
            ))
            .send()
            .await
            .unwrap()
            .json_body()
            .await;
        assert_eq!(v["gated"], "manual");
        let v: Value = c
            .get(format!(
                "{}/api/datasets/org/data/revision/main",
                hub.hub_url
            ))
            .send()
            .await
            .unwrap()
            .json_body()
            .await;
        assert_eq!(v["sha"], "f".repeat(40));
        for (url, code) in [
            (
                "/api/models/org/name/revision/refs%2Fpr%2F1",
                "RevisionNotFound",
            ),
            ("/api/models/org/nope/revision/main", "RepoNotFound"),
            ("/api/datasets/org/name/revision/main", "RepoNotFound"),
        ] {
            let r = c.get(format!("{}{url}", hub.hub_url)).send().await.unwrap();
            assert_eq!(r.status(), 404, "{url}");
            assert_eq!(header(r.headers(), "x-error-code"), code, "{url}");
            let v: Value = r.json_body().await;
            assert!(v["error"].is_string());
        }
        let r = c
            .get(format!("{}/api/agent-harnesses", hub.hub_url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }

    /// Follows `Link: rel="next"` from `url`; returns (pages, entries).
    async fn list_all(c: &reqwest::Client, url: String) -> (usize, Vec<Value>) {
        let mut next = Some(url);
        let (mut pages, mut all) = (0, Vec::new());
        while let Some(url) = next.take() {
            let r = c.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200, "{url}");
            next = r
                .headers()
                .get("link")
                .map(|l| l.to_str().unwrap())
                .and_then(|l| l.strip_prefix('<'))
                .and_then(|l| l.split_once(">; rel=\"next\""))
                .map(|(u, _)| u.to_string());
            let page: Vec<Value> = r.json_body().await;
            assert!(page.len() <= 3);
            pages += 1;
            all.extend(page);
        }
        (pages, all)
    }

    #[tokio::test]
    async fn tree_paginates_and_lists_directories() {
        let dir = tempfile::tempdir().unwrap();
        let hub = start(dir.path()).await;
        let c = client();
        let (pages, all) = list_all(
            &c,
            format!(
                "{}/api/models/org/name/tree/{COMMIT}?recursive=true&expand=false",
                hub.hub_url
            ),
        )
        .await;
        let mut paths: Vec<(&str, &str)> = all
            .iter()
            .map(|e| (e["type"].as_str().unwrap(), e["path"].as_str().unwrap()))
            .collect();
        paths.sort();
        assert_eq!(
            paths,
            [
                ("directory", ".."),
                ("directory", "sub"),
                ("directory", "sub/dir"),
                ("file", "../escape.txt"),
                ("file", "config.json"),
                ("file", "model.safetensors"),
                ("file", "small.bin"),
                ("file", "sub/a.txt"),
                ("file", "sub/dir/x.json"),
            ]
        );
        assert_eq!(pages, 3);
        let config = all.iter().find(|e| e["path"] == "config.json").unwrap();
        assert_eq!(config["oid"], "ce013625030ba8dba906f756967f9e9ca394464a");
        assert_eq!(config["size"], 6);
        assert!(config.get("lfs").is_none());
        let st = all
            .iter()
            .find(|e| e["path"] == "model.safetensors")
            .unwrap();
        assert_eq!(st["size"], 700_000);
        assert_eq!(st["lfs"]["size"], 700_000);
        assert_eq!(
            st["lfs"]["oid"],
            hub.file_sha256(RepoKind::Model, "org/name", "model.safetensors")
                .unwrap()
        );
        assert_eq!(st["lfs"]["pointerSize"], 131);
        assert_eq!(st["oid"].as_str().unwrap().len(), 40);
        assert!(all.iter().all(|e| e.get("xetHash").is_none()));

        // Direct children only, at the top and in a sub directory.
        let (_, top) = list_all(&c, format!("{}/api/models/org/name/tree/main", hub.hub_url)).await;
        let mut top: Vec<&str> = top.iter().map(|e| e["path"].as_str().unwrap()).collect();
        top.sort();
        assert_eq!(
            top,
            ["..", "config.json", "model.safetensors", "small.bin", "sub"]
        );
        let (_, sub) = list_all(
            &c,
            format!("{}/api/models/org/name/tree/main/sub", hub.hub_url),
        )
        .await;
        let sub: Vec<&str> = sub.iter().map(|e| e["path"].as_str().unwrap()).collect();
        assert_eq!(sub, ["sub/a.txt", "sub/dir"]);
        let r = c
            .get(format!(
                "{}/api/models/org/name/tree/main/nope",
                hub.hub_url
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(header(r.headers(), "x-error-code"), "EntryNotFound");
        let r = c
            .get(format!("{}/api/models/org/name/tree/v9", hub.hub_url))
            .send()
            .await
            .unwrap();
        assert_eq!(header(r.headers(), "x-error-code"), "RevisionNotFound");
    }

    #[tokio::test]
    async fn lfs_resolve_redirects_to_a_cdn_that_serves_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let hub = start(dir.path()).await;
        let c = client();
        let want = bytes(700_000, 7);
        let sha = hub
            .file_sha256(RepoKind::Model, "org/name", "model.safetensors")
            .unwrap()
            .to_string();
        assert_eq!(sha, hex::encode(Sha256::digest(&want)));
        let url = hub.resolve_url(RepoKind::Model, "org/name", "main", "model.safetensors");
        let mut location = String::new();
        for method in [Method::HEAD, Method::GET] {
            let r = c.request(method.clone(), &url).send().await.unwrap();
            assert_eq!(r.status(), 302, "{method}");
            let h = r.headers();
            assert_eq!(header(h, "x-repo-commit"), COMMIT);
            assert_eq!(header(h, "x-linked-etag"), format!("\"{sha}\""));
            assert_eq!(header(h, "etag"), format!("\"{sha}\""));
            assert_eq!(header(h, "x-linked-size"), "700000");
            assert_eq!(header(h, "content-length"), "0");
            location = header(h, "location").to_string();
            assert!(
                location.starts_with(&format!("{}/blobs/{sha}?sig=", hub.cdn_url)),
                "{location}"
            );
        }
        let r = c
            .get(&location)
            .header("range", "bytes=100-199")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(header(r.headers(), "content-range"), "bytes 100-199/700000");
        assert_eq!(header(r.headers(), "etag"), format!("\"{sha}\""));
        assert_eq!(r.bytes().await.unwrap(), want.slice(100..200));
        let r = c
            .get(&location)
            .header("range", "bytes=-10")
            .send()
            .await
            .unwrap();
        assert_eq!(
            header(r.headers(), "content-range"),
            "bytes 699990-699999/700000"
        );
        assert_eq!(r.bytes().await.unwrap(), want.slice(699_990..));
        let r = c.head(&location).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(r.headers(), "content-length"), "700000");
        assert_eq!(header(r.headers(), "accept-ranges"), "bytes");
        let r = c.get(&location).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap(), want);
        let r = c
            .get(&location)
            .header("range", "bytes=700000-")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 416);

        // An in-memory LFS blob, through a dataset-less model path.
        let url = hub.resolve_url(RepoKind::Model, "org/name", COMMIT, "small.bin");
        let r = c.get(&url).send().await.unwrap();
        let location = header(r.headers(), "location").to_string();
        let r = c
            .get(&location)
            .header("range", "bytes=4990-")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(r.bytes().await.unwrap(), bytes(5000, 2).slice(4990..));

        let s = hub.stats.snapshot();
        assert_eq!(s.cdn_bytes_served, 100 + 10 + 700_000 + 10);
        assert_eq!(s.cdn_bytes_by_blob[&sha], 100 + 10 + 700_000);
        assert_eq!(s.cdn_requests, 6);
        assert_eq!(s.hub_bytes_served, 0);
        assert_eq!(s.cdn_requests_with_authorization, 0);
    }

    #[tokio::test]
    async fn cdn_refuses_bad_missing_and_expired_signatures() {
        let dir = tempfile::tempdir().unwrap();
        let hub = start(dir.path()).await;
        let c = client();
        let r = c
            .get(hub.resolve_url(RepoKind::Model, "org/name", "main", "small.bin"))
            .send()
            .await
            .unwrap();
        let location = header(r.headers(), "location").to_string();
        let (base, _) = location.split_once('?').unwrap();
        let sha = base.rsplit('/').next().unwrap();
        let expires: u64 = location.rsplit("expires=").next().unwrap().parse().unwrap();
        // Valid for this blob, but presented for another one.
        let other = hub
            .file_sha256(RepoKind::Model, "org/name", "model.safetensors")
            .unwrap();
        let swapped = location.replace(sha, other);
        let tampered = location.replace("sig=", "sig=0");
        let late = format!("{base}?sig=00&expires={}", expires + 10);
        let past = now_secs() - 1;
        let expired = format!("{base}?sig=00&expires={past}");
        for url in [base.to_string(), swapped, tampered, late, expired] {
            let r = c.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 403, "{url}");
        }
        assert_eq!(hub.stats.snapshot().cdn_bytes_served, 0);
        assert_eq!(c.get(&location).send().await.unwrap().status(), 200);
    }

    #[tokio::test]
    async fn small_files_resolve_directly_with_ranges_and_counted_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let hub = start(dir.path()).await;
        let c = client();
        let url = hub.resolve_url(RepoKind::Model, "org/name", "main", "config.json");
        let r = c.head(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let h = r.headers();
        assert_eq!(
            header(h, "etag"),
            "\"ce013625030ba8dba906f756967f9e9ca394464a\""
        );
        assert_eq!(header(h, "x-repo-commit"), COMMIT);
        assert_eq!(header(h, "content-length"), "6");
        assert_eq!(header(h, "accept-ranges"), "bytes");
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.bytes().await.unwrap(), "hello\n");
        let url = hub.resolve_url(RepoKind::Model, "org/name", "main", "sub/a.txt");
        let r = c
            .get(&url)
            .header("range", "bytes=10-19")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(header(r.headers(), "content-range"), "bytes 10-19/1000");
        assert_eq!(header(r.headers(), "x-repo-commit"), COMMIT);
        assert_eq!(r.bytes().await.unwrap(), bytes(1000, 1).slice(10..20));
        let r = c
            .get(hub.resolve_url(RepoKind::Dataset, "org/data", "main", "train.csv"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(r.headers(), "x-repo-commit"), "f".repeat(40));
        assert_eq!(r.bytes().await.unwrap(), "a,b\n");

        for (url, code, commit) in [
            (
                hub.resolve_url(RepoKind::Model, "org/name", "main", "nope.json"),
                "EntryNotFound",
                COMMIT,
            ),
            (
                hub.resolve_url(RepoKind::Model, "org/name", "v2", "config.json"),
                "RevisionNotFound",
                "",
            ),
            (
                hub.resolve_url(RepoKind::Dataset, "org/name", "main", "config.json"),
                "RepoNotFound",
                "",
            ),
        ] {
            for method in [Method::HEAD, Method::GET] {
                let r = c.request(method, &url).send().await.unwrap();
                assert_eq!(r.status(), 404, "{url}");
                assert_eq!(header(r.headers(), "x-error-code"), code, "{url}");
                assert_eq!(header(r.headers(), "x-repo-commit"), commit, "{url}");
            }
        }

        let s = hub.stats.snapshot();
        assert_eq!(s.hub_bytes_served, 6 + 10 + 4);
        assert_eq!(s.hub_requests, 4 + 6);
        // `/_stats` on both listeners, and not counted as a request.
        for base in [&hub.hub_url, &hub.cdn_url] {
            let got: HubStatsSnapshot = c
                .get(format!("{base}/_stats"))
                .send()
                .await
                .unwrap()
                .json_body()
                .await;
            assert_eq!(got, s);
        }
    }

    #[tokio::test]
    async fn gated_repo_needs_the_token_for_resolve_only() {
        let dir = tempfile::tempdir().unwrap();
        let hub = start(dir.path()).await;
        let c = client();
        let url = hub.resolve_url(RepoKind::Model, "org/gated", "main", "config.json");
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(header(r.headers(), "x-error-code"), "GatedRepo");
        let r = c.get(&url).bearer_auth("hf_wrong").send().await.unwrap();
        assert_eq!(r.status(), 403);
        assert_eq!(header(r.headers(), "x-error-code"), "GatedRepo");
        let r = c.get(&url).bearer_auth("hf_secret").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap(), "{}");
        let r = c
            .get(format!("{}/api/models/org/gated/tree/main", hub.hub_url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let s = hub.stats.snapshot();
        assert_eq!(s.hub_requests_with_bad_token, 1);
        assert_eq!(s.hub_bytes_served, 2);
    }

    #[tokio::test]
    async fn drop_stops_both_servers() {
        let dir = tempfile::tempdir().unwrap();
        let hub = start(dir.path()).await;
        let (h, cdn) = (hub.hub_url.clone(), hub.cdn_url.clone());
        drop(hub);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        for base in [h, cdn] {
            assert!(client().get(format!("{base}/_stats")).send().await.is_err());
        }
    }

    #[test]
    fn from_dir_marks_lfs_and_derives_a_stable_commit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        std::fs::write(dir.path().join("sub/a.txt"), "a").unwrap();
        std::fs::write(dir.path().join("w.safetensors"), "tiny").unwrap();
        std::fs::write(dir.path().join("big.dat"), vec![0u8; 1 << 20]).unwrap();
        let a = RepoSpec::from_dir(RepoKind::Model, "org/name", dir.path(), None).unwrap();
        let b = RepoSpec::from_dir(RepoKind::Model, "org/name", dir.path(), None).unwrap();
        assert_eq!(a.commit, b.commit);
        assert!(is_commit(&a.commit));
        let lfs: Vec<(&str, bool)> = a.files.iter().map(|f| (f.path.as_str(), f.lfs)).collect();
        assert_eq!(
            lfs,
            [
                ("big.dat", true),
                ("config.json", false),
                ("sub/a.txt", false),
                ("w.safetensors", true)
            ]
        );
        assert_eq!(
            a.lfs_sha256("w.safetensors").unwrap(),
            hex::encode(Sha256::digest(b"tiny"))
        );
        assert_eq!(a.lfs_sha256("config.json"), None);
    }
}
