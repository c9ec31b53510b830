//! The flags of `weightcast get`.

use crate::commands::engine_args::{EngineArgs, HfArgs, OciSelect, RegistryArgs};
use clap::Args;
use std::path::PathBuf;
use weightcast_modelpack::layout::ModelEntry;
use weightcast_modelpack::Layout;

#[derive(Args, Debug)]
pub struct GetArgs {
    /// What to download: a Hugging Face repo,
    /// hf://[datasets/]owner/name[@revision][/path-or-glob] (a revision with
    /// a slash is written %2F-encoded); an OCI artifact, oci://...; an
    /// object or a prefix (ending in /) in object storage, s3://bucket/key,
    /// s3://host:port/bucket/key, gs://bucket/key, az://container/key; or an
    /// http:// or https:// URL.
    pub url: String,
    /// Output: for a URL or one object, a file or an existing directory to
    /// put it in (named after the URL); for hf://, oci:// and a prefix, the
    /// directory to write the files to.
    #[arg(short, long)]
    pub output: PathBuf,
    /// How an hf://, oci:// or object-storage artifact is written under -o: `plain` (its
    /// files as they are named in it); `hf-cache` (hf:// only: the Hugging
    /// Face cache structure; give -o as $HF_HOME/hub and
    /// `from_pretrained(..., local_files_only=True)` finds it); `triton`
    /// (-o/<model-name>/<version>/, config.pbtxt beside the versions);
    /// `torchserve` (-o/<model-name>/ with MAR-INF/MANIFEST.json).
    #[arg(long, env = "WEIGHTCAST_LAYOUT", default_value = "plain")]
    pub layout: Layout,
    /// The model's name in a `triton` or `torchserve` layout.
    #[arg(long, env = "WEIGHTCAST_MODEL_NAME")]
    pub model_name: Option<String>,
    /// The model's version in a `triton` or `torchserve` layout.
    #[arg(long, env = "WEIGHTCAST_MODEL_VERSION", default_value_t = 1)]
    pub model_version: u32,
    #[command(flatten)]
    pub oci: OciSelect,
    /// Files downloaded at once (hf://, oci://).
    #[arg(long, env = "WEIGHTCAST_JOBS", default_value_t = 4)]
    pub jobs: usize,
    /// Data dir of the node's daemon: `get` uses the daemon listening there,
    /// or runs an engine in this process with its cache there.
    #[arg(long, env = "WEIGHTCAST_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The daemon's socket, e.g. one mounted into an init container. It must answer.
    #[arg(long, env = "WEIGHTCAST_DAEMON_SOCKET")]
    pub daemon: Option<PathBuf>,
    /// Have the daemon place the files itself (it must have an
    /// --output-root above -o, and this user must be able to write there);
    /// by default this process places them from the daemon's cache, as the
    /// calling user.
    #[arg(long, env = "WEIGHTCAST_DAEMON_PLACES")]
    pub daemon_places: bool,
    /// Keep what this get fetches in the cache, never evicted by
    /// --cache-size or --cache-ttl, until `weightcast cache rm` removes it.
    #[arg(long)]
    pub pin: bool,
    /// Require this whole-file digest: sha256:<64 hex>.
    #[arg(long)]
    pub digest: Option<String>,
    /// Fail rather than fetch from the origin (the scheduler's seeds still may).
    #[arg(long)]
    pub no_back_to_source: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar and no summary line.
    #[arg(short, long)]
    pub quiet: bool,
    /// Upload server address of the in-process engine (used when no daemon runs).
    #[arg(long, env = "WEIGHTCAST_GET_LISTEN", default_value = "0.0.0.0:0")]
    pub listen: std::net::SocketAddr,
    #[command(flatten)]
    pub hf: HfArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
}

impl GetArgs {
    /// The model-serving entry that `--model-name`/`--model-version` name.
    pub fn model_entry(&self) -> Option<ModelEntry> {
        self.model_name.clone().map(|name| ModelEntry {
            name,
            version: self.model_version,
        })
    }
}
