//! The piece store: one preallocated, memory-mapped file per task.
//!
//! ```text
//! <data-dir>/tasks/<task-id>/data     the file's bytes (fallocate'd, mmap'd)
//! <data-dir>/tasks/<task-id>/meta.json url, content length, piece size
//! <data-dir>/tasks/<task-id>/pieces   33 bytes per piece: verified flag + sha256
//! ```
//! A piece is written into its slice of the mapping by exactly one writer
//! ([`PieceWrite`]), verified, and only then marked in `pieces`. A restarted
//! daemon re-hashes the pieces `pieces` says it has (cheap next to the
//! network) and keeps only those that still match, so neither a crash nor a
//! torn write can make it serve a bad byte.

use memmap2::MmapRaw;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use weightcast_types::piece::{piece_digest, PieceDigest, PieceLayout};
use weightcast_types::TaskId;

const PIECE_RECORD: u64 = 33;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "not enough disk space in {dir} for {bytes} bytes: free space or choose another --data-dir"
    )]
    DiskFull { dir: PathBuf, bytes: u64 },
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

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskMeta {
    pub url: String,
    pub content_length: u64,
    pub piece_size: u64,
}

struct PieceState {
    verified: Vec<Option<PieceDigest>>,
    writing: Vec<bool>,
}

/// One task's file, its mapping and its piece table.
pub struct TaskFile {
    pub id: TaskId,
    pub layout: PieceLayout,
    dir: PathBuf,
    /// `None` for an empty file (nothing to map).
    map: Option<MmapRaw>,
    pieces_file: File,
    state: Mutex<PieceState>,
    /// The whole file's sha256, once computed on a complete file: verified
    /// pieces never change, so cache hits need not hash again.
    whole_sha256: std::sync::OnceLock<[u8; 32]>,
}

// SAFETY: the raw mapping is only accessed through `PieceWrite` (one writer
// per piece, guarded by `writing`) and `VerifiedPiece` (read-only, and only
// for pieces that are verified and can no longer be written).
unsafe impl Send for TaskFile {}
// SAFETY: as for Send: shared access follows the same piece discipline.
unsafe impl Sync for TaskFile {}

/// Opens task files on demand and keeps the open ones shared.
pub struct Store {
    root: PathBuf,
    open: Mutex<HashMap<TaskId, Arc<TaskFile>>>,
}

impl Store {
    pub fn new(data_dir: &Path) -> Result<Self, StoreError> {
        let root = data_dir.join("tasks");
        std::fs::create_dir_all(&root).map_err(io_err(&root))?;
        Ok(Self {
            root,
            open: Mutex::new(HashMap::new()),
        })
    }

    fn task_dir(&self, id: &TaskId) -> PathBuf {
        self.root.join(id.to_hex())
    }

    /// An open task, if this process has it open.
    pub fn get(&self, id: &TaskId) -> Option<Arc<TaskFile>> {
        self.open.lock().ok()?.get(id).cloned()
    }

    /// Opens the task's file, resuming what is on disk when its metadata
    /// matches, else creating and preallocating it.
    pub fn open_or_create(
        &self,
        id: TaskId,
        url: &str,
        content_length: u64,
    ) -> Result<Arc<TaskFile>, StoreError> {
        if let Some(t) = self.get(&id) {
            if t.layout.content_length == content_length {
                return Ok(t);
            }
        }
        let dir = self.task_dir(&id);
        let meta = TaskMeta {
            url: url.to_string(),
            content_length,
            piece_size: PieceLayout::for_length(content_length).piece_size,
        };
        let existing = read_meta(&dir);
        let file = if existing
            .as_ref()
            .is_some_and(|m| m.content_length == content_length && m.piece_size == meta.piece_size)
        {
            TaskFile::resume(id, dir, &meta)?
        } else {
            TaskFile::create(id, dir, &meta)?
        };
        let file = Arc::new(file);
        if let Ok(mut open) = self.open.lock() {
            open.insert(id, file.clone());
        }
        Ok(file)
    }

    /// The metadata of a task on disk, without opening it.
    pub fn peek_meta(&self, id: &TaskId) -> Option<TaskMeta> {
        read_meta(&self.task_dir(id))
    }

    /// A task on disk that is complete, opened (for cache hits).
    pub fn open_complete(&self, id: TaskId) -> Option<Arc<TaskFile>> {
        if let Some(t) = self.get(&id) {
            return t.is_complete().then_some(t);
        }
        let meta = read_meta(&self.task_dir(&id))?;
        let t = self
            .open_or_create(id, &meta.url, meta.content_length)
            .ok()?;
        t.is_complete().then_some(t)
    }

    /// Flushes every open task's piece table to disk (at shutdown: what was
    /// verified survives a power loss, not only a restart).
    pub fn sync(&self) {
        let open: Vec<Arc<TaskFile>> = match self.open.lock() {
            Ok(o) => o.values().cloned().collect(),
            Err(_) => return,
        };
        for t in open {
            if let Err(e) = t.pieces_file.sync_data() {
                tracing::warn!(task = %t.id, error = %e, "could not flush the piece table");
            }
        }
    }

    /// Deletes a task whose content turned out wrong, so a retry starts clean.
    pub fn discard(&self, id: &TaskId) {
        if let Ok(mut open) = self.open.lock() {
            open.remove(id);
        }
        let _ = std::fs::remove_dir_all(self.task_dir(id));
    }
}

fn read_meta(dir: &Path) -> Option<TaskMeta> {
    let bytes = std::fs::read(dir.join("meta.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Reserves real blocks so that a full disk is an error now, not a SIGBUS
/// when a page of the mapping is first written.
fn preallocate(file: &File, path: &Path, len: u64) -> Result<(), StoreError> {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: plain syscall on an open descriptor.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
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

impl TaskFile {
    fn create(id: TaskId, dir: PathBuf, meta: &TaskMeta) -> Result<Self, StoreError> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let data_path = dir.join("data");
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&data_path)
            .map_err(io_err(&data_path))?;
        if let Err(e) = preallocate(&data, &data_path, meta.content_length) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        let layout = PieceLayout::for_length(meta.content_length);
        let pieces_path = dir.join("pieces");
        let pieces_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&pieces_path)
            .map_err(io_err(&pieces_path))?;
        pieces_file
            .set_len(layout.piece_count() as u64 * PIECE_RECORD)
            .map_err(io_err(&pieces_path))?;
        // meta.json last: a task dir without it is never resumed.
        let meta_path = dir.join("meta.json");
        std::fs::write(
            &meta_path,
            serde_json::to_vec(meta).expect("meta serializes"),
        )
        .map_err(io_err(&meta_path))?;
        Self::with_file(
            id,
            dir,
            layout,
            data,
            &data_path,
            pieces_file,
            vec![None; layout.piece_count() as usize],
        )
    }

    fn resume(id: TaskId, dir: PathBuf, meta: &TaskMeta) -> Result<Self, StoreError> {
        let layout = PieceLayout::for_length(meta.content_length);
        let data_path = dir.join("data");
        let pieces_path = dir.join("pieces");
        let open_rw = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .map_err(io_err(p))
        };
        let data = open_rw(&data_path)?;
        let pieces_file = open_rw(&pieces_path)?;
        let n = layout.piece_count() as usize;
        let mut table = vec![0u8; n * PIECE_RECORD as usize];
        let got = pieces_file
            .read_at(&mut table, 0)
            .map_err(io_err(&pieces_path))?;
        table.truncate(got);
        let claimed: Vec<Option<PieceDigest>> = (0..n)
            .map(|i| {
                let rec = table.get(i * 33..i * 33 + 33)?;
                (rec[0] == 1).then(|| rec[1..].try_into().expect("32 bytes"))
            })
            .collect();
        let file = Self::with_file(
            id,
            dir,
            layout,
            data,
            &data_path,
            pieces_file,
            vec![None; n],
        )?;
        // Keep only what still hashes to what was recorded.
        let mut kept = 0;
        for (i, d) in claimed.into_iter().enumerate() {
            let Some(d) = d else { continue };
            let ok = file.bytes(i as u32).is_some_and(|b| piece_digest(b) == d);
            if ok {
                file.state.lock().expect("fresh lock").verified[i] = Some(d);
                kept += 1;
            } else {
                file.persist(i as u32, None);
            }
        }
        tracing::info!(task = %id, kept, of = n, "resumed task from disk");
        Ok(file)
    }

    fn with_file(
        id: TaskId,
        dir: PathBuf,
        layout: PieceLayout,
        data: File,
        data_path: &Path,
        pieces_file: File,
        verified: Vec<Option<PieceDigest>>,
    ) -> Result<Self, StoreError> {
        let map = if layout.content_length == 0 {
            None
        } else {
            Some(MmapRaw::map_raw(&data).map_err(io_err(data_path))?)
        };
        let n = verified.len();
        Ok(Self {
            id,
            layout,
            dir,
            map,
            pieces_file,
            state: Mutex::new(PieceState {
                verified,
                writing: vec![false; n],
            }),
            whole_sha256: std::sync::OnceLock::new(),
        })
    }

    pub fn data_path(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The whole mapping (base, length), for registering the file as an RDMA
    /// memory region; `None` for an empty file. Writes through it must follow
    /// the same rules as [`PieceWrite`]: the RDMA transport only writes into
    /// the slice of a [`PieceWrite`] it was handed.
    pub fn raw_mapping(&self) -> Option<(*mut u8, usize)> {
        let map = self.map.as_ref()?;
        Some((map.as_mut_ptr(), map.len()))
    }

    /// The raw bytes of piece `num` in the mapping. Callers guarantee no
    /// writer is active on it.
    fn bytes(&self, num: u32) -> Option<&[u8]> {
        let r = self.layout.range(num)?;
        let map = self.map.as_ref()?;
        // SAFETY: the range is inside the mapping (content_length == map len).
        Some(unsafe {
            std::slice::from_raw_parts(
                map.as_ptr().add(r.start as usize),
                (r.end - r.start) as usize,
            )
        })
    }

    fn persist(&self, num: u32, digest: Option<PieceDigest>) {
        let mut rec = [0u8; PIECE_RECORD as usize];
        if let Some(d) = digest {
            rec[0] = 1;
            rec[1..].copy_from_slice(&d);
        }
        if let Err(e) = self.pieces_file.write_at(&rec, num as u64 * PIECE_RECORD) {
            // The piece stays verified in memory; a restart refetches it.
            tracing::warn!(task = %self.id, piece = num, error = %e, "could not record verified piece");
        }
    }

    pub fn verified(&self, num: u32) -> Option<PieceDigest> {
        self.state
            .lock()
            .ok()?
            .verified
            .get(num as usize)
            .copied()
            .flatten()
    }

    /// Every verified piece with its digest.
    pub fn verified_pieces(&self) -> Vec<(u32, PieceDigest)> {
        let Ok(s) = self.state.lock() else {
            return Vec::new();
        };
        s.verified
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.map(|d| (i as u32, d)))
            .collect()
    }

    /// Pieces not yet verified, in order (one lock for the whole table).
    pub fn missing_pieces(&self) -> Vec<u32> {
        let Ok(s) = self.state.lock() else {
            return Vec::new();
        };
        s.verified
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

    pub fn is_complete(&self) -> bool {
        self.state
            .lock()
            .is_ok_and(|s| s.verified.iter().all(Option::is_some))
    }

    /// Claims piece `num` for writing; `None` when it is verified or another
    /// writer holds it.
    pub fn begin_write(self: &Arc<Self>, num: u32) -> Option<PieceWrite> {
        let r = self.layout.range(num)?;
        let mut s = self.state.lock().ok()?;
        let i = num as usize;
        if s.verified[i].is_some() || s.writing[i] {
            return None;
        }
        s.writing[i] = true;
        Some(PieceWrite {
            file: self.clone(),
            num,
            len: (r.end - r.start) as usize,
            offset: r.start as usize,
        })
    }

    /// A verified piece, for uploading.
    pub fn verified_piece(self: &Arc<Self>, num: u32) -> Option<VerifiedPiece> {
        self.verified(num)?;
        let r = self.layout.range(num)?;
        Some(VerifiedPiece {
            file: self.clone(),
            offset: r.start as usize,
            len: (r.end - r.start) as usize,
        })
    }

    /// sha256 of the whole file (call when complete).
    pub fn sha256(self: &Arc<Self>) -> [u8; 32] {
        if !self.is_complete() {
            return self.hash_now();
        }
        *self.whole_sha256.get_or_init(|| self.hash_now())
    }

    /// Records the whole-file digest computed elsewhere (the download's
    /// running hash), so a cache hit does not hash again.
    pub fn remember_sha256(&self, digest: [u8; 32]) {
        if self.is_complete() {
            let _ = self.whole_sha256.set(digest);
        }
    }

    fn hash_now(self: &Arc<Self>) -> [u8; 32] {
        RunningSha256::new().finish(self)
    }
}

/// A file's sha256 fed with its verified pieces in file order. A download
/// keeps one running while pieces arrive, so the whole-file check at the end
/// (which a streaming reader's last piece waits for) hashes almost nothing.
pub struct RunningSha256 {
    hasher: sha2::Sha256,
    /// The first piece not hashed yet.
    next: u32,
}

impl Default for RunningSha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl RunningSha256 {
    pub fn new() -> Self {
        Self {
            hasher: sha2::Digest::new(),
            next: 0,
        }
    }

    /// Hashes the next verified pieces in order, about `budget` bytes at most.
    pub fn advance(&mut self, file: &Arc<TaskFile>, budget: u64) {
        let mut done = 0;
        while done < budget {
            let Some(p) = file.verified_piece(self.next) else {
                return;
            };
            sha2::Digest::update(&mut self.hasher, p.as_ref());
            done += p.as_ref().len() as u64;
            self.next += 1;
        }
    }

    /// The digest of a complete file: hashes what is left.
    pub fn finish(mut self, file: &Arc<TaskFile>) -> [u8; 32] {
        self.advance(file, u64::MAX);
        sha2::Digest::finalize(self.hasher).into()
    }
}

/// Exclusive access to one piece's slice of the mapping until committed.
pub struct PieceWrite {
    file: Arc<TaskFile>,
    pub num: u32,
    offset: usize,
    len: usize,
}

impl PieceWrite {
    /// The piece's slice of the mapping: transports read straight into it.
    pub fn buf(&mut self) -> &mut [u8] {
        match &self.file.map {
            // SAFETY: `writing[num]` gives this value sole access to the range,
            // which lies inside the mapping.
            Some(map) => unsafe {
                std::slice::from_raw_parts_mut(map.as_mut_ptr().add(self.offset), self.len)
            },
            None => &mut [],
        }
    }

    /// Verifies the bytes (against `expected` when given), marks the piece
    /// verified and records it. On mismatch the piece stays missing.
    pub fn commit(mut self, expected: Option<PieceDigest>) -> Result<PieceDigest, StoreError> {
        let got = piece_digest(self.buf());
        if let Some(e) = expected {
            if e != got {
                return Err(StoreError::DigestMismatch {
                    piece: self.num,
                    expected: hex::encode(e),
                    got: hex::encode(got),
                });
            }
        }
        self.file.persist(self.num, Some(got));
        if let Ok(mut s) = self.file.state.lock() {
            s.verified[self.num as usize] = Some(got);
        }
        Ok(got)
    }
}

impl Drop for PieceWrite {
    fn drop(&mut self) {
        if let Ok(mut s) = self.file.state.lock() {
            s.writing[self.num as usize] = false;
        }
    }
}

/// A verified piece's bytes; keeps the mapping alive while they are sent.
pub struct VerifiedPiece {
    file: Arc<TaskFile>,
    offset: usize,
    len: usize,
}

impl AsRef<[u8]> for VerifiedPiece {
    fn as_ref(&self) -> &[u8] {
        match &self.file.map {
            // SAFETY: verified pieces are never written again.
            Some(map) => unsafe {
                std::slice::from_raw_parts(map.as_ptr().add(self.offset), self.len)
            },
            None => &[],
        }
    }
}

/// sha256 of a whole file on disk, as 64 hex characters (for checking an
/// output against its origin).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = File::open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weightcast_types::piece::MIN_PIECE_SIZE;

    fn fill(w: &mut PieceWrite, byte: u8) {
        w.buf().fill(byte);
    }

    #[test]
    fn pieces_are_written_once_verified_and_persisted_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = TaskId::from_url("u");
        let len = MIN_PIECE_SIZE * 2 + 5;
        {
            let store = Store::new(dir.path()).unwrap();
            let t = store.open_or_create(id, "u", len).unwrap();
            let mut w = t.begin_write(0).unwrap();
            assert!(t.begin_write(0).is_none(), "one writer per piece");
            fill(&mut w, 1);
            w.commit(None).unwrap();
            assert!(
                t.begin_write(0).is_none(),
                "verified pieces are never rewritten"
            );
            let mut w = t.begin_write(2).unwrap();
            fill(&mut w, 2);
            let wrong = [0u8; 32];
            assert!(matches!(
                w.commit(Some(wrong)),
                Err(StoreError::DigestMismatch { .. })
            ));
            assert!(t.verified(2).is_none());
            assert!(
                t.begin_write(2).is_some(),
                "a failed piece can be fetched again"
            );
            assert_eq!(
                t.verified_piece(0).unwrap().as_ref().len() as u64,
                MIN_PIECE_SIZE
            );
            assert!(t.verified_piece(1).is_none());
        }
        // A new process: the bitmap resumes piece 0 only.
        let store = Store::new(dir.path()).unwrap();
        let t = store.open_or_create(id, "u", len).unwrap();
        assert_eq!(t.verified_pieces().len(), 1);
        assert!(t.verified(0).is_some());
        assert_eq!(t.verified_bytes(), MIN_PIECE_SIZE);
    }

    #[test]
    fn a_piece_corrupted_on_disk_is_dropped_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let id = TaskId::from_url("u");
        let data = {
            let store = Store::new(dir.path()).unwrap();
            let t = store.open_or_create(id, "u", 100).unwrap();
            let mut w = t.begin_write(0).unwrap();
            fill(&mut w, 7);
            w.commit(None).unwrap();
            assert!(t.is_complete());
            t.data_path()
        };
        let f = OpenOptions::new().write(true).open(&data).unwrap();
        f.write_at(b"X", 50).unwrap();
        let store = Store::new(dir.path()).unwrap();
        let t = store.open_or_create(id, "u", 100).unwrap();
        assert!(!t.is_complete());
        assert!(store.open_complete(id).is_none());
    }

    #[test]
    fn a_different_length_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let id = TaskId::from_url("u");
        let store = Store::new(dir.path()).unwrap();
        let t = store.open_or_create(id, "u", 10).unwrap();
        t.begin_write(0).unwrap().commit(None).unwrap();
        drop(t);
        let store = Store::new(dir.path()).unwrap();
        let t = store.open_or_create(id, "u", 20).unwrap();
        assert!(t.verified_pieces().is_empty());
        let empty = store.open_or_create(TaskId::from_url("e"), "e", 0).unwrap();
        assert!(empty.is_complete(), "an empty file has no pieces to fetch");
    }

    #[test]
    fn the_running_hash_matches_the_file_whatever_the_arrival_order() {
        use sha2::{Digest, Sha256};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path()).unwrap();
        let len = MIN_PIECE_SIZE * 3 + 17;
        let f = store
            .open_or_create(TaskId::from_url("u"), "u", len)
            .unwrap();
        let mut w = RunningSha256::new();
        for num in [2u32, 0, 3, 1] {
            let mut write = f.begin_write(num).unwrap();
            write.buf().fill(num as u8 + 1);
            write.commit(None).unwrap();
            // As the download does: hash what is in order, one piece's worth.
            w.advance(&f, MIN_PIECE_SIZE);
        }
        assert_eq!(w.next, 2, "one piece per step: the budget holds");
        let mut whole = Sha256::new();
        for num in 0..4u32 {
            whole.update(f.verified_piece(num).unwrap().as_ref());
        }
        let want: [u8; 32] = whole.finalize().into();
        assert_eq!(w.finish(&f), want);
        assert_eq!(f.sha256(), want);
    }
}
