//! `weightcast inspect`: what a `get` of an hf:// or oci:// source would
//! fetch (files, sizes, media types, digests, total), without fetching.

use super::engine_args::{HfArgs, OciSelect, RegistryArgs};
use anyhow::bail;
use clap::Args;
use serde::Serialize;
use weightcast_modelpack::oci_ref::OciRef;
use weightcast_modelpack::HfUri;
use weightcast_origin::RegistryClient;
use weightcast_types::byte_size;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// hf://[datasets/]owner/name[@revision][/path-or-glob] or
    /// oci://registry/repository[:tag|@digest].
    pub source: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub oci: OciSelect,
    #[command(flatten)]
    pub hf: HfArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Serialize)]
struct Entry {
    /// The file; for an archive layer, the directory it extracts into.
    path: String,
    size: u64,
    media_type: String,
    digest: String,
}

#[derive(Debug, Serialize)]
struct Inspection {
    source: String,
    /// The commit or manifest digest a `get` would fetch now.
    resolved: String,
    files: Vec<Entry>,
    total_bytes: u64,
}

pub async fn run(a: InspectArgs) -> anyhow::Result<()> {
    let inspection = if HfUri::is_hf(&a.source) {
        let uri = HfUri::parse(&a.source)?;
        let r =
            a.hf.hub()?
                .resolve(&uri, a.hf.authorization().as_deref())
                .await?;
        let files = r
            .files
            .iter()
            .map(|f| Entry {
                path: f.path.to_string(),
                size: f.size,
                media_type: if f.blob.sha256().is_some() {
                    "lfs"
                } else {
                    "git"
                }
                .into(),
                digest: match f.blob.sha256() {
                    Some(s) => format!("sha256:{s}"),
                    None => format!("git:{}", f.blob.etag()),
                },
            })
            .collect();
        inspection(uri.to_string(), r.commit, files)
    } else if OciRef::is_oci(&a.source) {
        let r = OciRef::parse(&a.source)?;
        let creds = a.registry.credentials(&r.registry)?;
        let art = RegistryClient::new(a.registry.plain_http)
            .resolve(&r, &creds, a.oci.platform.as_deref(), &a.oci.filter())
            .await?;
        let files = art
            .layers
            .iter()
            .map(|l| Entry {
                path: match (&l.path, l.packing) {
                    (Some(p), weightcast_modelpack::oci_artifact::Packing::Raw) => p.to_string(),
                    (Some(p), _) => format!("{p}/ (archive)"),
                    (None, _) => "./ (archive)".into(),
                },
                size: l.size,
                media_type: l.media_type.clone(),
                digest: l.digest.clone(),
            })
            .collect();
        inspection(r.to_string(), art.manifest_digest, files)
    } else {
        bail!(
            "inspect takes an hf:// or oci:// source, not {:?}",
            a.source
        );
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&inspection)?);
        return Ok(());
    }
    println!("{} at {}", inspection.source, inspection.resolved);
    let width = inspection
        .files
        .iter()
        .map(|f| f.path.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:<width$}  {:>10}  {:<44}  DIGEST",
        "PATH", "SIZE", "MEDIA TYPE"
    );
    for f in &inspection.files {
        println!(
            "{:<width$}  {:>10}  {:<44}  {}",
            f.path,
            byte_size::format(f.size),
            f.media_type,
            f.digest
        );
    }
    println!(
        "{} files, {} in total",
        inspection.files.len(),
        byte_size::format(inspection.total_bytes)
    );
    Ok(())
}

fn inspection(source: String, resolved: String, files: Vec<Entry>) -> Inspection {
    Inspection {
        total_bytes: files.iter().map(|f| f.size).sum(),
        source,
        resolved,
        files,
    }
}
