//! A test origin: serves the files of a directory over HTTP with Range
//! support, counts every body byte it sends, and can answer the first
//! requests with `503 Retry-After: 1` to exercise back-off.

use crate::ranged_body::{ranged, Content};
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

#[derive(Debug, Default)]
pub struct OriginStats {
    pub bytes_served: AtomicU64,
    pub requests: AtomicU64,
    pub refused_on_purpose: AtomicU64,
}

/// What `GET /_stats` answers.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct StatsSnapshot {
    pub bytes_served: u64,
    pub requests: u64,
    pub refused_on_purpose: u64,
}

impl OriginStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            bytes_served: self.bytes_served.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            refused_on_purpose: self.refused_on_purpose.load(Ordering::Relaxed),
        }
    }
}

struct Origin {
    root: PathBuf,
    stats: Arc<OriginStats>,
    fail_left: AtomicU32,
}

/// Serves `root` on `listener` until the task is dropped or aborted.
pub fn serve(
    listener: TcpListener,
    root: PathBuf,
    fail_first: u32,
) -> (Arc<OriginStats>, tokio::task::JoinHandle<()>) {
    let stats = Arc::new(OriginStats::default());
    let origin = Arc::new(Origin {
        root,
        stats: stats.clone(),
        fail_left: AtomicU32::new(fail_first),
    });
    let app = axum::Router::new()
        .route("/_stats", axum::routing::get(stats_handler))
        .route("/*path", axum::routing::get(file_handler))
        .with_state(origin);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (stats, task)
}

async fn stats_handler(State(o): State<Arc<Origin>>) -> impl IntoResponse {
    axum::Json(o.stats.snapshot())
}

fn safe_join(root: &Path, rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    p.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| root.join(p))
}

async fn file_handler(
    State(o): State<Arc<Origin>>,
    UrlPath(rel): UrlPath<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    o.stats.requests.fetch_add(1, Ordering::Relaxed);
    if o.fail_left
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
    {
        o.stats.refused_on_purpose.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "busy on purpose\n",
        )
            .into_response();
    }
    let Some(path) = safe_join(&o.root, &rel) else {
        return (StatusCode::BAD_REQUEST, "bad path\n").into_response();
    };
    let len = match tokio::fs::metadata(&path).await {
        Ok(m) if m.is_file() => m.len(),
        _ => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
    };
    let stats = o.stats.clone();
    ranged(
        &method,
        &headers,
        &Content::File(path),
        len,
        None,
        move |n| {
            stats.bytes_served.fetch_add(n, Ordering::Relaxed);
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_the_root() {
        assert!(safe_join(Path::new("/r"), "../etc/passwd").is_none());
        assert!(safe_join(Path::new("/r"), "a/b.bin").is_some());
    }
}
