//! A file's sha256 fed with its verified pieces in file order. A download
//! keeps one running while pieces arrive, so the whole-file check at the end
//! (which a streaming reader's last piece waits for) hashes almost nothing.

use crate::task_file::TaskFile;
use std::sync::Arc;

pub struct RunningSha256 {
    hasher: sha2::Sha256,
    /// The first piece not hashed yet.
    next: u32,
}

impl Default for RunningSha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl RunningSha256 {
    pub fn new() -> Self {
        Self {
            hasher: sha2::Digest::new(),
            next: 0,
        }
    }

    /// Hashes the next verified pieces in order, about `budget` bytes at most.
    pub fn advance(&mut self, file: &Arc<TaskFile>, budget: u64) {
        let mut done = 0;
        while done < budget {
            let Some(p) = file.verified_piece(self.next) else {
                return;
            };
            sha2::Digest::update(&mut self.hasher, p.as_ref());
            done += p.as_ref().len() as u64;
            self.next += 1;
        }
    }

    /// The digest of a complete file: hashes what is left.
    pub fn finish(mut self, file: &Arc<TaskFile>) -> [u8; 32] {
        self.advance(file, u64::MAX);
        sha2::Digest::finalize(self.hasher).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;
    use weightcast_types::piece::MIN_PIECE_SIZE;
    use weightcast_types::TaskId;

    #[test]
    fn the_running_hash_matches_the_file_whatever_the_arrival_order() {
        use sha2::{Digest, Sha256};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path()).unwrap();
        let len = MIN_PIECE_SIZE * 3 + 17;
        let f = store
            .open_or_create(TaskId::from_url("u"), "u", len)
            .unwrap();
        let mut w = RunningSha256::new();
        for num in [2u32, 0, 3, 1] {
            let mut write = f.begin_write(num).unwrap();
            write.buf().fill(num as u8 + 1);
            write.commit(None).unwrap();
            // As the download does: hash what is in order, one piece's worth.
            w.advance(&f, MIN_PIECE_SIZE);
        }
        assert_eq!(w.next, 2, "one piece per step: the budget holds");
        let mut whole = Sha256::new();
        for num in 0..4u32 {
            whole.update(f.verified_piece(num).unwrap().as_ref());
        }
        let want: [u8; 32] = whole.finalize().into();
        assert_eq!(w.finish(&f), want);
        assert_eq!(f.sha256(), want);
        let on_disk = crate::sha256_file(&f.data_path()).unwrap();
        assert_eq!(on_disk, hex::encode(want), "the mapping is the file");
    }
}
