//! Scheduler messages to the download they concern: decoded from protobuf
//! at this edge (malformed ids and digests stop here), filtered by what this
//! peer's transport accepts, and queued on the task's run. A seed order
//! starts a download of its own; cache jobs (preheat, eviction) go to
//! [`cache_orders`].

use crate::cache_orders;
use crate::download::{DownloadSpec, Mode, TaskEvent};
use crate::engine::{normalize_url, task_id};
use crate::held;
use crate::peer_transport::PeerTransport;
use crate::runs::Runs;
use crate::scheduler_link::LinkEvent;
use std::sync::Arc;
use tokio::sync::mpsc;
use weightcast_download_core::{ParentInfo, SchedulerEvent};
use weightcast_proto::pb::{self, scheduler_message::Msg as SchedMsg};
use weightcast_types::piece::digest_from_slice;
use weightcast_types::TaskId;

/// Routes every event of the scheduler link until the link goes.
pub(crate) async fn run(runs: Arc<Runs>, mut events: mpsc::Receiver<LinkEvent>) {
    let peers = &runs.deps().peers;
    while let Some(ev) = events.recv().await {
        match ev {
            LinkEvent::Connected => held::announce(&runs).await,
            LinkEvent::Reconnected => {
                for run in runs.all() {
                    let _ = run.events.send(TaskEvent::Reconnected).await;
                }
                held::announce(&runs).await;
            }
            LinkEvent::Lost => {
                for run in runs.all() {
                    let _ = run.events.send(TaskEvent::SchedulerLost).await;
                }
            }
            LinkEvent::Message(SchedMsg::SeedTask(s)) => {
                // The seed's work joins the trace of the download that
                // made the scheduler order it.
                let span = tracing::info_span!("seed order", task = %s.task_id);
                weightcast_telemetry::set_parent(&span, &s.traceparent);
                let Some((id, url, digest)) = span.in_scope(|| seed_order(s)) else {
                    continue;
                };
                // Already downloading it from peers (a get, a preheat): that
                // download becomes the source instead of waiting for one.
                if cache_orders::become_source(&runs, &id).await {
                    continue;
                }
                span.in_scope(|| {
                    tracing::info!(task = %id, %url, "seeding task from its origin");
                    runs.ensure(DownloadSpec {
                        id,
                        url,
                        digest,
                        mode: Mode::Source,
                        back_to_source: true,
                        auth: None,
                        swarm: true,
                    })
                });
            }
            LinkEvent::Message(SchedMsg::OriginBudget(b)) => {
                match runs.deps().origin.set_budget(&b.origin, b.bytes_per_second) {
                    Ok(()) => {
                        tracing::info!(origin = %b.origin, bytes_per_second = b.bytes_per_second, "the scheduler set this peer's share of the origin's rate budget (0: none)")
                    }
                    Err(e) => {
                        tracing::debug!(origin = %b.origin, error = %e, "ignoring a rate budget for an unusable origin")
                    }
                }
            }
            LinkEvent::Message(SchedMsg::Preheat(p)) => cache_orders::preheat(&runs, p).await,
            LinkEvent::Message(SchedMsg::DeleteCache(d)) => cache_orders::delete(&runs, d).await,
            LinkEvent::Message(m) => {
                let Some((id, ev)) = decode(m, peers) else {
                    continue;
                };
                // A message for a finished task has no run: nothing to do.
                if let Some(run) = runs.get(&id) {
                    let _ = run.events.send(TaskEvent::Scheduler(ev)).await;
                }
            }
        }
    }
}

/// A seed order's task, URL and whole-file digest, when the order is one
/// to obey: its task id must be the id of its URL or of its digest (the
/// rule of [`weightcast_types::task_key`]). Otherwise whoever sent it could
/// make this seed fetch one URL and serve its bytes under another task's
/// name; such an order is refused (`None`) with a warning.
fn seed_order(s: pb::SeedTask) -> Option<(TaskId, String, Option<[u8; 32]>)> {
    let Ok(id) = s.task_id.parse::<TaskId>() else {
        tracing::debug!(task = %s.task_id, "ignoring a seed order with a malformed task id");
        return None;
    };
    let url = match normalize_url(&s.url) {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(task = %id, url = %s.url, error = %e, "refusing a seed order with an unusable URL");
            return None;
        }
    };
    let digest = digest_from_slice(&s.digest);
    let by_url = task_id(&url, None).is_ok_and(|u| u == id);
    let by_digest = digest.is_some_and(|d| TaskId::from_sha256(&d) == id);
    if !by_url && !by_digest {
        tracing::warn!(task = %id, %url, "refusing a seed order whose task id is neither its URL's nor its digest's");
        return None;
    }
    // A URL-keyed task is not held to a digest its id does not name.
    Some((id, url, digest.filter(|_| by_digest)))
}

fn piece_list(pieces: Vec<pb::Piece>) -> Vec<(u32, [u8; 32])> {
    pieces
        .into_iter()
        .filter_map(|p| Some((p.num, digest_from_slice(&p.digest)?)))
        .collect()
}

/// The task a message is about and what it says; `None` for a malformed
/// message or one this peer has no use for.
fn decode(m: SchedMsg, peers: &PeerTransport) -> Option<(TaskId, SchedulerEvent)> {
    let (task, ev) = match m {
        SchedMsg::Meta(x) => (
            x.task_id,
            SchedulerEvent::Meta {
                content_length: x.content_length,
            },
        ),
        SchedMsg::Parents(x) => {
            let parents = x
                .parents
                .into_iter()
                .filter(|p| {
                    let ok = peers.accepts_parent(p.rdma);
                    if !ok {
                        tracing::debug!(parent = %p.peer_id, "skipping a parent without RDMA (--transport rdma)");
                    }
                    ok
                })
                .map(|p| ParentInfo {
                    id: p.peer_id,
                    addr: p.addr,
                    seed: p.seed,
                    remote: p.remote,
                    rdma: p.rdma,
                    pieces: piece_list(p.pieces),
                })
                .collect();
            (x.task_id, SchedulerEvent::Parents(parents))
        }
        SchedMsg::Available(x) => {
            let piece = x.piece?;
            let digest = digest_from_slice(&piece.digest)?;
            (
                x.task_id,
                SchedulerEvent::Available {
                    parent: x.parent_id,
                    num: piece.num,
                    digest,
                },
            )
        }
        SchedMsg::ParentGone(x) => (
            x.task_id,
            SchedulerEvent::ParentGone {
                parent: x.parent_id,
            },
        ),
        SchedMsg::BackToSource(x) => (x.task_id, SchedulerEvent::BackToSource { reason: x.reason }),
        SchedMsg::SeedTask(_)
        | SchedMsg::OriginBudget(_)
        | SchedMsg::Preheat(_)
        | SchedMsg::DeleteCache(_) => return None,
    };
    match task.parse::<TaskId>() {
        Ok(id) => Some((id, ev)),
        Err(_) => {
            tracing::debug!(%task, "ignoring a scheduler message with a malformed task id");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(task_id: TaskId, url: &str, digest: Option<[u8; 32]>) -> pb::SeedTask {
        pb::SeedTask {
            task_id: task_id.to_hex(),
            url: url.into(),
            digest: digest.map(|d| d.to_vec()).unwrap_or_default(),
            traceparent: String::new(),
        }
    }

    #[test]
    fn a_seed_obeys_an_order_only_when_the_task_id_is_the_urls_or_the_digests() {
        let url = "http://origin:8000/model.safetensors";
        let by_url = task_id(url, None).unwrap();
        let got = seed_order(order(by_url, url, None)).unwrap();
        assert_eq!((got.0, got.2), (by_url, None));
        let d = [7u8; 32];
        let by_digest = TaskId::from_sha256(&d);
        assert_eq!(
            seed_order(order(by_digest, url, Some(d))).unwrap().2,
            Some(d),
            "a digest-keyed task is fetched and checked against its digest"
        );
        // Another task's id with this URL, or a digest that is not the id's.
        let other = task_id("http://origin:8000/other.safetensors", None).unwrap();
        assert!(seed_order(order(other, url, None)).is_none());
        assert!(seed_order(order(by_digest, url, Some([8; 32]))).is_none());
        assert!(seed_order(order(by_digest, url, None)).is_none());
        assert!(seed_order(order(by_url, "not a url", None)).is_none());
    }
}
