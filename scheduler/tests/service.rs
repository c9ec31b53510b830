//! The gRPC service on a real loopback socket, with tonic clients as peers:
//! bounded queues, rejected messages, graceful shutdown.

use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::Streaming;
use weightcast_proto::pb::{
    self, peer_message::Msg as PeerMsg, scheduler_message::Msg as SchedMsg,
};
use weightcast_scheduler::{serve, Config, SchedulerHandle};
use weightcast_types::TaskId;

async fn scheduler() -> SchedulerHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve(listener, Config::default()).unwrap()
}

fn host(id: &str, seed: bool) -> pb::HostInfo {
    pb::HostInfo {
        peer_id: id.into(),
        hostname: format!("host-{id}"),
        piece_addr: format!("{id}:1"),
        seed,
        upload_slots: 4,
        ..Default::default()
    }
}

/// A peer's open session: what it sends, and what it receives.
struct Peer {
    tx: mpsc::Sender<pb::PeerMessage>,
    rx: Streaming<pb::SchedulerMessage>,
}

async fn connect(s: &SchedulerHandle, info: pb::HostInfo) -> Peer {
    let mut client = pb::scheduler_client::SchedulerClient::connect(format!("http://{}", s.addr))
        .await
        .unwrap();
    let (tx, out) = mpsc::channel(16);
    tx.send(pb::PeerMessage {
        msg: Some(PeerMsg::Hello(info)),
    })
    .await
    .unwrap();
    let rx = client
        .session(ReceiverStream::new(out))
        .await
        .unwrap()
        .into_inner();
    Peer { tx, rx }
}

fn register(task: &TaskId) -> pb::PeerMessage {
    pb::PeerMessage {
        msg: Some(PeerMsg::Register(pb::RegisterTask {
            task_id: task.to_hex(),
            url: format!("https://origin/{task}"),
            have: vec![],
            content_length: 0,
            digest: vec![],
            traceparent: String::new(),
        })),
    }
}

/// Waits until the metrics satisfy `ok`.
async fn until(
    s: &SchedulerHandle,
    what: &str,
    ok: impl Fn(&weightcast_scheduler::metrics::Snapshot) -> bool,
) {
    let t0 = std::time::Instant::now();
    while !ok(&s.metrics.snapshot()) {
        assert!(t0.elapsed() < Duration::from_secs(30), "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn malformed_messages_are_dropped_and_counted() {
    let s = scheduler().await;
    let mut a = connect(&s, host("a", false)).await;
    let bad = [
        PeerMsg::TaskDone(pb::TaskDone {
            task_id: "not-a-task-id".into(),
        }),
        PeerMsg::PieceDone(pb::PieceDone {
            task_id: TaskId::from_url("https://o/x").to_hex(),
            num: 0,
            digest: vec![1; 5],
        }),
    ];
    for m in bad {
        a.tx.send(pb::PeerMessage { msg: Some(m) }).await.unwrap();
    }
    until(&s, "two rejected messages", |m| m.rejected_messages == 2).await;
    // The session is still good: a valid register gets its answer.
    a.tx.send(register(&TaskId::from_url("https://o/y")))
        .await
        .unwrap();
    let m = a.rx.next().await.unwrap().unwrap();
    assert!(matches!(m.msg, Some(SchedMsg::BackToSource(_))), "{m:?}");
    assert!(s
        .metrics
        .render()
        .contains("weightcast_scheduler_rejected_messages_total 2"));
}

#[tokio::test]
async fn a_peer_that_stops_reading_is_disconnected_and_may_come_back() {
    let s = scheduler().await;
    // The seed never reads: every task `b` registers sends it a SeedTask.
    // (`b` completes each at once, so the seed's departure sends `b` nothing.)
    let mut seed = connect(&s, host("seed", true)).await;
    let b = connect(&s, host("b", false)).await;
    let Peer {
        tx: b_tx,
        rx: mut b_rx,
    } = b;
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = b_rx.next().await {} });
    // Up to far more than the per-peer queue plus what HTTP/2 buffers.
    for i in 0..50_000 {
        let task = TaskId::from_url(&format!("https://o/{i}"));
        b_tx.send(register(&task)).await.unwrap();
        b_tx.send(pb::PeerMessage {
            msg: Some(PeerMsg::TaskDone(pb::TaskDone {
                task_id: task.to_hex(),
            })),
        })
        .await
        .unwrap();
        if s.metrics.snapshot().slow_peers_disconnected > 0 {
            break;
        }
    }
    until(&s, "the seed disconnected", |m| {
        m.slow_peers_disconnected == 1
    })
    .await;
    until(&s, "only b left", |m| m.hosts == 1).await;
    // Reading now, the seed gets what was queued, then the reason it was cut.
    let status = loop {
        match seed.rx.next().await {
            Some(Ok(_)) => continue,
            Some(Err(status)) => break status,
            None => panic!("the stream ended without saying why"),
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    // It reconnects and is a seed again: a new task goes to it.
    let mut seed = connect(&s, host("seed", true)).await;
    until(&s, "the seed back", |m| m.hosts == 2).await;
    b_tx.send(register(&TaskId::from_url("https://o/new")))
        .await
        .unwrap();
    let m = seed.rx.next().await.unwrap().unwrap();
    assert!(matches!(m.msg, Some(SchedMsg::SeedTask(_))), "{m:?}");
    drop(b_tx);
    drain.await.unwrap();
}

#[tokio::test]
async fn shutdown_ends_every_session_and_returns() {
    let s = scheduler().await;
    let addr = s.addr;
    let mut a = connect(&s, host("a", false)).await;
    until(&s, "a connected", |m| m.hosts == 1).await;
    tokio::time::timeout(Duration::from_secs(10), s.shutdown())
        .await
        .expect("shutdown finishes while a peer is still connected")
        .unwrap();
    // The peer was told why its stream ended, and nobody listens any more.
    let status = a.rx.next().await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    drop(a.tx);
}
