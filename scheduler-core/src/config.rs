//! Tunables of phase 1: how many parents a child gets, how many candidates
//! one decision looks at, the graph's shape, blocklist time and the scoring
//! weights.

use std::collections::BTreeMap;
use std::time::Duration;

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
    /// How long a parent that a child reported (a failed piece) stays off
    /// that child's candidates. Long enough that a broken parent is not
    /// handed straight back; short enough that a parent which had a
    /// passing fault (a restart, a full disk it freed) serves again, which
    /// matters most in small swarms with few other candidates.
    pub block_for: Duration,
    /// How candidates are ranked.
    pub weights: Weights,
    /// Peers of one task that may fetch it from the origin at once besides
    /// its seed (stalled peers granted back-to-source, a peer standing in
    /// for a source that left). Every peer going alone is the stampede the
    /// swarm exists to prevent.
    pub max_back_to_source: usize,
    /// Cluster-wide byte-rate budgets towards origins, by host (`host` or
    /// `host:port`), split evenly among the peers fetching from one now.
    pub origin_rate_limits: BTreeMap<String, u64>,
    /// After the scheduler starts (its first hello), how long a task whose
    /// peers already hold pieces waits for a seed before one of them is sent
    /// to the origin: a restarted scheduler hears its peers register again
    /// in whatever order they reconnect, and a seed a moment late must not
    /// cost the origin a copy. Peers reconnect within 5 s (their backoff).
    pub seed_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            candidate_parents: 16,
            max_evaluated: 64,
            max_scanned: 256,
            acyclic: false,
            block_for: Duration::from_secs(60),
            weights: Weights::default(),
            max_back_to_source: 2,
            origin_rate_limits: BTreeMap::new(),
            seed_grace: Duration::from_secs(6),
        }
    }
}

/// Weights of a candidate parent's score; each term lies in 0..=1, so a
/// weight is the most that term can add.
///
/// Free capacity dominates so that children spread over uploaders instead of
/// piling onto the best one; progress comes next because a parent with more
/// pieces serves a child for longer.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    /// Share of the parent's upload slots not yet planned for children.
    pub free_capacity: f64,
    /// Share of its slots not busy right now (its last reported load).
    pub live_load: f64,
    /// Share of the task's pieces it holds (1 when it is complete).
    pub progress: f64,
    /// Same zone as the child: the link between zones is the scarce one.
    pub same_zone: f64,
    /// Same rack too (counted only within the same zone).
    pub same_rack: f64,
    /// The parent is a seed peer (it will hold everything).
    pub seed: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            free_capacity: 0.45,
            live_load: 0.1,
            progress: 0.2,
            same_zone: 0.15,
            same_rack: 0.05,
            seed: 0.05,
        }
    }
}
