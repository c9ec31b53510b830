//! The download side: fetches pieces into caller-provided slices over pooled
//! connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use weightcast_proto::cluster_auth::ClusterSecrets;
use weightcast_proto::frame::{
    AuthChallenge, AuthProof, FrameError, PieceRequest, ResponseHeader, Status, AUTH_CHALLENGE_LEN,
    AUTH_CHALLENGE_MAGIC, RESPONSE_HEADER_LEN,
};
use weightcast_proto::transport::{
    unauthenticated, FetchReport, ParentAddr, PieceTransport, TransportError,
};
use weightcast_types::TaskId;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// No byte for this long from a parent means it is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Reads land in the destination in steps of this size, each under the idle timeout.
const READ_STEP: usize = 1 << 20;
const MAX_IDLE_CONNECTIONS_PER_PARENT: usize = 8;

/// TCP piece transport with a small pool of idle connections per parent.
#[derive(Default)]
pub struct TcpTransport {
    idle: Mutex<HashMap<ParentAddr, Vec<TcpStream>>>,
    /// With secrets, each new connection answers the parent's challenge.
    secrets: Option<Arc<ClusterSecrets>>,
}

/// Answers a parent's cluster-secret challenge on a fresh connection: reads
/// the challenge (at most `wait`), sends the proof. Also the RDMA control
/// connection's first step. The parent's verdict comes with its first
/// answer (a refusal is a response header with status `Unauthenticated`).
pub async fn answer_challenge(
    stream: &mut TcpStream,
    addr: &ParentAddr,
    secrets: &ClusterSecrets,
    wait: Duration,
) -> Result<(), TransportError> {
    let io = |source| TransportError::Io {
        addr: addr.0.clone(),
        source,
    };
    let mut b = [0u8; AUTH_CHALLENGE_LEN];
    let challenge = match timeout(wait, stream.read_exact(&mut b)).await {
        Err(_) => {
            return Err(TransportError::Unauthenticated {
                addr: addr.0.clone(),
                reason: unauthenticated::NO_CHALLENGE,
            })
        }
        Ok(r) => {
            r.map_err(io)?;
            AuthChallenge::decode(&b).map_err(|source| TransportError::Frame {
                addr: addr.0.clone(),
                source,
            })?
        }
    };
    let proof = secrets.current().piece_proof(&challenge.nonce);
    stream
        .write_all(&AuthProof { proof }.encode())
        .await
        .map_err(io)
}

/// The error for a parent's answer that starts with a challenge where a
/// response was expected: this peer has no secret and the parent wants one.
pub fn challenge_without_secret(addr: &ParentAddr, e: &FrameError) -> Option<TransportError> {
    matches!(e, FrameError::BadMagic(m) if *m == AUTH_CHALLENGE_MAGIC).then(|| {
        TransportError::Unauthenticated {
            addr: addr.0.clone(),
            reason: unauthenticated::NO_SECRET,
        }
    })
}

impl TcpTransport {
    pub fn new() -> Self {
        Self::default()
    }

    /// Proves `secrets` to every parent (nothing changes with `None`).
    pub fn with_cluster_secrets(secrets: Option<Arc<ClusterSecrets>>) -> Self {
        Self {
            secrets,
            ..Self::default()
        }
    }

    fn take_idle(&self, addr: &ParentAddr) -> Option<TcpStream> {
        self.idle.lock().ok()?.get_mut(addr)?.pop()
    }

    fn put_idle(&self, addr: &ParentAddr, s: TcpStream) {
        if let Ok(mut idle) = self.idle.lock() {
            let v = idle.entry(addr.clone()).or_default();
            if v.len() < MAX_IDLE_CONNECTIONS_PER_PARENT {
                v.push(s);
            }
        }
    }

    async fn connect(&self, addr: &ParentAddr) -> Result<TcpStream, TransportError> {
        let io = |source| TransportError::Io {
            addr: addr.0.clone(),
            source,
        };
        let mut s = timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr.0))
            .await
            .map_err(|_| io(std::io::ErrorKind::TimedOut.into()))?
            .map_err(io)?;
        let _ = s.set_nodelay(true);
        if let Some(secrets) = &self.secrets {
            answer_challenge(&mut s, addr, secrets, CONNECT_TIMEOUT).await?;
        }
        Ok(s)
    }

    async fn exchange(
        stream: &mut TcpStream,
        addr: &ParentAddr,
        req: PieceRequest,
        dst: &mut [u8],
    ) -> Result<FetchReport, TransportError> {
        let io = |source| TransportError::Io {
            addr: addr.0.clone(),
            source,
        };
        let timed_out = || io(std::io::ErrorKind::TimedOut.into());
        stream.write_all(&req.encode()).await.map_err(io)?;
        let mut h = [0u8; RESPONSE_HEADER_LEN];
        timeout(IDLE_TIMEOUT, stream.read_exact(&mut h))
            .await
            .map_err(|_| timed_out())?
            .map_err(io)?;
        let header = ResponseHeader::decode(&h).map_err(|source| {
            challenge_without_secret(addr, &source).unwrap_or(TransportError::Frame {
                addr: addr.0.clone(),
                source,
            })
        })?;
        match header.status {
            Status::Ok => {}
            Status::NotFound => return Err(TransportError::NotFound(addr.0.clone())),
            Status::Busy => return Err(TransportError::Busy(addr.0.clone())),
            Status::Elsewhere => {
                return Err(TransportError::Elsewhere {
                    addr: addr.0.clone(),
                    retry_in: std::time::Duration::from_millis(header.length),
                })
            }
            Status::Failed | Status::Unsupported => {
                return Err(TransportError::ParentFailed(addr.0.clone()))
            }
            Status::Unauthenticated => {
                return Err(TransportError::Unauthenticated {
                    addr: addr.0.clone(),
                    reason: unauthenticated::WRONG_SECRET,
                })
            }
        }
        if header.length != dst.len() as u64 {
            return Err(TransportError::LengthMismatch {
                addr: addr.0.clone(),
                got: header.length,
                want: dst.len() as u64,
            });
        }
        for chunk in dst.chunks_mut(READ_STEP) {
            timeout(IDLE_TIMEOUT, stream.read_exact(chunk))
                .await
                .map_err(|_| timed_out())?
                .map_err(io)?;
        }
        Ok(FetchReport {
            bytes: header.length,
            parent_load: header.active_uploads,
        })
    }
}

impl PieceTransport for TcpTransport {
    async fn fetch_piece<'a>(
        &'a self,
        parent: &'a ParentAddr,
        task: TaskId,
        piece: u32,
        dst: &'a mut [u8],
    ) -> Result<FetchReport, TransportError> {
        let req = PieceRequest { task, piece };
        // A pooled connection may have been closed by the parent since; retry
        // once on a fresh one before calling the parent failed.
        if let Some(mut s) = self.take_idle(parent) {
            match Self::exchange(&mut s, parent, req, dst).await {
                Ok(r) => {
                    self.put_idle(parent, s);
                    return Ok(r);
                }
                Err(TransportError::Io { .. }) => {}
                Err(e) => {
                    if !matches!(
                        e,
                        TransportError::LengthMismatch { .. }
                            | TransportError::Frame { .. }
                            | TransportError::Unauthenticated { .. }
                    ) {
                        self.put_idle(parent, s);
                    }
                    return Err(e);
                }
            }
        }
        let mut s = self.connect(parent).await?;
        let r = Self::exchange(&mut s, parent, req, dst).await;
        if matches!(
            r,
            Ok(_)
                | Err(TransportError::NotFound(_))
                | Err(TransportError::Busy(_))
                | Err(TransportError::Elsewhere { .. })
        ) {
            self.put_idle(parent, s);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PieceServer, PieceSource, UploadStats};
    use std::sync::Arc;

    struct OnePiece(Arc<Vec<u8>>);
    struct Shared(Arc<Vec<u8>>);
    impl AsRef<[u8]> for Shared {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }
    impl PieceSource for OnePiece {
        type Piece = Shared;
        fn verified_piece(&self, _task: &TaskId, num: u32) -> Option<Shared> {
            (num == 0).then(|| Shared(self.0.clone()))
        }
    }

    #[tokio::test]
    async fn piece_moves_into_the_destination_and_connections_are_reused() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let stats = Arc::new(UploadStats::default());
        let server = Arc::new(PieceServer::new(
            Arc::new(OnePiece(Arc::new(data.clone()))),
            4,
            stats.clone(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = ParentAddr(listener.local_addr().unwrap().to_string());
        tokio::spawn(server.run(listener));
        let t = TcpTransport::new();
        let mut dst = vec![0u8; data.len()];
        for _ in 0..3 {
            dst.fill(0);
            let r = t
                .fetch_piece(&addr, TaskId([1; 32]), 0, &mut dst)
                .await
                .unwrap();
            assert_eq!(r.bytes, data.len() as u64);
            assert_eq!(dst, data);
        }
        assert_eq!(
            t.idle.lock().unwrap()[&addr].len(),
            1,
            "one connection served all three"
        );
        assert!(matches!(
            t.fetch_piece(&addr, TaskId([1; 32]), 1, &mut dst).await,
            Err(TransportError::NotFound(_))
        ));
        let mut short = vec![0u8; 10];
        assert!(matches!(
            t.fetch_piece(&addr, TaskId([1; 32]), 0, &mut short).await,
            Err(TransportError::LengthMismatch { .. })
        ));
        // Three good transfers, plus the one the client refused for its length.
        assert_eq!(stats.pieces.load(std::sync::atomic::Ordering::Relaxed), 4);
    }

    fn secrets(dir: &std::path::Path, name: &str, text: &str) -> Arc<ClusterSecrets> {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        ClusterSecrets::load(&p).unwrap()
    }

    #[tokio::test]
    async fn with_a_secret_only_children_that_prove_it_get_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let a = secrets(dir.path(), "a", "secret-a-0123456789abcdef\n");
        let b = secrets(dir.path(), "b", "secret-b-0123456789abcdef\n");
        // A parent that accepts A and B (B new, A still accepted).
        let both = secrets(
            dir.path(),
            "ab",
            "secret-b-0123456789abcdef\nsecret-a-0123456789abcdef\n",
        );
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let stats = Arc::new(UploadStats::default());
        let server = PieceServer::new(Arc::new(OnePiece(Arc::new(data.clone()))), 4, stats.clone())
            .with_cluster_secrets(Some(both));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = ParentAddr(listener.local_addr().unwrap().to_string());
        tokio::spawn(Arc::new(server).run(listener));
        let task = TaskId([1; 32]);
        let mut dst = vec![0u8; data.len()];
        for s in [a, b] {
            dst.fill(0);
            let t = TcpTransport::with_cluster_secrets(Some(s));
            t.fetch_piece(&addr, task, 0, &mut dst).await.unwrap();
            assert_eq!(dst, data);
        }
        let none = TcpTransport::new()
            .fetch_piece(&addr, task, 0, &mut dst)
            .await;
        assert!(
            matches!(&none, Err(TransportError::Unauthenticated { reason, .. }) if *reason == unauthenticated::NO_SECRET),
            "{none:?}"
        );
        let wrong = secrets(dir.path(), "c", "secret-c-0123456789abcdef\n");
        let r = TcpTransport::with_cluster_secrets(Some(wrong))
            .fetch_piece(&addr, task, 0, &mut dst)
            .await;
        assert!(
            matches!(&r, Err(TransportError::Unauthenticated { reason, .. }) if *reason == unauthenticated::WRONG_SECRET),
            "{r:?}"
        );
        assert_eq!(
            stats
                .refused_unauthenticated
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        assert_eq!(
            stats.pieces.load(std::sync::atomic::Ordering::Relaxed),
            2,
            "only the two that proved it"
        );
    }

    #[tokio::test]
    async fn a_child_with_a_secret_says_so_when_the_parent_sends_no_challenge() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(UploadStats::default());
        let server = PieceServer::new(Arc::new(OnePiece(Arc::new(vec![1; 10]))), 4, stats);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = ParentAddr(listener.local_addr().unwrap().to_string());
        tokio::spawn(Arc::new(server).run(listener));
        let mut dst = vec![0u8; 10];
        let r = TcpTransport::with_cluster_secrets(Some(secrets(
            dir.path(),
            "a",
            "secret-a-0123456789abcdef",
        )))
        .fetch_piece(&addr, TaskId([1; 32]), 0, &mut dst)
        .await;
        assert!(
            matches!(&r, Err(TransportError::Unauthenticated { reason, .. }) if *reason == unauthenticated::NO_CHALLENGE),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn a_dead_parent_is_an_io_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = ParentAddr(listener.local_addr().unwrap().to_string());
        drop(listener);
        let mut dst = vec![0u8; 4];
        let r = TcpTransport::new()
            .fetch_piece(&addr, TaskId([1; 32]), 0, &mut dst)
            .await;
        assert!(matches!(r, Err(TransportError::Io { .. })), "{r:?}");
    }
}
