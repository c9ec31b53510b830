//! The Hugging Face Hub's HTTP shapes: the revision and tree answers, the
//! URLs of the revision, tree and resolve endpoints, and the turn from a
//! tree into the files to fetch.
//!
//! Both `weightcast get hf://...` (as a client of the Hub) and the daemon's
//! Hub endpoint (as a server to `huggingface_hub`) use these, so they agree
//! on every path by construction.

use crate::glob;
use crate::rel_path::{RelPath, UnsafePath};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RepoKind {
    Model,
    Dataset,
}

impl RepoKind {
    /// The segment in `/api/{models|datasets}/...`.
    pub fn api_segment(self) -> &'static str {
        match self {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        }
    }

    /// Splits a leading `datasets/` (or `models/`) off a path: the kind of
    /// repo it names, and the rest. No prefix means a model, as on the Hub.
    pub fn split_prefix(path: &str) -> (RepoKind, &str) {
        match path.strip_prefix("datasets/") {
            Some(rest) => (RepoKind::Dataset, rest),
            None => (
                RepoKind::Model,
                path.strip_prefix("models/").unwrap_or(path),
            ),
        }
    }

    /// `models--org--name` / `datasets--org--name` in the HF cache.
    fn cache_prefix(self) -> &'static str {
        match self {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        }
    }
}

/// A repository on a Hub: its kind and `owner/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoRef {
    pub kind: RepoKind,
    pub id: String,
}

/// Everything but `A-Z a-z 0-9 - _ . ~` is escaped: a revision's `/` too.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn encode(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// A `/`-separated path, each component escaped.
fn encode_path(p: &str) -> String {
    p.split('/').map(encode).collect::<Vec<_>>().join("/")
}

impl RepoRef {
    /// `/api/{kind}/{id}/revision/{rev}`.
    pub fn revision_path(&self, revision: &str) -> String {
        format!(
            "/api/{}/{}/revision/{}",
            self.kind.api_segment(),
            self.id,
            encode(revision)
        )
    }

    /// `/api/{kind}/{id}/tree/{rev}?recursive=true&expand=false`.
    pub fn tree_path(&self, revision: &str) -> String {
        format!(
            "/api/{}/{}/tree/{}?recursive=true&expand=false",
            self.kind.api_segment(),
            self.id,
            encode(revision)
        )
    }

    /// `/{id}/resolve/{rev}/{path}` (datasets: `/datasets/{id}/...`).
    pub fn resolve_path(&self, revision: &str, file: &str) -> String {
        let prefix = match self.kind {
            RepoKind::Model => String::new(),
            RepoKind::Dataset => "/datasets".to_string(),
        };
        format!(
            "{prefix}/{}/resolve/{}/{}",
            self.id,
            encode(revision),
            encode_path(file)
        )
    }

    /// This repo's folder in a Hugging Face cache (`models--org--name`).
    pub fn cache_folder(&self) -> String {
        format!(
            "{}--{}",
            self.kind.cache_prefix(),
            self.id.replace('/', "--")
        )
    }
}

/// `GET /api/{kind}/{id}/revision/{rev}`: the fields weightcast reads.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RevisionInfo {
    pub id: String,
    /// The commit the revision points at.
    pub sha: String,
}

/// One entry of `GET /api/{kind}/{id}/tree/{rev}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TreeEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub path: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub oid: String,
    #[serde(default)]
    pub lfs: Option<LfsInfo>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LfsInfo {
    /// The file's sha256, hex.
    pub oid: String,
    pub size: u64,
}

/// How the Hub names a file's bytes. It is also the file's `ETag`, and its
/// blob name in the HF cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BlobId {
    /// An LFS file: the sha256 of its content, which weightcast verifies and
    /// keys its task on.
    Sha256(String),
    /// A small file stored in git: its git blob id (not a content digest
    /// weightcast can check).
    GitOid(String),
}

impl BlobId {
    pub fn etag(&self) -> &str {
        match self {
            BlobId::Sha256(s) | BlobId::GitOid(s) => s,
        }
    }

    pub fn sha256(&self) -> Option<&str> {
        match self {
            BlobId::Sha256(s) => Some(s),
            BlobId::GitOid(_) => None,
        }
    }
}

/// A file of a repo at one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfFile {
    pub path: RelPath,
    pub size: u64,
    pub blob: BlobId,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error(transparent)]
    UnsafePath(#[from] UnsafePath),
    #[error("the Hub's tree lists {path:?} with an invalid LFS sha256 {oid:?}")]
    BadLfsOid { path: String, oid: String },
    #[error("the Hub's tree lists {path:?} twice")]
    Duplicate { path: String },
    #[error("no file of the repo matches {selector:?}")]
    NothingSelected { selector: String },
}

pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A 40-hex git commit id (a revision that needs no resolving).
pub fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The files of `entries` that `selector` picks, sorted by path. Every
/// picked name is checked: an unsafe one fails the whole resolution.
pub fn files_from_tree(
    entries: &[TreeEntry],
    selector: Option<&str>,
) -> Result<Vec<HfFile>, TreeError> {
    let mut files = Vec::new();
    for e in entries.iter().filter(|e| e.kind == "file") {
        if selector.is_some_and(|s| !glob::selects(s, &e.path)) {
            continue;
        }
        let path = RelPath::parse(&e.path)?;
        let (size, blob) = match &e.lfs {
            Some(lfs) => {
                if !is_sha256_hex(&lfs.oid) {
                    return Err(TreeError::BadLfsOid {
                        path: e.path.clone(),
                        oid: lfs.oid.clone(),
                    });
                }
                (lfs.size, BlobId::Sha256(lfs.oid.to_ascii_lowercase()))
            }
            None => (e.size, BlobId::GitOid(e.oid.clone())),
        };
        files.push(HfFile { path, size, blob });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    if let Some(w) = files.windows(2).find(|w| w[0].path == w[1].path) {
        return Err(TreeError::Duplicate {
            path: w[0].path.to_string(),
        });
    }
    if let (true, Some(s)) = (files.is_empty(), selector) {
        return Err(TreeError::NothingSelected {
            selector: s.to_string(),
        });
    }
    Ok(files)
}

/// The `rel="next"` target of a `Link` header (the tree API's pagination).
pub fn next_page(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"));
        let t = target.trim();
        (is_next && t.starts_with('<') && t.ends_with('>')).then(|| t[1..t.len() - 1].to_string())
    })
}

/// An `ETag` / `X-Linked-Etag` value without `W/` and quotes.
pub fn bare_etag(v: &str) -> &str {
    v.trim().trim_start_matches("W/").trim_matches('"')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, lfs: Option<&str>) -> TreeEntry {
        TreeEntry {
            kind: "file".into(),
            path: path.into(),
            size: 10,
            oid: "1".repeat(40),
            lfs: lfs.map(|oid| LfsInfo {
                oid: oid.into(),
                size: 99,
            }),
        }
    }

    #[test]
    fn urls_escape_revisions_and_paths() {
        let m = RepoRef {
            kind: RepoKind::Model,
            id: "org/m".into(),
        };
        let d = RepoRef {
            kind: RepoKind::Dataset,
            id: "org/d".into(),
        };
        assert_eq!(
            m.revision_path("refs/pr/1"),
            "/api/models/org/m/revision/refs%2Fpr%2F1"
        );
        assert_eq!(
            d.tree_path("main"),
            "/api/datasets/org/d/tree/main?recursive=true&expand=false"
        );
        assert_eq!(
            m.resolve_path("main", "a b/c.json"),
            "/org/m/resolve/main/a%20b/c.json"
        );
        assert_eq!(
            d.resolve_path("v1", "x.parquet"),
            "/datasets/org/d/resolve/v1/x.parquet"
        );
        assert_eq!(d.cache_folder(), "datasets--org--d");
    }

    #[test]
    fn tree_to_files_checks_names_and_digests() {
        let sha = "a".repeat(64);
        let mut entries = vec![
            entry("model.safetensors", Some(&sha)),
            entry("config.json", None),
            TreeEntry {
                kind: "directory".into(),
                ..entry("sub", None)
            },
            entry("sub/x.txt", None),
        ];
        let files = files_from_tree(&entries, None).unwrap();
        assert_eq!(
            files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
            ["config.json", "model.safetensors", "sub/x.txt"]
        );
        assert_eq!(files[1].blob, BlobId::Sha256(sha.clone()));
        assert_eq!(files[1].size, 99, "an LFS file's size is the LFS size");
        assert_eq!(files_from_tree(&entries, Some("*.json")).unwrap().len(), 1);
        assert!(matches!(
            files_from_tree(&entries, Some("*.bin")),
            Err(TreeError::NothingSelected { .. })
        ));

        entries.push(entry("../escape.txt", None));
        assert!(matches!(
            files_from_tree(&entries, None),
            Err(TreeError::UnsafePath(_))
        ));
        // A hostile entry the selector leaves out does not matter.
        assert!(files_from_tree(&entries, Some("sub")).is_ok());

        let bad = vec![entry("w.bin", Some("nothex"))];
        assert!(matches!(
            files_from_tree(&bad, None),
            Err(TreeError::BadLfsOid { .. })
        ));
    }

    #[test]
    fn link_header_pagination() {
        assert_eq!(
            next_page("<https://hub/api/models/a/b/tree/main?cursor=xyz>; rel=\"next\"").as_deref(),
            Some("https://hub/api/models/a/b/tree/main?cursor=xyz")
        );
        assert_eq!(next_page("<https://x>; rel=\"prev\""), None);
        assert_eq!(bare_etag("W/\"abc\""), "abc");
    }
}
