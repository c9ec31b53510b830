//! The downloads an engine runs, one per task: every `get`, streaming
//! reader and seed order of the same task joins the same run.

use crate::download::{self, DownloadDeps, DownloadError, DownloadSpec, Progress, TaskEvent};
use futures::FutureExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use weightcast_store::TaskFile;
use weightcast_types::TaskId;

/// Events queued for one download before senders wait (backpressure on
/// the scheduler stream, not unbounded memory).
const EVENT_QUEUE: usize = 256;

/// How a run ended; `None` while it runs.
pub(crate) type Outcome = Option<Result<Arc<TaskFile>, Arc<DownloadError>>>;

/// A download in progress, shared by every waiter on its task.
pub(crate) struct TaskRun {
    pub events: mpsc::Sender<TaskEvent>,
    pub progress: watch::Receiver<Progress>,
    pub outcome: watch::Receiver<Outcome>,
}

/// The running downloads, by task.
pub(crate) struct Runs {
    deps: Arc<DownloadDeps>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    map: Mutex<HashMap<TaskId, Arc<TaskRun>>>,
}

impl Runs {
    pub fn new(deps: Arc<DownloadDeps>, tracker: TaskTracker, cancel: CancellationToken) -> Self {
        Self {
            deps,
            tracker,
            cancel,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Arc<TaskRun>>> {
        // A panic while holding this lock cannot leave the map half-updated
        // (every update is a single insert or remove).
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn deps(&self) -> &Arc<DownloadDeps> {
        &self.deps
    }

    /// The engine's task tracker: what the engine runs beside a download
    /// (a preheat's report) stops with it.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    pub fn get(&self, id: &TaskId) -> Option<Arc<TaskRun>> {
        self.lock().get(id).cloned()
    }

    pub fn all(&self) -> Vec<Arc<TaskRun>> {
        self.lock().values().cloned().collect()
    }

    /// Joins the download of `spec.id`, starting it if none runs.
    pub fn ensure(self: &Arc<Self>, spec: DownloadSpec) -> Arc<TaskRun> {
        let mut map = self.lock();
        if let Some(r) = map.get(&spec.id) {
            return r.clone();
        }
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let (progress_tx, progress_rx) = watch::channel(Progress::default());
        let (outcome_tx, outcome_rx) = watch::channel(None);
        let run = Arc::new(TaskRun {
            events: events_tx,
            progress: progress_rx,
            outcome: outcome_rx,
        });
        map.insert(spec.id, run.clone());
        drop(map);
        let m = self.deps.metrics.clone();
        m.inc(&m.tasks_active, 1);
        let runs = self.clone();
        let (id, url) = (spec.id, spec.url.clone());
        let shared = spec.swarm && self.deps.link.is_some();
        // The download's span is a child of whoever started it (a get, a
        // seed order, a preheat): later joiners share the one download.
        let span = tracing::info_span!(
            "download",
            task = %spec.id,
            url = %spec.url,
            mode = ?spec.mode,
        );
        let task = download::run(
            self.deps.clone(),
            spec,
            events_rx,
            progress_tx.clone(),
            self.cancel.child_token(),
        )
        .instrument(span);
        self.tracker.spawn(async move {
            // Readers must never see progress end before the outcome is in:
            // this copy of the sender lives until the outcome is sent.
            let progress_alive = progress_tx;
            // A panic in the download itself must still end the run, or
            // its waiters would wait forever on a task that is gone.
            let r = std::panic::AssertUnwindSafe(task)
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    Err(DownloadError::Internal {
                        url: url.clone(),
                        what: "the download panicked".into(),
                    })
                });
            m.dec(&m.tasks_active);
            let outcome = match r {
                Ok(file) => {
                    m.inc(&m.tasks_completed, 1);
                    if shared {
                        if let Err(e) = runs.deps.store.mark_shared(&id) {
                            tracing::warn!(task = %id, error = %e, "cannot mark the task as shared; after a restart this peer will not announce it");
                        }
                    }
                    let p = progress_alive.borrow().clone();
                    tracing::info!(task = %id, %url, from_peers = p.from_peers, from_origin = p.from_origin, "task complete");
                    Ok(file)
                }
                Err(e) => {
                    m.inc(&m.tasks_failed, 1);
                    tracing::info!(task = %id, %url, error = %e, "task failed");
                    Err(Arc::new(e))
                }
            };
            runs.lock().remove(&id);
            let _ = outcome_tx.send(Some(outcome));
            drop(progress_alive);
        });
        run
    }
}
