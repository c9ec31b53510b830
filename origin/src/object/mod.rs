//! Object storage as an origin: `s3://`, `gs://`, `az://` (and Triton's
//! `as://`) URLs, and what a store's refusal means.
//!
//! This module is always compiled: the URL grammar and the errors cost
//! nothing, so the engine and the CLI can name objects whether or not this
//! build has the cloud clients. The backends are behind the crate's
//! `object-store` feature:
//!
//! - [`s3`]: S3 and S3-compatible stores (MinIO, Ceph, moto). The requests
//!   are ours (a HEAD that asks for the full-object sha256 checksum, ranged
//!   GETs, raw-key ListObjectsV2), signed with the `object_store` crate's
//!   SigV4 signer and credential chain; [`aws_profile`] reads the AWS config
//!   files, which that chain does not.
//! - [`cloud`]: GCS and Azure Blob Storage through `object_store` itself.
//!
//! An object changes in place under one name, so a task of one is named
//! only after a stat ([`crate::Backend::pins`]): by its sha256 where the
//! store vouches for one, else by this URL with the version and `ETag` the
//! stat saw as query parameters (`?version=..&etag=..`). A seed reads the
//! pinned version (`versionId`, `If-Match`), so bytes of two versions never
//! mix, and a changed object is a new task.

pub mod aws_profile;
#[cfg(feature = "object-store")]
pub mod cloud;
#[cfg(feature = "object-store")]
pub mod s3;

use crate::error::{ErrorKind, OriginError};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::Url;
use std::fmt;

/// The URL schemes of object storage.
pub const SCHEMES: &[&str] = &["s3", "gs", "az", "as"];

/// Whether `url` is written as an object-storage URL.
pub fn is_object_url(url: &str) -> bool {
    SCHEMES.iter().any(|s| {
        url.len() > s.len() + 3 && url[..s.len() + 3].eq_ignore_ascii_case(&format!("{s}://"))
    })
}

/// Which cloud protocol a URL speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    S3,
    Gcs,
    Azure,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::S3 => "S3",
            Provider::Gcs => "GCS",
            Provider::Azure => "Azure Blob Storage",
        }
    }

    /// Where this provider's credentials come from, for messages.
    pub fn credentials_hint(self) -> &'static str {
        match self {
            Provider::S3 => "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), or AWS_PROFILE with ~/.aws/credentials, or give the node a role (instance metadata, EKS web identity)",
            Provider::Gcs => "set GOOGLE_APPLICATION_CREDENTIALS (or GOOGLE_SERVICE_ACCOUNT) to a service account key, or give the node a service account (instance metadata)",
            Provider::Azure => "set AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY (or a SAS token, or a service principal), or give the node a managed identity",
        }
    }
}

/// An S3 endpoint that the URL names (`s3://host:port/bucket/key`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub https: bool,
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// From `http(s)://host[:port][/]`, as `AWS_ENDPOINT_URL` and
    /// `--s3-upstream` are written.
    pub fn parse(url: &str) -> Result<Self, OriginError> {
        let bad = |why: &str| OriginError::BadUrl {
            url: url.to_string(),
            why: why.to_string(),
        };
        let u = Url::parse(url).map_err(|_| bad("expected http(s)://host[:port]"))?;
        let https = match u.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(bad("expected http(s)://host[:port]")),
        };
        if !matches!(u.path(), "" | "/") || u.query().is_some() {
            return Err(bad(
                "an S3 endpoint is http(s)://host[:port], without a path",
            ));
        }
        let host = u.host_str().ok_or_else(|| bad("it names no host"))?;
        Ok(Self {
            https,
            host: host.to_string(),
            port: u
                .port_or_known_default()
                .unwrap_or(if https { 443 } else { 80 }),
        })
    }

    /// `http(s)://host:port`.
    pub fn base_url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }

    /// What `s3://host:port/...` means without a `scheme` parameter: plain
    /// HTTP (as Triton reads it), HTTPS on 443.
    fn https_by_default(port: u16) -> bool {
        port == 443
    }
}

/// An object, or a prefix of objects, in a bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectUrl {
    pub provider: Provider,
    /// S3: the endpoint the URL names; `None` for the one of the
    /// environment (`AWS_ENDPOINT_URL`), else AWS's.
    pub endpoint: Option<Endpoint>,
    /// Azure: the storage account (`as://account/container/...`); `None`
    /// for `AZURE_STORAGE_ACCOUNT_NAME`.
    pub account: Option<String>,
    /// The bucket (Azure: the container).
    pub bucket: String,
    /// The key, or a prefix of keys; empty for the whole bucket.
    pub key: String,
    /// A pinned version (S3 `versionId`, GCS generation).
    pub version: Option<String>,
    /// A pinned `ETag`, bare (no quotes).
    pub etag: Option<String>,
}

/// What a key may keep unencoded in a URL path: RFC 3986's unreserved
/// characters and `/`, which is also how SigV4 wants an S3 path.
const KEY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// Strict RFC 3986 encoding of a query value (and of a key component).
const COMPONENT: &AsciiSet = &KEY.add(b'/');

/// `key` encoded for a URL path (slashes kept).
pub fn encode_key(key: &str) -> String {
    utf8_percent_encode(key, KEY).to_string()
}

/// `value` encoded for a query string, strictly (`%20`, never `+`).
pub fn encode_component(value: &str) -> String {
    utf8_percent_encode(value, COMPONENT).to_string()
}

impl ObjectUrl {
    /// Parses a URL as users write it, including Triton's
    /// `s3://http(s)://host:port/bucket/path`.
    pub fn parse(url: &str) -> Result<Self, OriginError> {
        let bad = |why: &str| OriginError::BadUrl {
            url: url.to_string(),
            why: why.to_string(),
        };
        let lower = url.get(..13).unwrap_or(url).to_ascii_lowercase();
        let mut rewritten = None;
        for scheme in ["https", "http"] {
            let triton = format!("s3://{scheme}://");
            if lower.starts_with(&triton) {
                let rest = &url[triton.len()..];
                rewritten = Some(with_query(
                    &format!("s3://{rest}"),
                    &format!("scheme={scheme}"),
                ));
                break;
            }
        }
        let text = rewritten.as_deref().unwrap_or(url);
        let u = Url::parse(text).map_err(|e| bad(&e.to_string()))?;
        let o = Self::from_url(&u)?;
        // Triton's explicit-scheme form must name a port.
        if rewritten.is_some() && o.endpoint.is_none() {
            return Err(bad("s3://http(s)://host:port/bucket/path needs the port"));
        }
        Ok(o)
    }

    /// From a parsed URL (its scheme one of [`SCHEMES`]).
    pub fn from_url(u: &Url) -> Result<Self, OriginError> {
        let bad = |why: String| OriginError::BadUrl {
            url: u.to_string(),
            why,
        };
        let provider = match u.scheme() {
            "s3" => Provider::S3,
            "gs" => Provider::Gcs,
            "az" | "as" => Provider::Azure,
            s => return Err(bad(format!("{s}:// is not object storage"))),
        };
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("it names no bucket".into()))?;
        let path = percent_decode_str(u.path())
            .decode_utf8()
            .map_err(|_| bad("the key is not UTF-8".into()))?;
        let path = path.strip_prefix('/').unwrap_or(&path);
        let (mut version, mut etag, mut scheme) = (None, None, None);
        for (k, v) in u.query_pairs() {
            match &*k {
                "version" => version = Some(v.into_owned()),
                "etag" => etag = Some(v.into_owned()),
                "scheme" if provider == Provider::S3 => scheme = Some(v.into_owned()),
                other => {
                    return Err(bad(format!(
                        "unknown parameter {other:?} (expected version, etag{})",
                        if provider == Provider::S3 {
                            " or scheme"
                        } else {
                            ""
                        }
                    )))
                }
            }
        }
        let split = |path: &str| -> (String, String) {
            match path.split_once('/') {
                Some((b, k)) => (b.to_string(), k.to_string()),
                None => (path.to_string(), String::new()),
            }
        };
        let (endpoint, account, bucket, key) = match (provider, u.port(), u.scheme()) {
            (Provider::S3, Some(port), _) => {
                let https = match scheme.as_deref() {
                    None => Endpoint::https_by_default(port),
                    Some("https") => true,
                    Some("http") => false,
                    Some(s) => return Err(bad(format!("scheme={s}: expected http or https"))),
                };
                let (bucket, key) = split(path);
                let endpoint = Endpoint {
                    https,
                    host: host.to_string(),
                    port,
                };
                (Some(endpoint), None, bucket, key)
            }
            (_, Some(_), _) => return Err(bad("a bucket name has no port".into())),
            (Provider::S3, None, _) if scheme.is_some() => {
                return Err(bad("scheme= goes with s3://host:port/bucket/key".into()))
            }
            (Provider::Azure, None, "as") => {
                let (container, key) = split(path);
                (None, Some(host.to_string()), container, key)
            }
            _ => (None, None, host.to_string(), path.to_string()),
        };
        if bucket.is_empty() {
            return Err(bad("it names no bucket".into()));
        }
        Ok(Self {
            provider,
            endpoint,
            account,
            bucket,
            key,
            version,
            etag,
        })
    }

    /// The canonical URL: what a task is named by (with its pin).
    pub fn to_url(&self) -> Url {
        let key = encode_key(&self.key);
        let mut text = match (self.provider, &self.endpoint, &self.account) {
            (Provider::S3, Some(e), _) => {
                format!("s3://{}:{}/{}/{key}", e.host, e.port, self.bucket)
            }
            (Provider::S3, None, _) => format!("s3://{}/{key}", self.bucket),
            (Provider::Gcs, _, _) => format!("gs://{}/{key}", self.bucket),
            (Provider::Azure, _, Some(a)) => format!("as://{a}/{}/{key}", self.bucket),
            (Provider::Azure, _, None) => format!("az://{}/{key}", self.bucket),
        };
        let mut params = Vec::new();
        if let Some(e) = &self.endpoint {
            if e.https != Endpoint::https_by_default(e.port) {
                params.push(format!("scheme={}", if e.https { "https" } else { "http" }));
            }
        }
        if let Some(v) = &self.version {
            params.push(format!("version={}", encode_component(v)));
        }
        if let Some(t) = &self.etag {
            params.push(format!("etag={}", encode_component(t)));
        }
        if !params.is_empty() {
            text.push('?');
            text.push_str(&params.join("&"));
        }
        Url::parse(&text).expect("an ObjectUrl's canonical form parses: its parts are encoded")
    }

    /// This URL with the store that this process's environment points at
    /// written into it: for `s3://bucket/key`, the endpoint of
    /// `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL` or the AWS profile's
    /// `endpoint_url`; for `az://`, the account of
    /// `AZURE_STORAGE_ACCOUNT_NAME`. Another node (a daemon, a seed) then
    /// reads the same store whatever its own environment says.
    pub fn store_named(&self) -> Result<Self, OriginError> {
        self.store_named_by(&|k| std::env::var(k).ok())
    }

    /// [`ObjectUrl::store_named`] with the environment `env`.
    pub fn store_named_by(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, OriginError> {
        let mut o = self.clone();
        match self.provider {
            Provider::S3 if o.endpoint.is_none() => {
                o.endpoint = environment_endpoint(env)?;
            }
            Provider::Azure if o.account.is_none() => {
                o.account = env("AZURE_STORAGE_ACCOUNT_NAME").filter(|a| !a.is_empty());
            }
            _ => {}
        }
        Ok(o)
    }

    /// The object `key` in the same bucket and store, unpinned.
    pub fn with_key(&self, key: &str) -> Self {
        Self {
            key: key.to_string(),
            version: None,
            etag: None,
            ..self.clone()
        }
    }

    /// Whether this names a prefix (a "directory") rather than one object.
    pub fn is_prefix(&self) -> bool {
        self.key.is_empty() || self.key.ends_with('/')
    }

    /// `scheme://bucket/`, for messages.
    pub fn bucket_url(&self) -> String {
        let mut u = self.with_key("");
        u.version = None;
        u.to_url().to_string()
    }
}

impl fmt::Display for ObjectUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_url().as_str())
    }
}

/// The S3 endpoint the environment names: `AWS_ENDPOINT_URL_S3`, else
/// `AWS_ENDPOINT_URL`, else the selected AWS profile's `endpoint_url`.
pub fn environment_endpoint(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Endpoint>, OriginError> {
    let var = |k: &str| env(k).filter(|v| !v.is_empty());
    let named = match var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL")) {
        Some(e) => Some(e),
        None => aws_profile::load(var)
            .map_err(|e| ObjectError::Config {
                provider: Provider::S3,
                why: e.to_string(),
            })?
            .and_then(|p| p.endpoint_url),
    };
    named.map(|e| Endpoint::parse(&e)).transpose()
}

fn with_query(url: &str, param: &str) -> String {
    match url.contains('?') {
        true => format!("{url}&{param}"),
        false => format!("{url}?{param}"),
    }
}

/// A store's answer to a request that failed, in its own words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// The store's error code (`AccessDenied`, `NoSuchKey`, `ExpiredToken`).
    pub code: Option<String>,
    pub message: Option<String>,
}

impl Refusal {
    fn kind(&self) -> ErrorKind {
        match self.code.as_deref() {
            Some("NoSuchKey" | "NoSuchBucket" | "NoSuchVersion") => ErrorKind::NotFound,
            Some(
                "AccessDenied"
                | "ExpiredToken"
                | "TokenRefreshRequired"
                | "InvalidAccessKeyId"
                | "InvalidToken"
                | "SignatureDoesNotMatch"
                | "AllAccessDisabled"
                | "AccountProblem",
            ) => ErrorKind::Unauthorized,
            Some("SlowDown" | "ServiceUnavailable" | "InternalError" | "RequestTimeout") => {
                ErrorKind::Unavailable
            }
            _ => reqwest::StatusCode::from_u16(self.status)
                .map(ErrorKind::of_status)
                .unwrap_or(ErrorKind::Refused),
        }
    }

    fn explain(&self) -> String {
        let said = match (&self.code, &self.message) {
            (Some(c), Some(m)) => format!("{} {c}: {m}", self.status),
            (Some(c), None) => format!("{} {c}", self.status),
            (None, Some(m)) => format!("{}: {m}", self.status),
            (None, None) => self.status.to_string(),
        };
        match (self.code.as_deref(), self.status) {
            (Some("ExpiredToken" | "TokenRefreshRequired"), _) => {
                format!("the credentials have expired ({said}): renew them")
            }
            (Some("NoSuchBucket"), _) => format!("no such bucket ({said})"),
            (Some("NoSuchKey"), _) => format!("no such object ({said})"),
            (None, 404) => format!("no such object or bucket ({said})"),
            (Some("InvalidAccessKeyId" | "SignatureDoesNotMatch"), _) => {
                format!("the store does not accept these credentials ({said})")
            }
            (None, 400) => format!(
                "the store refused the request ({said}; a HEAD answers no reason: often an expired or malformed credential)"
            ),
            (_, 401 | 403) => format!("access denied ({said})"),
            _ => format!("the store refused the request ({said})"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("{url}: {}{}", refusal.explain(), unauthorized_hint(*provider, refusal.kind()))]
    Refused {
        url: String,
        provider: Provider,
        refusal: Refusal,
    },
    #[error("{url}: the object changed since it was listed (it is no longer the version this task names); ask for it again")]
    Changed { url: String },
    #[error("no {} credentials: {}", provider.name(), provider.credentials_hint())]
    NoCredentials { provider: Provider },
    #[error("{} credentials: {why}: {}", provider.name(), provider.credentials_hint())]
    Credentials { provider: Provider, why: String },
    #[error("{} configuration: {why}", provider.name())]
    Config { provider: Provider, why: String },
    /// The `object_store` crate's error, classified.
    #[error("{url}: {message}{}", unauthorized_hint(*provider, *kind))]
    Library {
        url: String,
        provider: Provider,
        kind: ErrorKind,
        message: String,
    },
}

fn unauthorized_hint(provider: Provider, kind: ErrorKind) -> String {
    match kind {
        ErrorKind::Unauthorized => {
            format!(": check the credentials ({})", provider.credentials_hint())
        }
        _ => String::new(),
    }
}

impl ObjectError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ObjectError::Refused { refusal, .. } => refusal.kind(),
            ObjectError::Changed { .. } => ErrorKind::Refused,
            ObjectError::NoCredentials { .. } | ObjectError::Credentials { .. } => {
                ErrorKind::Unauthorized
            }
            ObjectError::Config { .. } => ErrorKind::Config,
            ObjectError::Library { kind, .. } => *kind,
        }
    }
}

impl From<ObjectError> for OriginError {
    fn from(e: ObjectError) -> Self {
        OriginError::Object(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ObjectUrl {
        ObjectUrl::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn bucket_and_key_forms() {
        let o = p("s3://models/llama3/model.safetensors");
        assert_eq!((o.provider, o.endpoint.clone()), (Provider::S3, None));
        assert_eq!(
            (o.bucket.as_str(), o.key.as_str()),
            ("models", "llama3/model.safetensors")
        );
        assert!(!o.is_prefix());
        assert!(p("s3://models/llama3/").is_prefix());
        assert!(p("s3://models").is_prefix());
        assert_eq!(p("s3://models").to_string(), "s3://models/");

        let g = p("gs://bucket/a/b.bin");
        assert_eq!(
            (g.provider, g.bucket.as_str(), g.key.as_str()),
            (Provider::Gcs, "bucket", "a/b.bin")
        );
        let a = p("az://container/m/w.bin");
        assert_eq!(
            (a.provider, a.account.clone(), a.bucket.as_str()),
            (Provider::Azure, None, "container")
        );
        let t = p("as://acct/container/m/w.bin");
        assert_eq!(t.account.as_deref(), Some("acct"));
        assert_eq!(
            (t.bucket.as_str(), t.key.as_str()),
            ("container", "m/w.bin")
        );
        assert_eq!(t.to_string(), "as://acct/container/m/w.bin");
    }

    #[test]
    fn triton_endpoint_forms() {
        let o = p("s3://127.0.0.1:7440/models/triton-repo");
        let e = o.endpoint.clone().unwrap();
        assert_eq!(
            (e.https, e.host.as_str(), e.port),
            (false, "127.0.0.1", 7440)
        );
        assert_eq!(
            (o.bucket.as_str(), o.key.as_str()),
            ("models", "triton-repo")
        );
        assert_eq!(o.to_string(), "s3://127.0.0.1:7440/models/triton-repo");
        assert!(p("s3://minio.local:443/b/k").endpoint.unwrap().https);

        let s = p("s3://https://minio.local:9000/b/k");
        assert!(s.endpoint.clone().unwrap().https);
        assert_eq!(s.to_string(), "s3://minio.local:9000/b/k?scheme=https");
        assert_eq!(p(&s.to_string()), s, "the canonical form parses back");
        let h = p("s3://http://minio.local:9000/b/k");
        assert!(!h.endpoint.unwrap().https);
        assert!(ObjectUrl::parse("s3://https://minio.local/b/k").is_err());
        assert!(ObjectUrl::parse("gs://b:9000/k").is_err());
        assert!(ObjectUrl::parse("s3://b/k?scheme=https").is_err());
        assert!(ObjectUrl::parse("s3://b/k?versionId=1").is_err());
        assert!(ObjectUrl::parse("s3:///k").is_err());
    }

    #[test]
    fn keys_and_pins_round_trip() {
        let mut o = p("s3://b/dir/");
        o.key = "dir/a b+c%/ü/x?y#z".into();
        o.version = Some("v 1+2".into());
        o.etag = Some("d41d8cd98f00b204e9800998ecf8427e-2".into());
        let text = o.to_string();
        assert_eq!(
            text,
            "s3://b/dir/a%20b%2Bc%25/%C3%BC/x%3Fy%23z?version=v%201%2B2&etag=d41d8cd98f00b204e9800998ecf8427e-2"
        );
        assert_eq!(p(&text), o);
        assert_eq!(o.with_key("other").to_string(), "s3://b/other");
        assert_eq!(o.bucket_url(), "s3://b/");
    }

    #[test]
    fn object_urls_are_recognized() {
        assert!(is_object_url("s3://b/k"));
        assert!(is_object_url("GS://b/k"));
        assert!(is_object_url("as://a/c/k"));
        assert!(!is_object_url("https://b/k"));
        assert!(!is_object_url("s3:/"));
    }

    #[test]
    fn the_environment_names_the_store() {
        let env = |k: &str| match k {
            "AWS_ENDPOINT_URL" => Some("http://127.0.0.1:9000".to_string()),
            "AZURE_STORAGE_ACCOUNT_NAME" => Some("acct".to_string()),
            "HOME" => Some("/nonexistent".to_string()),
            _ => None,
        };
        let o = p("s3://models/k").store_named_by(&env).unwrap();
        assert_eq!(o.to_string(), "s3://127.0.0.1:9000/models/k");
        let kept = p("s3://10.0.0.1:9000/models/k")
            .store_named_by(&env)
            .unwrap();
        assert_eq!(kept.to_string(), "s3://10.0.0.1:9000/models/k");
        assert_eq!(
            p("az://c/k").store_named_by(&env).unwrap().to_string(),
            "as://acct/c/k"
        );
        let none = |k: &str| (k == "HOME").then(|| "/nonexistent".to_string());
        assert_eq!(
            p("s3://models/k")
                .store_named_by(&none)
                .unwrap()
                .to_string(),
            "s3://models/k"
        );
    }

    #[test]
    fn endpoints_parse() {
        let e = Endpoint::parse("http://127.0.0.1:9000/").unwrap();
        assert_eq!(e.base_url(), "http://127.0.0.1:9000");
        assert_eq!(
            Endpoint::parse("https://s3.us-east-1.amazonaws.com")
                .unwrap()
                .port,
            443
        );
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("http://x/path").is_err());
    }

    #[test]
    fn refusals_say_what_to_do() {
        let r = |status, code: Option<&str>| ObjectError::Refused {
            url: "s3://b/k".into(),
            provider: Provider::S3,
            refusal: Refusal {
                status,
                code: code.map(str::to_string),
                message: None,
            },
        };
        assert_eq!(r(403, Some("AccessDenied")).kind(), ErrorKind::Unauthorized);
        assert!(
            r(403, None).to_string().contains("AWS_ACCESS_KEY_ID"),
            "{}",
            r(403, None)
        );
        assert_eq!(r(400, Some("ExpiredToken")).kind(), ErrorKind::Unauthorized);
        assert!(r(400, Some("ExpiredToken")).to_string().contains("expired"));
        assert_eq!(r(404, Some("NoSuchBucket")).kind(), ErrorKind::NotFound);
        assert!(r(404, Some("NoSuchBucket"))
            .to_string()
            .contains("no such bucket"));
        assert_eq!(r(404, None).kind(), ErrorKind::NotFound);
        assert_eq!(r(503, Some("SlowDown")).kind(), ErrorKind::Unavailable);
        let e: OriginError = r(503, Some("SlowDown")).into();
        assert!(e.retryable());
        let e: OriginError = r(403, None).into();
        assert!(!e.retryable());
    }
}
