//! The bounded cache, engine side: what the store asks before it evicts a
//! task (does a download of it run here?), what follows an eviction (the
//! task's RDMA region goes, the scheduler is told the task left), and the
//! periodic collection that applies the TTL and the watermarks between
//! downloads. The policy itself is `weightcast_store::cache`.

use crate::runs::Runs;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use weightcast_proto::pb::{self, peer_message::Msg as PeerMsg};
use weightcast_store::{CacheHooks, Store};
use weightcast_types::TaskId;

pub(crate) struct EngineCacheHooks {
    /// Weak: the runs own the store that owns these hooks.
    pub runs: Weak<Runs>,
    pub handle: tokio::runtime::Handle,
}

impl CacheHooks for EngineCacheHooks {
    fn in_use(&self, id: &TaskId) -> bool {
        self.runs.upgrade().is_some_and(|r| r.get(id).is_some())
    }

    fn evicted(&self, id: &TaskId) {
        let Some(runs) = self.runs.upgrade() else {
            return;
        };
        let deps = runs.deps();
        if let Some(node) = deps.peers.rdma_node() {
            node.evict(id);
        }
        if let Some(link) = deps.link.clone() {
            let task_id = id.to_hex();
            self.handle.spawn(async move {
                link.send(PeerMsg::TaskLeft(pb::TaskLeft { task_id })).await;
            });
        }
    }
}

/// Collects every `every` until `stop`: expired tasks go, and a cache
/// above its high watermark is brought below the low one.
pub(crate) async fn run(store: Arc<Store>, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let s = store.clone();
        if let Ok(evicted) = tokio::task::spawn_blocking(move || s.collect(0)).await {
            if !evicted.is_empty() {
                tracing::debug!(count = evicted.len(), "cache collection evicted tasks");
            }
        }
    }
}
