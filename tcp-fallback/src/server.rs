//! The upload side: answers piece requests from a [`PieceSource`], and, when
//! given an [`RdmaResponder`], the RDMA control frames on the same
//! connection (this crate knows the frames, not verbs).

use crate::send_once::{SendOnce, SendTicket};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weightcast_proto::cluster_auth::ClusterSecrets;
use weightcast_proto::frame::{
    AuthChallenge, AuthProof, ClientFrame, PieceRequest, QpEndpoint, RdmaAccept, RdmaGrant,
    ResponseHeader, Status, AUTH_PROOF_LEN, AUTH_PROOF_MAGIC,
};
use weightcast_types::TaskId;

/// The first pause after a failed accept, doubled up to the maximum.
const ACCEPT_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);
const MAX_ACCEPT_PAUSE: std::time::Duration = std::time::Duration::from_secs(2);
/// Connections one peer (IP address) may hold open at once: a child uses
/// one per parent and a few while reconnecting, so more is a flood.
pub const MAX_CONNS_PER_PEER: u32 = 64;
/// Connections the server holds open at once, all peers together.
pub const MAX_CONNS: u32 = 4096;
/// How long a child has to answer the cluster-secret challenge.
const AUTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// At most one warning about refused children per this many seconds (a
/// misconfigured fleet, or a scanner, would flood the log otherwise).
const REFUSAL_WARN_EVERY_SECS: u64 = 10;

/// Open connections per peer address; a [`ConnSlot`] gives its own back.
#[derive(Default)]
pub(crate) struct ConnCounts(std::sync::Mutex<(u32, HashMap<std::net::IpAddr, u32>)>);

pub(crate) struct ConnSlot(Arc<ConnCounts>, std::net::IpAddr);

impl ConnCounts {
    /// A slot for a connection from `ip`, unless that peer or the server
    /// holds its maximum already.
    pub(crate) fn take(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<ConnSlot> {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per) = &mut *g;
        let n = per.entry(ip).or_insert(0);
        if *n >= MAX_CONNS_PER_PEER || *total >= MAX_CONNS {
            return None;
        }
        *n += 1;
        *total += 1;
        Some(ConnSlot(self.clone(), ip))
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut g = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per) = &mut *g;
        *total = total.saturating_sub(1);
        if let Some(n) = per.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.1);
            }
        }
    }
}

/// Where a verified piece lies in registered memory, for a child's RDMA READ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RdmaPieceLocation {
    pub addr: u64,
    pub rkey: u32,
    pub length: u64,
}

/// Why the RDMA half of a parent could not do what a child asked: the verbs
/// error itself, kept whole (this crate does not know verbs types).
pub type RdmaSetupError = Box<dyn std::error::Error + Send + Sync>;

/// The RDMA half of a parent, provided by the engine (which owns the device
/// and the task files). Without one, RDMA frames are answered `Unsupported`
/// and children use TCP.
pub trait RdmaResponder: Send + Sync + 'static {
    /// Connects a new queue pair to the child's endpoint. Returns this side's
    /// endpoint and a value that keeps the QP alive: it is dropped when the
    /// child's connection ends.
    fn accept(
        &self,
        child: &QpEndpoint,
    ) -> Result<(QpEndpoint, Box<dyn std::any::Any + Send>), RdmaSetupError>;
    /// Where verified piece `num` of `task` lies in registered memory
    /// (registering the task file on first use). `Ok(None)`: not verified
    /// here; a piece that is not verified is never exposed.
    fn expose(&self, task: &TaskId, num: u32) -> Result<Option<RdmaPieceLocation>, RdmaSetupError>;
}

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
    /// Piece bytes served, over either transport.
    pub bytes: AtomicU64,
    pub pieces: AtomicU64,
    /// The part of `bytes` that children read over RDMA.
    pub rdma_bytes: AtomicU64,
    pub rdma_pieces: AtomicU64,
    /// RDMA queue pairs connected for children.
    pub rdma_connects: AtomicU64,
    pub refused_busy: AtomicU64,
    /// Requests a seed answered `Elsewhere` (see [`SendOnce`]).
    pub refused_elsewhere: AtomicU64,
    /// Connections closed because the child did not prove the cluster secret.
    pub refused_unauthenticated: AtomicU64,
}

pub struct PieceServer<S> {
    source: Arc<S>,
    max_uploads: u32,
    /// Upload slots: `max_uploads` permits.
    slots: Arc<tokio::sync::Semaphore>,
    /// TCP piece requests waiting for an upload slot now.
    waiting: AtomicU32,
    pub stats: Arc<UploadStats>,
    rdma: Option<Arc<dyn RdmaResponder>>,
    send_once: Option<Arc<SendOnce>>,
    /// With secrets, every connection must answer a challenge first (see
    /// [`weightcast_proto::cluster_auth`]); RDMA setup rides on the same
    /// connections, so it is covered too.
    secrets: Option<Arc<ClusterSecrets>>,
    /// When the last refusal was logged (Unix seconds).
    refusal_logged: AtomicU64,
    /// See [`PieceServer::with_corrupt_uploads`].
    #[cfg(feature = "fault-injection")]
    corrupt_uploads: bool,
}

/// Requests queued per upload slot before a request is answered `Busy`.
const QUEUE_PER_SLOT: u32 = 2;
/// The longest a queued request waits for a slot.
const QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// One upload slot, counted in the stats for as long as it lives.
struct UploadSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    stats: Arc<UploadStats>,
}

impl UploadSlot {
    fn new(permit: tokio::sync::OwnedSemaphorePermit, stats: Arc<UploadStats>) -> Self {
        stats.active.fetch_add(1, Ordering::AcqRel);
        Self {
            _permit: permit,
            stats,
        }
    }
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        self.stats.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S: PieceSource> PieceServer<S> {
    /// `max_uploads`: pieces served at once; more requests get `Busy` and the
    /// child asks another parent.
    pub fn new(source: Arc<S>, max_uploads: u32, stats: Arc<UploadStats>) -> Self {
        Self {
            source,
            max_uploads: max_uploads.max(1),
            slots: Arc::new(tokio::sync::Semaphore::new(max_uploads.max(1) as usize)),
            waiting: AtomicU32::new(0),
            stats,
            rdma: None,
            send_once: None,
            secrets: None,
            refusal_logged: AtomicU64::new(0),
            #[cfg(feature = "fault-injection")]
            corrupt_uploads: false,
        }
    }

    /// Fault injection (test builds only): every piece served over TCP has
    /// its first byte flipped, as a peer with bad memory or a liar would
    /// send it. Children must detect each one and fetch it elsewhere.
    #[cfg(feature = "fault-injection")]
    pub fn with_corrupt_uploads(mut self) -> Self {
        self.corrupt_uploads = true;
        self
    }

    /// Sends each piece about once per `hold` (what a seed does; see
    /// [`SendOnce`]).
    pub fn with_send_once(mut self, hold: std::time::Duration) -> Self {
        self.send_once = Some(SendOnce::new(hold));
        self
    }

    /// Uploads in flight plus requests waiting for one: the load a child
    /// weighs this parent by.
    fn load(&self) -> u32 {
        self.stats.active.load(Ordering::Acquire) + self.waiting.load(Ordering::Acquire)
    }

    /// An upload slot, if one is free now.
    fn try_slot(&self) -> Option<UploadSlot> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(UploadSlot::new(permit, self.stats.clone()))
    }

    /// An upload slot for a TCP piece, waiting in a short queue when all are
    /// taken: a request that waits is served the moment a slot frees, where
    /// a `Busy` would leave the slot idle until the child asks again. `None`
    /// when the queue is full too, or the wait ran out. (RDMA requests never
    /// wait: their connection carries the frames that free slots.)
    async fn upload_slot(&self) -> Option<UploadSlot> {
        if let Some(s) = self.try_slot() {
            return Some(s);
        }
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        let slot = if queued < self.max_uploads * QUEUE_PER_SLOT {
            tokio::time::timeout(QUEUE_WAIT, self.slots.clone().acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|permit| UploadSlot::new(permit, self.stats.clone()))
        } else {
            None
        };
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        slot
    }

    /// A ticket to send the piece, or the `Elsewhere` wait in milliseconds.
    fn admit(&self, req: &PieceRequest, child: IpAddr) -> Result<Option<SendTicket>, u64> {
        let Some(once) = &self.send_once else {
            return Ok(None);
        };
        match once.admit(req.task, req.piece, child, Instant::now()) {
            Ok(t) => Ok(Some(t)),
            Err(wait) => {
                self.stats.refused_elsewhere.fetch_add(1, Ordering::Relaxed);
                Err(wait.as_millis().max(1) as u64)
            }
        }
    }

    /// Serves only children that prove one of `secrets` (nothing changes
    /// with `None`).
    pub fn with_cluster_secrets(mut self, secrets: Option<Arc<ClusterSecrets>>) -> Self {
        self.secrets = secrets;
        self
    }

    /// Challenges a new connection; `Ok(false)`: the child failed (it was
    /// told so, counted and logged) and the connection is to be closed.
    async fn authenticate(
        &self,
        stream: &mut TcpStream,
        secrets: &ClusterSecrets,
    ) -> std::io::Result<bool> {
        let nonce: [u8; weightcast_proto::cluster_auth::NONCE_LEN] = rand::random();
        stream.write_all(&AuthChallenge { nonce }.encode()).await?;
        let mut b = [0u8; AUTH_PROOF_LEN];
        let answer = tokio::time::timeout(AUTH_TIMEOUT, async {
            // The magic first: a child without a secret sends a shorter
            // frame of its own and waits, and should hear the refusal now.
            stream.read_exact(&mut b[..4]).await?;
            if b[..4] != AUTH_PROOF_MAGIC {
                return Ok::<_, std::io::Error>(None);
            }
            stream.read_exact(&mut b[4..]).await?;
            Ok(AuthProof::decode(&b).ok())
        })
        .await;
        let why = match answer {
            Ok(Ok(Some(p))) if secrets.current().accepts_piece_proof(&nonce, &p.proof) => {
                return Ok(true)
            }
            Ok(Ok(Some(_))) => "a wrong or retired cluster secret",
            Ok(Ok(None)) => "no cluster secret (it sent a piece frame first)",
            Ok(Err(e)) => return Err(e),
            Err(_) => "no answer to the challenge in time",
        };
        self.stats
            .refused_unauthenticated
            .fetch_add(1, Ordering::Relaxed);
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string());
        let now = weightcast_proto::cluster_auth::unix_now();
        let last = self.refusal_logged.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= REFUSAL_WARN_EVERY_SECS
            && self
                .refusal_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(%peer, reason = why, "refused a piece connection: the child did not prove the cluster secret (more are counted in weightcast_upload_refused_unauthenticated_total)");
        } else {
            tracing::debug!(%peer, reason = why, "refused a piece connection");
        }
        let refusal = ResponseHeader {
            status: Status::Unauthenticated,
            active_uploads: 0,
            length: 0,
        };
        let _ = stream.write_all(&refusal.encode()).await;
        // Close gently: unread bytes of the child's first frame would turn
        // the close into a reset that can overtake the refusal. So end our
        // side, then drop what the child still sends until it closes (a
        // second at most, 64 KiB at most).
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            let mut drained = 0;
            while drained < 64 * 1024 {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        })
        .await;
        Ok(false)
    }

    /// Serves RDMA control frames through `rdma` as well.
    pub fn with_rdma(mut self, rdma: Arc<dyn RdmaResponder>) -> Self {
        self.rdma = Some(rdma);
        self
    }

    /// Accepts connections and serves them until the returned future is
    /// dropped, which also ends every connection it serves (they live in
    /// its own `JoinSet`). A failed accept (out of file descriptors, say) is
    /// logged and retried after a pause, never in a busy loop.
    pub async fn run(self: Arc<Self>, listener: TcpListener) {
        let mut conns = tokio::task::JoinSet::new();
        let mut pause = ACCEPT_PAUSE;
        let counts = Arc::new(ConnCounts::default());
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        pause = ACCEPT_PAUSE;
                        let Some(slot) = counts.take(peer.ip()) else {
                            tracing::debug!(%peer, "refusing a connection: the peer holds its maximum open already");
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let me = self.clone();
                        conns.spawn(async move {
                            let _slot = slot;
                            if let Err(e) = me.serve_connection(stream).await {
                                tracing::debug!(%peer, error = %e, "piece connection ended");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "upload server cannot accept a connection; retrying");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(MAX_ACCEPT_PAUSE);
                    }
                },
                // Reap finished connections so the set does not grow.
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    }

    async fn serve_connection(&self, mut stream: TcpStream) -> std::io::Result<()> {
        if let Some(secrets) = &self.secrets {
            if !self.authenticate(&mut stream, secrets).await? {
                return Ok(());
            }
        }
        let invalid = |e| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        // Who asks, for a seed's send-once table (see `SendOnce`).
        let child = stream
            .peer_addr()
            .map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |a| a.ip());
        let mut frame = [0u8; 64];
        // RDMA state of this connection: the child's QP, and the pieces it
        // was granted and is reading now (each holds an upload slot).
        let mut qp: Option<Box<dyn std::any::Any + Send>> = None;
        let mut granted: HashMap<(TaskId, u32), (UploadSlot, u64, Option<SendTicket>)> =
            HashMap::new();
        loop {
            match stream.read_exact(&mut frame[..4]).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            let magic: [u8; 4] = frame[..4].try_into().expect("4 bytes");
            let len = ClientFrame::len_for_magic(magic).map_err(invalid)?;
            stream.read_exact(&mut frame[4..len]).await?;
            match ClientFrame::decode(&frame[..len]).map_err(invalid)? {
                ClientFrame::Piece(req) => self.serve_tcp_piece(&mut stream, req, child).await?,
                ClientFrame::RdmaConnect(child) => {
                    let (status, endpoint) = match &self.rdma {
                        None => (Status::Unsupported, child),
                        Some(r) => match r.accept(&child) {
                            Ok((ep, q)) => {
                                qp = Some(q);
                                self.stats.rdma_connects.fetch_add(1, Ordering::Relaxed);
                                (Status::Ok, ep)
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot connect an RDMA queue pair for a child");
                                (Status::Failed, child)
                            }
                        },
                    };
                    stream
                        .write_all(&RdmaAccept { status, endpoint }.encode())
                        .await?;
                }
                ClientFrame::RdmaPiece(req) => {
                    let ticket = match self.admit(&req, child) {
                        Ok(t) => t,
                        Err(wait_ms) => {
                            let g = RdmaGrant {
                                status: Status::Elsewhere,
                                active_uploads: self.load(),
                                addr: 0,
                                rkey: 0,
                                length: wait_ms,
                            };
                            stream.write_all(&g.encode()).await?;
                            continue;
                        }
                    };
                    let slot = self.try_slot();
                    let active = self.load();
                    let grant = |status, loc: Option<RdmaPieceLocation>| RdmaGrant {
                        status,
                        active_uploads: active,
                        addr: loc.map_or(0, |l| l.addr),
                        rkey: loc.map_or(0, |l| l.rkey),
                        length: loc.map_or(0, |l| l.length),
                    };
                    let connected = qp.is_some();
                    let g = match (&self.rdma, connected, slot) {
                        (Some(r), true, Some(slot)) => {
                            // The first exposure of a task registers (pins) its
                            // whole file: not on an async worker.
                            let r = r.clone();
                            let exposed =
                                tokio::task::spawn_blocking(move || r.expose(&req.task, req.piece))
                                    .await
                                    .unwrap_or_else(|e| Err(Box::new(e)));
                            match exposed {
                                Ok(Some(loc)) => {
                                    granted
                                        .insert((req.task, req.piece), (slot, loc.length, ticket));
                                    grant(Status::Ok, Some(loc))
                                }
                                Ok(None) => grant(Status::NotFound, None),
                                Err(e) => {
                                    tracing::warn!(task = %req.task, piece = req.piece, error = %e, "cannot expose a piece over RDMA");
                                    grant(Status::Failed, None)
                                }
                            }
                        }
                        (Some(_), true, None) => {
                            self.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
                            grant(Status::Busy, None)
                        }
                        _ => grant(Status::Unsupported, None),
                    };
                    stream.write_all(&g.encode()).await?;
                }
                ClientFrame::RdmaDone { req, ok } => {
                    // The child's reads are over: free the slot, count the bytes.
                    if let Some((_slot, length, ticket)) = granted.remove(&(req.task, req.piece)) {
                        if ok {
                            if let Some(t) = ticket {
                                t.sent(Instant::now());
                            }
                            self.stats.bytes.fetch_add(length, Ordering::Relaxed);
                            self.stats.rdma_bytes.fetch_add(length, Ordering::Relaxed);
                            self.stats.pieces.fetch_add(1, Ordering::Relaxed);
                            self.stats.rdma_pieces.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    }

    async fn serve_tcp_piece(
        &self,
        stream: &mut TcpStream,
        req: PieceRequest,
        child: IpAddr,
    ) -> std::io::Result<()> {
        let ticket = match self.admit(&req, child) {
            Ok(t) => t,
            Err(wait_ms) => {
                let h = ResponseHeader {
                    status: Status::Elsewhere,
                    active_uploads: self.load(),
                    length: wait_ms,
                };
                return stream.write_all(&h.encode()).await;
            }
        };
        let Some(_slot) = self.upload_slot().await else {
            self.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
            let h = ResponseHeader {
                status: Status::Busy,
                active_uploads: self.load(),
                length: 0,
            };
            return stream.write_all(&h.encode()).await;
        };
        let active = self.load();
        let header = |status, length| ResponseHeader {
            status,
            active_uploads: active,
            length,
        };
        match self.source.verified_piece(&req.task, req.piece) {
            None => {
                stream
                    .write_all(&header(Status::NotFound, 0).encode())
                    .await
            }
            Some(piece) => {
                let bytes = piece.as_ref();
                #[cfg(feature = "fault-injection")]
                let flipped = (self.corrupt_uploads && !bytes.is_empty()).then(|| {
                    let mut v = bytes.to_vec();
                    v[0] ^= 0xff;
                    v
                });
                #[cfg(feature = "fault-injection")]
                let bytes = flipped.as_deref().unwrap_or(bytes);
                stream
                    .write_all(&header(Status::Ok, bytes.len() as u64).encode())
                    .await?;
                stream.write_all(bytes).await?;
                if let Some(t) = ticket {
                    t.sent(Instant::now());
                }
                self.stats
                    .bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                self.stats.pieces.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod conn_tests {
    use super::*;

    #[test]
    fn a_peer_holds_at_most_its_share_of_connections() {
        let counts = Arc::new(ConnCounts::default());
        let a: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let b: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        let held: Vec<ConnSlot> = (0..MAX_CONNS_PER_PEER)
            .map(|_| counts.take(a).unwrap())
            .collect();
        assert!(counts.take(a).is_none(), "one more from the same peer");
        let other = counts.take(b).expect("another peer still gets one");
        drop(held);
        assert!(
            counts.take(a).is_some(),
            "slots come back when connections end"
        );
        drop(other);
        assert!(counts.0.lock().unwrap().1.len() <= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weightcast_proto::frame::{RDMA_ACCEPT_LEN, RDMA_GRANT_LEN};

    struct NoPieces;
    impl PieceSource for NoPieces {
        type Piece = Vec<u8>;
        fn verified_piece(&self, _: &TaskId, _: u32) -> Option<Vec<u8>> {
            None
        }
    }

    /// A responder that "registers" piece 0 only.
    struct FakeRdma;
    impl RdmaResponder for FakeRdma {
        fn accept(
            &self,
            child: &QpEndpoint,
        ) -> Result<(QpEndpoint, Box<dyn std::any::Any + Send>), RdmaSetupError> {
            Ok((
                QpEndpoint {
                    qp_num: child.qp_num + 1,
                    ..*child
                },
                Box::new(()),
            ))
        }
        fn expose(
            &self,
            _: &TaskId,
            num: u32,
        ) -> Result<Option<RdmaPieceLocation>, RdmaSetupError> {
            Ok((num == 0).then_some(RdmaPieceLocation {
                addr: 0x1000,
                rkey: 7,
                length: 4096,
            }))
        }
    }

    const EP: QpEndpoint = QpEndpoint {
        qp_num: 17,
        psn: 1,
        lid: 0,
        gid: [0; 16],
        mtu: 3,
        max_rd_atomic: 8,
    };

    async fn start(rdma: Option<Arc<dyn RdmaResponder>>) -> (TcpStream, Arc<UploadStats>) {
        let stats = Arc::new(UploadStats::default());
        let mut server = PieceServer::new(Arc::new(NoPieces), 1, stats.clone());
        if let Some(r) = rdma {
            server = server.with_rdma(r);
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(Arc::new(server).run(listener));
        (TcpStream::connect(addr).await.unwrap(), stats)
    }

    async fn send(s: &mut TcpStream, f: ClientFrame) {
        let mut b = Vec::new();
        f.encode(&mut b);
        s.write_all(&b).await.unwrap();
    }

    async fn accept(s: &mut TcpStream) -> RdmaAccept {
        send(s, ClientFrame::RdmaConnect(EP)).await;
        let mut b = [0u8; RDMA_ACCEPT_LEN];
        s.read_exact(&mut b).await.unwrap();
        RdmaAccept::decode(&b).unwrap()
    }

    async fn ask(s: &mut TcpStream, piece: u32) -> RdmaGrant {
        send(
            s,
            ClientFrame::RdmaPiece(PieceRequest {
                task: TaskId([3; 32]),
                piece,
            }),
        )
        .await;
        let mut b = [0u8; RDMA_GRANT_LEN];
        s.read_exact(&mut b).await.unwrap();
        RdmaGrant::decode(&b).unwrap()
    }

    #[tokio::test]
    async fn without_rdma_the_handshake_is_refused() {
        let (mut s, _) = start(None).await;
        assert_eq!(accept(&mut s).await.status, Status::Unsupported);
        assert_eq!(ask(&mut s, 0).await.status, Status::Unsupported);
    }

    #[tokio::test]
    async fn a_grant_holds_an_upload_slot_until_the_child_is_done() {
        let (mut s, stats) = start(Some(Arc::new(FakeRdma))).await;
        // No piece before a queue pair exists.
        assert_eq!(ask(&mut s, 0).await.status, Status::Unsupported);
        let a = accept(&mut s).await;
        assert_eq!(a.status, Status::Ok);
        assert_eq!(a.endpoint.qp_num, 18);
        assert_eq!(ask(&mut s, 1).await.status, Status::NotFound);
        let g = ask(&mut s, 0).await;
        assert_eq!(
            (g.status, g.addr, g.rkey, g.length),
            (Status::Ok, 0x1000, 7, 4096)
        );
        // One upload slot: the granted read holds it.
        assert_eq!(ask(&mut s, 0).await.status, Status::Busy);
        let req = PieceRequest {
            task: TaskId([3; 32]),
            piece: 0,
        };
        send(&mut s, ClientFrame::RdmaDone { req, ok: true }).await;
        assert_eq!(ask(&mut s, 0).await.status, Status::Ok);
        send(&mut s, ClientFrame::RdmaDone { req, ok: false }).await;
        assert_eq!(ask(&mut s, 1).await.status, Status::NotFound);
        assert_eq!(
            stats.rdma_bytes.load(Ordering::Relaxed),
            4096,
            "only the good read counts"
        );
        assert_eq!(stats.bytes.load(Ordering::Relaxed), 4096);
        assert_eq!(stats.rdma_connects.load(Ordering::Relaxed), 1);
        assert_eq!(stats.active.load(Ordering::Relaxed), 0);
    }
}
