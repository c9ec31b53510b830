//! The gRPC shell around [`Core`]: one actor task owns the core; each peer
//! stream feeds it events and drains the messages addressed to that peer.

use crate::core::{Config, Core};
use crate::metrics::SchedulerMetrics;
use futures::StreamExt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};
use weightcast_proto::pb::{self, peer_message::Msg as PeerMsg};

type ToPeer = mpsc::UnboundedSender<Result<pb::SchedulerMessage, Status>>;

enum Event {
    Hello {
        conn: u64,
        info: pb::HostInfo,
        tx: ToPeer,
    },
    Message {
        conn: u64,
        peer: String,
        msg: PeerMsg,
    },
    Gone {
        conn: u64,
        peer: String,
    },
}

struct Service {
    events: mpsc::UnboundedSender<Event>,
    next_conn: std::sync::atomic::AtomicU64,
}

/// Owns the core; the only place decisions are made.
async fn run_core(
    config: Config,
    mut events: mpsc::UnboundedReceiver<Event>,
    metrics: Arc<SchedulerMetrics>,
) {
    let mut core = Core::new(config);
    let mut peers: HashMap<String, (u64, ToPeer)> = HashMap::new();
    while let Some(ev) = events.recv().await {
        let out = match ev {
            Event::Hello { conn, info, tx } => {
                tracing::info!(peer = %info.peer_id, host = %info.hostname, addr = %info.piece_addr, seed = info.seed, "peer connected");
                peers.insert(info.peer_id.clone(), (conn, tx));
                core.hello(info)
            }
            Event::Message { conn, peer, msg } => {
                if peers.get(&peer).map(|p| p.0) != Some(conn) {
                    continue; // a stale stream of a peer that reconnected
                }
                core.handle(&peer, msg)
            }
            Event::Gone { conn, peer } => {
                if peers.get(&peer).map(|p| p.0) != Some(conn) {
                    continue;
                }
                tracing::info!(%peer, "peer disconnected");
                peers.remove(&peer);
                core.disconnect(&peer)
            }
        };
        for o in out {
            if let Some((_, tx)) = peers.get(&o.to) {
                let _ = tx.send(Ok(pb::SchedulerMessage { msg: Some(o.msg) }));
            }
        }
        metrics.update(|s| {
            s.hosts = core.host_count() as u64;
            s.tasks = core.task_count() as u64;
            s.upload_load = core.upload_load();
            s.messages += 1;
            s.stats = core.stats.clone();
        });
    }
}

#[tonic::async_trait]
impl pb::scheduler_server::Scheduler for Service {
    type SessionStream =
        Pin<Box<dyn futures::Stream<Item = Result<pb::SchedulerMessage, Status>> + Send + 'static>>;

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
        let conn = self
            .next_conn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let peer = info.peer_id.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let events = self.events.clone();
        events
            .send(Event::Hello { conn, info, tx })
            .map_err(|_| Status::unavailable("scheduler is shutting down"))?;
        tokio::spawn(async move {
            while let Some(Ok(m)) = inbound.next().await {
                if let Some(msg) = m.msg {
                    if events
                        .send(Event::Message {
                            conn,
                            peer: peer.clone(),
                            msg,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            }
            let _ = events.send(Event::Gone { conn, peer });
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

/// A running scheduler.
pub struct SchedulerHandle {
    pub addr: SocketAddr,
    pub metrics: Arc<SchedulerMetrics>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl SchedulerHandle {
    /// Waits until the server stops (it only stops on error).
    pub async fn wait(self) -> Result<(), tonic::transport::Error> {
        match self.task.await {
            Ok(r) => r,
            Err(_) => Ok(()),
        }
    }

    pub fn abort(&self) {
        self.task.abort();
    }
}

/// Serves the scheduler on an already bound listener.
pub fn serve(listener: TcpListener, config: Config) -> std::io::Result<SchedulerHandle> {
    let addr = listener.local_addr()?;
    let metrics = Arc::new(SchedulerMetrics::default());
    let (events, rx) = mpsc::unbounded_channel();
    tokio::spawn(run_core(config, rx, metrics.clone()));
    let svc = Service {
        events,
        next_conn: Default::default(),
    };
    let task = tokio::spawn(
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
            .add_service(pb::scheduler_server::SchedulerServer::new(svc))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Ok(SchedulerHandle {
        addr,
        metrics,
        task,
    })
}

/// Serves `/metrics` for the scheduler.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<SchedulerMetrics>,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics.clone();
            async move { m.render() }
        }),
    );
    axum::serve(listener, app).await
}
