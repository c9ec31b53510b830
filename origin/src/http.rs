//! Plain HTTP(S) origins: any server that answers ranged GETs (a file
//! server, a CDN, a presigned URL, a registry's blob URL).
//!
//! The length comes from a one-byte ranged GET rather than a HEAD, which
//! presigned URLs often do not allow; the same answer proves Range
//! support. Redirects are followed (up to 10) and reqwest drops the
//! `Authorization` when one leads to another host. Listing is not part of
//! HTTP, so it is [`OriginError::Unsupported`].

use crate::auth::bearer_challenge;
use crate::backend::{Backend, Entry, Identity, RangeSink, Stat, Target};
use crate::error::OriginError;
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_RANGE, ETAG, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use weightcast_modelpack::hf_api::bare_etag;

/// Seconds an origin body may send nothing before the attempt fails (and
/// is retried from where it stopped); see [`set_read_timeout`].
static READ_TIMEOUT_SECS: AtomicU64 = AtomicU64::new(60);

/// Sets how long an origin body may stall before its read fails and is
/// retried (`--origin-read-timeout`, default 60 s). Process-wide, as every
/// backend's client shares one policy: set it before the first fetcher.
pub fn set_read_timeout(timeout: Duration) {
    READ_TIMEOUT_SECS.store(timeout.as_secs().max(1), Ordering::Relaxed);
}

/// The client every origin request of this crate uses: our user agent,
/// connect and read timeouts (a stalled origin fails the attempt, not the
/// process), and `redirects` redirects at most.
pub fn client(redirects: usize) -> reqwest::Client {
    let policy = match redirects {
        0 => reqwest::redirect::Policy::none(),
        n => reqwest::redirect::Policy::limited(n),
    };
    reqwest::Client::builder()
        .user_agent(concat!("weightcast/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(
            READ_TIMEOUT_SECS.load(Ordering::Relaxed),
        ))
        .redirect(policy)
        .build()
        .expect(
            "building a reqwest client only fails without a TLS backend, and rustls is compiled in",
        )
}

/// `url` parsed, when it is http(s) with a host.
pub fn check_url(url: &str) -> Result<Url, OriginError> {
    let bad = |why: &str| OriginError::BadUrl {
        url: url.to_string(),
        why: why.to_string(),
    };
    let u = Url::parse(url).map_err(|_| bad("expected http:// or https://"))?;
    match u.scheme() {
        "http" | "https" if u.host().is_some() => Ok(u),
        "http" | "https" => Err(bad("it names no host")),
        _ => Err(bad("expected http:// or https://")),
    }
}

pub struct HttpBackend {
    client: reqwest::Client,
}

impl Default for HttpBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpBackend {
    pub fn new() -> Self {
        Self::with_client(client(10))
    }

    pub fn with_client(client: reqwest::Client) -> Self {
        Self { client }
    }

    fn get(&self, target: Target<'_>) -> reqwest::RequestBuilder {
        let r = self.client.get(target.url.clone());
        match target.authorization {
            Some(v) => r.header(AUTHORIZATION, v),
            None => r,
        }
    }
}

/// Parses `Content-Range: bytes a-b/total`.
pub fn content_range(h: &HeaderMap) -> Option<(u64, u64, u64)> {
    let v = h.get(CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?, total.parse().ok()?))
}

/// Seconds from a `Retry-After` header (the delta form; dates are rare).
pub fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The error for a non-success answer; a 401/403 keeps its Bearer
/// challenge, a 429/503 its `Retry-After`.
pub fn status_error(url: &str, resp: &reqwest::Response) -> OriginError {
    let status = resp.status();
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return OriginError::Unauthorized {
            url: url.to_string(),
            status,
            challenge: bearer_challenge(resp.headers()),
        };
    }
    OriginError::Status {
        url: url.to_string(),
        status,
        retry_after: retry_after(resp.headers()),
    }
}

/// Streams a successful answer to a ranged GET of `range` into `sink`.
/// It must be that range (`206` starting where asked) and all of it.
pub async fn stream_range(
    url: &str,
    mut resp: reqwest::Response,
    range: Range<u64>,
    sink: &mut RangeSink<'_>,
) -> Result<(), OriginError> {
    let no_range = || OriginError::NoRangeSupport {
        url: url.to_string(),
    };
    if resp.status() != StatusCode::PARTIAL_CONTENT {
        return Err(no_range());
    }
    let answered = content_range(resp.headers());
    if answered.is_some_and(|(a, _, _)| a != range.start) {
        return Err(no_range());
    }
    if let Some(e) = sink.expected() {
        check_identity(url, e, answered.map(|(_, _, total)| total), resp.headers())?;
    }
    let start = sink.filled();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| OriginError::transport(url, e))?
    {
        sink.put(&chunk).await?;
    }
    let got = (sink.filled() - start) as u64;
    let want = range.end - range.start;
    if got != want {
        return Err(OriginError::ShortBody {
            url: url.to_string(),
            got,
            want,
        });
    }
    Ok(())
}

/// Fails with [`OriginError::Changed`] when an answer is not of the object
/// `expected` describes: another total length, or another `ETag`.
pub(crate) fn check_identity(
    url: &str,
    expected: &Identity,
    total: Option<u64>,
    headers: &HeaderMap,
) -> Result<(), OriginError> {
    let changed = |what, was: String, now: String| OriginError::Changed {
        url: url.to_string(),
        what,
        was,
        now,
    };
    if let Some(total) = total.filter(|t| *t != expected.content_length) {
        return Err(changed(
            "length",
            expected.content_length.to_string(),
            total.to_string(),
        ));
    }
    if let (Some(was), (Some(now), _)) = (&expected.etag, identity(headers)) {
        if *was != now {
            return Err(changed("ETag", was.clone(), now));
        }
    }
    Ok(())
}

/// What identifies the answer's bytes: its `ETag`, and a registry's
/// `Docker-Content-Digest` when it is a sha256.
fn identity(h: &HeaderMap) -> (Option<String>, Option<String>) {
    let text = |name| {
        h.get(name)
            .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
    };
    let etag = text(ETAG.as_str())
        .map(|v| bare_etag(v).to_string())
        .filter(|v| !v.is_empty());
    let digest = text("docker-content-digest")
        .filter(|d| weightcast_modelpack::oci_ref::is_sha256_digest(d))
        .map(str::to_string);
    (etag, digest)
}

#[async_trait::async_trait]
impl Backend for HttpBackend {
    fn name(&self) -> &'static str {
        "http"
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["http", "https"]
    }

    async fn stat(&self, target: Target<'_>) -> Result<Stat, OriginError> {
        let url = target.url.as_str();
        let resp = self
            .get(target)
            .header("Range", "bytes=0-0")
            .send()
            .await
            .map_err(|e| OriginError::transport(url, e))?;
        let status = resp.status();
        let (etag, digest) = identity(resp.headers());
        let content_length = if status == StatusCode::PARTIAL_CONTENT {
            content_range(resp.headers())
                .map(|(_, _, total)| total)
                .ok_or_else(|| OriginError::UnknownLength {
                    url: url.to_string(),
                })?
        } else if status == StatusCode::RANGE_NOT_SATISFIABLE {
            // An empty file: `bytes */0`.
            0
        } else if status.is_success() {
            match resp.content_length() {
                Some(len) if len <= 1 => len,
                // No Range support: the whole body came. Its pieces are
                // read from one plain GET in order (`sequential`).
                Some(len) => {
                    return Ok(Stat {
                        content_length: len,
                        etag,
                        digest,
                        sequential: true,
                        ..Stat::default()
                    })
                }
                None => {
                    return Err(OriginError::UnknownLength {
                        url: url.to_string(),
                    })
                }
            }
        } else {
            return Err(status_error(url, &resp));
        };
        Ok(Stat {
            content_length,
            etag,
            digest,
            ..Stat::default()
        })
    }

    async fn read_range(
        &self,
        target: Target<'_>,
        range: Range<u64>,
        sink: &mut RangeSink<'_>,
    ) -> Result<(), OriginError> {
        let url = target.url.as_str();
        let header = format!("bytes={}-{}", range.start, range.end - 1);
        let resp = self
            .get(target)
            .header("Range", header)
            .send()
            .await
            .map_err(|e| OriginError::transport(url, e))?;
        if !resp.status().is_success() {
            return Err(status_error(url, &resp));
        }
        stream_range(url, resp, range, sink).await
    }

    async fn open_body(&self, target: Target<'_>) -> Result<reqwest::Response, OriginError> {
        let url = target.url.as_str();
        let resp = self
            .get(target)
            .send()
            .await
            .map_err(|e| OriginError::transport(url, e))?;
        if !resp.status().is_success() {
            return Err(status_error(url, &resp));
        }
        Ok(resp)
    }

    async fn list(&self, target: Target<'_>) -> Result<Vec<Entry>, OriginError> {
        Err(OriginError::Unsupported {
            url: target.url.to_string(),
            backend: "http",
            operation: "list a directory (HTTP has no listing)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_range_and_retry_after() {
        let mut h = HeaderMap::new();
        h.insert("content-range", "bytes 0-0/1234".parse().unwrap());
        h.insert("retry-after", "3".parse().unwrap());
        assert_eq!(content_range(&h), Some((0, 0, 1234)));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert("content-range", "bytes */0".parse().unwrap());
        assert_eq!(content_range(&h), None);
    }

    #[test]
    fn only_http_urls_are_accepted() {
        assert!(check_url("https://example.com/x").is_ok());
        assert!(check_url("file:///etc/passwd").is_err());
        assert!(check_url("not a url").is_err());
        assert!(check_url("mailto:a@example.com").is_err());
    }

    #[test]
    fn an_answer_of_another_length_or_etag_is_a_changed_object() {
        let was = Identity {
            content_length: 100,
            etag: Some("v1".into()),
        };
        let mut h = HeaderMap::new();
        h.insert("etag", "\"v1\"".parse().unwrap());
        assert!(check_identity("u", &was, Some(100), &h).is_ok());
        let e = check_identity("u", &was, Some(101), &h).unwrap_err();
        assert!(
            matches!(e, OriginError::Changed { what: "length", .. }),
            "{e}"
        );
        assert!(
            !e.retryable(),
            "a changed object is not retried into a mixed file"
        );
        h.insert("etag", "\"v2\"".parse().unwrap());
        let e = check_identity("u", &was, Some(100), &h).unwrap_err();
        assert!(
            matches!(e, OriginError::Changed { what: "ETag", .. }),
            "{e}"
        );
        assert!(e.to_string().contains("run the command again"), "{e}");
        // An origin without ETags is checked by length only.
        let plain = Identity {
            content_length: 100,
            etag: None,
        };
        assert!(check_identity("u", &plain, Some(100), &h).is_ok());
    }

    #[test]
    fn identity_comes_from_etag_and_docker_content_digest() {
        let mut h = HeaderMap::new();
        h.insert("etag", "W/\"abc\"".parse().unwrap());
        let d = format!("sha256:{}", "a".repeat(64));
        h.insert("docker-content-digest", d.parse().unwrap());
        assert_eq!(identity(&h), (Some("abc".into()), Some(d)));
        h.insert("docker-content-digest", "md5:00".parse().unwrap());
        assert_eq!(identity(&h).1, None);
    }
}
