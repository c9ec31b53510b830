//! The sans-IO scheduling core.
//!
//! Phase 1 of scheduling happens here: for each child, filter the peers of a
//! task (has pieces or is the task's source, not itself, not on the same host,
//! not blocklisted, upload capacity left, and, in DAG mode, not a
//! descendant), rank them by load, progress and topology, and hand the child
//! the top few. Phase 2 (which parent serves which piece) is the
//! child's, by live load.
//!
//! Everything is plain data: [`Core::hello`], [`Core::handle`] and
//! [`Core::disconnect`] take what a peer said and return what to send to
//! whom. No clock, no sockets, no randomness: identical inputs give identical
//! outputs, so a simulator can drive 10,000 peers deterministically.

use crate::seed_ring::SeedRing;
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use weightcast_proto::pb::{
    self, peer_message::Msg as PeerMsg, scheduler_message::Msg as SchedMsg,
};
use weightcast_types::piece::{digest_from_slice, PieceDigest, PieceLayout};
use weightcast_types::{PeerId, TaskId};

/// Tunables of phase 1.
#[derive(Debug, Clone)]
pub struct Config {
    /// Candidate parents a child holds at once. Dragonfly keeps 3–4; under
    /// bandwidth caps a child that sees few peers goes to the seed for pieces
    /// other peers already hold (measured in bench/results: 16 peers, 4 →
    /// 8 → 16 parents cut the seed's upload from 4.4 to 1.9 to 1.0 copies).
    pub candidate_parents: usize,
    /// Candidates scored per decision.
    pub max_evaluated: usize,
    /// Eligible peers looked at per decision (a rotating window, as
    /// Dragonfly samples): bounds a decision's cost at 10,000 peers.
    pub max_scanned: usize,
    /// Keep the peer graph acyclic (Dragonfly's rule). Pieces never cycle
    /// anyway (nobody fetches a piece it has); a mesh lets two peers trade
    /// pieces both ways, which a DAG forbids. Default: mesh. Under bandwidth
    /// caps a DAG makes the peers near its top fetch almost everything from
    /// the seed (measured: 4.7 vs 1.7 × S/B for 8 peers).
    pub acyclic: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            candidate_parents: 16,
            max_evaluated: 64,
            max_scanned: 256,
            acyclic: false,
        }
    }
}

/// A message for one peer.
#[derive(Debug, Clone, PartialEq)]
pub struct Outbound {
    pub to: PeerId,
    pub msg: SchedMsg,
}

/// Counters for `/metrics` and for simulations.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub seeds_triggered: u64,
    pub back_to_source: u64,
    pub parents_assigned: u64,
    pub digest_conflicts: u64,
    pub piece_failures: u64,
}

struct Host {
    info: pb::HostInfo,
    active_uploads: u32,
    /// Child edges planned onto this host, over all tasks.
    children: u32,
    tasks: BTreeSet<TaskId>,
}

#[derive(Default)]
struct TaskPeer {
    pieces: BTreeSet<u32>,
    parents: BTreeSet<PeerId>,
    children: BTreeSet<PeerId>,
    blocked: BTreeSet<PeerId>,
    done: bool,
}

struct Task {
    url: String,
    content_length: Option<u64>,
    digests: BTreeMap<u32, PieceDigest>,
    /// The peer that fetches this task from the origin.
    source: Option<PeerId>,
    peers: BTreeMap<PeerId, TaskPeer>,
    /// Peers in arrival order.
    order: Vec<PeerId>,
    /// Peers that can be parents (hold a piece, or are the source), in the
    /// order they became so: phase 1 walks a bounded window of this.
    eligible: Vec<PeerId>,
}

impl Task {
    fn piece_count(&self) -> Option<u32> {
        self.content_length
            .map(|l| PieceLayout::for_length(l).piece_count())
    }
}

#[derive(Default)]
pub struct Core {
    config: Config,
    hosts: BTreeMap<PeerId, Host>,
    tasks: BTreeMap<TaskId, Task>,
    seeds: SeedRing,
    pub stats: Stats,
}

fn msg(to: &str, m: SchedMsg) -> Outbound {
    Outbound {
        to: to.to_string(),
        msg: m,
    }
}

fn small_hash(s: &str) -> usize {
    // FNV-1a: a stable, dependency-free spread of children over the window.
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    }) as usize
}

impl Core {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            ..Default::default()
        }
    }

    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// Sum of active uploads peers reported.
    pub fn upload_load(&self) -> u64 {
        self.hosts.values().map(|h| h.active_uploads as u64).sum()
    }

    /// Parents currently planned for `child` on `task` (for tests and simulators).
    pub fn parents_of(&self, task: &TaskId, child: &str) -> Vec<PeerId> {
        self.tasks
            .get(task)
            .and_then(|t| t.peers.get(child))
            .map(|p| p.parents.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// A peer opened its stream.
    pub fn hello(&mut self, info: pb::HostInfo) -> Vec<Outbound> {
        let id = info.peer_id.clone();
        if self.hosts.contains_key(&id) {
            // A reconnect with the same id: start from a clean slate.
            self.disconnect(&id);
        }
        if info.seed {
            self.seeds.add(&id);
        }
        self.hosts.insert(
            id,
            Host {
                info,
                active_uploads: 0,
                children: 0,
                tasks: BTreeSet::new(),
            },
        );
        Vec::new()
    }

    /// A peer's stream ended: it leaves every task, its children are replanned.
    pub fn disconnect(&mut self, peer: &str) -> Vec<Outbound> {
        let Some(host) = self.hosts.get(peer) else {
            return Vec::new();
        };
        let tasks: Vec<TaskId> = host.tasks.iter().copied().collect();
        let is_seed = host.info.seed;
        if is_seed {
            self.seeds.remove(peer);
        }
        let mut out = Vec::new();
        for t in tasks {
            out.extend(self.leave_task(peer, t));
        }
        self.hosts.remove(peer);
        out
    }

    /// Anything a connected peer says after `hello`.
    pub fn handle(&mut self, from: &str, m: PeerMsg) -> Vec<Outbound> {
        if !self.hosts.contains_key(from) {
            return Vec::new();
        }
        match m {
            PeerMsg::Hello(_) => Vec::new(),
            PeerMsg::Register(r) => match r.task_id.parse() {
                Ok(t) => self.register(from, t, r),
                Err(_) => Vec::new(),
            },
            PeerMsg::Meta(m) => match m.task_id.parse() {
                Ok(t) => self.meta(from, t, m.content_length),
                Err(_) => Vec::new(),
            },
            PeerMsg::PieceDone(p) => match (p.task_id.parse(), digest_from_slice(&p.digest)) {
                (Ok(t), Some(d)) => self.piece_done(from, t, p.num, d),
                _ => Vec::new(),
            },
            PeerMsg::PieceFailed(f) => match f.task_id.parse() {
                Ok(t) => self.piece_failed(from, t, &f.parent_id),
                Err(_) => Vec::new(),
            },
            PeerMsg::TaskDone(d) => {
                if let Ok(t) = d.task_id.parse() {
                    self.task_done(from, t);
                }
                Vec::new()
            }
            PeerMsg::TaskLeft(l) => match l.task_id.parse() {
                Ok(t) => self.leave_task(from, t),
                Err(_) => Vec::new(),
            },
            // Interim: granted at once, as a stalled peer went to the
            // origin before; the budgets come with the scheduler core crate.
            PeerMsg::SourceRequest(r) => match r.task_id.parse::<TaskId>() {
                Ok(t) => {
                    self.stats.back_to_source += 1;
                    vec![msg(
                        from,
                        SchedMsg::BackToSource(pb::BackToSource {
                            task_id: t.to_hex(),
                            reason: r.reason,
                        }),
                    )]
                }
                Err(_) => Vec::new(),
            },
            PeerMsg::Load(l) => {
                if let Some(h) = self.hosts.get_mut(from) {
                    h.active_uploads = l.active_uploads;
                }
                Vec::new()
            }
        }
    }

    fn register(&mut self, peer: &str, id: TaskId, r: pb::RegisterTask) -> Vec<Outbound> {
        let mut out = Vec::new();
        let task = self.tasks.entry(id).or_insert_with(|| Task {
            url: r.url.clone(),
            content_length: None,
            digests: BTreeMap::new(),
            source: None,
            peers: BTreeMap::new(),
            order: Vec::new(),
            eligible: Vec::new(),
        });
        if task.content_length.is_none() && r.content_length > 0 {
            task.content_length = Some(r.content_length);
        }
        if !task.peers.contains_key(peer) {
            task.order.push(peer.to_string());
        }
        let tp = task.peers.entry(peer.to_string()).or_default();
        for p in &r.have {
            let Some(d) = digest_from_slice(&p.digest) else {
                continue;
            };
            match task.digests.get(&p.num) {
                Some(known) if *known != d => self.stats.digest_conflicts += 1,
                _ => {
                    task.digests.insert(p.num, d);
                    tp.pieces.insert(p.num);
                }
            }
        }
        if !tp.pieces.is_empty() && !task.eligible.iter().any(|p| p == peer) {
            task.eligible.push(peer.to_string());
        }
        if let Some(len) = task.content_length {
            out.push(msg(
                peer,
                SchedMsg::Meta(pb::TaskMeta {
                    task_id: id.to_hex(),
                    content_length: len,
                }),
            ));
        }
        if let Some(h) = self.hosts.get_mut(peer) {
            h.tasks.insert(id);
        }
        let source_alive = task
            .source
            .as_ref()
            .is_some_and(|s| self.hosts.contains_key(s));
        if !source_alive {
            out.extend(self.choose_source(id, peer));
        }
        if self.tasks[&id].source.as_deref() != Some(peer) {
            out.extend(self.plan(id, peer));
        }
        out
    }

    /// Picks who goes back to source for `id`: the seed the ring names, or,
    /// with no seed in the cluster, the peer `fallback` itself.
    fn choose_source(&mut self, id: TaskId, fallback: &str) -> Vec<Outbound> {
        let hosts = &self.hosts;
        let seed = self.seeds.pick(&id, |s| !hosts.contains_key(s)).cloned();
        let task = self.tasks.get_mut(&id).expect("task exists");
        let task_id = id.to_hex();
        match seed {
            Some(seed) if seed != fallback => {
                task.source = Some(seed.clone());
                if !task.peers.contains_key(&seed) {
                    task.order.push(seed.clone());
                }
                task.peers.entry(seed.clone()).or_default();
                if !task.eligible.contains(&seed) {
                    task.eligible.push(seed.clone());
                }
                if let Some(h) = self.hosts.get_mut(&seed) {
                    h.tasks.insert(id);
                }
                self.stats.seeds_triggered += 1;
                vec![msg(
                    &seed,
                    SchedMsg::SeedTask(pb::SeedTask {
                        task_id,
                        url: task.url.clone(),
                    }),
                )]
            }
            seed => {
                task.source = Some(fallback.to_string());
                if !task.eligible.iter().any(|p| p == fallback) {
                    task.eligible.push(fallback.to_string());
                }
                // The new source needs no parents.
                let parents: Vec<PeerId> = task
                    .peers
                    .get(fallback)
                    .map(|p| p.parents.iter().cloned().collect())
                    .unwrap_or_default();
                for p in parents {
                    self.drop_edge(id, &p, fallback);
                }
                self.stats.back_to_source += 1;
                let reason = if seed.is_some() {
                    "this peer is the task's seed"
                } else {
                    "no seed peer is connected to the scheduler"
                };
                vec![msg(
                    fallback,
                    SchedMsg::BackToSource(pb::BackToSource {
                        task_id,
                        reason: reason.to_string(),
                    }),
                )]
            }
        }
    }

    fn meta(&mut self, peer: &str, id: TaskId, len: u64) -> Vec<Outbound> {
        let Some(task) = self.tasks.get_mut(&id) else {
            return Vec::new();
        };
        if task.content_length.is_some() && task.source.as_deref() != Some(peer) {
            return Vec::new();
        }
        task.content_length = Some(len);
        task.peers
            .keys()
            .filter(|p| p.as_str() != peer)
            .map(|p| {
                msg(
                    p,
                    SchedMsg::Meta(pb::TaskMeta {
                        task_id: id.to_hex(),
                        content_length: len,
                    }),
                )
            })
            .collect()
    }

    fn piece_done(
        &mut self,
        peer: &str,
        id: TaskId,
        num: u32,
        digest: PieceDigest,
    ) -> Vec<Outbound> {
        let Some(task) = self.tasks.get_mut(&id) else {
            return Vec::new();
        };
        match task.digests.get(&num) {
            Some(known) if *known != digest => {
                // Only the first (source) digest is trusted; a peer that
                // disagrees is not offered as a parent for this piece.
                self.stats.digest_conflicts += 1;
                return Vec::new();
            }
            Some(_) => {}
            None => {
                task.digests.insert(num, digest);
            }
        }
        let Some(tp) = task.peers.get_mut(peer) else {
            return Vec::new();
        };
        if !tp.pieces.insert(num) {
            return Vec::new();
        }
        let first_piece = tp.pieces.len() == 1;
        if first_piece && !task.eligible.iter().any(|p| p == peer) {
            task.eligible.push(peer.to_string());
        }
        let piece = pb::Piece {
            num,
            digest: digest.to_vec(),
        };
        let mut out: Vec<Outbound> = tp
            .children
            .iter()
            .map(|c| {
                msg(
                    c,
                    SchedMsg::Available(pb::PieceAvailable {
                        task_id: id.to_hex(),
                        parent_id: peer.to_string(),
                        piece: Some(piece.clone()),
                    }),
                )
            })
            .collect();
        if first_piece {
            // A new candidate parent: top up children short of parents. It can
            // take at most `upload_slots` of them, so a bounded number of
            // replans (walking from a point that rotates with the parent)
            // finds them without touching every peer of a 10,000-peer task.
            let want = self.config.candidate_parents;
            let budget = 2 * self
                .hosts
                .get(peer)
                .map_or(1, |h| h.info.upload_slots.max(1)) as usize;
            let n = task.order.len();
            let start = small_hash(peer) % n.max(1);
            let short: Vec<PeerId> = (0..n)
                .map(|i| &task.order[(start + i) % n])
                .filter(|p| {
                    p.as_str() != peer
                        && task.source.as_deref() != Some(p.as_str())
                        && task
                            .peers
                            .get(*p)
                            .is_some_and(|tp| !tp.done && tp.parents.len() < want)
                })
                .take(budget)
                .cloned()
                .collect();
            for child in short {
                out.extend(self.plan(id, &child));
            }
        }
        out
    }

    fn piece_failed(&mut self, child: &str, id: TaskId, parent: &str) -> Vec<Outbound> {
        self.stats.piece_failures += 1;
        let Some(task) = self.tasks.get_mut(&id) else {
            return Vec::new();
        };
        // The source is never blocklisted: without it nothing new arrives.
        if task.source.as_deref() == Some(parent) {
            return Vec::new();
        }
        if let Some(tp) = task.peers.get_mut(child) {
            tp.blocked.insert(parent.to_string());
        }
        self.drop_edge(id, parent, child);
        self.plan(id, child)
    }

    fn task_done(&mut self, peer: &str, id: TaskId) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        let Some(tp) = task.peers.get_mut(peer) else {
            return;
        };
        tp.done = true;
        let parents: Vec<PeerId> = tp.parents.iter().cloned().collect();
        for p in parents {
            self.drop_edge(id, &p, peer);
        }
    }

    fn leave_task(&mut self, peer: &str, id: TaskId) -> Vec<Outbound> {
        let mut out = Vec::new();
        let Some(task) = self.tasks.get_mut(&id) else {
            return out;
        };
        let Some(tp) = task.peers.remove(peer) else {
            return out;
        };
        task.order.retain(|p| p != peer);
        task.eligible.retain(|p| p != peer);
        if let Some(h) = self.hosts.get_mut(peer) {
            h.tasks.remove(&id);
        }
        for p in &tp.parents {
            if let Some(ptp) = self.tasks.get_mut(&id).and_then(|t| t.peers.get_mut(p)) {
                ptp.children.remove(peer);
            }
            if let Some(h) = self.hosts.get_mut(p) {
                h.children = h.children.saturating_sub(1);
            }
        }
        if let Some(h) = self.hosts.get_mut(peer) {
            h.children = h.children.saturating_sub(tp.children.len() as u32);
        }
        let task = self.tasks.get_mut(&id).expect("task exists");
        for c in &tp.children {
            if let Some(ctp) = task.peers.get_mut(c) {
                ctp.parents.remove(peer);
            }
            out.push(msg(
                c,
                SchedMsg::ParentGone(pb::ParentGone {
                    task_id: id.to_hex(),
                    parent_id: peer.to_string(),
                }),
            ));
        }
        if task.peers.is_empty() {
            self.tasks.remove(&id);
            return out;
        }
        if task.source.as_deref() == Some(peer) {
            task.source = None;
            let someone_complete = task.peers.values().any(|p| p.done);
            if !someone_complete {
                // The most advanced peer still downloading takes over if no seed can.
                let fallback = task
                    .peers
                    .iter()
                    .filter(|(_, p)| !p.done)
                    .max_by_key(|(p, tp)| (tp.pieces.len(), std::cmp::Reverse((*p).clone())))
                    .map(|(p, _)| p.clone());
                if let Some(f) = fallback {
                    out.extend(self.choose_source(id, &f));
                }
            }
        }
        for c in tp.children {
            out.extend(self.plan(id, &c));
        }
        out
    }

    fn drop_edge(&mut self, id: TaskId, parent: &str, child: &str) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        let removed = task
            .peers
            .get_mut(child)
            .is_some_and(|c| c.parents.remove(parent));
        if let Some(p) = task.peers.get_mut(parent) {
            p.children.remove(child);
        }
        if removed {
            if let Some(h) = self.hosts.get_mut(parent) {
                h.children = h.children.saturating_sub(1);
            }
        }
    }

    /// Every peer reachable from `from` along child edges, `from` included.
    fn descendants(task: &Task, from: &str) -> HashSet<PeerId> {
        let mut seen = HashSet::new();
        let mut queue = VecDeque::from([from.to_string()]);
        while let Some(p) = queue.pop_front() {
            if !seen.insert(p.clone()) {
                continue;
            }
            if let Some(tp) = task.peers.get(&p) {
                queue.extend(tp.children.iter().cloned());
            }
        }
        seen
    }

    /// Phase 1 for one child: tops its candidate parents up to the target.
    fn plan(&mut self, id: TaskId, child: &str) -> Vec<Outbound> {
        let want = self.config.candidate_parents;
        let Some(task) = self.tasks.get(&id) else {
            return Vec::new();
        };
        let Some(ctp) = task.peers.get(child) else {
            return Vec::new();
        };
        if ctp.done || ctp.parents.len() >= want || task.source.as_deref() == Some(child) {
            return Vec::new();
        }
        let Some(chost) = self.hosts.get(child) else {
            return Vec::new();
        };
        let descendants = if self.config.acyclic {
            Self::descendants(task, child)
        } else {
            HashSet::from([child.to_string()])
        };
        let piece_count = task.piece_count().unwrap_or(0).max(1) as f64;
        let n = task.eligible.len();
        let start = small_hash(child) % n.max(1);
        let mut scored: Vec<(f64, &PeerId)> = Vec::new();
        for i in 0..n.min(self.config.max_scanned) {
            if scored.len() >= self.config.max_evaluated {
                break;
            }
            let p = &task.eligible[(start + i) % n];
            let Some(ptp) = task.peers.get(p) else {
                continue;
            };
            let Some(phost) = self.hosts.get(p) else {
                continue;
            };
            let is_source = task.source.as_deref() == Some(p.as_str());
            let slots = phost.info.upload_slots.max(1);
            if descendants.contains(p)
                || ctp.parents.contains(p)
                || ctp.blocked.contains(p)
                || phost.info.hostname == chost.info.hostname
                || (ptp.pieces.is_empty() && !is_source)
                || phost.children >= slots
            {
                continue;
            }
            let free = 1.0 - phost.children as f64 / slots as f64;
            let live = 1.0 - (phost.active_uploads as f64 / slots as f64).min(1.0);
            let progress = if ptp.done {
                1.0
            } else {
                ptp.pieces.len() as f64 / piece_count
            };
            let same_zone = !chost.info.zone.is_empty() && phost.info.zone == chost.info.zone;
            let same_rack =
                same_zone && !chost.info.rack.is_empty() && phost.info.rack == chost.info.rack;
            let score = 0.45 * free
                + 0.1 * live
                + 0.2 * progress.min(1.0)
                + 0.15 * same_zone as u8 as f64
                + 0.05 * same_rack as u8 as f64
                + 0.05 * phost.info.seed as u8 as f64;
            scored.push((score, p));
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        let chosen: Vec<PeerId> = scored
            .into_iter()
            .take(want - ctp.parents.len())
            .map(|(_, p)| p.clone())
            .collect();
        if chosen.is_empty() {
            return Vec::new();
        }
        let mut parents = Vec::with_capacity(chosen.len());
        for p in &chosen {
            let task = self.tasks.get_mut(&id).expect("task exists");
            task.peers
                .get_mut(child)
                .expect("child")
                .parents
                .insert(p.clone());
            let ptp = task.peers.get_mut(p).expect("parent");
            ptp.children.insert(child.to_string());
            let pieces = ptp
                .pieces
                .iter()
                .filter_map(|n| {
                    task.digests.get(n).map(|d| pb::Piece {
                        num: *n,
                        digest: d.to_vec(),
                    })
                })
                .collect();
            let host = self.hosts.get_mut(p).expect("parent host");
            host.children += 1;
            let child_zone = &self.hosts[child].info.zone;
            let host = &self.hosts[p];
            parents.push(pb::Parent {
                peer_id: p.clone(),
                addr: host.info.piece_addr.clone(),
                seed: host.info.seed,
                pieces,
                remote: !child_zone.is_empty() && host.info.zone != *child_zone,
                rdma: host.info.rdma,
            });
        }
        self.stats.parents_assigned += parents.len() as u64;
        vec![msg(
            child,
            SchedMsg::Parents(pb::Parents {
                task_id: id.to_hex(),
                parents,
            }),
        )]
    }
}

#[cfg(test)]
mod tests;
