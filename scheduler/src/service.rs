//! The gRPC shell around [`Core`]: one actor task owns the core; each peer
//! session decodes what its peer says (see [`crate::wire`]), feeds it to the
//! actor, and streams back the messages addressed to that peer.
//!
//! Every queue is bounded. The actor's event queue applies backpressure to
//! the sessions (a flood of messages slows the peers down, it does not grow
//! the scheduler's memory). The actor never waits on a peer: each peer's
//! outbound queue is bounded, and a peer that lets it fill up is
//! disconnected with a warning, so one stuck peer cannot stall the decisions
//! for everybody; it reconnects and registers again, as after a scheduler
//! restart.
//!
//! Every task spawned here is tracked and stops on [`SchedulerHandle::shutdown`]
//! (or when the handle is dropped).

use crate::metrics::SchedulerMetrics;
use crate::wire;
use futures::StreamExt;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};
use weightcast_proto::cluster_auth::{ClusterSecrets, ServerAuth};
use weightcast_proto::pb::{
    self, peer_message::Msg as PeerMsg, scheduler_message::Msg as SchedMsg,
};
use weightcast_scheduler_core::{
    Config, Core, HostInfo, JobId, JobRefused, Outbound, PeerEvent, PeerId, PeerResult,
    PeerSummary, PreheatJob,
};
use weightcast_types::ids::InvalidTaskId;
use weightcast_types::TaskId;

/// Events queued for the actor. Sessions wait when it is full.
const EVENT_QUEUE: usize = 4096;
/// Events the actor takes off its queue at once. It handles them one by one
/// and then delivers what they decided together, so that under load a
/// peer's messages leave in one write and the per-wake-up costs (metrics,
/// channel wake-ups) are paid once per batch; when the queue is short the
/// batch is one event and nothing waits.
const EVENT_BATCH: usize = 256;
/// Messages queued for one peer. A peer that falls this far behind is
/// disconnected. A healthy peer drains its stream at once; the biggest burst
/// one event sends it is about two messages (parent gone, new parents) per
/// task it shares with a peer that leaves, so this holds that burst for
/// peers in a couple of thousand tasks.
const PEER_QUEUE: usize = 4096;

type PeerTx = mpsc::Sender<pb::SchedulerMessage>;

enum Event {
    Hello {
        conn: u64,
        info: HostInfo,
        tx: PeerTx,
        kick: CancellationToken,
    },
    Message {
        conn: u64,
        peer: PeerId,
        event: PeerEvent,
        /// The W3C trace context a registration carried (see
        /// [`Actor::on_event`]).
        trace: Option<String>,
    },
    Gone {
        conn: u64,
        peer: PeerId,
    },
    /// A cache job from the Preheat or DeleteTasks RPC.
    Job {
        job: JobRequest,
        reply: oneshot::Sender<Result<watch::Receiver<pb::JobProgress>, JobRefused>>,
    },
    StatTask {
        task: TaskId,
        reply: oneshot::Sender<(Vec<PeerResult>, Option<u64>)>,
    },
    ListPeers {
        reply: oneshot::Sender<Vec<PeerSummary>>,
    },
}

enum JobRequest {
    Preheat(PreheatJob),
    Delete(Vec<TaskId>, Duration),
}

/// How often running cache jobs publish their state (and time out).
const JOB_TICK: Duration = Duration::from_millis(200);

/// A connected peer, as the actor sees it.
struct Session {
    /// Which of the peer's streams this is (a reconnect opens a new one).
    conn: u64,
    tx: PeerTx,
    /// Ends the session's streams, both ways.
    kick: CancellationToken,
}

/// Owns the core and the peers' outbound queues; the only place decisions
/// are made.
struct Actor {
    core: Core,
    peers: HashMap<PeerId, Session>,
    metrics: Arc<SchedulerMetrics>,
    /// Where each running cache job's state goes (its RPC stream).
    jobs: HashMap<JobId, watch::Sender<pb::JobProgress>>,
}

impl Actor {
    /// Handles one event, appending what it says to peers to `out`; the
    /// caller delivers a whole batch of events' messages at once (see
    /// [`run_actor`]). Returns whether the event counts as a handled
    /// message (`weightcast_scheduler_messages_total`).
    fn on_event(
        &mut self,
        ev: Event,
        now: Instant,
        out: &mut Vec<(PeerId, pb::SchedulerMessage)>,
    ) -> bool {
        // A traced registration is handled inside a span of the peer's
        // trace; so are the messages it causes (a seed order carries it on).
        let span = match &ev {
            Event::Message {
                trace: Some(parent),
                peer,
                ..
            } => {
                let span = tracing::info_span!("schedule task", %peer);
                weightcast_telemetry::set_parent(&span, parent);
                span
            }
            _ => tracing::Span::none(),
        };
        let _in_span = span.enter();
        let decided = match ev {
            Event::Hello {
                conn,
                info,
                tx,
                kick,
            } => {
                tracing::info!(peer = %info.peer_id, host = %info.hostname, addr = %info.piece_addr, seed = info.seed, "peer connected");
                self.peers
                    .insert(info.peer_id.clone(), Session { conn, tx, kick });
                self.core.hello(info, now)
            }
            Event::Message {
                conn, peer, event, ..
            } => {
                if self.peers.get(&peer).map(|s| s.conn) != Some(conn) {
                    return false; // a stale stream of a peer that reconnected
                }
                self.core.handle(&peer, event, now)
            }
            Event::Gone { conn, peer } => {
                if self.peers.get(&peer).map(|s| s.conn) != Some(conn) {
                    return false;
                }
                tracing::info!(%peer, "peer disconnected");
                self.peers.remove(&peer);
                self.core.disconnect(&peer, now)
            }
            Event::Job { job, reply } => {
                let started = match job {
                    JobRequest::Preheat(j) => {
                        tracing::info!(
                            tasks = j.tasks.len(),
                            scope = j.scope.as_str(),
                            "preheat requested"
                        );
                        self.core.preheat(j, now)
                    }
                    JobRequest::Delete(tasks, timeout) => {
                        tracing::info!(tasks = tasks.len(), "eviction requested");
                        self.core.delete_tasks(tasks, timeout, now)
                    }
                };
                match started {
                    Ok((id, started_out)) => {
                        let first = self.core.job_status(id).map(wire::job_progress);
                        let (tx, rx) = watch::channel(first.unwrap_or_default());
                        self.jobs.insert(id, tx);
                        let _ = reply.send(Ok(rx));
                        self.metrics.update(|s| s.jobs_started += 1);
                        started_out
                    }
                    Err(refused) => {
                        let _ = reply.send(Err(refused));
                        Vec::new()
                    }
                }
            }
            Event::StatTask { task, reply } => {
                let _ = reply.send((self.core.task_holders(&task), self.core.task_length(&task)));
                return false;
            }
            Event::ListPeers { reply } => {
                let _ = reply.send(self.core.peers());
                return false;
            }
        };
        // Encoded here, inside the event's span, so that a seed order
        // carries the registration's trace although it is sent later.
        out.extend(decided.into_iter().map(wire_message));
        true
    }

    /// Publishes the core's numbers once per batch of `handled` messages:
    /// a lock and a copy per event cost as much as a cheap decision.
    fn publish_metrics(&self, handled: u64) {
        let core = &self.core;
        self.metrics.update(|s| {
            s.hosts = core.host_count() as u64;
            s.tasks = core.task_count() as u64;
            s.upload_load = core.upload_load();
            s.messages += handled;
            s.stats = core.stats.clone();
        });
    }

    /// Publishes every running job's state, fails what timed out, and lets
    /// go of jobs that are over (their stream ends with the last state).
    fn tick_jobs(&mut self, now: Instant) {
        self.core.expire_jobs(now);
        let mut over = Vec::new();
        for (id, tx) in &self.jobs {
            let Some(status) = self.core.job_status(*id) else {
                over.push(*id);
                continue;
            };
            let finished = status.finished;
            let progress = wire::job_progress(status);
            tx.send_if_modified(|old| {
                let changed = *old != progress;
                if changed {
                    *old = progress.clone();
                }
                changed
            });
            if finished {
                over.push(*id);
                let (ok, failed) = progress.tasks.iter().flat_map(|t| t.peers.iter()).fold(
                    (0, 0),
                    |(ok, failed), p| match p.state() {
                        pb::peer_result::State::Success => (ok + 1, failed),
                        _ => (ok, failed + 1),
                    },
                );
                tracing::info!(job = id, ok, failed, "cache job over");
                self.metrics.update(|s| {
                    s.job_peer_successes += ok;
                    s.job_peer_failures += failed;
                });
            }
        }
        for id in over {
            self.jobs.remove(&id);
            self.core.forget_job(id);
        }
        let active = self.jobs.len() as u64;
        self.metrics.update(|s| s.jobs_active = active);
    }

    /// Queues each message for its peer, never waiting. A peer whose queue
    /// is full is disconnected, and what that changes for the others is
    /// delivered too.
    fn deliver(&mut self, out: Vec<(PeerId, pb::SchedulerMessage)>, now: Instant) {
        let mut pending = VecDeque::from(out);
        while let Some((to, message)) = pending.pop_front() {
            let Some(session) = self.peers.get(&to) else {
                continue;
            };
            match session.tx.try_send(message) {
                Ok(()) => {}
                // The stream is gone; its `Gone` event is on its way.
                Err(TrySendError::Closed(_)) => {}
                Err(TrySendError::Full(_)) => {
                    tracing::warn!(
                        peer = %to,
                        queued = PEER_QUEUE,
                        "peer is not reading its scheduler messages; disconnecting it (it reconnects and registers again)"
                    );
                    if let Some(s) = self.peers.remove(&to) {
                        s.kick.cancel();
                    }
                    self.metrics.update(|s| s.slow_peers_disconnected += 1);
                    pending.extend(self.core.disconnect(&to, now).into_iter().map(wire_message));
                }
            }
        }
    }
}

async fn run_actor(
    config: Config,
    mut events: mpsc::Receiver<Event>,
    metrics: Arc<SchedulerMetrics>,
    shutdown: CancellationToken,
) {
    let mut actor = Actor {
        core: Core::new(config),
        peers: HashMap::new(),
        metrics,
        jobs: HashMap::new(),
    };
    let mut tick = tokio::time::interval(JOB_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(EVENT_BATCH);
    let mut out = Vec::new();
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick(), if !actor.jobs.is_empty() => {
                actor.tick_jobs(Instant::now());
                continue;
            }
            n = events.recv_many(&mut batch, EVENT_BATCH) => n,
        };
        if received == 0 {
            return; // every sender is gone
        }
        let mut handled = 0u64;
        for ev in batch.drain(..) {
            // A reconnect's hello replaces the peer's session: what earlier
            // events decided for it goes to the old stream first.
            if matches!(ev, Event::Hello { .. }) && !out.is_empty() {
                actor.deliver(std::mem::take(&mut out), Instant::now());
            }
            handled += actor.on_event(ev, Instant::now(), &mut out) as u64;
        }
        actor.deliver(std::mem::take(&mut out), Instant::now());
        actor.publish_metrics(handled);
    }
}

/// One core decision as the message on its peer's stream; a seed order
/// carries the current span's trace context.
fn wire_message(o: Outbound) -> (PeerId, pb::SchedulerMessage) {
    let to = o.to.clone();
    let mut message = wire::scheduler_message(o);
    if let Some(SchedMsg::SeedTask(order)) = &mut message.msg {
        order.traceparent = weightcast_telemetry::traceparent().unwrap_or_default();
    }
    (to, message)
}

struct Service {
    events: mpsc::Sender<Event>,
    next_conn: AtomicU64,
    metrics: Arc<SchedulerMetrics>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

type SessionStream =
    Pin<Box<dyn futures::Stream<Item = Result<pb::SchedulerMessage, Status>> + Send + 'static>>;

/// The messages for one peer, until its queue closes or its session is
/// kicked (then one last status says why).
fn outbound(
    rx: mpsc::Receiver<pb::SchedulerMessage>,
    kick: CancellationToken,
    shutdown: CancellationToken,
) -> SessionStream {
    Box::pin(futures::stream::unfold(
        Some((rx, kick, shutdown)),
        |state| async move {
            let (mut rx, kick, shutdown) = state?;
            tokio::select! {
                biased;
                _ = kick.cancelled() => {
                    let status = if shutdown.is_cancelled() {
                        Status::unavailable("the scheduler is shutting down; reconnect when it is back")
                    } else {
                        Status::resource_exhausted(
                            "this peer fell behind reading scheduler messages; reconnect and register again",
                        )
                    };
                    Some((Err(status), None))
                }
                m = rx.recv() => m.map(|m| (Ok(m), Some((rx, kick, shutdown)))),
            }
        },
    ))
}

/// Reads one peer's messages until its stream ends or it is kicked.
/// Messages one peer may send per second: a fast peer announces a few
/// thousand pieces a second; far more is a flood, and the session ends
/// (the peer reconnects and re-registers, a flooder is cut off again).
pub const MAX_PEER_MESSAGES_PER_SECOND: u32 = 50_000;
/// Malformed messages one session may send before it is ended.
pub const MAX_REJECTED_PER_SESSION: u32 = 1_000;

/// Counts a session's messages per one-second window.
#[derive(Debug)]
pub struct MessageBudget {
    window: std::time::Instant,
    count: u32,
}

impl MessageBudget {
    pub fn new(now: std::time::Instant) -> Self {
        Self {
            window: now,
            count: 0,
        }
    }

    /// Whether one more message at `now` stays within the rate.
    pub fn admit(&mut self, now: std::time::Instant) -> bool {
        if now.duration_since(self.window) >= std::time::Duration::from_secs(1) {
            self.window = now;
            self.count = 0;
        }
        self.count += 1;
        self.count <= MAX_PEER_MESSAGES_PER_SECOND
    }
}

async fn read_session(
    mut inbound: Streaming<pb::PeerMessage>,
    conn: u64,
    peer: PeerId,
    events: mpsc::Sender<Event>,
    metrics: Arc<SchedulerMetrics>,
    kick: CancellationToken,
) {
    let mut budget = MessageBudget::new(std::time::Instant::now());
    let mut rejected = 0u32;
    loop {
        let m = tokio::select! {
            _ = kick.cancelled() => return,
            m = inbound.next() => m,
        };
        let Some(Ok(m)) = m else { break };
        if !budget.admit(std::time::Instant::now()) {
            tracing::warn!(%peer, limit = MAX_PEER_MESSAGES_PER_SECOND, "a peer sends more messages per second than allowed; ending its session");
            break;
        }
        let trace = match &m.msg {
            Some(PeerMsg::Register(r)) if !r.traceparent.is_empty() => Some(r.traceparent.clone()),
            _ => None,
        };
        match wire::peer_event(m) {
            Ok(event) => {
                let ev = Event::Message {
                    conn,
                    peer: peer.clone(),
                    event,
                    trace,
                };
                if events.send(ev).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                tracing::debug!(%peer, %error, "dropped a peer message");
                metrics.update(|s| s.rejected_messages += 1);
                rejected += 1;
                if rejected > MAX_REJECTED_PER_SESSION {
                    tracing::warn!(%peer, "a peer sent too many malformed messages; ending its session");
                    break;
                }
            }
        }
    }
    let _ = events.send(Event::Gone { conn, peer }).await;
}

type JobStream =
    Pin<Box<dyn futures::Stream<Item = Result<pb::JobProgress, Status>> + Send + 'static>>;

/// A job's states as they change, ending with the one that is finished.
fn job_stream(rx: watch::Receiver<pb::JobProgress>) -> JobStream {
    Box::pin(futures::stream::unfold(
        (Some(rx), true),
        |(rx, first)| async move {
            let mut rx = rx?;
            if !first && rx.changed().await.is_err() {
                // The job was dropped (shutdown) before it was finished.
                let last = rx.borrow().clone();
                return (!last.finished).then(|| {
                    (
                        Err(Status::unavailable(
                            "the scheduler stopped before the job was over",
                        )),
                        (None, false),
                    )
                });
            }
            let p = rx.borrow_and_update().clone();
            let next = if p.finished { None } else { Some(rx) };
            Some((Ok(p), (next, false)))
        },
    ))
}

impl Service {
    async fn start_job(&self, job: JobRequest) -> Result<Response<JobStream>, Status> {
        let (reply, answer) = oneshot::channel();
        self.events
            .send(Event::Job { job, reply })
            .await
            .map_err(|_| Status::unavailable("scheduler is shutting down"))?;
        match answer.await {
            Ok(Ok(rx)) => Ok(Response::new(job_stream(rx))),
            Ok(Err(refused)) => Err(Status::failed_precondition(refused.to_string())),
            Err(_) => Err(Status::unavailable("scheduler is shutting down")),
        }
    }
}

#[tonic::async_trait]
impl pb::scheduler_server::Scheduler for Service {
    type SessionStream = SessionStream;
    type PreheatStream = JobStream;
    type DeleteTasksStream = JobStream;

    async fn preheat(
        &self,
        request: Request<pb::PreheatRequest>,
    ) -> Result<Response<Self::PreheatStream>, Status> {
        let job = wire::preheat_job(request.into_inner())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.start_job(JobRequest::Preheat(job)).await
    }

    async fn delete_tasks(
        &self,
        request: Request<pb::DeleteTasksRequest>,
    ) -> Result<Response<Self::DeleteTasksStream>, Status> {
        let (tasks, timeout) = wire::delete_tasks(request.into_inner())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.start_job(JobRequest::Delete(tasks, timeout)).await
    }

    async fn stat_task(
        &self,
        request: Request<pb::StatTaskRequest>,
    ) -> Result<Response<pb::StatTaskReply>, Status> {
        let task: TaskId = request
            .into_inner()
            .task_id
            .parse()
            .map_err(|e: InvalidTaskId| Status::invalid_argument(e.to_string()))?;
        let (reply, answer) = oneshot::channel();
        self.events
            .send(Event::StatTask { task, reply })
            .await
            .map_err(|_| Status::unavailable("scheduler is shutting down"))?;
        let (peers, length) = answer
            .await
            .map_err(|_| Status::unavailable("scheduler is shutting down"))?;
        Ok(Response::new(pb::StatTaskReply {
            peers: peers.into_iter().map(wire::peer_result).collect(),
            content_length: length.unwrap_or(0),
        }))
    }

    async fn list_peers(
        &self,
        _request: Request<pb::ListPeersRequest>,
    ) -> Result<Response<pb::ListPeersReply>, Status> {
        let (reply, answer) = oneshot::channel();
        self.events
            .send(Event::ListPeers { reply })
            .await
            .map_err(|_| Status::unavailable("scheduler is shutting down"))?;
        let peers = answer
            .await
            .map_err(|_| Status::unavailable("scheduler is shutting down"))?;
        Ok(Response::new(pb::ListPeersReply {
            peers: peers.into_iter().map(wire::peer_summary).collect(),
        }))
    }

    async fn session(
        &self,
        request: Request<Streaming<pb::PeerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("stream closed before hello"))??;
        let Some(PeerMsg::Hello(info)) = first.msg else {
            return Err(Status::invalid_argument("the first message must be hello"));
        };
        if info.peer_id.is_empty() || info.piece_addr.is_empty() {
            return Err(Status::invalid_argument(
                "hello needs a peer_id and a piece_addr",
            ));
        }
        let info = wire::host_info(info);
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let peer = info.peer_id.clone();
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        let kick = self.shutdown.child_token();
        self.events
            .send(Event::Hello {
                conn,
                info,
                tx,
                kick: kick.clone(),
            })
            .await
            .map_err(|_| Status::unavailable("scheduler is shutting down"))?;
        self.tasks.spawn(read_session(
            inbound,
            conn,
            peer,
            self.events.clone(),
            self.metrics.clone(),
            kick.clone(),
        ));
        Ok(Response::new(outbound(rx, kick, self.shutdown.clone())))
    }
}

/// A running scheduler. Dropping it stops the scheduler without waiting;
/// [`SchedulerHandle::shutdown`] stops it and waits.
pub struct SchedulerHandle {
    pub addr: SocketAddr,
    pub metrics: Arc<SchedulerMetrics>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

/// The result of a tracked task, with its panic (if any) carried on.
fn joined<T>(r: Result<T, tokio::task::JoinError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => None, // cancelled: nothing here aborts its tasks
    }
}

impl SchedulerHandle {
    /// Resolves if the gRPC server stops by itself, which only a transport
    /// error makes it do. Cancel-safe (for `select!` against a signal).
    pub async fn stopped(&mut self) -> Result<(), tonic::transport::Error> {
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        let r = joined(server.await);
        self.server = None;
        r.unwrap_or(Ok(()))
    }

    /// Stops accepting peers, ends every session (peers see "shutting down"
    /// and reconnect later), and waits for every task of the scheduler.
    pub async fn shutdown(mut self) -> Result<(), tonic::transport::Error> {
        self.shutdown.cancel();
        let r = self.stopped().await;
        self.tasks.close();
        self.tasks.wait().await;
        r
    }

    /// Serves `/metrics` on `listener` until the scheduler shuts down.
    pub fn serve_metrics(&self, listener: TcpListener) -> std::io::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        let metrics = self.metrics.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let m = metrics.clone();
                async move { m.render() }
            }),
        );
        let stop = self.shutdown.clone().cancelled_owned();
        self.tasks.spawn(async move {
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::warn!(%error, %addr, "the scheduler's /metrics server stopped");
            }
        });
        Ok(addr)
    }
}

impl Drop for SchedulerHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Serves the scheduler on an already bound listener, to anyone.
pub fn serve(listener: TcpListener, config: Config) -> std::io::Result<SchedulerHandle> {
    serve_authenticated(listener, config, None)
}

/// Serves the scheduler on an already bound listener; with `secrets`, only
/// to requests carrying a valid cluster token (see
/// [`weightcast_proto::cluster_auth`]): anyone else can neither register
/// nor announce, and is told why (`Unauthenticated`).
pub fn serve_authenticated(
    listener: TcpListener,
    config: Config,
    secrets: Option<Arc<ClusterSecrets>>,
) -> std::io::Result<SchedulerHandle> {
    let addr = listener.local_addr()?;
    let metrics = Arc::new(SchedulerMetrics::default());
    let auth = ServerAuth {
        secrets,
        refused: metrics.refused_unauthenticated.clone(),
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let (events, rx) = mpsc::channel(EVENT_QUEUE);
    tasks.spawn(run_actor(config, rx, metrics.clone(), shutdown.clone()));
    let svc = Service {
        events,
        next_conn: AtomicU64::new(0),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        tasks: tasks.clone(),
    };
    // Decisions are small messages: with Nagle's algorithm each waits for
    // the ACK of the one before, which the peer delays by up to 40 ms (the
    // p99 of announce → available was 40–44 ms at any load). The builder's
    // `tcp_nodelay` covers only listeners it binds itself, so the accepted
    // sockets of this one are set here.
    let incoming = tonic::transport::server::TcpIncoming::from_listener(listener, true, None)
        .map_err(std::io::Error::other)?;
    let server = tasks.spawn(
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
            .add_service(pb::scheduler_server::SchedulerServer::with_interceptor(
                svc, auth,
            ))
            .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned()),
    );
    Ok(SchedulerHandle {
        addr,
        metrics,
        shutdown,
        tasks,
        server: Some(server),
    })
}
