//! What can go wrong in the store, said so that the user knows what to do.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "not enough disk space in {dir} for {bytes} bytes: free space or choose another --data-dir"
    )]
    DiskFull { dir: PathBuf, bytes: u64 },
    #[error("the cache (--cache-size {max} bytes) has no room for {bytes} more bytes: {held} bytes are held by tasks in use or pinned; raise --cache-size, or unpin or remove tasks (weightcast cache ls, rm)")]
    CacheFull { bytes: u64, max: u64, held: u64 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("piece {piece} failed its digest check (expected {expected}, got {got})")]
    DigestMismatch {
        piece: u32,
        expected: String,
        got: String,
    },
}

/// `map_err` helper: an I/O error about `path`.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}
