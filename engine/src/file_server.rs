//! A directory served over HTTP with `Range` support, counting every body
//! byte it sends: the origin of `weightcast demo`, and the base that the
//! test kit's fault-injecting origin wraps.

use crate::http_body::{content_response, Content};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What the server counted.
#[derive(Debug, Default)]
pub struct ServedStats {
    pub bytes_served: AtomicU64,
    pub requests: AtomicU64,
}

/// What `GET /_stats` answers.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct StatsSnapshot {
    pub bytes_served: u64,
    pub requests: u64,
    /// Requests a test origin failed on purpose (0 for a plain one).
    #[serde(default)]
    pub refused_on_purpose: u64,
}

impl ServedStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            bytes_served: self.bytes_served.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            refused_on_purpose: 0,
        }
    }
}

#[derive(Clone)]
struct Root {
    dir: PathBuf,
    stats: Arc<ServedStats>,
}

/// `GET`/`HEAD /<relative path>` for the files under `dir`, and
/// `GET /_stats`. Paths with `..` or absolute components are refused.
pub fn router(dir: PathBuf, stats: Arc<ServedStats>) -> axum::Router {
    axum::Router::new()
        .route(
            "/_stats",
            axum::routing::get(
                |State(r): State<Root>| async move { axum::Json(r.stats.snapshot()) },
            ),
        )
        .route("/*path", axum::routing::get(file))
        .with_state(Root { dir, stats })
}

/// Serves [`router`] on `listener` until it fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    dir: PathBuf,
    stats: Arc<ServedStats>,
) -> std::io::Result<()> {
    axum::serve(listener, router(dir, stats)).await
}

/// `root/rel` when `rel` stays under `root`.
pub fn safe_join(root: &Path, rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    p.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| root.join(p))
}

async fn file(
    State(r): State<Root>,
    UrlPath(rel): UrlPath<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    r.stats.requests.fetch_add(1, Ordering::Relaxed);
    let Some(path) = safe_join(&r.dir, &rel) else {
        return (StatusCode::BAD_REQUEST, "bad path\n").into_response();
    };
    let (len, etag) = match tokio::fs::metadata(&path).await {
        Ok(m) if m.is_file() => (m.len(), etag_of(&m)),
        _ => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
    };
    let stats = r.stats.clone();
    content_response(
        &method,
        &headers,
        &Content::File(path),
        len,
        Some(&etag),
        move |n| {
            stats.bytes_served.fetch_add(n, Ordering::Relaxed);
        },
    )
    .await
}

/// A file's `ETag`, as nginx makes one: its modification time and length,
/// so a file rewritten in place gets another one and a downloader notices.
fn etag_of(m: &std::fs::Metadata) -> String {
    let mtime = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("\"{mtime:x}-{:x}\"", m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_the_root() {
        assert!(safe_join(Path::new("/r"), "../etc/passwd").is_none());
        assert!(safe_join(Path::new("/r"), "/etc/passwd").is_none());
        assert!(safe_join(Path::new("/r"), "a/b.bin").is_some());
    }
}
