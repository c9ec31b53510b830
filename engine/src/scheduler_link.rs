//! The engine's one stream to the scheduler.
//!
//! The link reconnects by itself with backoff; after each reconnect it emits
//! [`LinkEvent::Reconnected`] so every running task registers again (a
//! restarted scheduler learns the swarm back from its peers). Messages sent
//! while disconnected are dropped: re-registration carries the state.
//!
//! Both directions are bounded. Inbound messages wait for the engine's
//! dispatcher (and so the stream stops being read: backpressure reaches the
//! scheduler through HTTP/2 flow control); outbound ones make a sending
//! download wait while the stream is backed up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weightcast_proto::pb::{
    self, peer_message::Msg as PeerMsg, scheduler_message::Msg as SchedMsg,
};

/// Messages to the scheduler queued before senders wait.
const OUTBOUND_QUEUE: usize = 4096;
/// Messages from the scheduler queued before the stream is no longer read.
pub const INBOUND_QUEUE: usize = 1024;

#[derive(Debug)]
pub enum LinkEvent {
    Message(SchedMsg),
    Reconnected,
    /// The stream broke; [`LinkEvent::Reconnected`] follows when it is back.
    Lost,
}

pub struct SchedulerLink {
    out: Mutex<Option<mpsc::Sender<pb::PeerMessage>>>,
    connected: AtomicBool,
    connected_notify: Notify,
}

impl SchedulerLink {
    /// Starts connecting to `endpoint` in the background, on `tracker`,
    /// until `cancel` fires.
    pub fn start(
        endpoint: String,
        hello: pb::HostInfo,
        events: mpsc::Sender<LinkEvent>,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let link = Arc::new(Self {
            out: Mutex::new(None),
            connected: AtomicBool::new(false),
            connected_notify: Notify::new(),
        });
        let me = link.clone();
        tracker.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = me.keep_connected(&endpoint, &hello, &events) => {}
            }
            me.set_disconnected();
        });
        link
    }

    fn set_disconnected(&self) {
        self.connected.store(false, Ordering::Release);
        if let Ok(mut o) = self.out.lock() {
            *o = None;
        }
    }

    /// Connects, forwards what arrives, reconnects; returns only when the
    /// engine stopped listening.
    async fn keep_connected(
        &self,
        endpoint: &str,
        hello: &pb::HostInfo,
        events: &mpsc::Sender<LinkEvent>,
    ) {
        let mut backoff = Duration::from_millis(200);
        let mut first = true;
        loop {
            match self.session(endpoint, hello).await {
                Ok(mut inbound) => {
                    backoff = Duration::from_millis(200);
                    tracing::info!(%endpoint, "connected to scheduler");
                    // The first connection needs no re-registration; any
                    // later one does (the scheduler may have restarted).
                    if !first && events.send(LinkEvent::Reconnected).await.is_err() {
                        return;
                    }
                    first = false;
                    while let Some(m) = inbound.next().await {
                        match m {
                            Ok(pb::SchedulerMessage { msg: Some(m) }) => {
                                if events.send(LinkEvent::Message(m)).await.is_err() {
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
                    self.set_disconnected();
                    tracing::warn!(%endpoint, "lost the scheduler; reconnecting");
                    if events.send(LinkEvent::Lost).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!(%endpoint, error = %e, "cannot reach scheduler");
                    // Jitter, so that a fleet that lost its scheduler does
                    // not come back in the same instant.
                    let jitter = Duration::from_millis(rand::random::<u64>() % 200);
                    tokio::time::sleep(backoff + jitter).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
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
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        tx.send(pb::PeerMessage {
            msg: Some(PeerMsg::Hello(hello.clone())),
        })
        .await?;
        let inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
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

    /// Sends if connected, waiting while the stream is backed up; otherwise
    /// the message is dropped (see the module doc).
    pub async fn send(&self, msg: PeerMsg) {
        let tx = self.out.lock().ok().and_then(|o| o.clone());
        if let Some(tx) = tx {
            let _ = tx.send(pb::PeerMessage { msg: Some(msg) }).await;
        }
    }
}
