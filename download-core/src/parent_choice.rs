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
//! 2. Pieces no near peer parent holds come from an *expensive* parent (a
//!    seed, or a peer in another zone), in the child's own pseudo-random
//!    order (so siblings ask for different pieces), at most
//!    [`SEED_PIECES_IN_FLIGHT`] at a time. Each piece should leave the seed,
//!    and cross between zones, about once, then spread from peer to peer.
//! 3. A near seed is the only source of pieces nobody else has yet, so its
//!    upload must never idle: a child keeps its seed budget in use even
//!    while near peers offer other pieces (the seed answers `Busy` to the
//!    excess, and `Elsewhere` for a piece another child is getting, which
//!    keeps the copies at one). Another zone is different: its link is the
//!    scarce one, so a child crosses it only for what no near peer holds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use weightcast_types::piece::PieceDigest;
use weightcast_types::PeerId;

/// Before the first measurement, every parent is assumed this fast (bytes/s).
const INITIAL_THROUGHPUT: f64 = 100e6;
/// Weight of a new throughput sample in the moving average.
const EWMA: f64 = 0.3;
/// Pieces per window of a child's piece order (see `ParentChoice::order_key`).
pub const ORDER_WINDOW: u32 = 32;

/// Pieces in flight from expensive parents (seeds, other zones) per child.
pub const SEED_PIECES_IN_FLIGHT: u32 = 2;

/// A near peer whose measured throughput to this child is under this share
/// of the median near peer's is *slow*: it serves only pieces that neither
/// a fast near peer nor a near seed holds. Such a piece waits for its
/// better holder (a seed's `Elsewhere` wait ends within seconds) rather
/// than going to a link a tenth as fast, where it would be the last piece
/// the child waits on, and where it would take the upload the slow parent
/// needs for the pieces only it holds.
///
/// Per-transfer throughput, not times the parent's load: every transfer
/// into this child shares its downlink, so a fast parent serving one child
/// can measure as slow per transfer as a fast parent serving four, and
/// only a parent whose own link is the bottleneck stands out. The median,
/// not the fastest, is the reference, so that one lucky sample does not
/// make every other parent slow.
const SLOW_SHARE: f64 = 0.3;

/// Pieces in flight from another zone per child: one, so that the children
/// of a zone (each picking in its own pseudo-random order what none of
/// them holds yet) seldom fetch the same piece over the zone link at once.
const REMOTE_PIECES_IN_FLIGHT: u32 = 1;

/// Tiers, cheapest first: a piece's tier is its cheapest holder's, and it
/// comes from a holder of that tier or waits for one.
const TIER_PEER: u8 = 0;
const TIER_SEED: u8 = 1;
const TIER_SLOW: u8 = 2;
const TIER_REMOTE: u8 = 3;
const TIERS: usize = 4;

/// The pieces a parent holds, with the digests the task's source recorded:
/// a map for the digests and a bitset beside it, so that
/// [`ParentChoice::pick`], which looks at every missing piece of every
/// parent on each input of a download, works 64 pieces at a time.
#[derive(Debug, Clone, Default)]
pub struct HeldPieces {
    digests: BTreeMap<u32, PieceDigest>,
    bits: Vec<u64>,
}

impl HeldPieces {
    pub fn insert(&mut self, num: u32, digest: PieceDigest) -> Option<PieceDigest> {
        let (w, b) = (num as usize / 64, num % 64);
        if self.bits.len() <= w {
            self.bits.resize(w + 1, 0);
        }
        self.bits[w] |= 1 << b;
        self.digests.insert(num, digest)
    }

    pub fn remove(&mut self, num: &u32) -> Option<PieceDigest> {
        if let Some(w) = self.bits.get_mut(*num as usize / 64) {
            *w &= !(1 << (num % 64));
        }
        self.digests.remove(num)
    }

    pub fn contains_key(&self, num: &u32) -> bool {
        self.bits
            .get(*num as usize / 64)
            .is_some_and(|w| w & (1 << (num % 64)) != 0)
    }

    pub fn get(&self, num: &u32) -> Option<&PieceDigest> {
        self.digests.get(num)
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u32, &PieceDigest)> {
        self.digests.iter()
    }
}

impl Extend<(u32, PieceDigest)> for HeldPieces {
    fn extend<I: IntoIterator<Item = (u32, PieceDigest)>>(&mut self, iter: I) {
        for (n, d) in iter {
            self.insert(n, d);
        }
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Debug, Clone)]
pub struct ParentView {
    pub addr: String,
    pub seed: bool,
    /// In another zone: the link to it is the scarce one.
    pub remote: bool,
    /// The parent serves pieces over RDMA.
    pub rdma: bool,
    pub pieces: HeldPieces,
    pub inflight: u32,
    pub inflight_bytes: u64,
    pub throughput: f64,
    /// `throughput` comes from a transfer, not [`INITIAL_THROUGHPUT`].
    pub measured: bool,
    /// Uploads the parent reported serving at its last answer.
    pub load: u32,
    /// After a `Busy` answer the parent is left alone until then. Set
    /// through [`ParentChoice::wait_busy`], which keeps the choice's
    /// earliest wait in step.
    pub busy_until: Option<Instant>,
    /// Pieces this parent (a seed) sent to another peer moments ago, with
    /// when it would send them again: until then they come from the peers.
    /// Set through [`ParentChoice::wait_elsewhere`].
    pub elsewhere: BTreeMap<u32, Instant>,
}

impl ParentView {
    pub fn new(addr: String, seed: bool) -> Self {
        Self {
            addr,
            seed,
            remote: false,
            rdma: false,
            pieces: HeldPieces::default(),
            inflight: 0,
            inflight_bytes: 0,
            throughput: INITIAL_THROUGHPUT,
            measured: false,
            load: 0,
            busy_until: None,
            elsewhere: BTreeMap::new(),
        }
    }

    /// Whether this parent serves `piece` at `now` (it holds it, and did not
    /// say to take it from the peers instead).
    fn serves(&self, piece: u32, now: Instant) -> bool {
        self.pieces.contains_key(&piece)
            && (self.elsewhere.is_empty() || self.elsewhere.get(&piece).is_none_or(|t| *t <= now))
    }

    /// Seeds and parents in other zones: pieces come from them only when no
    /// near peer holds them, a few at a time.
    pub fn expensive(&self) -> bool {
        self.tier() > 0
    }

    /// Cost of fetching from this parent: a near peer, a near seed, anything
    /// in another zone ([`TIER_SLOW`] is given in
    /// [`ParentChoice::tiers`], which knows the other parents).
    fn tier(&self) -> u8 {
        match (self.remote, self.seed) {
            (true, _) => TIER_REMOTE,
            (false, true) => TIER_SEED,
            (false, false) => TIER_PEER,
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
    /// No `Busy` or `Elsewhere` wait of any parent ends before this (None:
    /// there is no wait). [`ParentChoice::forget_past_waits`] runs on every
    /// input of a download, thousands of times per piece time in a large
    /// swarm; with this bound it walks the parents only when some wait may
    /// have passed.
    earliest_wait: Option<Instant>,
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
            earliest_wait: None,
        }
    }

    /// This child's pseudo-random rank of `piece` (splitmix64).
    ///
    /// Pseudo-random only within windows of [`ORDER_WINDOW`] pieces, which
    /// go in file order: siblings still ask for different pieces, but the
    /// file fills roughly front to back, so the running whole-file hash
    /// (which can only take the verified prefix) keeps pace instead of
    /// hashing most of the file after the last piece.
    fn order_key(&self, piece: u32) -> u64 {
        ((piece / ORDER_WINDOW) as u64) << 32 | self.scramble(piece)
    }

    /// This child's pseudo-random rank of `piece` over the whole file: the
    /// order in which it crosses to another zone. Siblings in a zone each
    /// fetch across what none of them holds yet, a few pieces at a time;
    /// within a window of [`ORDER_WINDOW`] pieces they would often pick the
    /// same piece and send it over the scarce link twice.
    fn scramble(&self, piece: u32) -> u64 {
        splitmix(self.salt ^ (piece as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) & 0xffff_ffff
    }

    /// The digest the scheduler published for `piece`, from any parent.
    pub fn digest(&self, piece: u32) -> Option<PieceDigest> {
        self.parents
            .values()
            .find_map(|p| p.pieces.get(&piece).copied())
    }

    /// Picks the next (piece, parent) among `wanted` pieces (missing and not
    /// in flight).
    ///
    /// The rule, per wanted piece: its holders are the parents that serve
    /// it now; its tier the cheapest among them; it is a candidate if a
    /// holder of that tier is usable (a busy holder in the cheapest tier
    /// means waiting for it, not paying for a dearer link). Near-peer
    /// candidates rank by (holders, order key), rarest first; expensive ones
    /// by (tier, order key), and only within the expensive budget. The
    /// choice: the first near-seed candidate if there is one (the seed's
    /// upload must never idle), else the first near-peer one, else the
    /// first from another zone; it goes to the fastest usable holder of its
    /// tier.
    ///
    /// Called on every input of a download, so it works 64 pieces at a
    /// time: per parent one word of what it serves, holder counts kept in
    /// bit-sliced counters, and only the winning piece's holders compared.
    pub fn pick(
        &self,
        wanted: impl IntoIterator<Item = u32>,
        piece_len: impl Fn(u32) -> u64,
        now: Instant,
    ) -> Option<(u32, PeerId)> {
        let words = self
            .parents
            .values()
            .map(|p| p.pieces.bits.len())
            .max()
            .unwrap_or(0);
        let mut want = vec![0u64; words];
        for n in wanted {
            if let Some(w) = want.get_mut(n as usize / 64) {
                *w |= 1 << (n % 64);
            }
        }
        self.pick_among(&want, piece_len, now)
    }

    /// [`ParentChoice::pick`] with the wanted pieces as a bitset (bit
    /// `n % 64` of word `n / 64`): what a download passes on every input,
    /// built from its own bitsets without a lookup per missing piece.
    pub fn pick_among(
        &self,
        want: &[u64],
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
        // What each parent serves now: what it holds, less the pieces it
        // said to take from the peers for a while.
        let tiers = self.tiers();
        let serving: Vec<(u8, bool, std::borrow::Cow<'_, [u64]>)> = self
            .parents
            .values()
            .zip(&tiers)
            .map(|(p, &tier)| {
                let mut bits = std::borrow::Cow::Borrowed(p.pieces.bits.as_slice());
                for (&n, &until) in &p.elsewhere {
                    if until > now {
                        if let Some(w) = bits.to_mut().get_mut(n as usize / 64) {
                            *w &= !(1 << (n % 64));
                        }
                    }
                }
                (tier, usable(p), bits)
            })
            .collect();
        // Near peers: best (rarity, order key). Expensive parents: best
        // (tier, order key), so a near seed beats another zone.
        // What near seeds hold, `Elsewhere` waits or not (see below).
        let near_seeds: Vec<&[u64]> = self
            .parents
            .values()
            .filter(|p| p.tier() == TIER_SEED)
            .map(|p| p.pieces.bits.as_slice())
            .collect();
        let mut from_peers: Option<((u32, u64), u32)> = None;
        let mut from_slow: Option<((u32, u64), u32)> = None;
        let mut from_expensive: Option<((u8, u64), u32)> = None;
        for (w, &wanted_here) in want.iter().enumerate() {
            if wanted_here == 0 {
                continue;
            }
            // Per tier: pieces some parent of it serves, and pieces a usable
            // one serves; holders per piece, as a 16-bit counter per bit.
            let mut any = [0u64; TIERS];
            let mut free = [0u64; TIERS];
            let mut count = [0u64; 16];
            for (tier, ok, bits) in &serving {
                let x = bits.get(w).copied().unwrap_or(0) & wanted_here;
                if x == 0 {
                    continue;
                }
                any[*tier as usize] |= x;
                if *ok {
                    free[*tier as usize] |= x;
                }
                let mut carry = x;
                for c in count.iter_mut() {
                    let next = *c & carry;
                    *c ^= carry;
                    carry = next;
                    if carry == 0 {
                        break;
                    }
                }
            }
            // A near seed that holds a piece but said to take it from the
            // peers for a moment is still its better source than a slow
            // peer: its wait ends within seconds, a slow peer's transfer
            // takes longer than that.
            let seed_holds = near_seeds
                .iter()
                .fold(0, |a, bits| a | bits.get(w).copied().unwrap_or(0));
            any[TIER_SLOW as usize] &= !seed_holds;
            let mut candidates = any.iter().fold(0, |a, b| a | b);
            while candidates != 0 {
                let b = candidates.trailing_zeros();
                candidates &= candidates - 1;
                let bit = 1u64 << b;
                let Some(tier) = (0..TIERS as u8).find(|t| any[*t as usize] & bit != 0) else {
                    continue;
                };
                if free[tier as usize] & bit == 0 {
                    continue;
                }
                let piece = (w * 64) as u32 + b;
                let key = match tier {
                    TIER_REMOTE => self.scramble(piece),
                    _ => self.order_key(piece),
                };
                if tier == TIER_PEER || tier == TIER_SLOW {
                    let holders = count
                        .iter()
                        .enumerate()
                        .map(|(i, c)| (((c >> b) & 1) as u32) << i)
                        .sum::<u32>();
                    let rank = (holders, key);
                    let best = match tier {
                        TIER_PEER => &mut from_peers,
                        _ => &mut from_slow,
                    };
                    if best.as_ref().is_none_or(|(r, _)| rank < *r) {
                        *best = Some((rank, piece));
                    }
                } else if expensive_inflight
                    < match tier {
                        TIER_REMOTE => REMOTE_PIECES_IN_FLIGHT,
                        _ => budget,
                    }
                {
                    let rank = (tier, key);
                    if from_expensive.as_ref().is_none_or(|(r, _)| rank < *r) {
                        from_expensive = Some((rank, piece));
                    }
                }
            }
        }
        // A near seed's upload must never idle (it alone holds what nobody
        // else has yet); another zone only for what no near peer offers.
        let (tier, piece) = match (from_peers, from_slow, from_expensive) {
            (_, _, Some(((TIER_SEED, _), n))) => (TIER_SEED, n),
            (Some((_, n)), _, _) => (TIER_PEER, n),
            (None, Some((_, n)), _) => (TIER_SLOW, n),
            (None, None, Some(((t, _), n))) => (t, n),
            (None, None, None) => return None,
        };
        let len = piece_len(piece);
        self.parents
            .iter()
            .zip(&tiers)
            .filter(|((_, p), &t)| p.serves(piece, now) && t == tier && usable(p))
            .map(|(parent, _)| parent)
            .min_by(|a, b| {
                a.1.expected_secs(len)
                    .total_cmp(&b.1.expected_secs(len))
                    .then_with(|| a.0.cmp(b.0))
            })
            .map(|(id, _)| (piece, id.clone()))
    }

    /// Each parent's tier, in the map's order: a near peer measured far
    /// below the median measured near peer (see [`SLOW_SHARE`]) is
    /// [`TIER_SLOW`]. Unmeasured parents are not: the initial guess says
    /// nothing.
    fn tiers(&self) -> Vec<u8> {
        let mut rates: Vec<f64> = self
            .parents
            .values()
            .filter(|p| p.tier() == TIER_PEER && p.measured)
            .map(|p| p.throughput)
            .collect();
        let mid = rates.len() / 2;
        let typical = match rates.is_empty() {
            true => 0.0,
            false => *rates.select_nth_unstable_by(mid, f64::total_cmp).1,
        };
        self.parents
            .values()
            .map(|p| match p.tier() {
                TIER_PEER if p.measured && p.throughput < SLOW_SHARE * typical => TIER_SLOW,
                t => t,
            })
            .collect()
    }

    /// Spreads `in_flight` pieces over the near peer parents: one each when
    /// there are enough of them (every parent's upload used, none asked for
    /// a queue), up to `max_per_parent` when there are few (one parent
    /// alone keeps a pipeline of pieces, so its link never waits on a
    /// request's round trip).
    pub fn spread(&mut self, in_flight: usize, max_per_parent: u32) {
        let near = self.parents.values().filter(|p| !p.expensive()).count();
        let share = in_flight / near.max(1);
        self.per_parent = (share as u32).clamp(1, max_per_parent.max(1));
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

    /// Drops `Busy` and `Elsewhere` waits that ended at or before `now`:
    /// they change no choice any more, and left in place they would make
    /// [`ParentChoice::next_wake`] name an instant already past (a shell
    /// that sleeps until it wakes at once, again and again).
    ///
    /// Returns whether some wait ended (what was not fetchable may be now).
    pub fn forget_past_waits(&mut self, now: Instant) -> bool {
        if self.earliest_wait.is_none_or(|t| t > now) {
            return false;
        }
        let mut earliest: Option<Instant> = None;
        for p in self.parents.values_mut() {
            if p.busy_until.is_some_and(|t| t <= now) {
                p.busy_until = None;
            }
            if !p.elsewhere.is_empty() {
                p.elsewhere.retain(|_, until| *until > now);
            }
            for t in p.busy_until.iter().chain(p.elsewhere.values()) {
                earliest = Some(earliest.map_or(*t, |e| e.min(*t)));
            }
        }
        self.earliest_wait = earliest;
        true
    }

    /// Whether `parent`, once it holds `piece`, could be asked for it at
    /// `now`: it is known, has room for another piece, is not waiting out a
    /// `Busy`, and did not say to take that piece from the peers.
    pub fn could_serve(&self, parent: &str, piece: u32, now: Instant) -> bool {
        self.parents.get(parent).is_some_and(|p| {
            p.inflight < self.per_parent
                && p.busy_until.is_none_or(|t| t <= now)
                && p.elsewhere.get(&piece).is_none_or(|t| *t <= now)
        })
    }

    /// `parent` answered `Busy`: it is left alone until `until`.
    pub fn wait_busy(&mut self, parent: &str, until: Instant) {
        if let Some(v) = self.parents.get_mut(parent) {
            v.busy_until = Some(until);
            self.note_wait(until);
        }
    }

    /// `parent` (a seed) answered `Elsewhere` for `piece`: that piece comes
    /// from the peers until `until`. Its waits that passed by `now` go.
    pub fn wait_elsewhere(&mut self, parent: &str, piece: u32, until: Instant, now: Instant) {
        if let Some(v) = self.parents.get_mut(parent) {
            v.elsewhere.retain(|_, t| *t > now);
            v.elsewhere.insert(piece, until);
            self.note_wait(until);
        }
    }

    fn note_wait(&mut self, until: Instant) {
        self.earliest_wait = Some(self.earliest_wait.map_or(until, |e| e.min(until)));
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
                p.throughput = match p.measured {
                    true => (1.0 - EWMA) * p.throughput + EWMA * sample,
                    false => sample,
                };
                p.measured = true;
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
    fn pieces_in_flight_spread_over_many_parents_and_pipeline_on_few() {
        let many: Vec<(String, bool, Vec<u32>)> =
            (0..16).map(|i| (format!("p{i}"), false, vec![0])).collect();
        let refs: Vec<(&str, bool, &[u32])> = many
            .iter()
            .map(|(n, s, p)| (n.as_str(), *s, p.as_slice()))
            .collect();
        let mut c = choice(&refs);
        c.spread(16, 4);
        assert_eq!(c.per_parent, 1, "one piece per parent among 16");
        let mut c = choice(&[("a", false, &[0]), ("seed", true, &[0])]);
        c.spread(16, 4);
        assert_eq!(c.per_parent, 4, "one near parent keeps a pipeline");
        let mut c = choice(&[("a", false, &[0]), ("b", false, &[0]), ("c", false, &[0])]);
        c.spread(6, 4);
        assert_eq!(c.per_parent, 2);
    }

    #[test]
    fn the_piece_order_is_random_within_windows_that_go_front_to_back() {
        let c = ParentChoice::new(2, "child");
        let d = ParentChoice::new(2, "other");
        assert!(c.order_key(ORDER_WINDOW - 1) < c.order_key(ORDER_WINDOW));
        let first: Vec<u32> = {
            let mut v: Vec<u32> = (0..ORDER_WINDOW).collect();
            v.sort_by_key(|n| c.order_key(*n));
            v
        };
        let other: Vec<u32> = {
            let mut v: Vec<u32> = (0..ORDER_WINDOW).collect();
            v.sort_by_key(|n| d.order_key(*n));
            v
        };
        assert_ne!(first, other, "siblings order a window differently");
        assert_ne!(first, (0..ORDER_WINDOW).collect::<Vec<_>>());
    }

    #[test]
    fn the_seed_is_kept_busy_with_what_only_it_holds_and_peers_serve_the_rest_rarest_first() {
        let mut c = choice(&[
            ("seed", true, &[0, 1, 2, 3]),
            ("a", false, &[0, 1]),
            ("b", false, &[1]),
        ]);
        let now = Instant::now();
        // Pieces 2 and 3 only the seed holds: its budget is used first.
        let (n, p) = c.pick([0, 1, 2, 3], |_| 4 << 20, now).unwrap();
        assert!(n == 2 || n == 3, "{n}");
        assert_eq!(p, "seed");
        for _ in 0..SEED_PIECES_IN_FLIGHT {
            c.started("seed", 4 << 20);
        }
        // With the seed budget in use, peers: piece 0 (one peer holder) is
        // rarer among peers than 1 (two): 0 from a.
        assert_eq!(
            c.pick([0, 1, 2, 3], |_| 4 << 20, now),
            Some((0, "a".into()))
        );
    }

    #[test]
    fn the_fastest_peer_holder_serves_and_load_moves_work() {
        let mut c = choice(&[("a", false, &[0]), ("b", false, &[0])]);
        let now = Instant::now();
        c.parents.get_mut("a").unwrap().throughput = 20e6;
        c.parents.get_mut("b").unwrap().throughput = 50e6;
        assert_eq!(c.pick([0], |_| 4 << 20, now), Some((0, "b".into())));
        c.parents.get_mut("b").unwrap().inflight_bytes = 400 << 20;
        assert_eq!(c.pick([0], |_| 4 << 20, now), Some((0, "a".into())));
    }

    #[test]
    fn a_slow_parent_serves_only_what_no_fast_parent_holds() {
        let mut c = choice(&[("fast", false, &[0, 1]), ("slow", false, &[0, 1, 2])]);
        let now = Instant::now();
        // One transfer from `slow` gets a tenth of what one from `fast` gets.
        for (id, rate) in [("fast", 25e6), ("slow", 2.5e6)] {
            let p = c.parents.get_mut(id).unwrap();
            p.throughput = rate;
            p.measured = true;
        }
        // Piece 2 only `slow` holds; 0 and 1 (held by both) wait for `fast`.
        c.started("fast", 4 << 20);
        c.started("fast", 4 << 20);
        assert_eq!(
            c.pick([0, 1, 2], |_| 4 << 20, now),
            Some((2, "slow".into()))
        );
        assert_eq!(c.pick([0, 1], |_| 4 << 20, now), None, "fast is full: wait");
        c.finished("fast", 4 << 20, None, None);
        assert_eq!(
            c.pick([0, 1], |_| 4 << 20, now).map(|(_, p)| p),
            Some("fast".into())
        );
        // Measured faster later (40 against 25 MB/s), `slow` is a near
        // peer like any other: with `fast` full, it serves.
        c.parents.get_mut("slow").unwrap().throughput = 40e6;
        c.started("fast", 4 << 20);
        assert_eq!(
            c.pick([0, 1], |_| 4 << 20, now).map(|(_, p)| p),
            Some("slow".into())
        );
    }

    #[test]
    fn a_piece_a_slow_peer_and_a_seed_hold_waits_for_the_seed() {
        let mut c = choice(&[
            ("fast", false, &[]),
            ("slow", false, &[7]),
            ("seed", true, &[7]),
        ]);
        let now = Instant::now();
        for (id, rate) in [("fast", 25e6), ("slow", 2.5e6)] {
            let p = c.parents.get_mut(id).unwrap();
            p.throughput = rate;
            p.measured = true;
        }
        assert_eq!(c.pick([7], |_| 4 << 20, now), Some((7, "seed".into())));
        // The seed sent 7 to another child a moment ago: the child waits
        // out the seed's short wait instead of a slow transfer.
        c.wait_elsewhere("seed", 7, now + Duration::from_secs(2), now);
        assert_eq!(c.pick([7], |_| 4 << 20, now), None);
        assert_eq!(c.next_wake(), Some(now + Duration::from_secs(2)));
        // An unmeasured peer is never slow: the guess says nothing.
        c.parents.get_mut("slow").unwrap().measured = false;
        assert_eq!(c.pick([7], |_| 4 << 20, now), Some((7, "slow".into())));
    }

    #[test]
    fn one_piece_at_a_time_crosses_from_another_zone() {
        let mut c = choice(&[("far", false, &[0, 1, 2, 3])]);
        c.parents.get_mut("far").unwrap().remote = true;
        let now = Instant::now();
        let (n, _) = c.pick([0, 1, 2, 3], |_| 1, now).unwrap();
        c.started("far", 1);
        assert_eq!(
            c.pick([0, 1, 2, 3].into_iter().filter(|m| *m != n), |_| 1, now),
            None
        );
    }

    #[test]
    fn siblings_cross_zones_in_orders_of_their_own_over_the_whole_file() {
        // Within a window the near-peer order would do; across zones each
        // child's first pick spreads over the whole file.
        let firsts: std::collections::BTreeSet<u32> = (0..8)
            .map(|i| {
                let mut c = ParentChoice::new(2, &format!("child-{i}"));
                let mut v = ParentView::new("far:1".into(), false);
                v.remote = true;
                for n in 0..256 {
                    v.pieces.insert(n, [0; 32]);
                }
                c.parents.insert("far".into(), v);
                c.pick(0..256, |_| 1, Instant::now()).unwrap().0
            })
            .collect();
        assert!(firsts.len() >= 7, "{firsts:?}");
        assert!(firsts.iter().any(|n| *n >= ORDER_WINDOW), "{firsts:?}");
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

    /// `pick` as it was before the bitsets (with the near-seed-first final
    /// rule): one digest-map look-up per piece and parent. The fast one must
    /// choose exactly as it does.
    fn reference_pick(
        c: &ParentChoice,
        wanted: &[u32],
        piece_len: impl Fn(u32) -> u64,
        now: Instant,
    ) -> Option<(u32, PeerId)> {
        let serves = |p: &ParentView, n: u32| {
            p.pieces.get(&n).is_some() && p.elsewhere.get(&n).is_none_or(|t| *t <= now)
        };
        let usable =
            |p: &ParentView| p.inflight < c.per_parent && p.busy_until.is_none_or(|t| t <= now);
        let expensive_inflight: u32 = c
            .parents
            .values()
            .filter(|p| p.expensive())
            .map(|p| p.inflight)
            .sum();
        let budget = SEED_PIECES_IN_FLIGHT.min(c.per_parent);
        // The median measured near peer's throughput, the long way.
        let mut rates: Vec<f64> = c
            .parents
            .values()
            .filter(|p| !p.seed && !p.remote && p.measured)
            .map(|p| p.throughput)
            .collect();
        rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let median = if rates.is_empty() {
            0.0
        } else {
            rates[rates.len() / 2]
        };
        let tier_of = |p: &ParentView| {
            if !p.seed && !p.remote && p.measured && p.throughput < SLOW_SHARE * median {
                TIER_SLOW
            } else {
                p.tier()
            }
        };
        let mut from_peers: Option<((usize, u64), u32, &PeerId)> = None;
        let mut from_slow: Option<((usize, u64), u32, &PeerId)> = None;
        let mut from_expensive: Option<((u8, u64), u32, &PeerId)> = None;
        for &piece in wanted {
            let len = piece_len(piece);
            let holders = || c.parents.iter().filter(|(_, p)| serves(p, piece));
            let Some(tier) = holders().map(|(_, p)| tier_of(p)).min() else {
                continue;
            };
            let seed_holds = c
                .parents
                .values()
                .any(|p| p.seed && !p.remote && p.pieces.get(&piece).is_some());
            if tier == TIER_SLOW && seed_holds {
                continue;
            }
            let count = holders().count();
            let key = match tier {
                TIER_REMOTE => c.scramble(piece),
                _ => c.order_key(piece),
            };
            let fastest = holders()
                .filter(|(_, p)| tier_of(p) == tier && usable(p))
                .min_by(|a, b| {
                    a.1.expected_secs(len)
                        .total_cmp(&b.1.expected_secs(len))
                        .then_with(|| a.0.cmp(b.0))
                })
                .map(|(id, _)| id);
            let Some(id) = fastest else { continue };
            if tier == TIER_PEER || tier == TIER_SLOW {
                let rank = (count, key);
                let best = if tier == TIER_PEER {
                    &mut from_peers
                } else {
                    &mut from_slow
                };
                if best.as_ref().is_none_or(|(r, _, _)| rank < *r) {
                    *best = Some((rank, piece, id));
                }
            } else if expensive_inflight
                < match tier {
                    TIER_REMOTE => REMOTE_PIECES_IN_FLIGHT,
                    _ => budget,
                }
            {
                let rank = (tier, key);
                if from_expensive.as_ref().is_none_or(|(r, _, _)| rank < *r) {
                    from_expensive = Some((rank, piece, id));
                }
            }
        }
        let near_seed = from_expensive
            .as_ref()
            .is_some_and(|((tier, _), _, _)| *tier == TIER_SEED);
        let (first, second) = match near_seed {
            true => (from_expensive, None),
            false => (None, from_expensive),
        };
        first
            .map(|(_, n, id)| (n, id.clone()))
            .or_else(|| from_peers.map(|(_, n, id)| (n, id.clone())))
            .or_else(|| from_slow.map(|(_, n, id)| (n, id.clone())))
            .or_else(|| second.map(|(_, n, id)| (n, id.clone())))
    }

    #[test]
    fn pick_chooses_as_the_look_up_per_parent_did() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let now = Instant::now();
        let mut differ = 0;
        for case in 0..2000 {
            let pieces = 1 + rnd(300) as u32;
            let mut c = ParentChoice::new(1 + rnd(4) as u32, &format!("child-{case}"));
            for p in 0..rnd(18) {
                let mut v = ParentView::new(format!("p{p}:1"), rnd(6) == 0);
                v.remote = rnd(5) == 0;
                let density = 1 + rnd(100);
                for n in 0..pieces {
                    if rnd(100) < density {
                        v.pieces.insert(n, [n as u8; 32]);
                    }
                }
                // A few pieces dropped again (a NotFound answer).
                for _ in 0..rnd(3) {
                    let n = rnd(pieces as u64) as u32;
                    v.pieces.remove(&n);
                }
                v.inflight = rnd(4) as u32;
                v.inflight_bytes = v.inflight as u64 * (1 << 20);
                v.throughput = 1e6 * (1 + rnd(1000)) as f64;
                v.measured = rnd(4) > 0;
                v.load = rnd(5) as u32;
                if rnd(4) == 0 {
                    v.busy_until =
                        Some(now + Duration::from_millis(rnd(200)) - Duration::from_millis(100));
                }
                for _ in 0..rnd(4) {
                    let n = rnd(pieces as u64) as u32;
                    v.elsewhere.insert(
                        n,
                        now + Duration::from_millis(rnd(200)) - Duration::from_millis(100),
                    );
                }
                c.parents.insert(format!("p{p}"), v);
            }
            let wanted: Vec<u32> = (0..pieces).filter(|_| rnd(3) > 0).collect();
            let len = |n: u32| if n + 1 == pieces { 1000 } else { 1 << 20 };
            let want = reference_pick(&c, &wanted, len, now);
            assert_eq!(
                c.pick(wanted.iter().copied(), len, now),
                want,
                "case {case}"
            );
            differ += want.is_some() as u32;
        }
        assert!(differ > 500, "most cases pick something: {differ}");
    }

    #[test]
    fn waits_that_passed_are_forgotten_so_the_next_wake_is_ahead() {
        let mut c = choice(&[("a", false, &[0]), ("b", false, &[0])]);
        let now = Instant::now();
        c.wait_busy("a", now);
        c.wait_busy("b", now + Duration::from_millis(50));
        c.wait_elsewhere(
            "b",
            0,
            now - Duration::from_millis(1),
            now - Duration::from_secs(1),
        );
        assert_eq!(
            c.next_wake(),
            Some(now - Duration::from_millis(1)),
            "the passed waits still count"
        );
        c.forget_past_waits(now);
        assert_eq!(c.next_wake(), Some(now + Duration::from_millis(50)));
        assert!(c.parents["b"].elsewhere.is_empty());
        assert_eq!(c.pick([0], |_| 1, now), Some((0, "a".into())));
        c.forget_past_waits(now + Duration::from_millis(50));
        assert_eq!(c.next_wake(), None, "the last wait passed too");
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
        assert_eq!(a.throughput, 10e6, "the first sample replaces the guess");
        c.started("a", 10_000_000);
        c.finished("a", 10_000_000, Some(Duration::from_millis(500)), Some(3));
        let a = &c.parents["a"];
        assert!(
            a.throughput > 10e6 && a.throughput < 20e6,
            "later ones blend"
        );
        assert_eq!((a.inflight, a.load), (0, 3));
        assert_eq!(c.digest(0), Some([0; 32]));
    }
}
