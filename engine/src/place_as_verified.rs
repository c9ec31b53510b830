//! The output of a `get`, placed while the download runs: each verified
//! piece is copied to the output's temporary file as it lands (see
//! [`Progressive`]), so the end of a download is not followed by a copy of
//! the whole file. Used by the engine for an in-process `get` and by
//! `weightcast get` for a file its daemon downloads.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use weightcast_store::{export, ExportError, Placement, Progressive};

/// Copies at most this often: often enough that little is left at the
/// end, rarely enough that the copies are runs of pieces, not single ones.
const ADVANCE_EVERY: Duration = Duration::from_millis(100);

/// One output being placed as its pieces are verified.
pub struct PlaceAsVerified {
    output: PathBuf,
    placer: Option<Progressive>,
    last: Option<Instant>,
}

/// Where the pieces are and which are verified.
pub struct Verified {
    pub cache_file: PathBuf,
    pub len: u64,
    pub piece_size: u64,
    /// One flag per piece.
    pub mask: Vec<bool>,
}

impl PlaceAsVerified {
    pub fn new(output: &Path) -> Self {
        Self {
            output: output.to_path_buf(),
            placer: None,
            last: None,
        }
    }

    /// Whether the placement has started (the cache file was opened).
    pub fn started(&self) -> bool {
        self.placer.is_some()
    }

    /// Copies the newly verified pieces, unless the last copy was less
    /// than [`ADVANCE_EVERY`] ago: `verified` (a walk of the piece table)
    /// is only called when a copy is due, since progress changes with
    /// every piece. Off the async workers: it is file I/O.
    pub async fn advance(
        &mut self,
        verified: impl FnOnce() -> Verified,
    ) -> Result<(), ExportError> {
        if self.last.is_some_and(|t| t.elapsed() < ADVANCE_EVERY) {
            return Ok(());
        }
        self.last = Some(Instant::now());
        let v = verified();
        let placer = self.placer.take();
        let output = self.output.clone();
        let advanced = tokio::task::spawn_blocking(move || {
            let mut p = match placer {
                Some(p) => p,
                None => Progressive::start(&v.cache_file, &output, v.len, v.piece_size, None)?,
            };
            p.advance(&v.mask)?;
            Ok::<_, ExportError>(p)
        })
        .await
        .map_err(|e| join_failed(&self.output, e))??;
        self.placer = Some(advanced);
        Ok(())
    }

    /// Completes the output from the complete, verified `cache_file`.
    pub async fn finish(self, cache_file: &Path) -> Result<Placement, ExportError> {
        let (cache, output) = (cache_file.to_path_buf(), self.output.clone());
        let placer = self.placer;
        tokio::task::spawn_blocking(move || match placer {
            Some(p) => p.finish(),
            None => export::place(&cache, &output),
        })
        .await
        .map_err(|e| join_failed(&self.output, e))?
    }
}

fn join_failed(output: &Path, e: tokio::task::JoinError) -> ExportError {
    ExportError::Output {
        path: output.to_path_buf(),
        source: std::io::Error::other(e),
    }
}
