//! The seam between the piece store and a transport that writes by DMA.
//!
//! A transport that copies with the CPU (TCP, HTTP) can borrow the piece's
//! slice: when its future is dropped, nothing writes there any more. An
//! RDMA READ is different: the NIC keeps writing after the future that
//! posted it is gone. So such a transport takes *ownership* of a
//! [`WritePermit`], which names its destination as a file and a byte range
//! (never as a pointer), maps that file itself, and drops the permit only
//! when no transfer can land in the range any more.

use std::fs::File;
use std::ops::Range;

/// An owned, exclusive right to write one byte range of a file. While it
/// lives, nothing else writes the range and nobody reads it as verified;
/// dropping it gives the range back.
pub trait WritePermit: Send + 'static {
    /// The file the range belongs to, open for reading and writing.
    fn file(&self) -> &File;
    /// The bytes of [`file`](Self::file) that only the holder writes.
    fn range(&self) -> Range<u64>;
}
