//! A client of OCI registries (through `oci-client`): manifests, the model
//! config, credentials, and the URL and `Authorization` of each blob, so
//! that blobs themselves go through the swarm like any other task.
//!
//! Credentials, in order: `--registry-user`/`--registry-password`, then
//! the user's `~/.docker/config.json` (or `$DOCKER_CONFIG/config.json`),
//! else anonymous. A registry with token auth gets the token exchange from
//! `oci-client`; the blob fetches then carry that short-lived bearer token.

use crate::origin::OriginAuth;
use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use std::path::PathBuf;
use weightcast_modelpack::oci_artifact::{
    self, ArtifactError, Layer, LayerFilter, Manifest, ACCEPT,
};
use weightcast_modelpack::oci_ref::OciRef;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{what}: {message}")]
    Registry { what: String, message: String },
    #[error("{what}: the registry refused the credentials ({message}): check --registry-user/--registry-password or ~/.docker/config.json")]
    Unauthorized { what: String, message: String },
    #[error("{what}: not found in the registry ({message})")]
    NotFound { what: String, message: String },
    #[error("{0}: {1}")]
    Artifact(String, ArtifactError),
    #[error("cannot read {}: {message}", path.display())]
    DockerConfig { path: PathBuf, message: String },
}

/// Who to be towards a registry.
#[derive(Clone, Default)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic {
        user: String,
        password: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => write!(f, "Anonymous"),
            Credentials::Basic { user, .. } => write!(f, "Basic({user}, <redacted>)"),
        }
    }
}

impl Credentials {
    fn registry_auth(&self) -> RegistryAuth {
        match self {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic { user, password } => {
                RegistryAuth::Basic(user.clone(), password.clone())
            }
        }
    }

    pub fn basic_header(&self) -> Option<String> {
        match self {
            Credentials::Anonymous => None,
            Credentials::Basic { user, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )),
        }
    }

    /// The credentials for `registry` in the docker `config.json`
    /// ([`docker_config_logins`]); anonymous when there is none.
    pub fn from_docker_config(registry: &str) -> Result<Self, RegistryError> {
        Ok(docker_config_logins()?
            .into_iter()
            .find(|(host, _)| host == registry)
            .map(|(_, c)| c)
            .unwrap_or_default())
    }
}

/// Every login in the docker `config.json` (`$DOCKER_CONFIG/config.json`,
/// else `~/.docker/config.json`), by registry `host[:port]`; none when the
/// file does not exist.
pub fn docker_config_logins() -> Result<Vec<(String, Credentials)>, RegistryError> {
    let path = match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => PathBuf::from(d).join("config.json"),
        None => match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".docker/config.json"),
            None => return Ok(Vec::new()),
        },
    };
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(Vec::new());
    };
    let bad = |message: String| RegistryError::DockerConfig {
        path: path.clone(),
        message,
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    for (key, entry) in v
        .get("auths")
        .and_then(|a| a.as_object())
        .into_iter()
        .flatten()
    {
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) else {
            continue;
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth)
            .map_err(|e| bad(format!("the auth of {host} is not base64: {e}")))?;
        let text = String::from_utf8(decoded)
            .map_err(|_| bad(format!("the auth of {host} is not UTF-8")))?;
        let (user, password) = text
            .split_once(':')
            .ok_or_else(|| bad(format!("the auth of {host} is not user:password")))?;
        out.push((
            host,
            Credentials::Basic {
                user: user.into(),
                password: password.into(),
            },
        ));
    }
    Ok(out)
}

/// An artifact resolved to what `get` fetches.
#[derive(Debug, Clone)]
pub struct ResolvedArtifact {
    pub reference: OciRef,
    /// The image manifest's digest (after picking from an index).
    pub manifest_digest: String,
    pub artifact_type: Option<String>,
    pub is_model: bool,
    pub config: Option<serde_json::Value>,
    pub layers: Vec<Layer>,
    /// Scheme and host the blobs are fetched from.
    base: String,
    auth: Option<String>,
}

impl ResolvedArtifact {
    pub fn blob_url(&self, digest: &str) -> String {
        format!("{}{}", self.base, self.reference.blob_path(digest))
    }

    /// The `Authorization` for blob GETs, bound to the registry's origin.
    pub fn blob_auth(&self) -> Option<OriginAuth> {
        let url = self.blob_url("x");
        self.auth
            .as_ref()
            .and_then(|a| OriginAuth::new(&url, a.clone()).ok())
    }
}

pub struct RegistryClient {
    client: Client,
    plain_http: bool,
}

fn classify(what: &str, e: oci_client::errors::OciDistributionError) -> RegistryError {
    use oci_client::errors::OciDistributionError as E;
    let message = crate::origin::error_chain(&e);
    let what = what.to_string();
    match &e {
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => {
            RegistryError::Unauthorized { what, message }
        }
        E::ImageManifestNotFoundError(_) => RegistryError::NotFound { what, message },
        E::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|x| {
                matches!(
                    x.code,
                    oci_client::errors::OciErrorCode::Unauthorized
                        | oci_client::errors::OciErrorCode::Denied
                )
            }) =>
        {
            RegistryError::Unauthorized { what, message }
        }
        E::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|x| {
                matches!(
                    x.code,
                    oci_client::errors::OciErrorCode::ManifestUnknown
                        | oci_client::errors::OciErrorCode::NameUnknown
                        | oci_client::errors::OciErrorCode::BlobUnknown
                )
            }) =>
        {
            RegistryError::NotFound { what, message }
        }
        E::ServerError {
            code: 401 | 403, ..
        } => RegistryError::Unauthorized { what, message },
        E::ServerError { code: 404, .. } => RegistryError::NotFound { what, message },
        _ => RegistryError::Registry { what, message },
    }
}

impl RegistryClient {
    /// `plain_http`: talk HTTP, for loopback and lab registries.
    pub fn new(plain_http: bool) -> Self {
        let config = oci_client::client::ClientConfig {
            protocol: if plain_http {
                oci_client::client::ClientProtocol::Http
            } else {
                oci_client::client::ClientProtocol::Https
            },
            platform_resolver: None,
            ..Default::default()
        };
        Self {
            client: Client::new(config),
            plain_http,
        }
    }

    fn reference(r: &OciRef) -> Result<Reference, RegistryError> {
        r.whole()
            .parse::<Reference>()
            .map_err(|e| RegistryError::Registry {
                what: r.to_string(),
                message: e.to_string(),
            })
    }

    /// The raw manifest (or index) `reference` names, with its digest,
    /// checked against the bytes by `oci-client`.
    pub async fn manifest_raw(
        &self,
        r: &OciRef,
        creds: &Credentials,
    ) -> Result<(Vec<u8>, String), RegistryError> {
        let reference = Self::reference(r)?;
        self.client
            .pull_manifest_raw(&reference, &creds.registry_auth(), &ACCEPT)
            .await
            .map_err(|e| classify(&r.to_string(), e))
    }

    /// The `Authorization` that blob GETs of `r` need: a pull token where
    /// the registry hands out tokens, else Basic when there are credentials.
    pub async fn blob_authorization(
        &self,
        r: &OciRef,
        creds: &Credentials,
    ) -> Result<Option<String>, RegistryError> {
        let reference = Self::reference(r)?;
        let token = self
            .client
            .auth(&reference, &creds.registry_auth(), RegistryOperation::Pull)
            .await
            .map_err(|e| classify(&r.to_string(), e))?;
        Ok(token
            .map(|t| format!("Bearer {t}"))
            .or_else(|| creds.basic_header()))
    }

    /// Resolves `r`: the manifest (picking `platform` from an index), its
    /// config (checked when it is a ModelPack config), and the layers that
    /// `filter` keeps.
    pub async fn resolve(
        &self,
        r: &OciRef,
        creds: &Credentials,
        platform: Option<&str>,
        filter: &LayerFilter,
    ) -> Result<ResolvedArtifact, RegistryError> {
        let what = r.to_string();
        let art = |e| RegistryError::Artifact(what.clone(), e);
        let (bytes, mut digest) = self.manifest_raw(r, creds).await?;
        let mut manifest = Manifest::parse(&bytes).map_err(art)?;
        let mut image_ref = r.clone();
        if manifest.is_index() {
            let picked = manifest.pick(platform).map_err(art)?.digest.clone();
            image_ref.reference = weightcast_modelpack::oci_ref::OciReference::Digest(picked);
            let (bytes, d) = self.manifest_raw(&image_ref, creds).await?;
            manifest = Manifest::parse(&bytes).map_err(art)?;
            digest = d;
        }
        let layers = oci_artifact::layers(&manifest, filter).map_err(art)?;
        let reference = Self::reference(&image_ref)?;
        let config = match &manifest.config {
            Some(c) if manifest.is_model() => {
                let mut buf = Vec::new();
                let desc = oci_client::manifest::OciDescriptor {
                    media_type: c.media_type.clone(),
                    digest: c.digest.clone(),
                    size: c.size as i64,
                    ..Default::default()
                };
                self.client
                    .pull_blob(&reference, &desc, &mut buf)
                    .await
                    .map_err(|e| classify(&format!("{what} config"), e))?;
                Some(oci_artifact::validate_model_config(&c.digest, &buf).map_err(art)?)
            }
            _ => None,
        };
        let auth = self.blob_authorization(&image_ref, creds).await?;
        let scheme = if self.plain_http { "http" } else { "https" };
        Ok(ResolvedArtifact {
            base: format!("{scheme}://{}", r.registry),
            reference: image_ref,
            manifest_digest: digest,
            artifact_type: manifest.artifact_type.clone(),
            is_model: manifest.is_model(),
            config,
            layers,
            auth,
        })
    }
}
