//! `weightcast get oci://...`: a ModelPack (or plain OCI) artifact through
//! the swarm.
//!
//! The manifest is read once (and the model config checked); every layer
//! is a swarm task whose id is its digest, fetched by the seed with ranged
//! blob GETs and verified before anything is exposed. Raw layers become
//! files; tar layers are extracted safely (see `modelpack::tar_extract`).

use super::args::GetArgs;
use super::artifact::{self, ArtifactSummary};
use super::fetcher::Fetcher;
use super::progress::Progress;
use anyhow::Context;
use std::time::Instant;
use weightcast_engine::{GetRequest, GetSummary, Validation};
use weightcast_modelpack::layout::Placement;
use weightcast_modelpack::oci_artifact::{Layer, Packing};
use weightcast_modelpack::oci_ref::OciRef;
use weightcast_modelpack::{safetensors_check, tar_extract, RelPath};
use weightcast_origin::{RegistryClient, ResolvedArtifact};

pub async fn run(
    a: &GetArgs,
    r: &OciRef,
    fetcher: &Fetcher,
    progress: &Progress,
) -> anyhow::Result<ArtifactSummary> {
    let t0 = Instant::now();
    let root = std::path::absolute(&a.output)?;
    let model = a.model_entry();
    let placement = Placement {
        layout: a.layout,
        root: &root,
        hf: None,
        model: model.as_ref(),
    };
    placement.check()?;
    let creds = a.registry.credentials(&r.registry)?;
    let client = RegistryClient::new(a.registry.plain_http);
    let resolved = client
        .resolve(r, &creds, a.oci.platform.as_deref(), &a.oci.filter())
        .await?;
    std::fs::create_dir_all(&root)
        .with_context(|| format!("cannot create output dir {}", root.display()))?;
    let job = LayerJob {
        a,
        resolved: &resolved,
        placement: &placement,
        fetcher,
    };
    let results = artifact::run_all(
        a,
        progress,
        &resolved.layers,
        |l| match &l.path {
            Some(p) => format!("layer {} ({p})", l.digest),
            None => format!("layer {}", l.digest),
        },
        |l| l.size,
        |layer, slot| {
            let job = &job;
            async move { job.fetch(layer, |d| slot.set(d)).await }
        },
    )
    .await?;
    let (files, written): (Vec<GetSummary>, Vec<Vec<RelPath>>) = results.into_iter().unzip();
    placement.finish(None, &written.concat())?;
    Ok(artifact::summarize(
        r.to_string(),
        resolved.manifest_digest.clone(),
        root,
        files,
        t0,
    ))
}

struct LayerJob<'a> {
    a: &'a GetArgs,
    resolved: &'a ResolvedArtifact,
    placement: &'a Placement<'a>,
    fetcher: &'a Fetcher,
}

impl LayerJob<'_> {
    /// Fetches one layer and puts its files in place; returns the summary
    /// and the artifact-relative paths it wrote.
    async fn fetch(
        &self,
        layer: &Layer,
        on_done: impl FnMut(u64),
    ) -> anyhow::Result<(GetSummary, Vec<RelPath>)> {
        let root = self.placement.root;
        let mut req = GetRequest {
            back_to_source: !self.a.no_back_to_source,
            digest: Some(layer.digest.clone()),
            auth: self.resolved.blob_auth(),
            ..GetRequest::new(self.resolved.blob_url(&layer.digest), root)
        };
        if layer.packing == Packing::Raw {
            let path = layer.path.as_ref().context("a raw layer has a path")?;
            req.output = self.placement.place(path, "")?.target;
            req.validate =
                safetensors_check::applies_to(path.as_str()).then_some(Validation::Safetensors);
            let s = self.fetcher.get(&req, progress_fn(on_done)).await?;
            check_size(layer, &s)?;
            return Ok((s, vec![path.clone()]));
        }
        // An archive: the verified blob beside the output, extracted, removed.
        let blob = root.join(format!(".weightcast-layer-{}", layer.sha256_hex()));
        req.output = blob.clone();
        let s = self.fetcher.get(&req, progress_fn(on_done)).await;
        let s = match s {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(&blob);
                return Err(e);
            }
        };
        check_size(layer, &s)?;
        let files_dir = self.placement.files_dir()?;
        let prefix = match (&files_dir, &layer.path) {
            (Some(d), Some(p)) => Some(RelPath::parse(&format!("{d}/{p}"))?),
            (Some(d), None) => Some(d.clone()),
            (None, p) => p.clone(),
        };
        let (packing, dest) = (layer.packing, root.to_path_buf());
        let archive = blob.clone();
        let written = tokio::task::spawn_blocking(move || {
            tar_extract::extract(&archive, packing, &dest, prefix.as_ref())
        })
        .await;
        let _ = std::fs::remove_file(&blob);
        let written = written.context("extraction stopped")??;
        // Paths relative to the artifact (inside the layout's files dir).
        let strip = files_dir.map(|d| format!("{d}/")).unwrap_or_default();
        let written = written
            .iter()
            .filter_map(|p| {
                RelPath::parse(p.as_str().strip_prefix(&strip).unwrap_or(p.as_str())).ok()
            })
            .collect();
        Ok((s, written))
    }
}

fn progress_fn(mut on_done: impl FnMut(u64)) -> impl FnMut(u64, Option<u64>) {
    move |d, _| on_done(d)
}

fn check_size(layer: &Layer, s: &GetSummary) -> anyhow::Result<()> {
    if s.bytes != layer.size {
        anyhow::bail!(
            "the manifest says {} bytes but the blob has {}",
            layer.size,
            s.bytes
        );
    }
    Ok(())
}
