use super::*;
use crate::error::ErrorKind;
use reqwest::StatusCode;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use tokio::time::Instant;

/// What one attempt of the fake backend does.
#[derive(Debug, Clone, Copy)]
enum Step {
    Ok,
    /// 503, with a `Retry-After` in seconds.
    Unavailable(Option<u64>),
    /// Puts this many bytes, then breaks off.
    Partial(usize),
    NotFound,
}

/// One attempt as the fake backend saw it.
#[derive(Debug, Clone)]
struct Seen {
    host: String,
    authorization: Option<String>,
    /// For reads.
    range: Option<Range<u64>>,
}

/// A scripted origin: `fake://host/...`, whose origin is `https://host`.
struct Fake {
    data: Vec<u8>,
    /// Each attempt's step (then `Ok`).
    script: Mutex<VecDeque<Step>>,
    seen: Mutex<Vec<Seen>>,
    /// Each attempt takes this long.
    hold: Duration,
    /// Attempts in flight, and the most at once, per host.
    active: Mutex<HashMap<String, (u32, u32)>>,
    /// Bytes per `put`.
    chunk: usize,
}

impl Fake {
    fn new(script: &[Step]) -> Self {
        Self {
            data: (0..=255u8).cycle().take(4000).collect(),
            script: Mutex::new(script.iter().copied().collect()),
            seen: Mutex::new(Vec::new()),
            hold: Duration::ZERO,
            active: Mutex::new(HashMap::new()),
            chunk: 1000,
        }
    }

    fn url(url: &Url) -> String {
        url.host_str().unwrap_or("").to_string()
    }

    async fn attempt(&self, t: Target<'_>, range: Option<Range<u64>>) -> Step {
        let host = Self::url(t.url);
        self.seen.lock().unwrap().push(Seen {
            host: host.clone(),
            authorization: t.authorization.map(str::to_string),
            range,
        });
        {
            let mut a = self.active.lock().unwrap();
            let e = a.entry(host.clone()).or_default();
            e.0 += 1;
            e.1 = e.1.max(e.0);
        }
        tokio::time::sleep(self.hold).await;
        self.active.lock().unwrap().get_mut(&host).unwrap().0 -= 1;
        self.script.lock().unwrap().pop_front().unwrap_or(Step::Ok)
    }

    fn fail(url: &Url, step: &Step) -> OriginError {
        let status = match step {
            Step::NotFound => StatusCode::NOT_FOUND,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        let retry_after = match step {
            Step::Unavailable(s) => s.map(Duration::from_secs),
            _ => None,
        };
        OriginError::Status {
            url: url.to_string(),
            status,
            retry_after,
        }
    }

    fn max_active(&self, host: &str) -> u32 {
        self.active.lock().unwrap().get(host).map_or(0, |e| e.1)
    }
}

#[async_trait::async_trait]
impl Backend for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn schemes(&self) -> &'static [&'static str] {
        &["fake"]
    }
    fn origin(&self, url: &Url) -> OriginKey {
        let u = Url::parse(&format!("https://{}/", Self::url(url))).unwrap();
        OriginKey::of(&u)
    }
    async fn stat(&self, t: Target<'_>) -> Result<Stat, OriginError> {
        match self.attempt(t, None).await {
            Step::Ok => Ok(Stat {
                content_length: self.data.len() as u64,
                ..Stat::default()
            }),
            step => Err(Self::fail(t.url, &step)),
        }
    }
    async fn read_range(
        &self,
        t: Target<'_>,
        range: Range<u64>,
        sink: &mut RangeSink<'_>,
    ) -> Result<(), OriginError> {
        let step = self.attempt(t, Some(range.clone())).await;
        let bytes = &self.data[range.start as usize..range.end as usize];
        let bytes = match step {
            Step::Ok => bytes,
            Step::Partial(n) => &bytes[..n],
            step => return Err(Self::fail(t.url, &step)),
        };
        for c in bytes.chunks(self.chunk) {
            sink.put(c).await?;
        }
        if bytes.len() as u64 != range.end - range.start {
            return Err(OriginError::ShortBody {
                url: t.url.to_string(),
                got: bytes.len() as u64,
                want: range.end - range.start,
            });
        }
        Ok(())
    }
    async fn list(&self, t: Target<'_>) -> Result<Vec<Entry>, OriginError> {
        Err(OriginError::Unsupported {
            url: t.url.to_string(),
            backend: "fake",
            operation: "list",
        })
    }
}

fn fetcher(fake: Arc<Fake>, config: OriginConfig) -> OriginFetcher {
    let mut backends = Backends::builtin();
    backends.register(fake);
    OriginFetcher::with_backends(config, Arc::new(OriginStats::default()), backends)
}

#[tokio::test(start_paused = true)]
async fn failures_are_retried_with_backoff_and_retry_after() {
    let fake = Arc::new(Fake::new(&[
        Step::Unavailable(Some(3)),
        Step::Unavailable(None),
    ]));
    let f = fetcher(fake.clone(), OriginConfig::default());
    let t0 = Instant::now();
    let stat = f.stat("fake://a/x", None).await.unwrap();
    assert_eq!(stat.content_length, 4000);
    // 3 s as the origin asked, then the second backoff (400 ms + jitter).
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(3400) && took < Duration::from_millis(3500),
        "{took:?}"
    );
    assert_eq!(f.stats().requests(), 3);
    assert_eq!(f.stats().retries(), 2);

    // A final answer is not retried; spent retries give the last error.
    let fake = Arc::new(Fake::new(&[Step::NotFound]));
    let f = fetcher(fake.clone(), OriginConfig::default());
    let e = f.stat("fake://a/x", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(f.stats().requests(), 1);
    let fake = Arc::new(Fake::new(&[Step::Unavailable(None); 4]));
    let config = OriginConfig {
        retries: 2,
        ..OriginConfig::default()
    };
    let f = fetcher(fake.clone(), config);
    let e = f.stat("fake://a/x", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert_eq!(f.stats().requests(), 3, "the first attempt and 2 retries");
}

#[tokio::test(start_paused = true)]
async fn a_broken_read_resumes_where_it_stopped() {
    let fake = Arc::new(Fake::new(&[Step::Partial(1500)]));
    let f = fetcher(fake.clone(), OriginConfig::default());
    let mut dst = vec![0u8; 3000];
    let n = f
        .fetch_range("fake://a/x", 500..3500, &mut dst, None)
        .await
        .unwrap();
    assert_eq!(n, 3000);
    assert!(dst == fake.data[500..3500], "the bytes, in place");
    let ranges: Vec<_> = fake
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.range.clone())
        .collect();
    assert_eq!(ranges, [Some(500..3500), Some(2000..3500)]);
    assert_eq!(f.stats().bytes(), 3000);

    // A slice that is not the range's length is refused before any request.
    let mut short = vec![0u8; 10];
    assert!(f
        .fetch_range("fake://a/x", 0..20, &mut short, None)
        .await
        .is_err());
    assert_eq!(fake.seen.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn concurrency_is_limited_per_origin() {
    let mut fake = Fake::new(&[]);
    fake.hold = Duration::from_secs(1);
    let fake = Arc::new(fake);
    let config = OriginConfig {
        concurrency: 2,
        ..OriginConfig::default()
    };
    let f = fetcher(fake.clone(), config);
    let t0 = Instant::now();
    let a = (0..6).map(|_| f.stat("fake://a/x", None));
    let b = (0..2).map(|_| f.stat("fake://b/x", None));
    let all = futures::future::join_all(a.chain(b)).await;
    assert!(all.iter().all(|r| r.is_ok()));
    assert_eq!(fake.max_active("a"), 2);
    assert_eq!(fake.max_active("b"), 2);
    // a's six attempts two at a time; b's beside them.
    assert_eq!(t0.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn the_byte_rate_is_limited_per_origin() {
    let fake = Arc::new(Fake::new(&[]));
    let config = OriginConfig {
        rate_limit: Some(1000),
        ..OriginConfig::default()
    };
    let f = fetcher(fake.clone(), config);
    let t0 = Instant::now();
    let mut dst = vec![0u8; 3000];
    f.fetch_range("fake://a/x", 0..3000, &mut dst, None)
        .await
        .unwrap();
    // One second of burst, then 2000 bytes at 1000 B/s.
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1990) && took < Duration::from_millis(2100),
        "{took:?}"
    );
    // Another origin has its own bucket.
    let t1 = Instant::now();
    f.fetch_range("fake://b/x", 0..1000, &mut dst[..1000], None)
        .await
        .unwrap();
    assert!(t1.elapsed() < Duration::from_millis(10));
}

#[tokio::test]
async fn the_tasks_credential_goes_first_and_only_to_its_origin() {
    let fake = Arc::new(Fake::new(&[]));
    let config = OriginConfig {
        credentials: vec![OriginAuth::new("https://a/", "Bearer own").unwrap()],
        ..OriginConfig::default()
    };
    let f = fetcher(fake.clone(), config);
    let task = OriginAuth::new("https://a/", "Bearer task").unwrap();
    f.stat("fake://a/x", Some(&task)).await.unwrap();
    f.stat("fake://a/x", None).await.unwrap();
    f.stat("fake://b/x", Some(&task)).await.unwrap();
    let auths: Vec<_> = fake
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| (s.host.clone(), s.authorization.clone()))
        .collect();
    let a = |auth: Option<&str>| ("a".to_string(), auth.map(str::to_string));
    assert_eq!(
        auths,
        [
            a(Some("Bearer task")),
            a(Some("Bearer own")),
            ("b".into(), None)
        ]
    );
}

/// A registry that wants a pull token (Harbor, Docker Hub): the fetcher
/// trades its Basic login for one at the realm, once, and pulls; another
/// blob of the same repository reuses the token.
#[tokio::test]
async fn a_registry_token_flow_is_followed_with_the_basic_login() {
    use axum::http::{HeaderMap, StatusCode};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU32::new(0));
    let h = hits.clone();
    let blob = move |headers: HeaderMap| async move {
        let body = b"0123456789";
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer tok") {
            let challenge = format!(
                r#"Bearer realm="http://{addr}/token",service="reg",scope="repository:m:pull""#
            );
            return (
                StatusCode::UNAUTHORIZED,
                [
                    ("www-authenticate", challenge),
                    ("content-range", String::new()),
                ],
                Vec::new(),
            );
        }
        let range = headers
            .get("range")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("bytes=0-9");
        let (a, b) = range
            .strip_prefix("bytes=")
            .and_then(|r| r.split_once('-'))
            .map(|(a, b)| (a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()))
            .unwrap();
        let cr = format!("bytes {a}-{b}/10");
        (
            StatusCode::PARTIAL_CONTENT,
            [("www-authenticate", String::new()), ("content-range", cr)],
            body[a..=b].to_vec(),
        )
    };
    let app = axum::Router::new()
        .route(
            "/token",
            axum::routing::get(move |headers: HeaderMap| {
                let h = h.clone();
                async move {
                    h.fetch_add(1, Ordering::Relaxed);
                    // u:p
                    if headers.get("authorization").and_then(|v| v.to_str().ok())
                        != Some("Basic dTpw")
                    {
                        return (StatusCode::UNAUTHORIZED, String::new());
                    }
                    (
                        StatusCode::OK,
                        r#"{"token":"tok","expires_in":300}"#.to_string(),
                    )
                }
            }),
        )
        .route("/v2/m/blobs/x", axum::routing::get(blob))
        .route("/v2/m/blobs/y", axum::routing::get(blob));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let url = format!("http://{addr}/v2/m/blobs/x");
    let config = OriginConfig {
        credentials: vec![OriginAuth::new(&url, "Basic dTpw").unwrap()],
        retries: 0,
        ..OriginConfig::default()
    };
    let f = OriginFetcher::new(config, Arc::new(OriginStats::default()));
    assert_eq!(f.stat(&url, None).await.unwrap().content_length, 10);
    let mut dst = [0u8; 10];
    f.fetch_range(&url, 0..10, &mut dst, None).await.unwrap();
    assert_eq!(&dst, b"0123456789");
    let other = format!("http://{addr}/v2/m/blobs/y");
    let mut dst = [0u8; 4];
    f.fetch_range(&other, 3..7, &mut dst, None).await.unwrap();
    assert_eq!(&dst, b"3456");
    assert_eq!(
        hits.load(Ordering::Relaxed),
        1,
        "one token for the repository, reused until it expires"
    );

    // A task that brings the login itself, to a peer that has none.
    let peer = OriginFetcher::new(
        OriginConfig {
            retries: 0,
            ..OriginConfig::default()
        },
        Arc::new(OriginStats::default()),
    );
    let login = OriginAuth::new(&url, "Basic dTpw").unwrap();
    let mut dst = [0u8; 10];
    peer.fetch_range(&url, 0..10, &mut dst, Some(&login))
        .await
        .unwrap();
    assert_eq!(&dst, b"0123456789");
    assert_eq!(hits.load(Ordering::Relaxed), 2);

    let anonymous = OriginFetcher::new(
        OriginConfig {
            retries: 0,
            ..OriginConfig::default()
        },
        Arc::new(OriginStats::default()),
    );
    let e = anonymous.stat(&url, None).await.unwrap_err();
    assert!(matches!(e, OriginError::Token { .. }), "{e}");
    assert_eq!(e.kind(), ErrorKind::Unauthorized);
}
