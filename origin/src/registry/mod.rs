//! OCI registries: manifests (checked against their digest), the model
//! config blob, blob sizes, tags, and the URL and `Authorization` of each
//! blob, so that blobs themselves go through the swarm like any other task.
//!
//! Every request goes through one helper that sends the held pull token
//! (or the login), answers a Bearer challenge through the crate's one
//! token flow ([`RegistryTokens`]) and turns refusals into
//! [`RegistryError`]s with the registry's own words. The platform pick of
//! an image index and the layer rules stay in
//! `weightcast_modelpack::oci_artifact`: this module only moves bytes.
//!
//! - [`credentials`]: logins (flags, docker `config.json`).
//! - [`naming`]: Docker Hub's API host and `library/` names.
//! - [`manifest`]: the digest check of manifest bytes.
//! - [`RegistryBackend`]: the registry as an `oci://` [`Backend`].

pub mod credentials;
pub mod manifest;
pub mod naming;

use crate::auth::{bearer_challenge, OriginAuth, RegistryTokens};
use crate::backend::{Backend, Entry, RangeSink, Stat, Target};
use crate::error::{ErrorKind, OriginError};
use crate::http::{status_error, stream_range};
use crate::origin_key::OriginKey;
use credentials::{Credentials, DockerConfigError};
use naming::{api_host, api_repository};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, LINK, RANGE};
use reqwest::{Method, StatusCode, Url};
use std::ops::Range;
use weightcast_modelpack::hf_api::bare_etag;
use weightcast_modelpack::oci_artifact::{
    self, ArtifactError, Layer, LayerFilter, Manifest, ACCEPT as MANIFEST_TYPES,
};
use weightcast_modelpack::oci_ref::{OciRef, OciReference};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{what}: the registry refused the credentials ({detail}): check --registry-user/--registry-password or ~/.docker/config.json")]
    Unauthorized { what: String, detail: String },
    #[error("{what}: not found in the registry ({detail})")]
    NotFound { what: String, detail: String },
    #[error("{what}: {error}")]
    Origin { what: String, error: OriginError },
    #[error("{0}: {1}")]
    Artifact(String, ArtifactError),
    #[error(transparent)]
    DockerConfig(#[from] DockerConfigError),
}

impl RegistryError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            RegistryError::Unauthorized { .. } => ErrorKind::Unauthorized,
            RegistryError::NotFound { .. } => ErrorKind::NotFound,
            RegistryError::Origin { error, .. } => error.kind(),
            RegistryError::Artifact(..) => ErrorKind::BadAnswer,
            RegistryError::DockerConfig(_) => ErrorKind::Config,
        }
    }

    fn origin(what: &str, error: OriginError) -> Self {
        match error.kind() {
            // A realm that refused the login.
            ErrorKind::Unauthorized => RegistryError::Unauthorized {
                what: what.to_string(),
                detail: error.to_string(),
            },
            _ => RegistryError::Origin {
                what: what.to_string(),
                error,
            },
        }
    }
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
    /// Scheme and API host the blobs are fetched from.
    base: String,
    /// The repository's name in the registry's API.
    repository: String,
    auth: Option<String>,
}

impl ResolvedArtifact {
    pub fn blob_url(&self, digest: &str) -> String {
        format!("{}/v2/{}/blobs/{digest}", self.base, self.repository)
    }

    /// The `Authorization` for blob GETs, bound to the registry's origin.
    pub fn blob_auth(&self) -> Option<OriginAuth> {
        let url = self.blob_url("x");
        self.auth
            .as_ref()
            .and_then(|a| OriginAuth::new(&url, a.clone()).ok())
    }
}

/// One request to a registry.
struct Ask<'a> {
    what: &'a str,
    method: Method,
    url: Url,
    accept: Option<String>,
    range: Option<String>,
    /// An `Authorization` value: a login (`Basic`), which a token realm
    /// also gets, or a token.
    login: Option<&'a str>,
}

pub struct RegistryClient {
    http: reqwest::Client,
    tokens: RegistryTokens,
    plain_http: bool,
}

/// Error bodies are read this far for the registry's message.
const ERROR_BODY_LIMIT: u64 = 64 << 10;

impl RegistryClient {
    /// `plain_http`: talk HTTP, for loopback and lab registries.
    pub fn new(plain_http: bool) -> Self {
        let http = crate::http::client(10);
        Self {
            tokens: RegistryTokens::new(http.clone()),
            http,
            plain_http,
        }
    }

    /// `scheme://api-host` of `r`'s registry.
    pub fn base(&self, r: &OciRef) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{}", api_host(&r.registry))
    }

    fn url(&self, r: &OciRef, tail: &str) -> Result<Url, RegistryError> {
        let url = format!("{}/v2/{}/{tail}", self.base(r), api_repository(r));
        Url::parse(&url).map_err(|_| {
            RegistryError::origin(
                &r.to_string(),
                OriginError::BadUrl {
                    url,
                    why: "not a registry URL".into(),
                },
            )
        })
    }

    pub fn blob_url(&self, r: &OciRef, digest: &str) -> String {
        format!("{}/v2/{}/blobs/{digest}", self.base(r), api_repository(r))
    }

    /// The `Authorization` blob GETs of `r` need, after a request to its
    /// repository: the pull token held for it where the registry hands
    /// out tokens, else the login, else none.
    pub fn authorization(&self, r: &OciRef, creds: &Credentials) -> Option<String> {
        self.url(r, "blobs/x")
            .ok()
            .and_then(|u| self.tokens.held(&u))
            .or_else(|| creds.basic_header())
    }

    /// Sends `ask`, answering a Bearer challenge once through the token
    /// flow; a refusal comes back as the registry's own words.
    async fn send(&self, ask: &Ask<'_>) -> Result<reqwest::Response, RegistryError> {
        let mut exchanged = false;
        loop {
            let mut req = self.http.request(ask.method.clone(), ask.url.clone());
            for (name, value) in [(ACCEPT, &ask.accept), (RANGE, &ask.range)] {
                if let Some(v) = value {
                    req = req.header(name, v);
                }
            }
            if let Some(a) = self.tokens.held(&ask.url).as_deref().or(ask.login) {
                req = req.header(AUTHORIZATION, a);
            }
            let resp = req.send().await.map_err(|e| {
                RegistryError::origin(ask.what, OriginError::transport(ask.url.as_str(), e))
            })?;
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            if status == StatusCode::UNAUTHORIZED && !exchanged {
                if let Some(challenge) = bearer_challenge(resp.headers()) {
                    exchanged = true;
                    self.tokens
                        .exchange(&ask.url, &challenge, ask.login)
                        .await
                        .map_err(|e| RegistryError::origin(ask.what, e))?;
                    continue;
                }
            }
            return Err(self.refusal(ask, resp).await);
        }
    }

    /// The error for a non-success answer, with the registry's messages
    /// (the distribution spec's `{"errors": [{"code", "message"}]}`).
    async fn refusal(&self, ask: &Ask<'_>, resp: reqwest::Response) -> RegistryError {
        let status = resp.status();
        let error = status_error(ask.url.as_str(), &resp);
        let body = read_bounded(ask.url.as_str(), resp, ERROR_BODY_LIMIT, "error answer")
            .await
            .unwrap_or_default();
        let errors: Vec<(String, String)> = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("errors").and_then(|e| e.as_array()).cloned())
            .unwrap_or_default()
            .iter()
            .map(|e| {
                let text = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
                (text("code"), text("message"))
            })
            .collect();
        let has = |codes: &[&str]| errors.iter().any(|(c, _)| codes.contains(&c.as_str()));
        let detail = match errors.iter().find(|(_, m)| !m.is_empty()) {
            Some((_, m)) => format!("{status}: {m}"),
            None => status.to_string(),
        };
        let what = ask.what.to_string();
        if matches!(status.as_u16(), 401 | 403) || has(&["UNAUTHORIZED", "DENIED"]) {
            RegistryError::Unauthorized { what, detail }
        } else if status == StatusCode::NOT_FOUND
            || has(&["MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"])
        {
            RegistryError::NotFound { what, detail }
        } else {
            RegistryError::Origin { what, error }
        }
    }

    /// The raw manifest (or index) `r` names, with its digest, checked
    /// against the bytes ([`manifest::verify`]).
    pub async fn manifest_raw(
        &self,
        r: &OciRef,
        creds: &Credentials,
    ) -> Result<(Vec<u8>, String), RegistryError> {
        let login = creds.basic_header();
        self.manifest_with(r, login.as_deref()).await
    }

    async fn manifest_with(
        &self,
        r: &OciRef,
        login: Option<&str>,
    ) -> Result<(Vec<u8>, String), RegistryError> {
        let what = r.to_string();
        let ask = Ask {
            what: &what,
            method: Method::GET,
            url: self.url(r, &format!("manifests/{}", r.reference.as_str()))?,
            accept: Some(MANIFEST_TYPES.join(", ")),
            range: None,
            login,
        };
        let resp = self.send(&ask).await?;
        let header = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let url = ask.url.as_str();
        let bytes = read_bounded(url, resp, manifest::MAX_MANIFEST_BYTES, "manifest")
            .await
            .map_err(|e| RegistryError::origin(&what, e))?;
        let digest = manifest::verify(url, &bytes, &r.reference, header.as_deref())
            .map_err(|e| RegistryError::origin(&what, e))?;
        Ok((bytes, digest))
    }

    /// A blob that must be small (a config), checked against its digest.
    async fn small_blob(
        &self,
        r: &OciRef,
        digest: &str,
        size: u64,
        login: Option<&str>,
    ) -> Result<Vec<u8>, RegistryError> {
        let what = format!("{r} blob {digest}");
        let ask = Ask {
            what: &what,
            method: Method::GET,
            url: self.url(r, &format!("blobs/{digest}"))?,
            accept: None,
            range: None,
            login,
        };
        let url = ask.url.as_str().to_string();
        let limit = size.min(manifest::MAX_MANIFEST_BYTES);
        let resp = self.send(&ask).await?;
        let bytes = read_bounded(&url, resp, limit, "config blob")
            .await
            .map_err(|e| RegistryError::origin(&what, e))?;
        let got = manifest::sha256_digest(&bytes);
        if got != digest {
            return Err(RegistryError::origin(
                &what,
                OriginError::DigestMismatch {
                    url,
                    expected: digest.to_string(),
                    got,
                },
            ));
        }
        Ok(bytes)
    }

    /// `HEAD` of a manifest or blob URL: its size and digest.
    async fn head(&self, ask: Ask<'_>) -> Result<Stat, RegistryError> {
        let resp = self.send(&ask).await?;
        let h = resp.headers();
        // Not `content_length()`: for a HEAD that is the (empty) body's size.
        let size = h
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| {
                RegistryError::origin(
                    ask.what,
                    OriginError::UnknownLength {
                        url: ask.url.to_string(),
                    },
                )
            })?;
        let text = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Ok(Stat {
            content_length: size,
            etag: text("etag").map(|e| bare_etag(&e).to_string()),
            digest: text("docker-content-digest"),
            ..Stat::default()
        })
    }

    /// The size of blob `digest` of `r`'s repository (and its digest, as
    /// the registry states it).
    pub async fn blob_stat(
        &self,
        r: &OciRef,
        digest: &str,
        creds: &Credentials,
    ) -> Result<Stat, RegistryError> {
        let login = creds.basic_header();
        self.blob_stat_with(r, digest, login.as_deref()).await
    }

    async fn blob_stat_with(
        &self,
        r: &OciRef,
        digest: &str,
        login: Option<&str>,
    ) -> Result<Stat, RegistryError> {
        let what = format!("{r} blob {digest}");
        self.head(Ask {
            what: &what,
            method: Method::HEAD,
            url: self.url(r, &format!("blobs/{digest}"))?,
            accept: None,
            range: None,
            login,
        })
        .await
    }

    /// The tags of `r`'s repository, across pages.
    pub async fn tags(
        &self,
        r: &OciRef,
        login: Option<&str>,
    ) -> Result<Vec<String>, RegistryError> {
        let what = format!("the tags of {r}");
        let mut url = self.url(r, "tags/list")?;
        let mut all = Vec::new();
        for _ in 0..1000 {
            let ask = Ask {
                what: &what,
                method: Method::GET,
                url: url.clone(),
                accept: Some("application/json".into()),
                range: None,
                login,
            };
            let resp = self.send(&ask).await?;
            let next = resp
                .headers()
                .get(LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(weightcast_modelpack::hf_api::next_page);
            let body = read_bounded(url.as_str(), resp, 16 << 20, "tag list")
                .await
                .map_err(|e| RegistryError::origin(&what, e))?;
            #[derive(serde::Deserialize)]
            struct TagList {
                #[serde(default)]
                tags: Option<Vec<String>>,
            }
            let page: TagList = serde_json::from_slice(&body).map_err(|error| {
                RegistryError::origin(
                    &what,
                    OriginError::BadJson {
                        url: url.to_string(),
                        error,
                    },
                )
            })?;
            all.extend(page.tags.unwrap_or_default());
            match next.and_then(|n| url.join(&n).ok()) {
                // The login must not follow a link to another host.
                Some(n) if OriginKey::of(&n) == OriginKey::of(&url) => url = n,
                Some(n) => {
                    return Err(RegistryError::origin(
                        &what,
                        OriginError::bad_answer(
                            url.as_str(),
                            format!("the next page {n} is on another host"),
                        ),
                    ))
                }
                None => return Ok(all),
            }
        }
        Err(RegistryError::origin(
            &what,
            OriginError::bad_answer(url.as_str(), "more than 1000 pages of tags"),
        ))
    }

    /// Reads `range` of blob `digest` into `sink`.
    async fn read_blob(
        &self,
        r: &OciRef,
        digest: &str,
        range: Range<u64>,
        sink: &mut RangeSink<'_>,
        login: Option<&str>,
    ) -> Result<(), RegistryError> {
        let what = format!("{r} blob {digest}");
        let ask = Ask {
            what: &what,
            method: Method::GET,
            url: self.url(r, &format!("blobs/{digest}"))?,
            accept: None,
            range: Some(format!("bytes={}-{}", range.start, range.end - 1)),
            login,
        };
        let resp = self.send(&ask).await?;
        stream_range(ask.url.as_str(), resp, range, sink)
            .await
            .map_err(|e| RegistryError::origin(&what, e))
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
        let login = creds.basic_header();
        let (bytes, mut digest) = self.manifest_with(r, login.as_deref()).await?;
        let mut manifest = Manifest::parse(&bytes).map_err(art)?;
        let mut image_ref = r.clone();
        if manifest.is_index() {
            let picked = manifest.pick(platform).map_err(art)?.digest.clone();
            image_ref.reference = OciReference::Digest(picked);
            let (bytes, d) = self.manifest_with(&image_ref, login.as_deref()).await?;
            manifest = Manifest::parse(&bytes).map_err(art)?;
            digest = d;
        }
        let layers = oci_artifact::layers(&manifest, filter).map_err(art)?;
        let config = match &manifest.config {
            Some(c) if manifest.is_model() => {
                let bytes = self
                    .small_blob(&image_ref, &c.digest, c.size, login.as_deref())
                    .await?;
                Some(oci_artifact::validate_model_config(&c.digest, &bytes).map_err(art)?)
            }
            _ => None,
        };
        Ok(ResolvedArtifact {
            base: self.base(r),
            repository: api_repository(r),
            auth: self.authorization(&image_ref, creds),
            reference: image_ref,
            manifest_digest: digest,
            artifact_type: manifest.artifact_type.clone(),
            is_model: manifest.is_model(),
            config,
            layers,
        })
    }
}

/// The body of `resp`, refused past `limit` bytes (a registry that sends
/// a gigabyte for a manifest does not get it into memory).
async fn read_bounded(
    url: &str,
    mut resp: reqwest::Response,
    limit: u64,
    what: &'static str,
) -> Result<Vec<u8>, OriginError> {
    let too_large = || OriginError::TooLarge {
        url: url.to_string(),
        what,
        limit,
    };
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| OriginError::transport(url, e))?
    {
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A registry as an `oci://` backend: `oci://registry/repo@sha256:..`
/// names a blob (stat: its size; read: its bytes), and
/// `oci://registry/repo[:tag]` a repository (stat: the tag's manifest;
/// list: its tags).
pub struct RegistryBackend {
    client: RegistryClient,
}

impl RegistryBackend {
    pub fn new(client: RegistryClient) -> Self {
        Self { client }
    }

    fn reference(url: &Url) -> Result<OciRef, OriginError> {
        OciRef::parse(url.as_str()).map_err(|e| OriginError::BadUrl {
            url: url.to_string(),
            why: e.why.to_string(),
        })
    }
}

fn wrap(e: RegistryError) -> OriginError {
    OriginError::Registry(Box::new(e))
}

#[async_trait::async_trait]
impl Backend for RegistryBackend {
    fn name(&self) -> &'static str {
        "registry"
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["oci"]
    }

    fn check(&self, url: &Url) -> Result<(), OriginError> {
        Self::reference(url).map(|_| ())
    }

    fn origin(&self, url: &Url) -> OriginKey {
        let base = Self::reference(url).map(|r| self.client.base(&r));
        match base.as_deref().map(Url::parse) {
            Ok(Ok(u)) => OriginKey::of(&u),
            _ => OriginKey::of(url),
        }
    }

    async fn stat(&self, target: Target<'_>) -> Result<Stat, OriginError> {
        let r = Self::reference(target.url)?;
        match &r.reference {
            OciReference::Digest(d) => self
                .client
                .blob_stat_with(&r, d, target.authorization)
                .await
                .map_err(wrap),
            OciReference::Tag(t) => {
                let what = r.to_string();
                let url = self
                    .client
                    .url(&r, &format!("manifests/{t}"))
                    .map_err(wrap)?;
                self.client
                    .head(Ask {
                        what: &what,
                        method: Method::HEAD,
                        url,
                        accept: Some(MANIFEST_TYPES.join(", ")),
                        range: None,
                        login: target.authorization,
                    })
                    .await
                    .map_err(wrap)
            }
        }
    }

    async fn read_range(
        &self,
        target: Target<'_>,
        range: Range<u64>,
        sink: &mut RangeSink<'_>,
    ) -> Result<(), OriginError> {
        let r = Self::reference(target.url)?;
        let OciReference::Digest(d) = &r.reference else {
            return Err(OriginError::BadUrl {
                url: target.url.to_string(),
                why: "bytes are read from a blob: name it by @sha256:<digest>".into(),
            });
        };
        self.client
            .read_blob(&r, d, range, sink, target.authorization)
            .await
            .map_err(wrap)
    }

    async fn list(&self, target: Target<'_>) -> Result<Vec<Entry>, OriginError> {
        let r = Self::reference(target.url)?;
        let tags = self
            .client
            .tags(&r, target.authorization)
            .await
            .map_err(wrap)?;
        Ok(tags
            .into_iter()
            .map(|name| Entry {
                name,
                size: None,
                ..Entry::default()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests;
