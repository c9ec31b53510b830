//! Placing a verified task file at the user's output path.
//!
//! The output is a file of its own, never a second name for the cache file:
//! the daemon keeps serving its cache file to peers from a shared mapping,
//! so an output that *was* the cache file would let a user's edit change
//! what peers are served (they would reject it, and blame this peer), and a
//! truncation would make the daemon fault (SIGBUS) on its next read.
//!
//! - **Reflink** (`FICLONE`) where the filesystem shares extents (btrfs,
//!   XFS, bcachefs...): no bytes are copied and no extra space is used until
//!   one side is written; the copy-on-write keeps the two apart.
//! - **Copy** otherwise (ext4, tmpfs, across filesystems), in the kernel
//!   (`copy_file_range`): no bytes pass through this process.
//!
//! Why not keep the hard link and make the cache file read-only, re-verifying
//! what is served? Permissions bind neither root (init containers usually
//! are) nor the file's owner, who can `chmod` it back; a truncation through
//! the other name faults the daemon's mapping before any check can run;
//! re-hashing every piece before serving it costs a sha256 of each uploaded
//! byte; and an edited piece would still be lost to the swarm (refetched).
//! `chattr +i` would hold, but needs `CAP_LINUX_IMMUTABLE` and stops the
//! daemon's own eviction. A copy is the only placement whose safety does
//! not depend on what the user does; a reflink makes it free where the
//! filesystem allows.
//!
//! Either way the file appears under a temporary name beside the output,
//! then is renamed into place: a reader never sees a partial file at the
//! output path, and an existing file there is replaced only by a complete one.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "cannot read the cache file {path}: {source} (is the daemon's data dir mounted here?)"
    )]
    Source {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source} (check that its directory is writable and has room for the file)")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How the file got to the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Shares the cache file's extents, copy-on-write.
    Reflink,
    /// A byte copy, made in the kernel.
    Copy,
}

/// Places a copy of `cache_file` at `output`, atomically.
pub fn place(cache_file: &Path, output: &Path) -> Result<Placement, ExportError> {
    place_owned(cache_file, output, None)
}

/// [`place`], the new file owned by `owner` (uid, gid) before it gets its
/// name: what a daemon running as root does for a local API client, so
/// that the client owns what it asked for and no file at `output` is ever
/// root's, not even for an instant.
pub fn place_owned(
    cache_file: &Path,
    output: &Path,
    owner: Option<(u32, u32)>,
) -> Result<Placement, ExportError> {
    let (src, len) = open_source(cache_file)?;
    let mut temp = TempOutput::create(output, owner)?;
    let how = match reflink(&src, &temp.file) {
        Ok(()) => Placement::Reflink,
        Err(_) => {
            copy(&src, &temp.file, len).map_err(|e| temp.error(e))?;
            Placement::Copy
        }
    };
    temp.commit()?;
    Ok(how)
}

/// A placement made while the download runs: each piece is copied to the
/// output's temporary file as soon as the daemon has verified it, so that
/// when the last piece lands only that piece is left to copy, not the
/// whole file (a 10 GiB copy on ext4 is seconds the user waits, and on a
/// busy node it competes with the last pieces for the cores). The pieces
/// are read while they are still in the page cache, right after the
/// daemon wrote them, instead of from disk at the end.
///
/// Where the filesystem shares extents, nothing is copied while the
/// download runs: [`Progressive::finish`] clones the whole file, as
/// [`place`] does. The output appears at its path only at `finish`, by a
/// rename; dropped unfinished, the temporary file is removed.
pub struct Progressive {
    src: File,
    cache_file: PathBuf,
    owner: Option<(u32, u32)>,
    temp: TempOutput,
    len: u64,
    piece_size: u64,
    /// Pieces already in the temporary file (copy mode).
    copied: Vec<bool>,
    how: Placement,
    /// Ranges copied at the previous [`Progressive::advance`], whose
    /// writeback has started: their pages are dropped at the next one.
    written_behind: Vec<(u64, u64)>,
}

impl Progressive {
    /// Starts placing `cache_file` (a task file of `len` bytes in pieces
    /// of `piece_size`) at `output`.
    pub fn start(
        cache_file: &Path,
        output: &Path,
        len: u64,
        piece_size: u64,
        owner: Option<(u32, u32)>,
    ) -> Result<Self, ExportError> {
        let (src, _) = open_source(cache_file)?;
        let temp = TempOutput::create(output, owner)?;
        // A clone now tells whether the filesystem shares extents; the
        // clone made at `finish` replaces this one.
        let how = match reflink(&src, &temp.file) {
            Ok(()) => Placement::Reflink,
            Err(_) => {
                temp.file.set_len(len).map_err(|e| temp.error(e))?;
                Placement::Copy
            }
        };
        let pieces = len.div_ceil(piece_size.max(1)) as usize;
        Ok(Self {
            src,
            cache_file: cache_file.to_path_buf(),
            owner,
            temp,
            len,
            piece_size: piece_size.max(1),
            copied: vec![false; pieces],
            how,
            written_behind: Vec::new(),
        })
    }

    /// Copies the pieces that `verified` (one flag per piece) marks and
    /// that are not copied yet, runs of neighbours in one call each.
    /// Returns the bytes copied.
    pub fn advance(&mut self, verified: &[bool]) -> Result<u64, ExportError> {
        if self.how == Placement::Reflink {
            return Ok(0);
        }
        for (off, n) in std::mem::take(&mut self.written_behind) {
            drop_pages(&self.temp.file, off, n);
        }
        let mut copied = 0;
        let mut i = 0;
        let count = self.copied.len();
        while i < count {
            if self.copied[i] || !verified.get(i).copied().unwrap_or(false) {
                i += 1;
                continue;
            }
            let first = i;
            while i < count && !self.copied[i] && verified.get(i).copied().unwrap_or(false) {
                self.copied[i] = true;
                i += 1;
            }
            let off = first as u64 * self.piece_size;
            let n = (i as u64 * self.piece_size).min(self.len) - off;
            copy_range(&self.src, &self.temp.file, off, n).map_err(|e| self.temp.error(e))?;
            start_writeback(&self.temp.file, off, n);
            self.written_behind.push((off, n));
            copied += n;
        }
        Ok(copied)
    }

    /// Completes the output once the download is complete and verified:
    /// copies what is left (or clones the whole file) and renames the
    /// temporary file into place. If the daemon replaced the cache file
    /// meanwhile (the task was discarded and fetched again), the pieces
    /// copied so far belong to the old file: the new one is placed whole.
    pub fn finish(mut self) -> Result<Placement, ExportError> {
        let (now, len) = open_source(&self.cache_file)?;
        if !same_file(&now, &self.src) || len != self.len {
            return place_owned(&self.cache_file, &self.temp.output, self.owner);
        }
        match self.how {
            Placement::Reflink => {
                let file = &self.temp.file;
                file.set_len(0)
                    .and_then(|()| reflink(&self.src, file))
                    .map_err(|e| self.temp.error(e))?;
            }
            Placement::Copy => {
                self.advance(&vec![true; self.copied.len()])?;
            }
        }
        self.temp.commit()?;
        Ok(self.how)
    }

    /// How the output is being made.
    pub fn placement(&self) -> Placement {
        self.how
    }
}

fn same_file(a: &File, b: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn open_source(cache_file: &Path) -> Result<(File, u64), ExportError> {
    let err = |source| ExportError::Source {
        path: cache_file.to_path_buf(),
        source,
    };
    let src = File::open(cache_file).map_err(err)?;
    let len = src.metadata().map_err(err)?.len();
    Ok((src, len))
}

/// The output under a temporary name beside it
/// (`.{name}.weightcast-{pid}-{random}`), removed unless committed.
struct TempOutput {
    output: PathBuf,
    path: PathBuf,
    file: File,
    committed: bool,
}

impl TempOutput {
    fn create(output: &Path, owner: Option<(u32, u32)>) -> Result<Self, ExportError> {
        let out_err = |source| ExportError::Output {
            path: output.to_path_buf(),
            source,
        };
        let dir = match output.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(out_err)?;
        let name = output
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = dir.join(format!(
            ".{name}.weightcast-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(out_err)?;
        let temp = Self {
            output: output.to_path_buf(),
            path,
            file,
            committed: false,
        };
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&temp.file, Some(uid), Some(gid))
                .map_err(|e| temp.error(e))?;
        }
        Ok(temp)
    }

    fn error(&self, source: std::io::Error) -> ExportError {
        ExportError::Output {
            path: self.output.clone(),
            source,
        }
    }

    /// Gives the file its real name, replacing whatever was there.
    fn commit(&mut self) -> Result<(), ExportError> {
        std::fs::rename(&self.path, &self.output).map_err(|e| self.error(e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Makes `dst` share `src`'s extents (`ioctl(FICLONE)`); fails where the
/// filesystem cannot (EOPNOTSUPP, EXDEV across filesystems, EINVAL).
fn reflink(src: &File, dst: &File) -> std::io::Result<()> {
    // SAFETY: FICLONE takes the source descriptor as its argument; both
    // descriptors are kept open by the borrowed files.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Bytes copied per `copy_file_range` call; after each, the pages behind
/// the copy are handed back (see [`forget_behind`]).
const COPY_CHUNK: u64 = 64 << 20;

/// Copies the `len` bytes of `src` into the empty `dst`, a chunk at a
/// time, keeping the page cache flat behind it.
fn copy(src: &File, dst: &File, len: u64) -> std::io::Result<()> {
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(COPY_CHUNK);
        copy_range(src, dst, done, n)?;
        forget_behind(src, dst, done, n);
        done += n;
    }
    Ok(())
}

/// Copies bytes `off..off + len` of `src` to the same offsets of `dst` in
/// the kernel (`copy_file_range`), or through a buffer where the call is
/// not available (old kernels, some filesystem pairs).
fn copy_range(src: &File, dst: &File, off: u64, len: u64) -> std::io::Result<()> {
    let end = off + len;
    let mut at = off;
    while at < end {
        let (Ok(mut off_in), Ok(mut off_out)) =
            (libc::loff_t::try_from(at), libc::loff_t::try_from(at))
        else {
            return Err(std::io::Error::from_raw_os_error(libc::EFBIG));
        };
        let chunk = (end - at).min(COPY_CHUNK) as usize;
        // SAFETY: both descriptors are open for the call; the offsets are
        // locals the kernel reads and advances, the files' own positions
        // are not used.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                chunk,
                0,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOSYS | libc::EXDEV | libc::EINVAL | libc::EOPNOTSUPP) => {
                    return copy_range_buffered(src, dst, at, end - at);
                }
                Some(libc::EINTR) => continue,
                _ => return Err(e),
            }
        }
        if n == 0 {
            return Err(ended_early(at, end));
        }
        at += n as u64;
    }
    Ok(())
}

fn copy_range_buffered(src: &File, dst: &File, off: u64, len: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; (1 << 20).min(len as usize)];
    let (mut at, end) = (off, off + len);
    while at < end {
        let want = ((end - at) as usize).min(buf.len());
        let n = src.read_at(&mut buf[..want], at)?;
        if n == 0 {
            return Err(ended_early(at, end));
        }
        dst.write_all_at(&buf[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

fn ended_early(at: u64, end: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        format!("the cache file ended after {at} of {end} bytes"),
    )
}

/// Keeps a copy's page cache flat (a container's memory limit counts it):
/// the source pages just read are dropped (they are clean; pages the
/// daemon still maps stay), writeback of the destination's new pages
/// starts, and the destination's pages two chunks back, written by now,
/// are dropped. Nothing here waits, so the copy runs as fast as before;
/// all of it is advice, and no byte depends on it.
fn forget_behind(src: &File, dst: &File, at: u64, n: u64) {
    drop_pages(src, at, n);
    start_writeback(dst, at, n);
    let behind = 2 * COPY_CHUNK;
    if at >= behind {
        drop_pages(dst, at - behind, COPY_CHUNK);
    }
}

/// Advice: the clean pages of `file` in `off..off + len` may go.
fn drop_pages(file: &File, off: u64, len: u64) {
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(off), libc::off_t::try_from(len)) else {
        return;
    };
    // SAFETY: a plain syscall on a descriptor the borrowed file keeps open.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), off, len, libc::POSIX_FADV_DONTNEED);
    }
}

/// Starts writing `off..off + len` of `file` back, without waiting.
fn start_writeback(file: &File, off: u64, len: u64) {
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(off), libc::off_t::try_from(len)) else {
        return;
    };
    // SAFETY: as above.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn places_an_independent_copy_and_replaces_atomically() {
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("cache");
        std::fs::write(&cache, b"weights").unwrap();
        let out = d.path().join("sub/dir/model.bin");
        let how = place(&cache, &out).unwrap();
        assert!(matches!(how, Placement::Reflink | Placement::Copy));
        assert_eq!(std::fs::read(&out).unwrap(), b"weights");
        let (c, o) = (
            std::fs::metadata(&cache).unwrap(),
            std::fs::metadata(&out).unwrap(),
        );
        assert_ne!(c.ino(), o.ino(), "the output is a file of its own");
        // What the user does to the output never reaches the cache file.
        std::fs::write(&out, b"edited by a user").unwrap();
        OpenOptions::new()
            .write(true)
            .open(&out)
            .unwrap()
            .set_len(0)
            .unwrap();
        assert_eq!(std::fs::read(&cache).unwrap(), b"weights");
        // Again over an existing output: replaced, no temp files left.
        place(&cache, &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"weights");
        let names: Vec<_> = std::fs::read_dir(out.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_large_file_is_copied_whole_and_an_empty_one_too() {
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("cache");
        // More than two copy chunks: every chunk's page-cache advice runs.
        let len = 2 * COPY_CHUNK + (3 << 20) + 7;
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(&cache, &bytes).unwrap();
        place(&cache, &d.path().join("out")).unwrap();
        assert!(std::fs::read(d.path().join("out")).unwrap() == bytes);
        std::fs::write(&cache, b"").unwrap();
        place(&cache, &d.path().join("empty")).unwrap();
        assert_eq!(std::fs::metadata(d.path().join("empty")).unwrap().len(), 0);
    }

    #[test]
    fn failures_name_the_file_and_leave_nothing_behind() {
        let d = tempfile::tempdir().unwrap();
        let e = place(&d.path().join("missing"), &d.path().join("out")).unwrap_err();
        assert!(matches!(e, ExportError::Source { .. }), "{e}");
        assert!(e.to_string().contains("missing"), "{e}");
        let cache = d.path().join("cache");
        std::fs::write(&cache, b"w").unwrap();
        // The output's parent is a file: the directory cannot be made.
        let e = place(&cache, &d.path().join("cache/out")).unwrap_err();
        assert!(matches!(e, ExportError::Output { .. }), "{e}");
        // Renaming over a directory fails: the temp file is removed.
        std::fs::create_dir(d.path().join("taken")).unwrap();
        std::fs::write(d.path().join("taken/x"), b"").unwrap();
        assert!(place(&cache, &d.path().join("taken")).is_err());
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    fn pattern(len: usize, salt: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ salt).collect()
    }

    /// A directory holding a cache file of `bytes`, and that file's path.
    fn cache_of(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("cache");
        std::fs::write(&cache, bytes).unwrap();
        (d, cache)
    }

    #[test]
    fn progressive_copies_pieces_as_verified_and_appears_only_at_finish() {
        // Seven pieces of 1 KiB and a short last one.
        let bytes = pattern(7 * 1024 + 100, 0);
        let (d, cache) = cache_of(&bytes);
        let out = d.path().join("out/model.bin");
        let mut p = Progressive::start(&cache, &out, bytes.len() as u64, 1024, None).unwrap();
        let mut verified = vec![false; 8];
        let mut copied = 0;
        for batch in [&[3usize, 4][..], &[7], &[0, 1, 2], &[6]] {
            for &i in batch {
                verified[i] = true;
            }
            copied += p.advance(&verified).unwrap();
            // Nothing at the output path until the file is whole.
            assert!(!out.exists());
            // Pieces are copied once: advancing again copies nothing.
            assert_eq!(p.advance(&verified).unwrap(), 0);
        }
        if p.placement() == Placement::Copy {
            assert_eq!(copied, bytes.len() as u64 - 1024, "all but piece 5");
        }
        p.finish().unwrap();
        assert!(std::fs::read(&out).unwrap() == bytes);
        let left: Vec<_> = std::fs::read_dir(out.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left");
    }

    #[test]
    fn progressive_dropped_unfinished_leaves_nothing_and_keeps_the_old_output() {
        let (d, cache) = cache_of(&pattern(4096, 1));
        let out = d.path().join("model.bin");
        std::fs::write(&out, b"the previous version").unwrap();
        let mut p = Progressive::start(&cache, &out, 4096, 1024, None).unwrap();
        p.advance(&[true, false, true, false]).unwrap();
        drop(p);
        assert_eq!(std::fs::read(&out).unwrap(), b"the previous version");
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 2, "cache and the old output only");
    }

    #[test]
    fn progressive_places_a_replaced_cache_file_whole() {
        let (d, cache) = cache_of(&pattern(4096, 2));
        let out = d.path().join("model.bin");
        let mut p = Progressive::start(&cache, &out, 4096, 1024, None).unwrap();
        p.advance(&[true, true, false, false]).unwrap();
        // The daemon discarded the task and fetched it again: a new file.
        std::fs::remove_file(&cache).unwrap();
        let fresh = pattern(4096, 3);
        std::fs::write(&cache, &fresh).unwrap();
        p.finish().unwrap();
        assert!(std::fs::read(&out).unwrap() == fresh);
    }

    #[test]
    fn progressive_of_an_empty_file() {
        let (d, cache) = cache_of(b"");
        let out = d.path().join("empty");
        let p = Progressive::start(&cache, &out, 0, 1024, None).unwrap();
        p.finish().unwrap();
        assert_eq!(std::fs::metadata(&out).unwrap().len(), 0);
    }
}
