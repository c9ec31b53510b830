//! The scheduling state machine.
//!
//! Phase 1 of scheduling happens here: for each child, filter the peers of a
//! task (has pieces or is the task's source, not itself, not on the same
//! host unless it is the task's source, not blocklisted, upload capacity
//! left, and, in DAG mode, not a descendant), rank them by load, progress
//! and topology, and hand the child the top few. Phase 2 (which parent
//! serves which piece) is the child's, by live load.
//!
//! **Who fetches from the origin is decided here**, never by a peer alone:
//! one seed per task (by consistent hashing), and beyond it at most
//! [`Config::max_back_to_source`] peers of a task at once — a stalled peer
//! that asks ([`PeerEvent::SourceRequest`]) gets other parents if there
//! are any, else a grant if the budget has room, else nothing (it asks
//! again later). Peers that fetch from an origin share its byte-rate
//! budget ([`Config::origin_rate_limits`]).
//!
//! Everything is plain data: [`Core::hello`], [`Core::handle`] and
//! [`Core::disconnect`] take what a peer said and the current time, and
//! return what to send to whom. No clock, no sockets, no randomness:
//! identical inputs give identical outputs, so a simulator can drive 10,000
//! peers deterministically.

use crate::config::Config;
use crate::cyclic::cyclic_range;
use crate::events::{HostInfo, Outbound, ParentEntry, PeerEvent, SourceReason, ToPeer};
use crate::graph::Graph;
use crate::origin_budget::{origin_of, OriginBudgets};
use crate::seed_ring::SeedRing;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};
use weightcast_types::piece::{PieceDigest, PieceLayout};
use weightcast_types::{PeerId, TaskId};

/// Counters for `/metrics` and for simulations.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub seeds_triggered: u64,
    /// Peers sent to the origin, by any reason.
    pub back_to_source: u64,
    /// Stalled peers that asked to go to the origin.
    pub source_requests: u64,
    /// Of those, granted within the budget.
    pub source_grants: u64,
    /// Of those, refused because the task's budget was full.
    pub source_refusals: u64,
    pub parents_assigned: u64,
    pub digest_conflicts: u64,
    pub piece_failures: u64,
}

/// A connected peer: what it said in hello and what it does now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSummary {
    pub info: HostInfo,
    /// Uploads it reported running.
    pub active_uploads: u32,
    /// Tasks it holds or fetches.
    pub tasks: u64,
}

struct Host {
    info: HostInfo,
    active_uploads: u32,
    tasks: BTreeSet<TaskId>,
    /// Tasks whose `open` set a plan dropped this host from (it was full):
    /// where it opens again when a slot frees. Only these, not all its
    /// tasks: a seed in 50,000 tasks that is never full costs nothing.
    closed_in: BTreeSet<TaskId>,
}

#[derive(Default)]
struct TaskPeer {
    /// Pieces it holds whose digest matches the task's trusted one.
    pieces: BTreeSet<u32>,
    /// Pieces it says it holds whose digest nobody trusted has reported
    /// yet (see [`Core::trusted`]): it is not offered as their parent until
    /// the source's digest confirms them.
    claims: BTreeMap<u32, PieceDigest>,
    /// The content length it reported, not yet confirmed by the source.
    claimed_length: Option<u64>,
    /// Parents this peer reported, with when it last did.
    blocked: BTreeMap<PeerId, Instant>,
    done: bool,
    /// It finished as the task's source or with a back-to-source grant:
    /// what it holds came from the origin (the rollout view's split).
    fetched_from_origin: bool,
    /// How long after the task's first registration it finished (`None`
    /// until then, and for a peer that arrived with the whole task).
    done_after: Option<Duration>,
}

struct Task {
    url: String,
    /// When the first peer registered it: completion times count from here.
    started: Instant,
    /// The whole file's sha256, for a task keyed by it (checked against
    /// the task id).
    digest: Option<PieceDigest>,
    content_length: Option<u64>,
    digests: BTreeMap<u32, PieceDigest>,
    /// The peer that fetches this task from the origin for the swarm: its
    /// seed, or a peer standing in for one.
    source: Option<PeerId>,
    /// Stalled peers granted the origin, fetching from it now.
    granted: BTreeSet<PeerId>,
    peers: BTreeMap<PeerId, TaskPeer>,
    /// Peers in arrival order.
    order: Vec<PeerId>,
    /// Each peer's position in `order`.
    order_at: HashMap<PeerId, usize>,
    /// Positions in `order` of the peers that may be short of parents:
    /// every peer that is (not done, fewer than
    /// [`Config::candidate_parents`]) is here; one that is not any more
    /// lingers until the first-piece top-up walks past it and drops it.
    short: BTreeSet<usize>,
    /// Peers that can be parents (hold a piece, or are the source), in the
    /// order they became so: phase 1 walks a bounded window of this.
    eligible: Vec<PeerId>,
    /// Each eligible peer's position in `eligible`.
    eligible_at: HashMap<PeerId, usize>,
    /// Positions in `eligible` of the peers that may have a free upload
    /// slot: every one that has is here; a full one lingers until a plan
    /// walks past it and drops it, and comes back when a slot frees
    /// ([`Core::slots_freed`]). Under load most parents are full, and
    /// phase 1 walks only these.
    open: BTreeSet<usize>,
    /// Children a plan left without any parent (every parent it could see
    /// was full): they get the next free slot of the task
    /// ([`Core::feed_starving`]) instead of waiting for a replan that
    /// happens to reach them. Entries that got parents since linger until
    /// looked at.
    starving: BTreeSet<PeerId>,
}

impl Task {
    fn new(url: String, started: Instant) -> Self {
        Task {
            url,
            started,
            digest: None,
            content_length: None,
            digests: BTreeMap::new(),
            source: None,
            granted: BTreeSet::new(),
            peers: BTreeMap::new(),
            order: Vec::new(),
            order_at: HashMap::new(),
            short: BTreeSet::new(),
            eligible: Vec::new(),
            eligible_at: HashMap::new(),
            open: BTreeSet::new(),
            starving: BTreeSet::new(),
        }
    }

    fn piece_count(&self) -> Option<u32> {
        self.content_length
            .map(|l| PieceLayout::for_length(l).piece_count())
    }

    fn is_source(&self, peer: &str) -> bool {
        self.source.as_deref() == Some(peer)
    }

    /// Whether `peer` fetches this task from its origin now.
    fn fetches_from_origin(&self, peer: &str) -> bool {
        (self.is_source(peer) || self.granted.contains(peer))
            && self.peers.get(peer).is_some_and(|p| !p.done)
    }

    fn someone_complete(&self) -> bool {
        self.peers.values().any(|p| p.done)
    }

    /// `p` holds or claims every piece, by the task's length or, while
    /// that is unknown, the length it claims.
    fn covers_whole(&self, p: &TaskPeer) -> bool {
        let count = self.piece_count().or_else(|| {
            p.claimed_length
                .map(|l| PieceLayout::for_length(l).piece_count())
        });
        count.is_some_and(|n| n > 0 && (p.pieces.len() + p.claims.len()) as u64 >= n as u64)
    }

    /// The peer to stand in as the source when no seed can: the one that
    /// holds or claims the most pieces (`prefer` on ties), and how much.
    fn most_advanced(&self, prefer: &str) -> Option<(PeerId, Advance)> {
        let held = |tp: &TaskPeer| tp.pieces.len() + tp.claims.len();
        let (p, tp) = self.peers.iter().max_by_key(|(p, tp)| {
            (
                tp.done && held(tp) > 0,
                held(tp),
                p.as_str() == prefer,
                std::cmp::Reverse((*p).clone()),
            )
        })?;
        let advance = match (tp.done, held(tp)) {
            (_, 0) => Advance::Nothing,
            (true, _) => Advance::Whole,
            (false, _) => Advance::Partial,
        };
        Some((p.clone(), advance))
    }

    fn make_eligible(&mut self, peer: &str) {
        if !self.eligible_at.contains_key(peer) {
            let at = self.eligible.len();
            self.eligible.push(peer.to_string());
            self.eligible_at.insert(peer.to_string(), at);
            self.open.insert(at);
        }
    }

    /// A peer joins the task's arrival order (short of parents: it has none).
    fn add_to_order(&mut self, peer: &str) {
        if !self.order_at.contains_key(peer) {
            let at = self.order.len();
            self.order.push(peer.to_string());
            self.order_at.insert(peer.to_string(), at);
            self.short.insert(at);
        }
    }

    /// `peer` may be short of parents again (it lost one).
    fn maybe_short(&mut self, peer: &str) {
        if let Some(&at) = self.order_at.get(peer) {
            self.short.insert(at);
        }
    }
}

/// How much of a task a peer holds or claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Advance {
    Nothing,
    Partial,
    Whole,
}

/// The scheduler's whole state: hosts, tasks, the peer graph, the seed ring.
#[derive(Default)]
pub struct Core {
    config: Config,
    hosts: BTreeMap<PeerId, Host>,
    tasks: BTreeMap<TaskId, Task>,
    graph: Graph,
    seeds: SeedRing,
    budgets: OriginBudgets,
    /// The first hello: when this scheduler started, as far as its peers
    /// can tell (see [`Config::seed_grace`]).
    started: Option<Instant>,
    /// Preheats and evictions in progress (see `cache_jobs`).
    jobs: cache_jobs::CacheJobs,
    /// Sum of every host's `active_uploads`, kept as they change: the
    /// service reads it after every event, and summing 10,000 hosts there
    /// made each event cost O(peers).
    upload_total: u64,
    pub stats: Stats,
}

fn msg(to: &str, task: TaskId, msg: ToPeer) -> Outbound {
    Outbound {
        to: to.to_string(),
        task,
        msg,
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
            budgets: OriginBudgets::new(&config.origin_rate_limits),
            config,
            ..Default::default()
        }
    }

    /// Peers of `task` fetching it from the origin now besides its seed:
    /// what [`Config::max_back_to_source`] bounds.
    pub fn origin_fetchers(&self, task: &TaskId) -> usize {
        self.tasks.get(task).map_or(0, |t| {
            let stand_in = t
                .source
                .as_ref()
                .is_some_and(|s| t.fetches_from_origin(s) && !self.is_seed(s));
            t.granted
                .iter()
                .filter(|p| t.fetches_from_origin(p))
                .count()
                + stand_in as usize
        })
    }

    fn is_seed(&self, peer: &str) -> bool {
        self.hosts.get(peer).is_some_and(|h| h.info.seed)
    }

    /// The budget shares to send after the set of peers fetching from the
    /// origin of `id`'s URL changed.
    fn rebalance_origin(&mut self, id: TaskId) -> Vec<Outbound> {
        match self.tasks.get(&id).map(|t| t.url.clone()) {
            Some(url) => self.rebalance_origin_of(&url, id),
            None => Vec::new(),
        }
    }

    /// [`Core::rebalance_origin`] for the origin of `url` (`id`: the task
    /// whose change it follows, which may be gone).
    fn rebalance_origin_of(&mut self, url: &str, id: TaskId) -> Vec<Outbound> {
        let Some(origin) = origin_of(url) else {
            return Vec::new();
        };
        if self.budgets.limit(&origin).is_none() {
            return Vec::new();
        }
        let fetchers: BTreeSet<PeerId> = self
            .tasks
            .values()
            .filter(|t| origin_of(&t.url).is_some_and(|o| o.key == origin.key))
            .flat_map(|t| {
                t.peers
                    .keys()
                    .filter(|p| t.fetches_from_origin(p))
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .filter(|p| self.hosts.contains_key(p))
            .collect();
        self.budgets
            .rebalance(&origin, &fetchers)
            .into_iter()
            .map(|(peer, bytes_per_second)| {
                msg(
                    &peer,
                    id,
                    ToPeer::OriginBudget {
                        origin: origin.key.clone(),
                        bytes_per_second,
                    },
                )
            })
            .collect()
    }

    /// Whether what `peer` says about the bytes of `id` (its length, its
    /// piece digests) is believed: the task's source and the peers granted
    /// the origin fetch those bytes from the origin themselves, and a seed
    /// peer only ever fetches from an origin. Anyone else's report is a
    /// claim until a trusted digest confirms it, so a peer that lies about
    /// a task first cannot make the swarm serve its bytes.
    fn trusted(&self, id: &TaskId, peer: &str) -> bool {
        self.hosts.get(peer).is_some_and(|h| h.info.seed)
            || self
                .tasks
                .get(id)
                .is_some_and(|t| t.is_source(peer) || t.granted.contains(peer))
    }

    /// `peer` reports piece `num` of `id` with `digest` (a register's
    /// `have`, or a piece it verified): recorded as held when it matches
    /// the trusted digest, as a claim when none is known and `peer` is not
    /// trusted, and as the task's digest when `peer` is trusted (which
    /// confirms the matching claims of others).
    fn report_piece(
        &mut self,
        peer: &str,
        id: TaskId,
        num: u32,
        digest: PieceDigest,
        now: Instant,
    ) -> Vec<Outbound> {
        let trusted = self.trusted(&id, peer);
        let Some(task) = self.tasks.get_mut(&id) else {
            return Vec::new();
        };
        if task.piece_count().is_some_and(|n| num >= n) {
            self.stats.digest_conflicts += 1;
            return Vec::new();
        }
        let mut confirmed = Vec::new();
        match task.digests.get(&num) {
            Some(known) if *known != digest => {
                // Only the trusted digest counts; a peer that disagrees is
                // not offered as a parent for this piece.
                self.stats.digest_conflicts += 1;
                return Vec::new();
            }
            Some(_) => {}
            None if trusted => {
                task.digests.insert(num, digest);
                for (p, tp) in task.peers.iter_mut() {
                    match tp.claims.remove(&num) {
                        Some(c) if c == digest => confirmed.push(p.clone()),
                        Some(_) => self.stats.digest_conflicts += 1,
                        None => {}
                    }
                }
            }
            None => {
                if let Some(tp) = task.peers.get_mut(peer) {
                    tp.claims.insert(num, digest);
                }
                return Vec::new();
            }
        }
        let mut out = self.gained(peer, id, num, digest, now);
        for p in confirmed {
            if p != peer {
                out.extend(self.gained(&p, id, num, digest, now));
            }
        }
        out
    }

    /// The task's content length is known now (from a trusted peer): every
    /// other peer of the task is told.
    fn learn_length(&mut self, from: &str, id: TaskId, content_length: u64) -> Vec<Outbound> {
        let Some(task) = self.tasks.get_mut(&id) else {
            return Vec::new();
        };
        task.content_length = Some(content_length);
        task.peers
            .keys()
            .filter(|p| p.as_str() != from)
            .map(|p| msg(p, id, ToPeer::Meta { content_length }))
            .collect()
    }

    /// `peer` became the task's source: what it claimed (from a resumed or
    /// finished download) is now what the task is.
    fn promote_claims(&mut self, peer: &str, id: TaskId, now: Instant) -> Vec<Outbound> {
        let Some(tp) = self.tasks.get_mut(&id).and_then(|t| t.peers.get_mut(peer)) else {
            return Vec::new();
        };
        let claims = std::mem::take(&mut tp.claims);
        let length = tp.claimed_length.take();
        let mut out = Vec::new();
        if let Some(l) = length.filter(|&l| l > 0) {
            if self
                .tasks
                .get(&id)
                .is_some_and(|t| t.content_length.is_none())
            {
                out.extend(self.learn_length(peer, id, l));
            }
        }
        for (num, digest) in claims {
            out.extend(self.report_piece(peer, id, num, digest, now));
        }
        out
    }

    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// Sum of active uploads peers reported.
    pub fn upload_load(&self) -> u64 {
        self.upload_total
    }

    /// Every connected peer as an operator lists them (the manager's
    /// console), in peer id order.
    pub fn peers(&self) -> Vec<PeerSummary> {
        let mut out: Vec<PeerSummary> = self
            .hosts
            .values()
            .map(|h| PeerSummary {
                info: h.info.clone(),
                active_uploads: h.active_uploads,
                tasks: h.tasks.len() as u64,
            })
            .collect();
        out.sort_by(|a, b| a.info.peer_id.cmp(&b.info.peer_id));
        out
    }

    /// A task's length, once a peer has learned it.
    pub fn task_length(&self, task: &TaskId) -> Option<u64> {
        self.tasks.get(task).and_then(|t| t.content_length)
    }

    /// Parents currently planned for `child` on `task` (for tests and simulators).
    pub fn parents_of(&self, task: &TaskId, child: &str) -> Vec<PeerId> {
        self.graph.parents(*task, child).iter().cloned().collect()
    }

    /// A peer opened its stream.
    pub fn hello(&mut self, info: HostInfo, now: Instant) -> Vec<Outbound> {
        let id = info.peer_id.clone();
        self.started.get_or_insert(now);
        let mut out = Vec::new();
        if self.hosts.contains_key(&id) {
            // A reconnect with the same id: start from a clean slate.
            out = self.disconnect(&id, now);
        }
        let seed = info.seed;
        if seed {
            self.seeds.add(&id);
        }
        self.hosts.insert(
            id,
            Host {
                info,
                active_uploads: 0,
                tasks: BTreeSet::new(),
                closed_in: BTreeSet::new(),
            },
        );
        if seed {
            out.extend(self.adopt_orphans(now));
        }
        out
    }

    /// Tasks whose peers wait without a source (it left, and no seed or
    /// budget could replace it): a seed that connects now takes them.
    fn adopt_orphans(&mut self, now: Instant) -> Vec<Outbound> {
        let orphans: Vec<(TaskId, PeerId)> = self
            .tasks
            .iter()
            .filter(|(_, t)| {
                !t.someone_complete()
                    && t.source
                        .as_ref()
                        .is_none_or(|s| !self.hosts.contains_key(s))
            })
            .filter_map(|(id, t)| Some((*id, t.order.first()?.clone())))
            .collect();
        let mut out = Vec::new();
        for (id, waiting) in orphans {
            out.extend(self.choose_source(id, &waiting, SourceReason::NoSeed, now));
        }
        out
    }

    /// A peer's stream ended: it leaves every task, its children are replanned.
    pub fn disconnect(&mut self, peer: &str, now: Instant) -> Vec<Outbound> {
        let Some(host) = self.hosts.get(peer) else {
            return Vec::new();
        };
        let tasks: Vec<TaskId> = host.tasks.iter().copied().collect();
        if host.info.seed {
            self.seeds.remove(peer);
        }
        let mut out = Vec::new();
        for t in tasks {
            out.extend(self.leave_task(peer, t, now));
        }
        if let Some(gone) = self.hosts.remove(peer) {
            self.upload_total = self.upload_total.saturating_sub(gone.active_uploads as u64);
        }
        self.budgets.forget(peer);
        self.jobs_peer_gone(peer);
        self.jobs_rewrite(out)
    }

    /// Anything a connected peer says after `hello`.
    pub fn handle(&mut self, from: &str, event: PeerEvent, now: Instant) -> Vec<Outbound> {
        if !self.hosts.contains_key(from) {
            return Vec::new();
        }
        let seen = cache_jobs::Seen::of(&event);
        let out = match event {
            PeerEvent::Register {
                task,
                url,
                have,
                content_length,
                digest,
            } => {
                // A digest counts only when the task id is that digest's:
                // nobody can pin a task to bytes it is not named by.
                let digest = digest.filter(|d| TaskId::from_sha256(d) == task);
                let t = self
                    .tasks
                    .entry(task)
                    .or_insert_with(|| Task::new(url, now));
                if let Some(d) = digest {
                    t.digest.get_or_insert(d);
                }
                self.register(from, task, &have, content_length, now)
            }
            PeerEvent::Meta {
                task,
                content_length,
            } => self.meta(from, task, content_length),
            PeerEvent::PieceDone { task, num, digest } => {
                self.piece_done(from, task, num, digest, now)
            }
            PeerEvent::PieceFailed { task, parent, .. } => {
                self.piece_failed(from, task, &parent, now)
            }
            PeerEvent::TaskDone { task } => self.task_done(from, task, now),
            PeerEvent::SourceRequest { task } => self.source_request(from, task, now),
            PeerEvent::TaskLeft { task } => self.leave_task(from, task, now),
            PeerEvent::Load { active_uploads } => {
                if let Some(h) = self.hosts.get_mut(from) {
                    self.upload_total = self.upload_total.saturating_sub(h.active_uploads as u64)
                        + active_uploads as u64;
                    h.active_uploads = active_uploads;
                }
                Vec::new()
            }
            // Only cache jobs listen to these.
            PeerEvent::TaskFailed { .. } | PeerEvent::CacheDeleted { .. } => Vec::new(),
        };
        self.jobs_after(from, seen, out)
    }

    /// `peer` joins task `id` (its entry made by the caller).
    fn register(
        &mut self,
        peer: &str,
        id: TaskId,
        have: &[(u32, PieceDigest)],
        content_length: Option<u64>,
        now: Instant,
    ) -> Vec<Outbound> {
        let mut out = Vec::new();
        let Some(task) = self.tasks.get_mut(&id) else {
            return out;
        };
        task.add_to_order(peer);
        task.peers.entry(peer.to_string()).or_default();
        if let Some(h) = self.hosts.get_mut(peer) {
            h.tasks.insert(id);
        }
        let content_length = content_length.filter(|&l| l > 0);
        if self.trusted(&id, peer) {
            if let Some(l) = content_length {
                if self
                    .tasks
                    .get(&id)
                    .is_some_and(|t| t.content_length.is_none())
                {
                    out.extend(self.learn_length(peer, id, l));
                }
            }
        } else if let Some(tp) = self.tasks.get_mut(&id).and_then(|t| t.peers.get_mut(peer)) {
            tp.claimed_length = content_length;
        }
        for &(num, d) in have {
            out.extend(self.report_piece(peer, id, num, d, now));
        }
        let Some(task) = self.tasks.get_mut(&id) else {
            return out;
        };
        if let Some(content_length) = task.content_length {
            out.push(msg(peer, id, ToPeer::Meta { content_length }));
        }
        // A peer that registers with the whole task (a finished task
        // announced again after a restart of either side) is done; it
        // serves once the trusted digests confirm its pieces.
        let whole = task.peers.get(peer).is_some_and(|tp| task.covers_whole(tp));
        // ... and one whose pieces nobody trusted confirmed yet needs a
        // source all the same: the seed, or itself with no seed around.
        let unconfirmed = task.peers.get(peer).is_some_and(|tp| !tp.claims.is_empty());
        if whole {
            if let Some(tp) = task.peers.get_mut(peer) {
                tp.done = true;
            }
        }
        let source_alive = task
            .source
            .as_ref()
            .is_some_and(|s| self.hosts.contains_key(s));
        let someone_complete = task.someone_complete();
        if whole {
            self.drop_parents(id, peer);
        }
        // With the whole task on some peer, nobody needs the origin: the
        // newcomer is served by the peers that hold it.
        if !source_alive && (!someone_complete || (whole && unconfirmed)) {
            out.extend(self.choose_source(id, peer, SourceReason::NoSeed, now));
        }
        if self.tasks.get(&id).is_some_and(|t| !t.is_source(peer)) {
            out.extend(self.plan(id, peer, now));
        }
        out
    }

    /// Picks who goes back to source for `id`: the seed the ring names, or,
    /// with no seed in the cluster, the peer `fallback` itself (`why` says
    /// what made it needed).
    fn choose_source(
        &mut self,
        id: TaskId,
        fallback: &str,
        why: SourceReason,
        now: Instant,
    ) -> Vec<Outbound> {
        let hosts = &self.hosts;
        let seed = self.seeds.pick(&id, |s| !hosts.contains_key(s)).cloned();
        let over_budget = self.origin_fetchers(&id) >= self.config.max_back_to_source;
        let in_grace = self
            .started
            .is_some_and(|t| now.saturating_duration_since(t) < self.config.seed_grace);
        let Some(task) = self.tasks.get_mut(&id) else {
            return Vec::new();
        };
        // Without a seed, the peer that holds (or claims) the most of the
        // task is its source: one that holds all of it costs the origin
        // nothing, and one that holds part fetches only the rest.
        let best = match &seed {
            Some(_) => None,
            None => task.most_advanced(fallback),
        };
        let fallback = best.as_ref().map_or(fallback, |(p, _)| p.as_str());
        if seed.is_none() {
            if let Some((_, Advance::Partial)) = best {
                if in_grace && why == SourceReason::NoSeed {
                    // Peers with pieces registering at a scheduler that just
                    // started: it restarted, and the seed may be a moment
                    // from reconnecting. It takes the task then
                    // (`adopt_orphans`), or a stalled peer asks again.
                    task.source = None;
                    return Vec::new();
                }
            }
        }
        let mut out: Vec<Outbound> = match seed {
            Some(seed) if seed != fallback => {
                task.source = Some(seed.clone());
                task.add_to_order(&seed);
                task.peers.entry(seed.clone()).or_default();
                task.make_eligible(&seed);
                if let Some(h) = self.hosts.get_mut(&seed) {
                    h.tasks.insert(id);
                }
                self.stats.seeds_triggered += 1;
                let url = task.url.clone();
                let digest = task.digest;
                vec![msg(&seed, id, ToPeer::SeedTask { url, digest })]
            }
            None if over_budget => {
                // No seed, and the task's back-to-source budget is spent:
                // nobody goes; a seed that connects later takes the task.
                self.stats.source_refusals += 1;
                task.source = None;
                return Vec::new();
            }
            seed => {
                task.source = Some(fallback.to_string());
                task.granted.remove(fallback);
                task.make_eligible(fallback);
                // The new source needs no parents.
                self.drop_parents(id, fallback);
                self.stats.back_to_source += 1;
                let reason = match seed {
                    Some(_) => SourceReason::IsTheSeed,
                    None => why,
                };
                let mut out = vec![msg(fallback, id, ToPeer::BackToSource { reason })];
                out.extend(self.promote_claims(fallback, id, now));
                out
            }
        };
        // The budget share goes first, so the new fetcher is paced from its
        // first byte.
        let mut first = self.rebalance_origin(id);
        first.append(&mut out);
        first
    }

    /// A stalled peer asks to fetch from the origin: other parents if phase
    /// 1 finds any, else a grant within the task's budget, else nothing.
    fn source_request(&mut self, child: &str, id: TaskId, now: Instant) -> Vec<Outbound> {
        self.stats.source_requests += 1;
        let Some(task) = self.tasks.get(&id) else {
            return Vec::new();
        };
        if !task.peers.contains_key(child) || task.fetches_from_origin(child) {
            return Vec::new();
        }
        let source_alive = task
            .source
            .as_ref()
            .is_some_and(|s| self.hosts.contains_key(s));
        if !source_alive && !task.someone_complete() {
            return self.choose_source(id, child, SourceReason::NoSeed, now);
        }
        let replanned = self.plan(id, child, now);
        if !replanned.is_empty() {
            return replanned;
        }
        if self.origin_fetchers(&id) >= self.config.max_back_to_source {
            self.stats.source_refusals += 1;
            return Vec::new();
        }
        let Some(task) = self.tasks.get_mut(&id) else {
            return Vec::new();
        };
        task.granted.insert(child.to_string());
        task.make_eligible(child);
        self.stats.source_grants += 1;
        self.stats.back_to_source += 1;
        let mut out = self.rebalance_origin(id);
        out.push(msg(
            child,
            id,
            ToPeer::BackToSource {
                reason: SourceReason::Granted,
            },
        ));
        out
    }

    /// The task's length, as its source learned it from the origin. From
    /// anyone else it is only a claim.
    fn meta(&mut self, peer: &str, id: TaskId, content_length: u64) -> Vec<Outbound> {
        let trusted = self.trusted(&id, peer);
        let Some(task) = self.tasks.get_mut(&id) else {
            return Vec::new();
        };
        if !trusted {
            if let Some(tp) = task.peers.get_mut(peer) {
                tp.claimed_length = Some(content_length);
            }
            return Vec::new();
        }
        if task.content_length.is_some() && !task.is_source(peer) {
            return Vec::new();
        }
        self.learn_length(peer, id, content_length)
    }

    fn piece_done(
        &mut self,
        peer: &str,
        id: TaskId,
        num: u32,
        digest: PieceDigest,
        now: Instant,
    ) -> Vec<Outbound> {
        self.report_piece(peer, id, num, digest, now)
    }

    /// `peer` holds piece `num` (its digest confirmed): its children hear of
    /// it, and a peer that became a parent just now tops up the children
    /// short of parents.
    fn gained(
        &mut self,
        peer: &str,
        id: TaskId,
        num: u32,
        digest: PieceDigest,
        now: Instant,
    ) -> Vec<Outbound> {
        let Some(task) = self.tasks.get_mut(&id) else {
            return Vec::new();
        };
        let Some(tp) = task.peers.get_mut(peer) else {
            return Vec::new();
        };
        if !tp.pieces.insert(num) {
            return Vec::new();
        }
        let first_piece = tp.pieces.len() == 1;
        if first_piece {
            task.make_eligible(peer);
        }
        let mut out: Vec<Outbound> = self
            .graph
            .children(id, peer)
            .iter()
            .map(|c| {
                msg(
                    c,
                    id,
                    ToPeer::Available {
                        parent: peer.to_string(),
                        num,
                        digest,
                    },
                )
            })
            .collect();
        if first_piece {
            // A new candidate parent: top up children short of parents. It can
            // take at most `upload_slots` of them, so a bounded number of
            // replans (walking from a point that rotates with the parent)
            // finds them without touching every peer of a 10,000-peer task.
            let budget = 2 * self
                .hosts
                .get(peer)
                .map_or(1, |h| h.info.upload_slots.max(1)) as usize;
            let start = small_hash(peer);
            let short = self.short_children(id, peer, start, budget, usize::MAX);
            for child in short {
                out.extend(self.plan(id, &child, now));
            }
            // Slots of the new parent that no short child in the walk could
            // see (it lies outside their scanned windows at 10,000 peers)
            // go to children with no parent at all.
            out.extend(self.feed_starving(id, now));
        }
        out
    }

    fn piece_failed(
        &mut self,
        child: &str,
        id: TaskId,
        parent: &str,
        now: Instant,
    ) -> Vec<Outbound> {
        self.stats.piece_failures += 1;
        let Some(task) = self.tasks.get_mut(&id) else {
            return Vec::new();
        };
        // The source is never blocklisted: without it nothing new arrives.
        if task.is_source(parent) {
            return Vec::new();
        }
        if let Some(tp) = task.peers.get_mut(child) {
            let block_for = self.config.block_for;
            tp.blocked
                .retain(|_, since| now.saturating_duration_since(*since) < block_for);
            tp.blocked.insert(parent.to_string(), now);
        }
        task.maybe_short(child);
        self.graph.remove_edge(id, parent, child);
        self.slots_freed(parent);
        let mut out = self.plan(id, child, now);
        out.extend(self.feed_starving(id, now));
        out
    }

    fn task_done(&mut self, peer: &str, id: TaskId, now: Instant) -> Vec<Outbound> {
        let Some(task) = self.tasks.get_mut(&id) else {
            return Vec::new();
        };
        if !task.peers.contains_key(peer) {
            return Vec::new();
        }
        let fetched = task.granted.remove(peer) || task.is_source(peer);
        let started = task.started;
        if let Some(tp) = task.peers.get_mut(peer) {
            if !tp.done {
                tp.done_after = Some(now.saturating_duration_since(started));
            }
            tp.done = true;
            tp.fetched_from_origin |= fetched;
        }
        let freed = self.drop_parents(id, peer);
        let mut out = if fetched {
            self.rebalance_origin(id)
        } else {
            Vec::new()
        };
        if !freed.is_empty() {
            out.extend(self.feed_starving(id, now));
            for p in &freed {
                out.extend(self.top_up_from(id, p, now));
            }
        }
        out
    }

    /// `parent` has slots free (a child of it finished): they go to
    /// children short of parents. Without this a child that got one or two
    /// parents while the swarm filled is never planned again once it
    /// empties, though every parent has room then: at 10,000 peers its
    /// window of candidates rarely holds the parent that freed, so the
    /// child itself is planned with `parent` as an extra candidate.
    fn top_up_from(&mut self, id: TaskId, parent: &str, now: Instant) -> Vec<Outbound> {
        /// Short-set entries looked at per free slot: stale ones (children
        /// that got parents since, or finished) are dropped on the way.
        const WALK_PER_SLOT: usize = 4;
        let Some(slots) = self.hosts.get(parent).map(|h| h.info.upload_slots.max(1)) else {
            return Vec::new();
        };
        let free = slots.saturating_sub(self.graph.child_count(parent)) as usize;
        let Some(&extra) = self.tasks.get(&id).and_then(|t| t.eligible_at.get(parent)) else {
            return Vec::new();
        };
        let n = self.tasks.get(&id).map_or(0, |t| t.order.len());
        let start = small_hash(parent).wrapping_add(n);
        let short = self.short_children(id, parent, start, free, free * WALK_PER_SLOT);
        let mut out = Vec::new();
        for child in short {
            if self.graph.child_count(parent) >= slots {
                break;
            }
            out.extend(self.plan_with(id, &child, Some(extra), now));
        }
        out
    }

    /// Up to `budget` children of `id` short of parents that `parent` does
    /// not serve yet, walking at most `walk` entries of the task's `short`
    /// set from position `start` (mod its length) in arrival order; the
    /// entries found stale (children that got their parents, or finished)
    /// are dropped on the way.
    fn short_children(
        &mut self,
        id: TaskId,
        parent: &str,
        start: usize,
        budget: usize,
        walk: usize,
    ) -> Vec<PeerId> {
        let want = self.config.candidate_parents;
        let Some(task) = self.tasks.get_mut(&id) else {
            return Vec::new();
        };
        let n = task.order.len();
        let mut short = Vec::new();
        let mut stale = Vec::new();
        for at in cyclic_range(&task.short, n, start % n.max(1), n).take(walk) {
            if short.len() >= budget {
                break;
            }
            let c = &task.order[at];
            if c.as_str() == parent || task.is_source(c) {
                continue;
            }
            let parents = self.graph.parents(id, c);
            match task.peers.get(c) {
                Some(tp) if !tp.done && parents.len() < want => {
                    if !parents.contains(parent) {
                        short.push(c.clone());
                    }
                }
                _ => stale.push(at),
            }
        }
        for at in stale {
            task.short.remove(&at);
        }
        short
    }

    /// Drops every parent of `child` (done, or the source now); returns
    /// them (each has a slot free now).
    fn drop_parents(&mut self, id: TaskId, child: &str) -> BTreeSet<PeerId> {
        let parents = self.graph.remove_parents(id, child);
        for p in &parents {
            self.slots_freed(p);
        }
        parents
    }

    /// `host` has one more free upload slot: it is open again in every
    /// task it can serve.
    fn slots_freed(&mut self, host: &str) {
        let Some(h) = self.hosts.get_mut(host) else {
            return;
        };
        for id in std::mem::take(&mut h.closed_in) {
            if let Some(t) = self.tasks.get_mut(&id) {
                if let Some(&at) = t.eligible_at.get(host) {
                    t.open.insert(at);
                }
            }
        }
    }

    /// Gives the task's starving children (see [`Task::starving`]) the
    /// slots free now, in peer id order, until a plan finds nothing for a
    /// few of them in a row: a slot that frees must reach a child with no
    /// parent, not wait for a replan that happens to pass it.
    fn feed_starving(&mut self, id: TaskId, now: Instant) -> Vec<Outbound> {
        /// Plans that find nothing before the rest wait for the next free
        /// slot: the children left are most likely starved of the same
        /// (full) parents.
        const MISSES: usize = 4;
        let mut out = Vec::new();
        let mut misses = 0;
        let mut after: Option<PeerId> = None;
        while misses < MISSES {
            let Some(task) = self.tasks.get_mut(&id) else {
                break;
            };
            let next = {
                let mut stale = Vec::new();
                let mut found = None;
                let from = match &after {
                    Some(a) => std::ops::Bound::Excluded(a.clone()),
                    None => std::ops::Bound::Unbounded,
                };
                for c in task.starving.range((from, std::ops::Bound::Unbounded)) {
                    let starving = task.peers.get(c).is_some_and(|tp| !tp.done)
                        && !task.is_source(c)
                        && self.hosts.contains_key(c)
                        && self.graph.parents(id, c).is_empty();
                    if starving {
                        found = Some(c.clone());
                        break;
                    }
                    stale.push(c.clone());
                }
                for c in &stale {
                    task.starving.remove(c);
                }
                found
            };
            let Some(child) = next else {
                break;
            };
            let planned = self.plan(id, &child, now);
            if planned.is_empty() {
                misses += 1;
            }
            out.extend(planned);
            after = Some(child);
        }
        out
    }

    fn leave_task(&mut self, peer: &str, id: TaskId, now: Instant) -> Vec<Outbound> {
        let mut out = Vec::new();
        let Some(task) = self.tasks.get_mut(&id) else {
            return out;
        };
        if task.peers.remove(peer).is_none() {
            return out;
        }
        let was_fetching = task.granted.remove(peer) || task.is_source(peer);
        task.order.retain(|p| p != peer);
        task.eligible.retain(|p| p != peer);
        if let Some(h) = self.hosts.get_mut(peer) {
            h.tasks.remove(&id);
        }
        task.starving.remove(peer);
        let its_parents = self.graph.parents(id, peer).clone();
        let children = self.graph.remove_peer(id, peer);
        for c in &children {
            out.push(msg(
                c,
                id,
                ToPeer::ParentGone {
                    parent: peer.to_string(),
                },
            ));
        }
        if task.peers.is_empty() {
            let url = task.url.clone();
            self.tasks.remove(&id);
            if was_fetching {
                out.extend(self.rebalance_origin_of(&url, id));
            }
            return out;
        }
        self.reindex(id);
        // The peer's parents each serve one child fewer, and the peer
        // itself as many fewer as it had here, in its other tasks.
        for p in its_parents.iter().map(String::as_str).chain([peer]) {
            self.slots_freed(p);
        }
        let Some(task) = self.tasks.get(&id) else {
            return out;
        };
        if was_fetching && !task.is_source(peer) {
            out.extend(self.rebalance_origin(id));
        }
        let Some(task) = self.tasks.get_mut(&id) else {
            return out;
        };
        if task.is_source(peer) {
            task.source = None;
            if !task.someone_complete() {
                // The most advanced peer still downloading takes over if no seed can.
                let fallback = task
                    .peers
                    .iter()
                    .filter(|(_, p)| !p.done)
                    .max_by_key(|(p, tp)| (tp.pieces.len(), std::cmp::Reverse((*p).clone())))
                    .map(|(p, _)| p.clone());
                if let Some(f) = fallback {
                    out.extend(self.choose_source(id, &f, SourceReason::SourceLeft, now));
                } else {
                    out.extend(self.rebalance_origin(id));
                }
            } else {
                out.extend(self.rebalance_origin(id));
            }
        }
        for c in children {
            out.extend(self.plan(id, &c, now));
        }
        out.extend(self.feed_starving(id, now));
        out
    }

    /// Positions in `order` and `eligible` moved (a peer left): every index
    /// over them is made again from what the peers are now.
    fn reindex(&mut self, id: TaskId) {
        let want = self.config.candidate_parents;
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        let graph = &self.graph;
        task.order_at = task
            .order
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), i))
            .collect();
        task.short = (0..task.order.len())
            .filter(|&i| {
                let p = &task.order[i];
                task.peers
                    .get(p)
                    .is_some_and(|tp| !tp.done && graph.parents(id, p).len() < want)
            })
            .collect();
        task.eligible_at = task
            .eligible
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), i))
            .collect();
        // Every position may be open again: plans drop the full ones as
        // they pass them (and note where, for when a slot frees).
        task.open = (0..task.eligible.len()).collect();
    }

    /// Phase 1 for one child: tops its candidate parents up to the target.
    fn plan(&mut self, id: TaskId, child: &str, now: Instant) -> Vec<Outbound> {
        self.plan_with(id, child, None, now)
    }

    /// [`Core::plan`], with the eligible peer at position `extra` a
    /// candidate too, inside the child's window or not.
    fn plan_with(
        &mut self,
        id: TaskId,
        child: &str,
        extra: Option<usize>,
        now: Instant,
    ) -> Vec<Outbound> {
        let want = self.config.candidate_parents;
        let Some(task) = self.tasks.get(&id) else {
            return Vec::new();
        };
        let Some(ctp) = task.peers.get(child) else {
            return Vec::new();
        };
        let cparents = self.graph.parents(id, child);
        if ctp.done || cparents.len() >= want || task.is_source(child) {
            return Vec::new();
        }
        let Some(chost) = self.hosts.get(child) else {
            return Vec::new();
        };
        // Peers known not to lie below the child (DAG mode).
        let mut not_below: HashSet<&str> = HashSet::new();
        let blocked = |p: &str| {
            ctp.blocked
                .get(p)
                .is_some_and(|since| now.saturating_duration_since(*since) < self.config.block_for)
        };
        let w = &self.config.weights;
        let piece_count = task.piece_count().unwrap_or(0).max(1) as f64;
        let n = task.eligible.len();
        let start = small_hash(child) % n.max(1);
        let scanned = n.min(self.config.max_scanned);
        // Positions walked past whose host is full: dropped from `open`.
        let mut full = Vec::new();
        let mut consider = |at: usize| -> Option<f64> {
            let p = &task.eligible[at];
            let phost = self.hosts.get(p)?;
            let slots = phost.info.upload_slots.max(1);
            let children = self.graph.child_count(p);
            if children >= slots {
                full.push(at);
                return None;
            }
            let ptp = task.peers.get(p)?;
            let source = task.is_source(p) || task.granted.contains(p);
            let below_child = if self.config.acyclic {
                self.graph.reaches(id, child, p, &mut not_below)
            } else {
                p == child
            };
            if below_child
                || cparents.contains(p)
                || blocked(p)
                // The source is never filtered for sharing a host: without
                // it nothing new arrives.
                || (!source && phost.info.same_host(&chost.info))
                || (ptp.pieces.is_empty() && !source)
            {
                return None;
            }
            let free = 1.0 - children as f64 / slots as f64;
            let live = 1.0 - (phost.active_uploads as f64 / slots as f64).min(1.0);
            let progress = if ptp.done {
                1.0
            } else {
                ptp.pieces.len() as f64 / piece_count
            };
            let same_zone = !chost.info.zone.is_empty() && phost.info.zone == chost.info.zone;
            let same_rack =
                same_zone && !chost.info.rack.is_empty() && phost.info.rack == chost.info.rack;
            Some(
                w.free_capacity * free
                    + w.live_load * live
                    + w.progress * progress.min(1.0)
                    + w.same_zone * same_zone as u8 as f64
                    + w.same_rack * same_rack as u8 as f64
                    + w.seed * phost.info.seed as u8 as f64,
            )
        };
        // The window: `scanned` positions of `eligible` from `start`, of
        // which only the open ones (a full parent is the common rejection
        // under load) are looked at.
        let mut scored: Vec<(f64, usize)> = Vec::new();
        for at in cyclic_range(&task.open, n, start, scanned) {
            if scored.len() >= self.config.max_evaluated {
                break;
            }
            if let Some(score) = consider(at) {
                scored.push((score, at));
            }
        }
        // A child that would be left with no parent at all looks past its
        // window at every open parent: at 10,000 peers its window can be
        // all full while parents elsewhere have free slots, and it would
        // wait for its stall timeout (30 s) for the next plan.
        if cparents.is_empty() && scored.is_empty() {
            for at in cyclic_range(&task.open, n, start + scanned, n - scanned) {
                if scored.len() >= want {
                    break;
                }
                if let Some(score) = consider(at) {
                    scored.push((score, at));
                }
            }
        }
        if let Some(at) = extra.filter(|at| *at < n && !scored.iter().any(|(_, s)| s == at)) {
            if let Some(score) = consider(at) {
                scored.push((score, at));
            }
        }
        scored.sort_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then_with(|| task.eligible[a.1].cmp(&task.eligible[b.1]))
        });
        let chosen: Vec<PeerId> = scored
            .into_iter()
            .take(want - cparents.len())
            .map(|(_, at)| task.eligible[at].clone())
            .collect();
        let parentless = cparents.is_empty() && chosen.is_empty();
        let child_zone = &chost.info.zone;
        let mut parents = Vec::with_capacity(chosen.len());
        for p in &chosen {
            let (Some(ptp), Some(host)) = (task.peers.get(p), self.hosts.get(p)) else {
                continue;
            };
            let pieces = ptp
                .pieces
                .iter()
                .filter_map(|n| task.digests.get(n).map(|d| (*n, *d)))
                .collect();
            parents.push(ParentEntry {
                peer_id: p.clone(),
                addr: host.info.piece_addr.clone(),
                seed: host.info.seed,
                pieces,
                remote: !child_zone.is_empty() && host.info.zone != *child_zone,
                rdma: host.info.rdma,
            });
        }
        if let Some(task) = self.tasks.get_mut(&id) {
            for at in full {
                task.open.remove(&at);
                if let Some(h) = self.hosts.get_mut(&task.eligible[at]) {
                    h.closed_in.insert(id);
                }
            }
            if parentless {
                task.starving.insert(child.to_string());
            } else {
                task.starving.remove(child);
            }
        }
        if parents.is_empty() {
            return Vec::new();
        }
        for p in &parents {
            self.graph.add_edge(id, &p.peer_id, child);
        }
        self.stats.parents_assigned += parents.len() as u64;
        vec![msg(child, id, ToPeer::Parents(parents))]
    }
}

mod cache_jobs;
#[cfg(test)]
mod tests;
