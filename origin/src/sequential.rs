//! Origins that answer a ranged GET with the whole body: no `Range`
//! support (`python3 -m http.server`, many simple servers). Their length
//! comes from `Content-Length`, and a task's pieces are read from one plain
//! GET in order, each verified as it fills like any other piece. A source
//! fetches front to back, so the stream rarely has to go back; a read of
//! bytes it already passed (a retry, a reader wanting a piece first) opens
//! a new GET and skips ahead: slower, never wrong.
//!
//! Without a `Content-Length` either, the length is unknown before the
//! end and the pieces cannot be laid out: that stays an error.

use crate::backend::RangeSink;
use crate::error::OriginError;
use std::future::Future;
use std::ops::Range;

/// One object's body, read in order by the pieces of its download.
#[derive(Default)]
pub(crate) struct SequentialBody {
    resp: Option<reqwest::Response>,
    /// The object offset of `rest[0]` (of the next byte read).
    at: u64,
    /// What the last chunk held beyond the last read.
    rest: Vec<u8>,
}

impl SequentialBody {
    /// Forgets the stream (after an error): the next read opens a new one.
    pub(crate) fn reset(&mut self) {
        self.resp = None;
        self.rest.clear();
        self.at = 0;
    }

    /// The next bytes of the stream into `rest`; an early end is a short body.
    async fn more(&mut self, url: &str, want: u64) -> Result<(), OriginError> {
        let resp = self.resp.as_mut().ok_or_else(|| OriginError::BadAnswer {
            url: url.to_string(),
            why: "no body to read".into(),
        })?;
        match resp
            .chunk()
            .await
            .map_err(|e| OriginError::transport(url, e))?
        {
            Some(c) => {
                self.rest.extend_from_slice(&c);
                Ok(())
            }
            None => Err(OriginError::ShortBody {
                url: url.to_string(),
                got: self.at,
                want,
            }),
        }
    }

    /// Reads `range` into `sink` (from where the sink is filled to),
    /// opening the stream with `open` when there is none or it is past
    /// `range`.
    pub(crate) async fn read<F, Fut>(
        &mut self,
        url: &str,
        range: Range<u64>,
        sink: &mut RangeSink<'_>,
        open: F,
    ) -> Result<(), OriginError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<reqwest::Response, OriginError>>,
    {
        if self.resp.is_none() || self.at > range.start {
            self.reset();
            self.resp = Some(open().await?);
        }
        while self.at < range.start {
            if self.rest.is_empty() {
                self.more(url, range.end).await?;
            }
            let skip = ((range.start - self.at) as usize).min(self.rest.len());
            self.rest.drain(..skip);
            self.at += skip as u64;
        }
        while !sink.is_full() {
            if self.rest.is_empty() {
                self.more(url, range.end).await?;
            }
            let take = (sink.len() - sink.filled()).min(self.rest.len());
            sink.put(&self.rest[..take]).await?;
            self.rest.drain(..take);
            self.at += take as u64;
        }
        Ok(())
    }
}
