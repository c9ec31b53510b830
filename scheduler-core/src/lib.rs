//! The sans-IO core of the weightcast scheduler, in the style of
//! `quinn-proto`: typed peer events go in with the current time as an
//! argument, messages to peers come out, and nothing here reads a clock,
//! opens a socket or spawns a task.
//!
//! ```text
//!        hello(HostInfo) · handle(PeerEvent) · disconnect     (+ now: Instant)
//!              │
//!              ▼
//!      ┌───────────────┐   hosts, tasks, who holds which piece,
//!      │     Core      │   the peer graph (Graph), the seed ring,
//!      └───────────────┘   blocklists that expire
//!              │
//!              ▼
//!        Vec<Outbound { to, task, msg: ToPeer }>
//!          SeedTask · Meta · Parents · Available · ParentGone · BackToSource
//! ```
//!
//! Why a crate of its own: the decisions are the product, and they must be
//! testable and simulable at 10,000 peers without a network, a runtime or a
//! wire format. This crate depends only on `weightcast-types` (task ids,
//! piece math, digests), and `scripts/test` fails if tokio, tonic, axum,
//! prost or `weightcast-proto` ever enter its dependency graph. The
//! `weightcast-scheduler` crate is the shell: gRPC sessions, decoding the
//! protobuf messages into [`PeerEvent`]s at its edge (malformed ids and
//! digests never get here), the clock, and the metrics page.
//!
//! - [`core`]: the state machine, phase 1 of scheduling.
//! - [`events`]: its inputs and outputs.
//! - [`cache_job`]: preheats and evictions: the peers they pick, each
//!   peer's result.
//! - [`config`]: the tunables, scoring weights included.
//! - `cyclic`: walking the positions that may pass a test, in the order
//!   a walk of the whole list would.
//! - `graph`: the parent/child edges and each host's child count, changed in
//!   one place only.
//! - `seed_ring`: consistent hashing of tasks onto seed peers.

pub mod cache_job;
pub mod config;
pub mod core;
mod cyclic;
pub mod events;
mod graph;
mod origin_budget;
mod seed_ring;

pub use crate::cache_job::{
    JobId, JobRefused, JobStatus, PeerFilter, PeerResult, PreheatJob, ResultState, Scope,
    TaskResults, WarmTask,
};
pub use crate::config::{Config, Weights};
pub use crate::core::{Core, PeerSummary, Stats};
pub use crate::events::{HostInfo, Outbound, ParentEntry, PeerEvent, SourceReason, ToPeer};
pub use weightcast_types::{PeerId, TaskId};
