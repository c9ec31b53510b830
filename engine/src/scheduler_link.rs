//! The engine's one stream to the scheduler.
//!
//! The link reconnects by itself with backoff; after each reconnect it emits
//! [`LinkEvent::Reconnected`] so every running task registers again (a
//! restarted scheduler learns the swarm back from its peers). Messages sent
//! while disconnected are dropped: re-registration carries the state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use weightcast_proto::pb::{
    self, peer_message::Msg as PeerMsg, scheduler_message::Msg as SchedMsg,
};

#[derive(Debug)]
pub enum LinkEvent {
    Message(SchedMsg),
    Reconnected,
}

pub struct SchedulerLink {
    out: Mutex<Option<mpsc::UnboundedSender<pb::PeerMessage>>>,
    connected: AtomicBool,
    connected_notify: Notify,
}

impl SchedulerLink {
    /// Starts connecting to `endpoint` in the background.
    pub fn start(
        endpoint: String,
        hello: pb::HostInfo,
        events: mpsc::UnboundedSender<LinkEvent>,
    ) -> Arc<Self> {
        let link = Arc::new(Self {
            out: Mutex::new(None),
            connected: AtomicBool::new(false),
            connected_notify: Notify::new(),
        });
        let weak = Arc::downgrade(&link);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            let mut first = true;
            loop {
                let Some(link) = weak.upgrade() else { return };
                match link.session(&endpoint, &hello).await {
                    Ok(mut inbound) => {
                        backoff = Duration::from_millis(200);
                        tracing::info!(%endpoint, "connected to scheduler");
                        if !first && events.send(LinkEvent::Reconnected).is_err() {
                            return;
                        }
                        first = false;
                        drop(link);
                        while let Some(m) = inbound.next().await {
                            match m {
                                Ok(pb::SchedulerMessage { msg: Some(m) }) => {
                                    if events.send(LinkEvent::Message(m)).is_err() {
                                        return;
                                    }
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    tracing::warn!(%endpoint, error = %e.message(), "scheduler stream ended");
                                    break;
                                }
                            }
                        }
                        let Some(link) = weak.upgrade() else { return };
                        link.connected.store(false, Ordering::Release);
                        if let Ok(mut o) = link.out.lock() {
                            *o = None;
                        }
                        tracing::warn!(%endpoint, "lost the scheduler; reconnecting");
                    }
                    Err(e) => {
                        tracing::debug!(%endpoint, error = %e, "cannot reach scheduler");
                        drop(link);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
        link
    }

    async fn session(
        &self,
        endpoint: &str,
        hello: &pb::HostInfo,
    ) -> Result<tonic::Streaming<pb::SchedulerMessage>, Box<dyn std::error::Error + Send + Sync>>
    {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())?
            .connect_timeout(Duration::from_secs(3))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .connect()
            .await?;
        let mut client = pb::scheduler_client::SchedulerClient::new(channel);
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(pb::PeerMessage {
            msg: Some(PeerMsg::Hello(hello.clone())),
        })?;
        let inbound = client
            .session(UnboundedReceiverStream::new(rx))
            .await?
            .into_inner();
        if let Ok(mut o) = self.out.lock() {
            *o = Some(tx);
        }
        self.connected.store(true, Ordering::Release);
        self.connected_notify.notify_waiters();
        Ok(inbound)
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Waits up to `timeout` for the stream to be up.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.connected_notify.notified();
            if self.is_connected() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_connected();
            }
        }
    }

    /// Sends if connected; otherwise the message is dropped (see module doc).
    pub fn send(&self, msg: PeerMsg) {
        if let Ok(o) = self.out.lock() {
            if let Some(tx) = o.as_ref() {
                let _ = tx.send(pb::PeerMessage { msg: Some(msg) });
            }
        }
    }
}
