//! A downloaded `.safetensors` file is checked before it is exposed: a
//! header length within bounds, a JSON header, and every tensor's offsets
//! inside the file, contiguous, and consistent with its dtype and shape.
//! The `safetensors` crate does exactly these checks when it parses; the
//! file is mapped, so nothing but the header is read into memory.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum InvalidSafetensors {
    #[error("{path} is not a valid safetensors file: {why}")]
    Invalid { path: String, why: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Whether a file of this name is checked as safetensors.
pub fn applies_to(name: &str) -> bool {
    name.ends_with(".safetensors")
}

/// Parses `bytes` as a safetensors file; returns its tensor count.
pub fn validate_bytes(bytes: &[u8]) -> Result<usize, String> {
    safetensors::SafeTensors::deserialize(bytes)
        .map(|t| t.len())
        .map_err(|e| format!("{e:?}"))
}

/// Checks the file at `path`; returns its tensor count.
pub fn validate_file(path: &Path) -> Result<usize, InvalidSafetensors> {
    let shown = path.display().to_string();
    let io = |source| InvalidSafetensors::Io {
        path: shown.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len < 8 {
        return Err(InvalidSafetensors::Invalid {
            path: shown,
            why: format!("{len} bytes is shorter than the 8-byte header length"),
        });
    }
    // SAFETY: a read-only mapping of a finished cache file that nothing writes any more.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    validate_bytes(&map).map_err(|why| InvalidSafetensors::Invalid { path: shown, why })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data_len: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.resize(v.len() + data_len, 0);
        v
    }

    #[test]
    fn accepts_sound_files_and_refuses_broken_ones() {
        let ok = r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;
        assert_eq!(validate_bytes(&file(ok, 16)), Ok(1));
        // Data shorter than the offsets say.
        assert!(validate_bytes(&file(ok, 8)).is_err());
        // Offsets that disagree with dtype x shape.
        let wrong = r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#;
        assert!(validate_bytes(&file(wrong, 16)).is_err());
        // Not JSON.
        assert!(validate_bytes(&file("{nope", 0)).is_err());
        // A header length far past the end.
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(validate_bytes(&huge).is_err());

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        std::fs::write(&p, file(ok, 16)).unwrap();
        assert_eq!(validate_file(&p).unwrap(), 1);
        std::fs::write(&p, b"tiny").unwrap();
        assert!(validate_file(&p)
            .unwrap_err()
            .to_string()
            .contains("not a valid safetensors"));
    }
}
