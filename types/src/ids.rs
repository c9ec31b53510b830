//! Task and peer identifiers.
//!
//! A task is one file. Its id is derived from its content digest when the
//! origin or the user publishes one, so the same blob under two URLs is one
//! task and one cache entry; otherwise from the normalized URL.

use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// 32-byte task id, shown as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub [u8; 32]);

impl TaskId {
    /// The id of a file whose sha256 is known in advance.
    pub fn from_sha256(digest: &[u8; 32]) -> Self {
        Self::hash_of(b"sha256:", digest)
    }

    /// The id of a file known only by its URL. The URL should already be
    /// normalized by the caller (scheme and host lower-cased, no fragment).
    pub fn from_url(url: &str) -> Self {
        Self::hash_of(b"url:", url.as_bytes())
    }

    fn hash_of(kind: &[u8], data: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(kind);
        h.update(data);
        TaskId(h.finalize().into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({})", &self.to_hex()[..12])
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid task id {0:?}: expected 64 hex characters")]
pub struct InvalidTaskId(String);

impl FromStr for TaskId {
    type Err = InvalidTaskId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| InvalidTaskId(s.to_string()))?;
        Ok(TaskId(out))
    }
}

/// A peer: one daemon (or one in-process `get`) for the lifetime of its process.
pub type PeerId = String;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_id_round_trips_through_hex() {
        let id = TaskId::from_url("https://example.com/a");
        assert_eq!(id.to_hex().parse::<TaskId>().unwrap(), id);
        assert!("xyz".parse::<TaskId>().is_err());
    }

    #[test]
    fn digest_and_url_ids_differ() {
        let d = [7u8; 32];
        assert_ne!(TaskId::from_sha256(&d), TaskId::from_url(&hex::encode(d)));
        assert_eq!(TaskId::from_sha256(&d), TaskId::from_sha256(&d));
    }
}
