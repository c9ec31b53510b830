//! One answer shape for every HTTP server weightcast runs (the Hugging Face
//! endpoint, the registry mirror, the demo's file origin, and the test
//! servers built on them): `200`, or `206` with `Content-Range` for a
//! `Range`, or `416` for one that does not fit.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use weightcast_proto::http_range;

/// Body chunks of this size keep memory flat for multi-GiB files while
/// keeping per-chunk overhead (counting, syscalls) negligible.
const CHUNK: usize = 256 << 10;

/// The part of a file one answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRange {
    pub status: StatusCode,
    pub first: u64,
    pub len: u64,
    pub size: u64,
}

/// A `Range` that lies outside the file: answer [`Unsatisfiable::response`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsatisfiable {
    pub size: u64,
}

impl Unsatisfiable {
    /// `Content-Range: bytes */size`, as a `416` carries it.
    pub fn set_header(self, h: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", self.size)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }

    /// A bare `416`.
    pub fn response(self) -> Response {
        let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
        self.set_header(r.headers_mut());
        r
    }
}

impl BodyRange {
    /// From the request's `Range` header value.
    pub fn new(range: Option<&str>, size: u64) -> Result<Self, Unsatisfiable> {
        match range.map(|h| http_range::parse(h, size)) {
            None => Ok(Self {
                status: StatusCode::OK,
                first: 0,
                len: size,
                size,
            }),
            Some(Some((a, b))) => Ok(Self {
                status: StatusCode::PARTIAL_CONTENT,
                first: a,
                len: b - a + 1,
                size,
            }),
            Some(None) => Err(Unsatisfiable { size }),
        }
    }

    /// From the request's headers.
    pub fn from_headers(headers: &HeaderMap, size: u64) -> Result<Self, Unsatisfiable> {
        Self::new(
            headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
            size,
        )
    }

    /// Status, `Content-Length`, `Accept-Ranges`, and `Content-Range` for a 206.
    pub fn set_headers(&self, r: &mut Response) {
        *r.status_mut() = self.status;
        let h = r.headers_mut();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(self.len));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if self.status == StatusCode::PARTIAL_CONTENT {
            let v = format!(
                "bytes {}-{}/{}",
                self.first,
                self.first + self.len - 1,
                self.size
            );
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(header::CONTENT_RANGE, v);
            }
        }
    }
}

/// Bytes to serve whole or in ranges: in memory (small files), or a file on
/// disk read in ranges, never loaded whole.
#[derive(Debug, Clone)]
pub enum Content {
    Bytes(Bytes),
    File(PathBuf),
}

/// The answer to `method` with `headers` for `content` of `size` bytes:
/// the body streamed in chunks, with `count` called with each chunk's
/// length as it is sent (an aborted transfer counts only what left).
/// `HEAD` gets the headers only.
pub async fn content_response(
    method: &Method,
    headers: &HeaderMap,
    content: &Content,
    size: u64,
    etag: Option<&str>,
    count: impl Fn(u64) + Send + Sync + 'static,
) -> Response {
    let span = match BodyRange::from_headers(headers, size) {
        Ok(s) => s,
        Err(e) => return e.response(),
    };
    let (start, len) = (span.first, span.len);
    let body = if *method == Method::HEAD {
        Body::empty()
    } else {
        match content {
            Content::Bytes(b) => {
                // Ranges were clamped to `size`, which is `b.len()`.
                let slice = b.slice(start as usize..(start + len) as usize);
                let chunks: Vec<Bytes> = (0..slice.len())
                    .step_by(CHUNK)
                    .map(|i| slice.slice(i..(i + CHUNK).min(slice.len())))
                    .collect();
                Body::from_stream(futures::stream::iter(chunks).map(move |c| {
                    count(c.len() as u64);
                    Ok::<_, std::io::Error>(c)
                }))
            }
            Content::File(path) => {
                let opened = async {
                    let mut f = tokio::fs::File::open(path).await?;
                    f.seek(std::io::SeekFrom::Start(start)).await?;
                    Ok::<_, std::io::Error>(f)
                }
                .await;
                let file = match opened {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot read a served file");
                        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                    }
                };
                let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), CHUNK)
                    .map(move |chunk| {
                        if let Ok(c) = &chunk {
                            count(c.len() as u64);
                        }
                        chunk
                    });
                Body::from_stream(stream)
            }
        }
    };
    let mut resp = Response::new(body);
    span.set_headers(&mut resp);
    let hs = resp.headers_mut();
    hs.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(v) = etag.and_then(|e| HeaderValue::from_str(e).ok()) {
        hs.insert(header::ETAG, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_map_to_status_and_span() {
        let whole = BodyRange::new(None, 10).unwrap();
        assert_eq!(
            (whole.status, whole.first, whole.len),
            (StatusCode::OK, 0, 10)
        );
        let part = BodyRange::new(Some("bytes=2-4"), 10).unwrap();
        assert_eq!(
            (part.status, part.first, part.len),
            (StatusCode::PARTIAL_CONTENT, 2, 3)
        );
        assert_eq!(
            BodyRange::new(Some("bytes=20-30"), 10),
            Err(Unsatisfiable { size: 10 })
        );
    }
}
