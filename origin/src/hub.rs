//! A client of the origin Hugging Face Hub: revision, tree and file
//! metadata, the calls `weightcast get hf://` and the daemon's Hub endpoint
//! make before any byte moves.
//!
//! Metadata requests never follow a redirect to another host: the Hub sends
//! LFS files to its CDN with a signed `Location`, and that `Location` (not
//! the Hub URL) becomes the task's origin, so the swarm's seed can fetch it
//! without the user's token. The token goes to the Hub's own host only.
//!
//! [`HubBackend`] is the Hub as an `hf://` [`Backend`]: stat is the HEAD
//! of a file, a ranged read follows the resolve URL to wherever the bytes
//! are, and listing is the repo's tree.

use crate::backend::{Backend, Entry, RangeSink, Stat, Target};
use crate::error::{error_chain, ErrorKind, OriginError};
use crate::http::HttpBackend;
use crate::origin_key::OriginKey;
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_LENGTH, ETAG, LINK, LOCATION};
use reqwest::{StatusCode, Url};
use std::ops::Range;
use weightcast_modelpack::hf_api::{
    self, bare_etag, files_from_tree, is_commit, is_sha256_hex, RevisionInfo, TreeEntry, TreeError,
};
use weightcast_modelpack::{HfFile, HfUri, RepoRef};

/// The public Hub, used when neither `--hf-endpoint` nor `HF_ENDPOINT` is set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("invalid Hub endpoint {0:?}: expected http(s)://host[:port]")]
    BadEndpoint(String),
    /// The Hub answered with an error; `message` already says what to do.
    #[error("{message}")]
    Refused {
        message: String,
        status: StatusCode,
        /// The Hub's `X-Error-Code` (`RepoNotFound`, `GatedRepo`, ...).
        code: Option<String>,
        commit: Option<String>,
    },
    #[error("cannot reach the Hub at {url}: {}", error_chain(error))]
    Transport { url: String, error: reqwest::Error },
    #[error("unexpected answer from {url}: {why}")]
    BadAnswer { url: String, why: String },
    #[error("{url}: invalid JSON in the Hub's answer: {error}")]
    BadJson {
        url: String,
        error: serde_json::Error,
    },
    #[error(transparent)]
    Tree(#[from] TreeError),
}

impl HubError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            HubError::BadEndpoint(_) => ErrorKind::BadUrl,
            HubError::Refused { code, status, .. } => match code.as_deref() {
                Some("RepoNotFound" | "RevisionNotFound" | "EntryNotFound") => ErrorKind::NotFound,
                Some("GatedRepo") => ErrorKind::Unauthorized,
                _ => ErrorKind::of_status(*status),
            },
            HubError::Transport { .. } => ErrorKind::Transport,
            HubError::BadAnswer { .. } | HubError::BadJson { .. } | HubError::Tree(_) => {
                ErrorKind::BadAnswer
            }
        }
    }
}

/// What a `HEAD` of a file's resolve URL says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub commit: String,
    /// The file's `ETag`: the sha256 for LFS files, the git blob id else.
    pub etag: String,
    pub size: u64,
    /// Where the bytes are when the Hub redirects to another host (its CDN).
    pub location: Option<String>,
}

impl FileMeta {
    pub fn sha256(&self) -> Option<&str> {
        is_sha256_hex(&self.etag).then_some(self.etag.as_str())
    }
}

/// A repo at one commit, and the files to fetch.
#[derive(Debug, Clone)]
pub struct ResolvedRepo {
    pub repo: RepoRef,
    pub commit: String,
    pub files: Vec<HfFile>,
}

pub struct HubClient {
    endpoint: Url,
    /// No redirects: metadata is read from the Hub's first answer.
    meta: reqwest::Client,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn same_origin(a: &Url, b: &Url) -> bool {
    OriginKey::of(a) == OriginKey::of(b)
}

impl HubClient {
    pub fn new(endpoint: &str) -> Result<Self, HubError> {
        let trimmed = endpoint.trim_end_matches('/');
        let u = Url::parse(trimmed).map_err(|_| HubError::BadEndpoint(endpoint.to_string()))?;
        if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
            return Err(HubError::BadEndpoint(endpoint.to_string()));
        }
        Ok(Self {
            endpoint: u,
            meta: crate::http::client(0),
        })
    }

    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str().trim_end_matches('/')
    }

    /// `endpoint + path` (a path from [`RepoRef`]'s builders).
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{}", self.endpoint(), path_and_query)
    }

    fn request(
        &self,
        method: reqwest::Method,
        url: Url,
        auth: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let r = self.meta.request(method, url.clone());
        // Only ever to the Hub itself.
        match auth {
            Some(a) if same_origin(&url, &self.endpoint) => r.header(AUTHORIZATION, a),
            _ => r,
        }
    }

    /// A GET to the Hub, answered as is (the endpoint relays it).
    pub async fn get_raw(
        &self,
        path_and_query: &str,
        auth: Option<&str>,
    ) -> Result<reqwest::Response, HubError> {
        let url = self.url(path_and_query);
        let u = Url::parse(&url).map_err(|_| HubError::BadEndpoint(url.clone()))?;
        self.request(reqwest::Method::GET, u, auth)
            .send()
            .await
            .map_err(|e| transport(&url, e))
    }

    /// Fails with the Hub's own words when `resp` is an error.
    async fn check(
        &self,
        what: &str,
        resp: reqwest::Response,
    ) -> Result<reqwest::Response, HubError> {
        let status = resp.status();
        if status.is_success() || status.is_redirection() {
            return Ok(resp);
        }
        let code = header(resp.headers(), "x-error-code").map(str::to_string);
        let commit = header(resp.headers(), "x-repo-commit").map(str::to_string);
        let detail = header(resp.headers(), "x-error-message").map(str::to_string);
        let message = match (code.as_deref(), status.as_u16()) {
            (Some("RepoNotFound"), _) => format!(
                "{what}: repository not found on {} (if it is private or gated, pass --hf-token or set HF_TOKEN)",
                self.endpoint()
            ),
            (Some("RevisionNotFound"), _) => format!("{what}: revision not found on {}", self.endpoint()),
            (Some("EntryNotFound"), _) => format!("{what}: no such file on {}", self.endpoint()),
            (Some("GatedRepo"), 401) | (None, 401) => format!(
                "{what}: the repository is gated or private and needs a token: pass --hf-token or set HF_TOKEN ({status})"
            ),
            (Some("GatedRepo"), _) | (None, 403) => format!(
                "{what}: the token was refused: the account has no access to this gated or private repository ({status})"
            ),
            _ => format!(
                "{what}: the Hub answered {status}{}",
                detail.map(|d| format!(": {d}")).unwrap_or_default()
            ),
        };
        Err(HubError::Refused {
            message,
            status,
            code,
            commit,
        })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        url: &str,
        auth: Option<&str>,
    ) -> Result<(T, HeaderMap), HubError> {
        let u = Url::parse(url).map_err(|_| HubError::BadEndpoint(url.to_string()))?;
        let resp = self
            .request(reqwest::Method::GET, u, auth)
            .send()
            .await
            .map_err(|e| transport(url, e))?;
        let resp = self.check(what, resp).await?;
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| transport(url, e))?;
        let v = serde_json::from_slice(&body).map_err(|error| HubError::BadJson {
            url: url.to_string(),
            error,
        })?;
        Ok((v, headers))
    }

    /// The commit `revision` points at (no request when it is one).
    pub async fn commit_of(
        &self,
        repo: &RepoRef,
        revision: &str,
        auth: Option<&str>,
    ) -> Result<String, HubError> {
        if is_commit(revision) {
            return Ok(revision.to_ascii_lowercase());
        }
        let url = self.url(&repo.revision_path(revision));
        let what = format!("{} at {revision:?}", repo.id);
        let (info, _): (RevisionInfo, _) = self.get_json(&what, &url, auth).await?;
        if !is_commit(&info.sha) {
            return Err(HubError::BadAnswer {
                url,
                why: format!("{:?} is not a commit id", info.sha),
            });
        }
        Ok(info.sha.to_ascii_lowercase())
    }

    /// Every entry of the repo's tree at `commit`, across pages.
    pub async fn tree(
        &self,
        repo: &RepoRef,
        commit: &str,
        auth: Option<&str>,
    ) -> Result<Vec<TreeEntry>, HubError> {
        let mut url = self.url(&repo.tree_path(commit));
        let mut all = Vec::new();
        for _ in 0..10_000 {
            let (page, headers): (Vec<TreeEntry>, _) = self.get_json(&repo.id, &url, auth).await?;
            all.extend(page);
            let Some(next) = header(&headers, LINK.as_str()).and_then(hf_api::next_page) else {
                return Ok(all);
            };
            let next_url =
                Url::parse(&next).or_else(|_| Url::parse(&url).and_then(|u| u.join(&next)));
            match next_url {
                // The token must not follow a link to another host.
                Ok(n) if same_origin(&n, &self.endpoint) => url = n.to_string(),
                _ => {
                    return Err(HubError::BadAnswer {
                        url,
                        why: format!("the next page {next:?} is not on the Hub's host"),
                    })
                }
            }
        }
        Err(HubError::BadAnswer {
            url,
            why: "the tree has more than 10,000 pages".into(),
        })
    }

    /// Resolves `uri`: its revision to a commit, its selector to files.
    pub async fn resolve(&self, uri: &HfUri, auth: Option<&str>) -> Result<ResolvedRepo, HubError> {
        let commit = self.commit_of(&uri.repo, uri.revision(), auth).await?;
        let entries = self.tree(&uri.repo, &commit, auth).await?;
        let files = files_from_tree(&entries, uri.selector.as_deref())?;
        Ok(ResolvedRepo {
            repo: uri.repo.clone(),
            commit,
            files,
        })
    }

    /// `HEAD` of a file's resolve URL: commit, etag, size, and the CDN
    /// location when the Hub redirects there. Redirects on the Hub's own
    /// host are followed (renamed repos); one to another host is not.
    pub async fn file_meta(
        &self,
        repo: &RepoRef,
        revision: &str,
        path: &str,
        auth: Option<&str>,
    ) -> Result<FileMeta, HubError> {
        let mut url = self.url(&repo.resolve_path(revision, path));
        let what = format!("{}/{path}", repo.id);
        // X-Linked-* of the first answer describe the file, wherever it redirects.
        let mut linked: Option<(String, u64)> = None;
        let mut commit: Option<String> = None;
        for _ in 0..5 {
            let u = Url::parse(&url).map_err(|_| HubError::BadEndpoint(url.clone()))?;
            let resp = self
                .request(reqwest::Method::HEAD, u.clone(), auth)
                .header("Accept-Encoding", "identity")
                .send()
                .await
                .map_err(|e| transport(&url, e))?;
            let resp = self.check(&what, resp).await?;
            let h = resp.headers();
            commit = commit.or_else(|| header(h, "x-repo-commit").map(str::to_string));
            if linked.is_none() {
                if let (Some(e), Some(s)) = (header(h, "x-linked-etag"), header(h, "x-linked-size"))
                {
                    if let Ok(size) = s.parse() {
                        linked = Some((bare_etag(e).to_string(), size));
                    }
                }
            }
            let location = match header(h, LOCATION.as_str()) {
                Some(l) if resp.status().is_redirection() => {
                    Some(u.join(l).map_err(|_| HubError::BadAnswer {
                        url: url.clone(),
                        why: format!("invalid Location {l:?}"),
                    })?)
                }
                _ => None,
            };
            let bad = |why: &str| HubError::BadAnswer {
                url: url.clone(),
                why: why.to_string(),
            };
            match location {
                Some(next) if same_origin(&next, &self.endpoint) => {
                    url = next.to_string();
                    continue;
                }
                location => {
                    let (etag, size) = match linked.clone() {
                        Some(l) => l,
                        None => {
                            let etag = header(h, ETAG.as_str())
                                .map(bare_etag)
                                .ok_or_else(|| bad("no ETag"))?;
                            let size = header(h, CONTENT_LENGTH.as_str())
                                .and_then(|s| s.parse().ok())
                                .ok_or_else(|| bad("no X-Linked-Size or Content-Length"))?;
                            (etag.to_string(), size)
                        }
                    };
                    let commit = commit
                        .filter(|c| is_commit(c))
                        .ok_or_else(|| bad("no X-Repo-Commit"))?;
                    return Ok(FileMeta {
                        commit: commit.to_ascii_lowercase(),
                        etag,
                        size,
                        location: location.map(|l| l.to_string()),
                    });
                }
            }
        }
        Err(HubError::BadAnswer {
            url,
            why: "more than 5 redirects on the Hub's own host".into(),
        })
    }
}

fn transport(url: &str, error: reqwest::Error) -> HubError {
    HubError::Transport {
        url: url.to_string(),
        error,
    }
}

/// The Hub as an `hf://[datasets/]owner/name[@revision]/path` backend
/// (the URI form of `weightcast get`; a path names one file, or for
/// [`Backend::list`] a directory). Its origin is the Hub's endpoint: the
/// `Authorization` the fetcher picks is the one bound to the Hub.
pub struct HubBackend {
    hub: HubClient,
    /// For the bytes: follows the Hub's redirect to its CDN (without the
    /// token, which reqwest drops on the way to another host).
    bytes: HttpBackend,
}

impl HubBackend {
    pub fn new(hub: HubClient) -> Self {
        Self {
            hub,
            bytes: HttpBackend::new(),
        }
    }

    fn uri(url: &Url) -> Result<HfUri, OriginError> {
        HfUri::parse(url.as_str()).map_err(|e| OriginError::BadUrl {
            url: url.to_string(),
            why: e.why.to_string(),
        })
    }

    /// The repo, revision and file path of `url`, which must name a file.
    fn file(url: &Url) -> Result<(HfUri, String), OriginError> {
        let uri = Self::uri(url)?;
        let path = uri
            .selector
            .clone()
            .filter(|p| !p.contains(['*', '?', '[']))
            .ok_or_else(|| OriginError::BadUrl {
                url: url.to_string(),
                why: "name one file of the repo (hf://owner/name[@revision]/path)".into(),
            })?;
        Ok((uri, path))
    }
}

fn wrap(e: HubError) -> OriginError {
    OriginError::Hub(Box::new(e))
}

#[async_trait::async_trait]
impl Backend for HubBackend {
    fn name(&self) -> &'static str {
        "hub"
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["hf"]
    }

    fn check(&self, url: &Url) -> Result<(), OriginError> {
        Self::uri(url).map(|_| ())
    }

    fn origin(&self, _url: &Url) -> OriginKey {
        OriginKey::of(&self.hub.endpoint)
    }

    async fn stat(&self, target: Target<'_>) -> Result<Stat, OriginError> {
        let (uri, path) = Self::file(target.url)?;
        let meta = self
            .hub
            .file_meta(&uri.repo, uri.revision(), &path, target.authorization)
            .await
            .map_err(wrap)?;
        Ok(Stat {
            content_length: meta.size,
            digest: meta.sha256().map(|s| format!("sha256:{s}")),
            etag: Some(meta.etag),
            ..Stat::default()
        })
    }

    async fn read_range(
        &self,
        target: Target<'_>,
        range: Range<u64>,
        sink: &mut RangeSink<'_>,
    ) -> Result<(), OriginError> {
        let (uri, path) = Self::file(target.url)?;
        let resolve = self.hub.url(&uri.repo.resolve_path(uri.revision(), &path));
        let resolve = Url::parse(&resolve).map_err(|_| wrap(HubError::BadEndpoint(resolve)))?;
        let target = Target {
            url: &resolve,
            authorization: target.authorization,
        };
        self.bytes.read_range(target, range, sink).await
    }

    async fn list(&self, target: Target<'_>) -> Result<Vec<Entry>, OriginError> {
        let uri = Self::uri(target.url)?;
        let auth = target.authorization;
        let commit = self
            .hub
            .commit_of(&uri.repo, uri.revision(), auth)
            .await
            .map_err(wrap)?;
        let entries = self
            .hub
            .tree(&uri.repo, &commit, auth)
            .await
            .map_err(wrap)?;
        let prefix = uri
            .selector
            .as_deref()
            .map(|s| format!("{}/", s.trim_end_matches('/')));
        Ok(entries
            .into_iter()
            .filter_map(|e| {
                let name = match &prefix {
                    Some(p) => e.path.strip_prefix(p.as_str())?.to_string(),
                    None => e.path.clone(),
                };
                Some(Entry {
                    name,
                    size: Some(e.lfs.as_ref().map_or(e.size, |l| l.size)),
                    digest: e
                        .lfs
                        .as_ref()
                        .filter(|l| is_sha256_hex(&l.oid))
                        .map(|l| format!("sha256:{}", l.oid.to_ascii_lowercase())),
                    is_dir: e.kind == "directory",
                    ..Entry::default()
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests;
