//! A preheat's source turned into the tasks to warm, with the same task
//! ids a later pull computes (so a preheat hits):
//!
//! - `image`: a registry manifest URL (`scheme://registry/v2/<repo>/manifests/<ref>`,
//!   what Harbor sends); an index is resolved by platform; the config and
//!   every layer are tasks keyed by their digest, as the daemon's registry
//!   mirror keys them.
//! - `oci://...`: resolved exactly as `weightcast get oci://` resolves it
//!   (the same registry client, ModelPack rules and layer filter).
//! - `hf://...`: resolved as `weightcast get hf://` does: each LFS file is a
//!   task keyed by its sha256 whose origin is the Hub's signed CDN URL.
//!   Git-stored small files never go through the swarm, so they are not
//!   warmed.
//! - `file`: URLs, keyed by the normalized URL without signing parameters
//!   (`filtered_query_params`, else the default list).

use std::collections::BTreeMap;
use weightcast_modelpack::oci_artifact::{LayerFilter, Manifest};
use weightcast_modelpack::oci_ref::{OciRef, OciReference};
use weightcast_modelpack::HfUri;
use weightcast_origin::{Credentials, HubClient, RegistryClient};
use weightcast_proto::pb;
use weightcast_types::task_key::{parse_filtered, TaskKey};
use weightcast_types::TaskId;

/// What to preheat, from the API's `args` or `weightcast preheat`.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// `image` or `file` (Dragonfly's types); an `oci://` or `hf://` URL
    /// is ours whatever the type says.
    pub kind: String,
    pub urls: Vec<String>,
    /// Sent to the registry or origin; `Authorization` used as given.
    pub headers: BTreeMap<String, String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// `os/arch` in an image index.
    pub platform: Option<String>,
    pub filtered_query_params: String,
    /// The Hub for `hf://`, and its token.
    pub hf_endpoint: String,
    pub hf_token: Option<String>,
    /// `oci://` over plain HTTP (lab registries).
    pub plain_http: bool,
}

/// One task to warm, with a name for people.
#[derive(Debug, Clone, PartialEq)]
pub struct Blob {
    pub task: pb::WarmTask,
    /// The URL people know it by (a blob URL, a repo path).
    pub name: String,
    /// Its size when the manifest or Hub says it; 0 else.
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{0}")]
    Bad(String),
    #[error(transparent)]
    Registry(#[from] weightcast_origin::RegistryError),
    #[error(transparent)]
    Hub(#[from] weightcast_origin::HubError),
}

fn header<'a>(h: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn digest_bytes(digest: &str) -> Vec<u8> {
    let mut out = [0u8; 32];
    match digest
        .strip_prefix("sha256:")
        .map(|h| hex::decode_to_slice(h, &mut out))
    {
        Some(Ok(())) => out.to_vec(),
        _ => Vec::new(),
    }
}

fn sha_task(digest: &str) -> Option<TaskId> {
    let b = digest_bytes(digest);
    let d: [u8; 32] = b.as_slice().try_into().ok()?;
    Some(TaskId::from_sha256(&d))
}

/// `scheme://registry/v2/<repo>/manifests/<ref>` → (plain http, reference).
pub fn parse_manifest_url(url: &str) -> Result<(bool, OciRef), ResolveError> {
    let bad = || {
        ResolveError::Bad(format!(
            "invalid image url {url:?}: expected <scheme>://<registry>/v2/<repository>/manifests/<tag or digest>"
        ))
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let plain_http = match scheme {
        "http" => true,
        "https" => false,
        _ => return Err(bad()),
    };
    let (registry, path) = rest.split_once("/v2/").ok_or_else(bad)?;
    let (repo, reference) = path.rsplit_once("/manifests/").ok_or_else(bad)?;
    let sep = if reference.starts_with("sha256:") {
        "@"
    } else {
        ":"
    };
    let r = OciRef::parse(&format!("oci://{registry}/{repo}{sep}{reference}"))
        .map_err(|e| ResolveError::Bad(e.to_string()))?;
    Ok((plain_http, r))
}

/// The platform of this machine as an image index names it.
fn local_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    format!("linux/{arch}")
}

impl Source {
    fn registry_credentials(&self) -> Credentials {
        if let Some(a) = header(&self.headers, "authorization") {
            return Credentials::Header(a.to_string());
        }
        match (&self.username, &self.password) {
            (Some(u), Some(p)) if !u.is_empty() => Credentials::Basic {
                user: u.clone(),
                password: p.clone(),
            },
            _ => Credentials::Anonymous,
        }
    }

    /// Resolves every URL of the source.
    pub async fn resolve(&self) -> Result<Vec<Blob>, ResolveError> {
        if self.urls.is_empty() {
            return Err(ResolveError::Bad("the preheat names no url".into()));
        }
        let mut out = Vec::new();
        for url in &self.urls {
            let blobs = if HfUri::is_hf(url) {
                self.hf(url).await?
            } else if OciRef::is_oci(url) {
                self.oci(url).await?
            } else if self.kind == "image" {
                self.image(url).await?
            } else {
                vec![self.file(url)?]
            };
            out.extend(blobs);
        }
        Ok(out)
    }

    fn file(&self, url: &str) -> Result<Blob, ResolveError> {
        let filtered = parse_filtered(&self.filtered_query_params);
        let id = TaskKey::Url(url)
            .task_id_filtering(&filtered)
            .map_err(|e| ResolveError::Bad(e.to_string()))?;
        Ok(Blob {
            task: pb::WarmTask {
                task_id: id.to_hex(),
                url: url.to_string(),
                digest: Vec::new(),
                authorization: header(&self.headers, "authorization")
                    .unwrap_or_default()
                    .to_string(),
            },
            name: url.to_string(),
            size: 0,
        })
    }

    /// A registry image: the manifest (an index resolved by platform), then
    /// its config and every layer.
    async fn image(&self, url: &str) -> Result<Vec<Blob>, ResolveError> {
        let (plain_http, r) = parse_manifest_url(url)?;
        let creds = self.registry_credentials();
        let client = RegistryClient::new(plain_http);
        let (bytes, _) = client.manifest_raw(&r, &creds).await?;
        let art = |e: weightcast_modelpack::oci_artifact::ArtifactError| {
            ResolveError::Bad(format!("{url}: {e}"))
        };
        let mut manifest = Manifest::parse(&bytes).map_err(art)?;
        let mut image = r.clone();
        if manifest.is_index() {
            let picked = match &self.platform {
                Some(p) => manifest.pick(Some(p)),
                None => manifest
                    .pick(Some(&local_platform()))
                    .or_else(|_| manifest.pick(None)),
            }
            .map_err(art)?
            .digest
            .clone();
            image.reference = OciReference::Digest(picked);
            let (bytes, _) = client.manifest_raw(&image, &creds).await?;
            manifest = Manifest::parse(&bytes).map_err(art)?;
        }
        let authorization = client.authorization(&image, &creds).unwrap_or_default();
        let descriptors = manifest.config.iter().chain(manifest.layers.iter());
        let mut out = Vec::new();
        for d in descriptors {
            let Some(id) = sha_task(&d.digest) else {
                return Err(ResolveError::Bad(format!(
                    "{url}: blob {:?} is not a sha256 digest",
                    d.digest
                )));
            };
            let blob_url = client.blob_url(&image, &d.digest);
            out.push(Blob {
                task: pb::WarmTask {
                    task_id: id.to_hex(),
                    url: blob_url.clone(),
                    digest: digest_bytes(&d.digest),
                    authorization: authorization.clone(),
                },
                name: blob_url,
                size: d.size,
            });
        }
        Ok(out)
    }

    /// `oci://`, as `get` resolves it (its layers; plus the config blob,
    /// which registry clients pulling through the mirror fetch too).
    async fn oci(&self, url: &str) -> Result<Vec<Blob>, ResolveError> {
        let r = OciRef::parse(url).map_err(|e| ResolveError::Bad(e.to_string()))?;
        let creds = match self.registry_credentials() {
            Credentials::Anonymous => Credentials::from_docker_config(&r.registry)
                .map_err(|e| ResolveError::Bad(e.to_string()))?,
            c => c,
        };
        let client = RegistryClient::new(self.plain_http);
        let resolved = client
            .resolve(
                &r,
                &creds,
                self.platform.as_deref(),
                &LayerFilter::default(),
            )
            .await?;
        let authorization = resolved
            .blob_auth()
            .map(|a| a.value().to_string())
            .unwrap_or_default();
        let (bytes, _) = client.manifest_raw(&resolved.reference, &creds).await?;
        let config = Manifest::parse(&bytes).ok().and_then(|m| m.config);
        let mut out = Vec::new();
        let descriptors = config
            .into_iter()
            .map(|c| (c.digest, c.size))
            .chain(resolved.layers.iter().map(|l| (l.digest.clone(), l.size)));
        for (digest, size) in descriptors {
            let Some(id) = sha_task(&digest) else {
                continue;
            };
            let blob_url = resolved.blob_url(&digest);
            out.push(Blob {
                task: pb::WarmTask {
                    task_id: id.to_hex(),
                    url: blob_url.clone(),
                    digest: digest_bytes(&digest),
                    authorization: authorization.clone(),
                },
                name: blob_url,
                size,
            });
        }
        Ok(out)
    }

    /// `hf://`, as `get` resolves it: every LFS file at the resolved commit.
    async fn hf(&self, url: &str) -> Result<Vec<Blob>, ResolveError> {
        let uri = HfUri::parse(url).map_err(|e| ResolveError::Bad(e.to_string()))?;
        let hub = HubClient::new(&self.hf_endpoint)?;
        let auth = self
            .hf_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(|t| format!("Bearer {t}"));
        let resolved = hub.resolve(&uri, auth.as_deref()).await?;
        let mut out = Vec::new();
        for file in &resolved.files {
            let Some(sha) = file.blob.sha256() else {
                continue; // git-stored: never a swarm task
            };
            let meta = hub
                .file_meta(
                    &resolved.repo,
                    &resolved.commit,
                    file.path.as_str(),
                    auth.as_deref(),
                )
                .await?;
            let mut digest = [0u8; 32];
            if hex::decode_to_slice(sha, &mut digest).is_err() {
                continue;
            }
            let hub_url = hub.url(
                &resolved
                    .repo
                    .resolve_path(&resolved.commit, file.path.as_str()),
            );
            // The CDN's signed URL needs no token; the Hub itself does.
            let (origin, authorization) = match meta.location {
                Some(cdn) => (cdn, String::new()),
                None => (hub_url.clone(), auth.clone().unwrap_or_default()),
            };
            out.push(Blob {
                task: pb::WarmTask {
                    task_id: TaskId::from_sha256(&digest).to_hex(),
                    url: origin,
                    digest: digest.to_vec(),
                    authorization,
                },
                name: format!("{}/{}", resolved.repo.id, file.path.as_str()),
                size: file.size,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harbor_manifest_urls_parse_into_references() {
        let (plain, r) =
            parse_manifest_url("http://127.0.0.1:5000/v2/library/models/fake/manifests/v1")
                .unwrap();
        assert!(plain);
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "library/models/fake");
        assert_eq!(r.reference, OciReference::Tag("v1".into()));
        let d = format!("sha256:{}", "a".repeat(64));
        let (plain, r) =
            parse_manifest_url(&format!("https://harbor.example/v2/p/r/manifests/{d}")).unwrap();
        assert!(!plain);
        assert_eq!(r.reference, OciReference::Digest(d));
        assert!(parse_manifest_url("https://harbor.example/p/r:v1").is_err());
    }

    #[test]
    fn a_file_preheat_keys_its_task_as_a_get_would() {
        let s = Source {
            kind: "file".into(),
            ..Default::default()
        };
        let b = s
            .file("https://bucket.s3.amazonaws.com/m.bin?X-Amz-Signature=1&X-Amz-Date=2")
            .unwrap();
        assert_eq!(
            b.task.task_id,
            TaskId::from_url("https://bucket.s3.amazonaws.com/m.bin").to_hex()
        );
        assert!(
            b.task.url.contains("X-Amz-Signature=1"),
            "the fetch URL keeps its signature"
        );
    }
}
