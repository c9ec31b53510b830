//! Every contract between weightcast components.
//!
//! - [`pb`]: the gRPC control plane (peer ⇄ scheduler), compiled from
//!   `proto/scheduler.proto` at build time without a system `protoc`.
//! - [`frame`]: the wire format of the peer-to-peer piece protocol.
//! - [`transport`]: the trait every piece transport (TCP, RDMA) implements.
//! - [`cluster_auth`]: the cluster secret, its scheduler tokens and piece-connection proofs.
//! - [`http_range`]: the HTTP `Range` header, as every weightcast HTTP server answers it.

pub mod cluster_auth;
pub mod frame;
pub mod http_range;
pub mod metrics_text;
pub mod transport;

/// Generated gRPC messages and the `Scheduler` service client and server.
pub mod pb {
    tonic::include_proto!("weightcast.v1");
}
