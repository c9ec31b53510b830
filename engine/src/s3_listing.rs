//! The S3 endpoint's listings: ListObjectsV2 (and the older ListObjects),
//! answered from one full listing of the prefix that the endpoint holds
//! for a few seconds, so that a client's pages, its `delimiter` and its
//! `start-after` all agree with one another and cost the store one
//! listing.
//!
//! Pages are cut here: `max-keys` (at most 1000), a continuation token
//! that names the last key or common prefix returned, `delimiter`
//! grouping into common prefixes, and `encoding-type=url` (which the AWS
//! CLI always asks for; botocore then unquotes with `+` as a space, so
//! keys are encoded strictly, `%2B` and `%20`).

use base64::Engine as _;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::SystemTime;

/// One object of a listing, its key whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: Option<SystemTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListVersion {
    /// `list-type=2`: continuation tokens, `start-after`, `KeyCount`.
    V2,
    /// The original ListObjects: `marker`, `NextMarker`.
    V1,
}

/// A client's listing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub version: ListVersion,
    pub prefix: String,
    pub delimiter: Option<String>,
    pub max_keys: usize,
    /// Items at or before this are skipped (a token's, `start-after`'s or `marker`'s).
    after: Option<String>,
    /// Echoed as the client sent them.
    continuation_token: Option<String>,
    start_after: Option<String>,
    marker: Option<String>,
    pub url_encoded: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("invalid max-keys {0:?}")]
    MaxKeys(String),
    #[error("the continuation token is not one this endpoint gave out")]
    Token,
    #[error("encoding-type must be url")]
    Encoding,
}

/// The most keys one page holds, as in S3.
const MAX_KEYS: usize = 1000;

/// Strict RFC 3986 encoding, `/` kept: what `encoding-type=url` answers in.
const URL_ENCODED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

fn token_of(item: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(item)
}

fn item_of(token: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    String::from_utf8(bytes).ok()
}

impl ListQuery {
    /// From the request's (decoded) query parameters.
    pub fn parse(params: &HashMap<String, String>) -> Result<Self, ListError> {
        let get = |k: &str| params.get(k).cloned();
        let version = match get("list-type").as_deref() {
            Some("2") => ListVersion::V2,
            _ => ListVersion::V1,
        };
        let max_keys = match get("max-keys") {
            None => MAX_KEYS,
            Some(m) => m
                .parse::<usize>()
                .map_err(|_| ListError::MaxKeys(m))?
                .min(MAX_KEYS),
        };
        let url_encoded = match get("encoding-type").as_deref() {
            None => false,
            Some(e) if e.eq_ignore_ascii_case("url") => true,
            Some(_) => return Err(ListError::Encoding),
        };
        let continuation_token = get("continuation-token").filter(|_| version == ListVersion::V2);
        let start_after = get("start-after").filter(|_| version == ListVersion::V2);
        let marker = get("marker").filter(|_| version == ListVersion::V1);
        let after = match &continuation_token {
            Some(t) => Some(item_of(t).ok_or(ListError::Token)?),
            None => start_after.clone().or_else(|| marker.clone()),
        }
        .filter(|a| !a.is_empty());
        Ok(Self {
            version,
            prefix: get("prefix").unwrap_or_default(),
            delimiter: get("delimiter").filter(|d| !d.is_empty()),
            max_keys,
            after,
            continuation_token,
            start_after,
            marker,
            url_encoded,
        })
    }
}

/// One page: objects and common prefixes, and where the next one starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<'a> {
    pub objects: Vec<&'a ListedObject>,
    pub prefixes: Vec<String>,
    /// The last item returned, when more follow.
    pub next: Option<String>,
}

/// The page `q` asks for of `objects` (all the keys under `q.prefix`, in
/// any order).
pub fn page<'a>(q: &ListQuery, objects: &'a [ListedObject]) -> Page<'a> {
    let mut sorted: Vec<&ListedObject> = objects
        .iter()
        .filter(|o| o.key.starts_with(&q.prefix))
        .collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    let mut page = Page {
        objects: Vec::new(),
        prefixes: Vec::new(),
        next: None,
    };
    let mut last: Option<String> = None;
    let mut count = 0;
    for o in sorted {
        if let Some(after) = &q.after {
            // A common prefix returned before covers every key under it.
            let covered = q
                .delimiter
                .as_ref()
                .is_some_and(|d| after.ends_with(d.as_str()) && o.key.starts_with(after.as_str()));
            if o.key.as_str() <= after.as_str() || covered {
                continue;
            }
        }
        let group = q.delimiter.as_ref().and_then(|d| {
            let rest = &o.key[q.prefix.len()..];
            rest.find(d.as_str())
                .map(|i| format!("{}{}", q.prefix, &rest[..i + d.len()]))
        });
        if group.is_some() && group == last {
            continue;
        }
        if count == q.max_keys {
            page.next = last;
            return page;
        }
        count += 1;
        match group {
            Some(g) => {
                last = Some(g.clone());
                page.prefixes.push(g);
            }
            None => {
                last = Some(o.key.clone());
                page.objects.push(o);
            }
        }
    }
    page
}

/// `text` with XML's five special characters escaped.
pub fn xml_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A time as S3 writes it in listings: `2024-05-01T10:20:30.000Z`.
pub fn iso8601(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// The ListBucketResult document of `page`.
pub fn render(bucket: &str, q: &ListQuery, page: &Page<'_>) -> String {
    let enc = |s: &str| match q.url_encoded {
        true => utf8_percent_encode(s, URL_ENCODED).to_string(),
        false => xml_text(s),
    };
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
    let _ = write!(
        x,
        "<Name>{}</Name><Prefix>{}</Prefix>",
        xml_text(bucket),
        enc(&q.prefix)
    );
    if let Some(d) = &q.delimiter {
        let _ = write!(x, "<Delimiter>{}</Delimiter>", enc(d));
    }
    let _ = write!(x, "<MaxKeys>{}</MaxKeys>", q.max_keys);
    if q.url_encoded {
        x.push_str("<EncodingType>url</EncodingType>");
    }
    let _ = write!(x, "<IsTruncated>{}</IsTruncated>", page.next.is_some());
    match q.version {
        ListVersion::V2 => {
            let _ = write!(
                x,
                "<KeyCount>{}</KeyCount>",
                page.objects.len() + page.prefixes.len()
            );
            if let Some(t) = &q.continuation_token {
                let _ = write!(x, "<ContinuationToken>{}</ContinuationToken>", xml_text(t));
            }
            if let Some(s) = &q.start_after {
                let _ = write!(x, "<StartAfter>{}</StartAfter>", enc(s));
            }
            if let Some(n) = &page.next {
                let _ = write!(
                    x,
                    "<NextContinuationToken>{}</NextContinuationToken>",
                    token_of(n)
                );
            }
        }
        ListVersion::V1 => {
            let _ = write!(
                x,
                "<Marker>{}</Marker>",
                enc(q.marker.as_deref().unwrap_or(""))
            );
            if let (Some(n), Some(_)) = (&page.next, &q.delimiter) {
                let _ = write!(x, "<NextMarker>{}</NextMarker>", enc(n));
            }
        }
    }
    for o in &page.objects {
        let _ = write!(x, "<Contents><Key>{}</Key>", enc(&o.key));
        if let Some(t) = o.last_modified {
            let _ = write!(x, "<LastModified>{}</LastModified>", iso8601(t));
        }
        if let Some(e) = &o.etag {
            let _ = write!(x, "<ETag>{}</ETag>", xml_text(&format!("\"{e}\"")));
        }
        let _ = write!(
            x,
            "<Size>{}</Size><StorageClass>STANDARD</StorageClass></Contents>",
            o.size
        );
    }
    for p in &page.prefixes {
        let _ = write!(
            x,
            "<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>",
            enc(p)
        );
    }
    x.push_str("</ListBucketResult>");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(keys: &[&str]) -> Vec<ListedObject> {
        keys.iter()
            .map(|k| ListedObject {
                key: k.to_string(),
                size: k.len() as u64,
                etag: Some("e".into()),
                last_modified: Some(SystemTime::UNIX_EPOCH),
            })
            .collect()
    }

    fn q(pairs: &[(&str, &str)]) -> ListQuery {
        ListQuery::parse(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
        .unwrap()
    }

    fn keys(p: &Page<'_>) -> Vec<String> {
        p.objects.iter().map(|o| o.key.clone()).collect()
    }

    const KEYS: &[&str] = &[
        "m/a.bin", "m/c/1", "m/c/2", "m/b.bin", "m/d/x/y", "m/e", "n/other",
    ];

    #[test]
    fn prefix_and_delimiter_group_keys() {
        let all = objects(KEYS);
        let p = page(&q(&[("list-type", "2"), ("prefix", "m/")]), &all);
        assert_eq!(
            keys(&p),
            ["m/a.bin", "m/b.bin", "m/c/1", "m/c/2", "m/d/x/y", "m/e"]
        );
        assert!(p.prefixes.is_empty() && p.next.is_none());
        let p = page(
            &q(&[("list-type", "2"), ("prefix", "m/"), ("delimiter", "/")]),
            &all,
        );
        assert_eq!(keys(&p), ["m/a.bin", "m/b.bin", "m/e"]);
        assert_eq!(p.prefixes, ["m/c/", "m/d/"]);
        let p = page(
            &q(&[("list-type", "2"), ("prefix", "m"), ("delimiter", "/")]),
            &all,
        );
        assert_eq!(p.prefixes, ["m/"]);
        assert!(p.objects.is_empty());
    }

    #[test]
    fn pages_follow_each_other_whole() {
        let all = objects(KEYS);
        for delimiter in [None, Some("/")] {
            let mut seen = Vec::new();
            let mut token: Option<String> = None;
            for _ in 0..10 {
                let mut params = vec![
                    ("list-type", "2".to_string()),
                    ("prefix", "m/".into()),
                    ("max-keys", "2".into()),
                ];
                if let Some(d) = delimiter {
                    params.push(("delimiter", d.into()));
                }
                if let Some(t) = &token {
                    params.push(("continuation-token", t.clone()));
                }
                let map = params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect();
                let query = ListQuery::parse(&map).unwrap();
                let p = page(&query, &all);
                assert!(p.objects.len() + p.prefixes.len() <= 2);
                seen.extend(keys(&p));
                seen.extend(p.prefixes.clone());
                let xml = render("models", &query, &p);
                match &p.next {
                    Some(n) => {
                        let t = token_of(n);
                        assert!(xml.contains(&format!(
                            "<NextContinuationToken>{t}</NextContinuationToken>"
                        )));
                        assert!(xml.contains("<IsTruncated>true</IsTruncated>"));
                        token = Some(t);
                    }
                    None => break,
                }
            }
            let mut want: Vec<&str> = match delimiter {
                None => vec!["m/a.bin", "m/b.bin", "m/c/1", "m/c/2", "m/d/x/y", "m/e"],
                Some(_) => vec!["m/a.bin", "m/b.bin", "m/e", "m/c/", "m/d/"],
            };
            let mut seen: Vec<&str> = seen.iter().map(|s| s.as_str()).collect();
            want.sort();
            seen.sort();
            assert_eq!(seen, want, "delimiter {delimiter:?}");
        }
    }

    #[test]
    fn start_after_marker_and_bad_input() {
        let all = objects(KEYS);
        let p = page(
            &q(&[
                ("list-type", "2"),
                ("prefix", "m/"),
                ("start-after", "m/c/1"),
            ]),
            &all,
        );
        assert_eq!(keys(&p), ["m/c/2", "m/d/x/y", "m/e"]);
        let v1 = q(&[
            ("prefix", "m/"),
            ("marker", "m/b.bin"),
            ("delimiter", "/"),
            ("max-keys", "1"),
        ]);
        assert_eq!(v1.version, ListVersion::V1);
        let p = page(&v1, &all);
        assert_eq!(p.prefixes, ["m/c/"]);
        let xml = render("b", &v1, &p);
        assert!(
            xml.contains("<Marker>m/b.bin</Marker><NextMarker>m/c/</NextMarker>"),
            "{xml}"
        );
        let bad = |pairs: &[(&str, &str)]| {
            ListQuery::parse(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        assert_eq!(
            bad(&[("max-keys", "x")]),
            Err(ListError::MaxKeys("x".into()))
        );
        assert_eq!(
            bad(&[("list-type", "2"), ("continuation-token", "!!")]),
            Err(ListError::Token)
        );
        assert_eq!(
            bad(&[("encoding-type", "base64")]),
            Err(ListError::Encoding)
        );
        assert_eq!(q(&[("max-keys", "5000")]).max_keys, 1000);
        let none = page(&q(&[("max-keys", "0")]), &all);
        assert!(none.objects.is_empty() && none.next.is_none());
    }

    #[test]
    fn documents_encode_keys() {
        let all = objects(&["d/a b+c&.bin"]);
        let plain = q(&[("list-type", "2")]);
        let xml = render("b", &plain, &page(&plain, &all));
        assert!(xml.contains("<Key>d/a b+c&amp;.bin</Key>"), "{xml}");
        assert!(xml.contains("<ETag>&quot;e&quot;</ETag>"), "{xml}");
        assert!(
            xml.contains("<LastModified>1970-01-01T00:00:00.000Z</LastModified>"),
            "{xml}"
        );
        assert!(xml.contains("<KeyCount>1</KeyCount>"), "{xml}");
        let url = q(&[("list-type", "2"), ("encoding-type", "url")]);
        let xml = render("b", &url, &page(&url, &all));
        assert!(xml.contains("<Key>d/a%20b%2Bc%26.bin</Key>"), "{xml}");
        assert!(xml.contains("<EncodingType>url</EncodingType>"), "{xml}");
    }
}
