//! Exposing a verified task file at the user's output path, atomically.
//!
//! The file appears under a temporary name beside the output, as a hard link
//! to the cache file when both are on one filesystem (no copy, no extra disk)
//! or as a copy otherwise, then is renamed into place: a reader never sees a
//! partial file at the output path, and an existing file there is replaced
//! only by a complete one.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct OutputError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// How the file got there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    HardLink,
    Copy,
}

pub fn expose(cache_file: &Path, output: &Path) -> Result<Placement, OutputError> {
    let err = |source| OutputError {
        path: output.to_path_buf(),
        source,
    };
    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(err)?;
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.weightcast-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let placement = match std::fs::hard_link(cache_file, &tmp) {
        Ok(()) => Placement::HardLink,
        Err(_) => {
            if let Err(e) = std::fs::copy(cache_file, &tmp) {
                let _ = std::fs::remove_file(&tmp);
                return Err(err(e));
            }
            Placement::Copy
        }
    };
    let renamed = std::fs::rename(&tmp, output);
    // rename(2) between two links of one inode (a re-exposed cache file)
    // succeeds without doing anything: the temp link must go either way.
    let _ = std::fs::remove_file(&tmp);
    renamed.map_err(err)?;
    Ok(placement)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_into_place_and_replaces_atomically() {
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("cache");
        std::fs::write(&cache, b"weights").unwrap();
        let out = d.path().join("sub/dir/model.bin");
        assert_eq!(expose(&cache, &out).unwrap(), Placement::HardLink);
        assert_eq!(std::fs::read(&out).unwrap(), b"weights");
        // Again over an existing output: replaced, no temp files left.
        expose(&cache, &out).unwrap();
        let names: Vec<_> = std::fs::read_dir(out.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }
}
