//! Phase 2 of scheduling, sans-IO: which parent serves which piece.
//!
//! The scheduler hands a child a few candidate parents; the child decides per
//! piece by live load. Each parent's expected completion time for one more
//! piece is (bytes already in flight from it + the piece, inflated by the load
//! the parent last reported) / the throughput measured from it. The piece
//! order is lowest index first, so that a file streams front to back and
//! children pipeline behind their parents.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use weightcast_proto::piece::PieceDigest;
use weightcast_proto::PeerId;

/// Before the first measurement, every parent is assumed this fast (bytes/s).
const INITIAL_THROUGHPUT: f64 = 100e6;
/// Weight of a new throughput sample in the moving average.
const EWMA: f64 = 0.3;

#[derive(Debug, Clone)]
pub struct ParentView {
    pub addr: String,
    pub seed: bool,
    pub pieces: BTreeMap<u32, PieceDigest>,
    pub inflight: u32,
    pub inflight_bytes: u64,
    pub throughput: f64,
    /// Uploads the parent reported serving at its last answer.
    pub load: u32,
    /// After a `Busy` answer the parent is left alone until then.
    pub busy_until: Option<Instant>,
}

impl ParentView {
    pub fn new(addr: String, seed: bool) -> Self {
        Self {
            addr,
            seed,
            pieces: BTreeMap::new(),
            inflight: 0,
            inflight_bytes: 0,
            throughput: INITIAL_THROUGHPUT,
            load: 0,
            busy_until: None,
        }
    }

    fn expected_secs(&self, piece_len: u64) -> f64 {
        let queued =
            self.inflight_bytes as f64 + piece_len as f64 * (1.0 + 0.25 * self.load as f64);
        queued / self.throughput.max(1.0)
    }
}

#[derive(Debug, Default)]
pub struct ParentChoice {
    pub parents: BTreeMap<PeerId, ParentView>,
    /// Pieces one parent may have in flight to this child at once.
    pub per_parent: u32,
}

impl ParentChoice {
    pub fn new(per_parent: u32) -> Self {
        Self {
            parents: BTreeMap::new(),
            per_parent: per_parent.max(1),
        }
    }

    /// The digest the scheduler published for `piece`, from any parent.
    pub fn digest(&self, piece: u32) -> Option<PieceDigest> {
        self.parents
            .values()
            .find_map(|p| p.pieces.get(&piece).copied())
    }

    /// Picks the next (piece, parent) among `wanted` pieces (missing and not
    /// in flight, in the order to fetch them).
    pub fn pick(
        &self,
        wanted: impl IntoIterator<Item = u32>,
        piece_len: impl Fn(u32) -> u64,
        now: Instant,
    ) -> Option<(u32, PeerId)> {
        for piece in wanted {
            let len = piece_len(piece);
            let best = self
                .parents
                .iter()
                .filter(|(_, p)| {
                    p.pieces.contains_key(&piece)
                        && p.inflight < self.per_parent
                        && p.busy_until.is_none_or(|t| t <= now)
                })
                .min_by(|a, b| {
                    a.1.expected_secs(len)
                        .total_cmp(&b.1.expected_secs(len))
                        // Spare the seed when a peer is as good.
                        .then_with(|| a.1.seed.cmp(&b.1.seed))
                        .then_with(|| a.0.cmp(b.0))
                });
            if let Some((id, _)) = best {
                return Some((piece, id.clone()));
            }
        }
        None
    }

    pub fn started(&mut self, parent: &str, bytes: u64) {
        if let Some(p) = self.parents.get_mut(parent) {
            p.inflight += 1;
            p.inflight_bytes += bytes;
        }
    }

    /// A transfer ended; on success, fold its throughput into the estimate.
    pub fn finished(
        &mut self,
        parent: &str,
        bytes: u64,
        took: Option<Duration>,
        load: Option<u32>,
    ) {
        if let Some(p) = self.parents.get_mut(parent) {
            p.inflight = p.inflight.saturating_sub(1);
            p.inflight_bytes = p.inflight_bytes.saturating_sub(bytes);
            if let Some(t) = took {
                let sample = bytes as f64 / t.as_secs_f64().max(1e-6);
                p.throughput = (1.0 - EWMA) * p.throughput + EWMA * sample;
            }
            if let Some(l) = load {
                p.load = l;
            }
        }
    }

    /// Parents that hold none of `wanted`: nothing to ask them for now.
    pub fn holders(&self, piece: u32) -> BTreeSet<&PeerId> {
        self.parents
            .iter()
            .filter(|(_, p)| p.pieces.contains_key(&piece))
            .map(|(id, _)| id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice(parents: &[(&str, &[u32])]) -> ParentChoice {
        let mut c = ParentChoice::new(2);
        for (id, pieces) in parents {
            let mut v = ParentView::new(format!("{id}:1"), false);
            for n in *pieces {
                v.pieces.insert(*n, [*n as u8; 32]);
            }
            c.parents.insert(id.to_string(), v);
        }
        c
    }

    #[test]
    fn lowest_piece_first_from_the_parent_expected_to_finish_first() {
        let mut c = choice(&[("a", &[0, 1]), ("b", &[0, 1])]);
        let now = Instant::now();
        c.parents.get_mut("a").unwrap().throughput = 10e6;
        c.parents.get_mut("b").unwrap().throughput = 50e6;
        assert_eq!(c.pick([0, 1], |_| 4 << 20, now), Some((0, "b".into())));
        // Load on b: in-flight bytes push the estimate past a.
        c.started("b", 4 << 20);
        c.parents.get_mut("b").unwrap().inflight_bytes = 400 << 20;
        assert_eq!(c.pick([0, 1], |_| 4 << 20, now), Some((0, "a".into())));
    }

    #[test]
    fn per_parent_limit_and_busy_parents_move_work_elsewhere() {
        let mut c = choice(&[("a", &[0, 1, 2]), ("b", &[2])]);
        let now = Instant::now();
        c.started("a", 1);
        c.started("a", 1);
        // a is full: piece 2 from b is the only possible pick.
        assert_eq!(c.pick([0, 1, 2], |_| 1, now), Some((2, "b".into())));
        c.parents.get_mut("b").unwrap().busy_until = Some(now + Duration::from_secs(1));
        assert_eq!(c.pick([0, 1, 2], |_| 1, now), None);
        c.finished("a", 1, Some(Duration::from_millis(1)), Some(3));
        assert_eq!(c.pick([0, 1, 2], |_| 1, now), Some((0, "a".into())));
        assert_eq!(c.parents["a"].load, 3);
    }

    #[test]
    fn throughput_estimate_follows_measurements() {
        let mut c = choice(&[("a", &[0])]);
        c.started("a", 10_000_000);
        c.finished("a", 10_000_000, Some(Duration::from_secs(1)), None);
        let t = c.parents["a"].throughput;
        assert!(t < INITIAL_THROUGHPUT && t > 10e6);
        assert_eq!(c.parents["a"].inflight, 0);
        assert_eq!(c.digest(0), Some([0; 32]));
        assert_eq!(c.holders(0).len(), 1);
    }
}
