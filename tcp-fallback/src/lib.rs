//! Piece transport over TCP.
//!
//! The frames are in [`weightcast_proto::frame`]: a 40-byte request, a
//! 17-byte response header, then the raw piece. The server writes the piece
//! from the sender's mmap'd task file and the client reads it straight into
//! the receiver's: no buffer the size of a piece exists on either side, so
//! memory stays flat however big the files are.
//!
//! The same connection carries the RDMA control frames (queue-pair setup,
//! piece locations); the server answers them through an [`RdmaResponder`]
//! that the engine provides, so this crate never touches verbs.
//!
//! With a cluster secret ([`weightcast_proto::cluster_auth`]) the server
//! opens every connection with a challenge and serves nothing, pieces or
//! RDMA setup, to a child that does not answer it.

mod client;
mod send_once;
mod server;

pub use client::{answer_challenge, challenge_without_secret, TcpTransport};
pub use send_once::{SendOnce, SendTicket};
pub use server::{
    PieceServer, PieceSource, RdmaPieceLocation, RdmaResponder, RdmaSetupError, UploadStats,
};
