//! Cache jobs a scheduler orders this peer to do: fetch a task into the
//! cache (a preheat), or evict one.
//!
//! A preheat is an ordinary download of the task (the same run any `get`
//! of it joins), with the order's digest and origin credentials; a peer
//! that already holds the task complete resumes it from disk and reports it
//! done at once. When the download fails, the reason follows its
//! `TaskLeft`, so the job's result says why. An eviction removes the task's
//! files and its RDMA region (as a discarded download does) and answers
//! whether the task was here.

use crate::download::{DownloadSpec, Mode, TaskEvent};
use crate::engine::normalize_url;
use crate::runs::Runs;
use std::sync::Arc;
use weightcast_download_core::SchedulerEvent;
use weightcast_origin::OriginAuth;
use weightcast_proto::pb::{self, peer_message::Msg as PeerMsg};
use weightcast_types::piece::digest_from_slice;
use weightcast_types::TaskId;

/// Tells a running download of `id` that it is the task's source now (a
/// seed order for a task this peer already fetches from peers: without
/// this it would wait for parents that wait for it). `false`: no run.
pub(crate) async fn become_source(runs: &Arc<Runs>, id: &TaskId) -> bool {
    let Some(run) = runs.get(id) else {
        return false;
    };
    let reason = "the scheduler made this peer the task's source".to_string();
    let _ = run
        .events
        .send(TaskEvent::Scheduler(SchedulerEvent::BackToSource {
            reason,
        }))
        .await;
    true
}

/// Starts (or joins) the download a preheat orders.
pub(crate) async fn preheat(runs: &Arc<Runs>, order: pb::PreheatTask) {
    let Ok(id) = order.task_id.parse::<TaskId>() else {
        tracing::debug!(task = %order.task_id, "ignoring a preheat order with a malformed task id");
        return;
    };
    let url = match normalize_url(&order.url) {
        Ok(u) => u,
        Err(e) => {
            report_failure(runs, id, format!("cannot preheat {}: {e}", order.url));
            return;
        }
    };
    let auth = (!order.authorization.is_empty())
        .then(|| OriginAuth::new(&url, order.authorization.clone()).ok())
        .flatten();
    tracing::info!(task = %id, %url, from_origin = order.from_origin, "preheating task into the cache");
    if order.from_origin && become_source(runs, &id).await {
        return;
    }
    let run = runs.ensure(DownloadSpec {
        id,
        url,
        digest: digest_from_slice(&order.digest),
        mode: if order.from_origin {
            Mode::Source
        } else {
            Mode::Swarm
        },
        back_to_source: true,
        auth,
        swarm: true,
    });
    let r = runs.clone();
    let mut outcome = run.outcome.clone();
    runs.tracker().spawn(async move {
        let ended = loop {
            if let Some(o) = outcome.borrow().clone() {
                break o;
            }
            if outcome.changed().await.is_err() {
                return;
            }
        };
        if let Err(e) = ended {
            report_failure(&r, id, e.to_string());
        }
    });
}

fn report_failure(runs: &Arc<Runs>, id: TaskId, reason: String) {
    let Some(link) = runs.deps().link.clone() else {
        return;
    };
    runs.tracker().spawn(async move {
        link.send(PeerMsg::TaskFailed(pb::TaskFailed {
            task_id: id.to_hex(),
            reason,
        }))
        .await;
    });
}

/// Evicts a task, unless a download of it runs here now.
pub(crate) async fn delete(runs: &Arc<Runs>, order: pb::DeleteCache) {
    let Ok(id) = order.task_id.parse::<TaskId>() else {
        tracing::debug!(task = %order.task_id, "ignoring an eviction with a malformed task id");
        return;
    };
    let deps = runs.deps();
    let (held, error) = if runs.get(&id).is_some() {
        (
            true,
            "a download of the task runs on this peer; evict it when it is over".to_string(),
        )
    } else {
        let held = deps.store.peek_meta(&id).is_some();
        if let Some(node) = deps.peers.rdma_node() {
            node.evict(&id);
        }
        deps.store.discard(&id);
        if held {
            tracing::info!(task = %id, "evicted task from the cache");
        }
        (held, String::new())
    };
    let Some(link) = &deps.link else { return };
    if held && error.is_empty() {
        link.send(PeerMsg::TaskLeft(pb::TaskLeft {
            task_id: id.to_hex(),
        }))
        .await;
    }
    link.send(PeerMsg::CacheDeleted(pb::CacheDeleted {
        task_id: id.to_hex(),
        held,
        error,
    }))
    .await;
}
