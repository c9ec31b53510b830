//! S3 and S3-compatible stores as an `s3://` [`Backend`].
//!
//! Three requests, each signed with SigV4 by the `object_store` crate's
//! signer with a credential from its chain (environment, web identity,
//! container, instance metadata), or from the AWS config files
//! ([`aws_profile`](super::aws_profile)):
//!
//! - stat: `HEAD` with `x-amz-checksum-mode: ENABLED`, so that an object
//!   uploaded with a SHA-256 checksum names its whole-file sha256 (a
//!   multipart upload's composite checksum does not: it is not the file's);
//!   a bucket's stat is `HEAD` of the bucket.
//! - read: ranged `GET`, of the pinned `versionId` and with `If-Match` on the
//!   pinned `ETag`, so a seed never mixes two versions of an object.
//! - list: ListObjectsV2 by raw prefix, every page, keys exactly as stored.
//!
//! These are ours rather than `object_store`'s own calls because it has no
//! checksum in its metadata and turns keys into its `Path`, which cannot
//! hold every key a bucket can (empty segments, `dir/` markers).
//!
//! Where a request goes: the endpoint the URL names (`s3://host:port/...`,
//! path-style), else `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` / the
//! profile's `endpoint_url` (path-style), else AWS in `AWS_REGION`
//! (virtual-hosted). Instance metadata is not asked when
//! `AWS_EC2_METADATA_DISABLED=true`; `AWS_SKIP_SIGNATURE=true` sends
//! requests unsigned, for public buckets.

use super::aws_profile::{self, Profile};
use super::{encode_component, encode_key, Endpoint, ObjectError, ObjectUrl, Provider, Refusal};
use crate::backend::{Backend, Entry, RangeSink, Stat, Target};
use crate::error::OriginError;
use base64::Engine as _;
use object_store::aws::{AmazonS3Builder, AwsAuthorizer, AwsCredentialProvider};
use object_store::client::HttpRequestBody;
use object_store::{ClientOptions, RetryConfig};
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, ETAG, IF_MATCH, LAST_MODIFIED, RANGE,
};
use reqwest::{Method, StatusCode, Url};
use std::ops::Range;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};
use weightcast_modelpack::hf_api::bare_etag;

/// How requests are signed.
enum Signer {
    Chain(AwsCredentialProvider),
    /// `AWS_SKIP_SIGNATURE=true`: unsigned (public buckets).
    Anonymous,
    /// No credential anywhere, and instance metadata is disabled.
    Missing,
}

/// What the environment says about S3, read once.
struct S3Env {
    region: String,
    /// A custom endpoint (`AWS_ENDPOINT_URL`, the profile's).
    endpoint: Option<Endpoint>,
    signer: Signer,
}

fn truthy(v: Option<String>) -> bool {
    v.is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
}

impl S3Env {
    /// From environment variables (`env`) and the profile they select.
    fn resolve(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ObjectError> {
        let config = |why: String| ObjectError::Config {
            provider: Provider::S3,
            why,
        };
        let var = |k: &str| env(k).filter(|v| !v.is_empty());
        let profile = aws_profile::load(|k| var(k))
            .map_err(|e| config(e.to_string()))?
            .unwrap_or_default();
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .or_else(|| profile.region.clone())
            .unwrap_or_else(|| "us-east-1".into());
        let endpoint = super::environment_endpoint(env).map_err(|e| config(e.to_string()))?;
        let signer = Self::signer(&var, &profile, &region).map_err(config)?;
        Ok(Self {
            region,
            endpoint,
            signer,
        })
    }

    fn signer(
        var: &dyn Fn(&str) -> Option<String>,
        profile: &Profile,
        region: &str,
    ) -> Result<Signer, String> {
        if truthy(var("AWS_SKIP_SIGNATURE")) {
            return Ok(Signer::Anonymous);
        }
        let env_keys = var("AWS_ACCESS_KEY_ID").is_some() || var("AWS_SECRET_ACCESS_KEY").is_some();
        let profile_keys = profile.access_key_id.is_some() && profile.secret_access_key.is_some();
        let other_source = (var("AWS_WEB_IDENTITY_TOKEN_FILE").is_some()
            && var("AWS_ROLE_ARN").is_some())
            || var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
            || var("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some();
        if !env_keys && !profile_keys && !other_source && truthy(var("AWS_EC2_METADATA_DISABLED")) {
            return Ok(Signer::Missing);
        }
        // The builder only makes the credential provider: its own requests
        // are never sent, so the bucket is a placeholder.
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name("weightcast-credentials")
            .with_region(region)
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(10),
                ..RetryConfig::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(2))
                    .with_timeout(Duration::from_secs(10)),
            );
        if !env_keys && profile_keys {
            if let (Some(id), Some(secret)) = (&profile.access_key_id, &profile.secret_access_key) {
                b = b.with_access_key_id(id).with_secret_access_key(secret);
                if let Some(t) = &profile.session_token {
                    b = b.with_token(t);
                }
            }
        }
        let s3 = b.build().map_err(|e| e.to_string())?;
        Ok(Signer::Chain(s3.credentials().clone()))
    }
}

/// `s3://` through our signed requests.
pub struct S3Backend {
    client: reqwest::Client,
    env: OnceLock<Result<Arc<S3Env>, String>>,
}

impl Default for S3Backend {
    fn default() -> Self {
        Self::new()
    }
}

const CHECKSUM_MODE: HeaderName = HeaderName::from_static("x-amz-checksum-mode");

/// A bucket name that can be a DNS label (virtual-hosted addressing).
fn dns_compatible(bucket: &str) -> bool {
    !bucket.contains('.')
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The base64 `x-amz-checksum-sha256` of a whole object as `sha256:<hex>`;
/// `None` for a composite (multipart) checksum, which is not the file's.
fn full_object_sha256(h: &HeaderMap) -> Option<String> {
    let text = |n: &str| h.get(n).and_then(|v| v.to_str().ok());
    if text("x-amz-checksum-type").is_some_and(|t| t.eq_ignore_ascii_case("COMPOSITE")) {
        return None;
    }
    let value = text("x-amz-checksum-sha256")?;
    if value.contains('-') {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    (bytes.len() == 32).then(|| format!("sha256:{}", hex::encode(bytes)))
}

fn http_date(v: &str) -> Option<SystemTime> {
    chrono::DateTime::parse_from_rfc2822(v)
        .ok()
        .map(SystemTime::from)
}

fn iso_date(v: &str) -> Option<SystemTime> {
    chrono::DateTime::parse_from_rfc3339(v)
        .ok()
        .map(SystemTime::from)
}

/// The `<Error>` document S3 answers a failed request with.
#[derive(serde::Deserialize)]
struct ErrorBody {
    #[serde(rename = "Code")]
    code: Option<String>,
    #[serde(rename = "Message")]
    message: Option<String>,
}

fn parse_error_body(body: &[u8]) -> (Option<String>, Option<String>) {
    std::str::from_utf8(body)
        .ok()
        .and_then(|t| quick_xml::de::from_str::<ErrorBody>(t).ok())
        .map(|e| (e.code, e.message))
        .unwrap_or((None, None))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListPage {
    #[serde(default)]
    contents: Vec<Listed>,
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    next_continuation_token: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Listed {
    key: String,
    #[serde(default)]
    size: u64,
    #[serde(rename = "ETag", default)]
    e_tag: Option<String>,
    #[serde(default)]
    last_modified: Option<String>,
}

fn parse_list_page(url: &str, body: &[u8]) -> Result<ListPage, OriginError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| OriginError::bad_answer(url, "the listing is not UTF-8"))?;
    quick_xml::de::from_str(text)
        .map_err(|e| OriginError::bad_answer(url, format!("cannot read the listing: {e}")))
}

/// The largest error document read.
const ERROR_BODY_LIMIT: usize = 64 << 10;

/// Listing pages read at most (a thousand keys each): a bound on memory.
const MAX_LIST_PAGES: usize = 10_000;

impl S3Backend {
    pub fn new() -> Self {
        Self {
            client: crate::http::client(0),
            env: OnceLock::new(),
        }
    }

    fn env(&self) -> Result<Arc<S3Env>, OriginError> {
        self.env
            .get_or_init(|| {
                S3Env::resolve(&|k| std::env::var(k).ok())
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|why| {
                ObjectError::Config {
                    provider: Provider::S3,
                    why,
                }
                .into()
            })
    }

    /// The request URL of `o` (its bucket when the key is empty).
    fn request_url(env: &S3Env, o: &ObjectUrl) -> Result<Url, OriginError> {
        let key = encode_key(&o.key);
        let text = match o.endpoint.as_ref().or(env.endpoint.as_ref()) {
            Some(e) if o.key.is_empty() => format!("{}/{}", e.base_url(), o.bucket),
            Some(e) => format!("{}/{}/{key}", e.base_url(), o.bucket),
            None if dns_compatible(&o.bucket) => {
                format!("https://{}.s3.{}.amazonaws.com/{key}", o.bucket, env.region)
            }
            None if o.key.is_empty() => {
                format!("https://s3.{}.amazonaws.com/{}", env.region, o.bucket)
            }
            None => format!("https://s3.{}.amazonaws.com/{}/{key}", env.region, o.bucket),
        };
        let mut u = Url::parse(&text).map_err(|e| OriginError::BadUrl {
            url: o.to_string(),
            why: format!("its request URL {text:?} is invalid: {e}"),
        })?;
        if let Some(v) = &o.version {
            u.set_query(Some(&format!("versionId={}", encode_component(v))));
        }
        Ok(u)
    }

    /// Sends `method url` with `headers`, signed.
    async fn send(
        &self,
        env: &S3Env,
        method: Method,
        url: Url,
        mut headers: HeaderMap,
        name: &str,
    ) -> Result<reqwest::Response, OriginError> {
        match &env.signer {
            Signer::Anonymous => {}
            Signer::Missing => {
                return Err(ObjectError::NoCredentials {
                    provider: Provider::S3,
                }
                .into())
            }
            Signer::Chain(provider) => {
                let credential =
                    provider
                        .get_credential()
                        .await
                        .map_err(|e| ObjectError::Credentials {
                            provider: Provider::S3,
                            why: crate::error::error_chain(&e),
                        })?;
                let mut req = http::Request::builder()
                    .method(method.clone())
                    .uri(url.as_str())
                    .body(HttpRequestBody::empty())
                    .map_err(|e| {
                        OriginError::bad_answer(name, format!("cannot build the request: {e}"))
                    })?;
                *req.headers_mut() = headers;
                AwsAuthorizer::new(&credential, "s3", &env.region).authorize(&mut req, None);
                headers = std::mem::take(req.headers_mut());
            }
        }
        self.client
            .request(method, url)
            .headers(headers)
            .send()
            .await
            .map_err(|e| OriginError::transport(name, e))
    }

    /// The error for a failed answer, with S3's own code and message when
    /// its body has them.
    async fn refused(name: &str, resp: reqwest::Response) -> OriginError {
        let status = resp.status();
        if status == StatusCode::PRECONDITION_FAILED {
            return ObjectError::Changed {
                url: name.to_string(),
            }
            .into();
        }
        let retry_after = crate::http::retry_after(resp.headers());
        // A bucket in another region answers 301 (a HEAD without a body):
        // its region is in a header, and that is what to do about it.
        let region = resp
            .headers()
            .get("x-amz-bucket-region")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .filter(|_| status == StatusCode::MOVED_PERMANENTLY);
        let body = read_limited(resp, ERROR_BODY_LIMIT).await;
        let (code, mut message) = parse_error_body(&body);
        if let Some(r) = region {
            message = Some(format!("the bucket is in {r}: set AWS_REGION={r}"));
        }
        if retry_after.is_some() && code.is_none() {
            // A plain 503 with Retry-After: let the fetcher wait as asked.
            return OriginError::Status {
                url: name.to_string(),
                status,
                retry_after,
            };
        }
        ObjectError::Refused {
            url: name.to_string(),
            provider: Provider::S3,
            refusal: Refusal {
                status: status.as_u16(),
                code,
                message,
            },
        }
        .into()
    }

    fn pin_headers(o: &ObjectUrl) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(etag) = &o.etag {
            if let Ok(v) = HeaderValue::from_str(&format!("\"{etag}\"")) {
                h.insert(IF_MATCH, v);
            }
        }
        h
    }
}

async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= limit {
            break;
        }
    }
    body
}

#[async_trait::async_trait]
impl Backend for S3Backend {
    fn name(&self) -> &'static str {
        "s3"
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["s3"]
    }

    fn check(&self, url: &Url) -> Result<(), OriginError> {
        ObjectUrl::from_url(url).map(|_| ())
    }

    async fn stat(&self, target: Target<'_>) -> Result<Stat, OriginError> {
        let o = ObjectUrl::from_url(target.url)?;
        let env = self.env()?;
        let name = o.to_string();
        let url = Self::request_url(&env, &o)?;
        let mut headers = Self::pin_headers(&o);
        headers.insert(CHECKSUM_MODE, HeaderValue::from_static("ENABLED"));
        let resp = self.send(&env, Method::HEAD, url, headers, &name).await?;
        if !resp.status().is_success() {
            return Err(Self::refused(&name, resp).await);
        }
        if o.key.is_empty() {
            // A bucket: it exists and we may see it.
            return Ok(Stat::default());
        }
        let h = resp.headers();
        let text = |n: HeaderName| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        let content_length = text(CONTENT_LENGTH)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| OriginError::UnknownLength { url: name.clone() })?;
        Ok(Stat {
            content_length,
            etag: text(ETAG)
                .map(|e| bare_etag(&e).to_string())
                .filter(|e| !e.is_empty()),
            digest: full_object_sha256(h),
            version: text(HeaderName::from_static("x-amz-version-id")).filter(|v| v != "null"),
            last_modified: text(LAST_MODIFIED).as_deref().and_then(http_date),
            sequential: false,
        })
    }

    async fn read_range(
        &self,
        target: Target<'_>,
        range: Range<u64>,
        sink: &mut RangeSink<'_>,
    ) -> Result<(), OriginError> {
        let o = ObjectUrl::from_url(target.url)?;
        let env = self.env()?;
        let name = o.to_string();
        let url = Self::request_url(&env, &o)?;
        let mut headers = Self::pin_headers(&o);
        let r = format!("bytes={}-{}", range.start, range.end - 1);
        headers.insert(
            RANGE,
            HeaderValue::from_str(&r).map_err(|_| OriginError::bad_answer(&name, "bad range"))?,
        );
        let resp = self.send(&env, Method::GET, url, headers, &name).await?;
        if !resp.status().is_success() {
            return Err(Self::refused(&name, resp).await);
        }
        crate::http::stream_range(&name, resp, range, sink).await
    }

    async fn list(&self, target: Target<'_>) -> Result<Vec<Entry>, OriginError> {
        let o = ObjectUrl::from_url(target.url)?;
        let env = self.env()?;
        let name = o.to_string();
        let base = Self::request_url(&env, &o.with_key(""))?;
        let mut entries = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let mut query = format!("list-type=2&prefix={}", encode_component(&o.key));
            if let Some(t) = &token {
                query.push_str(&format!("&continuation-token={}", encode_component(t)));
            }
            let mut url = base.clone();
            url.set_query(Some(&query));
            let resp = self
                .send(&env, Method::GET, url, HeaderMap::new(), &name)
                .await?;
            if !resp.status().is_success() {
                return Err(Self::refused(&name, resp).await);
            }
            let body = resp
                .bytes()
                .await
                .map_err(|e| OriginError::transport(&name, e))?;
            let page = parse_list_page(&name, &body)?;
            for item in page.contents {
                let Some(rel) = item.key.strip_prefix(o.key.as_str()) else {
                    continue;
                };
                if rel.is_empty() {
                    continue;
                }
                entries.push(Entry {
                    name: rel.to_string(),
                    size: Some(item.size),
                    is_dir: rel.ends_with('/'),
                    etag: item.e_tag.map(|e| bare_etag(&e).to_string()),
                    last_modified: item.last_modified.as_deref().and_then(iso_date),
                    digest: None,
                });
            }
            match (page.is_truncated, page.next_continuation_token) {
                (true, Some(t)) => token = Some(t),
                (true, None) => {
                    return Err(OriginError::bad_answer(
                        &name,
                        "a truncated listing without a continuation token",
                    ))
                }
                (false, _) => return Ok(entries),
            }
        }
        Err(OriginError::bad_answer(
            &name,
            "the listing has too many pages",
        ))
    }

    fn pins(&self) -> bool {
        true
    }

    fn pin(&self, url: &Url, stat: &Stat) -> Option<Url> {
        let mut o = ObjectUrl::from_url(url).ok()?;
        if o.endpoint.is_none() {
            // The task names the store this node was pointed at, so that a
            // seed reads the same one whatever its own environment says.
            o.endpoint = self.env().ok()?.endpoint.clone();
        }
        o.version = stat.version.clone().or(o.version);
        o.etag = stat.etag.clone().or(o.etag);
        Some(o.to_url())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn endpoints_and_addressing() {
        let env = S3Env::resolve(&env_of(&[
            ("HOME", "/nonexistent"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_REGION", "eu-central-1"),
        ]))
        .unwrap();
        assert!(matches!(env.signer, Signer::Missing));
        let url = |s: &str| {
            S3Backend::request_url(&env, &ObjectUrl::parse(s).unwrap())
                .unwrap()
                .to_string()
        };
        assert_eq!(
            url("s3://models/a b/c.bin"),
            "https://models.s3.eu-central-1.amazonaws.com/a%20b/c.bin"
        );
        assert_eq!(
            url("s3://my.dotted/k"),
            "https://s3.eu-central-1.amazonaws.com/my.dotted/k"
        );
        assert_eq!(
            url("s3://models/"),
            "https://models.s3.eu-central-1.amazonaws.com/"
        );
        assert_eq!(
            url("s3://127.0.0.1:9000/models/x/y"),
            "http://127.0.0.1:9000/models/x/y"
        );
        assert_eq!(
            url("s3://127.0.0.1:9000/models"),
            "http://127.0.0.1:9000/models"
        );
        assert_eq!(
            url("s3://127.0.0.1:9000/models/k?version=v%2B1&etag=abc"),
            "http://127.0.0.1:9000/models/k?versionId=v%2B1"
        );

        let custom = S3Env::resolve(&env_of(&[
            ("HOME", "/nonexistent"),
            ("AWS_SKIP_SIGNATURE", "true"),
            ("AWS_ENDPOINT_URL", "https://minio.local:9443"),
        ]))
        .unwrap();
        assert!(matches!(custom.signer, Signer::Anonymous));
        assert_eq!(custom.region, "us-east-1");
        let u = S3Backend::request_url(&custom, &ObjectUrl::parse("s3://b/k").unwrap()).unwrap();
        assert_eq!(u.as_str(), "https://minio.local:9443/b/k");
        assert!(S3Env::resolve(&env_of(&[
            ("HOME", "/nonexistent"),
            ("AWS_ENDPOINT_URL", "minio:9000")
        ]))
        .is_err());
    }

    #[test]
    fn checksums_are_full_object_sha256_only() {
        let sha = sha2::Sha256::digest(b"hello");
        let b64 = base64::engine::general_purpose::STANDARD.encode(sha);
        let mut h = HeaderMap::new();
        h.insert("x-amz-checksum-sha256", b64.parse().unwrap());
        assert_eq!(
            full_object_sha256(&h),
            Some(format!("sha256:{}", hex::encode(sha)))
        );
        h.insert("x-amz-checksum-type", "COMPOSITE".parse().unwrap());
        assert_eq!(full_object_sha256(&h), None);
        let mut h = HeaderMap::new();
        h.insert("x-amz-checksum-sha256", format!("{b64}-3").parse().unwrap());
        assert_eq!(full_object_sha256(&h), None);
        h.insert("x-amz-checksum-sha256", "bm90IDMyIGJ5dGVz".parse().unwrap());
        assert_eq!(full_object_sha256(&h), None);
    }

    use sha2::Digest as _;

    #[test]
    fn listings_and_errors_parse() {
        let page = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>models</Name><Prefix>m/</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys>
  <IsTruncated>true</IsTruncated>
  <Contents><Key>m/a &amp; b.bin</Key><LastModified>2024-05-01T10:20:30.000Z</LastModified>
    <ETag>&quot;abc&quot;</ETag><Size>12</Size><StorageClass>STANDARD</StorageClass></Contents>
  <Contents><Key>m/dir/</Key><LastModified>2024-05-01T10:20:30.000Z</LastModified><ETag>"d41d"</ETag><Size>0</Size></Contents>
  <NextContinuationToken>tok/1+=</NextContinuationToken>
</ListBucketResult>"#;
        let p = parse_list_page("s3://models/m/", page).unwrap();
        assert!(p.is_truncated);
        assert_eq!(p.next_continuation_token.as_deref(), Some("tok/1+="));
        assert_eq!(p.contents.len(), 2);
        assert_eq!(p.contents[0].key, "m/a & b.bin");
        assert_eq!(p.contents[0].size, 12);
        assert_eq!(p.contents[0].e_tag.as_deref().map(bare_etag), Some("abc"));
        let t = iso_date(p.contents[0].last_modified.as_deref().unwrap()).unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1714558830
        );
        let empty = parse_list_page(
            "u",
            b"<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>",
        )
        .unwrap();
        assert!(empty.contents.is_empty() && !empty.is_truncated);

        let (code, message) = parse_error_body(
            b"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message><RequestId>1</RequestId></Error>",
        );
        assert_eq!(code.as_deref(), Some("AccessDenied"));
        assert_eq!(message.as_deref(), Some("Access Denied"));
        assert_eq!(parse_error_body(b"not xml"), (None, None));
        let t = http_date("Wed, 01 May 2024 10:20:30 GMT").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1714558830
        );
    }

    #[test]
    fn a_pin_names_the_version_and_the_store() {
        let b = S3Backend::new();
        let _ = b.env.set(Ok(Arc::new(
            S3Env::resolve(&env_of(&[
                ("HOME", "/nonexistent"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ]))
            .unwrap(),
        )));
        let stat = Stat {
            content_length: 5,
            etag: Some("abc".into()),
            version: Some("v1".into()),
            ..Stat::default()
        };
        let url = Url::parse("s3://models/a/b.bin").unwrap();
        assert_eq!(
            b.pin(&url, &stat).unwrap().as_str(),
            "s3://127.0.0.1:9000/models/a/b.bin?version=v1&etag=abc"
        );
        let explicit = Url::parse("s3://10.1.2.3:9000/models/k").unwrap();
        let unversioned = Stat {
            version: None,
            ..stat
        };
        assert_eq!(
            b.pin(&explicit, &unversioned).unwrap().as_str(),
            "s3://10.1.2.3:9000/models/k?etag=abc"
        );
    }
}
