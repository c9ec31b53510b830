//! What a caller asks of an engine and what it gets back: the `get` request
//! (from the CLI or the local API), its summary, and its typed errors.

use crate::download::DownloadError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use weightcast_modelpack::safetensors_check::InvalidSafetensors;
use weightcast_origin::{ErrorKind as OriginKind, OriginAuth, OriginError};
use weightcast_store::export::{ExportError, Placement};
use weightcast_store::StoreError;

/// A `get` as the CLI and the local API ask for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetRequest {
    pub url: String,
    pub output: PathBuf,
    /// Required whole-file sha256, hex.
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default = "yes")]
    pub back_to_source: bool,
    /// Credentials for the URL's origin (sent there only).
    #[serde(default)]
    pub auth: Option<OriginAuth>,
    /// A check the finished file must pass before it is exposed.
    #[serde(default)]
    pub validate: Option<Validation>,
    /// `false`: fetch from the origin without the swarm (small files that
    /// are not worth a scheduler round trip, or that only this node may read).
    #[serde(default = "yes")]
    pub swarm: bool,
    /// The caller puts the file at `output` itself, from
    /// [`GetSummary::cache_path`]: a daemon does not see the filesystem of
    /// a caller in another mount namespace (an init container).
    #[serde(default)]
    pub client_places: bool,
    /// Keep the task in the cache until it is unpinned (`get --pin`;
    /// `weightcast cache rm` removes it).
    #[serde(default)]
    pub pin: bool,
    /// The W3C trace context of the caller's span: the daemon's spans for
    /// this request join the caller's trace (absent when nothing traces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

fn yes() -> bool {
    true
}

impl GetRequest {
    pub fn new(url: impl Into<String>, output: impl Into<PathBuf>) -> Self {
        Self {
            url: url.into(),
            output: output.into(),
            digest: None,
            back_to_source: true,
            auth: None,
            validate: None,
            swarm: true,
            client_places: false,
            pin: false,
            traceparent: None,
        }
    }
}

/// What a file must be before it is exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Validation {
    /// A sound `.safetensors` file (header and tensor offsets).
    Safetensors,
}

/// What a finished `get` reports (`--json` prints it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GetSummary {
    pub url: String,
    pub output: PathBuf,
    pub task_id: String,
    pub bytes: u64,
    pub seconds: f64,
    pub bytes_per_second: f64,
    pub from_peers: u64,
    pub from_origin: u64,
    /// Bytes that were already in the cache.
    pub from_cache: u64,
    /// How the file was put at `output`.
    pub placement: Option<Placement>,
    /// The verified cache file, for a caller that places it itself.
    #[serde(default)]
    pub cache_path: Option<PathBuf>,
}

/// What kind of failure a `get` met: what the local API tells its client,
/// so a second `get` can tell a 404 from a digest mismatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The origin has no such file.
    NotFound,
    /// The origin refused the credentials.
    Unauthorized,
    /// The origin failed otherwise (status, connection, protocol).
    Origin,
    /// The bytes are not the ones the digest names.
    DigestMismatch,
    /// The file arrived whole but is not what it claims (a bad safetensors header).
    InvalidFile,
    /// No peer served it, and back-to-source is forbidden.
    Stalled,
    /// The download had to come from the origin, and that is forbidden.
    SourceForbidden,
    SchedulerUnreachable,
    DiskFull,
    /// Reading or writing local files failed.
    Io,
    /// The request itself is wrong (a bad URL, digest or path).
    BadRequest,
    /// The client may not have the daemon write where it asked (see
    /// `output_access`).
    Forbidden,
    ShuttingDown,
    /// A bug: a task died.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error(transparent)]
    Origin(#[from] OriginError),
    /// The download (shared by every `get` of the same task) failed.
    #[error(transparent)]
    Download(Arc<DownloadError>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Output(#[from] ExportError),
    #[error("invalid --digest {0:?}: expected sha256:<64 hex characters>")]
    BadDigest(String),
    #[error(
        "the scheduler at {0} is unreachable and back-to-source is disabled (--no-back-to-source)"
    )]
    SchedulerUnreachable(String),
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Invalid(#[from] InvalidSafetensors),
}

impl GetError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            GetError::Origin(e) => origin_kind(e),
            GetError::Download(d) => d.kind(),
            GetError::Store(e) => store_kind(e),
            GetError::Output(_) => ErrorKind::Io,
            GetError::BadDigest(_) => ErrorKind::BadRequest,
            GetError::SchedulerUnreachable(_) => ErrorKind::SchedulerUnreachable,
            GetError::ShuttingDown => ErrorKind::ShuttingDown,
            GetError::Invalid(_) => ErrorKind::InvalidFile,
        }
    }
}

pub(crate) fn origin_kind(e: &OriginError) -> ErrorKind {
    match e.kind() {
        OriginKind::BadUrl => ErrorKind::BadRequest,
        OriginKind::NotFound => ErrorKind::NotFound,
        OriginKind::Unauthorized => ErrorKind::Unauthorized,
        OriginKind::DigestMismatch => ErrorKind::DigestMismatch,
        OriginKind::Config => ErrorKind::BadRequest,
        OriginKind::Unavailable
        | OriginKind::Refused
        | OriginKind::Transport
        | OriginKind::BadAnswer
        | OriginKind::Unsupported => ErrorKind::Origin,
    }
}

pub(crate) fn store_kind(e: &StoreError) -> ErrorKind {
    match e {
        StoreError::DiskFull { .. } | StoreError::CacheFull { .. } => ErrorKind::DiskFull,
        StoreError::DigestMismatch { .. } => ErrorKind::DigestMismatch,
        StoreError::Io { .. } => ErrorKind::Io,
    }
}

/// Why the engine did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr} for the upload server (--listen)")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("--transport rdma, but the RDMA device is unusable")]
    RdmaUnavailable(#[source] weightcast_rdma::RdmaError),
}
