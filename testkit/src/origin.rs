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
    /// Answer the first N file requests with `503` and `Retry-After: 1`.
    pub fail_first: u32,
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
}

async fn inject(State(f): State<Arc<FaultState>>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/_stats" {
        return axum::Json(f.stats.snapshot()).into_response();
    }
    if f.fail_left
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
    {
        f.stats.served.requests.fetch_add(1, Ordering::Relaxed);
        f.stats.refused_on_purpose.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "busy on purpose\n",
        )
            .into_response();
    }
    next.run(req).await
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
