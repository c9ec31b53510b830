//! `weightcast get hf://...`: a Hugging Face repo through the swarm.
//!
//! The revision is resolved to a commit once and every file is fetched at
//! that commit. LFS files (the weights) are swarm tasks keyed by their
//! sha256, so the same weights in two repos or revisions are one task and
//! one cache entry, fetched from the CDN location the Hub redirects to.
//! Small git-stored files come straight from the Hub. Each file is verified
//! (sha256, and `.safetensors` headers) before it appears under `-o`.

use super::get::{Fetcher, GetArgs, Progress};
use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use weightcast_bench::byte_size;
use weightcast_engine::hub_client::HubClient;
use weightcast_engine::origin::OriginAuth;
use weightcast_engine::{GetRequest, GetSummary, Validation};
use weightcast_modelpack::layout::{symlink_atomically, RepoPlacement};
use weightcast_modelpack::safetensors_check;
use weightcast_modelpack::{HfFile, HfUri};

/// What `get hf://` reports (`--json` prints it).
#[derive(Debug, Serialize)]
pub struct RepoSummary {
    pub source: String,
    pub commit: String,
    pub output: PathBuf,
    pub files: Vec<GetSummary>,
    pub bytes: u64,
    pub seconds: f64,
    pub from_peers: u64,
    pub from_origin: u64,
    pub from_cache: u64,
}

pub async fn run(
    a: &GetArgs,
    uri: &HfUri,
    fetcher: &Fetcher,
    progress: &Progress,
) -> anyhow::Result<RepoSummary> {
    let t0 = Instant::now();
    let hub = a.hf.hub()?;
    let auth = a.hf.authorization();
    let resolved = hub
        .resolve(uri, auth.as_deref())
        .await
        .with_context(|| format!("cannot resolve {uri}"))?;
    let root = std::path::absolute(&a.output)?;
    std::fs::create_dir_all(&root)
        .with_context(|| format!("cannot create output dir {}", root.display()))?;
    let placement = RepoPlacement {
        layout: a.layout,
        root: &root,
        repo: &resolved.repo,
        commit: &resolved.commit,
    };
    let total: u64 = resolved.files.iter().map(|f| f.size).sum();
    progress.message(format!("{} files", resolved.files.len()));
    progress.update(0, Some(total));
    // Bytes done per file, summed for the one progress bar.
    let done = Arc::new(Mutex::new(vec![0u64; resolved.files.len()]));
    let job = FileJob {
        a,
        hub: &hub,
        auth: auth.as_deref(),
        resolved: &resolved,
        placement: &placement,
        fetcher,
    };
    let files: Vec<GetSummary> = futures::stream::iter(resolved.files.iter().enumerate())
        .map(|(i, file)| {
            let done = done.clone();
            let job = &job;
            async move {
                job.fetch(file, |d| {
                    if let Ok(mut v) = done.lock() {
                        v[i] = d;
                        progress.update(v.iter().sum(), None);
                    }
                })
                .await
                .with_context(|| format!("{}", file.path))
            }
        })
        .buffer_unordered(a.jobs.max(1))
        .try_collect()
        .await?;
    placement.finish(uri.revision())?;
    let sum = |f: fn(&GetSummary) -> u64| files.iter().map(f).sum();
    Ok(RepoSummary {
        source: uri.to_string(),
        commit: resolved.commit.clone(),
        output: root,
        bytes: sum(|s| s.bytes),
        from_peers: sum(|s| s.from_peers),
        from_origin: sum(|s| s.from_origin),
        from_cache: sum(|s| s.from_cache),
        seconds: t0.elapsed().as_secs_f64(),
        files,
    })
}

/// What every file's download shares.
struct FileJob<'a> {
    a: &'a GetArgs,
    hub: &'a HubClient,
    auth: Option<&'a str>,
    resolved: &'a weightcast_engine::hub_client::ResolvedRepo,
    placement: &'a RepoPlacement<'a>,
    fetcher: &'a Fetcher,
}

impl FileJob<'_> {
    async fn fetch(
        &self,
        file: &HfFile,
        mut on_done: impl FnMut(u64),
    ) -> anyhow::Result<GetSummary> {
        let place = self.placement.place(&file.path, file.blob.etag())?;
        let repo = &self.resolved.repo;
        let hub_url = self
            .hub
            .url(&repo.resolve_path(&self.resolved.commit, file.path.as_str()));
        let hub_auth = self
            .auth
            .map(|v| OriginAuth::new(&hub_url, v))
            .transpose()?;
        let mut req = GetRequest {
            back_to_source: !self.a.no_back_to_source,
            validate: safetensors_check::applies_to(file.path.as_str())
                .then_some(Validation::Safetensors),
            ..GetRequest::new(&hub_url, place.target.clone())
        };
        // The Hub's answer for the file: its own words on refusal (gated,
        // missing), and for LFS files the CDN location of the bytes.
        let meta = self
            .hub
            .file_meta(repo, &self.resolved.commit, file.path.as_str(), self.auth)
            .await?;
        match file.blob.sha256() {
            Some(sha) => {
                if meta.etag != sha {
                    anyhow::bail!(
                        "the Hub's tree says sha256 {sha} but the file's ETag is {}",
                        meta.etag
                    );
                }
                req.digest = Some(format!("sha256:{sha}"));
                // The Hub sends LFS bytes to its CDN with a signed URL: that
                // URL is the task's origin, so a seed needs no token for it.
                match meta.location {
                    Some(cdn) => req.url = cdn,
                    None => req.auth = hub_auth,
                }
            }
            None => {
                // Small git-stored files: from the Hub, by this node, with
                // the token; not worth a round through the scheduler, and
                // fetched so even with --no-back-to-source.
                req.auth = hub_auth;
                req.swarm = false;
                req.back_to_source = true;
            }
        }
        let summary = self.fetcher.get(&req, |d, _| on_done(d)).await?;
        if summary.bytes != file.size {
            anyhow::bail!(
                "the Hub listed {} bytes but sent {}",
                file.size,
                summary.bytes
            );
        }
        if let Some((link, target)) = &place.link {
            symlink_atomically(link, target)?;
        }
        on_done(summary.bytes);
        Ok(summary)
    }
}

pub fn report(a: &GetArgs, s: &RepoSummary) -> anyhow::Result<()> {
    if a.json {
        println!("{}", serde_json::to_string(s)?);
    } else if !a.quiet {
        eprintln!(
            "{} ({}): {} files, {} in {:.2} s ({}/s) to {}; {} from peers, {} from origin, {} from cache",
            s.source,
            &s.commit[..s.commit.len().min(12)],
            s.files.len(),
            byte_size::format(s.bytes),
            s.seconds,
            byte_size::format((s.bytes as f64 / s.seconds.max(1e-9)) as u64),
            s.output.display(),
            byte_size::format(s.from_peers),
            byte_size::format(s.from_origin),
            byte_size::format(s.from_cache),
        );
    }
    Ok(())
}
