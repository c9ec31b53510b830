//! `weightcast cache ls|rm|gc`: what the cache holds, removing a task,
//! collecting now. The daemon answers these on its local API; with no
//! daemon, the CLI applies them to the data dir itself.

use crate::engine::{normalize_url, task_id};
use serde::{Deserialize, Serialize};
use weightcast_store::{CacheReport, RemoveError, Store};
use weightcast_types::TaskId;

/// One cache operation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CacheOp {
    /// List the tasks, least recently used first.
    Ls,
    /// Remove a task (by task id or URL), pinned or not, unless it is in use.
    Rm { task: String },
    /// Collect now: expired tasks, and down to the low watermark.
    Gc,
}

impl CacheOp {
    /// Whether the op changes the cache (only the daemon's own user and
    /// root may ask that of a daemon).
    pub fn changes(&self) -> bool {
        !matches!(self, CacheOp::Ls)
    }
}

/// What the local API reads when a line is a cache request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheRequest {
    pub cache: CacheOp,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheOpError {
    #[error("{0:?} is neither a task id (64 hex characters) nor a URL: {1}")]
    BadTask(String, String),
    #[error(transparent)]
    Remove(#[from] RemoveError),
}

/// The task a `cache rm` argument names.
fn task_of(arg: &str) -> Result<TaskId, CacheOpError> {
    if let Ok(id) = arg.parse::<TaskId>() {
        return Ok(id);
    }
    normalize_url(arg)
        .and_then(|u| task_id(&u, None))
        .map_err(|e| CacheOpError::BadTask(arg.to_string(), e.to_string()))
}

/// Applies `op` to `store` (blocking: it reads the task directories).
pub fn apply(store: &Store, op: &CacheOp) -> Result<CacheReport, CacheOpError> {
    let evicted = match op {
        CacheOp::Ls => Vec::new(),
        CacheOp::Rm { task } => {
            let id = task_of(task)?;
            match store.remove(&id)? {
                true => vec![id.to_hex()],
                false => Vec::new(),
            }
        }
        CacheOp::Gc => store
            .collect(0)
            .into_iter()
            .map(|(id, _)| id.to_hex())
            .collect(),
    };
    Ok(CacheReport {
        evicted,
        ..store.report()
    })
}
