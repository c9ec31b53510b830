//! What weightcast's tests and benchmarks stand up around the product, and
//! never ship in it (`cargo tree -p weightcast -e normal` has no testkit):
//!
//! - [`origin`]: the product's ranged file server with faults injected.
//! - [`hf_hub`]: a Hugging Face–compatible hub (revision, paginated tree,
//!   `/resolve` with LFS redirects to a separate signed-URL CDN, gated repos)
//!   that counts what it serves, for tests against the real HF clients.
//! - [`oci_registry`]: a real `docker-registry` process and a pusher of
//!   ModelPack artifacts.
//! - [`registry_token`]: a registry token realm (RS256 JWTs with `x5c`),
//!   so the registry authenticates as Harbor's does.
//! - [`containerd`]: a real containerd daemon and its `ctr`, pulling
//!   through a mirror named in a `hosts.toml`.
//! - [`postgres`]: a real PostgreSQL server in a temporary directory.
//! - [`s3_store`]: a real S3 server (moto, with IAM and SigV4 enforced)
//!   behind a proxy that counts the object bytes it served.
//! - [`cluster`]: real `weightcast` processes (scheduler, seeds, daemons,
//!   `get`) on loopback or in network namespaces, torn down on drop.

pub mod cluster;
pub mod containerd;
pub mod hf_hub;
pub mod oci_registry;
pub mod origin;
pub mod postgres;
pub mod registry_token;
pub mod s3_store;
