//! Checking an S3 client's SigV4 signature against the access keys an
//! operator gave the daemon's S3 endpoint: the `Authorization` header
//! (`AWS4-HMAC-SHA256 Credential=.., SignedHeaders=.., Signature=..`, what
//! the AWS CLI, boto3 and the AWS C++ SDK in Triton send) and presigned URLs
//! (`X-Amz-Signature` in the query).
//!
//! The canonical request is rebuilt the way S3 does: the path and query
//! re-encoded strictly (RFC 3986 unreserved characters kept, the path's
//! `/` kept, nothing double-encoded), the signed headers' values trimmed
//! with inner runs of spaces collapsed, and the payload hash as the client
//! stated it (`x-amz-content-sha256`; `UNSIGNED-PAYLOAD` for a presigned
//! URL). The signature is compared in constant time; a request dated more
//! than 15 minutes away from now, or a presigned URL past its expiry, is
//! refused.

use axum::http::{HeaderMap, Method, Uri};
use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const MAX_SKEW: Duration = Duration::from_secs(15 * 60);
/// SigV4's longest presigned-URL life: 7 days.
const MAX_EXPIRES: u64 = 7 * 24 * 3600;
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// What stays unencoded in a canonical path (the `/` between segments too).
const PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');
/// What stays unencoded in a canonical query name or value.
const QUERY: &AsciiSet = &PATH.add(b'/');

/// The access keys clients must sign with: id → secret.
#[derive(Clone, Default)]
pub struct AccessKeys(HashMap<String, String>);

impl std::fmt::Debug for AccessKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&String> = self.0.keys().collect();
        ids.sort();
        write!(f, "AccessKeys({ids:?}, secrets redacted)")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid S3 access key {0:?}: expected ACCESS_KEY_ID:SECRET_ACCESS_KEY")]
pub struct BadAccessKey(String);

impl AccessKeys {
    /// From `ID:SECRET` pairs.
    pub fn parse<'a>(pairs: impl IntoIterator<Item = &'a str>) -> Result<Self, BadAccessKey> {
        let mut keys = HashMap::new();
        for pair in pairs {
            let (id, secret) = pair
                .split_once(':')
                .filter(|(i, s)| !i.is_empty() && !s.is_empty())
                .ok_or_else(|| BadAccessKey(pair.split(':').next().unwrap_or("").to_string()))?;
            keys.insert(id.to_string(), secret.to_string());
        }
        Ok(Self(keys))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Why a request's signature is not accepted; [`SigError::code`] is the
/// S3 error code a client understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    #[error("the request is not signed: sign it with one of the access keys this endpoint was given (--s3-access-key)")]
    Missing,
    #[error("the signature is malformed: {0}")]
    Malformed(&'static str),
    #[error("the access key {0:?} is not one this endpoint accepts (--s3-access-key)")]
    UnknownKey(String),
    #[error("the request's time is more than 15 minutes from this node's clock")]
    Skewed,
    #[error("the presigned URL has expired")]
    Expired,
    #[error("the signature does not match: check the secret key")]
    Mismatch,
}

impl SigError {
    pub fn code(&self) -> &'static str {
        match self {
            SigError::Missing => "AccessDenied",
            SigError::Malformed(_) => "AuthorizationHeaderMalformed",
            SigError::UnknownKey(_) => "InvalidAccessKeyId",
            SigError::Skewed => "RequestTimeTooSkewed",
            SigError::Expired => "AccessDenied",
            SigError::Mismatch => "SignatureDoesNotMatch",
        }
    }
}

/// What a signature claims, from the header or the query.
struct Claim {
    key_id: String,
    /// `date/region/service/aws4_request`.
    scope: String,
    date: String,
    signed_headers: Vec<String>,
    signature: String,
    payload_hash: String,
    /// The presigned URL's life, in seconds.
    expires: Option<u64>,
}

/// Checks the request's signature against `keys`.
pub fn verify(
    keys: &AccessKeys,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    now: SystemTime,
) -> Result<(), SigError> {
    let query = uri.query().unwrap_or("");
    let params = query_params(query);
    let presigned = params.iter().any(|(k, _)| k == "X-Amz-Signature");
    let claim = match (headers.get("authorization"), presigned) {
        (Some(v), _) => header_claim(
            v.to_str().map_err(|_| SigError::Malformed("not text"))?,
            headers,
        )?,
        (None, true) => query_claim(&params)?,
        (None, false) => return Err(SigError::Missing),
    };
    let secret = keys
        .0
        .get(&claim.key_id)
        .ok_or_else(|| SigError::UnknownKey(claim.key_id.clone()))?;
    check_time(&claim, now)?;
    let canonical = canonical_request(method, uri.path(), &params, presigned, headers, &claim);
    let string_to_sign = format!(
        "{ALGORITHM}\n{}\n{}\n{}",
        claim.date,
        claim.scope,
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut scope = claim.scope.split('/');
    let (Some(day), Some(region), Some(service), Some("aws4_request"), None) = (
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
    ) else {
        return Err(SigError::Malformed(
            "the credential scope is not date/region/service/aws4_request",
        ));
    };
    if !claim.date.starts_with(day) {
        return Err(SigError::Malformed("the scope's date is not the request's"));
    }
    let mut key = hmac(format!("AWS4{secret}").as_bytes(), day.as_bytes());
    for part in [region, service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let want = hex::decode(&claim.signature)
        .map_err(|_| SigError::Malformed("the signature is not hex"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes a key of any length");
    mac.update(string_to_sign.as_bytes());
    mac.verify_slice(&want).map_err(|_| SigError::Mismatch)
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The query's parameters, percent-decoded (a `+` stays a `+`).
fn query_params(query: &str) -> Vec<(String, String)> {
    let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn header_claim(value: &str, headers: &HeaderMap) -> Result<Claim, SigError> {
    let rest = value.strip_prefix(ALGORITHM).ok_or(SigError::Malformed(
        "only AWS4-HMAC-SHA256 signatures are accepted",
    ))?;
    let mut fields: HashMap<&str, &str> = HashMap::new();
    for part in rest.split(',') {
        if let Some((k, v)) = part.trim().split_once('=') {
            fields.insert(k.trim(), v.trim());
        }
    }
    let field = |k: &'static str| fields.get(k).copied().ok_or(SigError::Malformed(k));
    let (key_id, scope) = field("Credential")?
        .split_once('/')
        .ok_or(SigError::Malformed("Credential"))?;
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Ok(Claim {
        key_id: key_id.to_string(),
        scope: scope.to_string(),
        date: text("x-amz-date").ok_or(SigError::Malformed("no x-amz-date header"))?,
        signed_headers: field("SignedHeaders")?
            .split(';')
            .map(str::to_string)
            .collect(),
        signature: field("Signature")?.to_string(),
        payload_hash: text("x-amz-content-sha256").unwrap_or_else(|| EMPTY_SHA256.to_string()),
        expires: None,
    })
}

fn query_claim(params: &[(String, String)]) -> Result<Claim, SigError> {
    let get = |k: &'static str| {
        params
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .ok_or(SigError::Malformed(k))
    };
    if get("X-Amz-Algorithm")? != ALGORITHM {
        return Err(SigError::Malformed(
            "only AWS4-HMAC-SHA256 signatures are accepted",
        ));
    }
    let credential = get("X-Amz-Credential")?;
    let (key_id, scope) = credential
        .split_once('/')
        .ok_or(SigError::Malformed("X-Amz-Credential"))?;
    let expires: u64 = get("X-Amz-Expires")?
        .parse()
        .map_err(|_| SigError::Malformed("X-Amz-Expires"))?;
    if expires > MAX_EXPIRES {
        return Err(SigError::Malformed("X-Amz-Expires is over 7 days"));
    }
    Ok(Claim {
        key_id: key_id.to_string(),
        scope: scope.to_string(),
        date: get("X-Amz-Date")?,
        signed_headers: get("X-Amz-SignedHeaders")?
            .split(';')
            .map(str::to_string)
            .collect(),
        signature: get("X-Amz-Signature")?,
        payload_hash: get("X-Amz-Content-Sha256").unwrap_or_else(|_| "UNSIGNED-PAYLOAD".into()),
        expires: Some(expires),
    })
}

fn check_time(claim: &Claim, now: SystemTime) -> Result<(), SigError> {
    let at = parse_amz_date(&claim.date)
        .ok_or(SigError::Malformed("x-amz-date is not YYYYMMDDTHHMMSSZ"))?;
    let ahead = at.duration_since(now).unwrap_or_default();
    if ahead > MAX_SKEW {
        return Err(SigError::Skewed);
    }
    let age = now.duration_since(at).unwrap_or_default();
    match claim.expires {
        Some(life) if age > Duration::from_secs(life) => Err(SigError::Expired),
        Some(_) => Ok(()),
        None if age > MAX_SKEW => Err(SigError::Skewed),
        None => Ok(()),
    }
}

/// `YYYYMMDDTHHMMSSZ` as a time.
pub fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, sec) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    // Days from 1970-01-01 to y-mo-d in the proleptic Gregorian calendar.
    let (y, m) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec;
    u64::try_from(secs)
        .ok()
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
}

fn canonical_request(
    method: &Method,
    raw_path: &str,
    params: &[(String, String)],
    presigned: bool,
    headers: &HeaderMap,
    claim: &Claim,
) -> String {
    let path = percent_decode_str(raw_path).collect::<Vec<u8>>();
    let path = String::from_utf8_lossy(&path);
    let mut uri = utf8_percent_encode(&path, PATH).to_string();
    if uri.is_empty() {
        uri.push('/');
    }
    let mut query: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| !(presigned && k == "X-Amz-Signature"))
        .map(|(k, v)| {
            (
                utf8_percent_encode(k, QUERY).to_string(),
                utf8_percent_encode(v, QUERY).to_string(),
            )
        })
        .collect();
    query.sort();
    let query: Vec<String> = query.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut canonical_headers = String::new();
    for name in &claim.signed_headers {
        let values: Vec<String> = headers
            .get_all(name.as_str())
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    format!(
        "{method}\n{uri}\n{}\n{canonical_headers}\n{}\n{}",
        query.join("&"),
        claim.signed_headers.join(";"),
        claim.payload_hash
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "AKIAIOSFODNN7EXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn keys() -> AccessKeys {
        AccessKeys::parse([format!("{ID}:{SECRET}").as_str()]).unwrap()
    }

    fn at(s: &str) -> SystemTime {
        parse_amz_date(s).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    /// Signed by botocore (`S3SigV4Auth`), the AWS CLI's and boto3's signer.
    fn botocore_get() -> (Uri, HeaderMap) {
        let uri: Uri = "/models/dir/a%20b%2Bc.bin?versionId=v%2B1".parse().unwrap();
        let h = headers(&[
            ("host", "127.0.0.1:7440"),
            ("range", "bytes=0-9"),
            ("x-amz-date", "20261201T223414Z"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20261201/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=13475d5cd1f438e03e22e011969856ebed35d21dbc51780db1d4cd8aed77969e"),
        ]);
        (uri, h)
    }

    #[test]
    fn botocore_signatures_verify() {
        let now = at("20261201T223500Z");
        let (uri, h) = botocore_get();
        verify(&keys(), &Method::GET, &uri, &h, now).unwrap();

        let list: Uri = "/models?list-type=2&prefix=dir%2F&delimiter=%2F&encoding-type=url"
            .parse()
            .unwrap();
        let h = headers(&[
            ("host", "127.0.0.1:7440"),
            ("x-amz-date", "20261201T223414Z"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20261201/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=d7ff5ddf443013324c7f05733b8a91d2fcf9b98d99ea27e19437e2b0a4219c2a"),
        ]);
        verify(&keys(), &Method::GET, &list, &h, now).unwrap();

        let presigned: Uri = "/models/dir/x.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261201%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261201T223414Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=8372a9094f9239093906c5715d42e497890a670875f5d02a2d60b11e69481ed6".parse().unwrap();
        let h = headers(&[("host", "127.0.0.1:7440")]);
        verify(&keys(), &Method::GET, &presigned, &h, now).unwrap();
        assert_eq!(
            verify(
                &keys(),
                &Method::GET,
                &presigned,
                &h,
                at("20261201T233500Z")
            ),
            Err(SigError::Expired)
        );
    }

    #[test]
    fn what_is_refused() {
        let now = at("20261201T223500Z");
        let (uri, h) = botocore_get();
        let wrong = AccessKeys::parse([format!("{ID}:not-the-secret").as_str()]).unwrap();
        assert_eq!(
            verify(&wrong, &Method::GET, &uri, &h, now),
            Err(SigError::Mismatch)
        );
        let other = AccessKeys::parse(["AKIAOTHER:x"]).unwrap();
        assert!(matches!(
            verify(&other, &Method::GET, &uri, &h, now),
            Err(SigError::UnknownKey(_))
        ));
        assert_eq!(
            verify(&keys(), &Method::HEAD, &uri, &h, now),
            Err(SigError::Mismatch),
            "the method is signed"
        );
        let changed: Uri = "/models/dir/a%20b%2Bc.bin?versionId=v2".parse().unwrap();
        assert_eq!(
            verify(&keys(), &Method::GET, &changed, &h, now),
            Err(SigError::Mismatch)
        );
        let mut tampered = h.clone();
        tampered.insert("range", "bytes=0-99".parse().unwrap());
        assert_eq!(
            verify(&keys(), &Method::GET, &uri, &tampered, now),
            Err(SigError::Mismatch)
        );
        assert_eq!(
            verify(&keys(), &Method::GET, &uri, &h, at("20261201T230000Z")),
            Err(SigError::Skewed)
        );
        assert_eq!(
            verify(&keys(), &Method::GET, &uri, &HeaderMap::new(), now),
            Err(SigError::Missing)
        );
        assert_eq!(SigError::Mismatch.code(), "SignatureDoesNotMatch");
        let mut basic = h.clone();
        basic.insert("authorization", "Basic dTpw".parse().unwrap());
        assert!(matches!(
            verify(&keys(), &Method::GET, &uri, &basic, now),
            Err(SigError::Malformed(_))
        ));
    }

    #[test]
    fn amz_dates_and_keys_parse() {
        let t = parse_amz_date("20130524T000000Z").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_369_353_600
        );
        let t = parse_amz_date("20000301T000000Z").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            951_868_800
        );
        assert!(parse_amz_date("2013-05-24T00:00:00Z").is_none());
        assert!(parse_amz_date("20131324T000000Z").is_none());
        assert!(AccessKeys::parse(["nosecret"]).is_err());
        assert!(AccessKeys::parse([":x"]).is_err());
        let k = AccessKeys::parse(["A:s1", "B:s2"]).unwrap();
        assert!(!format!("{k:?}").contains("s1"), "Debug hides secrets");
    }
}
