//! `weightcast-bench simulate`: a deterministic broadcast simulation on the
//! production cores.
//!
//! This machine cannot host 10,000 daemons, so the algorithm is proven
//! here: the **real** scheduler core and one **real** download core per
//! node (the same code the daemons run, not a model of it) are driven by a
//! discrete-event network, with simulated time as their clock.
//!
//! - [`cores`]: the one module that speaks the cores' types; when their
//!   inputs or outcomes change, only it changes.
//! - [`net`]: links and flows, max-min fair sharing, updated incrementally.
//! - [`world`]: hosts, the origin, seeds and peers, upload servers,
//!   latency, churn, and the event loop; [`Params`] and [`SimResult`].
//! - [`report`]: tables, JSON and the plots (CDF, slowest/T* against N).
//!
//! Same inputs, same output: nothing here reads a clock or draws a random
//! number (the wall time a run took is reported beside the result, never
//! used in it).

pub mod cores;
pub mod net;
pub mod report;
pub mod world;

pub use world::{Params, SimResult, World};

/// Simulates one broadcast to the end.
pub fn run(p: Params) -> SimResult {
    World::new(p).run()
}
