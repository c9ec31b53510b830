//! The daemon as an S3-compatible endpoint (reads only): with
//! `AWS_ENDPOINT_URL=http://<daemon>`, `aws s3 cp/sync`, boto3, and the
//! repository fetchers of Triton (`s3://host:port/bucket/path`) and
//! TorchServe work unchanged, and object bytes come through the swarm.
//!
//! - ListObjectsV2 and ListObjects ([`s3_listing`](crate::s3_listing)),
//!   HeadBucket, GetBucketLocation, HeadObject, and GetObject with `Range`,
//!   `If-Match`/`If-None-Match` and `versionId`, path-style
//!   (`/bucket/key`), which is what clients use for an IP endpoint.
//! - Metadata comes from the upstream store, asked with this daemon's own
//!   credentials (the AWS environment, config files, instance role); the
//!   object is a swarm task named by its version
//!   ([`Engine::pin`](crate::Engine::pin)), streamed to the client as
//!   verified pieces arrive, the last one only after the whole object
//!   matched its sha256 when the store gave one.
//! - Clients sign with SigV4 ([`sigv4`](crate::sigv4)) with the access keys
//!   the operator configured. Without any, every request is served
//!   unsigned or signed with any key, so the daemon refuses to listen
//!   anywhere but loopback then.

use crate::engine::Engine;
use crate::http_body::BodyRange;
use crate::piece_stream;
use crate::request::GetError;
use crate::s3_listing::{self, xml_text, ListQuery, ListedObject};
use crate::sigv4::{self, AccessKeys};
use crate::ttl_cache::TtlCache;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use weightcast_origin::object::{Endpoint, ObjectError, Provider};
use weightcast_origin::{ErrorKind, ObjectUrl, OriginError, Pinned};

/// How long a listing is reused (its pages, and other clients).
const LISTING_TTL: Duration = Duration::from_secs(10);

/// What the operator configures.
#[derive(Debug, Clone)]
pub struct S3EndpointConfig {
    /// The store objects come from (`--s3-upstream`); `None`: the one the
    /// daemon's AWS environment names (`AWS_ENDPOINT_URL`), else AWS.
    pub upstream: Option<String>,
    /// What GetBucketLocation answers.
    pub region: String,
    /// The keys clients sign with; empty: no signature is checked.
    pub keys: AccessKeys,
}

pub struct S3Endpoint {
    engine: Arc<Engine>,
    upstream: Option<Endpoint>,
    region: String,
    keys: AccessKeys,
    listings: TtlCache<(String, String), Arc<Vec<ListedObject>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid --s3-upstream {0:?}: expected http(s)://host[:port]")]
pub struct BadUpstream(pub String);

impl S3Endpoint {
    pub fn new(engine: Arc<Engine>, config: S3EndpointConfig) -> Result<Self, BadUpstream> {
        let upstream = match &config.upstream {
            Some(u) => Some(Endpoint::parse(u).map_err(|_| BadUpstream(u.clone()))?),
            None => None,
        };
        Ok(Self {
            engine,
            upstream,
            region: config.region,
            keys: config.keys,
            listings: TtlCache::new(LISTING_TTL, 256),
        })
    }

    /// Serves the endpoint on `listener` until the engine shuts down.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        let stop = self.engine.shutting_down();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::new(self));
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    }

    fn object(&self, bucket: &str, key: &str, version: Option<String>) -> ObjectUrl {
        ObjectUrl {
            provider: Provider::S3,
            endpoint: self.upstream.clone(),
            account: None,
            bucket: bucket.to_string(),
            key: key.to_string(),
            version,
            etag: None,
        }
    }

    /// Every object under `prefix`, from one upstream listing held briefly.
    async fn listing(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Arc<Vec<ListedObject>>, GetError> {
        let cache_key = (bucket.to_string(), prefix.to_string());
        if let Some(l) = self.listings.get(&cache_key) {
            return Ok(l);
        }
        let url = self.object(bucket, prefix, None).to_string();
        let entries = self.engine.origin().list(&url, None).await?;
        let objects: Arc<Vec<ListedObject>> = Arc::new(
            entries
                .into_iter()
                .map(|e| ListedObject {
                    key: format!("{prefix}{}", e.name),
                    size: e.size.unwrap_or(0),
                    etag: e.etag,
                    last_modified: e.last_modified,
                })
                .collect(),
        );
        self.listings.insert(cache_key, objects.clone());
        Ok(objects)
    }

    async fn list(&self, bucket: &str, params: &HashMap<String, String>) -> Response {
        let q = match ListQuery::parse(params) {
            Ok(q) => q,
            Err(e) => {
                return s3_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidArgument",
                    &e.to_string(),
                    false,
                )
            }
        };
        // The bucket itself first: a missing one is NoSuchBucket, not an empty list.
        if let Err(e) = self
            .engine
            .pin(&self.object(bucket, "", None).to_string())
            .await
        {
            return get_error(&e, false);
        }
        let objects = match self.listing(bucket, &q.prefix).await {
            Ok(o) => o,
            Err(e) => return get_error(&e, false),
        };
        let page = s3_listing::page(&q, &objects);
        xml(StatusCode::OK, s3_listing::render(bucket, &q, &page))
    }

    async fn bucket(&self, bucket: &str, head: bool, params: &HashMap<String, String>) -> Response {
        if head {
            return match self
                .engine
                .pin(&self.object(bucket, "", None).to_string())
                .await
            {
                Ok(_) => {
                    let mut r = StatusCode::OK.into_response();
                    if let Ok(v) = HeaderValue::from_str(&self.region) {
                        r.headers_mut().insert("x-amz-bucket-region", v);
                    }
                    r
                }
                Err(e) => get_error(&e, true),
            };
        }
        if params.contains_key("location") {
            if let Err(e) = self
                .engine
                .pin(&self.object(bucket, "", None).to_string())
                .await
            {
                return get_error(&e, false);
            }
            // us-east-1 is written as an empty constraint.
            let region = if self.region == "us-east-1" {
                ""
            } else {
                &self.region
            };
            return xml(
                StatusCode::OK,
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<LocationConstraint xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">{}</LocationConstraint>",
                    xml_text(region)
                ),
            );
        }
        const OTHER: [&str; 12] = [
            "acl",
            "policy",
            "versioning",
            "uploads",
            "versions",
            "tagging",
            "cors",
            "lifecycle",
            "encryption",
            "website",
            "logging",
            "notification",
        ];
        if let Some(sub) = OTHER.iter().find(|s| params.contains_key(**s)) {
            return s3_error(
                StatusCode::NOT_IMPLEMENTED,
                "NotImplemented",
                &format!("this endpoint serves reads of objects only, not ?{sub}"),
                false,
            );
        }
        self.list(bucket, params).await
    }

    async fn object_read(
        &self,
        bucket: &str,
        key: &str,
        head: bool,
        params: &HashMap<String, String>,
        headers: &HeaderMap,
    ) -> Response {
        let url = self
            .object(bucket, key, params.get("versionId").cloned())
            .to_string();
        let pinned: Pinned = match self.engine.pin(&url).await {
            Ok(Some(p)) => p,
            Ok(None) => {
                return s3_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "this build has no s3:// backend",
                    head,
                )
            }
            Err(e) => return get_error(&e, head),
        };
        let stat = &pinned.stat;
        let etag = stat.etag.as_deref().map(|e| format!("\"{e}\""));
        let text = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
        if let (Some(want), Some(have)) = (text(header::IF_MATCH), &etag) {
            if !etag_matches(want, have) {
                return s3_error(
                    StatusCode::PRECONDITION_FAILED,
                    "PreconditionFailed",
                    "If-Match does not match the object's ETag",
                    head,
                );
            }
        }
        if let (Some(want), Some(have)) = (text(header::IF_NONE_MATCH), &etag) {
            if etag_matches(want, have) {
                let mut r = StatusCode::NOT_MODIFIED.into_response();
                set_object_headers(
                    r.headers_mut(),
                    etag.as_deref(),
                    stat.last_modified,
                    stat.version.as_deref(),
                );
                return r;
            }
        }
        let span = match BodyRange::from_headers(headers, stat.content_length) {
            Ok(s) => s,
            Err(unsatisfiable) => {
                let mut r = s3_error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "InvalidRange",
                    "the requested range is not satisfiable",
                    head,
                );
                unsatisfiable.set_header(r.headers_mut());
                return r;
            }
        };
        let body = if head || span.len == 0 {
            Body::empty()
        } else {
            match self.engine.watch(&url, None, None, true).await {
                Ok(w) => piece_stream::body(&span, w),
                Err(e) => return get_error(&e, head),
            }
        };
        let mut resp = Response::new(body);
        span.set_headers(&mut resp);
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("binary/octet-stream"),
        );
        set_object_headers(
            h,
            etag.as_deref(),
            stat.last_modified,
            stat.version.as_deref(),
        );
        resp
    }
}

fn etag_matches(condition: &str, etag: &str) -> bool {
    condition
        .split(',')
        .map(|c| c.trim().trim_start_matches("W/"))
        .any(|c| c == "*" || c == etag || c.trim_matches('"') == etag.trim_matches('"'))
}

fn http_date(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

fn set_object_headers(
    h: &mut HeaderMap,
    etag: Option<&str>,
    modified: Option<SystemTime>,
    version: Option<&str>,
) {
    if let Some(v) = etag.and_then(|e| HeaderValue::from_str(e).ok()) {
        h.insert(header::ETAG, v);
    }
    if let Some(v) = modified.and_then(|t| HeaderValue::from_str(&http_date(t)).ok()) {
        h.insert(header::LAST_MODIFIED, v);
    }
    if let Some(v) = version.and_then(|v| HeaderValue::from_str(v).ok()) {
        h.insert("x-amz-version-id", v);
    }
}

fn xml(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    r
}

/// An S3 `<Error>` document (a HEAD answer has the status only).
fn s3_error(status: StatusCode, code: &str, message: &str, head: bool) -> Response {
    let mut r = match head {
        true => status.into_response(),
        false => xml(
            status,
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message></Error>",
                xml_text(code),
                xml_text(message)
            ),
        ),
    };
    if let Ok(v) = HeaderValue::from_str(code) {
        r.headers_mut().insert("x-amz-error-code", v);
    }
    r
}

/// What a failed metadata request or download answers: the upstream
/// store's own status and code where it gave them.
fn get_error(e: &GetError, head: bool) -> Response {
    let message = e.to_string();
    if let GetError::Origin(OriginError::Object(o)) = e {
        match &**o {
            ObjectError::Refused { refusal, .. } => {
                let status =
                    StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_GATEWAY);
                let code = refusal
                    .code
                    .clone()
                    .unwrap_or_else(|| match status.as_u16() {
                        404 => "NoSuchKey".into(),
                        401 | 403 => "AccessDenied".into(),
                        _ => "InternalError".into(),
                    });
                return s3_error(status, &code, &message, head);
            }
            ObjectError::Changed { .. } => {
                return s3_error(StatusCode::SERVICE_UNAVAILABLE, "SlowDown", &message, head)
            }
            _ => {}
        }
    }
    let (status, code) = match e {
        GetError::Origin(o) => match o.kind() {
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "NoSuchKey"),
            ErrorKind::Unauthorized => (StatusCode::FORBIDDEN, "AccessDenied"),
            ErrorKind::BadUrl => (StatusCode::BAD_REQUEST, "InvalidRequest"),
            ErrorKind::Unavailable | ErrorKind::Transport => {
                (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")
            }
            _ => (StatusCode::BAD_GATEWAY, "InternalError"),
        },
        GetError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
    };
    s3_error(status, code, &message, head)
}

/// The query's parameters, decoded.
fn params(uri: &Uri) -> HashMap<String, String> {
    let decode = |s: &str| {
        percent_decode_str(&s.replace('+', "%20"))
            .decode_utf8_lossy()
            .into_owned()
    };
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

async fn handle(
    State(s): State<Arc<S3Endpoint>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let head = method == Method::HEAD;
    if !s.keys.is_empty() {
        if let Err(e) = sigv4::verify(&s.keys, &method, &uri, &headers, SystemTime::now()) {
            tracing::debug!(error = %e, path = uri.path(), "refused an unsigned or wrongly signed S3 request");
            return s3_error(StatusCode::FORBIDDEN, e.code(), &e.to_string(), head);
        }
    }
    if method != Method::GET && !head {
        return s3_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "this endpoint serves reads only (GET and HEAD)",
            false,
        );
    }
    let path = match percent_decode_str(uri.path()).decode_utf8() {
        Ok(p) => p.into_owned(),
        Err(_) => {
            return s3_error(
                StatusCode::BAD_REQUEST,
                "InvalidURI",
                "the path is not UTF-8",
                head,
            )
        }
    };
    let params = params(&uri);
    let path = path.strip_prefix('/').unwrap_or(&path);
    let (bucket, key) = path.split_once('/').unwrap_or((path, ""));
    if bucket.is_empty() {
        return s3_error(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            "ListBuckets is not served: name the bucket (path-style, /bucket/key)",
            head,
        );
    }
    if key.is_empty() {
        return s.bucket(bucket, head, &params).await;
    }
    s.object_read(bucket, key, head, &params, &headers).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_and_parameters() {
        assert!(etag_matches("\"abc\"", "\"abc\""));
        assert!(etag_matches("abc", "\"abc\""));
        assert!(etag_matches("\"x\", \"abc\"", "\"abc\""));
        assert!(etag_matches("*", "\"abc\""));
        assert!(!etag_matches("\"abd\"", "\"abc\""));
        let p = params(
            &"/b?list-type=2&prefix=a%20b%2Bc&delimiter=%2F&location"
                .parse()
                .unwrap(),
        );
        assert_eq!(p["prefix"], "a b+c");
        assert_eq!(p["delimiter"], "/");
        assert_eq!(p["location"], "");
        let plus = params(&"/b?prefix=a+b".parse().unwrap());
        assert_eq!(plus["prefix"], "a b", "a form-encoded space");
        assert_eq!(
            http_date(SystemTime::UNIX_EPOCH),
            "Thu, 01 Jan 1970 00:00:00 GMT"
        );
    }
}
