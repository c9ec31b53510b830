//! The weightcast scheduler service: the I/O shell around the sans-IO
//! scheduling core.
//!
//! The decisions live in `weightcast-scheduler-core` (re-exported here as
//! [`core`]), which knows no network, no runtime and no wire format, so the
//! same code runs here and in deterministic simulations with thousands of
//! peers. This crate holds everything the core must not:
//!
//! - [`service`]: the tonic gRPC service. One actor task owns the core and
//!   feeds it `Instant::now()`; bounded queues both ways; owned tasks and a
//!   graceful [`SchedulerHandle::shutdown`].
//! - [`wire`]: protobuf in and out. Peer messages are decoded into the
//!   core's typed events here, and malformed ones (bad task ids or digests)
//!   are rejected and counted here, before the core sees them.
//! - [`metrics`]: the Prometheus page.

pub mod metrics;
pub mod service;
pub mod wire;

pub use service::{serve, serve_authenticated, SchedulerHandle};
pub use weightcast_scheduler_core as core;
pub use weightcast_scheduler_core::{Config, Core, Outbound, Weights};
