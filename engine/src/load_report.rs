//! Tells the scheduler how loaded this peer's upload server is, so phase 1
//! can steer children away from busy parents.

use crate::metrics::EngineMetrics;
use crate::scheduler_link::SchedulerLink;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use weightcast_proto::pb::{self, peer_message::Msg as PeerMsg};

/// How often the load is looked at; only changes are sent.
const EVERY: Duration = Duration::from_millis(500);

/// Reports the upload load whenever it changed, until dropped.
pub(crate) async fn run(link: Arc<SchedulerLink>, metrics: Arc<EngineMetrics>) {
    let mut last = u32::MAX;
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tick.tick().await;
        if !link.is_connected() {
            // A new stream starts from nothing: report again once it is up.
            last = u32::MAX;
            continue;
        }
        let now = metrics.uploads.active.load(Ordering::Relaxed);
        if now != last {
            link.send(PeerMsg::Load(pb::Load {
                active_uploads: now,
            }))
            .await;
            last = now;
        }
    }
}
