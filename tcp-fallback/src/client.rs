//! The download side: fetches pieces into caller-provided slices over pooled
//! connections.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use weightcast_proto::frame::{PieceRequest, ResponseHeader, Status, RESPONSE_HEADER_LEN};
use weightcast_proto::transport::{FetchReport, ParentAddr, PieceTransport, TransportError};
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
}

impl TcpTransport {
    pub fn new() -> Self {
        Self::default()
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

    async fn connect(addr: &ParentAddr) -> Result<TcpStream, TransportError> {
        let io = |source| TransportError::Io {
            addr: addr.0.clone(),
            source,
        };
        let s = timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr.0))
            .await
            .map_err(|_| io(std::io::ErrorKind::TimedOut.into()))?
            .map_err(io)?;
        let _ = s.set_nodelay(true);
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
        let header = ResponseHeader::decode(&h).map_err(|source| TransportError::Frame {
            addr: addr.0.clone(),
            source,
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
                        TransportError::LengthMismatch { .. } | TransportError::Frame { .. }
                    ) {
                        self.put_idle(parent, s);
                    }
                    return Err(e);
                }
            }
        }
        let mut s = Self::connect(parent).await?;
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
