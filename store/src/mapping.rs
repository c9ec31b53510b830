//! The task file's bytes in memory. This is the only module that turns the
//! mapping into slices, and it hands them out only through two guards:
//!
//! - [`PieceWrite`]: the writable slice of one piece that is neither
//!   verified nor claimed by another writer. At most one exists per piece;
//!   it is also the owned [`WritePermit`] a DMA transport holds until its
//!   last transfer into the piece has ended.
//! - [`VerifiedPiece`]: the read-only slice of a verified piece. Verified
//!   pieces are never written again (no `PieceWrite` can be made for them),
//!   so any number of readers may share them.
//!
//! The mapping is shared and writable, of exactly the file's content length;
//! the file was preallocated to that length before it was mapped, and it
//! lives in the store's own directory (outputs are copies, see
//! [`export`](crate::export)), so no page of it can vanish under a reader.

use crate::error::{io_err, StoreError};
use crate::task_file::TaskFile;
use memmap2::{MmapOptions, MmapRaw};
use std::fs::File;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use weightcast_types::piece::{piece_digest, PieceDigest};
use weightcast_types::WritePermit;

/// A task file mapped shared and writable; nothing for an empty file.
pub(crate) struct Mapping(Option<MmapRaw>);

impl Mapping {
    /// Maps the first `len` bytes of `file`, which must have at least that
    /// many: touching a mapped page past the end of a file is a SIGBUS.
    pub(crate) fn map(file: &File, len: u64, path: &Path) -> Result<Self, StoreError> {
        if len == 0 {
            return Ok(Self(None));
        }
        let have = file.metadata().map_err(io_err(path))?.len();
        let too_short = || {
            io_err(path)(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the file has {have} bytes where {len} were expected"),
            ))
        };
        if have < len {
            return Err(too_short());
        }
        let len = usize::try_from(len).map_err(|_| too_short())?;
        let map = MmapOptions::new()
            .len(len)
            .map_raw(file)
            .map_err(io_err(path))?;
        Ok(Self(Some(map)))
    }

    /// Whether `range` lies inside the mapping (an empty range always does).
    pub(crate) fn contains(&self, range: &Range<u64>) -> bool {
        let len = self.0.as_ref().map_or(0, |m| m.len() as u64);
        range.start <= range.end && (range.is_empty() || range.end <= len)
    }

    /// Hands `range`'s pages back to the kernel (see
    /// [`resident`](crate::resident)): unmaps them from this process and
    /// drops them from the page cache once written back (writeback starts
    /// here for any still dirty; those stay cached, clean and reclaimable,
    /// until it ends). Never loses a byte, and a later read faults the pages
    /// back in from the file; errors are only logged, as the data is safe
    /// either way.
    pub(crate) fn release(&self, file: &File, range: &Range<u64>) {
        use std::os::fd::AsRawFd;
        let Some(map) = &self.0 else { return };
        if range.is_empty() || !self.contains(range) {
            return;
        }
        // Piece ranges start on a piece boundary (a power of two of at least
        // 1 MiB), so `start` is page-aligned as madvise needs; the kernel
        // rounds the length up to whole pages, which at the file's end stay
        // inside the mapping's last page.
        let len = (range.end - range.start) as usize;
        // SAFETY: the range lies inside the mapping (checked above). On a
        // shared file mapping MADV_DONTNEED only removes this process's page
        // table entries: dirty data moves to the page cache, and any later
        // access (a reader's slice included) faults the same file bytes back
        // in, so no Rust reference into the range ever sees other bytes.
        let rc = unsafe {
            libc::madvise(
                map.as_mut_ptr().add(range.start as usize).cast(),
                len,
                libc::MADV_DONTNEED,
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            tracing::debug!(error = %e, "madvise(MADV_DONTNEED) on a released piece failed");
        }
        let (Ok(off), Ok(len)) = (
            libc::off_t::try_from(range.start),
            libc::off_t::try_from(len),
        ) else {
            return;
        };
        // SAFETY: a plain syscall on a descriptor that `file` keeps open.
        let rc =
            unsafe { libc::posix_fadvise(file.as_raw_fd(), off, len, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            let e = std::io::Error::from_raw_os_error(rc);
            tracing::debug!(error = %e, "posix_fadvise(DONTNEED) on a released piece failed");
        }
    }

    /// # Safety
    /// `range` lies inside the mapping ([`Mapping::contains`]), and nothing
    /// else reads or writes it while the slice lives.
    // The mapping is memory the kernel shares, not Rust data behind `&self`:
    // exclusivity is per piece, by the caller's claim, as with `UnsafeCell`.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice_mut(&self, range: &Range<u64>) -> &mut [u8] {
        match &self.0 {
            Some(map) if !range.is_empty() => {
                // SAFETY: in bounds and exclusive, by this function's contract;
                // the mapping outlives `&self`.
                unsafe {
                    std::slice::from_raw_parts_mut(
                        map.as_mut_ptr().add(range.start as usize),
                        (range.end - range.start) as usize,
                    )
                }
            }
            _ => &mut [],
        }
    }

    /// # Safety
    /// `range` lies inside the mapping, and nothing writes it while the
    /// slice lives.
    unsafe fn slice(&self, range: &Range<u64>) -> &[u8] {
        match &self.0 {
            Some(map) if !range.is_empty() => {
                // SAFETY: in bounds and not written, by this function's
                // contract; the mapping outlives `&self`.
                unsafe {
                    std::slice::from_raw_parts(
                        map.as_ptr().add(range.start as usize),
                        (range.end - range.start) as usize,
                    )
                }
            }
            _ => &[],
        }
    }
}

/// Exclusive access to one piece's bytes until it is committed or dropped
/// (dropping it leaves the piece missing, to be fetched again).
pub struct PieceWrite {
    file: Arc<TaskFile>,
    num: u32,
    range: Range<u64>,
}

impl PieceWrite {
    /// # Safety
    /// The caller has claimed piece `num` of `file` (no other `PieceWrite`
    /// for it exists and it is not verified), hands the release of that
    /// claim to this value, and `range` is the piece's range, inside the
    /// mapping.
    pub(crate) unsafe fn new(file: Arc<TaskFile>, num: u32, range: Range<u64>) -> Self {
        Self { file, num, range }
    }

    pub fn num(&self) -> u32 {
        self.num
    }

    /// The task whose piece this is.
    pub fn task(&self) -> weightcast_types::TaskId {
        self.file.id
    }

    /// The piece's slice of the mapping: transports read straight into it.
    pub fn buf(&mut self) -> &mut [u8] {
        // SAFETY: the range is the piece's, inside the mapping (`new`'s
        // contract); this value holds the piece's only claim, so nothing else
        // writes it and nothing reads it as verified; `&mut self` makes this
        // the only slice this value hands out at a time.
        unsafe { self.file.mapping().slice_mut(&self.range) }
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
        self.file.mark_verified(self.num, got, &self.range);
        Ok(got)
    }
}

impl Drop for PieceWrite {
    fn drop(&mut self) {
        self.file.release_claim(self.num);
    }
}

/// The destination as a DMA transport needs it: the task file and the
/// piece's range. While the transport owns this value the piece stays
/// claimed, so nothing else writes the range or reads it as verified.
impl WritePermit for PieceWrite {
    fn file(&self) -> &File {
        self.file.data_file()
    }

    fn range(&self) -> Range<u64> {
        self.range.clone()
    }
}

/// A verified piece's bytes; keeps the mapping alive while they are sent,
/// and the piece's pages mapped (it counts as a reader in the task's
/// [`resident`](crate::resident) set until dropped).
pub struct VerifiedPiece {
    file: Arc<TaskFile>,
    num: u32,
    range: Range<u64>,
}

impl VerifiedPiece {
    /// # Safety
    /// Piece `num`, whose range is `range` (inside the mapping), is verified
    /// in `file`, so it is never written again; the caller has counted this
    /// value as a reader of it (its drop ends that).
    pub(crate) unsafe fn new(file: Arc<TaskFile>, num: u32, range: Range<u64>) -> Self {
        Self { file, num, range }
    }

    pub fn num(&self) -> u32 {
        self.num
    }

    /// The task file and the piece's range in it, for a transport that
    /// serves the piece without the CPU (an RDMA parent registers the file
    /// and hands out the range).
    pub fn file(&self) -> &File {
        self.file.data_file()
    }

    pub fn range(&self) -> Range<u64> {
        self.range.clone()
    }
}

impl Drop for VerifiedPiece {
    fn drop(&mut self) {
        self.file.reader_done(self.num);
    }
}

impl AsRef<[u8]> for VerifiedPiece {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the range is inside the mapping and its piece is verified
        // (`new`'s contract), and verified pieces are never written again.
        unsafe { self.file.mapping().slice(&self.range) }
    }
}
