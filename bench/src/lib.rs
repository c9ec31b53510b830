//! weightcast's benchmarks and test harness.
//!
//! - [`origin`]: an HTTP origin with Range support that counts every byte it
//!   serves (and can fail on purpose), the "Hub" of tests, demo and benches.
//! - [`hf_hub`]: a Hugging Face–compatible hub (revision, paginated tree,
//!   `/resolve` with LFS redirects to a separate signed-URL CDN, gated repos)
//!   that counts what it serves, for tests against the real HF clients.
//! - [`safetensors_file`]: writes a valid safetensors file of any size.
//! - [`cluster`]: starts real `weightcast` processes (scheduler, seeds,
//!   daemons, `get`) on loopback and tears them down, for the end-to-end
//!   tests and the fan-out benchmark alike.

pub mod byte_size;
pub mod cluster;
pub mod hf_hub;
pub mod netns;
pub mod oci_registry;
pub mod origin;
pub mod ranged_body;
pub mod report;
pub mod safetensors_file;
pub mod scenarios;
