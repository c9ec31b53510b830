//! The sans-IO core of one download, in the style of `quinn-proto`: plain
//! events go in with the current time as an argument, commands come out,
//! and nothing here reads a clock, opens a socket or spawns a task.
//!
//! ```text
//!            Input (scheduler message, piece result, reader wants piece N,
//!              │    reconnect, origin probe, file opened, timeout, shutdown)
//!              ▼
//!      ┌───────────────┐  poll_timeout() → when to call again
//!      │   Download    │
//!      └───────────────┘
//!              │
//!              ▼
//!            Command (tell the scheduler, open the file, probe the origin,
//!                     fetch piece p from parent q or the origin, check the
//!                     whole-file digest, discard, finish)
//! ```
//!
//! The engine's tokio shell executes the commands against the real store,
//! transports and origin; the swarm simulator executes them against a
//! simulated network. Both drive this same code, so what the simulator
//! measures is what the product does.
//!
//! - [`events`]: the inputs and commands.
//! - [`download`]: the state machine.
//! - [`parent_choice`]: phase 2 of scheduling, which parent serves which piece.

pub mod download;
pub mod events;
pub mod parent_choice;

pub use download::{Config, Download, Mode, Progress, Spec};
pub use events::{
    Command, Failure, Fetch, FetchFrom, Input, ParentInfo, PieceOutcome, PieceReport,
    SchedulerEvent, Source, ToScheduler,
};
