//! Serving a task's file over HTTP while it downloads: the bytes of a
//! range, piece by piece as each is verified, straight from the mapping.
//! Both the Hugging Face endpoint and the registry mirror answer this way.

use crate::engine::{GetError, TaskWatch};
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use weightcast_proto::http_range;

/// The part of a file one answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRange {
    pub status: StatusCode,
    pub first: u64,
    pub len: u64,
    pub size: u64,
}

impl BodyRange {
    /// From the request's `Range` header; `Err` means 416.
    pub fn new(range: Option<&str>, size: u64) -> Result<Self, ()> {
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
            Some(None) => Err(()),
        }
    }

    /// The `Content-Range` of a 416.
    pub fn unsatisfiable(size: u64, h: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
            h.insert(header::CONTENT_RANGE, v);
        }
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

    /// The body: this range of the watched file.
    pub fn body(&self, watch: TaskWatch) -> Body {
        Body::from_stream(stream_pieces(watch, self.first, self.first + self.len))
    }
}

/// The bytes `[from, to)` of the watched file, piece by piece as each is
/// verified, without copying them out of the mapping.
pub fn stream_pieces(
    watch: TaskWatch,
    from: u64,
    to: u64,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    futures::stream::try_unfold((watch, from), move |(mut w, pos)| async move {
        if pos >= to {
            return Ok(None);
        }
        let io = |e: GetError| std::io::Error::other(e.to_string());
        let layout = w.file().await.map_err(io)?.layout;
        if layout.content_length < to {
            return Err(std::io::Error::other(format!(
                "the file is {} bytes, shorter than the Hub said",
                layout.content_length
            )));
        }
        let num = (pos / layout.piece_size) as u32;
        let piece = w.piece(num).await.map_err(io)?;
        let start = num as u64 * layout.piece_size;
        let a = (pos - start) as usize;
        let b = (to.min(start + layout.piece_size) - start) as usize;
        let bytes = Bytes::from_owner(piece).slice(a..b);
        Ok(Some((bytes, (w, start + b as u64))))
    })
}
