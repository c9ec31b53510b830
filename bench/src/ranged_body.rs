//! Serving a test file over HTTP as origins do: `200`, or `206` for a
//! `Range`, streamed in chunks from memory or from disk, with every chunk
//! counted as it leaves. The test origin and the test Hub (and its CDN)
//! answer this way.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use weightcast_proto::http_range;

/// Body chunks of this size keep memory flat for multi-GiB blobs while
/// keeping per-chunk overhead (counting, syscalls) negligible.
const CHUNK: usize = 256 << 10;

/// A file's bytes: in memory for small test files, or a path on disk for
/// blobs too large to hold (read in ranges, never loaded whole).
#[derive(Debug, Clone)]
pub enum Content {
    Bytes(Bytes),
    File(PathBuf),
}

/// `200` or `206` (for a `Range`) with the body streamed in chunks;
/// `count` is called with each chunk's length as it is sent, so aborted
/// transfers count only what actually left. `HEAD` gets the headers only.
pub async fn ranged(
    method: &Method,
    headers: &HeaderMap,
    content: &Content,
    size: u64,
    etag: Option<&str>,
    count: impl Fn(u64) + Send + Sync + 'static,
) -> Response {
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, len) = match range {
        None => (StatusCode::OK, 0, size),
        Some(r) => match http_range::parse(r, size) {
            Some((a, b)) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
            None => {
                let mut resp = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return resp;
            }
        },
    };
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
                        tracing::warn!(path = %path.display(), "test hub: cannot read blob: {e}");
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
    *resp.status_mut() = status;
    let hs = resp.headers_mut();
    hs.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    hs.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    hs.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(v) = etag.and_then(|e| HeaderValue::from_str(e).ok()) {
        hs.insert(header::ETAG, v);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", start + len - 1)) {
            hs.insert(header::CONTENT_RANGE, v);
        }
    }
    resp
}
