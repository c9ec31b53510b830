//! weightcast's benchmarks and test harness.
//!
//! - [`origin`]: an HTTP origin with Range support that counts every byte it
//!   serves (and can fail on purpose), the "Hub" of tests, demo and benches.
//! - [`safetensors_file`]: writes a valid safetensors file of any size.
//! - [`cluster`]: starts real `weightcast` processes (scheduler, seeds,
//!   daemons, `get`) on loopback and tears them down, for the end-to-end
//!   tests and the fan-out benchmark alike.

pub mod byte_size;
pub mod cluster;
pub mod netns;
pub mod origin;
pub mod report;
pub mod safetensors_file;
pub mod scenarios;
