//! Origins: where bytes come from before any peer has them.
//!
//! Like Dragonfly's client backends, every origin protocol implements one
//! trait and is chosen by URL scheme, and everything that is policy rather
//! than protocol (how many requests at once, how many bytes per second,
//! when to try again, which credential goes where) is in one place that
//! wraps them all.
//!
//! - [`backend`]: the [`Backend`] trait (stat, ranged read into the
//!   caller's slice, list) and [`Backends`], the registry by scheme.
//! - [`http`]: plain HTTP(S) ranged GETs, redirects, header parsing;
//!   `sequential`: an origin that ignores `Range`, read in order from one
//!   GET. Every ranged read of a plain HTTP object checks it is still the
//!   object its stat saw (length, `ETag`): a changed object is an error,
//!   never a file of two versions.
//! - [`hub`]: the Hugging Face Hub (revision, tree, file HEAD) and the Hub
//!   as an `hf://` backend.
//! - [`registry`]: OCI registries (manifests checked against their digest,
//!   config blob, blob URLs and auth, docker config credentials) and the
//!   registry as an `oci://` backend.
//! - [`fetcher`]: [`OriginFetcher`], which every request goes through:
//!   per-origin [`limits`], [`retry`] with backoff, credential choice, the
//!   registry token flow on a challenge, and [`stats`].
//! - [`auth`]: [`OriginAuth`] (a credential bound to one origin) and the
//!   one registry token flow ([`RegistryTokens`]), used for manifests and
//!   blobs alike.
//! - [`origin_key`]: `scheme://host:port`, what limits and credentials are
//!   keyed by.
//! - [`error`]: [`OriginError`] and its [`ErrorKind`].
//!
//! - [`object`]: object storage, `s3://`, `gs://`, `az://` (and Triton's
//!   `as://`): the URL grammar and store errors always, the backends behind
//!   the `object-store` feature (the `object_store` crate and its cloud
//!   clients), which adds them to [`Backends::builtin`]. Their objects
//!   change in place under one name, so a task of one is pinned to the
//!   version its stat saw ([`Backend::pin`], [`OriginFetcher::pin`]).

pub mod auth;
pub mod backend;
pub mod error;
pub mod fetcher;
pub mod http;
pub mod hub;
pub mod limits;
pub mod object;
pub mod origin_key;
pub mod registry;
pub mod retry;
mod sequential;
pub mod stats;

pub use auth::{OriginAuth, RegistryTokens};
pub use backend::{Backend, Backends, Entry, Identity, RangeSink, Stat, Target};
pub use error::{error_chain, ErrorKind, OriginError};
pub use fetcher::{OriginConfig, OriginFetcher, Pinned};
pub use hub::{HubBackend, HubClient, HubError};
pub use object::{ObjectError, ObjectUrl};
pub use origin_key::OriginKey;
pub use registry::credentials::{docker_config_logins, Credentials};
pub use registry::{RegistryBackend, RegistryClient, RegistryError, ResolvedArtifact};
pub use stats::OriginStats;
