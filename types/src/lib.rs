//! The vocabulary every weightcast crate shares, with no I/O and no async
//! runtime, so that the sans-IO cores (scheduler, download) can depend on it
//! without pulling in tonic or tokio.
//!
//! - [`ids`]: task and peer identifiers.
//! - [`piece`]: how a file is cut into pieces, and piece digests.
//! - [`byte_size`]: `256MiB`-style sizes and rates, parsed and printed.
//! - [`task_key`]: the task id of a download (digest, or normalized URL
//!   without signing parameters), shared by every way in.
//! - [`write_permit`]: the owned destination a DMA transport writes into.

pub mod byte_size;
pub mod ids;
pub mod piece;
pub mod task_key;
pub mod write_permit;

pub use ids::{PeerId, TaskId};
pub use task_key::TaskKey;
pub use write_permit::WritePermit;
