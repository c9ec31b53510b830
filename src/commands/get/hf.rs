//! `weightcast get hf://...`: a Hugging Face repo through the swarm.
//!
//! The revision is resolved to a commit once and every file is fetched at
//! that commit. LFS files (the weights) are swarm tasks keyed by their
//! sha256, so the same weights in two repos or revisions are one task and
//! one cache entry, fetched from the CDN location the Hub redirects to.
//! Small git-stored files come straight from the Hub. Each file is verified
//! (sha256, and `.safetensors` headers) before it appears under `-o`.

use super::args::GetArgs;
use super::artifact::{self, ArtifactSummary};
use super::fetcher::Fetcher;
use super::progress::Progress;
use anyhow::Context;
use std::time::Instant;
use weightcast_engine::{GetRequest, GetSummary, Validation};
use weightcast_modelpack::layout::{symlink_atomically, Placement};
use weightcast_modelpack::safetensors_check;
use weightcast_modelpack::{HfFile, HfUri};
use weightcast_origin::hub::ResolvedRepo;
use weightcast_origin::{HubClient, OriginAuth};

pub async fn run(
    a: &GetArgs,
    uri: &HfUri,
    fetcher: &Fetcher,
    progress: &Progress,
) -> anyhow::Result<ArtifactSummary> {
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
    let model = a.model_entry();
    let placement = Placement {
        layout: a.layout,
        root: &root,
        hf: Some((&resolved.repo, &resolved.commit)),
        model: model.as_ref(),
    };
    placement.check()?;
    let job = FileJob {
        a,
        hub: &hub,
        auth: auth.as_deref(),
        resolved: &resolved,
        placement: &placement,
        fetcher,
    };
    let files = artifact::run_all(
        a,
        progress,
        &resolved.files,
        |f| f.path.to_string(),
        |f| f.size,
        |file, slot| {
            let job = &job;
            async move { job.fetch(file, |d| slot.set(d)).await }
        },
    )
    .await?;
    let paths: Vec<_> = resolved.files.iter().map(|f| f.path.clone()).collect();
    placement.finish(Some(uri.revision()), &paths)?;
    Ok(artifact::summarize(
        uri.to_string(),
        resolved.commit.clone(),
        root,
        files,
        t0,
    ))
}

/// What every file's download shares.
struct FileJob<'a> {
    a: &'a GetArgs,
    hub: &'a HubClient,
    auth: Option<&'a str>,
    resolved: &'a ResolvedRepo,
    placement: &'a Placement<'a>,
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
