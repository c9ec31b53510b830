//! The daemon's local API: `weightcast get` talks to the node's daemon over a
//! unix socket in its data dir (or one mounted into an init container).
//!
//! One request per connection, JSON lines: the client sends a
//! [`GetRequest`]; the daemon answers with [`ApiEvent::Progress`] lines and
//! ends with [`ApiEvent::Done`] or [`ApiEvent::Error`].
//!
//! The daemon often runs as root and its socket may be mounted into
//! containers: it places a file itself only where [`output_access`] lets
//! the connected client (by its kernel credentials) have it written; a
//! client that places the file itself (`client_places`, what `weightcast
//! get` does) is only told where the verified cache file is.

use crate::cache_admin::{self, CacheOp, CacheRequest};
use crate::engine::Engine;
use crate::output_access::{self, Client, OutputPolicy};
use crate::request::{ErrorKind, GetRequest, GetSummary};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::Instrument;
use weightcast_store::TaskFile;

pub const SOCKET_NAME: &str = "weightcast.sock";

/// The longest request line read: a `get` request is a few hundred bytes.
const MAX_REQUEST: u64 = 64 << 10;
/// The longest answer a client reads (a cache listing of many tasks).
const MAX_ANSWER: u64 = 64 << 20;
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
        /// For a client that places the file itself: where the pieces are
        /// and which are verified, so that it copies them as they land
        /// (absent from older daemons, and until the task's file exists).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        placeable: Option<Placeable>,
    },
    Done(GetSummary),
    /// The answer to a [`CacheRequest`].
    Cache(weightcast_store::CacheReport),
    Error {
        message: String,
        /// What kind of failure (absent from daemons older than this field).
        #[serde(default)]
        kind: Option<ErrorKind>,
    },
}

/// A running task's file as a client that places its output copies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placeable {
    pub cache_path: PathBuf,
    pub len: u64,
    pub piece_size: u64,
    /// The verified pieces, hex of a bitset: piece `i` is bit `i % 8` of
    /// byte `i / 8`.
    pub verified: String,
}

impl Placeable {
    pub fn of(task: &TaskFile) -> Self {
        Self {
            cache_path: task.data_path(),
            len: task.layout.content_length,
            piece_size: task.layout.piece_size,
            verified: encode_mask(&task.verified_mask()),
        }
    }

    /// One flag per piece (unreadable hex: none verified, so nothing is
    /// copied early and the end copies everything).
    pub fn mask(&self) -> Vec<bool> {
        let bits = hex::decode(&self.verified).unwrap_or_default();
        (0..bits.len() * 8)
            .map(|i| bits[i / 8] & (1 << (i % 8)) != 0)
            .collect()
    }
}

/// [`Placeable::verified`] of one flag per piece.
fn encode_mask(mask: &[bool]) -> String {
    let mut bits = vec![0u8; mask.len().div_ceil(8)];
    for (i, _) in mask.iter().enumerate().filter(|(_, v)| **v) {
        bits[i / 8] |= 1 << (i % 8);
    }
    hex::encode(bits)
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
pub async fn serve(listener: UnixListener, engine: Arc<Engine>, policy: OutputPolicy) {
    let policy = Arc::new(policy);
    let stop = engine.shutting_down();
    let mut conns = tokio::task::JoinSet::new();
    let mut pause = Duration::from_millis(50);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    pause = Duration::from_millis(50);
                    let (engine, policy) = (engine.clone(), policy.clone());
                    conns.spawn(async move {
                        if let Err(e) = handle(stream, engine, &policy).await {
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

async fn handle(
    stream: UnixStream,
    engine: Arc<Engine>,
    policy: &OutputPolicy,
) -> std::io::Result<()> {
    let client = Client::of(&stream)?;
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r.take(MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    let refuse = |message: String| ApiEvent::Error {
        message,
        kind: Some(ErrorKind::BadRequest),
    };
    if let Ok(c) = serde_json::from_str::<CacheRequest>(&line) {
        return write_event(&mut w, &cache_answer(&engine, &client, c.cache).await).await;
    }
    let req: GetRequest = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => return write_event(&mut w, &refuse(format!("bad request: {e}"))).await,
    };
    if !req.output.is_absolute() {
        let message = format!("output path {} must be absolute", req.output.display());
        return write_event(&mut w, &refuse(message)).await;
    }
    // A file the daemon places itself: checked against the client's own
    // rights before anything is fetched for it.
    let target = match req.client_places {
        true => None,
        false => match output_access::authorize(policy, &client, &req.output) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(uid = client.uid, output = %req.output.display(), error = %e, "local API: output refused");
                let refused = ApiEvent::Error {
                    message: e.to_string(),
                    kind: Some(ErrorKind::Forbidden),
                };
                return write_event(&mut w, &refused).await;
            }
        },
    };
    tracing::info!(url = %req.url, output = %req.output.display(), uid = client.uid, "get via local API");
    let client_places = req.client_places;
    // The engine never places the file itself here: the checked target does.
    let req = GetRequest {
        client_places: true,
        ..req
    };
    // Progress is a latest value, not a queue: a slow client sees fewer
    // updates, never a growing backlog.
    type Latest = (u64, Option<u64>, Option<Arc<TaskFile>>);
    let (tx, mut rx) = tokio::sync::watch::channel(None::<Latest>);
    let span = tracing::info_span!("daemon get", url = %req.url, uid = client.uid);
    if let Some(parent) = &req.traceparent {
        weightcast_telemetry::set_parent(&span, parent);
    }
    let get = {
        let engine = engine.clone();
        tokio::spawn(
            async move {
                engine
                    .get_following(&req, |p, task| {
                        let task = task.filter(|_| client_places).cloned();
                        tx.send_replace(Some((p.done, p.total, task)));
                    })
                    .await
            }
            .instrument(span),
        )
    };
    let mut last = Instant::now() - PROGRESS_EVERY;
    while rx.changed().await.is_ok() {
        let Some((done, total, task)) = rx.borrow_and_update().clone() else {
            continue;
        };
        if last.elapsed() >= PROGRESS_EVERY || Some(done) == total {
            last = Instant::now();
            let placeable = task.as_deref().map(Placeable::of);
            let ev = ApiEvent::Progress {
                done,
                total,
                placeable,
            };
            write_event(&mut w, &ev).await?;
        }
    }
    let ev = match get.await {
        Ok(Ok(summary)) => match target {
            None => ApiEvent::Done(summary),
            Some(t) => place(summary, t).await,
        },
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

/// Runs a cache operation for `client`: anyone may list, only root and the
/// daemon's own user may change the cache.
async fn cache_answer(engine: &Arc<Engine>, client: &Client, op: CacheOp) -> ApiEvent {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if op.changes() && client.uid != 0 && client.uid != me {
        return ApiEvent::Error {
            message: format!(
                "uid {} may not change this daemon's cache: run it as root or as uid {me}",
                client.uid
            ),
            kind: Some(ErrorKind::Forbidden),
        };
    }
    let store = engine.store().clone();
    match tokio::task::spawn_blocking(move || cache_admin::apply(&store, &op)).await {
        Ok(Ok(report)) => ApiEvent::Cache(report),
        Ok(Err(e)) => ApiEvent::Error {
            message: e.to_string(),
            kind: Some(ErrorKind::BadRequest),
        },
        Err(e) => ApiEvent::Error {
            message: format!("internal error: {e}"),
            kind: Some(ErrorKind::Internal),
        },
    }
}

/// Places the verified file through the checked directory, owned by the
/// client (off the async workers: it may copy gigabytes).
async fn place(mut summary: GetSummary, target: output_access::Target) -> ApiEvent {
    let Some(cache) = summary.cache_path.clone() else {
        return ApiEvent::Error {
            message: "internal error: the engine named no cache file".into(),
            kind: Some(ErrorKind::Internal),
        };
    };
    let placed = tokio::task::spawn_blocking(move || {
        weightcast_store::export::place_owned(&cache, &target.path(), target.owner)
    })
    .await;
    match placed {
        Ok(Ok(how)) => {
            summary.placement = Some(how);
            ApiEvent::Done(summary)
        }
        Ok(Err(e)) => ApiEvent::Error {
            message: e.to_string(),
            kind: Some(ErrorKind::Io),
        },
        Err(e) => ApiEvent::Error {
            message: format!("internal error: {e}"),
            kind: Some(ErrorKind::Internal),
        },
    }
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

/// Runs a cache operation through a connected daemon.
pub async fn cache_via_daemon(
    stream: UnixStream,
    path: &Path,
    op: CacheOp,
) -> Result<weightcast_store::CacheReport, ClientError> {
    let io = |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    };
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(&CacheRequest { cache: op })
        .map_err(|e| io(std::io::Error::other(e)))?;
    line.push(b'\n');
    w.write_all(&line).await.map_err(io)?;
    let mut lines = BufReader::new(r.take(MAX_ANSWER)).lines();
    match lines.next_line().await.map_err(io)? {
        Some(l) => match serde_json::from_str::<ApiEvent>(&l) {
            Ok(ApiEvent::Cache(report)) => Ok(report),
            Ok(ApiEvent::Error { message, kind }) => Err(ClientError::Remote { message, kind }),
            Ok(_) => Err(ClientError::NoAnswer),
            Err(e) => Err(ClientError::Remote {
                message: format!("unreadable answer from the daemon: {e}"),
                kind: None,
            }),
        },
        None => Err(ClientError::NoAnswer),
    }
}

/// Connects to a daemon's socket; `None` when nobody answers there.
pub async fn connect(path: &Path) -> Option<UnixStream> {
    UnixStream::connect(path).await.ok()
}

/// A `get` sent to a daemon: its answer, read one event at a time.
pub struct DaemonGet {
    path: PathBuf,
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    /// Kept open until the answer is read: the daemon sees a client
    /// that went away, not a half-closed socket.
    _request: tokio::net::unix::OwnedWriteHalf,
}

/// What the daemon says about a running `get`.
#[derive(Debug)]
pub enum DaemonEvent {
    Progress {
        done: u64,
        total: Option<u64>,
        placeable: Option<Placeable>,
    },
    Done(GetSummary),
}

impl DaemonGet {
    /// Sends `req` through a connected daemon.
    pub async fn send(
        stream: UnixStream,
        path: &Path,
        req: &GetRequest,
    ) -> Result<Self, ClientError> {
        let io = |source| ClientError::Io {
            path: path.to_path_buf(),
            source,
        };
        let (r, mut w) = stream.into_split();
        let mut line = serde_json::to_vec(req).map_err(|e| io(std::io::Error::other(e)))?;
        line.push(b'\n');
        w.write_all(&line).await.map_err(io)?;
        Ok(Self {
            path: path.to_path_buf(),
            lines: BufReader::new(r).lines(),
            _request: w,
        })
    }

    /// The next event; the last is [`DaemonEvent::Done`] or an error.
    pub async fn next(&mut self) -> Result<DaemonEvent, ClientError> {
        let line = self
            .lines
            .next_line()
            .await
            .map_err(|source| ClientError::Io {
                path: self.path.clone(),
                source,
            })?;
        let Some(l) = line else {
            return Err(ClientError::NoAnswer);
        };
        match serde_json::from_str::<ApiEvent>(&l) {
            Ok(ApiEvent::Progress {
                done,
                total,
                placeable,
            }) => Ok(DaemonEvent::Progress {
                done,
                total,
                placeable,
            }),
            Ok(ApiEvent::Done(s)) => Ok(DaemonEvent::Done(s)),
            Ok(ApiEvent::Cache(_)) => Err(ClientError::NoAnswer),
            Ok(ApiEvent::Error { message, kind }) => Err(ClientError::Remote { message, kind }),
            Err(e) => Err(ClientError::Remote {
                message: format!("unreadable answer from the daemon: {e}"),
                kind: None,
            }),
        }
    }
}

/// Runs a `get` through a connected daemon.
pub async fn get_via_daemon(
    stream: UnixStream,
    path: &Path,
    req: &GetRequest,
    mut on_progress: impl FnMut(u64, Option<u64>),
) -> Result<GetSummary, ClientError> {
    let mut get = DaemonGet::send(stream, path, req).await?;
    loop {
        match get.next().await? {
            DaemonEvent::Progress { done, total, .. } => on_progress(done, total),
            DaemonEvent::Done(s) => return Ok(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verified_mask_survives_the_wire() {
        let mask: Vec<bool> = (0..21).map(|i| i % 3 == 0 || i == 20).collect();
        let p = Placeable {
            cache_path: "/data/tasks/x/data".into(),
            len: 21 << 20,
            piece_size: 1 << 20,
            verified: encode_mask(&mask),
        };
        // Piece 0 is the low bit of the first byte.
        assert!(p.verified.starts_with("49"), "{}", p.verified);
        let ev = ApiEvent::Progress {
            done: 7,
            total: Some(21 << 20),
            placeable: Some(p.clone()),
        };
        let line = serde_json::to_string(&ev).unwrap();
        let Ok(ApiEvent::Progress {
            placeable: Some(back),
            ..
        }) = serde_json::from_str(&line)
        else {
            panic!("{line}")
        };
        assert_eq!(back, p);
        // Padding bits read as unverified pieces past the end.
        assert_eq!(&back.mask()[..21], &mask[..]);
        assert!(back.mask()[21..].iter().all(|v| !v));
        // A progress line from an older daemon has no placeable.
        let old = r#"{"event":"progress","done":1,"total":null}"#;
        let Ok(ApiEvent::Progress {
            placeable: None, ..
        }) = serde_json::from_str(old)
        else {
            panic!("an older daemon's line")
        };
        // Unreadable hex: nothing counts as verified.
        let bad = Placeable {
            verified: "zz".into(),
            ..back
        };
        assert!(bad.mask().iter().all(|v| !v));
    }
}
