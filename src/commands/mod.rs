//! One module per subcommand, plus what they share.

pub mod cache;
pub mod cluster_secret;
pub mod config_file;
pub mod daemon;
pub mod demo;
pub mod engine_args;
pub mod get;
pub mod inspect;
pub mod manager;
pub mod preheat;
pub mod ready_file;
pub mod scheduler;
pub mod task;
