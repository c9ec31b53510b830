//! The one trait every origin implements, and the registry that picks an
//! implementation by URL scheme.
//!
//! A backend knows its protocol: how to learn an object's length and
//! identity ([`Backend::stat`]), how to read a byte range of it straight
//! into the caller's memory ([`Backend::read_range`], into a piece's slice
//! of the mmap'd task file), and how to list a prefix ([`Backend::list`]:
//! the Hub's tree, a registry's tags). It does not retry, wait for a
//! request slot or pace bytes: [`OriginFetcher`](crate::OriginFetcher)
//! wraps every backend with the same limits and retries, and one attempt
//! of a backend is one request (or one short chain of them).
//!
//! [`Backends::builtin`] holds what needs no configuration (plain HTTP and
//! HTTPS); backends that do (the Hub's endpoint, a registry's protocol and
//! login) are [`Backends::register`]ed by whoever has that configuration. A
//! heavier backend (object storage: `s3://`, `gs://`, `az://`) comes in
//! behind a cargo feature and registers itself in `builtin` the same way.

use crate::error::OriginError;
use crate::limits::OriginLimit;
use crate::origin_key::OriginKey;
use crate::stats::OriginStats;
use reqwest::Url;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

/// What an origin says about an object before any byte moves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    pub content_length: u64,
    /// The origin's `ETag`, without quotes and `W/`.
    pub etag: Option<String>,
    /// A content digest the origin vouches for (`sha256:<hex>`): a
    /// registry's `Docker-Content-Digest`, the Hub's LFS sha256, an S3
    /// object's full-object `x-amz-checksum-sha256`.
    pub digest: Option<String>,
    /// The version of a store that keeps several under one name (an S3
    /// `versionId`, a GCS generation).
    pub version: Option<String>,
    /// When the origin says the object last changed.
    pub last_modified: Option<SystemTime>,
    /// The origin ignores `Range`: pieces are read from one plain GET in
    /// order (see `sequential`).
    pub sequential: bool,
}

/// One entry of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// The path below the listed prefix, or a registry's tag.
    pub name: String,
    pub size: Option<u64>,
    pub digest: Option<String>,
    pub is_dir: bool,
    /// The entry's `ETag`, without quotes and `W/` (object storage lists them).
    pub etag: Option<String>,
    pub last_modified: Option<SystemTime>,
}

/// What one attempt is about: the URL, and the `Authorization` the
/// fetcher chose for it (the task's, a held token, or this peer's own).
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub url: &'a Url,
    pub authorization: Option<&'a str>,
}

/// What a ranged read must still find at the origin: the object as its
/// stat saw it. A range from a changed object would make a file of two
/// versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub content_length: u64,
    /// The stat's `ETag`, when the origin sent one.
    pub etag: Option<String>,
}

/// Where a ranged read puts its bytes: the caller's slice, filled in
/// order. It survives attempts, so a retry resumes where the last attempt
/// broke off ([`RangeSink::filled`]); it paces bytes by the origin's rate
/// limit and counts them.
pub struct RangeSink<'a> {
    url: &'a str,
    dst: &'a mut [u8],
    filled: usize,
    limit: Option<&'a OriginLimit>,
    stats: &'a OriginStats,
    expect: Option<Identity>,
}

impl<'a> RangeSink<'a> {
    pub fn new(
        url: &'a str,
        dst: &'a mut [u8],
        limit: Option<&'a OriginLimit>,
        stats: &'a OriginStats,
    ) -> Self {
        Self {
            url,
            dst,
            filled: 0,
            limit,
            stats,
            expect: None,
        }
    }

    /// The object every answer must still be (see [`Identity`]).
    pub fn expecting(mut self, expect: Option<Identity>) -> Self {
        self.expect = expect;
        self
    }

    pub fn expected(&self) -> Option<&Identity> {
        self.expect.as_ref()
    }

    /// Bytes already in place.
    pub fn filled(&self) -> usize {
        self.filled
    }

    /// The whole range's length.
    pub fn len(&self) -> usize {
        self.dst.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dst.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.filled == self.dst.len()
    }

    /// Appends `chunk`, after waiting for the rate limit. Fails when the
    /// origin sends more than the range.
    pub async fn put(&mut self, chunk: &[u8]) -> Result<(), OriginError> {
        let end = self.filled + chunk.len();
        if end > self.dst.len() {
            return Err(OriginError::ShortBody {
                url: self.url.to_string(),
                got: end as u64,
                want: self.dst.len() as u64,
            });
        }
        if let Some(limit) = self.limit {
            limit.pace(chunk.len()).await;
        }
        self.dst[self.filled..end].copy_from_slice(chunk);
        self.filled = end;
        OriginStats::add(&self.stats.bytes, chunk.len() as u64);
        Ok(())
    }
}

/// An origin protocol.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// A short name for messages (`http`, `hub`, `registry`).
    fn name(&self) -> &'static str;

    /// The URL schemes this backend serves.
    fn schemes(&self) -> &'static [&'static str];

    /// Checks the shape of `url` (its scheme is one of [`Backend::schemes`]).
    fn check(&self, url: &Url) -> Result<(), OriginError> {
        match url.host() {
            Some(_) => Ok(()),
            None => Err(OriginError::BadUrl {
                url: url.to_string(),
                why: "it names no host".into(),
            }),
        }
    }

    /// Where requests for `url` go: credentials and limits are keyed by it.
    fn origin(&self, url: &Url) -> OriginKey {
        OriginKey::of(url)
    }

    /// The object's length and what the origin says identifies it.
    async fn stat(&self, target: Target<'_>) -> Result<Stat, OriginError>;

    /// A plain GET of the whole object, for an origin that ignores `Range`
    /// ([`Stat::sequential`]).
    async fn open_body(&self, target: Target<'_>) -> Result<reqwest::Response, OriginError> {
        Err(OriginError::Unsupported {
            url: target.url.to_string(),
            backend: self.name(),
            operation: "read an object without ranges",
        })
    }

    /// Reads `range` of the object into `sink`, in order. `range` starts
    /// where the sink is filled to (a retry asks for the rest only).
    async fn read_range(
        &self,
        target: Target<'_>,
        range: Range<u64>,
        sink: &mut RangeSink<'_>,
    ) -> Result<(), OriginError>;

    /// The entries under `url` (a directory, a repository).
    async fn list(&self, target: Target<'_>) -> Result<Vec<Entry>, OriginError>;

    /// Whether a task of this backend's URLs is named only after a
    /// [`Backend::stat`]: its objects change in place under one name
    /// (object storage), so the name alone does not say which bytes it is.
    fn pins(&self) -> bool {
        false
    }

    /// `url` bound to the version of the object that `stat` saw (its
    /// version id, else its `ETag`), for a backend that [`Backend::pins`]:
    /// a changed object is then a new task, and a read of the old one
    /// fails rather than mixing the bytes of two versions. `None`: the URL
    /// names its bytes already (the default).
    fn pin(&self, url: &Url, stat: &Stat) -> Option<Url> {
        let _ = (url, stat);
        None
    }
}

/// The backends a fetcher knows, by URL scheme.
#[derive(Clone, Default)]
pub struct Backends {
    by_scheme: BTreeMap<&'static str, Arc<dyn Backend>>,
}

impl Backends {
    /// Backends that need no configuration: plain HTTP(S), and with the
    /// `object-store` feature `s3://`, `gs://` and `az://`/`as://` (their
    /// credentials and endpoints come from the environment).
    pub fn builtin() -> Self {
        let mut b = Self::default();
        b.register(Arc::new(crate::http::HttpBackend::new()));
        #[cfg(feature = "object-store")]
        {
            use crate::object::{cloud::CloudBackend, s3::S3Backend};
            b.register(Arc::new(S3Backend::new()));
            b.register(Arc::new(CloudBackend::gcs()));
            b.register(Arc::new(CloudBackend::azure()));
        }
        b
    }

    /// Serves `backend`'s schemes with it (replacing any other for them).
    pub fn register(&mut self, backend: Arc<dyn Backend>) -> &mut Self {
        for scheme in backend.schemes() {
            self.by_scheme.insert(scheme, backend.clone());
        }
        self
    }

    pub fn schemes(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.by_scheme.keys().copied()
    }

    /// The parsed `url` and the backend for its scheme.
    pub fn for_url(&self, url: &str) -> Result<(Url, &Arc<dyn Backend>), OriginError> {
        let bad = |why: String| OriginError::BadUrl {
            url: url.to_string(),
            why,
        };
        let u = Url::parse(url).map_err(|e| bad(format!("{e}")))?;
        let backend = self.by_scheme.get(u.scheme()).ok_or_else(|| {
            let known: Vec<String> = self.schemes().map(|s| format!("{s}://")).collect();
            bad(format!("expected {}", known.join(" or ")))
        })?;
        backend.check(&u)?;
        Ok((u, backend))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    struct Fake(&'static [&'static str]);

    #[async_trait::async_trait]
    impl Backend for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn schemes(&self) -> &'static [&'static str] {
            self.0
        }
        async fn stat(&self, _: Target<'_>) -> Result<Stat, OriginError> {
            Ok(Stat {
                content_length: 7,
                ..Stat::default()
            })
        }
        async fn read_range(
            &self,
            _: Target<'_>,
            _: Range<u64>,
            _: &mut RangeSink<'_>,
        ) -> Result<(), OriginError> {
            Ok(())
        }
        async fn list(&self, _: Target<'_>) -> Result<Vec<Entry>, OriginError> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn the_scheme_chooses_the_backend() {
        let mut b = Backends::builtin();
        assert_eq!(b.for_url("https://example.com/x").unwrap().1.name(), "http");
        assert_eq!(b.for_url("http://example.com/x").unwrap().1.name(), "http");
        let e = b.for_url("ftp://bucket/key").err().unwrap();
        assert_eq!(e.kind(), ErrorKind::BadUrl);
        assert!(e.to_string().contains("expected "), "{e}");
        assert!(e.to_string().contains("http:// or https://"), "{e}");
        assert_eq!(
            b.for_url("not a url").err().unwrap().kind(),
            ErrorKind::BadUrl
        );
        assert_eq!(b.for_url("https:").err().unwrap().kind(), ErrorKind::BadUrl);

        b.register(Arc::new(Fake(&["s3", "gs"])));
        assert_eq!(b.for_url("s3://bucket/key").unwrap().1.name(), "fake");
        assert_eq!(b.for_url("gs://bucket/key").unwrap().1.name(), "fake");
        assert_eq!(b.for_url("https://example.com/x").unwrap().1.name(), "http");
        let schemes: Vec<_> = b.schemes().collect();
        for s in ["gs", "http", "https", "s3"] {
            assert!(schemes.contains(&s), "{schemes:?}");
        }
        // A later registration for a scheme wins.
        b.register(Arc::new(Fake(&["https"])));
        assert_eq!(b.for_url("https://example.com/x").unwrap().1.name(), "fake");
    }

    #[tokio::test]
    async fn a_sink_fills_in_order_and_refuses_overflow() {
        let stats = OriginStats::default();
        let mut buf = [0u8; 6];
        let mut sink = RangeSink::new("u", &mut buf, None, &stats);
        sink.put(b"abc").await.unwrap();
        assert_eq!(sink.filled(), 3);
        sink.put(b"de").await.unwrap();
        let e = sink.put(b"fg").await.unwrap_err();
        assert!(matches!(
            e,
            OriginError::ShortBody {
                got: 7,
                want: 6,
                ..
            }
        ));
        sink.put(b"f").await.unwrap();
        assert!(sink.is_full());
        assert_eq!(&buf, b"abcdef");
        assert_eq!(stats.bytes(), 6);
    }
}
