//! The piece store: one preallocated, memory-mapped file per task, and the
//! one owner of that mapping.
//!
//! - [`layout`]: where a task's files lie under the data dir, `meta.json`.
//! - [`piece_table`]: the persisted record of verified pieces and its codec.
//! - [`mapping`]: the only module that makes slices of the mapping, through
//!   two guards: [`PieceWrite`] (one writer per unverified piece, also the
//!   owned [`WritePermit`](weightcast_types::WritePermit) a DMA transport
//!   holds) and [`VerifiedPiece`] (read-only, verified pieces only).
//! - [`task_file`]: one task's file, its piece states, creation and resume.
//! - [`store`]: tasks opened on demand and shared; discard; the bounded
//!   cache's admission and eviction, whose policy is [`cache`].
//! - [`resident`]: the mapped working set: verified pieces that fall out
//!   of a small window are unmapped and dropped from the page cache, so a
//!   daemon's memory stays flat whatever the file's size.
//! - [`running_hash`]: the whole-file sha256, fed piece by piece.
//! - [`export`]: a verified file placed at a user's path as a file of its
//!   own (reflink, else an in-kernel copy), atomically.
//! - [`file_digest`]: sha256 of a file on disk.
//!
//! Nothing outside this crate sees an address in the mapping: transports
//! get slices from the guards, and a transport that writes by DMA gets a
//! file, a byte range and an owned guard, and maps the file itself.

pub mod cache;
pub mod error;
pub mod export;
pub mod file_digest;
pub mod layout;
pub mod mapping;
pub mod piece_table;
pub mod resident;
pub mod running_hash;
pub mod store;
pub mod task_file;

pub use cache::{CacheEntry, CacheHooks, CachePolicy, CacheReport};
pub use error::StoreError;
pub use export::{ExportError, Placement, Progressive};
pub use file_digest::sha256_file;
pub use layout::TaskMeta;
pub use mapping::{PieceWrite, VerifiedPiece};
pub use resident::DEFAULT_WINDOW as DEFAULT_MAPPED_WINDOW;
pub use running_hash::RunningSha256;
pub use store::{RemoveError, Store};
pub use task_file::TaskFile;
