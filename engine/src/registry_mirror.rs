//! The daemon as a pull-through registry mirror: the OCI distribution read
//! API (`/v2/`, manifests by tag and digest, blobs with `Range`), so that
//! registry clients on the node (`skopeo`, containerd, `oras`) pull model
//! artifacts through the swarm.
//!
//! Manifests come from the upstream registry (fetched by the registry
//! client, which checks the digest against the bytes) and are cached for a
//! few seconds; blobs are swarm tasks keyed by their digest, streamed to the
//! client as verified pieces arrive, the last one only after the whole
//! blob matched its digest. The mirror itself asks for no credentials: it
//! pulls from upstream with the daemon's own (`--registry-user`, or the
//! docker config), so put it on loopback or a node-local address.

use crate::engine::{parse_digest, Engine};
use crate::http_body::BodyRange;
use crate::piece_stream;
use crate::ttl_cache::TtlCache;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use weightcast_modelpack::oci_ref::{is_sha256_digest, OciRef, OciReference};
use weightcast_origin::{Credentials, ErrorKind, OriginAuth, RegistryClient, RegistryError};

const MANIFEST_TTL: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct CachedManifest {
    bytes: bytes::Bytes,
    digest: String,
    media_type: String,
}

pub struct RegistryMirror {
    engine: Arc<Engine>,
    /// `host:port` of the upstream registry.
    upstream: String,
    creds: Credentials,
    /// Holds the upstream's pull tokens, per repository, until they expire.
    client: RegistryClient,
    manifests: TtlCache<String, CachedManifest>,
    sizes: TtlCache<String, u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid --registry-upstream {0:?}: expected http(s)://host[:port]")]
pub struct BadUpstream(String);

impl RegistryMirror {
    pub fn new(
        engine: Arc<Engine>,
        upstream_url: &str,
        creds: Credentials,
    ) -> Result<Self, BadUpstream> {
        let bad = || BadUpstream(upstream_url.to_string());
        let u = reqwest::Url::parse(upstream_url).map_err(|_| bad())?;
        let plain_http = match u.scheme() {
            "http" => true,
            "https" => false,
            _ => return Err(bad()),
        };
        let host = u.host_str().ok_or_else(bad)?;
        let upstream = match u.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        Ok(Self {
            engine,
            upstream,
            creds,
            client: RegistryClient::new(plain_http),
            manifests: TtlCache::new(MANIFEST_TTL, 1024),
            sizes: TtlCache::new(MANIFEST_TTL, 4096),
        })
    }

    /// Serves the mirror on `listener` until the engine shuts down.
    pub async fn serve(
        self,
        listener: TcpListener,
        access: crate::endpoint_access::EndpointAccess,
    ) -> std::io::Result<()> {
        let stop = self.engine.shutting_down();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::new(self))
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

    async fn manifest(&self, r: &OciRef) -> Result<CachedManifest, RegistryError> {
        let key = r.whole();
        if let Some(m) = self.manifests.get(&key) {
            return Ok(m);
        }
        let (bytes, digest) = self.client.manifest_raw(r, &self.creds).await?;
        let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                v.get("mediaType")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| weightcast_modelpack::oci_artifact::MANIFEST.to_string());
        let m = CachedManifest {
            bytes: bytes.into(),
            digest,
            media_type,
        };
        self.manifests.insert(key, m.clone());
        Ok(m)
    }

    /// The blob's size, from a `HEAD` upstream.
    async fn blob_size(&self, r: &OciRef, digest: &str) -> Result<u64, Response> {
        let url = self.client.blob_url(r, digest);
        if let Some(s) = self.sizes.get(&url) {
            return Ok(s);
        }
        let stat = self
            .client
            .blob_stat(r, digest, &self.creds)
            .await
            .map_err(|e| registry_error(e, "BLOB_UNKNOWN"))?;
        self.sizes.insert(url, stat.content_length);
        Ok(stat.content_length)
    }

    async fn blob(&self, r: &OciRef, digest: &str, range: Option<&str>, head: bool) -> Response {
        let size = match self.blob_size(r, digest).await {
            Ok(s) => s,
            Err(resp) => return resp,
        };
        let span = match BodyRange::new(range, size) {
            Ok(span) => span,
            Err(unsatisfiable) => {
                let mut resp = oci_error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "BLOB_UNKNOWN",
                    "range not satisfiable",
                );
                unsatisfiable.set_header(resp.headers_mut());
                return resp;
            }
        };
        let body = if head || span.len == 0 {
            Body::empty()
        } else {
            let sha = match parse_digest(digest) {
                Ok(d) => d,
                Err(e) => {
                    return oci_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", &e.to_string())
                }
            };
            let url = self.client.blob_url(r, digest);
            let auth = self
                .client
                .authorization(r, &self.creds)
                .and_then(|a| OriginAuth::new(&url, a).ok());
            match self.engine.watch(&url, Some(sha), auth, true).await {
                Ok(w) => piece_stream::body(&span, w),
                Err(e) => return oci_error(StatusCode::BAD_GATEWAY, "UNKNOWN", &e.to_string()),
            }
        };
        let mut resp = Response::new(body);
        span.set_headers(&mut resp);
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        if let Ok(v) = HeaderValue::from_str(digest) {
            h.insert("docker-content-digest", v.clone());
            h.insert(header::ETAG, v);
        }
        resp
    }
}

/// An error in the distribution API's JSON shape.
fn oci_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]});
    (status, axum::Json(body)).into_response()
}

/// An upstream failure; `unknown` is the code for what was not found
/// (`MANIFEST_UNKNOWN`, `BLOB_UNKNOWN`).
fn registry_error(e: RegistryError, unknown: &str) -> Response {
    let (status, code) = match e.kind() {
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, unknown),
        ErrorKind::Unauthorized => (StatusCode::BAD_GATEWAY, "DENIED"),
        _ => (StatusCode::BAD_GATEWAY, "UNKNOWN"),
    };
    oci_error(status, code, &e.to_string())
}

/// `/v2/<name>/(manifests|blobs)/<reference>` → (name, kind, reference).
fn parse_path(path: &str) -> Option<(&str, &str, &str)> {
    let rest = path.strip_prefix("/v2/")?;
    for kind in ["/manifests/", "/blobs/"] {
        if let Some(i) = rest.rfind(kind) {
            let (name, reference) = (&rest[..i], &rest[i + kind.len()..]);
            return Some((name, kind.trim_matches('/'), reference));
        }
    }
    None
}

async fn handle(
    State(m): State<Arc<RegistryMirror>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return oci_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "this mirror only serves pulls",
        );
    }
    let head = method == Method::HEAD;
    let path = uri.path();
    if path == "/v2/" || path == "/v2" {
        let mut r = axum::Json(serde_json::json!({})).into_response();
        r.headers_mut().insert(
            "docker-distribution-api-version",
            HeaderValue::from_static("registry/2.0"),
        );
        return r;
    }
    let Some((name, kind, reference)) = parse_path(path) else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "not a distribution API path",
        );
    };
    let reference = if is_sha256_digest(reference) {
        OciReference::Digest(reference.to_string())
    } else {
        OciReference::Tag(reference.to_string())
    };
    let r = match OciRef::parse(&format!(
        "oci://{}/{name}{}{}",
        m.upstream,
        if matches!(reference, OciReference::Digest(_)) {
            "@"
        } else {
            ":"
        },
        reference.as_str()
    )) {
        Ok(r) => r,
        Err(e) => return oci_error(StatusCode::BAD_REQUEST, "NAME_INVALID", &e.to_string()),
    };
    match kind {
        "manifests" => match m.manifest(&r).await {
            Ok(man) => {
                let mut resp = if head {
                    Response::new(Body::empty())
                } else {
                    Response::new(Body::from(man.bytes.clone()))
                };
                let h = resp.headers_mut();
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(man.bytes.len()));
                if let Ok(v) = HeaderValue::from_str(&man.media_type) {
                    h.insert(header::CONTENT_TYPE, v);
                }
                if let Ok(v) = HeaderValue::from_str(&man.digest) {
                    h.insert("docker-content-digest", v.clone());
                    h.insert(header::ETAG, v);
                }
                resp
            }
            Err(e) => registry_error(e, "MANIFEST_UNKNOWN"),
        },
        _ => {
            let OciReference::Digest(d) = &r.reference else {
                return oci_error(
                    StatusCode::BAD_REQUEST,
                    "DIGEST_INVALID",
                    "blobs are named by sha256 digest",
                );
            };
            let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
            m.blob(&r, d, range, head).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_path;

    #[test]
    fn distribution_paths() {
        assert_eq!(
            parse_path("/v2/models/x/manifests/v1"),
            Some(("models/x", "manifests", "v1"))
        );
        assert_eq!(
            parse_path("/v2/a/blobs/sha256:00"),
            Some(("a", "blobs", "sha256:00"))
        );
        assert_eq!(parse_path("/v2/a/tags/list"), None);
        assert_eq!(parse_path("/v3/a/blobs/x"), None);
    }
}
