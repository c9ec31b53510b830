//! The daemon's local API: `weightcast get` talks to the node's daemon over a
//! unix socket in its data dir (or one mounted into an init container).
//!
//! One request per connection, JSON lines: the client sends a
//! [`GetRequest`]; the daemon answers with [`ApiEvent::Progress`] lines and
//! ends with [`ApiEvent::Done`] or [`ApiEvent::Error`].

use crate::engine::Engine;
use crate::request::{ErrorKind, GetRequest, GetSummary};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

pub const SOCKET_NAME: &str = "weightcast.sock";

/// The longest request line read: a `get` request is a few hundred bytes.
const MAX_REQUEST: u64 = 64 << 10;
/// Progress lines at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ApiEvent {
    Progress {
        done: u64,
        total: Option<u64>,
    },
    Done(GetSummary),
    Error {
        message: String,
        /// What kind of failure (absent from daemons older than this field).
        #[serde(default)]
        kind: Option<ErrorKind>,
    },
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

/// Serves requests until the engine shuts down. Each connection is a task
/// of its own, owned here: they end with the server. A failed accept is
/// retried after a pause, never in a busy loop.
pub async fn serve(listener: UnixListener, engine: Arc<Engine>) {
    let stop = engine.shutting_down();
    let mut conns = tokio::task::JoinSet::new();
    let mut pause = Duration::from_millis(50);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    pause = Duration::from_millis(50);
                    let engine = engine.clone();
                    conns.spawn(async move {
                        if let Err(e) = handle(stream, engine).await {
                            tracing::debug!(error = %e, "local API connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "local API cannot accept a connection; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
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
    BufReader::new(r.take(MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    let refuse = |message: String| ApiEvent::Error {
        message,
        kind: Some(ErrorKind::BadRequest),
    };
    let req: GetRequest = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => return write_event(&mut w, &refuse(format!("bad request: {e}"))).await,
    };
    if !req.output.is_absolute() {
        let message = format!("output path {} must be absolute", req.output.display());
        return write_event(&mut w, &refuse(message)).await;
    }
    tracing::info!(url = %req.url, output = %req.output.display(), "get via local API");
    // Progress is a latest value, not a queue: a slow client sees fewer
    // updates, never a growing backlog.
    let (tx, mut rx) = tokio::sync::watch::channel(None::<(u64, Option<u64>)>);
    let get = {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine
                .get(&req, |p| {
                    tx.send_replace(Some((p.done, p.total)));
                })
                .await
        })
    };
    let mut last = Instant::now() - PROGRESS_EVERY;
    while rx.changed().await.is_ok() {
        let Some((done, total)) = *rx.borrow_and_update() else {
            continue;
        };
        if last.elapsed() >= PROGRESS_EVERY || Some(done) == total {
            last = Instant::now();
            write_event(&mut w, &ApiEvent::Progress { done, total }).await?;
        }
    }
    let ev = match get.await {
        Ok(Ok(summary)) => ApiEvent::Done(summary),
        Ok(Err(e)) => ApiEvent::Error {
            message: weightcast_origin::error_chain(&e),
            kind: Some(e.kind()),
        },
        Err(e) => ApiEvent::Error {
            message: format!("internal error: {e}"),
            kind: Some(ErrorKind::Internal),
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
    /// The daemon's error, with its kind when the daemon said.
    #[error("{message}")]
    Remote {
        message: String,
        kind: Option<ErrorKind>,
    },
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
            Ok(ApiEvent::Error { message, kind }) => {
                return Err(ClientError::Remote { message, kind })
            }
            Err(e) => {
                return Err(ClientError::Remote {
                    message: format!("unreadable answer from the daemon: {e}"),
                    kind: None,
                })
            }
        }
    }
    Err(ClientError::NoAnswer)
}
