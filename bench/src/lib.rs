//! weightcast's benchmarks: the network-namespace cluster emulator and its
//! scenarios and reports. The servers and the process harness they use
//! live in `weightcast-testkit`; the binaries are in `src/bin`:
//!
//! - `weightcast-bench cluster`: scenarios on emulated bandwidth-capped
//!   hosts against BitTorrent and direct downloads; `weightcast-bench
//!   hf-hub` and `weightcast-bench origin`: the test servers as processes.
//! - `fanout`: swarm against direct downloads on loopback.
//! - `hf-endpoint`: the real `hf` client through daemons against the Hub.
//! - `rdma-vm-check`: the RDMA end-to-end check inside the soft-RoCE VM.
//!
//! - [`link`]: `weightcast-bench link`, one parent and one child against
//!   iperf3, the hashing ceiling and a cgroup memory limit.
//! - [`netns`]: hosts as network namespaces on a bridge, with tbf caps.
//! - [`scenarios`]: fan-out, heterogeneous, zones and churn runs of each system.
//! - [`report`]: markdown tables, JSON and SVG CDFs of the runs; [`stats`]:
//!   medians.
//! - [`simulate`]: the deterministic broadcast simulation on the real
//!   scheduler and download cores (`weightcast-bench simulate`).
//! - [`sched_load`]: one real scheduler process under thousands of gRPC
//!   sessions (`weightcast-bench sched-load`).

pub mod link;
pub mod netns;
pub mod report;
pub mod scenarios;
pub mod sched_load;
pub mod simulate;
pub mod stats;
