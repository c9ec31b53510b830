//! The engine's streams to its schedulers: one, or several when a cluster
//! has more than one (their list comes from `--scheduler a,b` or from the
//! manager, and may change while the engine runs: [`SchedulerLink::set_endpoints`]).
//!
//! With several, each task is owned by one scheduler, chosen by rendezvous
//! hashing of the task id over the endpoints that are connected now
//! ([`weightcast_types::task_key::owner`], the same rule the manager uses to
//! send a preheat to the right scheduler); every message about a task goes
//! to its owner, and the hello and load reports go to all. The answers to
//! a scheduler's cache orders go back to the scheduler that gave the order.
//!
//! Each stream reconnects by itself with backoff. When the set of connected
//! schedulers changes after the first connection (one came back, or one
//! died while others remain), the link emits [`LinkEvent::Reconnected`], so
//! every running task registers again, with its owner now (and the
//! finished tasks this peer holds are announced again: `held`): the tasks of a
//! dead scheduler move to the others and their downloads go on. Only when
//! no scheduler is left does it emit [`LinkEvent::Lost`]. Messages sent
//! while disconnected are dropped: re-registration carries the state.
//!
//! Both directions are bounded. Inbound messages wait for the engine's
//! dispatcher (and so the stream stops being read: backpressure reaches the
//! scheduler through HTTP/2 flow control); outbound ones make a sending
//! download wait while the stream is backed up.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weightcast_proto::cluster_auth::{self, ClusterSecrets};
use weightcast_proto::pb::{
    self, peer_message::Msg as PeerMsg, scheduler_message::Msg as SchedMsg,
};
use weightcast_types::task_key::owner;
use weightcast_types::TaskId;

/// Messages to a scheduler queued before senders wait.
const OUTBOUND_QUEUE: usize = 4096;
/// Messages from the schedulers queued before the streams are no longer read.
pub const INBOUND_QUEUE: usize = 1024;

#[derive(Debug)]
pub enum LinkEvent {
    Message(SchedMsg),
    /// The first stream came up: tell it what this peer holds.
    Connected,
    /// The stream came back, or the set of connected schedulers changed:
    /// register again (each task with its owner).
    Reconnected,
    /// No scheduler is connected any more; [`LinkEvent::Reconnected`]
    /// follows when one is back.
    Lost,
}

/// One scheduler's stream.
struct Session {
    out: Mutex<Option<mpsc::Sender<pb::PeerMessage>>>,
    connected: AtomicBool,
    stop: CancellationToken,
}

pub struct SchedulerLink {
    hello: pb::HostInfo,
    /// The cluster secret every session proves (none: no token sent).
    secrets: Option<Arc<ClusterSecrets>>,
    events: mpsc::Sender<LinkEvent>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    sessions: Mutex<BTreeMap<String, Arc<Session>>>,
    /// Which scheduler gave the cache order for a task, for its answer.
    order_from: Mutex<HashMap<TaskId, String>>,
    /// Some scheduler has been connected once (the first connection needs
    /// no re-registration).
    ever_connected: AtomicBool,
    connected_notify: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a single insert, remove or swap.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The task a message to the scheduler is about; `None` for the hello and
/// load reports, which every scheduler gets.
fn task_of(msg: &PeerMsg) -> Option<&str> {
    Some(match msg {
        PeerMsg::Hello(_) | PeerMsg::Load(_) => return None,
        PeerMsg::Register(m) => &m.task_id,
        PeerMsg::Meta(m) => &m.task_id,
        PeerMsg::PieceDone(m) => &m.task_id,
        PeerMsg::PieceFailed(m) => &m.task_id,
        PeerMsg::TaskDone(m) => &m.task_id,
        PeerMsg::TaskLeft(m) => &m.task_id,
        PeerMsg::SourceRequest(m) => &m.task_id,
        PeerMsg::TaskFailed(m) => &m.task_id,
        PeerMsg::CacheDeleted(m) => &m.task_id,
    })
}

impl SchedulerLink {
    /// Starts connecting to `endpoints` in the background, on `tracker`,
    /// until `cancel` fires.
    pub fn start(
        endpoints: Vec<String>,
        hello: pb::HostInfo,
        secrets: Option<Arc<ClusterSecrets>>,
        events: mpsc::Sender<LinkEvent>,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let link = Arc::new(Self {
            hello,
            secrets,
            events,
            tracker: tracker.clone(),
            cancel,
            sessions: Mutex::new(BTreeMap::new()),
            order_from: Mutex::new(HashMap::new()),
            ever_connected: AtomicBool::new(false),
            connected_notify: Notify::new(),
        });
        link.set_endpoints(endpoints);
        link
    }

    /// The schedulers to be connected to from now on: new ones are dialled,
    /// gone ones hung up on (their tasks move to the others).
    pub fn set_endpoints(self: &Arc<Self>, endpoints: Vec<String>) {
        let mut sessions = lock(&self.sessions);
        let gone: Vec<String> = sessions
            .keys()
            .filter(|e| !endpoints.contains(e))
            .cloned()
            .collect();
        for e in gone {
            if let Some(s) = sessions.remove(&e) {
                tracing::info!(endpoint = %e, "scheduler left the list; its tasks move to the others");
                s.stop.cancel();
            }
        }
        for e in endpoints {
            if sessions.contains_key(&e) {
                continue;
            }
            let s = Arc::new(Session {
                out: Mutex::new(None),
                connected: AtomicBool::new(false),
                stop: self.cancel.child_token(),
            });
            sessions.insert(e.clone(), s.clone());
            let me = self.clone();
            self.tracker.spawn(async move {
                tokio::select! {
                    _ = s.stop.cancelled() => {}
                    _ = me.keep_connected(&e, &s) => {}
                }
                let was = s.connected.swap(false, Ordering::AcqRel);
                *lock(&s.out) = None;
                if was && !me.cancel.is_cancelled() {
                    me.membership_changed().await;
                }
            });
        }
    }

    /// The endpoints in the list now.
    pub fn endpoints(&self) -> Vec<String> {
        lock(&self.sessions).keys().cloned().collect()
    }

    /// The endpoints connected now.
    fn connected(&self) -> Vec<(String, Arc<Session>)> {
        lock(&self.sessions)
            .iter()
            .filter(|(_, s)| s.connected.load(Ordering::Acquire))
            .map(|(e, s)| (e.clone(), s.clone()))
            .collect()
    }

    /// After a stream broke or came up: tasks register again with their
    /// owners, or, with nobody left, downloads are told the scheduler is gone.
    async fn membership_changed(&self) {
        let ev = if self.connected().is_empty() {
            LinkEvent::Lost
        } else {
            LinkEvent::Reconnected
        };
        let _ = self.events.send(ev).await;
    }

    /// Connects, forwards what arrives, reconnects; returns only when the
    /// engine stopped listening.
    async fn keep_connected(&self, endpoint: &str, s: &Session) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.session(endpoint, s).await {
                Ok(mut inbound) => {
                    backoff = Duration::from_millis(200);
                    tracing::info!(%endpoint, "connected to scheduler");
                    // The first connection needs no re-registration; any
                    // later one does (a scheduler may have restarted, or
                    // tasks may belong to this one now).
                    let ev = match self.ever_connected.swap(true, Ordering::AcqRel) {
                        true => LinkEvent::Reconnected,
                        false => LinkEvent::Connected,
                    };
                    if self.events.send(ev).await.is_err() {
                        return;
                    }
                    while let Some(m) = inbound.next().await {
                        match m {
                            Ok(pb::SchedulerMessage { msg: Some(m) }) => {
                                if let SchedMsg::Preheat(pb::PreheatTask { task_id, .. })
                                | SchedMsg::DeleteCache(pb::DeleteCache { task_id }) = &m
                                {
                                    if let Ok(t) = task_id.parse() {
                                        lock(&self.order_from).insert(t, endpoint.to_string());
                                    }
                                }
                                if self.events.send(LinkEvent::Message(m)).await.is_err() {
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
                    s.connected.store(false, Ordering::Release);
                    *lock(&s.out) = None;
                    tracing::warn!(%endpoint, "lost the scheduler; reconnecting");
                    self.membership_changed().await;
                    if self.events.is_closed() {
                        return;
                    }
                }
                Err(e) => {
                    match e.downcast_ref::<tonic::Status>() {
                        // A configuration error, not a network one: say so
                        // loudly (the link keeps trying: a secret file
                        // fixed on either side lets it in without a restart).
                        Some(s) if s.code() == tonic::Code::Unauthenticated => {
                            tracing::error!(%endpoint, error = %s.message(), "the scheduler refused this peer: cluster secret missing or wrong");
                        }
                        _ => tracing::debug!(%endpoint, error = %e, "cannot reach scheduler"),
                    }
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
        s: &Session,
    ) -> Result<tonic::Streaming<pb::SchedulerMessage>, Box<dyn std::error::Error + Send + Sync>>
    {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())?
            .connect_timeout(Duration::from_secs(3))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .connect()
            .await?;
        let mut client = cluster_auth::scheduler_client(channel, self.secrets.clone());
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        tx.send(pb::PeerMessage {
            msg: Some(PeerMsg::Hello(self.hello.clone())),
        })
        .await?;
        let inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
        *lock(&s.out) = Some(tx);
        s.connected.store(true, Ordering::Release);
        self.connected_notify.notify_waiters();
        Ok(inbound)
    }

    pub fn is_connected(&self) -> bool {
        !self.connected().is_empty()
    }

    /// Waits up to `timeout` for a stream to be up.
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

    /// Sends to the scheduler the message is for (see the module doc),
    /// waiting while that stream is backed up; with none connected the
    /// message is dropped.
    pub async fn send(&self, msg: PeerMsg) {
        let connected = self.connected();
        let targets: Vec<mpsc::Sender<pb::PeerMessage>> = match task_of(&msg) {
            None => connected
                .iter()
                .filter_map(|(_, s)| lock(&s.out).clone())
                .collect(),
            Some(task) => {
                let id: Option<TaskId> = task.parse().ok();
                let answer = matches!(msg, PeerMsg::TaskFailed(_) | PeerMsg::CacheDeleted(_));
                let from = match (answer, id) {
                    (true, Some(t)) => lock(&self.order_from).get(&t).cloned(),
                    _ => None,
                };
                let names: Vec<&String> = connected.iter().map(|(e, _)| e).collect();
                let to = from
                    .filter(|f| names.contains(&f))
                    .or_else(|| id.and_then(|t| owner(&t, &names).map(|e| (*e).clone())));
                connected
                    .iter()
                    .filter(|(e, _)| Some(e) == to.as_ref())
                    .filter_map(|(_, s)| lock(&s.out).clone())
                    .collect()
            }
        };
        for tx in targets {
            let _ = tx
                .send(pb::PeerMessage {
                    msg: Some(msg.clone()),
                })
                .await;
        }
    }
}
