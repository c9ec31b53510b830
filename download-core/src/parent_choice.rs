//! Phase 2 of scheduling, sans-IO: which parent serves which piece.
//!
//! The scheduler hands a child a few candidate parents; the child decides per
//! piece by live load. Under bandwidth limits the piece *order* matters as
//! much as the parent: if every child pulls the same pieces from the seed,
//! the seed sends the file once per child. So:
//!
//! 1. Pieces some non-seed parent holds come first, rarest among this child's
//!    parents first (ties broken by a per-child pseudo-random order), each from
//!    the non-seed holder expected to finish first: (bytes in flight there +
//!    the piece, inflated by the parent's reported load) / measured throughput.
//! 2. Only pieces no near peer parent holds come from an *expensive* parent
//!    (a seed, or a peer in another zone), in the child's own pseudo-random
//!    order (so siblings ask for different pieces), and at most
//!    [`SEED_PIECES_IN_FLIGHT`] at a time. Each piece should leave the seed,
//!    and cross between zones, about once, then spread from peer to peer.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use weightcast_types::piece::PieceDigest;
use weightcast_types::PeerId;

/// Before the first measurement, every parent is assumed this fast (bytes/s).
const INITIAL_THROUGHPUT: f64 = 100e6;
/// Weight of a new throughput sample in the moving average.
const EWMA: f64 = 0.3;
/// Pieces in flight from expensive parents (seeds, other zones) per child.
pub const SEED_PIECES_IN_FLIGHT: u32 = 2;

#[derive(Debug, Clone)]
pub struct ParentView {
    pub addr: String,
    pub seed: bool,
    /// In another zone: the link to it is the scarce one.
    pub remote: bool,
    /// The parent serves pieces over RDMA.
    pub rdma: bool,
    pub pieces: BTreeMap<u32, PieceDigest>,
    pub inflight: u32,
    pub inflight_bytes: u64,
    pub throughput: f64,
    /// Uploads the parent reported serving at its last answer.
    pub load: u32,
    /// After a `Busy` answer the parent is left alone until then.
    pub busy_until: Option<Instant>,
    /// Pieces this parent (a seed) sent to another peer moments ago, with
    /// when it would send them again: until then they come from the peers.
    pub elsewhere: BTreeMap<u32, Instant>,
}

impl ParentView {
    pub fn new(addr: String, seed: bool) -> Self {
        Self {
            addr,
            seed,
            remote: false,
            rdma: false,
            pieces: BTreeMap::new(),
            inflight: 0,
            inflight_bytes: 0,
            throughput: INITIAL_THROUGHPUT,
            load: 0,
            busy_until: None,
            elsewhere: BTreeMap::new(),
        }
    }

    /// Whether this parent serves `piece` at `now` (it holds it, and did not
    /// say to take it from the peers instead).
    fn serves(&self, piece: u32, now: Instant) -> bool {
        self.pieces.contains_key(&piece) && self.elsewhere.get(&piece).is_none_or(|t| *t <= now)
    }

    /// Seeds and parents in other zones: pieces come from them only when no
    /// near peer holds them, a few at a time.
    pub fn expensive(&self) -> bool {
        self.tier() > 0
    }

    /// Cost of fetching from this parent: 0 a near peer, 1 a near seed,
    /// 2 anything in another zone.
    fn tier(&self) -> u8 {
        match (self.remote, self.seed) {
            (true, _) => 2,
            (false, true) => 1,
            (false, false) => 0,
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
    /// Seeds this child's pseudo-random piece order.
    salt: u64,
}

impl ParentChoice {
    /// `child`: this peer's id; it seeds the child's own piece order.
    pub fn new(per_parent: u32, child: &str) -> Self {
        let salt = child.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        Self {
            parents: BTreeMap::new(),
            per_parent: per_parent.max(1),
            salt,
        }
    }

    /// This child's pseudo-random rank of `piece` (splitmix64).
    fn order_key(&self, piece: u32) -> u64 {
        let mut z = self.salt ^ (piece as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The digest the scheduler published for `piece`, from any parent.
    pub fn digest(&self, piece: u32) -> Option<PieceDigest> {
        self.parents
            .values()
            .find_map(|p| p.pieces.get(&piece).copied())
    }

    /// Picks the next (piece, parent) among `wanted` pieces (missing and not
    /// in flight).
    pub fn pick(
        &self,
        wanted: impl IntoIterator<Item = u32>,
        piece_len: impl Fn(u32) -> u64,
        now: Instant,
    ) -> Option<(u32, PeerId)> {
        let usable =
            |p: &ParentView| p.inflight < self.per_parent && p.busy_until.is_none_or(|t| t <= now);
        let expensive_inflight: u32 = self
            .parents
            .values()
            .filter(|p| p.expensive())
            .map(|p| p.inflight)
            .sum();
        // Every child of a seed starts with the seed as its only parent: a
        // small budget keeps them from all pulling the same pieces at once.
        let budget = SEED_PIECES_IN_FLIGHT.min(self.per_parent);
        // Near peers: best (rarity, order key). Expensive parents: best
        // (tier, order key), so a near seed beats another zone.
        let mut from_peers: Option<((usize, u64), u32, &PeerId)> = None;
        let mut from_expensive: Option<((u8, u64), u32, &PeerId)> = None;
        for piece in wanted {
            let len = piece_len(piece);
            // One pass for how many parents hold it and the cheapest tier
            // among them, one for the fastest usable holder of that tier: no
            // allocation per piece on this hot path.
            let holders = || self.parents.iter().filter(|(_, p)| p.serves(piece, now));
            let Some(tier) = holders().map(|(_, p)| p.tier()).min() else {
                continue;
            };
            let count = holders().count();
            let key = self.order_key(piece);
            // A busy holder in the cheapest tier means waiting for it, not
            // paying for a dearer link.
            let fastest = holders()
                .filter(|(_, p)| p.tier() == tier && usable(p))
                .min_by(|a, b| {
                    a.1.expected_secs(len)
                        .total_cmp(&b.1.expected_secs(len))
                        .then_with(|| a.0.cmp(b.0))
                })
                .map(|(id, _)| id);
            let Some(id) = fastest else {
                continue;
            };
            if tier == 0 {
                let rank = (count, key);
                if from_peers.as_ref().is_none_or(|(r, _, _)| rank < *r) {
                    from_peers = Some((rank, piece, id));
                }
            } else if expensive_inflight < budget {
                let rank = (tier, key);
                if from_expensive.as_ref().is_none_or(|(r, _, _)| rank < *r) {
                    from_expensive = Some((rank, piece, id));
                }
            }
        }
        from_peers
            .map(|(_, n, id)| (n, id.clone()))
            .or_else(|| from_expensive.map(|(_, n, id)| (n, id.clone())))
    }

    /// When the earliest of the parents' `Busy` or `Elsewhere` waits ends:
    /// something may be fetchable again then.
    pub fn next_wake(&self) -> Option<Instant> {
        self.parents
            .values()
            .flat_map(|p| {
                p.busy_until
                    .into_iter()
                    .chain(p.elsewhere.values().copied())
            })
            .min()
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice(parents: &[(&str, bool, &[u32])]) -> ParentChoice {
        let mut c = ParentChoice::new(2, "child");
        for (id, seed, pieces) in parents {
            let mut v = ParentView::new(format!("{id}:1"), *seed);
            for n in *pieces {
                v.pieces.insert(*n, [*n as u8; 32]);
            }
            c.parents.insert(id.to_string(), v);
        }
        c
    }

    #[test]
    fn peers_come_before_the_seed_and_rare_pieces_first() {
        let c = choice(&[
            ("seed", true, &[0, 1, 2, 3]),
            ("a", false, &[0, 1]),
            ("b", false, &[1]),
        ]);
        let now = Instant::now();
        // Piece 0 (one peer holder) is rarer among peers than 1 (two), and
        // peers beat the seed: 0 from a.
        assert_eq!(
            c.pick([0, 1, 2, 3], |_| 4 << 20, now),
            Some((0, "a".into()))
        );
        // Only seed-held pieces left: one of them, from the seed.
        let (n, p) = c.pick([2, 3], |_| 4 << 20, now).unwrap();
        assert!(n == 2 || n == 3);
        assert_eq!(p, "seed");
    }

    #[test]
    fn the_fastest_peer_holder_serves_and_load_moves_work() {
        let mut c = choice(&[("a", false, &[0]), ("b", false, &[0])]);
        let now = Instant::now();
        c.parents.get_mut("a").unwrap().throughput = 10e6;
        c.parents.get_mut("b").unwrap().throughput = 50e6;
        assert_eq!(c.pick([0], |_| 4 << 20, now), Some((0, "b".into())));
        c.parents.get_mut("b").unwrap().inflight_bytes = 400 << 20;
        assert_eq!(c.pick([0], |_| 4 << 20, now), Some((0, "a".into())));
    }

    #[test]
    fn near_peers_come_before_other_zones() {
        let mut c = choice(&[("far", false, &[0, 1]), ("near", false, &[1])]);
        c.parents.get_mut("far").unwrap().remote = true;
        let now = Instant::now();
        assert_eq!(c.pick([0, 1], |_| 1, now), Some((1, "near".into())));
        assert_eq!(c.pick([0], |_| 1, now), Some((0, "far".into())));
    }

    #[test]
    fn seed_fetches_are_bounded() {
        let mut c = choice(&[("seed", true, &[0, 1, 2, 3, 4]), ("a", false, &[])]);
        let now = Instant::now();
        for _ in 0..SEED_PIECES_IN_FLIGHT {
            c.started("seed", 1);
        }
        assert_eq!(
            c.pick([0, 1, 2, 3, 4], |_| 1, now),
            None,
            "seed budget used up"
        );
        c.finished("seed", 1, None, None);
        assert!(c.pick([0, 1, 2, 3, 4], |_| 1, now).is_some());
    }

    #[test]
    fn siblings_ask_the_seed_for_different_pieces() {
        let pieces: Vec<u32> = (0..64).collect();
        let firsts: std::collections::BTreeSet<u32> = (0..8)
            .map(|i| {
                let mut c = ParentChoice::new(2, &format!("child-{i}"));
                let mut v = ParentView::new("s:1".into(), true);
                for n in &pieces {
                    v.pieces.insert(*n, [0; 32]);
                }
                c.parents.insert("seed".into(), v);
                c.pick(pieces.clone(), |_| 1, Instant::now()).unwrap().0
            })
            .collect();
        assert!(
            firsts.len() >= 6,
            "8 children mostly start on different pieces: {firsts:?}"
        );
    }

    #[test]
    fn busy_parents_wait_and_throughput_is_measured() {
        let mut c = choice(&[("a", false, &[0])]);
        let now = Instant::now();
        c.parents.get_mut("a").unwrap().busy_until = Some(now + Duration::from_secs(1));
        assert_eq!(c.pick([0], |_| 1, now), None);
        c.parents.get_mut("a").unwrap().busy_until = None;
        c.started("a", 10_000_000);
        c.finished("a", 10_000_000, Some(Duration::from_secs(1)), Some(3));
        let a = &c.parents["a"];
        assert!(a.throughput < INITIAL_THROUGHPUT && a.throughput > 10e6);
        assert_eq!((a.inflight, a.load), (0, 3));
        assert_eq!(c.digest(0), Some([0; 32]));
    }
}
