//! The vocabulary every weightcast crate shares, with no I/O and no async
//! runtime, so that the sans-IO cores (scheduler, download) can depend on it
//! without pulling in tonic or tokio.
//!
//! - [`ids`]: task and peer identifiers.
//! - [`piece`]: how a file is cut into pieces, and piece digests.
//! - [`byte_size`]: `256MiB`-style sizes and rates, parsed and printed.
//! - [`write_permit`]: the owned destination a DMA transport writes into.

pub mod byte_size;
pub mod ids;
pub mod piece;
pub mod write_permit;

pub use ids::{PeerId, TaskId};
pub use write_permit::WritePermit;
