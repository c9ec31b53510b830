//! Back-to-source: ranged GETs of pieces from the origin.
//!
//! Every request to an origin (keyed by scheme://host:port) passes one
//! per-origin concurrency limit and one byte-rate limit, shared by all tasks of
//! this process, so a seed peer cannot flood a hub or registry. Transient
//! failures (connection errors, 5xx, 408, 429) are retried with exponential
//! backoff and jitter; a `Retry-After` on 429/503 is honoured.

use crate::metrics::EngineMetrics;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[derive(Debug, Clone)]
pub struct OriginConfig {
    /// Requests in flight to one origin at once.
    pub concurrency: usize,
    /// Bytes per second from one origin; `None` for no limit.
    pub rate_limit: Option<u64>,
    /// Attempts per request after the first.
    pub retries: u32,
    /// Longest wait between attempts (also caps `Retry-After`).
    pub max_backoff: Duration,
    /// Credentials this peer holds for origins (a seed's `--hf-token` for
    /// the Hub), used when a task brings none of its own.
    pub credentials: Vec<OriginAuth>,
}

/// An `Authorization` value bound to one origin (`scheme://host:port`).
/// It is sent to that origin only: never to another host, and never along
/// a redirect to one (reqwest drops it when the host changes, e.g. from
/// the Hub to its CDN). Its `Debug` hides the value, so logs never hold it.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OriginAuth {
    origin: String,
    value: String,
}

impl std::fmt::Debug for OriginAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OriginAuth({}, <redacted>)", self.origin)
    }
}

impl OriginAuth {
    /// `value` (a whole `Authorization` header value) for the origin of `url`.
    pub fn new(url: &str, value: impl Into<String>) -> Result<Self, OriginError> {
        let u = OriginFetcher::check_url(url)?;
        Ok(Self {
            origin: origin_key(&u),
            value: value.into(),
        })
    }

    /// `Bearer <token>` for the origin of `url`.
    pub fn bearer(url: &str, token: &str) -> Result<Self, OriginError> {
        Self::new(url, format!("Bearer {token}"))
    }

    /// The header value, when `url` is on this credential's origin.
    pub fn for_url(&self, url: &reqwest::Url) -> Option<&str> {
        (origin_key(url) == self.origin).then_some(self.value.as_str())
    }

    pub fn value(&self) -> &str {
        &self.value
    }
}

/// `scheme://host:port`: what limits and credentials are keyed by.
pub fn origin_key(url: &reqwest::Url) -> String {
    format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
}

impl Default for OriginConfig {
    fn default() -> Self {
        Self {
            concurrency: 8,
            rate_limit: None,
            retries: 5,
            max_backoff: Duration::from_secs(30),
            credentials: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("invalid URL {0:?}: expected http:// or https://")]
    BadUrl(String),
    #[error("origin answered {status} for {url}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("cannot fetch {url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url} does not support HTTP Range requests, which piece downloads need")]
    NoRangeSupport { url: String },
    #[error("{url} did not say how long it is (no Content-Range or Content-Length)")]
    UnknownLength { url: String },
    #[error("{url} sent {got} bytes for a {want}-byte range")]
    ShortBody { url: String, got: u64, want: u64 },
    #[error("{url}: the origin refused the request ({status}): check the credentials (--hf-token for the Hub; --registry-user/--registry-password or ~/.docker/config.json for a registry)")]
    Unauthorized {
        url: String,
        status: reqwest::StatusCode,
        /// A `WWW-Authenticate: Bearer ...` challenge (registries' token flow).
        challenge: Option<String>,
    },
    #[error("{url}: no pull token from {realm}: {message}")]
    Token {
        url: String,
        realm: String,
        message: String,
    },
}

impl OriginError {
    fn retryable(&self) -> bool {
        match self {
            OriginError::Status { status, .. } => {
                status.is_server_error() || *status == 429 || *status == 408
            }
            OriginError::Transport { .. } | OriginError::ShortBody { .. } => true,
            _ => false,
        }
    }
}

/// What a probe learned about a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub content_length: u64,
}

/// A token bucket that lets a request go into debt and makes the next wait.
struct RateLimit {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    fn new(rate: u64) -> Self {
        Self {
            rate: rate.max(1) as f64,
            state: Mutex::new((rate as f64, Instant::now())),
        }
    }

    async fn take(&self, bytes: usize) {
        let wait = {
            let Ok(mut s) = self.state.lock() else { return };
            let now = Instant::now();
            let refill = now.duration_since(s.1).as_secs_f64() * self.rate;
            s.0 = (s.0 + refill).min(self.rate);
            s.1 = now;
            s.0 -= bytes as f64;
            (s.0 < 0.0).then(|| Duration::from_secs_f64(-s.0 / self.rate))
        };
        if let Some(w) = wait {
            tokio::time::sleep(w).await;
        }
    }
}

struct OriginLimit {
    slots: Semaphore,
    rate: Option<RateLimit>,
}

pub struct OriginFetcher {
    client: reqwest::Client,
    config: OriginConfig,
    limits: Mutex<HashMap<String, Arc<OriginLimit>>>,
    /// Bearer tokens from registries' token flow, per URL, until they expire.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    metrics: Arc<EngineMetrics>,
}

/// Parses `Content-Range: bytes a-b/total`.
fn content_range(h: &reqwest::header::HeaderMap) -> Option<(u64, u64, u64)> {
    let v = h.get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?, total.parse().ok()?))
}

/// Seconds from a `Retry-After` header (the delta form; dates are rare).
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

impl OriginFetcher {
    pub fn new(config: OriginConfig, metrics: Arc<EngineMetrics>) -> Self {
        let client = reqwest::Client::builder()
            .user_agent(concat!("weightcast/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::limited(10))
            .build()
            .expect("a TLS backend is compiled in");
        Self {
            client,
            config,
            limits: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    pub fn check_url(url: &str) -> Result<reqwest::Url, OriginError> {
        let u = reqwest::Url::parse(url).map_err(|_| OriginError::BadUrl(url.to_string()))?;
        match u.scheme() {
            "http" | "https" if u.host().is_some() => Ok(u),
            _ => Err(OriginError::BadUrl(url.to_string())),
        }
    }

    fn limit_for(&self, url: &reqwest::Url) -> Arc<OriginLimit> {
        let key = origin_key(url);
        let mut limits = self.limits.lock().expect("origin limits lock");
        limits
            .entry(key)
            .or_insert_with(|| {
                Arc::new(OriginLimit {
                    slots: Semaphore::new(self.config.concurrency.max(1)),
                    rate: self.config.rate_limit.map(RateLimit::new),
                })
            })
            .clone()
    }

    /// The `Authorization` to send to `u`: the task's own, else this peer's.
    fn authorization<'a>(
        &'a self,
        u: &reqwest::Url,
        task: Option<&'a OriginAuth>,
    ) -> Option<&'a str> {
        task.and_then(|a| a.for_url(u))
            .or_else(|| self.config.credentials.iter().find_map(|a| a.for_url(u)))
    }

    fn request(&self, u: &reqwest::Url, auth: Option<&OriginAuth>) -> reqwest::RequestBuilder {
        let r = self.client.get(u.clone());
        let token = self.tokens.lock().ok().and_then(|t| {
            t.get(u.as_str())
                .filter(|(_, until)| Instant::now() < *until)
                .map(|(v, _)| v.clone())
        });
        match token.as_deref().or_else(|| self.authorization(u, auth)) {
            Some(v) => r.header(reqwest::header::AUTHORIZATION, v),
            None => r,
        }
    }

    /// A registry's token flow: on a `401` with `WWW-Authenticate: Bearer
    /// realm=..,service=..,scope=..`, asks the realm for a pull token (with
    /// the Basic credentials held for `u`, else anonymously) and keeps it for
    /// `u` until it expires. This is how a seed pulls blobs from Harbor or
    /// Docker Hub with only a login, or none.
    async fn exchange_token(
        &self,
        u: &reqwest::Url,
        challenge: &str,
        auth: Option<&OriginAuth>,
    ) -> Result<(), OriginError> {
        let params = parse_bearer_challenge(challenge).ok_or_else(|| OriginError::Token {
            url: u.to_string(),
            realm: String::new(),
            message: format!("cannot read the challenge {challenge:?}"),
        })?;
        let realm = params.get("realm").cloned().unwrap_or_default();
        let fail = |message: String| OriginError::Token {
            url: u.to_string(),
            realm: realm.clone(),
            message,
        };
        let mut realm_url =
            reqwest::Url::parse(&realm).map_err(|_| fail("the realm is not a URL".into()))?;
        {
            let mut q = realm_url.query_pairs_mut();
            for key in ["service", "scope"] {
                if let Some(v) = params.get(key) {
                    q.append_pair(key, v);
                }
            }
        }
        let mut req = self.client.get(realm_url);
        if let Some(basic) = self
            .authorization(u, auth)
            .filter(|v| v.starts_with("Basic "))
        {
            req = req.header(reqwest::header::AUTHORIZATION, basic);
        }
        let resp = req.send().await.map_err(|e| fail(error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(fail(format!("it answered {}", resp.status())));
        }
        let v: serde_json::Value = resp.json().await.map_err(|e| fail(error_chain(&e)))?;
        let token = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| fail("the answer holds no token".into()))?;
        let life = v
            .get("expires_in")
            .and_then(|e| e.as_u64())
            .unwrap_or(60)
            .max(10);
        let until = Instant::now() + Duration::from_secs(life - 5);
        if let Ok(mut t) = self.tokens.lock() {
            t.retain(|_, (_, until)| Instant::now() < *until);
            t.insert(u.to_string(), (format!("Bearer {token}"), until));
        }
        Ok(())
    }

    /// After a failed attempt: a first `401` with a Bearer challenge gets a
    /// token and an immediate retry; anything else goes to `retry`.
    async fn recover(
        &self,
        u: &reqwest::Url,
        e: OriginError,
        hint: Option<Duration>,
        retry: &mut Retry<'_>,
        exchanged: &mut bool,
        auth: Option<&OriginAuth>,
    ) -> Result<(), OriginError> {
        match e {
            OriginError::Unauthorized {
                challenge: Some(c), ..
            } if !*exchanged => {
                *exchanged = true;
                self.exchange_token(u, &c, auth).await
            }
            e => retry.after(e, hint).await,
        }
    }

    fn retry(&self, url: &str) -> Retry<'_> {
        Retry {
            fetcher: self,
            url: url.to_string(),
            tries: 0,
            backoff: Duration::from_millis(200),
        }
    }

    /// Learns the content length with a one-byte ranged GET (works where HEAD
    /// is not allowed, e.g. presigned URLs) and checks Range support.
    pub async fn probe(&self, url: &str, auth: Option<&OriginAuth>) -> Result<Probe, OriginError> {
        let u = Self::check_url(url)?;
        let limit = self.limit_for(&u);
        let mut retry = self.retry(url);
        let mut exchanged = false;
        loop {
            let (r, hint) = self.probe_once(&u, url, &limit, auth).await;
            match r {
                Ok(p) => return Ok(p),
                Err(e) => {
                    self.recover(&u, e, hint, &mut retry, &mut exchanged, auth)
                        .await?
                }
            }
        }
    }

    async fn probe_once(
        &self,
        u: &reqwest::Url,
        url: &str,
        limit: &OriginLimit,
        auth: Option<&OriginAuth>,
    ) -> (Result<Probe, OriginError>, Option<Duration>) {
        let _slot = limit.slots.acquire().await;
        self.metrics.inc(&self.metrics.origin_requests, 1);
        let resp = match self
            .request(u, auth)
            .header("Range", "bytes=0-0")
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return (Err(transport(url, e)), None),
        };
        let hint = retry_after(resp.headers());
        let status = resp.status();
        let r = if status == reqwest::StatusCode::PARTIAL_CONTENT {
            content_range(resp.headers())
                .map(|(_, _, total)| Probe {
                    content_length: total,
                })
                .ok_or_else(|| OriginError::UnknownLength {
                    url: url.to_string(),
                })
        } else if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
            // An empty file: `bytes */0`.
            Ok(Probe { content_length: 0 })
        } else if status.is_success() {
            match resp.content_length() {
                Some(len) if len <= 1 => Ok(Probe {
                    content_length: len,
                }),
                _ => Err(OriginError::NoRangeSupport {
                    url: url.to_string(),
                }),
            }
        } else {
            Err(status_error(url, &resp))
        };
        (r, hint)
    }

    /// Fetches `range` of `url` into `dst` (whose length is the range's).
    /// Returns the bytes received.
    pub async fn fetch_range(
        &self,
        url: &str,
        range: Range<u64>,
        dst: &mut [u8],
        auth: Option<&OriginAuth>,
    ) -> Result<u64, OriginError> {
        let u = Self::check_url(url)?;
        let limit = self.limit_for(&u);
        let want = range.end - range.start;
        if want == 0 {
            return Ok(0);
        }
        let mut written = 0usize;
        let mut retry = self.retry(url);
        let mut exchanged = false;
        loop {
            let (r, hint) = self
                .fetch_once(&u, url, &range, dst, &mut written, &limit, auth)
                .await;
            match r {
                Ok(()) => return Ok(want),
                Err(e) => {
                    self.recover(&u, e, hint, &mut retry, &mut exchanged, auth)
                        .await?
                }
            }
        }
    }

    /// One attempt; resumes at `*written`, which it advances.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_once(
        &self,
        u: &reqwest::Url,
        url: &str,
        range: &Range<u64>,
        dst: &mut [u8],
        written: &mut usize,
        limit: &OriginLimit,
        auth: Option<&OriginAuth>,
    ) -> (Result<(), OriginError>, Option<Duration>) {
        let want = range.end - range.start;
        let _slot = limit.slots.acquire().await;
        self.metrics.inc(&self.metrics.origin_requests, 1);
        let start = range.start + *written as u64;
        let header = format!("bytes={}-{}", start, range.end - 1);
        let mut resp = match self.request(u, auth).header("Range", header).send().await {
            Ok(r) => r,
            Err(e) => return (Err(transport(url, e)), None),
        };
        let hint = retry_after(resp.headers());
        let status = resp.status();
        if status != reqwest::StatusCode::PARTIAL_CONTENT {
            let e = if status.is_success() {
                OriginError::NoRangeSupport {
                    url: url.to_string(),
                }
            } else {
                status_error(url, &resp)
            };
            return (Err(e), hint);
        }
        if content_range(resp.headers()).is_some_and(|(a, _, _)| a != start) {
            return (
                Err(OriginError::NoRangeSupport {
                    url: url.to_string(),
                }),
                None,
            );
        }
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    let end = *written + chunk.len();
                    if end > dst.len() {
                        let e = OriginError::ShortBody {
                            url: url.to_string(),
                            got: end as u64,
                            want,
                        };
                        return (Err(e), None);
                    }
                    if let Some(rate) = &limit.rate {
                        rate.take(chunk.len()).await;
                    }
                    dst[*written..end].copy_from_slice(&chunk);
                    *written = end;
                    self.metrics
                        .inc(&self.metrics.origin_bytes, chunk.len() as u64);
                }
                Ok(None) => break,
                Err(e) => return (Err(transport(url, e)), None),
            }
        }
        if *written as u64 != want {
            let e = OriginError::ShortBody {
                url: url.to_string(),
                got: *written as u64,
                want,
            };
            return (Err(e), None);
        }
        (Ok(()), None)
    }
}

/// Backoff state of one request across its attempts.
struct Retry<'a> {
    fetcher: &'a OriginFetcher,
    url: String,
    tries: u32,
    backoff: Duration,
}

impl Retry<'_> {
    /// Waits before the next attempt, or gives `e` back when it is final.
    async fn after(&mut self, e: OriginError, hint: Option<Duration>) -> Result<(), OriginError> {
        let cfg = &self.fetcher.config;
        if !e.retryable() || self.tries >= cfg.retries {
            return Err(e);
        }
        self.tries += 1;
        let m = &self.fetcher.metrics;
        m.inc(&m.origin_retries, 1);
        let jitter = Duration::from_millis(rand::random::<u64>() % 100);
        let wait = hint.unwrap_or(self.backoff + jitter).min(cfg.max_backoff);
        tracing::warn!(url = %self.url, error = %e, attempt = self.tries, wait_ms = wait.as_millis() as u64, "origin request failed; retrying");
        tokio::time::sleep(wait).await;
        self.backoff = (self.backoff * 2).min(cfg.max_backoff);
        Ok(())
    }
}

/// The error for a non-success answer; a 401 keeps its Bearer challenge.
fn status_error(url: &str, resp: &reqwest::Response) -> OriginError {
    let status = resp.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        let challenge = resp
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.trim_start().to_ascii_lowercase().starts_with("bearer "))
            .map(str::to_string);
        return OriginError::Unauthorized {
            url: url.to_string(),
            status,
            challenge,
        };
    }
    OriginError::Status {
        url: url.to_string(),
        status,
    }
}

/// `Bearer realm="https://auth",service="registry",scope="repository:a:pull"`
/// → its parameters.
fn parse_bearer_challenge(v: &str) -> Option<HashMap<String, String>> {
    let rest = v.trim();
    let rest = rest
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("bearer "))?;
    let mut params = HashMap::new();
    let mut s = &v.trim()[rest.len()..];
    while !s.trim().is_empty() {
        let (key, after) = s.split_once('=')?;
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = match after.strip_prefix('"') {
            Some(q) => {
                let end = q.find('"')?;
                (q[..end].to_string(), &q[end + 1..])
            }
            None => {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_string(), &after[end..])
            }
        };
        params.insert(key, value);
        s = next.trim_start().trim_start_matches(',');
    }
    Some(params)
}

fn transport(url: &str, e: reqwest::Error) -> OriginError {
    OriginError::Transport {
        url: url.to_string(),
        message: error_chain(&e),
    }
}

/// An error and its causes on one line: reqwest's Display hides the cause
/// ("error sending request").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        message.push_str(": ");
        message.push_str(&s.to_string());
        src = s.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_range_and_retry_after() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("content-range", "bytes 0-0/1234".parse().unwrap());
        h.insert("retry-after", "3".parse().unwrap());
        assert_eq!(content_range(&h), Some((0, 0, 1234)));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
    }

    #[test]
    fn only_http_urls_are_accepted() {
        assert!(OriginFetcher::check_url("https://example.com/x").is_ok());
        assert!(OriginFetcher::check_url("file:///etc/passwd").is_err());
        assert!(OriginFetcher::check_url("not a url").is_err());
    }

    #[test]
    fn credentials_stay_with_their_origin() {
        let a = OriginAuth::bearer("https://hub.example/api", "secret").unwrap();
        let same = reqwest::Url::parse("https://hub.example:443/org/m/resolve/main/x").unwrap();
        let cdn = reqwest::Url::parse("https://cdn.example/blobs/x").unwrap();
        let other_port = reqwest::Url::parse("https://hub.example:8443/x").unwrap();
        assert_eq!(a.for_url(&same), Some("Bearer secret"));
        assert_eq!(a.for_url(&cdn), None);
        assert_eq!(a.for_url(&other_port), None);
        assert!(
            !format!("{a:?}").contains("secret"),
            "Debug must not print the token"
        );
    }

    #[test]
    fn bearer_challenges_parse() {
        let p = parse_bearer_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:models/x:pull""#,
        )
        .unwrap();
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:models/x:pull");
        assert!(parse_bearer_challenge("Basic realm=\"x\"").is_none());
    }

    /// A registry that wants a pull token (Harbor, Docker Hub): the fetcher
    /// trades its Basic login for one at the realm, once, and pulls.
    #[tokio::test]
    async fn a_registry_token_flow_is_followed_with_the_basic_login() {
        use axum::http::{HeaderMap, StatusCode};
        use std::sync::atomic::{AtomicU32, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU32::new(0));
        let h = hits.clone();
        let app = axum::Router::new()
            .route(
                "/token",
                axum::routing::get(move |headers: HeaderMap| {
                    let h = h.clone();
                    async move {
                        h.fetch_add(1, Ordering::Relaxed);
                        // u:p
                        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Basic dTpw") {
                            return (StatusCode::UNAUTHORIZED, String::new());
                        }
                        (StatusCode::OK, r#"{"token":"tok","expires_in":300}"#.to_string())
                    }
                }),
            )
            .route(
                "/v2/m/blobs/x",
                axum::routing::get(move |headers: HeaderMap| async move {
                    let body = b"0123456789";
                    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer tok") {
                        let challenge = format!(r#"Bearer realm="http://{addr}/token",service="reg",scope="repository:m:pull""#);
                        return (StatusCode::UNAUTHORIZED, [("www-authenticate", challenge), ("content-range", String::new())], Vec::new());
                    }
                    let range = headers.get("range").and_then(|v| v.to_str().ok()).unwrap_or("bytes=0-9");
                    let (a, b) = weightcast_proto::http_range::parse(range, 10).unwrap();
                    let cr = format!("bytes {a}-{b}/10");
                    (StatusCode::PARTIAL_CONTENT, [("www-authenticate", String::new()), ("content-range", cr)], body[a as usize..=b as usize].to_vec())
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let url = format!("http://{addr}/v2/m/blobs/x");
        let config = OriginConfig {
            credentials: vec![OriginAuth::new(&url, "Basic dTpw").unwrap()],
            retries: 0,
            ..OriginConfig::default()
        };
        let f = OriginFetcher::new(config, Arc::new(EngineMetrics::default()));
        assert_eq!(f.probe(&url, None).await.unwrap().content_length, 10);
        let mut dst = [0u8; 10];
        f.fetch_range(&url, 0..10, &mut dst, None).await.unwrap();
        assert_eq!(&dst, b"0123456789");
        assert_eq!(
            hits.load(Ordering::Relaxed),
            1,
            "one token, reused until it expires"
        );

        let anonymous = OriginFetcher::new(
            OriginConfig {
                retries: 0,
                ..OriginConfig::default()
            },
            Arc::new(EngineMetrics::default()),
        );
        assert!(matches!(
            anonymous.probe(&url, None).await,
            Err(OriginError::Token { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_spaces_out_bytes() {
        let r = RateLimit::new(1000);
        let t0 = tokio::time::Instant::now();
        r.take(1000).await; // the initial burst
        r.take(2000).await; // 2 s of debt
        assert!(
            t0.elapsed() >= Duration::from_millis(1900),
            "{:?}",
            t0.elapsed()
        );
    }
}
