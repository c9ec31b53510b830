//! The daemon as a Hugging Face Hub endpoint: with
//! `HF_ENDPOINT=http://<daemon>`, the real `huggingface_hub` client (`hf
//! download`, `snapshot_download`, `from_pretrained`) works unchanged and
//! its bytes come through the swarm.
//!
//! - `/api/...` (revision, tree, and the rest) is relayed to the origin Hub
//!   with the client's `Authorization`, cached for a few seconds per token,
//!   with `xetHash` removed (a client that sees it switches to the Xet
//!   protocol, which bypasses us) and the tree's `Link` pages pointed back
//!   here.
//! - `HEAD/GET /{repo}/resolve/{rev}/{path}` (datasets under `/datasets/`)
//!   answers with the headers the client checks (`X-Repo-Commit`, `ETag` =
//!   the LFS sha256, `X-Linked-Size`, `Content-Length`, `Accept-Ranges`)
//!   and streams the file as verified pieces arrive: the first byte goes out
//!   as soon as the first piece is in, whatever the file's size, and the
//!   last piece only once the whole file matched its sha256.
//! - LFS files are swarm tasks keyed by their sha256 and fetched from the
//!   CDN location the Hub redirects to (signed; no token needed by the
//!   seed). Small git-stored files come straight from the Hub with the
//!   client's token, into this daemon's cache.
//!
//! The `Authorization` header is never logged.

use crate::engine::Engine;
use crate::http_body::BodyRange;
use crate::piece_stream;
use crate::request::GetError;
use crate::ttl_cache::TtlCache;
use crate::watch::TaskWatch;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use percent_encoding::percent_decode_str;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use weightcast_modelpack::hf_api::is_sha256_hex;
use weightcast_modelpack::{RelPath, RepoKind, RepoRef};
use weightcast_origin::hub::FileMeta;
use weightcast_origin::{HubClient, HubError, OriginAuth};

/// How long metadata answers are reused.
const METADATA_TTL: Duration = Duration::from_secs(10);

/// Hub answer headers relayed from `/api/...`.
const RELAYED: [&str; 5] = [
    "content-type",
    "x-error-code",
    "x-error-message",
    "x-repo-commit",
    "etag",
];

#[derive(Clone)]
struct ApiAnswer {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    link: Option<String>,
    body: Bytes,
}

/// The Hub's refusal of a file, replayed to the client with its code.
#[derive(Clone)]
struct Refusal {
    status: StatusCode,
    code: Option<String>,
    commit: Option<String>,
    message: String,
}

type Key = (String, [u8; 32]);

pub struct HfEndpoint {
    engine: Arc<Engine>,
    hub: HubClient,
    api_cache: TtlCache<Key, ApiAnswer>,
    meta_cache: TtlCache<Key, Result<FileMeta, Refusal>>,
}

/// Serves the endpoint on `listener` until the engine shuts down.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    hub: HubClient,
    access: crate::endpoint_access::EndpointAccess,
) -> std::io::Result<()> {
    let stop = engine.shutting_down();
    let state = Arc::new(HfEndpoint {
        engine,
        hub,
        api_cache: TtlCache::new(METADATA_TTL, 4096),
        meta_cache: TtlCache::new(METADATA_TTL, 4096),
    });
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(access),
            crate::endpoint_access::require,
        ));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { stop.cancelled().await })
    .await
}

/// The cache key of a request: what it asks and for whom (a token's hash,
/// so that one client's gated answer never reaches another).
fn key(what: &str, auth: Option<&str>) -> Key {
    let who = auth
        .map(|a| Sha256::digest(a.as_bytes()).into())
        .unwrap_or([0; 32]);
    (what.to_string(), who)
}

fn error(status: StatusCode, code: Option<&str>, commit: Option<&str>, message: &str) -> Response {
    let mut r = (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
    let h = r.headers_mut();
    if let Some(v) = code.and_then(|c| HeaderValue::from_str(c).ok()) {
        h.insert("x-error-code", v);
    }
    if let Some(v) = commit.and_then(|c| HeaderValue::from_str(c).ok()) {
        h.insert("x-repo-commit", v);
    }
    if let Ok(v) = HeaderValue::from_str(&message.replace(['\r', '\n'], " ")) {
        h.insert("x-error-message", v);
    }
    r
}

fn hub_error(e: HubError) -> Refusal {
    match e {
        HubError::Refused {
            message,
            status,
            code,
            commit,
        } => Refusal {
            status,
            code,
            commit,
            message,
        },
        e => Refusal {
            status: StatusCode::BAD_GATEWAY,
            code: None,
            commit: None,
            message: e.to_string(),
        },
    }
}

async fn handle(
    State(s): State<Arc<HfEndpoint>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let path = uri.path();
    if method != Method::GET && method != Method::HEAD {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            None,
            None,
            "this endpoint only reads",
        );
    }
    if path.starts_with("/api/") {
        let pq = uri.path_and_query().map_or(path, |p| p.as_str());
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("localhost");
        return s.api(pq, auth, host, method == Method::HEAD).await;
    }
    match parse_resolve(path) {
        Some((repo, rev, file)) => {
            let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
            s.resolve(&repo, &rev, &file, auth, range, method == Method::HEAD)
                .await
        }
        None => error(
            StatusCode::NOT_FOUND,
            None,
            None,
            "not a Hub API or resolve path",
        ),
    }
}

/// `/[datasets/]org/name/resolve/rev/path...` → (repo, revision, file).
fn parse_resolve(path: &str) -> Option<(RepoRef, String, RelPath)> {
    let decode = |s: &str| {
        percent_decode_str(s)
            .decode_utf8()
            .ok()
            .map(|c| c.into_owned())
    };
    let rest = path.strip_prefix('/')?;
    let (kind, rest) = RepoKind::split_prefix(rest);
    let mut parts = rest.splitn(5, '/');
    let (org, name, verb, rev, file) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if verb != "resolve" || org.is_empty() || name.is_empty() {
        return None;
    }
    let file: Vec<String> = file.split('/').map(decode).collect::<Option<_>>()?;
    let file = RelPath::parse(&file.join("/")).ok()?;
    Some((
        RepoRef {
            kind,
            id: format!("{}/{}", decode(org)?, decode(name)?),
        },
        decode(rev)?,
        file,
    ))
}

/// Removes every `xetHash` field, so the client stays on plain HTTP.
fn strip_xet(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("xetHash");
            m.values_mut().for_each(strip_xet);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_xet),
        _ => {}
    }
}

impl HfEndpoint {
    async fn api(&self, pq: &str, auth: Option<&str>, host: &str, head: bool) -> Response {
        let k = key(pq, auth);
        let answer = match self.api_cache.get(&k) {
            Some(a) => a,
            None => match self.fetch_api(pq, auth).await {
                Ok(a) => {
                    if !a.status.is_server_error() {
                        self.api_cache.insert(k, a.clone());
                    }
                    a
                }
                Err(e) => return error(StatusCode::BAD_GATEWAY, None, None, &e.to_string()),
            },
        };
        let body = if head {
            Body::empty()
        } else {
            Body::from(answer.body.clone())
        };
        let mut r = Response::new(body);
        *r.status_mut() = answer.status;
        let h = r.headers_mut();
        for (n, v) in &answer.headers {
            h.insert(n.clone(), v.clone());
        }
        // Pages of the tree come back here, not to the origin Hub.
        if let Some(link) = &answer.link {
            let ours = link.replace(self.hub.endpoint(), &format!("http://{host}"));
            if let Ok(v) = HeaderValue::from_str(&ours) {
                h.insert(header::LINK, v);
            }
        }
        r
    }

    async fn fetch_api(&self, pq: &str, auth: Option<&str>) -> Result<ApiAnswer, HubError> {
        let resp = self.hub.get_raw(pq, auth).await?;
        let status = resp.status();
        let headers: Vec<_> = RELAYED
            .iter()
            .filter_map(|n| Some((HeaderName::from_static(n), resp.headers().get(*n)?.clone())))
            .collect();
        let link = resp
            .headers()
            .get(header::LINK)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let url = self.hub.url(pq);
        let raw = resp
            .bytes()
            .await
            .map_err(|error| HubError::Transport { url, error })?;
        let body = match serde_json::from_slice::<serde_json::Value>(&raw) {
            Ok(mut v) => {
                strip_xet(&mut v);
                Bytes::from(serde_json::to_vec(&v).unwrap_or_else(|_| raw.to_vec()))
            }
            Err(_) => raw,
        };
        Ok(ApiAnswer {
            status,
            headers,
            link,
            body,
        })
    }

    async fn file_meta(
        &self,
        repo: &RepoRef,
        rev: &str,
        file: &RelPath,
        auth: Option<&str>,
    ) -> Result<FileMeta, Refusal> {
        let k = key(&repo.resolve_path(rev, file.as_str()), auth);
        if let Some(m) = self.meta_cache.get(&k) {
            return m;
        }
        let m = self
            .hub
            .file_meta(repo, rev, file.as_str(), auth)
            .await
            .map_err(hub_error);
        if m.as_ref().is_ok() || m.as_ref().is_err_and(|r| !r.status.is_server_error()) {
            self.meta_cache.insert(k, m.clone());
        }
        m
    }

    async fn resolve(
        &self,
        repo: &RepoRef,
        rev: &str,
        file: &RelPath,
        auth: Option<&str>,
        range: Option<&str>,
        head: bool,
    ) -> Response {
        let meta = match self.file_meta(repo, rev, file, auth).await {
            Ok(m) => m,
            Err(r) => return error(r.status, r.code.as_deref(), r.commit.as_deref(), &r.message),
        };
        let size = meta.size;
        let span = match BodyRange::new(range, size) {
            Ok(span) => span,
            Err(unsatisfiable) => {
                let mut r = error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    None,
                    Some(&meta.commit),
                    "range not satisfiable",
                );
                unsatisfiable.set_header(r.headers_mut());
                return r;
            }
        };
        let body = if head || span.len == 0 {
            Body::empty()
        } else {
            match self.watch(repo, file, &meta, auth).await {
                Ok(w) => piece_stream::body(&span, w),
                Err(e) => {
                    return error(
                        StatusCode::BAD_GATEWAY,
                        None,
                        Some(&meta.commit),
                        &e.to_string(),
                    )
                }
            }
        };
        let mut r = Response::new(body);
        span.set_headers(&mut r);
        let etag = format!("\"{}\"", meta.etag);
        let mut set = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                r.headers_mut().insert(name, v);
            }
        };
        set("x-repo-commit", meta.commit.clone());
        set("etag", etag.clone());
        set("content-type", "application/octet-stream".into());
        if meta.sha256().is_some() {
            set("x-linked-etag", etag);
            set("x-linked-size", size.to_string());
        }
        r
    }

    /// Starts (or joins) the file's download. LFS files go through the
    /// swarm, keyed by their sha256; git-stored ones come from the Hub.
    async fn watch(
        &self,
        repo: &RepoRef,
        file: &RelPath,
        meta: &FileMeta,
        auth: Option<&str>,
    ) -> Result<TaskWatch, GetError> {
        let hub_url = self
            .hub
            .url(&repo.resolve_path(&meta.commit, file.as_str()));
        let url = meta.location.clone().unwrap_or(hub_url);
        let origin_auth = auth
            .map(|a| OriginAuth::new(self.hub.endpoint(), a))
            .transpose()?;
        match meta.sha256().filter(|s| is_sha256_hex(s)) {
            Some(sha) => {
                let mut digest = [0u8; 32];
                hex::decode_to_slice(sha, &mut digest)
                    .map_err(|_| GetError::BadDigest(sha.to_string()))?;
                self.engine
                    .watch(&url, Some(digest), origin_auth, true)
                    .await
            }
            None => self.engine.watch(&url, None, origin_auth, false).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_paths_parse_and_hostile_names_do_not() {
        let (repo, rev, file) = parse_resolve("/org/m/resolve/main/sub/a%20b.json").unwrap();
        assert_eq!(
            repo,
            RepoRef {
                kind: RepoKind::Model,
                id: "org/m".into()
            }
        );
        assert_eq!(rev, "main");
        assert_eq!(file.as_str(), "sub/a b.json");
        let (repo, rev, _) =
            parse_resolve("/datasets/org/d/resolve/refs%2Fpr%2F1/x.parquet").unwrap();
        assert_eq!(repo.kind, RepoKind::Dataset);
        assert_eq!(rev, "refs/pr/1");
        assert!(parse_resolve("/org/m/resolve/main/..%2F..%2Fetc%2Fpasswd").is_none());
        assert!(parse_resolve("/org/m/blob/main/x").is_none());
        assert!(parse_resolve("/org/m/resolve/main").is_none());
    }

    #[test]
    fn xet_hashes_are_removed() {
        let mut v = serde_json::json!([{"path": "a", "xetHash": "x", "lfs": {"oid": "o"}}]);
        strip_xet(&mut v);
        assert_eq!(v, serde_json::json!([{"path": "a", "lfs": {"oid": "o"}}]));
    }
}
