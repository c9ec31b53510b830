//! The mapped working set of one task file: which verified pieces keep
//! their pages, and which are handed back to the kernel.
//!
//! Without this, every page a daemon writes or serves stays mapped until
//! the file is closed: a 4 GiB download leaves 4 GiB in the daemon's RSS
//! and in its cgroup's page cache, where a container's memory limit counts
//! it. So verified pieces are kept in a small least-recently-used window
//! (about [`DEFAULT_WINDOW`] bytes), and a piece that falls out of it and
//! has no reader is released: its pages are unmapped from this process
//! (`MADV_DONTNEED`) and dropped from the page cache (`POSIX_FADV_DONTNEED`)
//! once written back. The window is the hysteresis: a piece being served to
//! several children is touched by every upload and stays in, and a piece
//! with a live reader is never released, so hot pieces are not thrashed.
//!
//! Releasing is only a hint and never loses a byte: the mapping is shared,
//! so unmapped dirty pages stay in the page cache until written back, and
//! the page cache drops only clean, unmapped pages. A later read of a
//! released piece faults it back in from the file.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

/// Bytes of verified pieces kept mapped per task file by default.
pub const DEFAULT_WINDOW: u64 = 32 << 20;

/// Which verified pieces are mapped, and who reads them.
pub(crate) struct ResidentSet {
    /// Bytes of verified pieces to keep; 0: keep everything (the kernel
    /// alone decides, as a plain mapping would).
    window: u64,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Verified pieces whose pages may be mapped, with their lengths,
    /// least recently used first.
    recent: VecDeque<(u32, u64)>,
    /// Their bytes.
    bytes: u64,
    /// Live readers ([`VerifiedPiece`](crate::VerifiedPiece)s) per piece.
    readers: Vec<u32>,
}

impl ResidentSet {
    pub(crate) fn new(pieces: usize, window: u64) -> Self {
        Self {
            window,
            inner: Mutex::new(Inner {
                recent: VecDeque::new(),
                bytes: 0,
                readers: vec![0; pieces],
            }),
        }
    }

    /// Every update is a few assignments that leave the set consistent, so
    /// a poisoned lock is used as it is.
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Piece `num` (`len` bytes) was just verified or read; with `reader`,
    /// a reader starts. Returns the pieces to release now.
    pub(crate) fn touch(&self, num: u32, len: u64, reader: bool) -> Vec<u32> {
        if self.window == 0 {
            return Vec::new();
        }
        let mut s = self.inner();
        if reader {
            if let Some(r) = s.readers.get_mut(num as usize) {
                *r += 1;
            }
        }
        if let Some(at) = s.recent.iter().rposition(|&(n, _)| n == num) {
            s.recent.remove(at);
        } else {
            s.bytes += len;
        }
        s.recent.push_back((num, len));
        self.over_window(&mut s)
    }

    /// A reader of piece `num` ended. Returns the pieces to release now.
    pub(crate) fn reader_done(&self, num: u32) -> Vec<u32> {
        if self.window == 0 {
            return Vec::new();
        }
        let mut s = self.inner();
        if let Some(r) = s.readers.get_mut(num as usize) {
            *r = r.saturating_sub(1);
        }
        self.over_window(&mut s)
    }

    /// Takes the least recently used unread pieces out until the rest fits
    /// the window; the most recent piece always stays.
    fn over_window(&self, s: &mut Inner) -> Vec<u32> {
        let mut out = Vec::new();
        let mut i = 0;
        while s.bytes > self.window && i + 1 < s.recent.len() {
            let (num, len) = s.recent[i];
            if s.readers.get(num as usize).copied().unwrap_or(0) > 0 {
                i += 1;
                continue;
            }
            s.recent.remove(i);
            s.bytes = s.bytes.saturating_sub(len);
            out.push(num);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recent_unread_pieces_leave_once_the_window_is_full() {
        let r = ResidentSet::new(8, 3 * 10);
        assert!(r.touch(0, 10, false).is_empty());
        assert!(r.touch(1, 10, false).is_empty());
        assert!(r.touch(2, 10, false).is_empty());
        // Piece 0 read again: it becomes the most recent.
        assert!(r.touch(0, 10, false).is_empty());
        assert_eq!(r.touch(3, 10, false), vec![1], "least recent first");
        // A reader keeps piece 2 in, however old it gets.
        assert!(r.touch(2, 10, true).is_empty());
        assert_eq!(r.touch(4, 10, false), vec![0]);
        assert_eq!(r.touch(5, 10, false), vec![3], "2 is being read");
        assert_eq!(r.touch(6, 10, false), vec![4], "2 is still being read");
        assert_eq!(r.reader_done(2), Vec::<u32>::new(), "fits the window");
        assert_eq!(r.touch(7, 10, false), vec![2], "no reader: 2 may go now");
    }

    #[test]
    fn a_piece_larger_than_the_window_stays_until_the_next_one() {
        let r = ResidentSet::new(3, 10);
        assert!(r.touch(0, 64, false).is_empty(), "the newest always stays");
        assert_eq!(r.touch(1, 64, false), vec![0]);
        assert_eq!(r.touch(2, 64, false), vec![1]);
    }

    #[test]
    fn a_zero_window_keeps_everything() {
        let r = ResidentSet::new(3, 0);
        for n in 0..3 {
            assert!(r.touch(n, 1 << 30, true).is_empty());
            assert!(r.reader_done(n).is_empty());
        }
    }
}
