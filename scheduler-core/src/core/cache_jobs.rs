//! Cache jobs inside the core: preheat and eviction orders to peers, and
//! each peer's result as its own reports come in.
//!
//! This sits beside phase 1 and changes none of it: a preheated peer
//! downloads through the ordinary path (it registers, the seed ring drafts
//! the task's seed, parents are planned). Two hooks only: [`Core::handle`]
//! and [`Core::disconnect`] hand what they saw to [`Core::jobs_after`] /
//! [`Core::jobs_peer_gone`], and a seed drafted for a task that a preheat
//! is warming gets the preheat's credentials with its order (so a registry
//! that only the preheat's token opens, as Harbor's, serves the seed too).

use super::{msg, small_hash, Core};
use crate::cache_job::{
    JobId, JobRefused, JobStatus, PeerFilter, PeerResult, PreheatJob, ResultState, Scope,
    TaskResults, WarmTask,
};
use crate::events::{addr_host, Outbound, PeerEvent, ToPeer};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};
use weightcast_types::piece::PieceLayout;
use weightcast_types::{PeerId, TaskId};

#[derive(Default)]
pub(crate) struct CacheJobs {
    next: JobId,
    jobs: BTreeMap<JobId, Job>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Preheat,
    Delete,
}

struct Job {
    kind: Kind,
    deadline: Instant,
    timeout: Duration,
    /// Orders outstanding per task at once (0: no limit).
    concurrent: usize,
    tasks: Vec<JobTask>,
}

struct JobTask {
    warm: WarmTask,
    targets: BTreeMap<PeerId, Target>,
    /// Targets not ordered yet (beyond `concurrent`).
    queue: VecDeque<PeerId>,
}

struct Target {
    /// Who it was when chosen (it may disconnect before the job ends).
    hostname: String,
    addr: String,
    seed: bool,
    state: ResultState,
    description: String,
    held: bool,
}

/// What an event says about a job's target, taken before the core
/// consumes the event.
pub(crate) enum Seen {
    Nothing,
    Done(TaskId),
    Left(TaskId),
    Failed(TaskId, String),
    Deleted(TaskId, bool, Option<String>),
}

impl Seen {
    pub(crate) fn of(event: &PeerEvent) -> Seen {
        match event {
            PeerEvent::TaskDone { task } => Seen::Done(*task),
            PeerEvent::TaskLeft { task } => Seen::Left(*task),
            PeerEvent::TaskFailed { task, reason } => Seen::Failed(*task, reason.clone()),
            PeerEvent::CacheDeleted { task, held, error } => {
                Seen::Deleted(*task, *held, error.clone())
            }
            _ => Seen::Nothing,
        }
    }
}

impl Job {
    fn finished(&self) -> bool {
        self.tasks
            .iter()
            .all(|t| t.targets.values().all(|r| r.state != ResultState::Pending))
    }
}

impl JobTask {
    fn in_flight(&self) -> usize {
        self.targets
            .iter()
            .filter(|(p, r)| r.state == ResultState::Pending && !self.queue.contains(p))
            .count()
    }
}

impl Core {
    /// Starts a preheat: picks the peers by scope and filter, and orders
    /// each to fetch each task (peers that already hold a task complete
    /// count as done at once). Results: [`Core::job_status`].
    pub fn preheat(
        &mut self,
        job: PreheatJob,
        now: Instant,
    ) -> Result<(JobId, Vec<Outbound>), JobRefused> {
        if job.tasks.is_empty() {
            return Err(JobRefused::NoTasks);
        }
        let seeds: Vec<PeerId> = self
            .hosts
            .iter()
            .filter(|(_, h)| h.info.seed)
            .map(|(p, _)| p.clone())
            .collect();
        let mut tasks = Vec::new();
        for warm in job.tasks {
            let targets = match job.scope {
                Scope::SingleSeedPeer => {
                    let hosts = &self.hosts;
                    let seed = self
                        .seeds
                        .pick(&warm.task, |s| !hosts.contains_key(s))
                        .cloned();
                    seed.into_iter().collect()
                }
                Scope::AllSeedPeers => self.select(seeds.clone(), &job.filter),
                Scope::AllPeers => self.select(self.hosts.keys().cloned().collect(), &job.filter),
            };
            if targets.is_empty() {
                return Err(match job.scope {
                    Scope::AllPeers => JobRefused::NoPeers,
                    _ if seeds.is_empty() => JobRefused::NoSeed,
                    _ => JobRefused::NoPeers,
                });
            }
            tasks.push((warm, targets));
        }
        let id = self.jobs.next;
        self.jobs.next += 1;
        let mut job = Job {
            kind: Kind::Preheat,
            deadline: now + job.timeout,
            timeout: job.timeout,
            concurrent: job.concurrent_peers,
            tasks: tasks
                .into_iter()
                .map(|(warm, targets)| self.job_task(warm, targets))
                .collect(),
        };
        for t in &mut job.tasks {
            // Already complete there: nothing to order.
            if let Some(task) = self.tasks.get(&t.warm.task) {
                for (p, r) in t.targets.iter_mut() {
                    if task.peers.get(p).is_some_and(|tp| tp.done) {
                        r.state = ResultState::Success;
                        r.held = true;
                        t.queue.retain(|q| q != p);
                    }
                }
            }
        }
        self.jobs.jobs.insert(id, job);
        let out = self.release(id);
        Ok((id, out))
    }

    /// Evicts `tasks` from every connected peer's cache.
    pub fn delete_tasks(
        &mut self,
        tasks: Vec<TaskId>,
        timeout: Duration,
        now: Instant,
    ) -> Result<(JobId, Vec<Outbound>), JobRefused> {
        if tasks.is_empty() {
            return Err(JobRefused::NoTasks);
        }
        let peers: Vec<PeerId> = self.hosts.keys().cloned().collect();
        if peers.is_empty() {
            return Err(JobRefused::NoPeers);
        }
        let id = self.jobs.next;
        self.jobs.next += 1;
        let job = Job {
            kind: Kind::Delete,
            deadline: now + timeout,
            timeout,
            concurrent: 0,
            tasks: tasks
                .into_iter()
                .map(|task| {
                    let url = self
                        .tasks
                        .get(&task)
                        .map(|t| t.url.clone())
                        .unwrap_or_default();
                    let warm = WarmTask {
                        task,
                        url,
                        digest: None,
                        authorization: None,
                    };
                    self.job_task(warm, peers.clone())
                })
                .collect(),
        };
        self.jobs.jobs.insert(id, job);
        let out = self.release(id);
        Ok((id, out))
    }

    fn job_task(&self, warm: WarmTask, targets: Vec<PeerId>) -> JobTask {
        let targets: BTreeMap<PeerId, Target> = targets
            .into_iter()
            .filter_map(|p| {
                let h = self.hosts.get(&p)?;
                Some((
                    p,
                    Target {
                        hostname: h.info.hostname.clone(),
                        addr: h.info.piece_addr.clone(),
                        seed: h.info.seed,
                        state: ResultState::Pending,
                        description: String::new(),
                        held: false,
                    },
                ))
            })
            .collect();
        JobTask {
            queue: targets.keys().cloned().collect(),
            targets,
            warm,
        }
    }

    /// `candidates` narrowed by `filter`: listed IPs first, else a count,
    /// else a percentage; the pick is a stable spread by peer id.
    fn select(&self, mut candidates: Vec<PeerId>, filter: &PeerFilter) -> Vec<PeerId> {
        if !filter.ips.is_empty() {
            return candidates
                .into_iter()
                .filter(|p| {
                    self.hosts.get(p).is_some_and(|h| {
                        let ip = addr_host(&h.info.piece_addr);
                        filter.ips.iter().any(|want| want == ip)
                    })
                })
                .collect();
        }
        candidates.sort_by_key(|p| (small_hash(p), p.clone()));
        let n = candidates.len();
        let keep = match (filter.count, filter.percentage) {
            (Some(c), _) if c > 0 => (c as usize).min(n),
            (_, Some(pct)) if pct > 0 => (n * pct.min(100) as usize / 100).max(1).min(n),
            _ => n,
        };
        candidates.truncate(keep);
        candidates
    }

    /// Orders the next targets of job `id`, within its concurrency.
    fn release(&mut self, id: JobId) -> Vec<Outbound> {
        let mut out = Vec::new();
        let Some(job) = self.jobs.jobs.get_mut(&id) else {
            return out;
        };
        for t in &mut job.tasks {
            while !t.queue.is_empty() && (job.concurrent == 0 || t.in_flight() < job.concurrent) {
                let Some(p) = t.queue.pop_front() else { break };
                if t.targets.get(&p).map(|r| r.state) != Some(ResultState::Pending) {
                    continue;
                }
                let order = match job.kind {
                    Kind::Preheat => ToPeer::Preheat {
                        url: t.warm.url.clone(),
                        digest: t.warm.digest,
                        authorization: t.warm.authorization.clone(),
                        from_origin: false,
                    },
                    Kind::Delete => ToPeer::DeleteCache,
                };
                out.push(msg(&p, t.warm.task, order));
            }
        }
        out
    }

    /// The hook at the end of [`Core::handle`]: a target's report becomes
    /// its result, the next targets are ordered, and a seed drafted for a
    /// task being preheated gets the preheat's order.
    pub(crate) fn jobs_after(
        &mut self,
        from: &str,
        seen: Seen,
        mut out: Vec<Outbound>,
    ) -> Vec<Outbound> {
        // Downloads report to preheats, eviction answers to evictions.
        let (task, kind, state, description, held) = match seen {
            Seen::Nothing => return self.jobs_rewrite(out),
            Seen::Done(t) => (t, Kind::Preheat, ResultState::Success, String::new(), true),
            Seen::Left(t) => (
                t,
                Kind::Preheat,
                ResultState::Failure,
                "the peer dropped the task".to_string(),
                false,
            ),
            Seen::Failed(t, why) => (t, Kind::Preheat, ResultState::Failure, why, false),
            Seen::Deleted(t, held, error) => match error {
                Some(e) => (t, Kind::Delete, ResultState::Failure, e, held),
                None => {
                    let what = if held { "evicted" } else { "not cached" };
                    (
                        t,
                        Kind::Delete,
                        ResultState::Success,
                        what.to_string(),
                        held,
                    )
                }
            },
        };
        let mut changed = Vec::new();
        for (id, job) in self.jobs.jobs.iter_mut().filter(|(_, j)| j.kind == kind) {
            for t in job.tasks.iter_mut().filter(|t| t.warm.task == task) {
                let Some(r) = t.targets.get_mut(from) else {
                    continue;
                };
                // A failure's reason (TaskFailed) follows its TaskLeft and
                // replaces the generic description.
                let fits = r.state == ResultState::Pending
                    || (kind == Kind::Preheat
                        && r.state == ResultState::Failure
                        && state == ResultState::Failure);
                if fits {
                    r.state = state;
                    r.description = description.clone();
                    r.held = held;
                    changed.push(*id);
                }
            }
        }
        for id in changed {
            out.extend(self.release(id));
        }
        self.jobs_rewrite(out)
    }

    /// The hook of [`Core::disconnect`]: what a gone peer still owed fails.
    pub(crate) fn jobs_peer_gone(&mut self, peer: &str) {
        for job in self.jobs.jobs.values_mut() {
            for t in &mut job.tasks {
                if let Some(r) = t.targets.get_mut(peer) {
                    if r.state == ResultState::Pending {
                        r.state = ResultState::Failure;
                        r.description = "the peer disconnected".into();
                    }
                }
                t.queue.retain(|q| q != peer);
            }
        }
    }

    /// A seed drafted (by the ordinary seed order) for a task that a
    /// running preheat warms gets the preheat's order instead: the same
    /// "you are the source" with the preheat's digest and credentials.
    pub(crate) fn jobs_rewrite(&self, out: Vec<Outbound>) -> Vec<Outbound> {
        if self.jobs.jobs.is_empty() {
            return out;
        }
        out.into_iter()
            .map(|o| match &o.msg {
                ToPeer::SeedTask { url, .. } => match self.warming(&o.task) {
                    Some(w) => Outbound {
                        msg: ToPeer::Preheat {
                            url: url.clone(),
                            digest: w.digest,
                            authorization: w.authorization.clone(),
                            from_origin: true,
                        },
                        ..o
                    },
                    None => o,
                },
                _ => o,
            })
            .collect()
    }

    fn warming(&self, task: &TaskId) -> Option<&WarmTask> {
        self.jobs
            .jobs
            .values()
            .filter(|j| j.kind == Kind::Preheat && !j.finished())
            .flat_map(|j| j.tasks.iter())
            .find(|t| t.warm.task == *task)
            .map(|t| &t.warm)
    }

    /// Fails what is still pending in jobs past their timeout; returns the
    /// jobs that changed.
    pub fn expire_jobs(&mut self, now: Instant) -> Vec<JobId> {
        let mut changed = Vec::new();
        for (id, job) in self.jobs.jobs.iter_mut() {
            if now < job.deadline || job.finished() {
                continue;
            }
            let why = format!("timed out after {} s", job.timeout.as_secs());
            for t in &mut job.tasks {
                t.queue.clear();
                for r in t.targets.values_mut() {
                    if r.state == ResultState::Pending {
                        r.state = ResultState::Failure;
                        r.description = why.clone();
                    }
                }
            }
            changed.push(*id);
        }
        changed
    }

    /// The jobs not yet forgotten.
    pub fn job_ids(&self) -> Vec<JobId> {
        self.jobs.jobs.keys().copied().collect()
    }

    /// Drops a job's state (after its last status went out).
    pub fn forget_job(&mut self, id: JobId) {
        self.jobs.jobs.remove(&id);
    }

    /// Where job `id` stands: per task, per chosen peer.
    pub fn job_status(&self, id: JobId) -> Option<JobStatus> {
        let job = self.jobs.jobs.get(&id)?;
        let tasks = job
            .tasks
            .iter()
            .map(|t| {
                let known = self.tasks.get(&t.warm.task);
                let content_length = known.and_then(|k| k.content_length);
                let peers = t
                    .targets
                    .iter()
                    .map(|(p, r)| PeerResult {
                        peer_id: p.clone(),
                        hostname: r.hostname.clone(),
                        addr: r.addr.clone(),
                        seed: r.seed,
                        state: r.state,
                        description: r.description.clone(),
                        bytes: self.bytes_held(&t.warm.task, p),
                        held: r.held,
                        from_origin: self.fetched_from_origin(&t.warm.task, p),
                        done_after: self.done_after(&t.warm.task, p),
                    })
                    .collect();
                TaskResults {
                    task: t.warm.task,
                    url: t.warm.url.clone(),
                    content_length,
                    peers,
                }
            })
            .collect();
        Some(JobStatus {
            id,
            tasks,
            finished: job.finished(),
        })
    }

    fn bytes_held(&self, task: &TaskId, peer: &str) -> u64 {
        let Some(t) = self.tasks.get(task) else {
            return 0;
        };
        let (Some(len), Some(tp)) = (t.content_length, t.peers.get(peer)) else {
            return 0;
        };
        if tp.done {
            return len;
        }
        let layout = PieceLayout::for_length(len);
        tp.pieces.iter().map(|n| layout.piece_len(*n)).sum()
    }

    /// The connected peers that hold (part of) `task`: success for those
    /// with all of it, pending for those still fetching.
    /// Whether `peer` fetched `task` from the origin: it finished as its
    /// source or under a grant, or is fetching from it now.
    fn fetched_from_origin(&self, task: &TaskId, peer: &str) -> bool {
        self.tasks.get(task).is_some_and(|t| {
            t.fetches_from_origin(peer)
                || t.peers.get(peer).is_some_and(|tp| tp.fetched_from_origin)
        })
    }

    fn done_after(&self, task: &TaskId, peer: &str) -> Option<std::time::Duration> {
        self.tasks.get(task)?.peers.get(peer)?.done_after
    }

    pub fn task_holders(&self, task: &TaskId) -> Vec<PeerResult> {
        let Some(t) = self.tasks.get(task) else {
            return Vec::new();
        };
        t.peers
            .iter()
            .filter_map(|(p, tp)| {
                let h = self.hosts.get(p)?;
                Some(PeerResult {
                    peer_id: p.clone(),
                    hostname: h.info.hostname.clone(),
                    addr: h.info.piece_addr.clone(),
                    seed: h.info.seed,
                    state: if tp.done {
                        ResultState::Success
                    } else {
                        ResultState::Pending
                    },
                    description: String::new(),
                    bytes: self.bytes_held(task, p),
                    held: tp.done,
                    from_origin: self.fetched_from_origin(task, p),
                    done_after: tp.done_after,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::events::HostInfo;

    fn host(id: &str, seed: bool) -> HostInfo {
        HostInfo {
            peer_id: id.into(),
            hostname: format!("host-{id}"),
            piece_addr: format!(
                "10.0.0.{}:7430",
                id.len() + id.bytes().last().unwrap_or(0) as usize % 200
            ),
            zone: String::new(),
            rack: String::new(),
            seed,
            upload_slots: 16,
            rdma: false,
            host_id: String::new(),
        }
    }

    fn t0() -> Instant {
        thread_local!(static T0: Instant = Instant::now());
        T0.with(|t| *t)
    }

    fn warm(n: u32) -> WarmTask {
        WarmTask {
            task: TaskId::from_url(&format!("https://reg/v2/m/blobs/{n}")),
            url: format!("https://reg/v2/m/blobs/{n}"),
            digest: Some([n as u8; 32]),
            authorization: Some("Bearer harbor-jwt".into()),
        }
    }

    fn job(tasks: Vec<WarmTask>, scope: Scope) -> PreheatJob {
        PreheatJob {
            tasks,
            scope,
            filter: PeerFilter::default(),
            concurrent_peers: 0,
            timeout: Duration::from_secs(60),
        }
    }

    fn core(peers: &[(&str, bool)]) -> Core {
        let mut c = Core::new(Config::default());
        for (p, seed) in peers {
            c.hello(host(p, *seed), t0());
        }
        c
    }

    fn orders(out: &[Outbound]) -> Vec<(String, bool)> {
        out.iter()
            .filter_map(|o| match &o.msg {
                ToPeer::Preheat { from_origin, .. } => Some((o.to.clone(), *from_origin)),
                _ => None,
            })
            .collect()
    }

    fn state(c: &Core, id: JobId, peer: &str) -> (ResultState, String) {
        let s = c.job_status(id).unwrap();
        let r = s.tasks[0].peers.iter().find(|r| r.peer_id == peer).unwrap();
        (r.state, r.description.clone())
    }

    #[test]
    fn single_seed_peer_warms_the_seed_every_later_download_drafts() {
        let mut c = core(&[("s1", true), ("s2", true), ("p", false)]);
        let w = warm(1);
        let (id, out) = c
            .preheat(job(vec![w.clone()], Scope::SingleSeedPeer), t0())
            .unwrap();
        let o = orders(&out);
        assert_eq!(o.len(), 1);
        let seed = o[0].0.clone();
        // The seed registers: the ring names it, so it is the source.
        let reg = PeerEvent::Register {
            task: w.task,
            url: w.url.clone(),
            have: vec![],
            content_length: None,
            digest: None,
        };
        let out = c.handle(&seed, reg.clone(), t0());
        assert!(out
            .iter()
            .any(|o| o.to == seed && matches!(o.msg, ToPeer::BackToSource { .. })));
        assert!(!c.job_status(id).unwrap().finished);
        c.handle(&seed, PeerEvent::TaskDone { task: w.task }, t0());
        assert_eq!(state(&c, id, &seed).0, ResultState::Success);
        assert!(c.job_status(id).unwrap().finished);
        // A later download of the same task gets the seed as a parent, and
        // nobody is sent to the origin.
        let out = c.handle("p", reg, t0());
        assert!(out.iter().all(|o| !matches!(
            o.msg,
            ToPeer::BackToSource { .. } | ToPeer::SeedTask { .. } | ToPeer::Preheat { .. }
        )));
        assert_eq!(c.parents_of(&w.task, "p"), vec![seed]);
    }

    #[test]
    fn a_drafted_seed_gets_the_preheats_credentials() {
        let mut c = core(&[("s1", true), ("a", false), ("b", false)]);
        let w = warm(2);
        let mut j = job(vec![w.clone()], Scope::AllPeers);
        j.filter.ips = vec![addr_host(&host("a", false).piece_addr).to_string()];
        let (id, out) = c.preheat(j, t0()).unwrap();
        assert_eq!(orders(&out), vec![("a".to_string(), false)]);
        let out = c.handle(
            "a",
            PeerEvent::Register {
                task: w.task,
                url: w.url.clone(),
                have: vec![],
                content_length: None,
                digest: None,
            },
            t0(),
        );
        let drafted: Vec<_> = out
            .iter()
            .filter(|o| o.to == "s1")
            .map(|o| o.msg.clone())
            .collect();
        assert_eq!(
            drafted,
            vec![ToPeer::Preheat {
                url: w.url.clone(),
                digest: w.digest,
                authorization: w.authorization.clone(),
                from_origin: true,
            }],
            "the seed order carries the preheat's token, not a bare SeedTask"
        );
        // A failure's reason replaces the generic one of its TaskLeft.
        c.handle("a", PeerEvent::TaskLeft { task: w.task }, t0());
        assert_eq!(
            state(&c, id, "a"),
            (ResultState::Failure, "the peer dropped the task".into())
        );
        c.handle(
            "a",
            PeerEvent::TaskFailed {
                task: w.task,
                reason: "401 from the registry".into(),
            },
            t0(),
        );
        assert_eq!(
            state(&c, id, "a"),
            (ResultState::Failure, "401 from the registry".into())
        );
        assert!(c.job_status(id).unwrap().finished);
        // With the job over, seed orders are plain again.
        let out = c.handle(
            "b",
            PeerEvent::Register {
                task: warm(3).task,
                url: "https://o/x".into(),
                have: vec![],
                content_length: None,
                digest: None,
            },
            t0(),
        );
        assert!(out.iter().any(|o| matches!(o.msg, ToPeer::SeedTask { .. })));
    }

    #[test]
    fn all_peers_respects_count_and_concurrency_and_fails_what_leaves_or_times_out() {
        let mut c = core(&[
            ("s", true),
            ("a", false),
            ("b", false),
            ("d", false),
            ("e", false),
        ]);
        let w = warm(4);
        let mut j = job(vec![w.clone()], Scope::AllPeers);
        j.filter.count = Some(3);
        j.concurrent_peers = 2;
        let (id, out) = c.preheat(j, t0()).unwrap();
        let first: Vec<String> = orders(&out).into_iter().map(|(p, _)| p).collect();
        assert_eq!(first.len(), 2, "two orders at once: {first:?}");
        let chosen: Vec<String> = c.job_status(id).unwrap().tasks[0]
            .peers
            .iter()
            .map(|r| r.peer_id.clone())
            .collect();
        assert_eq!(chosen.len(), 3);
        let out = c.handle(&first[0], PeerEvent::TaskDone { task: w.task }, t0());
        let next: Vec<String> = orders(&out).into_iter().map(|(p, _)| p).collect();
        assert_eq!(next.len(), 1);
        assert!(!first.contains(&next[0]));
        c.disconnect(&first[1], t0());
        assert_eq!(
            state(&c, id, &first[1]),
            (ResultState::Failure, "the peer disconnected".into())
        );
        assert!(c.expire_jobs(t0() + Duration::from_secs(30)).is_empty());
        assert_eq!(c.expire_jobs(t0() + Duration::from_secs(61)), vec![id]);
        assert_eq!(state(&c, id, &next[0]).0, ResultState::Failure);
        assert!(c.job_status(id).unwrap().finished);
        c.forget_job(id);
        assert!(c.job_status(id).is_none());
    }

    #[test]
    fn percentage_rounds_down_with_at_least_one_and_peers_holding_it_count_at_once() {
        let mut c = core(&[("a", false), ("b", false), ("d", false)]);
        let w = warm(5);
        c.handle(
            "a",
            PeerEvent::Register {
                task: w.task,
                url: w.url.clone(),
                have: vec![],
                content_length: Some(10),
                digest: None,
            },
            t0(),
        );
        c.handle("a", PeerEvent::TaskDone { task: w.task }, t0());
        let mut j = job(vec![w.clone()], Scope::AllPeers);
        j.filter.percentage = Some(10);
        let (id, _) = c.preheat(j, t0()).unwrap();
        assert_eq!(c.job_status(id).unwrap().tasks[0].peers.len(), 1);
        let (id, out) = c
            .preheat(job(vec![w.clone()], Scope::AllPeers), t0())
            .unwrap();
        assert!(
            orders(&out).iter().all(|(p, _)| p != "a"),
            "a holds it: no order"
        );
        assert_eq!(state(&c, id, "a").0, ResultState::Success);
        assert_eq!(c.task_holders(&w.task).len(), 1);
        assert_eq!(c.task_holders(&w.task)[0].bytes, 10);
    }

    #[test]
    fn without_seeds_or_peers_a_job_is_refused() {
        let mut c = core(&[("a", false)]);
        assert_eq!(
            c.preheat(job(vec![warm(1)], Scope::SingleSeedPeer), t0())
                .unwrap_err(),
            JobRefused::NoSeed
        );
        assert_eq!(
            c.preheat(job(vec![warm(1)], Scope::AllSeedPeers), t0())
                .unwrap_err(),
            JobRefused::NoSeed
        );
        assert_eq!(
            c.preheat(job(vec![], Scope::AllPeers), t0()).unwrap_err(),
            JobRefused::NoTasks
        );
        let mut j = job(vec![warm(1)], Scope::AllPeers);
        j.filter.ips = vec!["192.0.2.1".into()];
        assert_eq!(c.preheat(j, t0()).unwrap_err(), JobRefused::NoPeers);
    }

    #[test]
    fn an_eviction_asks_every_peer_and_records_who_held_it() {
        let mut c = core(&[("s", true), ("a", false)]);
        let w = warm(6);
        let (id, out) = c
            .delete_tasks(vec![w.task], Duration::from_secs(10), t0())
            .unwrap();
        assert_eq!(
            out.iter().filter(|o| o.msg == ToPeer::DeleteCache).count(),
            2
        );
        // A download's TaskLeft is not an eviction's answer.
        c.handle("a", PeerEvent::TaskLeft { task: w.task }, t0());
        assert_eq!(state(&c, id, "a").0, ResultState::Pending);
        c.handle(
            "a",
            PeerEvent::CacheDeleted {
                task: w.task,
                held: true,
                error: None,
            },
            t0(),
        );
        c.handle(
            "s",
            PeerEvent::CacheDeleted {
                task: w.task,
                held: false,
                error: None,
            },
            t0(),
        );
        assert_eq!(state(&c, id, "a"), (ResultState::Success, "evicted".into()));
        assert_eq!(
            state(&c, id, "s"),
            (ResultState::Success, "not cached".into())
        );
        assert!(c.job_status(id).unwrap().finished);
    }
}
