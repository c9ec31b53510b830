//! What `get hf://`, `get oci://` and `get s3://` share: the artifact's files fetched a
//! few at a time behind one progress bar, and one summary.

use super::args::GetArgs;
use super::progress::Progress;
use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use weightcast_engine::GetSummary;
use weightcast_types::byte_size;

/// What `get` of an artifact reports (`--json` prints it).
#[derive(Debug, Serialize)]
pub struct ArtifactSummary {
    pub source: String,
    /// The commit (hf://) or manifest digest (oci://) that was fetched.
    pub resolved: String,
    pub output: PathBuf,
    pub files: Vec<GetSummary>,
    pub bytes: u64,
    pub seconds: f64,
    pub from_peers: u64,
    pub from_origin: u64,
    pub from_cache: u64,
}

/// One job's handle on the shared progress bar.
pub struct ProgressSlot<'a> {
    done: Arc<Mutex<Vec<u64>>>,
    index: usize,
    progress: &'a Progress,
}

impl ProgressSlot<'_> {
    /// This job has `bytes` done.
    pub fn set(&self, bytes: u64) {
        if let Ok(mut v) = self.done.lock() {
            v[self.index] = bytes;
            self.progress.update(v.iter().sum(), None);
        }
    }
}

/// Runs `fetch` for every item, `--jobs` at a time; the first error stops
/// the rest. `name` labels an item in errors, `size` feeds the bar's total.
pub async fn run_all<'i, 'p, T, R, F, Fut>(
    a: &GetArgs,
    progress: &'p Progress,
    items: &'i [T],
    name: impl Fn(&T) -> String,
    size: impl Fn(&T) -> u64,
    fetch: F,
) -> anyhow::Result<Vec<R>>
where
    F: Fn(&'i T, ProgressSlot<'p>) -> Fut,
    Fut: Future<Output = anyhow::Result<R>>,
{
    progress.message(format!("{} files", items.len()));
    progress.update(0, Some(items.iter().map(&size).sum()));
    let done = Arc::new(Mutex::new(vec![0u64; items.len()]));
    let (fetch, name) = (&fetch, &name);
    futures::stream::iter(items.iter().enumerate())
        .map(|(index, item)| {
            let slot = ProgressSlot {
                done: done.clone(),
                index,
                progress,
            };
            async move { fetch(item, slot).await.with_context(|| name(item)) }
        })
        .buffer_unordered(a.jobs.max(1))
        .try_collect()
        .await
}

pub fn summarize(
    source: String,
    resolved: String,
    output: PathBuf,
    files: Vec<GetSummary>,
    t0: Instant,
) -> ArtifactSummary {
    let sum = |f: fn(&GetSummary) -> u64| files.iter().map(f).sum();
    ArtifactSummary {
        source,
        resolved,
        output,
        bytes: sum(|s| s.bytes),
        from_peers: sum(|s| s.from_peers),
        from_origin: sum(|s| s.from_origin),
        from_cache: sum(|s| s.from_cache),
        seconds: t0.elapsed().as_secs_f64(),
        files,
    }
}

pub fn report(a: &GetArgs, s: &ArtifactSummary) -> anyhow::Result<()> {
    if a.json {
        println!("{}", serde_json::to_string(s)?);
    } else if !a.quiet {
        let short = s.resolved.trim_start_matches("sha256:");
        eprintln!(
            "{} ({}): {} files, {} in {:.2} s ({}/s) to {}; {} from peers, {} from origin, {} from cache",
            s.source,
            &short[..short.len().min(12)],
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
