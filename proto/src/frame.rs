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

use crate::TaskId;

pub const REQUEST_MAGIC: [u8; 4] = *b"WCP1";
pub const RESPONSE_MAGIC: [u8; 4] = *b"WCR1";
pub const REQUEST_LEN: usize = 40;
pub const RESPONSE_HEADER_LEN: usize = 17;

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
    /// The parent failed to read its own copy.
    Failed = 3,
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
        let status = match b[4] {
            0 => Status::Ok,
            1 => Status::NotFound,
            2 => Status::Busy,
            3 => Status::Failed,
            other => return Err(FrameError::BadStatus(other)),
        };
        Ok(Self {
            status,
            active_uploads: u32::from_be_bytes(b[5..9].try_into().expect("4 bytes")),
            length: u64::from_be_bytes(b[9..17].try_into().expect("8 bytes")),
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
    fn response_round_trips_every_status() {
        for status in [Status::Ok, Status::NotFound, Status::Busy, Status::Failed] {
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
}
