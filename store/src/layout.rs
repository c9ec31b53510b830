//! Where a task's files lie under the data dir, and the metadata file that
//! says what a task directory holds.
//!
//! ```text
//! <data-dir>/tasks/<task-id>/data       the file's bytes (fallocate'd, mmap'd)
//! <data-dir>/tasks/<task-id>/meta.json  url, content length, piece size
//! <data-dir>/tasks/<task-id>/pieces     the piece table (see piece_table)
//! <data-dir>/tasks/<task-id>/shared     present: a swarm task, announced again after a restart
//! ```
//! `meta.json` is written last when a task is created, so a directory
//! without it (a crash mid-creation) is never resumed.

use crate::error::{io_err, StoreError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use weightcast_types::TaskId;

/// The `tasks` directory of a data dir.
#[derive(Debug, Clone)]
pub struct StoreLayout {
    tasks: PathBuf,
}

impl StoreLayout {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            tasks: data_dir.join("tasks"),
        }
    }

    pub fn tasks_dir(&self) -> &Path {
        &self.tasks
    }

    pub fn task(&self, id: &TaskId) -> TaskDir {
        TaskDir {
            dir: self.tasks.join(id.to_hex()),
        }
    }
}

/// One task's directory.
#[derive(Debug, Clone)]
pub struct TaskDir {
    dir: PathBuf,
}

impl TaskDir {
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The file's bytes.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn meta(&self) -> PathBuf {
        self.dir.join("meta.json")
    }

    pub fn pieces(&self) -> PathBuf {
        self.dir.join("pieces")
    }

    /// Present when the task was downloaded in the swarm (not a private
    /// download): a restarted peer announces only such tasks again.
    pub fn shared_marker(&self) -> PathBuf {
        self.dir.join("shared")
    }

    /// The task's metadata, if the directory is complete enough to resume.
    pub fn read_meta(&self) -> Option<TaskMeta> {
        let bytes = std::fs::read(self.meta()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub(crate) fn write_meta(&self, meta: &TaskMeta) -> Result<(), StoreError> {
        let path = self.meta();
        let json = serde_json::to_vec(meta).map_err(|e| io_err(&path)(e.into()))?;
        std::fs::write(&path, json).map_err(io_err(&path))
    }

    /// Deletes the directory and everything in it (a missing one is fine).
    pub(crate) fn remove(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove a task directory");
            }
        }
    }
}

/// What `meta.json` records: enough to tell whether the bytes on disk are
/// the ones a new request wants.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskMeta {
    pub url: String,
    pub content_length: u64,
    pub piece_size: u64,
}

impl TaskMeta {
    /// Whether a task on disk with this metadata can be resumed for `want`:
    /// the same bytes cut the same way (the URL may differ, e.g. a CDN
    /// redirect of a digest-keyed task).
    pub fn resumable_as(&self, want: &TaskMeta) -> bool {
        self.content_length == want.content_length && self.piece_size == want.piece_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_lives_in_its_own_directory_and_its_meta_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let layout = StoreLayout::new(d.path());
        let t = layout.task(&TaskId([0xab; 32]));
        assert_eq!(t.path(), d.path().join("tasks").join("ab".repeat(32)));
        assert_eq!(t.data(), t.path().join("data"));
        assert!(t.read_meta().is_none(), "no directory, nothing to resume");
        std::fs::create_dir_all(t.path()).unwrap();
        let meta = TaskMeta {
            url: "u".into(),
            content_length: 10,
            piece_size: 4 << 20,
        };
        t.write_meta(&meta).unwrap();
        assert_eq!(t.read_meta(), Some(meta.clone()));
        let other_url = TaskMeta {
            url: "v".into(),
            ..meta.clone()
        };
        assert!(other_url.resumable_as(&meta));
        let longer = TaskMeta {
            content_length: 11,
            ..meta.clone()
        };
        assert!(!longer.resumable_as(&meta));
        std::fs::write(t.meta(), b"{not json").unwrap();
        assert!(t.read_meta().is_none(), "a torn meta.json is not resumed");
        t.remove();
        assert!(!t.path().exists());
        t.remove();
    }
}
