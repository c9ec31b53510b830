//! Where an artifact's files land under `-o`.
//!
//! - [`Layout::Plain`]: the artifact's tree as is, `-o/<path>`.
//! - [`Layout::HfCache`]: the Hugging Face cache structure, so that
//!   `from_pretrained(..., local_files_only=True)` or `HF_HUB_OFFLINE=1`
//!   finds the files with `-o` as the hub cache dir (`$HF_HOME/hub`):
//!   `<repo folder>/blobs/<etag>` holds the bytes,
//!   `snapshots/<commit>/<path>` is a relative symlink to the blob, and
//!   `refs/<revision>` names the commit. Hugging Face sources only.
//! - [`Layout::Triton`]: a Triton model repository entry,
//!   `-o/<name>/<version>/<files>`, with the artifact's `config.pbtxt` (if
//!   any) at `-o/<name>/config.pbtxt`, where Triton reads it.
//! - [`Layout::TorchServe`]: a TorchServe model-store entry in its
//!   no-archive form, `-o/<name>/<files>` plus `MAR-INF/MANIFEST.json`.

use crate::hf_api::{is_commit, RepoRef};
use crate::rel_path::{JoinError, RelPath, UnsafePath};
use std::path::{Path, PathBuf};
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    #[default]
    Plain,
    HfCache,
    Triton,
    TorchServe,
}

impl FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "plain" => Ok(Layout::Plain),
            "hf-cache" => Ok(Layout::HfCache),
            "triton" => Ok(Layout::Triton),
            "torchserve" => Ok(Layout::TorchServe),
            _ => Err(format!(
                "unknown layout {s:?}: expected plain, hf-cache, triton or torchserve"
            )),
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
    #[error("--layout {0} needs --model-name")]
    NoModelName(&'static str),
    #[error("--model-name {0:?} must be one plain path component")]
    BadModelName(String),
    #[error("--layout hf-cache is for hf:// sources")]
    NotHf,
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

/// A model-serving entry: its name and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    pub name: String,
    pub version: u32,
}

/// An artifact about to be written under `root` in a layout.
pub struct Placement<'a> {
    pub layout: Layout,
    pub root: &'a Path,
    /// The Hugging Face repo and commit (needed by `hf-cache`).
    pub hf: Option<(&'a RepoRef, &'a str)>,
    /// Needed by `triton` and `torchserve`.
    pub model: Option<&'a ModelEntry>,
}

const TRITON_CONFIG: &str = "config.pbtxt";

impl Placement<'_> {
    /// Checks that the layout has what it needs, before anything is fetched.
    pub fn check(&self) -> Result<(), LayoutError> {
        match self.layout {
            Layout::Plain => Ok(()),
            Layout::HfCache => self.hf.map(|_| ()).ok_or(LayoutError::NotHf),
            Layout::Triton | Layout::TorchServe => self.model_dir().map(|_| ()),
        }
    }

    /// `root/<name>` of a model-serving layout.
    fn model_dir(&self) -> Result<RelPath, LayoutError> {
        let what = match self.layout {
            Layout::Triton => "triton",
            _ => "torchserve",
        };
        let m = self.model.ok_or(LayoutError::NoModelName(what))?;
        match RelPath::parse(&m.name) {
            Ok(p) if p.depth() == 0 => Ok(p),
            _ => Err(LayoutError::BadModelName(m.name.clone())),
        }
    }

    /// The directory an archive layer's files go under, relative to `root`
    /// (`None`: `root` itself).
    pub fn files_dir(&self) -> Result<Option<RelPath>, LayoutError> {
        match self.layout {
            Layout::Plain => Ok(None),
            Layout::HfCache => Err(LayoutError::NotHf),
            Layout::Triton => {
                let version = self.model.map_or(1, |m| m.version);
                Ok(Some(RelPath::parse(&format!(
                    "{}/{version}",
                    self.model_dir()?
                ))?))
            }
            Layout::TorchServe => Ok(Some(self.model_dir()?)),
        }
    }

    /// Where `file` (with blob name `etag`) goes; creates its directories.
    pub fn place(&self, file: &RelPath, etag: &str) -> Result<FilePlacement, LayoutError> {
        let plain = |rel: RelPath| -> Result<FilePlacement, LayoutError> {
            Ok(FilePlacement {
                target: rel.join_checked(self.root)?,
                link: None,
            })
        };
        match self.layout {
            Layout::Plain => plain(file.clone()),
            Layout::Triton if file.as_str() == TRITON_CONFIG => plain(RelPath::parse(&format!(
                "{}/{TRITON_CONFIG}",
                self.model_dir()?
            ))?),
            Layout::Triton | Layout::TorchServe => {
                let dir = self.files_dir()?.expect("model layouts have a files dir");
                plain(RelPath::parse(&format!("{dir}/{file}"))?)
            }
            Layout::HfCache => {
                let (repo, commit) = self.hf.ok_or(LayoutError::NotHf)?;
                if etag.is_empty() || !etag.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(LayoutError::BadBlobName(etag.to_string()));
                }
                if !is_commit(commit) {
                    return Err(LayoutError::BadBlobName(commit.to_string()));
                }
                let folder = RelPath::parse(&repo.cache_folder())?;
                let blob = RelPath::parse(&format!("{folder}/blobs/{etag}"))?;
                let link = RelPath::parse(&format!("{folder}/snapshots/{commit}/{file}"))?;
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

    /// Completes the layout once every file is in place: the HF cache's
    /// `refs/<revision>`; Triton's `config.pbtxt` out of an archive's version
    /// directory; TorchServe's `MAR-INF/MANIFEST.json`. `files` are the
    /// artifact's file paths (relative to the artifact, not to `root`).
    pub fn finish(&self, revision: Option<&str>, files: &[RelPath]) -> Result<(), LayoutError> {
        match self.layout {
            Layout::Plain => Ok(()),
            Layout::HfCache => {
                let (repo, commit) = self.hf.ok_or(LayoutError::NotHf)?;
                let Some(revision) = revision.filter(|r| *r != commit) else {
                    return Ok(());
                };
                let folder = RelPath::parse(&repo.cache_folder())?;
                let refs = RelPath::parse(&format!("{folder}/refs/{revision}"))?;
                let path = refs.join_checked(self.root)?;
                write_atomically(&path, commit.as_bytes())
            }
            Layout::Triton => {
                // An archive layer put config.pbtxt in the version directory.
                let dir = self.files_dir()?.expect("model layouts have a files dir");
                let inside =
                    RelPath::parse(&format!("{dir}/{TRITON_CONFIG}"))?.join_checked(self.root)?;
                if inside.is_file() {
                    let to = RelPath::parse(&format!("{}/{TRITON_CONFIG}", self.model_dir()?))?
                        .join_checked(self.root)?;
                    std::fs::rename(&inside, &to)
                        .map_err(|source| LayoutError::Io { path: to, source })?;
                }
                Ok(())
            }
            Layout::TorchServe => {
                let dir = self.model_dir()?;
                let m = self.model.expect("checked by model_dir");
                let name = |p: &RelPath| p.as_str().to_string();
                let serialized = files.iter().find(|f| {
                    [".pt", ".pth", ".safetensors", ".bin", ".onnx"]
                        .iter()
                        .any(|e| f.as_str().ends_with(e))
                });
                let handler = files.iter().find(|f| f.as_str() == "handler.py");
                let mut model = serde_json::json!({
                    "modelName": m.name,
                    "modelVersion": format!("{}.0", m.version),
                });
                if let Some(s) = serialized {
                    model["serializedFile"] = name(s).into();
                }
                if let Some(h) = handler {
                    model["handler"] = name(h).into();
                }
                let manifest = serde_json::json!({
                    "createdOn": "weightcast",
                    "runtime": "python",
                    "model": model,
                    "archiverVersion": concat!("weightcast-", env!("CARGO_PKG_VERSION")),
                });
                let path = RelPath::parse(&format!("{dir}/MAR-INF/MANIFEST.json"))?
                    .join_checked(self.root)?;
                let bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
                write_atomically(&path, &bytes)
            }
        }
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

    fn rel(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    #[test]
    fn hf_cache_layout_matches_huggingface_hub() {
        let root = tempfile::tempdir().unwrap();
        let repo = RepoRef {
            kind: RepoKind::Model,
            id: "org/m".into(),
        };
        let commit = "c".repeat(40);
        let p = Placement {
            layout: Layout::HfCache,
            root: root.path(),
            hf: Some((&repo, &commit)),
            model: None,
        };
        p.check().unwrap();
        let etag = "e".repeat(64);
        let f = p.place(&rel("sub/w.safetensors"), &etag).unwrap();
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
        p.finish(Some("main"), &[]).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.path().join("models--org--m/refs/main")).unwrap(),
            commit
        );
        assert!(p.place(&rel("x"), "../../etc").is_err());
        let not_hf = Placement { hf: None, ..p };
        assert!(matches!(not_hf.check(), Err(LayoutError::NotHf)));
    }

    #[test]
    fn plain_layout_is_the_tree() {
        let root = tempfile::tempdir().unwrap();
        let p = Placement {
            layout: Layout::Plain,
            root: root.path(),
            hf: None,
            model: None,
        };
        let f = p.place(&rel("a/b.parquet"), "").unwrap();
        assert_eq!(
            f,
            FilePlacement {
                target: root.path().join("a/b.parquet"),
                link: None
            }
        );
        assert_eq!(p.files_dir().unwrap(), None);
        p.finish(Some("main"), &[]).unwrap();
        assert!(!root.path().join("refs").exists());
    }

    #[test]
    fn triton_and_torchserve_entries() {
        let root = tempfile::tempdir().unwrap();
        let model = ModelEntry {
            name: "llama".into(),
            version: 3,
        };
        let t = Placement {
            layout: Layout::Triton,
            root: root.path(),
            hf: None,
            model: Some(&model),
        };
        t.check().unwrap();
        assert_eq!(
            t.place(&rel("model.onnx"), "").unwrap().target,
            root.path().join("llama/3/model.onnx")
        );
        assert_eq!(
            t.place(&rel("config.pbtxt"), "").unwrap().target,
            root.path().join("llama/config.pbtxt")
        );
        // config.pbtxt that came out of an archive moves up.
        std::fs::write(root.path().join("llama/3/config.pbtxt"), "name: \"llama\"").unwrap();
        std::fs::remove_file(root.path().join("llama/config.pbtxt")).ok();
        t.finish(None, &[]).unwrap();
        assert!(root.path().join("llama/config.pbtxt").is_file());
        assert!(!root.path().join("llama/3/config.pbtxt").exists());

        let s = Placement {
            layout: Layout::TorchServe,
            ..t
        };
        assert_eq!(
            s.place(&rel("w/model.pt"), "").unwrap().target,
            root.path().join("llama/w/model.pt")
        );
        s.finish(None, &[rel("handler.py"), rel("w/model.pt")])
            .unwrap();
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(root.path().join("llama/MAR-INF/MANIFEST.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(m["model"]["modelName"], "llama");
        assert_eq!(m["model"]["handler"], "handler.py");
        assert_eq!(m["model"]["serializedFile"], "w/model.pt");
        assert_eq!(m["model"]["modelVersion"], "3.0");

        let unnamed = Placement { model: None, ..s };
        assert!(matches!(
            unnamed.check(),
            Err(LayoutError::NoModelName("torchserve"))
        ));
        let bad = ModelEntry {
            name: "../x".into(),
            version: 1,
        };
        let bad = Placement {
            model: Some(&bad),
            ..unnamed
        };
        assert!(matches!(bad.check(), Err(LayoutError::BadModelName(_))));
    }
}
