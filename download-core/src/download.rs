//! One task's download as a state machine.
//!
//! A download starts in *swarm* mode (register with the scheduler, wait for
//! the task's length and candidate parents, fetch pieces from parents by
//! phase-2 choice) or in *source* mode (learn the length from the origin and
//! fetch pieces with ranged reads). Every piece is verified by the shell
//! before it counts here; a parent that sends a bad piece or breaks is
//! dropped and reported. When every piece is in, the whole file is checked
//! against the digest it must have, when one is known.
//!
//! **Going to the origin is the scheduler's decision**, under a cluster-wide
//! budget: a swarm download that gets no piece for the stall timeout asks
//! the scheduler ([`ToScheduler::SourceRequest`]), which finds other parents
//! or grants back-to-source ([`SchedulerEvent::BackToSource`]); the peer
//! never turns to the origin on its own while the scheduler answers. Only
//! when the scheduler is unreachable does a stalled peer fall back alone,
//! after a jitter of its own (derived from its id), so that a fleet that
//! lost its scheduler does not hit the origin in the same second.

use crate::events::{
    Command, Failure, Fetch, FetchFrom, Input, ParentInfo, PieceOutcome, PieceReport,
    SchedulerEvent, Source, ToScheduler,
};
use crate::parent_choice::{ParentChoice, ParentView};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};
use weightcast_types::piece::{PieceDigest, PieceLayout};
use weightcast_types::PeerId;

/// Tunables.
#[derive(Debug, Clone)]
pub struct Config {
    /// Pieces in flight at once.
    pub pieces_in_flight: usize,
    /// Pieces in flight from one parent at once.
    pub pieces_per_parent: u32,
    /// With no piece from peers for this long, go to the origin (or fail).
    pub stall_timeout: Duration,
    /// A parent that answered `Busy` is left alone this long.
    pub busy_backoff: Duration,
    /// With the scheduler unreachable, a stalled peer falls back to the
    /// origin after a jitter of up to this long.
    pub fallback_jitter: Duration,
    /// Pieces from a streaming reader's position on that are fetched first.
    /// Few: the reader only needs its stream to keep moving (the daemon's
    /// cache holds whatever arrives out of order, and the reader catches up
    /// at memory speed); a wide window would make every node of the swarm
    /// pull the same pieces at once, from the same holders.
    pub reader_window: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            pieces_in_flight: 16,
            pieces_per_parent: 4,
            stall_timeout: Duration::from_secs(30),
            busy_backoff: Duration::from_millis(100),
            fallback_jitter: Duration::from_secs(5),
            reader_window: 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pieces from parents the scheduler names.
    Swarm,
    /// Pieces from the origin.
    Source,
}

/// What this download is.
#[derive(Debug, Clone)]
pub struct Spec {
    /// This peer's id: it seeds the peer's own piece order, so siblings
    /// ask a seed for different pieces.
    pub peer_id: String,
    /// The whole-file sha256 the result must have.
    pub digest: Option<[u8; 32]>,
    pub mode: Mode,
    /// Whether this peer may fetch from the origin itself.
    pub back_to_source: bool,
    /// Whether the task is announced to the scheduler (`false`: a private
    /// download, or no scheduler at all).
    pub announce: bool,
    /// The length of a task already on disk from an earlier run, to resume.
    pub resume_length: Option<u64>,
    /// Whether the scheduler answered when the download started.
    pub scheduler_up: bool,
}

/// Live numbers, for progress output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub total: Option<u64>,
    pub done: u64,
    pub from_peers: u64,
    pub from_origin: u64,
    /// Bytes already verified on disk when the download started.
    pub resumed: u64,
}

/// Where the download stands between the two ends of its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// [`Command::CheckWholeDigest`] was issued.
    Checking,
    /// [`Command::Finish`] was issued: nothing more happens.
    Finished,
}

pub struct Download<E> {
    config: Config,
    spec: Spec,
    mode: Mode,
    phase: Phase,
    layout: Option<PieceLayout>,
    /// Length of the [`Command::Open`] in progress.
    opening: Option<u64>,
    probing: bool,
    /// `Register` went out: pieces learned later are sent one by one.
    registered: bool,
    /// Verified pieces.
    have: VerifiedPieces,
    /// The last fill stopped because phase 2 found nothing to fetch, and no
    /// input since could change that. In a large swarm most inputs are
    /// `Available` announcements (one per piece per parent), and a child
    /// whose parents are all busy would run the whole phase-2 choice for
    /// each; an announcement can only make its own piece fetchable, from
    /// its own parent, so [`Download::handle`] checks just that.
    nothing_to_fetch: bool,
    inflight: BTreeMap<u32, Source>,
    choice: ParentChoice,
    /// The piece a streaming reader waits on.
    wanted: Option<u32>,
    /// When the last piece arrived (or the download started, or the
    /// scheduler was last asked for help).
    last_progress: Instant,
    /// Whether the scheduler answers, and since when it does not.
    scheduler_up: bool,
    down_since: Instant,
    /// This peer's own fallback delay when the scheduler is unreachable.
    jitter: Duration,
    /// Times the scheduler was asked to let this peer go to the origin.
    source_requests: u32,
    progress: Progress,
    shutting_down: bool,
    out: VecDeque<Command<E>>,
}

impl<E> Download<E> {
    pub fn new(config: Config, spec: Spec, now: Instant) -> Self {
        let jitter = config.fallback_jitter.mul_f64(unit_fraction(&spec.peer_id));
        let mut d = Self {
            scheduler_up: spec.scheduler_up,
            down_since: now,
            jitter,
            source_requests: 0,
            choice: ParentChoice::new(config.pieces_per_parent, &spec.peer_id),
            config,
            mode: spec.mode,
            spec,
            phase: Phase::Running,
            layout: None,
            opening: None,
            probing: false,
            registered: false,
            have: VerifiedPieces::default(),
            nothing_to_fetch: false,
            inflight: BTreeMap::new(),
            wanted: None,
            last_progress: now,
            progress: Progress::default(),
            shutting_down: false,
            out: VecDeque::new(),
        };
        match d.spec.resume_length {
            // A task on disk from an earlier run registers with what it has,
            // once that is known.
            Some(len) => d.open(len),
            None => d.register(),
        }
        if d.mode == Mode::Source {
            d.start_source(None);
        }
        d
    }

    /// The next command for the shell, if any.
    pub fn poll_command(&mut self) -> Option<Command<E>> {
        self.out.pop_front()
    }

    /// When to call [`Download::handle`] with [`Input::Timeout`] if nothing
    /// else happens first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase != Phase::Running || self.shutting_down {
            return None;
        }
        let stall = self.stall_deadline();
        let busy = self.choice.next_wake();
        match (stall, busy) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// Times this download asked the scheduler for leave to go to the origin.
    pub fn source_requests(&self) -> u32 {
        self.source_requests
    }

    /// When a swarm download counts as stalled: no piece for the stall
    /// timeout; with the scheduler unreachable, that (or, with no parent at
    /// all, the moment it went) plus this peer's jitter.
    fn stall_deadline(&self) -> Option<Instant> {
        if self.mode != Mode::Swarm {
            return None;
        }
        let stalled = self.last_progress + self.config.stall_timeout;
        if self.scheduler_up {
            return Some(stalled);
        }
        let base = if self.choice.parents.is_empty() {
            self.down_since
        } else {
            stalled.max(self.down_since)
        };
        Some(base + self.jitter)
    }

    /// Pieces in flight now.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Candidate parents known now.
    pub fn parent_count(&self) -> usize {
        self.choice.parents.len()
    }

    /// The phase-2 view of the candidate parents (for simulators and
    /// diagnostics).
    pub fn parent_choice(&self) -> &ParentChoice {
        &self.choice
    }

    pub fn handle(&mut self, now: Instant, input: Input<E>) {
        if self.phase == Phase::Finished {
            return;
        }
        // Waits that have passed are gone, so that `poll_timeout` never
        // names an instant already past while a later one (another
        // parent's wait, the stall deadline) is the real next wake-up.
        let waits_ended = self.choice.forget_past_waits(now);
        // Still nothing to fetch after an announcement that its parent
        // cannot serve now, or of a piece not wanted (held or in flight).
        // Anything else may change what phase 2 finds.
        self.nothing_to_fetch = self.nothing_to_fetch
            && !waits_ended
            && self.mode == Mode::Swarm
            && match &input {
                Input::Scheduler(SchedulerEvent::Available { parent, num, .. }) => {
                    self.have.holds(*num) != Some(false)
                        || self.inflight.contains_key(num)
                        || !self.choice.could_serve(parent, *num, now)
                }
                _ => false,
            };
        match input {
            Input::Scheduler(ev) => self.on_scheduler(ev),
            Input::SchedulerLost => {
                if self.scheduler_up {
                    self.scheduler_up = false;
                    self.down_since = now;
                }
            }
            Input::Reconnected => {
                self.scheduler_up = true;
                self.last_progress = now;
                self.choice.parents.clear();
                self.register();
                if let (Mode::Source, Some(l)) = (self.mode, self.layout) {
                    self.send(ToScheduler::Meta {
                        content_length: l.content_length,
                    });
                }
            }
            Input::Wanted(num) => self.wanted = Some(num),
            Input::Opened(r) => match r {
                Ok(have) => self.on_opened(have),
                Err(e) => self.fail(Failure::Shell(e)),
            },
            Input::Probed(r) => {
                self.probing = false;
                match r {
                    Ok(len) => self.open(len),
                    Err(e) => self.fail(Failure::Shell(e)),
                }
            }
            Input::Piece(report) => self.on_piece(now, report),
            Input::WholeDigest(r) => self.on_whole_digest(r),
            Input::Timeout => self.on_timeout(now),
            Input::Shutdown => self.shutting_down = true,
        }
        self.advance(now);
    }

    fn send(&mut self, m: ToScheduler) {
        if self.spec.announce {
            self.out.push_back(Command::Send(m));
        }
    }

    fn verified(&self) -> Vec<(u32, PieceDigest)> {
        self.have.verified()
    }

    fn register(&mut self) {
        let have = self.verified();
        let content_length = self.layout.map_or(0, |l| l.content_length);
        self.send(ToScheduler::Register {
            have,
            content_length,
        });
        self.registered = true;
    }

    fn open(&mut self, len: u64) {
        if self.layout.is_some() || self.opening.is_some() {
            return;
        }
        self.opening = Some(len);
        self.out.push_back(Command::Open {
            content_length: len,
        });
    }

    fn on_opened(&mut self, resumed: Vec<(u32, PieceDigest)>) {
        let Some(len) = self.opening.take() else {
            return;
        };
        let layout = PieceLayout::for_length(len);
        self.have = VerifiedPieces::new(layout.piece_count());
        let mut resumed_bytes = 0;
        for (num, d) in &resumed {
            if self.have.set(*num, *d) {
                resumed_bytes += layout.piece_len(*num);
            }
        }
        self.layout = Some(layout);
        self.progress.total = Some(len);
        self.progress.resumed = resumed_bytes;
        self.progress.done = resumed_bytes;
        if self.registered {
            // Pieces resumed from disk make this peer a parent at once.
            for (num, digest) in self.verified() {
                self.send(ToScheduler::PieceDone { num, digest });
            }
        } else {
            self.register();
        }
        if self.mode == Mode::Source {
            self.send(ToScheduler::Meta {
                content_length: len,
            });
        }
    }

    /// Fetches from the origin from now on. `why` is what turned a swarm
    /// download to the origin (`None` for a planned source: a seed, or no
    /// swarm at all).
    fn start_source(&mut self, why: Option<String>) {
        if !self.spec.back_to_source {
            let reason = why.unwrap_or_else(|| "this download must come from peers".into());
            self.fail(Failure::SourceForbidden { reason });
            return;
        }
        let was = self.mode;
        self.mode = Mode::Source;
        match self.layout {
            Some(l) if was == Mode::Swarm => self.send(ToScheduler::Meta {
                content_length: l.content_length,
            }),
            Some(_) => {}
            None if self.opening.is_some() => {}
            None => {
                if !self.probing {
                    self.probing = true;
                    self.out.push_back(Command::Probe);
                }
            }
        }
    }

    fn on_scheduler(&mut self, ev: SchedulerEvent) {
        match ev {
            SchedulerEvent::Meta { content_length } => self.open(content_length),
            SchedulerEvent::Parents(parents) => {
                for p in parents {
                    self.add_parent(p);
                }
            }
            SchedulerEvent::Available {
                parent,
                num,
                digest,
            } => {
                if let Some(p) = self.choice.parents.get_mut(&parent) {
                    p.pieces.insert(num, digest);
                }
            }
            SchedulerEvent::ParentGone { parent } => {
                self.choice.parents.remove(&parent);
            }
            SchedulerEvent::BackToSource { reason } => {
                if self.mode == Mode::Swarm {
                    self.start_source(Some(format!("the scheduler said: {reason}")));
                }
            }
        }
    }

    fn add_parent(&mut self, p: ParentInfo) {
        let mut v = ParentView::new(p.addr, p.seed);
        v.remote = p.remote;
        v.rdma = p.rdma;
        v.pieces.extend(p.pieces);
        self.choice.parents.insert(p.id, v);
    }

    fn on_piece(&mut self, now: Instant, r: PieceReport<E>) {
        self.inflight.remove(&r.num);
        let parent = match &r.from {
            Source::Parent(p) => Some(p.clone()),
            Source::Origin => None,
        };
        if let Some(p) = &parent {
            let (took, load) = match &r.outcome {
                PieceOutcome::Verified { parent_load, .. } => (Some(r.took), *parent_load),
                _ => (None, None),
            };
            self.choice.finished(p, r.bytes, took, load);
        }
        match r.outcome {
            PieceOutcome::Verified { digest, .. } => {
                // A piece outside the file, or one already held, changes
                // nothing.
                if self.have.holds(r.num) != Some(false) {
                    return;
                }
                self.have.set(r.num, digest);
                self.last_progress = now;
                self.progress.done += r.bytes;
                match parent {
                    Some(_) => self.progress.from_peers += r.bytes,
                    None => self.progress.from_origin += r.bytes,
                }
                self.send(ToScheduler::PieceDone { num: r.num, digest });
            }
            PieceOutcome::Busy => {
                if let Some(p) = &parent {
                    self.choice.wait_busy(p, now + self.config.busy_backoff);
                }
            }
            PieceOutcome::NotFound => {
                if let Some(v) = parent.as_ref().and_then(|p| self.choice.parents.get_mut(p)) {
                    v.pieces.remove(&r.num);
                }
            }
            PieceOutcome::Elsewhere { retry_in } => {
                if let Some(p) = &parent {
                    self.choice.wait_elsewhere(p, r.num, now + retry_in, now);
                }
            }
            PieceOutcome::Corrupt { reason } | PieceOutcome::ParentFailed { reason } => {
                if let Some(p) = parent {
                    self.choice.parents.remove(&p);
                    self.send(ToScheduler::PieceFailed {
                        num: r.num,
                        parent: p,
                        reason,
                    });
                }
            }
            PieceOutcome::OriginFailed(e) => self.fail(Failure::Shell(e)),
            PieceOutcome::Lost { .. } => {}
        }
    }

    fn on_whole_digest(&mut self, r: Result<[u8; 32], E>) {
        if self.phase != Phase::Checking {
            return;
        }
        match (r, self.spec.digest) {
            (Err(e), _) => self.fail(Failure::Shell(e)),
            (Ok(got), Some(expected)) if got != expected => {
                self.out.push_back(Command::Discard);
                self.fail(Failure::DigestMismatch { expected, got });
            }
            (Ok(_), _) => self.succeed(),
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        match self.stall_deadline() {
            Some(deadline) if now >= deadline => {}
            _ => return,
        }
        let secs = self.config.stall_timeout.as_secs();
        if !self.spec.back_to_source {
            self.fail(Failure::Stalled { secs });
        } else if self.scheduler_up {
            // The scheduler decides: other parents, or leave to go.
            self.source_requests += 1;
            self.last_progress = now;
            self.send(ToScheduler::SourceRequest {
                reason: format!("no piece arrived from peers for {secs} s"),
            });
        } else {
            self.start_source(Some("the scheduler is unreachable".into()));
        }
    }

    fn succeed(&mut self) {
        self.send(ToScheduler::TaskDone);
        self.phase = Phase::Finished;
        self.out.push_back(Command::Finish(Ok(())));
    }

    fn fail(&mut self, f: Failure<E>) {
        if self.phase == Phase::Finished {
            return;
        }
        self.send(ToScheduler::TaskLeft);
        self.phase = Phase::Finished;
        self.out.push_back(Command::Finish(Err(f)));
    }

    /// After every input: start fetches, or finish.
    fn advance(&mut self, now: Instant) {
        if self.phase != Phase::Running {
            return;
        }
        if self.shutting_down {
            if self.inflight.is_empty() {
                self.fail(Failure::ShuttingDown);
            }
            return;
        }
        let Some(layout) = self.layout else { return };
        let complete = self.have.is_complete();
        if complete && self.inflight.is_empty() {
            if self.spec.digest.is_some() {
                self.phase = Phase::Checking;
                self.out.push_back(Command::CheckWholeDigest);
            } else {
                self.succeed();
            }
            return;
        }
        self.fill(now, layout);
    }

    /// Starts fetches until the pipeline is full or nothing is fetchable.
    fn fill(&mut self, now: Instant, layout: PieceLayout) {
        self.choice
            .spread(self.config.pieces_in_flight, self.config.pieces_per_parent);
        if self.nothing_to_fetch && self.inflight.len() < self.config.pieces_in_flight {
            debug_assert!(
                self.next_piece(now, layout).is_none(),
                "an input that could make a piece fetchable reset nothing_to_fetch"
            );
            return;
        }
        while self.inflight.len() < self.config.pieces_in_flight {
            let Some((num, from)) = self.next_piece(now, layout) else {
                self.nothing_to_fetch = true;
                return;
            };
            let fetch_from = match &from {
                Source::Origin => FetchFrom::Origin,
                Source::Parent(id) => {
                    let v = &self.choice.parents[id];
                    FetchFrom::Parent {
                        id: id.clone(),
                        addr: v.addr.clone(),
                        rdma: v.rdma,
                        expected: v.pieces.get(&num).copied(),
                    }
                }
            };
            if let Source::Parent(id) = &from {
                self.choice.started(id, layout.piece_len(num));
            }
            self.inflight.insert(num, from);
            self.out.push_back(Command::Fetch(Fetch {
                num,
                from: fetch_from,
            }));
        }
    }

    /// The next piece to fetch and from where. Pieces a streaming reader is
    /// about to need come first; then, from the origin, front to back, and
    /// from peers, by phase-2 choice.
    fn next_piece(&self, now: Instant, layout: PieceLayout) -> Option<(u32, Source)> {
        let inflight = &self.inflight;
        let have = &self.have;
        let free = || have.missing().filter(|n| !inflight.contains_key(n));
        let window = self.config.reader_window.max(1);
        let urgent = self.wanted.map(|w| w..w.saturating_add(window));
        let is_urgent = |n: &u32| urgent.as_ref().is_some_and(|r| r.contains(n));
        let piece_len = |n: u32| layout.piece_len(n);
        match self.mode {
            Mode::Source => free()
                .find(is_urgent)
                .or_else(|| free().next())
                .map(|n| (n, Source::Origin)),
            Mode::Swarm => {
                // The reader's next pieces in order, each from its best holder.
                let first = urgent.clone().and_then(|r| {
                    r.filter(|n| have.holds(*n) == Some(false) && !inflight.contains_key(n))
                        .find_map(|n| self.choice.pick([n], piece_len, now))
                });
                first
                    .or_else(|| {
                        // Missing and not in flight, as a bitset.
                        let mut want = have.missing_bits().to_vec();
                        for n in inflight.keys() {
                            if let Some(w) = want.get_mut(*n as usize / 64) {
                                *w &= !(1u64 << (n % 64));
                            }
                        }
                        self.choice.pick_among(&want, piece_len, now)
                    })
                    .map(|(n, p): (u32, PeerId)| (n, Source::Parent(p)))
            }
        }
    }
}

/// The pieces verified so far, with their digests, and beside them a bitset
/// of the missing ones and their count.
///
/// The download asks "complete?" and "which pieces are missing?" on every
/// input (every `Available`, every answer: thousands per piece time in a
/// large swarm). Walking a `Vec<Option<PieceDigest>>` of ~500 entries for
/// that touched 16 KiB per input; the bitset answers from a few words.
#[derive(Debug, Default)]
struct VerifiedPieces {
    /// By piece number.
    digests: Vec<Option<PieceDigest>>,
    /// Bit `n` set: piece `n` is not verified yet.
    missing: Vec<u64>,
    held: usize,
}

impl VerifiedPieces {
    fn new(piece_count: u32) -> Self {
        let n = piece_count as usize;
        let mut missing = vec![u64::MAX; n.div_ceil(64)];
        if !n.is_multiple_of(64) {
            if let Some(last) = missing.last_mut() {
                *last = (1u64 << (n % 64)) - 1;
            }
        }
        Self {
            digests: vec![None; n],
            missing,
            held: 0,
        }
    }

    /// Whether piece `num` is verified; `None` for a piece outside the file.
    fn holds(&self, num: u32) -> Option<bool> {
        self.digests.get(num as usize).map(Option::is_some)
    }

    /// Records piece `num` as verified with `digest` (replacing a digest
    /// recorded before); false for a piece outside the file.
    fn set(&mut self, num: u32, digest: PieceDigest) -> bool {
        let Some(slot) = self.digests.get_mut(num as usize) else {
            return false;
        };
        if slot.is_none() {
            self.held += 1;
            if let Some(w) = self.missing.get_mut(num as usize / 64) {
                *w &= !(1u64 << (num % 64));
            }
        }
        *slot = Some(digest);
        true
    }

    /// Every piece is verified (true for a file of no pieces).
    fn is_complete(&self) -> bool {
        self.held == self.digests.len()
    }

    /// The missing pieces as a bitset (bit `n % 64` of word `n / 64`).
    fn missing_bits(&self) -> &[u64] {
        &self.missing
    }

    /// The missing pieces, in ascending order.
    fn missing(&self) -> impl Iterator<Item = u32> + '_ {
        self.missing.iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                Some((w * 64) as u32 + b)
            })
        })
    }

    fn verified(&self) -> Vec<(u32, PieceDigest)> {
        self.digests
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.map(|d| (i as u32, d)))
            .collect()
    }
}

/// A stable fraction in [0, 1) of `id` (FNV-1a): a peer's own jitter.
fn unit_fraction(id: &str) -> f64 {
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests;
