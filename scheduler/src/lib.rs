//! The weightcast scheduler.
//!
//! [`core`] is a sans-IO state machine: messages from peers go in, messages to
//! peers come out. It reads no clock and opens no socket, so the same code
//! runs in the gRPC service ([`service`]) and in a deterministic simulator
//! with thousands of peers.

pub mod core;
pub mod metrics;
mod seed_ring;
pub mod service;

pub use crate::core::{Config, Core, Outbound};
pub use service::{serve, SchedulerHandle};
