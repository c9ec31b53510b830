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
    let out_err = |source| ExportError::Output {
        path: output.to_path_buf(),
        source,
    };
    let src = File::open(cache_file).map_err(|source| ExportError::Source {
        path: cache_file.to_path_buf(),
        source,
    })?;
    let len = src
        .metadata()
        .map_err(|source| ExportError::Source {
            path: cache_file.to_path_buf(),
            source,
        })?
        .len();
    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(out_err)?;
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.weightcast-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let placed = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|dst| {
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::fchown(&dst, Some(uid), Some(gid))?;
            }
            let how = match reflink(&src, &dst) {
                Ok(()) => Placement::Reflink,
                Err(_) => {
                    copy(&src, &dst, len)?;
                    Placement::Copy
                }
            };
            drop(dst);
            std::fs::rename(&tmp, output)?;
            Ok(how)
        });
    if placed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    placed.map_err(out_err)
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

/// Copies the `len` bytes of `src` into the empty `dst` in the kernel
/// (`copy_file_range`), falling back to a plain copy where the call is not
/// available (old kernels, some filesystem pairs).
fn copy(src: &File, dst: &File, len: u64) -> std::io::Result<()> {
    let mut done = 0u64;
    while done < len {
        let chunk = (len - done).min(COPY_CHUNK) as usize;
        // SAFETY: both descriptors are open for the call; null offsets use
        // and advance the files' own positions, which nothing else moves.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                std::ptr::null_mut(),
                dst.as_raw_fd(),
                std::ptr::null_mut(),
                chunk,
                0,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            let unsupported = matches!(
                e.raw_os_error(),
                Some(libc::ENOSYS | libc::EXDEV | libc::EINVAL | libc::EOPNOTSUPP)
            );
            if unsupported && done == 0 {
                let mut from = src;
                let mut to = dst;
                let copied = std::io::copy(&mut from, &mut to)?;
                return check_len(copied, len);
            }
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        forget_behind(src, dst, done, n as u64);
        done += n as u64;
    }
    check_len(done, len)
}

/// Keeps a copy's page cache flat (a container's memory limit counts it):
/// the source pages just read are dropped (they are clean; pages the
/// daemon still maps stay), writeback of the destination's new pages
/// starts, and the destination's pages two chunks back, written by now,
/// are dropped. Nothing here waits, so the copy runs as fast as before;
/// all of it is advice, and no byte depends on it.
fn forget_behind(src: &File, dst: &File, at: u64, n: u64) {
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(at), libc::off_t::try_from(n)) else {
        return;
    };
    // SAFETY: plain syscalls on descriptors the borrowed files keep open.
    unsafe {
        libc::posix_fadvise(src.as_raw_fd(), off, len, libc::POSIX_FADV_DONTNEED);
        libc::sync_file_range(dst.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE);
    }
    let behind = 2 * COPY_CHUNK as libc::off_t;
    if off >= behind {
        // SAFETY: as above.
        unsafe {
            libc::posix_fadvise(
                dst.as_raw_fd(),
                off - behind,
                COPY_CHUNK as libc::off_t,
                libc::POSIX_FADV_DONTNEED,
            );
        }
    }
}

fn check_len(copied: u64, len: u64) -> std::io::Result<()> {
    if copied == len {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the cache file ended after {copied} of {len} bytes"),
        ))
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
}
