//! The persisted piece table: which pieces of a task file were verified,
//! with their digests, so that a restarted daemon knows what to re-check.
//!
//! One fixed-size record per piece, at `num * RECORD_LEN`: a flag byte (1:
//! verified) and the piece's sha256. A record is written after its piece's
//! bytes are in the file, and a resume re-hashes every piece the table
//! claims, so a torn or stale record costs a refetch, never a bad byte.

use crate::error::{io_err, StoreError};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use weightcast_types::piece::PieceDigest;

/// Bytes per piece record.
pub const RECORD_LEN: usize = 33;

const VERIFIED: u8 = 1;

/// One piece's record.
pub fn encode(digest: Option<&PieceDigest>) -> [u8; RECORD_LEN] {
    let mut rec = [0u8; RECORD_LEN];
    if let Some(d) = digest {
        rec[0] = VERIFIED;
        rec[1..].copy_from_slice(d);
    }
    rec
}

/// The digest a record claims; anything but a whole record flagged
/// verified claims nothing.
pub fn decode(rec: &[u8]) -> Option<PieceDigest> {
    match rec {
        [VERIFIED, digest @ ..] => digest.try_into().ok(),
        _ => None,
    }
}

/// The table file of one task.
pub struct PieceTable {
    file: File,
    path: PathBuf,
}

impl PieceTable {
    /// A fresh table of `pieces` records, none verified.
    pub fn create(path: &Path, pieces: u32) -> Result<Self, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(io_err(path))?;
        file.set_len(pieces as u64 * RECORD_LEN as u64)
            .map_err(io_err(path))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// An existing table and what it claims for each of `pieces` pieces. A
    /// short file (a crash while it was created) claims nothing past its end.
    pub fn open(path: &Path, pieces: u32) -> Result<(Self, Vec<Option<PieceDigest>>), StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        let mut bytes = vec![0u8; pieces as usize * RECORD_LEN];
        let mut got = 0;
        while got < bytes.len() {
            match file.read_at(&mut bytes[got..], got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(path)(e)),
            }
        }
        bytes.truncate(got);
        let claimed = (0..pieces as usize)
            .map(|i| {
                bytes
                    .get(i * RECORD_LEN..(i + 1) * RECORD_LEN)
                    .and_then(decode)
            })
            .collect();
        let table = Self {
            file,
            path: path.to_path_buf(),
        };
        Ok((table, claimed))
    }

    /// Records piece `num` as verified with `digest`, or as missing.
    /// Flushes the table to the disk (what was verified survives a power
    /// loss, not only a restart).
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    pub fn record(&self, num: u32, digest: Option<&PieceDigest>) -> Result<(), StoreError> {
        self.file
            .write_all_at(&encode(digest), num as u64 * RECORD_LEN as u64)
            .map_err(io_err(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_only_a_whole_flagged_record_claims_a_digest() {
        let d = [7u8; 32];
        assert_eq!(decode(&encode(Some(&d))), Some(d));
        assert_eq!(decode(&encode(None)), None);
        let mut other_flag = encode(Some(&d));
        other_flag[0] = 2;
        assert_eq!(decode(&other_flag), None);
        assert_eq!(decode(&encode(Some(&d))[..RECORD_LEN - 1]), None, "torn");
        assert_eq!(decode(&[]), None);
    }

    #[test]
    fn the_table_persists_records_and_a_short_file_claims_nothing_past_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pieces");
        let t = PieceTable::create(&path, 3).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            3 * RECORD_LEN as u64
        );
        t.record(0, Some(&[1; 32])).unwrap();
        t.record(2, Some(&[3; 32])).unwrap();
        t.record(2, None).unwrap();
        t.record(1, Some(&[2; 32])).unwrap();
        drop(t);
        let (_, claimed) = PieceTable::open(&path, 3).unwrap();
        assert_eq!(claimed, vec![Some([1; 32]), Some([2; 32]), None]);
        // Cut inside piece 1's record: piece 0 survives, piece 1 is gone.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(RECORD_LEN as u64 + 10).unwrap();
        let (_, claimed) = PieceTable::open(&path, 3).unwrap();
        assert_eq!(claimed, vec![Some([1; 32]), None, None]);
        assert!(PieceTable::open(&dir.path().join("missing"), 1).is_err());
    }
}
