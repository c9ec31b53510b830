//! The weightcast peer engine: what runs inside every daemon, seed peer and
//! in-process `weightcast get`. The piece store it writes into (task files,
//! the piece guards, placing a finished file at an output) is the
//! `weightcast-store` crate.
//!
//! - [`download`]: one task's download loop (its phase-2 parent choice is in
//!   `weightcast-download-core`).
//! - [`origin`]: back-to-source with per-origin limits and retries.
//! - [`scheduler_link`]: the stream to the scheduler.
//! - [`engine`]: ties them together; [`local_api`] serves it on a unix socket.
//! - [`hub_client`], [`hf_endpoint`]: the Hugging Face Hub as an origin, and
//!   the daemon as a Hub endpoint for the real `huggingface_hub` client.
//! - [`registry_client`], [`registry_mirror`]: OCI registries as an origin,
//!   and the daemon as a pull-through registry mirror.
//! - [`piece_stream`]: serving a file over HTTP while its pieces arrive;
//!   [`http_body`]: the ranged answer shape every HTTP server here shares;
//!   [`file_server`]: a directory served with ranges (the demo's origin).
//! - [`ttl_cache`]: the endpoints' brief metadata cache.

pub mod download;
pub mod engine;
pub mod file_server;
pub mod hf_endpoint;
pub mod http_body;
pub mod hub_client;
pub mod local_api;
pub mod metrics;
pub mod origin;
pub mod peer_transport;
pub mod piece_stream;
pub mod registry_client;
pub mod registry_mirror;
pub mod scheduler_link;
pub mod ttl_cache;

pub use engine::{
    Engine, EngineConfig, GetError, GetRequest, GetSummary, StartError, TaskWatch, Validation,
};
pub use weightcast_rdma::TransportMode;
