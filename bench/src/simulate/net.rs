//! The simulated network: capacities (each host's upload and download link,
//! its loopback, the links out of and into a zone) and flows (piece
//! transfers) that share them **max-min fairly**, as TCP flows roughly do
//! on a token-bucket-capped link.
//!
//! A flow's rate is the smallest *share* among the links it crosses. A
//! link's share is its water level: with the rates its flows are held to
//! elsewhere (`b_f`, the least share among their other links), the level
//! `s` at which `Σ min(b_f, s)` fills its capacity (∞ while the link is not
//! full). At the fixed point where every link's share is its water level
//! the allocation is max-min fair (each flow is held by a full link on
//! which no flow gets more), which is what progressive filling computes
//! globally.
//!
//! Why not progressive filling itself: in a 10,000-host swarm every flow is
//! connected to every other through shared uploaders and downloaders, so a
//! global recomputation per piece start or end (millions of them) costs
//! O(flows) each. Here only the links whose flow set changed are marked,
//! and a change of a link's share is passed on to the other links of its
//! flows only when it is larger than [`RELATIVE_EPSILON`]; the ripples die
//! out within a few hops. Changes made at one instant are settled together
//! ([`Net::settle`]), so a hundred flows starting at once cost one pass.
//! The unit tests check the result against global progressive filling.

use std::collections::VecDeque;

/// Simulated time, in nanoseconds since the simulation's start.
pub type Nanos = u64;

/// A link of the simulated network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(u32);

/// A transfer in progress, by its slot; reused once the flow ends, so it is
/// paired with [`FlowKey::version`] wherever it may outlive the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowId(u32);

/// Names one rate of one flow: a completion computed for an older rate (or
/// an older flow in the same slot) carries an older version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    pub flow: FlowId,
    pub version: u32,
}

/// A link's share changes are passed on only above this fraction: smaller
/// ones change no completion time that matters, and passing them on would
/// ripple through the whole swarm.
pub const RELATIVE_EPSILON: f64 = 1e-6;

/// Times one link may be recomputed in one [`Net::settle`] before the rest
/// of its changes are dropped (a guard: the tests never reach it).
const MAX_VISITS: u32 = 64;

/// The most links one flow crosses: upload, download, out of its zone, into
/// the other zone.
const MAX_PATH: usize = 4;

struct Link {
    /// Bytes per second.
    capacity: f64,
    /// The water level: what this link allows each flow that is not held
    /// lower elsewhere. `f64::INFINITY` while the link is not full.
    share: f64,
    /// Flows crossing it, with their own index of this link in their path.
    flows: Vec<(FlowId, u8)>,
    queued: bool,
    visits: u32,
}

struct Flow<T> {
    path: [LinkId; MAX_PATH],
    len: u8,
    /// Index of this flow in each of its links' `flows`.
    slot_in_link: [u32; MAX_PATH],
    /// Bytes still to send at `updated`.
    remaining: f64,
    /// Bytes per second since `updated`.
    rate: f64,
    updated: Nanos,
    version: u32,
    tag: T,
    /// Its rate must be recomputed at the next settle.
    stale: bool,
}

/// The network's links and the flows on them; `T` is what the caller
/// attaches to a flow (the transfer it is).
pub struct Net<T> {
    links: Vec<Link>,
    flows: Vec<Option<Flow<T>>>,
    free: Vec<u32>,
    /// Versions survive a slot's reuse, so an old completion never matches.
    versions: Vec<u32>,
    queue: VecDeque<LinkId>,
    stale_flows: Vec<FlowId>,
    scratch: Vec<f64>,
    /// Settles in which some link hit [`MAX_VISITS`].
    pub unconverged: u64,
    /// Link recomputations, for the simulator's own cost figures.
    pub recomputations: u64,
}

impl<T> Default for Net<T> {
    fn default() -> Self {
        Self {
            links: Vec::new(),
            flows: Vec::new(),
            free: Vec::new(),
            versions: Vec::new(),
            queue: VecDeque::new(),
            stale_flows: Vec::new(),
            scratch: Vec::new(),
            unconverged: 0,
            recomputations: 0,
        }
    }
}

impl<T> Net<T> {
    /// A link of `capacity` bytes per second.
    pub fn add_link(&mut self, capacity: f64) -> LinkId {
        assert!(capacity > 0.0, "a link carries something");
        self.links.push(Link {
            capacity,
            share: f64::INFINITY,
            flows: Vec::new(),
            queued: false,
            visits: 0,
        });
        LinkId(self.links.len() as u32 - 1)
    }

    pub fn flow_count(&self) -> usize {
        self.flows.len() - self.free.len()
    }

    /// Starts sending `bytes` along `path` (1 to 4 distinct links) at `now`;
    /// its rate and completion come from the next [`Net::settle`].
    pub fn start(&mut self, now: Nanos, bytes: u64, path: &[LinkId], tag: T) -> FlowId {
        assert!(
            (1..=MAX_PATH).contains(&path.len()),
            "a flow crosses 1 to {MAX_PATH} links"
        );
        let id = match self.free.pop() {
            Some(i) => i,
            None => {
                self.flows.push(None);
                self.versions.push(0);
                self.flows.len() as u32 - 1
            }
        };
        let fid = FlowId(id);
        let mut p = [LinkId(0); MAX_PATH];
        let mut slots = [0u32; MAX_PATH];
        for (i, l) in path.iter().enumerate() {
            p[i] = *l;
            let link = &mut self.links[l.0 as usize];
            slots[i] = link.flows.len() as u32;
            link.flows.push((fid, i as u8));
        }
        self.versions[id as usize] += 1;
        self.flows[id as usize] = Some(Flow {
            path: p,
            len: path.len() as u8,
            slot_in_link: slots,
            remaining: bytes as f64,
            rate: 0.0,
            updated: now,
            version: self.versions[id as usize],
            tag,
            stale: false,
        });
        self.mark_flow(fid);
        for l in path {
            self.enqueue(*l);
        }
        fid
    }

    /// Ends a flow (finished or cut off) and returns its tag and the bytes
    /// it had still to send.
    pub fn remove(&mut self, now: Nanos, id: FlowId) -> Option<(T, f64)> {
        let mut f = self.flows.get_mut(id.0 as usize)?.take()?;
        f.remaining = (f.remaining - f.rate * secs(now - f.updated)).max(0.0);
        for i in 0..f.len as usize {
            let l = f.path[i];
            let slot = f.slot_in_link[i] as usize;
            let link = &mut self.links[l.0 as usize];
            link.flows.swap_remove(slot);
            if let Some(&(moved, pos)) = link.flows.get(slot) {
                if let Some(mf) = self.flows[moved.0 as usize].as_mut() {
                    mf.slot_in_link[pos as usize] = slot as u32;
                }
            }
            self.enqueue(l);
        }
        // Its slot may be in the stale list; `settle` skips empty slots.
        self.versions[id.0 as usize] += 1;
        self.free.push(id.0);
        Some((f.tag, f.remaining))
    }

    /// The flow a completion names, if it is still that flow at that rate.
    pub fn current(&self, key: FlowKey) -> bool {
        self.flows
            .get(key.flow.0 as usize)
            .and_then(Option::as_ref)
            .is_some_and(|f| f.version == key.version)
    }

    pub fn tag(&self, id: FlowId) -> Option<&T> {
        self.flows.get(id.0 as usize)?.as_ref().map(|f| &f.tag)
    }

    /// Whether changes wait for [`Net::settle`].
    pub fn dirty(&self) -> bool {
        !self.queue.is_empty() || !self.stale_flows.is_empty()
    }

    fn enqueue(&mut self, l: LinkId) {
        let link = &mut self.links[l.0 as usize];
        if !link.queued {
            link.queued = true;
            self.queue.push_back(l);
        }
    }

    fn mark_flow(&mut self, id: FlowId) {
        if let Some(f) = self.flows[id.0 as usize].as_mut() {
            if !f.stale {
                f.stale = true;
                self.stale_flows.push(id);
            }
        }
    }

    /// The least share among `f`'s links other than its `skip`-th.
    fn held_elsewhere(links: &[Link], f: &Flow<T>, skip: usize) -> f64 {
        (0..f.len as usize)
            .filter(|&i| i != skip)
            .map(|i| links[f.path[i].0 as usize].share)
            .fold(f64::INFINITY, f64::min)
    }

    /// The water level of link `l` given its flows' limits elsewhere.
    fn water_level(&mut self, l: LinkId) -> f64 {
        let link = &self.links[l.0 as usize];
        self.scratch.clear();
        for &(fid, pos) in &link.flows {
            if let Some(f) = self.flows[fid.0 as usize].as_ref() {
                self.scratch
                    .push(Self::held_elsewhere(&self.links, f, pos as usize));
            }
        }
        self.scratch.sort_unstable_by(f64::total_cmp);
        let mut left = link.capacity;
        let mut n = self.scratch.len();
        for &b in &self.scratch {
            let level = left / n as f64;
            if b >= level {
                return level;
            }
            left -= b;
            n -= 1;
        }
        f64::INFINITY
    }

    /// Brings every share and rate up to date after the changes made at
    /// `now`, and calls `schedule` with each flow whose completion moved
    /// (its key and its new completion time).
    pub fn settle(&mut self, now: Nanos, mut schedule: impl FnMut(FlowKey, Nanos)) {
        let mut touched: Vec<LinkId> = Vec::new();
        let mut gave_up = false;
        while let Some(l) = self.queue.pop_front() {
            let li = l.0 as usize;
            self.links[li].queued = false;
            if self.links[li].visits >= MAX_VISITS {
                gave_up = true;
                continue;
            }
            if self.links[li].visits == 0 {
                touched.push(l);
            }
            self.links[li].visits += 1;
            self.recomputations += 1;
            let new = self.water_level(l);
            let old = self.links[li].share;
            let changed = match (old.is_finite(), new.is_finite()) {
                (true, true) => (new - old).abs() > RELATIVE_EPSILON * old.max(new),
                (false, false) => false,
                _ => true,
            };
            if !changed {
                continue;
            }
            self.links[li].share = new;
            for k in 0..self.links[li].flows.len() {
                let (fid, pos) = self.links[li].flows[k];
                self.mark_flow(fid);
                let Some(f) = self.flows[fid.0 as usize].as_ref() else {
                    continue;
                };
                let (path, len) = (f.path, f.len as usize);
                for (i, o) in path.iter().enumerate().take(len) {
                    if i != pos as usize {
                        self.enqueue(*o);
                    }
                }
            }
        }
        if gave_up {
            self.unconverged += 1;
        }
        for l in touched {
            self.links[l.0 as usize].visits = 0;
        }
        for fid in std::mem::take(&mut self.stale_flows) {
            let Some(f) = self.flows[fid.0 as usize].as_mut() else {
                continue;
            };
            f.stale = false;
            let rate = (0..f.len as usize)
                .map(|i| self.links[f.path[i].0 as usize].share)
                .fold(f64::INFINITY, f64::min);
            debug_assert!(
                rate.is_finite(),
                "a link with flows is never unlimited for all of them"
            );
            if rate == f.rate {
                continue;
            }
            f.remaining = (f.remaining - f.rate * secs(now - f.updated)).max(0.0);
            f.updated = now;
            f.rate = rate;
            self.versions[fid.0 as usize] += 1;
            f.version = self.versions[fid.0 as usize];
            let left = if rate > 0.0 {
                (f.remaining / rate * 1e9).ceil() as Nanos
            } else {
                Nanos::MAX / 2
            };
            schedule(
                FlowKey {
                    flow: fid,
                    version: f.version,
                },
                now.saturating_add(left),
            );
        }
    }

    /// The sum of every flow's rate now, bytes per second (each flow once).
    pub fn total_rate(&self) -> f64 {
        self.flows.iter().flatten().map(|f| f.rate).sum()
    }

    /// The current rate of a flow, bytes per second (for tests).
    pub fn rate(&self, id: FlowId) -> Option<f64> {
        self.flows.get(id.0 as usize)?.as_ref().map(|f| f.rate)
    }
}

fn secs(ns: Nanos) -> f64 {
    ns as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Global progressive filling: every unfrozen flow grows at the same
    /// pace until a link fills; that link's flows freeze.
    fn progressive_filling(caps: &[f64], paths: &[Vec<usize>]) -> Vec<f64> {
        let mut rate = vec![0.0; paths.len()];
        let mut frozen = vec![false; paths.len()];
        let mut left = caps.to_vec();
        loop {
            let mut step = f64::INFINITY;
            for (l, cap) in left.iter().enumerate() {
                let n = (0..paths.len())
                    .filter(|&f| !frozen[f] && paths[f].contains(&l))
                    .count();
                if n > 0 {
                    step = step.min(cap / n as f64);
                }
            }
            if !step.is_finite() {
                return rate;
            }
            for f in 0..paths.len() {
                if !frozen[f] {
                    rate[f] += step;
                    for &l in &paths[f] {
                        left[l] -= step;
                    }
                }
            }
            for (l, cap) in left.iter().enumerate() {
                if *cap <= 1e-9 * caps[l] {
                    for f in 0..paths.len() {
                        if paths[f].contains(&l) {
                            frozen[f] = true;
                        }
                    }
                }
            }
        }
    }

    /// A tiny deterministic generator for the random instances.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % n
        }
    }

    #[test]
    fn shares_match_global_progressive_filling() {
        let mut rng = Lcg(7);
        for instance in 0..300 {
            let nlinks = 2 + rng.next(10);
            let caps: Vec<f64> = (0..nlinks).map(|_| 1.0 + rng.next(20) as f64).collect();
            let nflows = 1 + rng.next(25);
            let paths: Vec<Vec<usize>> = (0..nflows)
                .map(|_| {
                    let mut p: Vec<usize> = Vec::new();
                    let len = 1 + rng.next(3);
                    while p.len() < len.min(nlinks) {
                        let l = rng.next(nlinks);
                        if !p.contains(&l) {
                            p.push(l);
                        }
                    }
                    p
                })
                .collect();
            let mut net: Net<usize> = Net::default();
            let links: Vec<LinkId> = caps.iter().map(|c| net.add_link(*c)).collect();
            // Flows arrive one by one with settles in between (as in a run),
            // and a few leave again, so incremental updates are exercised.
            let mut ids = Vec::new();
            for (i, p) in paths.iter().enumerate() {
                let path: Vec<LinkId> = p.iter().map(|l| links[*l]).collect();
                ids.push(net.start(0, 1 << 30, &path, i));
                if rng.next(3) == 0 {
                    net.settle(0, |_, _| {});
                }
            }
            net.settle(0, |_, _| {});
            let mut alive: Vec<usize> = (0..nflows).collect();
            for _ in 0..rng.next(4).min(nflows - 1) {
                let gone = alive.remove(rng.next(alive.len()));
                net.remove(0, ids[gone]);
            }
            net.settle(0, |_, _| {});
            let kept: Vec<Vec<usize>> = alive.iter().map(|&f| paths[f].clone()).collect();
            let want = progressive_filling(&caps, &kept);
            for (k, &f) in alive.iter().enumerate() {
                let got = net.rate(ids[f]).unwrap();
                assert!(
                    (got - want[k]).abs() <= 1e-4 * want[k].max(1.0),
                    "instance {instance}: flow {f} got {got}, max-min fair is {}",
                    want[k]
                );
            }
            assert_eq!(net.unconverged, 0);
        }
    }

    #[test]
    fn a_flow_finishes_when_its_bytes_are_sent_at_the_rates_it_had() {
        let mut net: Net<&str> = Net::default();
        let up = net.add_link(100.0);
        let down_a = net.add_link(1000.0);
        let down_b = net.add_link(1000.0);
        let a = net.start(0, 100, &[up, down_a], "a");
        let mut done = Vec::new();
        net.settle(0, |k, t| done.push((k, t)));
        // Alone: 100 B at 100 B/s, one second.
        assert_eq!(done.last().map(|d| d.1), Some(1_000_000_000));
        // Half a second in, a second flow halves its rate: 50 B left at
        // 50 B/s, so it ends at 1.5 s; the first completion is now stale.
        let first = done[0].0;
        net.start(500_000_000, 1000, &[up, down_b], "b");
        done.clear();
        net.settle(500_000_000, |k, t| done.push((k, t)));
        assert!(!net.current(first));
        let a_end = done.iter().find(|(k, _)| k.flow == a).unwrap();
        assert_eq!(a_end.1, 1_500_000_000);
        assert!(net.current(a_end.0));
        let (tag, left) = net.remove(1_500_000_000, a).unwrap();
        assert_eq!(tag, "a");
        assert!(left.abs() < 1e-6);
        assert!(!net.current(a_end.0), "a removed flow's key is stale");
    }
}
