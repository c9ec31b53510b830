//! `--cluster-secret-file`, shared by every command that talks to a
//! scheduler or to peers (see `weightcast_proto::cluster_auth`).

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use weightcast_proto::cluster_auth::{self, AuthedSchedulerClient, ClusterSecrets};

#[derive(Args, Debug, Clone, Default)]
pub struct ClusterSecretArgs {
    /// The cluster secret: a file of one or more secrets, one a line (at
    /// least 16 characters each; e.g. `openssl rand -hex 32`). The first
    /// proves this process to schedulers and peers; any line is accepted
    /// from others. Edits take effect within seconds, without a restart.
    /// Every daemon, seed, scheduler and manager of a cluster gets the same
    /// file. Without it, nothing is proved or checked.
    #[arg(long, env = "WEIGHTCAST_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
}

impl ClusterSecretArgs {
    /// The secrets, read once here (a bad file stops the command at start)
    /// and again whenever the file changes.
    pub fn load(&self) -> anyhow::Result<Option<Arc<ClusterSecrets>>> {
        self.cluster_secret_file
            .as_ref()
            .map(|p| ClusterSecrets::load(p).context("--cluster-secret-file"))
            .transpose()
    }

    /// A client of the scheduler at `endpoint` that proves the secret.
    pub async fn scheduler_client(&self, endpoint: &str) -> anyhow::Result<AuthedSchedulerClient> {
        cluster_auth::connect_scheduler(endpoint, self.load()?)
            .await
            .with_context(|| format!("cannot reach the scheduler at {endpoint}"))
    }
}
