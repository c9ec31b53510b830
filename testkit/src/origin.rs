//! The test origin: the product's ranged file server
//! ([`weightcast_engine::file_server`]) with faults injected on purpose,
//! so tests see what real origins do to a downloader.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use weightcast_engine::file_server::{self, ServedStats, StatsSnapshot};

/// Faults the origin injects.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Answer the first N file requests with `fail_status` and
    /// `Retry-After: 1`.
    pub fail_first: u32,
    /// The status of those answers; 0: `503`.
    pub fail_status: u16,
    /// Cut the connection halfway through the body of the first N ranged
    /// answers of more than one byte (a reset mid-body).
    pub reset_first: u32,
    /// Stop sending halfway through the body of the first N ranged answers
    /// of more than one byte, keeping the connection open (a stalled body:
    /// only the client's read timeout ends it).
    pub stall_first: u32,
}

/// What the origin counted, faults included.
#[derive(Debug, Default)]
pub struct OriginStats {
    pub served: Arc<ServedStats>,
    pub refused_on_purpose: AtomicU64,
}

impl OriginStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            refused_on_purpose: self.refused_on_purpose.load(Ordering::Relaxed),
            ..self.served.snapshot()
        }
    }
}

struct FaultState {
    stats: Arc<OriginStats>,
    fail_left: AtomicU32,
    fail_status: StatusCode,
    reset_left: AtomicU32,
    stall_left: AtomicU32,
}

fn take_one(n: &AtomicU32) -> bool {
    n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
}

/// `resp`'s body up to half its length, as a stream of chunks: the chunk
/// that crosses the half is cut there, so that the body really stops
/// halfway however large the file server's chunks are (a body sent as one
/// chunk would otherwise go out whole).
fn first_half(
    body: axum::body::Body,
    len: usize,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> {
    use futures::StreamExt;
    body.into_data_stream()
        .map(|chunk| chunk.map_err(std::io::Error::other))
        .scan(len / 2, |left, chunk| {
            let out = match chunk {
                _ if *left == 0 => None,
                Ok(c) => {
                    let n = c.len().min(*left);
                    *left -= n;
                    Some(Ok(c.slice(..n)))
                }
                Err(e) => Some(Err(e)),
            };
            futures::future::ready(out)
        })
}

fn content_length(resp: &Response) -> usize {
    resp.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .unwrap_or(0)
}

/// `resp` with its body cut after about half its length: the client sees
/// the connection end mid-body.
fn cut_halfway(resp: Response) -> Response {
    use futures::StreamExt;
    let len = content_length(&resp);
    let (mut parts, body) = resp.into_parts();
    let reset = futures::stream::once(async {
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset on purpose",
        ))
    });
    parts
        .headers
        .insert(header::CONNECTION, "close".parse().expect("a valid header"));
    let stream = first_half(body, len).chain(reset);
    Response::from_parts(parts, axum::body::Body::from_stream(stream))
}

/// `resp` whose body stops after about half its length and then sends
/// nothing, the connection left open: the client sees a stalled body.
fn stall_halfway(resp: Response) -> Response {
    use futures::StreamExt;
    let len = content_length(&resp);
    let (parts, body) = resp.into_parts();
    let stalled = first_half(body, len).chain(futures::stream::pending());
    Response::from_parts(parts, axum::body::Body::from_stream(stalled))
}

async fn inject(State(f): State<Arc<FaultState>>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/_stats" {
        return axum::Json(f.stats.snapshot()).into_response();
    }
    if take_one(&f.fail_left) {
        f.stats.served.requests.fetch_add(1, Ordering::Relaxed);
        f.stats.refused_on_purpose.fetch_add(1, Ordering::Relaxed);
        return (
            f.fail_status,
            [(header::RETRY_AFTER, "1")],
            "failing on purpose\n",
        )
            .into_response();
    }
    let resp = next.run(req).await;
    let long = content_length(&resp) > 1;
    if resp.status() == StatusCode::PARTIAL_CONTENT && long && take_one(&f.reset_left) {
        f.stats.refused_on_purpose.fetch_add(1, Ordering::Relaxed);
        return cut_halfway(resp);
    }
    if resp.status() == StatusCode::PARTIAL_CONTENT && long && take_one(&f.stall_left) {
        f.stats.refused_on_purpose.fetch_add(1, Ordering::Relaxed);
        return stall_halfway(resp);
    }
    resp
}

/// Serves `root` on `listener` with `faults` until the task is dropped or
/// aborted. `GET /_stats` answers [`StatsSnapshot`].
pub fn serve(
    listener: TcpListener,
    root: PathBuf,
    faults: Faults,
) -> (Arc<OriginStats>, tokio::task::JoinHandle<()>) {
    let stats = Arc::new(OriginStats::default());
    let state = Arc::new(FaultState {
        stats: stats.clone(),
        fail_left: AtomicU32::new(faults.fail_first),
        fail_status: match faults.fail_status {
            0 => StatusCode::SERVICE_UNAVAILABLE,
            s => StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        },
        reset_left: AtomicU32::new(faults.reset_first),
        stall_left: AtomicU32::new(faults.stall_first),
    });
    let app = file_server::router(root, stats.served.clone())
        .layer(axum::middleware::from_fn_with_state(state, inject));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (stats, task)
}

/// A test origin on loopback, served by a runtime of its own on a
/// background thread (tests need no async runtime); stopped on drop.
pub struct TestOrigin {
    pub addr: String,
    pub stats: Arc<OriginStats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestOrigin {
    pub fn start(root: PathBuf, faults: Faults) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?.to_string();
        let (stats, task) = rt.block_on(async { serve(listener, root, faults) });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let _ = stopped.await;
                task.abort();
            });
        });
        Ok(Self {
            addr,
            stats,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TestOrigin {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
