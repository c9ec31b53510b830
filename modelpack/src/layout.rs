//! Where an artifact's files land under `-o`.
//!
//! - [`Layout::Plain`]: the repo's tree as is, `-o/<path>`.
//! - [`Layout::HfCache`]: the Hugging Face cache structure, so that
//!   `from_pretrained(..., local_files_only=True)` or `HF_HUB_OFFLINE=1`
//!   finds the files with `-o` as the hub cache dir (`$HF_HOME/hub`):
//!   `<repo folder>/blobs/<etag>` holds the bytes,
//!   `snapshots/<commit>/<path>` is a relative symlink to the blob, and
//!   `refs/<revision>` names the commit.

use crate::hf_api::{is_commit, RepoRef};
use crate::rel_path::{JoinError, RelPath, UnsafePath};
use std::path::{Path, PathBuf};
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    #[default]
    Plain,
    HfCache,
}

impl FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "plain" => Ok(Layout::Plain),
            "hf-cache" => Ok(Layout::HfCache),
            _ => Err(format!("unknown layout {s:?}: expected plain or hf-cache")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error(transparent)]
    UnsafePath(#[from] UnsafePath),
    #[error("refusing blob name {0:?} from the origin: expected hex")]
    BadBlobName(String),
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where one file goes: its bytes at `target`, and in the cache layout a
/// symlink at `link` pointing to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePlacement {
    pub target: PathBuf,
    pub link: Option<(PathBuf, PathBuf)>,
}

/// One repo at one commit, about to be written under `root` in a layout.
pub struct RepoPlacement<'a> {
    pub layout: Layout,
    pub root: &'a Path,
    pub repo: &'a RepoRef,
    pub commit: &'a str,
}

impl RepoPlacement<'_> {
    /// Where `file` (with blob name `etag`) goes; creates its directories.
    pub fn place(&self, file: &RelPath, etag: &str) -> Result<FilePlacement, LayoutError> {
        match self.layout {
            Layout::Plain => Ok(FilePlacement {
                target: file.join_checked(self.root)?,
                link: None,
            }),
            Layout::HfCache => {
                if etag.is_empty() || !etag.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(LayoutError::BadBlobName(etag.to_string()));
                }
                if !is_commit(self.commit) {
                    return Err(LayoutError::BadBlobName(self.commit.to_string()));
                }
                let folder = RelPath::parse(&self.repo.cache_folder())?;
                let blob = RelPath::parse(&format!("{folder}/blobs/{etag}"))?;
                let link = RelPath::parse(&format!("{folder}/snapshots/{}/{file}", self.commit))?;
                let target = blob.join_checked(self.root)?;
                let link_path = link.join_checked(self.root)?;
                let up = "../".repeat(file.depth() + 2);
                Ok(FilePlacement {
                    target,
                    link: Some((link_path, PathBuf::from(format!("{up}blobs/{etag}")))),
                })
            }
        }
    }

    /// In the cache layout, records that `revision` points at the commit.
    pub fn finish(&self, revision: &str) -> Result<(), LayoutError> {
        if self.layout != Layout::HfCache || revision == self.commit {
            return Ok(());
        }
        let folder = RelPath::parse(&self.repo.cache_folder())?;
        let refs = RelPath::parse(&format!("{folder}/refs/{revision}"))?;
        let path = refs.join_checked(self.root)?;
        write_atomically(&path, self.commit.as_bytes())
    }
}

/// Writes `bytes` to `path` by a rename, so a reader never sees half.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    let tmp = path.with_extension("weightcast-tmp");
    let io = |source| LayoutError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Makes `link` a symlink to `target`, replacing what was there atomically.
pub fn symlink_atomically(link: &Path, target: &Path) -> Result<(), LayoutError> {
    let io = |source| LayoutError::Io {
        path: link.to_path_buf(),
        source,
    };
    let tmp = link.with_extension("weightcast-tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(io)?;
    std::fs::rename(&tmp, link).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hf_api::RepoKind;

    #[test]
    fn hf_cache_layout_matches_huggingface_hub() {
        let root = tempfile::tempdir().unwrap();
        let repo = RepoRef {
            kind: RepoKind::Model,
            id: "org/m".into(),
        };
        let commit = "c".repeat(40);
        let p = RepoPlacement {
            layout: Layout::HfCache,
            root: root.path(),
            repo: &repo,
            commit: &commit,
        };
        let etag = "e".repeat(64);
        let f = p
            .place(&RelPath::parse("sub/w.safetensors").unwrap(), &etag)
            .unwrap();
        assert_eq!(
            f.target,
            root.path().join(format!("models--org--m/blobs/{etag}"))
        );
        let (link, target) = f.link.unwrap();
        assert_eq!(
            link,
            root.path().join(format!(
                "models--org--m/snapshots/{commit}/sub/w.safetensors"
            ))
        );
        assert_eq!(target, PathBuf::from(format!("../../../blobs/{etag}")));
        std::fs::write(&f.target, b"x").unwrap();
        symlink_atomically(&link, &target).unwrap();
        assert_eq!(
            std::fs::read(&link).unwrap(),
            b"x",
            "the relative link resolves to the blob"
        );
        p.finish("main").unwrap();
        assert_eq!(
            std::fs::read_to_string(root.path().join("models--org--m/refs/main")).unwrap(),
            commit
        );
        assert!(p.place(&RelPath::parse("x").unwrap(), "../../etc").is_err());
    }

    #[test]
    fn plain_layout_is_the_tree() {
        let root = tempfile::tempdir().unwrap();
        let repo = RepoRef {
            kind: RepoKind::Dataset,
            id: "org/d".into(),
        };
        let p = RepoPlacement {
            layout: Layout::Plain,
            root: root.path(),
            repo: &repo,
            commit: "x",
        };
        let f = p
            .place(&RelPath::parse("a/b.parquet").unwrap(), "")
            .unwrap();
        assert_eq!(
            f,
            FilePlacement {
                target: root.path().join("a/b.parquet"),
                link: None
            }
        );
        p.finish("main").unwrap();
        assert!(!root.path().join("refs").exists());
    }
}
