//! The finished swarm tasks this peer holds, told to its schedulers again
//! whenever a stream comes up: a scheduler that restarted knows nothing,
//! and a daemon that restarted has finished tasks on disk but no download
//! running for them, so without this nobody would re-register them and
//! newcomers would be sent to the origin although complete peers exist.
//!
//! At start the engine opens every swarm task on disk ([`open_on_disk`]:
//! opening re-hashes the pieces the table claims, so only verified bytes
//! are announced or served); on each connection [`announce`] sends, for
//! every complete task without a running download, a register with all its
//! pieces and a task-done. Running downloads register by themselves.

use crate::runs::Runs;
use std::sync::Arc;
use weightcast_proto::pb::{self, peer_message::Msg as PeerMsg};
use weightcast_store::Store;

/// Opens the swarm tasks on disk so that the upload server serves them and
/// [`announce`] finds them; returns how many are complete.
pub(crate) async fn open_on_disk(store: Arc<Store>) -> usize {
    tokio::task::spawn_blocking(move || {
        store
            .shared_on_disk()
            .into_iter()
            .filter(|id| store.open_complete(*id).is_some())
            .count()
    })
    .await
    .unwrap_or(0)
}

/// Tells the schedulers (each task's owner) about every complete swarm task
/// this peer holds and does not download now.
pub(crate) async fn announce(runs: &Runs) {
    let deps = runs.deps();
    let Some(link) = &deps.link else { return };
    let mut told = 0usize;
    for file in deps.store.open_complete_tasks() {
        let id = file.id;
        if runs.get(&id).is_some() || !deps.store.is_shared(&id) {
            continue;
        }
        let Some(meta) = deps.store.peek_meta(&id) else {
            continue;
        };
        let task_id = id.to_hex();
        let have = file
            .verified_pieces()
            .into_iter()
            .map(|(num, d)| pb::Piece {
                num,
                digest: d.to_vec(),
            })
            .collect();
        link.send(PeerMsg::Register(pb::RegisterTask {
            task_id: task_id.clone(),
            url: meta.url,
            have,
            content_length: file.layout.content_length,
            // Only a seed order needs the whole-file digest; a complete
            // holder is never sent one for this task.
            digest: Vec::new(),
            traceparent: String::new(),
        }))
        .await;
        link.send(PeerMsg::TaskDone(pb::TaskDone { task_id })).await;
        told += 1;
    }
    if told > 0 {
        tracing::info!(
            tasks = told,
            "told the scheduler which finished tasks this peer holds"
        );
    }
}
