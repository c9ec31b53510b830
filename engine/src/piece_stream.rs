//! Serving a task's file over HTTP while it downloads: the bytes of a
//! range, piece by piece as each is verified, straight from the mapping.
//! Both the Hugging Face endpoint and the registry mirror answer this way.

use crate::http_body::BodyRange;
use crate::request::GetError;
use crate::watch::TaskWatch;
use axum::body::Body;
use bytes::Bytes;

/// The body: the bytes `[span.first, span.first + span.len)` of the
/// watched file, as its pieces are verified.
pub fn body(span: &BodyRange, watch: TaskWatch) -> Body {
    Body::from_stream(stream_pieces(watch, span.first, span.first + span.len))
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
