//! `weightcast get https://...`: one file.

use super::args::GetArgs;
use super::fetcher::Fetcher;
use super::progress::Progress;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use weightcast_engine::{GetRequest, GetSummary};
use weightcast_modelpack::Layout;
use weightcast_types::byte_size;

/// Downloads the URL `a.url` to `-o`.
pub async fn run(a: &GetArgs, progress: &Progress) -> anyhow::Result<()> {
    if a.layout != Layout::Plain {
        bail!("--layout applies to hf:// and oci:// sources only");
    }
    let output = output_path(&a.url, &a.output)?;
    let req = GetRequest {
        digest: a.digest.clone(),
        back_to_source: !a.no_back_to_source,
        ..GetRequest::new(&a.url, output.clone())
    };
    let fetcher = Fetcher::start(a).await?;
    let summary = fetcher.get(&req, |d, t| progress.update(d, t)).await;
    progress.finish();
    report(a, &summary?)
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
