//! `weightcast get s3://... | gs://... | az://...`: one object, or every
//! object under a prefix, through the swarm.
//!
//! The prefix is listed here, with this process's credentials; each object
//! is then one `get` of the engine (the node's daemon or an in-process
//! one), which stats it with its own credentials and names the task by the
//! object's sha256 or its pinned version. Keys become paths under `-o` in
//! the layout asked for; a key that would leave `-o` is refused. A failed
//! run removes what it had put in place, so nothing partial is left.

use super::args::GetArgs;
use super::artifact::{self, ArtifactSummary};
use super::fetcher::Fetcher;
use super::progress::Progress;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use weightcast_engine::{GetRequest, GetSummary, Validation};
use weightcast_modelpack::layout::Placement;
use weightcast_modelpack::{safetensors_check, Layout, RelPath};
use weightcast_origin::{ErrorKind, ObjectUrl, OriginConfig, OriginFetcher, OriginStats};

/// One object to fetch: its key, its path in the artifact, its listed size.
struct Item {
    key: String,
    path: RelPath,
    size: Option<u64>,
}

pub async fn run(
    a: &GetArgs,
    url: &ObjectUrl,
    fetcher: &Fetcher,
    progress: &Progress,
) -> anyhow::Result<ArtifactSummary> {
    let t0 = Instant::now();
    if a.layout == Layout::HfCache {
        bail!("--layout hf-cache is for hf:// sources");
    }
    let origin = OriginFetcher::new(
        OriginConfig {
            retries: a.engine.origin_retries,
            ..OriginConfig::default()
        },
        Arc::new(OriginStats::default()),
    );
    let (items, single) = objects(&origin, url).await?;
    if a.digest.is_some() && !single {
        bail!("--digest is for one object, not a prefix");
    }
    let out = std::path::absolute(&a.output)?;
    // One object without a layout: -o is its file, or a directory to put it in.
    let (root, single_target) = match (single, a.layout) {
        (true, Layout::Plain) if !out.is_dir() => {
            let parent = out.parent().context("-o names no file")?.to_path_buf();
            (parent, Some(out.clone()))
        }
        _ => (out.clone(), None),
    };
    let model = a.model_entry();
    let placement = Placement {
        layout: a.layout,
        root: &root,
        hf: None,
        model: model.as_ref(),
    };
    placement.check()?;
    let written = Written::before(&root);
    if let Err(e) = std::fs::create_dir_all(&root) {
        return Err(e).with_context(|| format!("cannot create output dir {}", root.display()));
    }
    let targets = items
        .iter()
        .map(|item| {
            let target = match &single_target {
                Some(t) => t.clone(),
                None => placement.place(&item.path, "")?.target,
            };
            written.target(target.clone());
            Ok(target)
        })
        .collect::<anyhow::Result<Vec<PathBuf>>>();
    let result = match targets {
        Ok(targets) => fetch_all(a, url, fetcher, progress, &items, &targets, &written).await,
        Err(e) => Err(e),
    };
    let files = match result {
        Ok(files) => files,
        Err(e) => {
            written.undo();
            return Err(e);
        }
    };
    if single_target.is_none() {
        let paths: Vec<RelPath> = items.iter().map(|i| i.path.clone()).collect();
        if let Err(e) = placement.finish(None, &paths) {
            written.undo();
            return Err(e.into());
        }
    }
    Ok(artifact::summarize(
        url.to_string(),
        format!("{} objects", items.len()),
        if single_target.is_some() { out } else { root },
        files,
        t0,
    ))
}

/// The objects `url` names: every object under a prefix (a URL ending in
/// `/`, or one that has objects under `<url>/`), else the one object.
async fn objects(origin: &OriginFetcher, url: &ObjectUrl) -> anyhow::Result<(Vec<Item>, bool)> {
    let prefix = match url.is_prefix() {
        true => url.clone(),
        false => url.with_key(&format!("{}/", url.key)),
    };
    let listed = origin.list(&prefix.to_string(), None).await;
    let entries = match listed {
        Ok(e) if !e.is_empty() || url.is_prefix() => e,
        // Not a directory (or not listable by this node): one object.
        Ok(_) => return single(url),
        Err(e)
            if !url.is_prefix()
                && matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Unauthorized) =>
        {
            return single(url)
        }
        Err(e) => return Err(e).with_context(|| format!("cannot list {prefix}")),
    };
    let mut items = Vec::new();
    for e in entries.into_iter().filter(|e| !e.is_dir) {
        let path = RelPath::parse(&e.name)?;
        items.push(Item {
            key: format!("{}{}", prefix.key, e.name),
            path,
            size: e.size,
        });
    }
    if items.is_empty() {
        bail!("{prefix}: no objects under this prefix");
    }
    Ok((items, false))
}

fn single(url: &ObjectUrl) -> anyhow::Result<(Vec<Item>, bool)> {
    let name = url.key.rsplit('/').next().unwrap_or_default();
    let path = RelPath::parse(name).with_context(|| format!("{url} names no file"))?;
    Ok((
        vec![Item {
            key: url.key.clone(),
            path,
            size: None,
        }],
        true,
    ))
}

async fn fetch_all(
    a: &GetArgs,
    url: &ObjectUrl,
    fetcher: &Fetcher,
    progress: &Progress,
    items: &[Item],
    targets: &[PathBuf],
    written: &Written,
) -> anyhow::Result<Vec<GetSummary>> {
    let jobs: Vec<(&Item, &PathBuf)> = items.iter().zip(targets).collect();
    artifact::run_all(
        a,
        progress,
        &jobs,
        |(item, _)| url.with_key(&item.key).to_string(),
        |(item, _)| item.size.unwrap_or(0),
        |(item, target), slot| async move {
            let object = url.with_key(&item.key);
            let req = GetRequest {
                digest: a.digest.clone(),
                back_to_source: !a.no_back_to_source,
                validate: safetensors_check::applies_to(item.path.as_str()).then_some(Validation::Safetensors),
                ..GetRequest::new(object.to_string(), (*target).clone())
            };
            let s = fetcher.get(&req, |d, _| slot.set(d)).await?;
            written.file((*target).clone());
            if let Some(size) = item.size.filter(|&s| s != 0) {
                if s.bytes != size {
                    bail!("the listing said {size} bytes but the object has {}: it changed meanwhile; run the get again", s.bytes);
                }
            }
            slot.set(s.bytes);
            Ok(s)
        },
    )
    .await
}

/// What a run put in place, so that a failure can take it back.
struct Written {
    root: PathBuf,
    root_existed: bool,
    /// Every file's place (their directories are created up front).
    targets: Mutex<Vec<PathBuf>>,
    /// The files that were put there.
    files: Mutex<Vec<PathBuf>>,
}

impl Written {
    fn before(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            root_existed: root.exists(),
            targets: Mutex::new(Vec::new()),
            files: Mutex::new(Vec::new()),
        }
    }

    fn target(&self, path: PathBuf) {
        if let Ok(mut t) = self.targets.lock() {
            t.push(path);
        }
    }

    fn file(&self, path: PathBuf) {
        if let Ok(mut f) = self.files.lock() {
            f.push(path);
        }
    }

    /// Removes the files placed, then the directories on their way that
    /// are empty now (`-o` itself only when this run created it).
    fn undo(&self) {
        if let Ok(files) = self.files.lock() {
            for f in files.iter() {
                let _ = std::fs::remove_file(f);
            }
        }
        let mut dirs: Vec<PathBuf> = Vec::new();
        if let Ok(targets) = self.targets.lock() {
            for t in targets.iter() {
                for d in t.ancestors().skip(1) {
                    if d == self.root || !d.starts_with(&self.root) {
                        break;
                    }
                    dirs.push(d.to_path_buf());
                }
            }
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        dirs.dedup();
        for d in dirs {
            let _ = std::fs::remove_dir(&d);
        }
        if !self.root_existed {
            for d in self.root.ancestors() {
                if std::fs::remove_dir(d).is_err() {
                    break;
                }
            }
        }
    }
}
