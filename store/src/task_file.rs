//! One task's file: its bytes (preallocated, mapped), its piece table, and
//! which pieces are verified or being written.
//!
//! A piece is written into its slice of the mapping by exactly one writer
//! ([`PieceWrite`]), verified, and only then marked in the piece table. A
//! resumed task re-hashes the pieces the table claims (cheap next to the
//! network) and keeps only those that still match, so neither a crash nor a
//! torn write can make it serve a bad byte.

use crate::error::{io_err, StoreError};
use crate::layout::{TaskDir, TaskMeta};
use crate::mapping::{Mapping, PieceWrite, VerifiedPiece};
use crate::piece_table::PieceTable;
use crate::resident::ResidentSet;
use crate::running_hash::RunningSha256;
use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use weightcast_types::piece::{PieceDigest, PieceLayout};
use weightcast_types::TaskId;

struct PieceState {
    verified: Vec<Option<PieceDigest>>,
    /// Claimed by a live [`PieceWrite`].
    writing: Vec<bool>,
}

/// One task's file, its mapping and its piece table.
pub struct TaskFile {
    pub id: TaskId,
    pub layout: PieceLayout,
    dir: TaskDir,
    data: File,
    map: Mapping,
    table: PieceTable,
    state: Mutex<PieceState>,
    /// Which verified pieces keep their pages mapped.
    resident: ResidentSet,
    /// The whole file's sha256, once known for a complete file: verified
    /// pieces never change, so cache hits need not hash again.
    whole_sha256: OnceLock<[u8; 32]>,
}

/// Reserves real blocks so that a full disk is an error now, not a SIGBUS
/// when a page of the mapping is first written.
fn preallocate(file: &File, path: &Path, len: u64) -> Result<(), StoreError> {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return Ok(());
    }
    let Ok(off_len) = libc::off_t::try_from(len) else {
        return Err(StoreError::DiskFull {
            dir: path.parent().unwrap_or(path).to_path_buf(),
            bytes: len,
        });
    };
    // SAFETY: a plain syscall on a descriptor that `file` keeps open.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, off_len) };
    match rc {
        0 => Ok(()),
        libc::ENOSPC => Err(StoreError::DiskFull {
            dir: path.parent().unwrap_or(path).to_path_buf(),
            bytes: len,
        }),
        // Filesystems without fallocate: fall back to a sparse file.
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(len).map_err(io_err(path)),
        e => Err(io_err(path)(std::io::Error::from_raw_os_error(e))),
    }
}

fn open_rw(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

impl TaskFile {
    /// A new, empty task in `dir` (whatever was there is removed).
    pub(crate) fn create(
        id: TaskId,
        dir: TaskDir,
        meta: &TaskMeta,
        window: u64,
    ) -> Result<Arc<Self>, StoreError> {
        dir.remove();
        std::fs::create_dir_all(dir.path()).map_err(io_err(dir.path()))?;
        let made = Self::create_in(id, &dir, meta, window);
        if made.is_err() {
            dir.remove();
        }
        made
    }

    fn create_in(
        id: TaskId,
        dir: &TaskDir,
        meta: &TaskMeta,
        window: u64,
    ) -> Result<Arc<Self>, StoreError> {
        let data_path = dir.data();
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&data_path)
            .map_err(io_err(&data_path))?;
        preallocate(&data, &data_path, meta.content_length)?;
        let layout = PieceLayout::for_length(meta.content_length);
        let table = PieceTable::create(&dir.pieces(), layout.piece_count())?;
        // meta.json last: a task dir without it is never resumed.
        dir.write_meta(meta)?;
        let n = layout.piece_count() as usize;
        Self::assemble(id, dir.clone(), layout, data, table, n, window).map(Arc::new)
    }

    /// The task on disk in `dir`, keeping only the pieces whose bytes still
    /// match what the table recorded. A task whose files are missing or of
    /// the wrong size starts over.
    pub(crate) fn resume(
        id: TaskId,
        dir: TaskDir,
        meta: &TaskMeta,
        window: u64,
    ) -> Result<Arc<Self>, StoreError> {
        let layout = PieceLayout::for_length(meta.content_length);
        let data_path = dir.data();
        let data = match open_rw(&data_path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Self::start_over(id, dir, meta, window, "its data file is missing")
            }
            Err(e) => return Err(io_err(&data_path)(e)),
        };
        let len = data.metadata().map_err(io_err(&data_path))?.len();
        if len != meta.content_length {
            return Self::start_over(id, dir, meta, window, "its data file has the wrong length");
        }
        let (table, claimed) = match PieceTable::open(&dir.pieces(), layout.piece_count()) {
            Ok(t) => t,
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Self::start_over(id, dir, meta, window, "its piece table is missing")
            }
            Err(e) => return Err(e),
        };
        let n = layout.piece_count() as usize;
        let file = Arc::new(Self::assemble(id, dir, layout, data, table, n, window)?);
        // Re-verify what the table claims through the one writer path: a
        // claimed piece is committed against its recorded digest.
        let mut kept = 0;
        for (num, digest) in claimed.into_iter().enumerate() {
            let Some(digest) = digest else { continue };
            let Some(w) = file.begin_write(num as u32) else {
                continue;
            };
            if w.commit(Some(digest)).is_ok() {
                kept += 1;
            } else {
                file.record(num as u32, None);
            }
        }
        tracing::info!(task = %id, kept, of = n, "resumed task from disk");
        Ok(file)
    }

    fn start_over(
        id: TaskId,
        dir: TaskDir,
        meta: &TaskMeta,
        window: u64,
        why: &str,
    ) -> Result<Arc<Self>, StoreError> {
        tracing::warn!(task = %id, dir = %dir.path().display(), why, "task on disk cannot be resumed; starting it over");
        Self::create(id, dir, meta, window)
    }

    fn assemble(
        id: TaskId,
        dir: TaskDir,
        layout: PieceLayout,
        data: File,
        table: PieceTable,
        pieces: usize,
        window: u64,
    ) -> Result<Self, StoreError> {
        let map = Mapping::map(&data, layout.content_length, &dir.data())?;
        Ok(Self {
            id,
            layout,
            dir,
            data,
            map,
            table,
            state: Mutex::new(PieceState {
                verified: vec![None; pieces],
                writing: vec![false; pieces],
            }),
            resident: ResidentSet::new(pieces, window),
            whole_sha256: OnceLock::new(),
        })
    }

    /// The piece state; a panic elsewhere while it was held left it
    /// consistent (every update is a single assignment), so poison is ignored.
    fn state(&self) -> MutexGuard<'_, PieceState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn mapping(&self) -> &Mapping {
        &self.map
    }

    pub(crate) fn data_file(&self) -> &File {
        &self.data
    }

    /// The cache file, for placing the finished file at an output
    /// ([`export`](crate::export)) or checking it in place.
    /// Flushes the piece table to the disk.
    pub fn sync(&self) {
        if let Err(e) = self.table.sync() {
            tracing::warn!(task = %self.id, error = %e, "could not flush the piece table");
        }
    }

    pub fn data_path(&self) -> PathBuf {
        self.dir.data()
    }

    fn record(&self, num: u32, digest: Option<&PieceDigest>) {
        if let Err(e) = self.table.record(num, digest) {
            // The piece stays as it is in memory; a restart refetches it.
            tracing::warn!(task = %self.id, piece = num, error = %e, "could not record a piece in the piece table");
        }
    }

    /// Called by [`PieceWrite::commit`] once the bytes matched. Starts
    /// writing the piece back now, so that it is clean, and can be dropped
    /// from the page cache, by the time it leaves the resident window.
    pub(crate) fn mark_verified(&self, num: u32, digest: PieceDigest, range: &Range<u64>) {
        self.record(num, Some(&digest));
        if let Some(v) = self.state().verified.get_mut(num as usize) {
            *v = Some(digest);
        }
        self.start_writeback(range);
        let out = self.resident.touch(num, range.end - range.start, false);
        self.release(out);
    }

    /// Starts (does not wait for) the writeback of `range`; only a hint.
    fn start_writeback(&self, range: &Range<u64>) {
        use std::os::fd::AsRawFd;
        let (Ok(off), Ok(len)) = (
            libc::off64_t::try_from(range.start),
            libc::off64_t::try_from(range.end - range.start),
        ) else {
            return;
        };
        // SAFETY: a plain syscall on a descriptor that `self.data` keeps open.
        let rc = unsafe {
            libc::sync_file_range(self.data.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE)
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            tracing::debug!(task = %self.id, error = %e, "sync_file_range on a verified piece failed");
        }
    }

    /// Hands the pages of pieces that left the resident window back to the
    /// kernel.
    fn release(&self, pieces: Vec<u32>) {
        for num in pieces {
            if let Some(range) = self.layout.range(num) {
                self.map.release(&self.data, &range);
            }
        }
    }

    /// Called when a [`VerifiedPiece`] goes.
    pub(crate) fn reader_done(&self, num: u32) {
        let out = self.resident.reader_done(num);
        self.release(out);
    }

    /// Called when a [`PieceWrite`] goes.
    pub(crate) fn release_claim(&self, num: u32) {
        if let Some(w) = self.state().writing.get_mut(num as usize) {
            *w = false;
        }
    }

    pub fn verified(&self, num: u32) -> Option<PieceDigest> {
        self.state().verified.get(num as usize).copied().flatten()
    }

    /// Every verified piece with its digest.
    pub fn verified_pieces(&self) -> Vec<(u32, PieceDigest)> {
        self.state()
            .verified
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.map(|d| (i as u32, d)))
            .collect()
    }

    /// Pieces not yet verified, in order (one lock for the whole table).
    pub fn missing_pieces(&self) -> Vec<u32> {
        self.state()
            .verified
            .iter()
            .enumerate()
            .filter(|(_, d)| d.is_none())
            .map(|(i, _)| i as u32)
            .collect()
    }

    pub fn verified_bytes(&self) -> u64 {
        self.verified_pieces()
            .iter()
            .map(|(n, _)| self.layout.piece_len(*n))
            .sum()
    }

    /// One flag per piece, set where the piece is verified (one lock for
    /// the whole table): what a progressive placement copies from.
    pub fn verified_mask(&self) -> Vec<bool> {
        self.state().verified.iter().map(Option::is_some).collect()
    }

    pub fn is_complete(&self) -> bool {
        self.state().verified.iter().all(Option::is_some)
    }

    /// Claims piece `num` for writing; `None` when it is verified, another
    /// writer holds it, or there is no such piece.
    pub fn begin_write(self: &Arc<Self>, num: u32) -> Option<PieceWrite> {
        let range = self.layout.range(num)?;
        if !self.map.contains(&range) {
            return None;
        }
        let mut s = self.state();
        let i = num as usize;
        if s.verified.get(i)?.is_some() || *s.writing.get(i)? {
            return None;
        }
        s.writing[i] = true;
        drop(s);
        // SAFETY: the claim on `num` was just taken under the state lock
        // (not verified, no other writer) and passes to the PieceWrite,
        // whose Drop releases it; the range is the piece's, inside the map.
        Some(unsafe { PieceWrite::new(self.clone(), num, range) })
    }

    /// A verified piece, for uploading or hashing.
    pub fn verified_piece(self: &Arc<Self>, num: u32) -> Option<VerifiedPiece> {
        self.verified(num)?;
        let range = self.layout.range(num)?;
        if !self.map.contains(&range) {
            return None;
        }
        let out = self.resident.touch(num, range.end - range.start, true);
        self.release(out);
        // SAFETY: piece `num` is verified, and a verified piece is never
        // claimed for writing again; its range lies inside the mapping; it
        // was just counted as a reader, which the value's drop ends.
        Some(unsafe { VerifiedPiece::new(self.clone(), num, range) })
    }

    /// sha256 of the whole file (call when complete).
    pub fn sha256(self: &Arc<Self>) -> [u8; 32] {
        if !self.is_complete() {
            return RunningSha256::new().finish(self);
        }
        *self
            .whole_sha256
            .get_or_init(|| RunningSha256::new().finish(self))
    }

    /// Records the whole-file digest computed elsewhere (the download's
    /// running hash), so a cache hit does not hash again.
    pub fn remember_sha256(&self, digest: [u8; 32]) {
        if self.is_complete() {
            let _ = self.whole_sha256.set(digest);
        }
    }
}
/// Whether a task directory's piece table claims every piece (what a
/// listing shows; opening the task re-hashes before trusting it).
pub(crate) fn table_says_complete(dir: &TaskDir) -> bool {
    let Some(meta) = dir.read_meta() else {
        return false;
    };
    let pieces = PieceLayout::for_length(meta.content_length).piece_count();
    match PieceTable::open(&dir.pieces(), pieces) {
        Ok((_, claimed)) => claimed.iter().all(Option::is_some),
        Err(_) => false,
    }
}
