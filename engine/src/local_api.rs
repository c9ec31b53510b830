//! The daemon's local API: `weightcast get` talks to the node's daemon over a
//! unix socket in its data dir (or one mounted into an init container).
//!
//! One request per connection, JSON lines: the client sends a
//! [`GetRequest`]; the daemon answers with [`ApiEvent::Progress`] lines and
//! ends with [`ApiEvent::Done`] or [`ApiEvent::Error`].

use crate::engine::{Engine, GetRequest, GetSummary};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

pub const SOCKET_NAME: &str = "weightcast.sock";

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ApiEvent {
    Progress { done: u64, total: Option<u64> },
    Done(GetSummary),
    Error { message: String },
}

/// Binds the socket, replacing a stale one that nobody answers on.
pub async fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another daemon already serves {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path)
}

pub async fn serve(listener: UnixListener, engine: Arc<Engine>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, engine).await {
                tracing::debug!(error = %e, "local API connection ended");
            }
        });
    }
}

async fn write_event(w: &mut (impl AsyncWriteExt + Unpin), ev: &ApiEvent) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(ev).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}

async fn handle(stream: UnixStream, engine: Arc<Engine>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await?;
    let req: GetRequest = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            let message = format!("bad request: {e}");
            return write_event(&mut w, &ApiEvent::Error { message }).await;
        }
    };
    if !req.output.is_absolute() {
        let message = format!("output path {} must be absolute", req.output.display());
        return write_event(&mut w, &ApiEvent::Error { message }).await;
    }
    tracing::info!(url = %req.url, output = %req.output.display(), "get via local API");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let get = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut last = Instant::now() - Duration::from_secs(1);
            engine
                .get(&req, |p| {
                    if last.elapsed() >= Duration::from_millis(200) || Some(p.done) == p.total {
                        last = Instant::now();
                        let _ = tx.send(ApiEvent::Progress {
                            done: p.done,
                            total: p.total,
                        });
                    }
                })
                .await
        })
    };
    while let Some(ev) = rx.recv().await {
        write_event(&mut w, &ev).await?;
    }
    let ev = match get.await {
        Ok(Ok(summary)) => ApiEvent::Done(summary),
        Ok(Err(e)) => ApiEvent::Error {
            message: e.to_string(),
        },
        Err(e) => ApiEvent::Error {
            message: format!("internal error: {e}"),
        },
    };
    write_event(&mut w, &ev).await
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("daemon socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Remote(String),
    #[error("the daemon closed the connection without an answer")]
    NoAnswer,
}

/// Connects to a daemon's socket; `None` when nobody answers there.
pub async fn connect(path: &Path) -> Option<UnixStream> {
    UnixStream::connect(path).await.ok()
}

/// Runs a `get` through a connected daemon.
pub async fn get_via_daemon(
    stream: UnixStream,
    path: &Path,
    req: &GetRequest,
    mut on_progress: impl FnMut(u64, Option<u64>),
) -> Result<GetSummary, ClientError> {
    let io = |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    };
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(req).map_err(|e| io(std::io::Error::other(e)))?;
    line.push(b'\n');
    w.write_all(&line).await.map_err(io)?;
    let mut lines = BufReader::new(r).lines();
    while let Some(l) = lines.next_line().await.map_err(io)? {
        match serde_json::from_str::<ApiEvent>(&l) {
            Ok(ApiEvent::Progress { done, total }) => on_progress(done, total),
            Ok(ApiEvent::Done(s)) => return Ok(s),
            Ok(ApiEvent::Error { message }) => return Err(ClientError::Remote(message)),
            Err(e) => {
                return Err(ClientError::Remote(format!(
                    "unreadable answer from the daemon: {e}"
                )))
            }
        }
    }
    Err(ClientError::NoAnswer)
}
