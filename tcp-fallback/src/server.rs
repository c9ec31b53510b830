//! The upload side: answers piece requests from a [`PieceSource`].

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weightcast_proto::frame::{PieceRequest, ResponseHeader, Status, REQUEST_LEN};
use weightcast_proto::TaskId;

/// Where the server finds verified pieces (the engine's task store).
pub trait PieceSource: Send + Sync + 'static {
    /// A verified piece's bytes, borrowed from the mmap'd task file; the value
    /// keeps the mapping alive while it is sent.
    type Piece: AsRef<[u8]> + Send + 'static;
    fn verified_piece(&self, task: &TaskId, num: u32) -> Option<Self::Piece>;
}

/// Upload counters, shared with the engine's metrics.
#[derive(Debug, Default)]
pub struct UploadStats {
    pub active: AtomicU32,
    pub bytes: AtomicU64,
    pub pieces: AtomicU64,
    pub refused_busy: AtomicU64,
}

pub struct PieceServer<S> {
    source: Arc<S>,
    max_uploads: u32,
    pub stats: Arc<UploadStats>,
}

/// Counts one upload in flight for as long as it lives.
struct UploadSlot(Arc<UploadStats>);

impl Drop for UploadSlot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S: PieceSource> PieceServer<S> {
    /// `max_uploads`: pieces served at once; more requests get `Busy` and the
    /// child asks another parent.
    pub fn new(source: Arc<S>, max_uploads: u32, stats: Arc<UploadStats>) -> Self {
        Self {
            source,
            max_uploads: max_uploads.max(1),
            stats,
        }
    }

    /// Accepts connections until the listener fails.
    pub async fn run(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, peer) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.serve_connection(stream).await {
                    tracing::debug!(%peer, error = %e, "piece connection ended");
                }
            });
        }
    }

    async fn serve_connection(&self, mut stream: TcpStream) -> std::io::Result<()> {
        let mut req = [0u8; REQUEST_LEN];
        loop {
            match stream.read_exact(&mut req).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            let req = PieceRequest::decode(&req)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            let active = self.stats.active.fetch_add(1, Ordering::AcqRel) + 1;
            let slot = UploadSlot(self.stats.clone());
            let header = |status, length| ResponseHeader {
                status,
                active_uploads: active,
                length,
            };
            if active > self.max_uploads {
                self.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
                stream.write_all(&header(Status::Busy, 0).encode()).await?;
                continue;
            }
            match self.source.verified_piece(&req.task, req.piece) {
                None => {
                    stream
                        .write_all(&header(Status::NotFound, 0).encode())
                        .await?
                }
                Some(piece) => {
                    let bytes = piece.as_ref();
                    stream
                        .write_all(&header(Status::Ok, bytes.len() as u64).encode())
                        .await?;
                    stream.write_all(bytes).await?;
                    self.stats
                        .bytes
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    self.stats.pieces.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(slot);
        }
    }
}
