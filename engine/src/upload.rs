//! The upload server's view of the store: only verified pieces are served.

use std::sync::Arc;
use weightcast_store::{Store, VerifiedPiece};
use weightcast_tcp::PieceSource;
use weightcast_types::TaskId;

pub(crate) struct StoreSource(pub Arc<Store>);

impl PieceSource for StoreSource {
    type Piece = VerifiedPiece;
    fn verified_piece(&self, task: &TaskId, num: u32) -> Option<VerifiedPiece> {
        let file = self.0.get(task)?;
        // Served now: recently used, for the cache's LRU order.
        self.0.note_used(task);
        file.verified_piece(num)
    }
}
