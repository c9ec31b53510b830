//! A test origin: serves the files of a directory over HTTP with Range
//! support, counts every body byte it sends, and can answer the first
//! requests with `503 Retry-After: 1` to exercise back-off.

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;
use weightcast_proto::http_range;

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
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let len = match file.metadata().await {
        Ok(m) if m.is_file() => m.len(),
        _ => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
    };
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, count) = match range {
        None => (StatusCode::OK, 0, len),
        Some(r) => match http_range::parse(r, len) {
            Some((a, b)) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
            None => {
                return (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{len}"))],
                    "",
                )
                    .into_response()
            }
        },
    };
    if file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let stats = o.stats.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(count), 256 << 10).map(
        move |chunk| {
            if let Ok(c) = &chunk {
                stats
                    .bytes_served
                    .fetch_add(c.len() as u64, Ordering::Relaxed);
            }
            chunk
        },
    );
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::ACCEPT_RANGES, "bytes".parse().expect("static"));
    h.insert(header::CONTENT_LENGTH, count.into());
    if status == StatusCode::PARTIAL_CONTENT {
        let v = format!("bytes {}-{}/{}", start, start + count - 1, len);
        h.insert(header::CONTENT_RANGE, v.parse().expect("ascii"));
    }
    resp
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
