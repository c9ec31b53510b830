//! A download seen from a streaming reader (the Hugging Face endpoint, the
//! registry mirror): its pieces as they are verified.

use crate::download::{Progress, TaskEvent};
use crate::request::GetError;
use crate::runs::{Outcome, TaskRun};
use std::sync::Arc;
use tokio::sync::watch;
use weightcast_store::{Store, TaskFile, VerifiedPiece};
use weightcast_types::TaskId;

pub struct TaskWatch(WatchState);

enum WatchState {
    Complete(Arc<TaskFile>),
    Running {
        id: TaskId,
        store: Arc<Store>,
        run: Arc<TaskRun>,
        progress: watch::Receiver<Progress>,
        outcome: watch::Receiver<Outcome>,
        wanted: Option<u32>,
    },
}

impl TaskWatch {
    pub(crate) fn complete(file: Arc<TaskFile>) -> Self {
        Self(WatchState::Complete(file))
    }

    pub(crate) fn running(id: TaskId, store: Arc<Store>, run: Arc<TaskRun>) -> Self {
        Self(WatchState::Running {
            id,
            store,
            progress: run.progress.clone(),
            outcome: run.outcome.clone(),
            run,
            wanted: None,
        })
    }

    /// Waits for `ready` to give a value, re-checking after every verified
    /// piece; fails when the download does.
    async fn wait<T>(
        &mut self,
        mut ready: impl FnMut(&Arc<TaskFile>, bool) -> Option<T>,
    ) -> Result<T, GetError> {
        loop {
            match &mut self.0 {
                WatchState::Complete(f) => {
                    return ready(f, true).ok_or(GetError::ShuttingDown);
                }
                WatchState::Running {
                    id,
                    store,
                    progress,
                    outcome,
                    ..
                } => {
                    let done = outcome.borrow().clone();
                    match done {
                        Some(Ok(f)) => self.0 = WatchState::Complete(f),
                        Some(Err(e)) => return Err(GetError::Download(e)),
                        None => {
                            if let Some(v) = store.get(id).and_then(|f| ready(&f, false)) {
                                return Ok(v);
                            }
                            tokio::select! {
                                r = outcome.changed() => if r.is_err() { return Err(GetError::ShuttingDown) },
                                // Progress only ends after the outcome is in:
                                // the next turn sees it.
                                _ = progress.changed() => {},
                            }
                        }
                    }
                }
            }
        }
    }

    /// The task's file, once its length is known.
    pub async fn file(&mut self) -> Result<Arc<TaskFile>, GetError> {
        self.wait(|f, _| Some(f.clone())).await
    }

    /// Piece `num`, once verified. The last piece is handed out only after
    /// the whole file matched its digest, so a reader never receives all of
    /// a file that turns out wrong.
    pub async fn piece(&mut self, num: u32) -> Result<VerifiedPiece, GetError> {
        if let WatchState::Running { run, wanted, .. } = &mut self.0 {
            if *wanted != Some(num) {
                *wanted = Some(num);
                let _ = run.events.send(TaskEvent::Wanted(num)).await;
            }
        }
        self.wait(|f, complete| {
            let last = f.layout.piece_count().saturating_sub(1);
            if num == last && !complete {
                return None;
            }
            f.verified_piece(num)
        })
        .await
    }
}
