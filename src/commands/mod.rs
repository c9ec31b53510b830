//! One module per subcommand, plus what they share.

pub mod artifact_jobs;
pub mod config_file;
pub mod daemon;
pub mod demo;
pub mod engine_args;
pub mod get;
pub mod get_hf;
pub mod get_oci;
pub mod inspect;
pub mod logging;
pub mod ready_file;
pub mod scheduler;
