//! Untrusted relative paths (Hub tree entries, OCI annotations).
//!
//! A name from the network may try `../../etc/cron.d/x`, `/etc/passwd`, a
//! Windows drive or a NUL byte. [`RelPath::parse`] accepts only plain,
//! forward-slash, relative names made of normal components, so joining one
//! to a directory stays inside it lexically. Symlinks already on disk are the
//! other way out; [`RelPath::join_checked`] refuses a parent that resolves
//! outside the root.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("refusing unsafe file name {name:?} from the origin: {why}")]
pub struct UnsafePath {
    pub name: String,
    pub why: &'static str,
}

/// A relative path of normal components, `/`-separated. It serializes as
/// its string (for `inspect --json` and summaries).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct RelPath(String);

impl RelPath {
    pub fn parse(name: &str) -> Result<Self, UnsafePath> {
        let bad = |why| {
            Err(UnsafePath {
                name: name.to_string(),
                why,
            })
        };
        if name.is_empty() {
            return bad("it is empty");
        }
        if name.contains('\0') {
            return bad("it contains a NUL byte");
        }
        if name.contains('\\') {
            return bad("it contains a backslash");
        }
        if name.starts_with('/') {
            return bad("it is absolute");
        }
        if name.len() >= 2 && name.as_bytes()[1] == b':' {
            return bad("it names a drive");
        }
        for part in name.split('/') {
            match part {
                "" => return bad("it has an empty component"),
                "." => return bad("it has a '.' component"),
                ".." => return bad("it has a '..' component"),
                _ => {}
            }
        }
        Ok(Self(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Components, in order.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// How many directories deep the file is (`a/b/c` → 2).
    pub fn depth(&self) -> usize {
        self.0.matches('/').count()
    }

    /// `root/self`, creating the parent directories one at a time, each
    /// checked first: a directory that is a symlink must resolve inside
    /// `root`, so nothing (not even an empty directory) is created through a
    /// symlink that leads out.
    pub fn join_checked(&self, root: &Path) -> Result<PathBuf, JoinError> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| JoinError::Io { path: p, source }
        };
        let real_root = root.canonicalize().map_err(io(root))?;
        let escapes = |resolved: PathBuf| JoinError::Escapes {
            name: self.0.clone(),
            resolved,
        };
        let parts: Vec<&str> = self.components().collect();
        let mut dir = root.to_path_buf();
        for part in &parts[..parts.len() - 1] {
            dir.push(part);
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_symlink() => {
                    let real = dir.canonicalize().map_err(io(&dir))?;
                    if !real.starts_with(&real_root) {
                        return Err(escapes(real));
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir(&dir).map_err(io(&dir))?;
                }
                Err(e) => return Err(io(&dir)(e)),
            }
        }
        let target = dir.join(parts[parts.len() - 1]);
        // The file itself must not be a symlink planted to point elsewhere.
        if let Ok(m) = std::fs::symlink_metadata(&target) {
            if m.file_type().is_symlink() {
                return Err(escapes(target));
            }
        }
        Ok(target)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("refusing to write {name:?}: a symlink leads it outside the output directory (to {})", resolved.display())]
    Escapes { name: String, resolved: PathBuf },
    #[error("cannot create {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass_and_tricks_do_not() {
        for ok in [
            "config.json",
            "a/b/c.safetensors",
            "..foo",
            "a/..b",
            "名前.txt",
        ] {
            assert_eq!(RelPath::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "a\\..\\b",
            "C:x",
            "a\0b",
            "..",
        ] {
            assert!(RelPath::parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(RelPath::parse("a/b/c").unwrap().depth(), 2);
    }

    #[test]
    fn a_symlinked_directory_cannot_lead_out() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("sub")).unwrap();
        let p = RelPath::parse("sub/x.bin").unwrap();
        assert!(matches!(
            p.join_checked(root.path()),
            Err(JoinError::Escapes { .. })
        ));
        let deep = RelPath::parse("sub/d/x.bin").unwrap();
        assert!(deep.join_checked(root.path()).is_err());
        assert!(
            std::fs::read_dir(outside.path()).unwrap().next().is_none(),
            "no directory is created through the symlink"
        );
        // A symlink that stays inside the root is fine.
        std::fs::create_dir(root.path().join("real")).unwrap();
        std::os::unix::fs::symlink(root.path().join("real"), root.path().join("alias")).unwrap();
        assert!(RelPath::parse("alias/x")
            .unwrap()
            .join_checked(root.path())
            .is_ok());
        std::os::unix::fs::symlink("/etc/passwd", root.path().join("f")).unwrap();
        assert!(RelPath::parse("f")
            .unwrap()
            .join_checked(root.path())
            .is_err());
        let ok = RelPath::parse("d/e/x.bin")
            .unwrap()
            .join_checked(root.path())
            .unwrap();
        assert!(root.path().join("d/e").is_dir());
        assert_eq!(ok, root.path().join("d/e/x.bin"));
    }
}
