//! The weightcast peer engine: what runs inside every daemon, seed peer and
//! in-process `weightcast get`. The piece store it writes into (task files,
//! the piece guards, placing a finished file at an output) is the
//! `weightcast-store` crate.
//!
//! - [`engine`]: the lifecycle (start, shutdown) and the `get`/`watch`
//!   entry points; [`config`] is what it is told, [`request`] what callers
//!   ask and get back (typed errors with an [`request::ErrorKind`]).
//! - [`download`]: the tokio shell of one task's download; its decisions
//!   live in the sans-IO `weightcast-download-core`. [`runs`] holds the
//!   downloads by task, [`dispatch`] routes scheduler messages to them,
//!   [`watch`] lets a streaming reader follow one.
//! - the piece store (one preallocated, mmap'd file per task, its piece
//!   table, placing outputs) is the `weightcast-store` crate.
//! - back-to-source (per-origin limits, retries, the Hub and registry
//!   clients) is the `weightcast-origin` crate.
//! - `held`: the finished tasks this peer holds, announced again on every
//!   connection to a scheduler (after a restart of either side).
//! - `cache_orders`: a scheduler's cache jobs (preheat a task, evict one);
//!   `cache_gc`: the bounded cache's hooks and periodic collection;
//!   [`cache_admin`]: `weightcast cache ls|rm|gc`.
//! - [`scheduler_link`]: the stream to the scheduler; [`load_report`] keeps
//!   it told of this peer's upload load.
//! - [`peer_transport`]: piece bytes from parents, RDMA or TCP;
//!   [`upload`]: what the upload server serves; [`address`]: what others dial.
//! - [`local_api`]: the engine on a unix socket, for `weightcast get`;
//!   [`output_access`]: where a client may have the daemon write;
//!   [`place_as_verified`]: the output copied piece by piece as the
//!   download verifies them, not all at the end.
//! - [`hf_endpoint`]: the daemon as a Hub endpoint for the real
//!   `huggingface_hub` client.
//! - [`registry_mirror`]: the daemon as a pull-through registry mirror;
//!   [`endpoint_access`]: who may use these two (loopback, or a token).
//! - [`s3_endpoint`]: the daemon as an S3-compatible endpoint (reads only)
//!   for `aws s3`, boto3 and model servers' repository fetchers;
//!   [`s3_listing`] answers its listings, [`sigv4`] checks its clients'
//!   signatures; `object_pin` names object-storage tasks by the version a
//!   stat with this node's credentials saw.
//! - [`piece_stream`]: serving a file over HTTP while its pieces arrive;
//!   [`http_body`]: the ranged answer shape every HTTP server here shares;
//!   [`file_server`]: a directory served with ranges (the demo's origin).
//! - [`ttl_cache`]: the endpoints' brief metadata cache.

pub mod address;
pub mod cache_admin;
mod cache_gc;
mod cache_orders;
pub mod config;
mod dispatch;
pub mod download;
pub mod endpoint_access;
pub mod engine;
pub mod file_server;
mod held;
pub mod hf_endpoint;
pub mod http_body;
mod load_report;
pub mod local_api;
pub mod metrics;
mod object_pin;
pub mod output_access;
pub mod peer_transport;
pub mod piece_stream;
pub mod place_as_verified;
pub mod registry_mirror;
pub mod request;
mod runs;
pub mod s3_endpoint;
pub mod s3_listing;
pub mod scheduler_link;
pub mod sigv4;
pub mod ttl_cache;
mod upload;
pub mod watch;

pub use config::{local_hostname, EngineConfig};
pub use engine::Engine;
pub use request::{ErrorKind, GetError, GetRequest, GetSummary, StartError, Validation};
pub use watch::TaskWatch;
pub use weightcast_rdma::TransportMode;
