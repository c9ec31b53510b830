//! The peer-to-peer piece protocol: fixed-size frames over one TCP connection.
//!
//! ```text
//! request  (40 bytes): "WCP1" | task id (32) | piece number (u32 BE)
//! response (17 bytes): "WCR1" | status (u8) | parent's active uploads (u32 BE) | length (u64 BE)
//!                      followed by `length` raw piece bytes when status is Ok
//! ```
//! A connection carries any number of request/response pairs in turn. Piece
//! bytes follow the header unframed, so the receiver can read them straight
//! into the piece's slice of its mmap'd task file and the sender can write
//! them straight from its own: no per-piece buffer on either side.
//!
//! The same connection is the RDMA control channel. A child that wants piece
//! bytes over RDMA connects a queue pair first, then asks for each piece;
//! the parent answers with where the verified piece lies in its registered
//! memory, the child reads it with one-sided RDMA READs and says when it is
//! done (so the parent can count the upload and free the slot):
//! ```text
//! RDMA connect (32): "WCQ1" | endpoint (28)               child -> parent
//! RDMA accept  (33): "WCA1" | status (u8) | endpoint (28)  parent -> child
//! RDMA piece   (40): "WCM1" | task id (32) | piece (u32 BE)
//! RDMA grant   (29): "WCG1" | status (u8) | active uploads (u32 BE)
//!                    | remote address (u64 BE) | rkey (u32 BE) | length (u64 BE)
//! RDMA done    (41): "WCD1" | task id (32) | piece (u32 BE) | ok (u8)   no answer
//! endpoint     (28): QP number (u32 BE) | PSN (u32 BE) | LID (u16 BE) | GID (16)
//!                    | path MTU (u8, ibv_mtu) | outstanding reads wanted (u8)
//! ```
//! Every frame a child sends starts with a 4-byte magic that tells its
//! length, so the parent reads the magic, then the rest.
//!
//! A parent with a cluster secret (see [`crate::cluster_auth`]) opens every
//! connection with a challenge, and serves nothing until the child's first
//! frame answers it:
//! ```text
//! auth challenge (36): "WCH1" | nonce (32)                 parent -> child
//! auth proof     (36): "WCK1" | HMAC-SHA256(secret, nonce ‖ "weightcast-pieces")
//! ```
//! A wrong or missing answer gets a response header with status
//! `Unauthenticated`, and the connection is closed. A child without a secret
//! that meets a challenge reads "WCH1" where it expected a response (or an
//! RDMA answer) and reports that the parent requires the cluster secret.

use weightcast_types::TaskId;

pub const REQUEST_MAGIC: [u8; 4] = *b"WCP1";
pub const RESPONSE_MAGIC: [u8; 4] = *b"WCR1";
pub const REQUEST_LEN: usize = 40;
pub const RESPONSE_HEADER_LEN: usize = 17;
pub const RDMA_CONNECT_MAGIC: [u8; 4] = *b"WCQ1";
pub const RDMA_ACCEPT_MAGIC: [u8; 4] = *b"WCA1";
pub const RDMA_PIECE_MAGIC: [u8; 4] = *b"WCM1";
pub const RDMA_GRANT_MAGIC: [u8; 4] = *b"WCG1";
pub const RDMA_DONE_MAGIC: [u8; 4] = *b"WCD1";
pub const ENDPOINT_LEN: usize = 28;
pub const RDMA_CONNECT_LEN: usize = 4 + ENDPOINT_LEN;
pub const RDMA_ACCEPT_LEN: usize = 5 + ENDPOINT_LEN;
pub const RDMA_PIECE_LEN: usize = 40;
pub const RDMA_GRANT_LEN: usize = 29;
pub const RDMA_DONE_LEN: usize = 41;
pub const AUTH_CHALLENGE_MAGIC: [u8; 4] = *b"WCH1";
pub const AUTH_PROOF_MAGIC: [u8; 4] = *b"WCK1";
pub const AUTH_CHALLENGE_LEN: usize = 4 + NONCE_LEN;
pub const AUTH_PROOF_LEN: usize = 4 + PROOF_LEN;

use crate::cluster_auth::{NONCE_LEN, PROOF_LEN};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceRequest {
    pub task: TaskId,
    pub piece: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    /// The parent has no verified copy of this piece (or no such task).
    NotFound = 1,
    /// Every upload slot is taken: ask another parent.
    Busy = 2,
    /// The parent failed to read its own copy (or to set up RDMA).
    Failed = 3,
    /// The parent does not serve pieces over RDMA (no device, or `--transport tcp`).
    Unsupported = 4,
    /// A seed sent this piece to another peer moments ago: take it from
    /// the peers (it is on its way through the swarm), and ask this parent
    /// again only later if nobody else has it. The answer's `length` field
    /// carries how much later, in milliseconds.
    Elsewhere = 5,
    /// The child did not answer the cluster-secret challenge with an
    /// accepted secret; the parent closes the connection after this.
    Unauthenticated = 6,
}

impl Status {
    fn from_u8(b: u8) -> Result<Self, FrameError> {
        Ok(match b {
            0 => Status::Ok,
            1 => Status::NotFound,
            2 => Status::Busy,
            3 => Status::Failed,
            4 => Status::Unsupported,
            5 => Status::Elsewhere,
            6 => Status::Unauthenticated,
            other => return Err(FrameError::BadStatus(other)),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHeader {
    pub status: Status,
    /// Uploads the parent is serving right now: a live load signal for
    /// the child's parent choice.
    pub active_uploads: u32,
    pub length: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("not a weightcast piece frame (bad magic {0:02x?})")]
    BadMagic([u8; 4]),
    #[error("unknown response status {0}")]
    BadStatus(u8),
    #[error("truncated frame")]
    Short,
}

impl PieceRequest {
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[..4].copy_from_slice(&REQUEST_MAGIC);
        b[4..36].copy_from_slice(self.task.as_bytes());
        b[36..40].copy_from_slice(&self.piece.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8; REQUEST_LEN]) -> Result<Self, FrameError> {
        let magic: [u8; 4] = b[..4].try_into().expect("4 bytes");
        if magic != REQUEST_MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        Ok(Self {
            task: TaskId(b[4..36].try_into().expect("32 bytes")),
            piece: u32::from_be_bytes(b[36..40].try_into().expect("4 bytes")),
        })
    }
}

impl ResponseHeader {
    pub fn encode(&self) -> [u8; RESPONSE_HEADER_LEN] {
        let mut b = [0u8; RESPONSE_HEADER_LEN];
        b[..4].copy_from_slice(&RESPONSE_MAGIC);
        b[4] = self.status as u8;
        b[5..9].copy_from_slice(&self.active_uploads.to_be_bytes());
        b[9..17].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8; RESPONSE_HEADER_LEN]) -> Result<Self, FrameError> {
        let magic: [u8; 4] = b[..4].try_into().expect("4 bytes");
        if magic != RESPONSE_MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        Ok(Self {
            status: Status::from_u8(b[4])?,
            active_uploads: u32::from_be_bytes(b[5..9].try_into().expect("4 bytes")),
            length: u64::from_be_bytes(b[9..17].try_into().expect("8 bytes")),
        })
    }
}

/// One side of an RC queue pair, as the other side needs it to connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpEndpoint {
    pub qp_num: u32,
    /// First packet sequence number this side sends.
    pub psn: u32,
    /// InfiniBand local id (0 on RoCE).
    pub lid: u16,
    /// The port GID (RoCE: the IP address, IPv4-mapped for IPv4).
    pub gid: [u8; 16],
    /// The port's active MTU as `enum ibv_mtu` (1 = 256 ... 5 = 4096).
    pub mtu: u8,
    /// RDMA READs this side keeps outstanding as initiator (child) or
    /// accepts as responder (parent).
    pub max_rd_atomic: u8,
}

impl QpEndpoint {
    fn put(&self, b: &mut [u8]) {
        b[..4].copy_from_slice(&self.qp_num.to_be_bytes());
        b[4..8].copy_from_slice(&self.psn.to_be_bytes());
        b[8..10].copy_from_slice(&self.lid.to_be_bytes());
        b[10..26].copy_from_slice(&self.gid);
        b[26] = self.mtu;
        b[27] = self.max_rd_atomic;
    }

    fn get(b: &[u8]) -> Self {
        Self {
            qp_num: u32::from_be_bytes(b[..4].try_into().expect("4 bytes")),
            psn: u32::from_be_bytes(b[4..8].try_into().expect("4 bytes")),
            lid: u16::from_be_bytes(b[8..10].try_into().expect("2 bytes")),
            gid: b[10..26].try_into().expect("16 bytes"),
            mtu: b[26],
            max_rd_atomic: b[27],
        }
    }
}

/// A frame a child sends on a piece connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFrame {
    /// A piece over TCP.
    Piece(PieceRequest),
    /// Connect a queue pair to this endpoint.
    RdmaConnect(QpEndpoint),
    /// Where is this piece in your registered memory?
    RdmaPiece(PieceRequest),
    /// The child's reads of a granted piece are over.
    RdmaDone { req: PieceRequest, ok: bool },
}

impl ClientFrame {
    /// Total length of the frame that starts with `magic`.
    pub fn len_for_magic(magic: [u8; 4]) -> Result<usize, FrameError> {
        match magic {
            REQUEST_MAGIC => Ok(REQUEST_LEN),
            RDMA_CONNECT_MAGIC => Ok(RDMA_CONNECT_LEN),
            RDMA_PIECE_MAGIC => Ok(RDMA_PIECE_LEN),
            RDMA_DONE_MAGIC => Ok(RDMA_DONE_LEN),
            other => Err(FrameError::BadMagic(other)),
        }
    }

    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let task_piece = |out: &mut Vec<u8>, magic: [u8; 4], r: &PieceRequest| {
            out.extend_from_slice(&magic);
            out.extend_from_slice(r.task.as_bytes());
            out.extend_from_slice(&r.piece.to_be_bytes());
        };
        match self {
            ClientFrame::Piece(r) => task_piece(out, REQUEST_MAGIC, r),
            ClientFrame::RdmaPiece(r) => task_piece(out, RDMA_PIECE_MAGIC, r),
            ClientFrame::RdmaDone { req, ok } => {
                task_piece(out, RDMA_DONE_MAGIC, req);
                out.push(*ok as u8);
            }
            ClientFrame::RdmaConnect(e) => {
                out.extend_from_slice(&RDMA_CONNECT_MAGIC);
                let mut b = [0u8; ENDPOINT_LEN];
                e.put(&mut b);
                out.extend_from_slice(&b);
            }
        }
    }

    /// Decodes a whole frame (`b.len()` as [`ClientFrame::len_for_magic`] said).
    pub fn decode(b: &[u8]) -> Result<Self, FrameError> {
        let magic: [u8; 4] = b
            .get(..4)
            .and_then(|m| m.try_into().ok())
            .ok_or(FrameError::Short)?;
        if b.len() != Self::len_for_magic(magic)? {
            return Err(FrameError::Short);
        }
        let task_piece = || PieceRequest {
            task: TaskId(b[4..36].try_into().expect("32 bytes")),
            piece: u32::from_be_bytes(b[36..40].try_into().expect("4 bytes")),
        };
        Ok(match magic {
            REQUEST_MAGIC => ClientFrame::Piece(task_piece()),
            RDMA_PIECE_MAGIC => ClientFrame::RdmaPiece(task_piece()),
            RDMA_DONE_MAGIC => ClientFrame::RdmaDone {
                req: task_piece(),
                ok: b[40] != 0,
            },
            _ => ClientFrame::RdmaConnect(QpEndpoint::get(&b[4..])),
        })
    }
}

/// The parent's answer to [`ClientFrame::RdmaConnect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RdmaAccept {
    pub status: Status,
    /// The parent's endpoint (zeros unless `status` is Ok).
    pub endpoint: QpEndpoint,
}

impl RdmaAccept {
    pub fn encode(&self) -> [u8; RDMA_ACCEPT_LEN] {
        let mut b = [0u8; RDMA_ACCEPT_LEN];
        b[..4].copy_from_slice(&RDMA_ACCEPT_MAGIC);
        b[4] = self.status as u8;
        self.endpoint.put(&mut b[5..]);
        b
    }

    pub fn decode(b: &[u8; RDMA_ACCEPT_LEN]) -> Result<Self, FrameError> {
        let magic: [u8; 4] = b[..4].try_into().expect("4 bytes");
        if magic != RDMA_ACCEPT_MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        Ok(Self {
            status: Status::from_u8(b[4])?,
            endpoint: QpEndpoint::get(&b[5..]),
        })
    }
}

/// The parent's answer to [`ClientFrame::RdmaPiece`]: where the verified
/// piece lies in its registered memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RdmaGrant {
    pub status: Status,
    pub active_uploads: u32,
    pub addr: u64,
    pub rkey: u32,
    pub length: u64,
}

impl RdmaGrant {
    pub fn encode(&self) -> [u8; RDMA_GRANT_LEN] {
        let mut b = [0u8; RDMA_GRANT_LEN];
        b[..4].copy_from_slice(&RDMA_GRANT_MAGIC);
        b[4] = self.status as u8;
        b[5..9].copy_from_slice(&self.active_uploads.to_be_bytes());
        b[9..17].copy_from_slice(&self.addr.to_be_bytes());
        b[17..21].copy_from_slice(&self.rkey.to_be_bytes());
        b[21..29].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8; RDMA_GRANT_LEN]) -> Result<Self, FrameError> {
        let magic: [u8; 4] = b[..4].try_into().expect("4 bytes");
        if magic != RDMA_GRANT_MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        Ok(Self {
            status: Status::from_u8(b[4])?,
            active_uploads: u32::from_be_bytes(b[5..9].try_into().expect("4 bytes")),
            addr: u64::from_be_bytes(b[9..17].try_into().expect("8 bytes")),
            rkey: u32::from_be_bytes(b[17..21].try_into().expect("4 bytes")),
            length: u64::from_be_bytes(b[21..29].try_into().expect("8 bytes")),
        })
    }
}

/// The parent's opening frame when it has a cluster secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthChallenge {
    pub nonce: [u8; NONCE_LEN],
}

impl AuthChallenge {
    pub fn encode(&self) -> [u8; AUTH_CHALLENGE_LEN] {
        let mut b = [0u8; AUTH_CHALLENGE_LEN];
        b[..4].copy_from_slice(&AUTH_CHALLENGE_MAGIC);
        b[4..].copy_from_slice(&self.nonce);
        b
    }

    pub fn decode(b: &[u8; AUTH_CHALLENGE_LEN]) -> Result<Self, FrameError> {
        let magic: [u8; 4] = b[..4].try_into().expect("4 bytes");
        if magic != AUTH_CHALLENGE_MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        Ok(Self {
            nonce: b[4..].try_into().expect("32 bytes"),
        })
    }
}

/// The child's answer to an [`AuthChallenge`]: its first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthProof {
    pub proof: [u8; PROOF_LEN],
}

impl AuthProof {
    pub fn encode(&self) -> [u8; AUTH_PROOF_LEN] {
        let mut b = [0u8; AUTH_PROOF_LEN];
        b[..4].copy_from_slice(&AUTH_PROOF_MAGIC);
        b[4..].copy_from_slice(&self.proof);
        b
    }

    pub fn decode(b: &[u8; AUTH_PROOF_LEN]) -> Result<Self, FrameError> {
        let magic: [u8; 4] = b[..4].try_into().expect("4 bytes");
        if magic != AUTH_PROOF_MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        Ok(Self {
            proof: b[4..].try_into().expect("32 bytes"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips() {
        let r = PieceRequest {
            task: TaskId([9; 32]),
            piece: 0xDEAD_BEEF,
        };
        assert_eq!(PieceRequest::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn auth_frames_round_trip_and_are_not_each_other() {
        let c = AuthChallenge { nonce: [5; 32] };
        assert_eq!(AuthChallenge::decode(&c.encode()), Ok(c));
        let p = AuthProof { proof: [6; 32] };
        assert_eq!(AuthProof::decode(&p.encode()), Ok(p));
        assert!(AuthProof::decode(&c.encode()).is_err());
        assert!(AuthChallenge::decode(&p.encode()).is_err());
        // Neither is a frame a parent serves outside the handshake.
        assert!(ClientFrame::len_for_magic(AUTH_PROOF_MAGIC).is_err());
    }

    #[test]
    fn response_round_trips_every_status() {
        for status in [
            Status::Ok,
            Status::NotFound,
            Status::Busy,
            Status::Failed,
            Status::Elsewhere,
            Status::Unauthenticated,
        ] {
            let h = ResponseHeader {
                status,
                active_uploads: 7,
                length: (64 << 20) + 3,
            };
            assert_eq!(ResponseHeader::decode(&h.encode()).unwrap(), h);
        }
    }

    #[test]
    fn garbage_is_rejected() {
        let mut b = PieceRequest {
            task: TaskId([0; 32]),
            piece: 1,
        }
        .encode();
        b[0] = b'X';
        assert!(matches!(
            PieceRequest::decode(&b),
            Err(FrameError::BadMagic(_))
        ));
        let mut h = ResponseHeader {
            status: Status::Ok,
            active_uploads: 0,
            length: 1,
        }
        .encode();
        h[4] = 200;
        assert_eq!(ResponseHeader::decode(&h), Err(FrameError::BadStatus(200)));
    }

    #[test]
    fn rdma_frames_round_trip() {
        let ep = QpEndpoint {
            qp_num: 0x00AB_CDEF,
            psn: 0x0012_3456,
            lid: 7,
            gid: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 2, 15],
            mtu: 3,
            max_rd_atomic: 16,
        };
        let req = PieceRequest {
            task: TaskId([5; 32]),
            piece: 42,
        };
        for f in [
            ClientFrame::Piece(req),
            ClientFrame::RdmaConnect(ep),
            ClientFrame::RdmaPiece(req),
            ClientFrame::RdmaDone { req, ok: true },
            ClientFrame::RdmaDone { req, ok: false },
        ] {
            let mut b = Vec::new();
            f.encode(&mut b);
            let magic: [u8; 4] = b[..4].try_into().unwrap();
            assert_eq!(ClientFrame::len_for_magic(magic).unwrap(), b.len());
            assert_eq!(ClientFrame::decode(&b).unwrap(), f);
        }
        // A TCP piece request is the same 40 bytes as before.
        let mut b = Vec::new();
        ClientFrame::Piece(req).encode(&mut b);
        assert_eq!(b, req.encode());
        let a = RdmaAccept {
            status: Status::Ok,
            endpoint: ep,
        };
        assert_eq!(RdmaAccept::decode(&a.encode()).unwrap(), a);
        let g = RdmaGrant {
            status: Status::Ok,
            active_uploads: 3,
            addr: 0x7f00_dead_b000,
            rkey: 0x1234,
            length: 16 << 20,
        };
        assert_eq!(RdmaGrant::decode(&g.encode()).unwrap(), g);
    }

    #[test]
    fn bad_rdma_frames_are_rejected() {
        assert_eq!(
            ClientFrame::len_for_magic(*b"HTTP"),
            Err(FrameError::BadMagic(*b"HTTP"))
        );
        let mut b = Vec::new();
        ClientFrame::RdmaDone {
            req: PieceRequest {
                task: TaskId([1; 32]),
                piece: 0,
            },
            ok: true,
        }
        .encode(&mut b);
        assert_eq!(ClientFrame::decode(&b[..40]), Err(FrameError::Short));
        assert_eq!(ClientFrame::decode(&b[..2]), Err(FrameError::Short));
        let mut g = RdmaGrant {
            status: Status::Unsupported,
            active_uploads: 0,
            addr: 0,
            rkey: 0,
            length: 0,
        }
        .encode();
        assert_eq!(RdmaGrant::decode(&g).unwrap().status, Status::Unsupported);
        g[4] = 9;
        assert_eq!(RdmaGrant::decode(&g), Err(FrameError::BadStatus(9)));
        let mut a = RdmaAccept {
            status: Status::Ok,
            endpoint: QpEndpoint {
                qp_num: 1,
                psn: 2,
                lid: 3,
                gid: [0; 16],
                mtu: 5,
                max_rd_atomic: 1,
            },
        }
        .encode();
        a[0] = b'X';
        assert!(matches!(
            RdmaAccept::decode(&a),
            Err(FrameError::BadMagic(_))
        ));
    }
}
