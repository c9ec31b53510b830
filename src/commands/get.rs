//! `weightcast get`: what init containers, model-repository fetchers and
//! people run.

use super::engine_args::{default_data_dir, EngineArgs, HfArgs, OciSelect, RegistryArgs};
use super::{artifact_jobs, get_hf, get_oci};
use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weightcast_engine::{local_api, Engine, GetRequest, GetSummary};
use weightcast_modelpack::layout::ModelEntry;
use weightcast_modelpack::oci_ref::OciRef;
use weightcast_modelpack::{HfUri, Layout};
use weightcast_store::export;
use weightcast_types::byte_size;

#[derive(Args, Debug)]
pub struct GetArgs {
    /// What to download: a Hugging Face repo,
    /// hf://[datasets/]owner/name[@revision][/path-or-glob] (a revision with
    /// a slash is written %2F-encoded), or an http:// or https:// URL.
    pub url: String,
    /// Output: for a URL, a file or an existing directory to put it in (named
    /// after the URL); for hf://, the directory to write the repo's files to.
    #[arg(short, long)]
    pub output: PathBuf,
    /// How an hf:// or oci:// artifact is written under -o: `plain` (its
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

/// `-o DIR/` (existing dir) means `DIR/<last URL segment>`; always absolute.
fn output_path(url: &str, output: &Path) -> anyhow::Result<PathBuf> {
    let out = if output.is_dir() {
        let name = url_file_name(url).context("the URL names no file; give -o a file path")?;
        output.join(name)
    } else {
        output.to_path_buf()
    };
    Ok(std::path::absolute(&out)?)
}

/// The URL path's last segment, if it is a plain file name.
fn url_file_name(url: &str) -> Option<String> {
    let path = url.split("://").nth(1)?.split(['?', '#']).next()?;
    let name = path.split('/').skip(1).last()?;
    (!name.is_empty() && name != "." && name != "..").then(|| name.to_string())
}

/// A progress bar on a terminal, nothing elsewhere.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn new(show: bool) -> Self {
        let bar = show.then(|| {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}")
                    .expect("valid template"),
            );
            b
        });
        Self { bar }
    }

    pub fn update(&self, done: u64, total: Option<u64>) {
        if let Some(b) = &self.bar {
            if let Some(t) = total {
                b.set_length(t);
            }
            b.set_position(done);
        }
    }

    pub fn message(&self, msg: String) {
        if let Some(b) = &self.bar {
            b.set_message(msg);
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Where downloads run: the node's daemon, or an engine in this process.
pub enum Fetcher {
    Daemon(PathBuf),
    InProcess(Arc<Engine>),
}

impl Fetcher {
    async fn start(a: &GetArgs) -> anyhow::Result<Self> {
        let data_dir = a.data_dir.clone().unwrap_or_else(default_data_dir);
        let (socket, must_answer) = match &a.daemon {
            Some(s) => (s.clone(), true),
            None => (local_api::socket_path(&data_dir), false),
        };
        if local_api::connect(&socket).await.is_some() {
            tracing::info!(socket = %socket.display(), "using the node's daemon");
            return Ok(Fetcher::Daemon(socket));
        }
        if must_answer {
            bail!("no weightcast daemon answers on {}", socket.display());
        }
        let config = a.engine.config(data_dir, a.listen, false, &a.hf)?;
        Ok(Fetcher::InProcess(Engine::start(config).await?))
    }

    /// Runs one download; `on_progress` sees (bytes done, total when known).
    pub async fn get(
        &self,
        req: &GetRequest,
        mut on_progress: impl FnMut(u64, Option<u64>),
    ) -> anyhow::Result<GetSummary> {
        match self {
            Fetcher::Daemon(socket) => {
                let stream = local_api::connect(socket).await.with_context(|| {
                    format!("the daemon on {} stopped answering", socket.display())
                })?;
                // The daemon verifies; this process places the file, since
                // the daemon may not see this filesystem (an init container).
                let req = GetRequest {
                    client_places: true,
                    ..req.clone()
                };
                let mut s = local_api::get_via_daemon(stream, socket, &req, on_progress).await?;
                let cache = s
                    .cache_path
                    .clone()
                    .context("the daemon did not say where the file is")?;
                if !cache.exists() {
                    bail!(
                        "the daemon's cache file {} is not visible here: mount the daemon's data dir at the same path (see deploy/kubernetes)",
                        cache.display()
                    );
                }
                s.placement = Some(export::place(&cache, &req.output)?);
                Ok(s)
            }
            Fetcher::InProcess(engine) => {
                Ok(engine.get(req, |p| on_progress(p.done, p.total)).await?)
            }
        }
    }
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

pub async fn run(a: GetArgs) -> anyhow::Result<()> {
    let progress = Progress::new(!a.json && !a.quiet && std::io::stderr().is_terminal());
    if HfUri::is_hf(&a.url) {
        let uri = HfUri::parse(&a.url)?;
        if a.digest.is_some() {
            bail!("--digest is for http(s) URLs: hf:// files are checked against the sha256 the Hub publishes");
        }
        let fetcher = Fetcher::start(&a).await?;
        let summary = get_hf::run(&a, &uri, &fetcher, &progress).await;
        progress.finish();
        return artifact_jobs::report(&a, &summary?);
    }
    if OciRef::is_oci(&a.url) {
        let r = OciRef::parse(&a.url)?;
        if a.digest.is_some() {
            bail!("--digest is for http(s) URLs: oci:// layers are checked against the digests in the manifest");
        }
        let fetcher = Fetcher::start(&a).await?;
        let summary = get_oci::run(&a, &r, &fetcher, &progress).await;
        progress.finish();
        return artifact_jobs::report(&a, &summary?);
    }
    if a.layout != Layout::Plain {
        bail!("--layout applies to hf:// and oci:// sources only");
    }
    let output = output_path(&a.url, &a.output)?;
    let req = GetRequest {
        digest: a.digest.clone(),
        back_to_source: !a.no_back_to_source,
        ..GetRequest::new(&a.url, output.clone())
    };
    let fetcher = Fetcher::start(&a).await?;
    let summary = fetcher.get(&req, |d, t| progress.update(d, t)).await;
    progress.finish();
    report(&a, &summary?)
}

fn report(a: &GetArgs, s: &GetSummary) -> anyhow::Result<()> {
    if a.json {
        println!("{}", serde_json::to_string(s)?);
    } else if !a.quiet {
        eprintln!(
            "{}: {} in {:.2} s ({}/s); {} from peers, {} from origin, {} from cache",
            s.output.display(),
            byte_size::format(s.bytes),
            s.seconds,
            byte_size::format(s.bytes_per_second as u64),
            byte_size::format(s.from_peers),
            byte_size::format(s.from_origin),
            byte_size::format(s.from_cache),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_name_from_url() {
        assert_eq!(
            url_file_name("https://h/a/b.bin?x=1").as_deref(),
            Some("b.bin")
        );
        assert_eq!(url_file_name("https://h/"), None);
        assert_eq!(url_file_name("https://h/a/.."), None);
    }
}
