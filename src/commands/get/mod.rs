//! `weightcast get`: what init containers, model-repository fetchers and
//! people run.
//!
//! - [`args`]: its flags; [`fetcher`]: the node's daemon or an in-process
//!   engine; [`progress`]: the bar.
//! - [`file`]: an `http(s)://` URL; [`hf`]: an `hf://` repo; [`oci`]: an
//!   `oci://` artifact; [`object_store`]: an `s3://`, `gs://` or `az://`
//!   object or prefix; [`artifact`]: what the last three share.

pub mod args;
pub mod artifact;
pub mod fetcher;
pub mod file;
pub mod hf;
pub mod object_store;
pub mod oci;
pub mod progress;

pub use args::GetArgs;

use anyhow::bail;
use fetcher::Fetcher;
use progress::Progress;
use std::io::IsTerminal;
use weightcast_modelpack::oci_ref::OciRef;
use weightcast_modelpack::HfUri;

pub async fn run(a: GetArgs) -> anyhow::Result<()> {
    let progress = Progress::new(!a.json && !a.quiet && std::io::stderr().is_terminal());
    if HfUri::is_hf(&a.url) {
        let uri = HfUri::parse(&a.url)?;
        if a.digest.is_some() {
            bail!("--digest is for http(s) URLs: hf:// files are checked against the sha256 the Hub publishes");
        }
        let fetcher = Fetcher::start(&a).await?;
        let summary = hf::run(&a, &uri, &fetcher, &progress).await;
        progress.finish();
        return artifact::report(&a, &summary?);
    }
    if OciRef::is_oci(&a.url) {
        let r = OciRef::parse(&a.url)?;
        if a.digest.is_some() {
            bail!("--digest is for http(s) URLs: oci:// layers are checked against the digests in the manifest");
        }
        let fetcher = Fetcher::start(&a).await?;
        let summary = oci::run(&a, &r, &fetcher, &progress).await;
        progress.finish();
        return artifact::report(&a, &summary?);
    }
    if weightcast_origin::object::is_object_url(&a.url) {
        // The store this environment points at is written into every
        // object's URL: the daemon and the seeds then read that one.
        let url = weightcast_origin::ObjectUrl::parse(&a.url)?.store_named()?;
        let fetcher = Fetcher::start(&a).await?;
        let summary = object_store::run(&a, &url, &fetcher, &progress).await;
        progress.finish();
        return artifact::report(&a, &summary?);
    }
    file::run(&a, &progress).await
}
