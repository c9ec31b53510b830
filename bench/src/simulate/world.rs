//! The simulated cluster: an origin, seeds and peers on hosts of a
//! [`Net`], the real scheduler core, one real download core per node, and a
//! discrete-event loop that carries their messages and piece transfers.
//!
//! What is modelled, and how:
//! - **Links**: every host's upload and download capacity (`B` times the
//!   goodput fraction), shared max-min fairly by its transfers; a loopback
//!   for transfers within one host (the seed next to its origin); with
//!   zones, each zone's links out and in.
//! - **Latency**: one-way, between hosts and to the scheduler, plus more
//!   between zones. Messages on one path keep their order.
//! - **Upload server**: at most `upload_concurrency` pieces sent at once per
//!   host; a request beyond it waits in a short queue (`upload_queue_per_slot`
//!   per slot, at most `upload_queue_wait`) and is served the moment a slot
//!   frees, or is answered `Busy` when the queue is full or its wait ran
//!   out; one for a piece the parent lacks is answered `NotFound` once it
//!   has a slot, as `tcp-fallback/src/server.rs` does.
//! - **Piece fetch**: request (one way), the transfer as a flow, the last
//!   byte's way back, and, optionally, the piece's hash check at a given
//!   rate; then the download core hears the outcome.
//! - **Origin**: its host's upload cap; the seed's probe is a round trip.
//! - **Churn**: a fraction of the peers killed when the mean peer is half
//!   done: their transfers break (`ParentFailed` for their children) and
//!   the scheduler sees their streams end.
//!
//! Same inputs, same outputs: events at one instant run in the order they
//! were made, there is no randomness (peers are picked for churn or slow
//! links by a hash of their index), and the cores themselves are
//! deterministic.

use super::cores::{
    self, Action, Clock, DownloadConfig, NodeInfo, Outcome, PeerDownload, PeerEvent, Scheduler,
    SchedulerConfig, SchedulerStats, ToNode, ToPeer,
};
use super::net::{FlowId, FlowKey, LinkId, Nanos, Net};
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weightcast_tcp::{SendOnce, SendTicket};
use weightcast_types::piece::{piece_digest, PieceDigest, PieceLayout};
use weightcast_types::TaskId;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Params {
    /// Receivers (downloading peers), seeds not counted.
    pub peers: usize,
    /// The file's size, bytes.
    pub size: u64,
    /// Every host's upload and download capacity (`B`), bits per second.
    pub bandwidth: u64,
    /// Zones the hosts are spread over (round robin); 1: none.
    pub zones: usize,
    /// Each zone's link out and in, bits per second; default: 1/16 of its
    /// hosts' total bandwidth (B/2 for the emulator's 8 hosts per zone).
    pub zone_bandwidth: Option<u64>,
    /// A quarter of the peers (picked by hash) upload at B/10.
    pub heterogeneous: bool,
    /// Fraction of peers killed when the mean peer is half done.
    pub churn: f64,
    /// Seed peers.
    pub seeds: usize,
    /// The origin host's upload cap, bits per second; default: `bandwidth`.
    pub origin_bandwidth: Option<u64>,
    /// The first seed runs on the origin's host (as in the emulator): its
    /// fetches cross only that host's loopback.
    pub seed_on_origin: bool,
    /// One-way latency between two hosts of one zone, and to the scheduler.
    pub latency: Duration,
    /// Added one-way between zones.
    pub zone_latency: Duration,
    /// Pieces a host sends at once (`daemon --upload-concurrency`).
    pub upload_concurrency: u32,
    /// Requests queued per upload slot before one is answered `Busy`
    /// (`QUEUE_PER_SLOT` in `tcp-fallback`); 0: no queue.
    pub upload_queue_per_slot: u32,
    /// The longest a queued request waits for a slot (`QUEUE_WAIT`).
    pub upload_queue_wait: Duration,
    /// Children the scheduler may plan onto one host (`--upload-slots`).
    pub upload_slots: u32,
    /// A seed sends each piece once per this long (`SendOnce` in
    /// `tcp-fallback`): a child asking for a piece the seed is sending, or
    /// sent within it, is answered `Elsewhere`. `None`: always send.
    pub seed_send_once: Option<Duration>,
    /// Fraction of the link rate that carries piece bytes (TCP/IP headers
    /// take the rest: 1448 of 1514 bytes per full frame is 0.956).
    pub goodput: f64,
    /// Bytes per second of a piece's hash check, or none for instant.
    pub hash_rate: Option<f64>,
    /// A host's loopback, bytes per second.
    pub loopback: f64,
    /// How often a daemon looks at its upload load (sent when it changed).
    pub load_interval: Duration,
    /// Peers start `get` spread evenly over this long (0: all at once).
    pub arrival_spread: Duration,
    /// Simulated time after which the run stops, finished or not.
    pub time_limit: Duration,
    pub scheduler: SchedulerConfig,
    pub download: DownloadConfig,
}

impl Params {
    /// The defaults of the real binaries, for `peers` × `size` at
    /// `bandwidth` bits per second.
    pub fn new(peers: usize, size: u64, bandwidth: u64) -> Self {
        let s_over_b = size as f64 * 8.0 / bandwidth as f64;
        Self {
            peers,
            size,
            bandwidth,
            zones: 1,
            zone_bandwidth: None,
            heterogeneous: false,
            churn: 0.0,
            seeds: 1,
            origin_bandwidth: None,
            seed_on_origin: false,
            latency: Duration::from_micros(100),
            zone_latency: Duration::from_millis(1),
            upload_concurrency: 8,
            upload_queue_per_slot: 2,
            upload_queue_wait: Duration::from_secs(2),
            upload_slots: 16,
            seed_send_once: Some(weightcast_engine::config::SEED_SEND_ONCE),
            goodput: 1.0,
            hash_rate: None,
            loopback: 2e9,
            load_interval: Duration::from_millis(500),
            arrival_spread: Duration::ZERO,
            time_limit: Duration::from_secs_f64(100.0 * s_over_b + 600.0),
            scheduler: SchedulerConfig::default(),
            download: DownloadConfig::default(),
        }
    }

    pub fn layout(&self) -> PieceLayout {
        PieceLayout::for_length(self.size)
    }

    /// B in bytes per second.
    fn bytes_per_sec(&self, bits: u64) -> f64 {
        bits as f64 / 8.0
    }

    /// S/B, seconds.
    pub fn s_over_b(&self) -> f64 {
        self.size as f64 / self.bytes_per_sec(self.bandwidth)
    }

    /// The binomial pipeline bound T* = S/B + (log2 N − 1)·c/B.
    pub fn t_star(&self) -> f64 {
        let c = self.layout().piece_size as f64;
        let n = (self.peers.max(2)) as f64;
        self.s_over_b() + (n.log2() - 1.0).max(0.0) * c / self.bytes_per_sec(self.bandwidth)
    }
}

/// The swarm at one instant (sampled [`SAMPLES`] times over T*).
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub secs: f64,
    /// Bytes per second moving on all links now, over what the receivers'
    /// download links could take (N·B): 1 when every receiver takes in B.
    pub goodput: f64,
    /// Uploads in progress over the upload slots (`upload_concurrency` per
    /// host) of the hosts that hold a piece.
    pub upload_slots_busy: f64,
    /// Receivers not done, and those of them with nothing in flight, and
    /// with no candidate parent at all.
    pub downloading: usize,
    pub starved: usize,
    pub parentless: usize,
    /// Mean pieces in flight of the receivers not done.
    pub mean_in_flight: f64,
    /// Receivers done.
    pub done: usize,
}

/// Samples of the swarm per T*.
const SAMPLES: u64 = 100;

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct SimResult {
    pub peers: usize,
    pub seeds: usize,
    pub size: u64,
    pub piece_size: u64,
    pub pieces: u32,
    pub bandwidth_bits: u64,
    pub zones: usize,
    pub heterogeneous: bool,
    pub churn: f64,
    pub s_over_b: f64,
    pub t_star: f64,
    /// Completion time per receiver from the common start; `None`: killed
    /// by churn, failed, or still downloading at the time limit.
    pub peer_secs: Vec<Option<f64>>,
    pub killed: usize,
    /// Receivers that ended without the file (other than killed ones).
    pub failed: Vec<String>,
    /// Receivers still downloading when the run stopped.
    pub unfinished: usize,
    /// Bytes the origin served.
    pub origin_bytes: u64,
    /// Bytes the seeds uploaded to peers.
    pub seed_upload_bytes: u64,
    /// Bytes the slow hosts uploaded (heterogeneous).
    pub slow_upload_bytes: u64,
    /// Bytes that crossed between zones.
    pub cross_zone_bytes: u64,
    /// Piece bytes received twice by one peer (none in a correct run).
    pub duplicate_bytes: u64,
    /// Pieces verified against the digest their source recorded.
    pub verified_pieces: u64,
    /// Pieces fetched from a parent without a digest to check them by.
    pub unchecked_pieces: u64,
    /// Requests answered `Busy`, `NotFound`, and by a seed `Elsewhere`.
    pub busy_answers: u64,
    pub not_found_answers: u64,
    pub elsewhere_answers: u64,
    /// Stalled peers that asked to go to the origin.
    pub source_requests: u64,
    pub scheduler: SchedulerStats,
    /// When the last receiver finished (or the run stopped), seconds.
    pub sim_secs: f64,
    pub events: u64,
    /// Link-share recomputations, and settles that hit their guard.
    pub recomputations: u64,
    pub unconverged: u64,
    /// Timeouts the download core asked for again, already past, right
    /// after it was given one (see [`World::drain_after`]).
    pub stale_wakes: u64,
    /// The run stopped because events kept coming at one instant.
    pub stuck: bool,
    pub wall_secs: f64,
    /// For the first few receivers not done at the end: why (see
    /// `PeerDownload::stall_summary`).
    pub stalled: Vec<String>,
    /// Every receiver's first verified piece, seconds (`None`: never).
    pub first_piece_secs: Vec<Option<f64>>,
    pub timeline: Vec<Sample>,
}

impl SimResult {
    fn finished(&self) -> impl Iterator<Item = f64> + '_ {
        self.peer_secs.iter().flatten().copied()
    }

    pub fn slowest(&self) -> f64 {
        self.finished().fold(0.0, f64::max)
    }

    pub fn mean(&self) -> f64 {
        let n = self.finished().count().max(1);
        self.finished().sum::<f64>() / n as f64
    }

    /// The `q` quantile (0..=1) of the finished receivers' times.
    pub fn quantile(&self, q: f64) -> f64 {
        let mut t: Vec<f64> = self.finished().collect();
        if t.is_empty() {
            return 0.0;
        }
        t.sort_by(f64::total_cmp);
        let i = ((t.len() - 1) as f64 * q).round() as usize;
        t[i]
    }

    pub fn origin_copies(&self) -> f64 {
        self.origin_bytes as f64 / self.size as f64
    }

    pub fn seed_copies(&self) -> f64 {
        self.seed_upload_bytes as f64 / self.size as f64
    }

    /// Every receiver that was not killed holds every piece, each checked.
    pub fn all_complete(&self) -> bool {
        self.failed.is_empty()
            && !self.stuck
            && self.unfinished == 0
            && self.finished().count() + self.killed == self.peers
    }
}

struct Host {
    up: LinkId,
    down: LinkId,
    loopback: LinkId,
    zone: usize,
}

struct Node {
    id: String,
    hostname: String,
    addr: String,
    zone_label: String,
    host: usize,
    seed: bool,
    slow: bool,
    alive: bool,
    download: Option<PeerDownload>,
    timeout_at: Option<Nanos>,
    /// Verified pieces, which its upload server serves.
    have: Vec<bool>,
    have_bytes: u64,
    active_uploads: u32,
    /// Requests waiting for an upload slot, oldest first.
    queue: VecDeque<usize>,
    load_sent: u32,
    /// A seed's send-once table: the upload server's own
    /// (`weightcast_tcp::SendOnce`), on the simulated clock.
    send_once: Option<Arc<SendOnce>>,
    done_at: Option<Nanos>,
    failed: Option<String>,
}

/// One piece fetch, from the request to the answer.
struct Transfer {
    child: usize,
    /// `None`: the origin.
    parent: Option<usize>,
    num: u32,
    bytes: u64,
    expected: Option<PieceDigest>,
    requested: Nanos,
    flow: Option<FlowId>,
    outcome: Option<Outcome>,
    /// The child is gone: nothing answers it.
    dropped: bool,
    /// A seed's send-once ticket for this send, while it holds one.
    ticket: Option<SendTicket>,
    /// Waiting in the parent's upload queue since then.
    queued: Option<Nanos>,
}

enum Ev {
    Start(usize),
    Hello(usize),
    ToScheduler(usize, PeerEvent),
    Disconnect(usize),
    ToNode(usize, ToPeer),
    Request(usize),
    /// A queued request's wait runs out (if it still waits since then).
    QueueWaitOver(usize, Nanos),
    Answer(usize),
    FlowDone(FlowKey),
    Timeout(usize),
    Probed(usize),
    LoadTick(usize),
    Churn,
    Sample,
}

pub struct World {
    p: Params,
    clock: Clock,
    /// Simulated time 0 on the clock of the real send-once tables.
    epoch: Instant,
    layout: PieceLayout,
    digests: Vec<PieceDigest>,
    task: TaskId,
    url: String,
    net: Net<usize>,
    hosts: Vec<Host>,
    zone_out: Vec<LinkId>,
    zone_in: Vec<LinkId>,
    nodes: Vec<Node>,
    by_id: HashMap<String, usize>,
    scheduler: Scheduler,
    transfers: Vec<Option<Transfer>>,
    free_transfers: Vec<usize>,
    heap: BinaryHeap<Reverse<(Nanos, u64, u32)>>,
    events: Vec<Option<Ev>>,
    free_events: Vec<u32>,
    seq: u64,
    now: Nanos,
    processed: u64,
    churned: bool,
    killed: usize,
    peers_over: usize,
    received_bytes: u64,
    origin_bytes: u64,
    seed_upload_bytes: u64,
    slow_upload_bytes: u64,
    cross_zone_bytes: u64,
    duplicate_bytes: u64,
    verified_pieces: u64,
    unchecked_pieces: u64,
    busy_answers: u64,
    not_found_answers: u64,
    elsewhere_answers: u64,
    stale_wakes: u64,
    same_instant: u64,
    /// The run stopped because time stood still.
    stuck: bool,
    first_piece: Vec<Option<Nanos>>,
    timeline: Vec<Sample>,
}

/// splitmix64: a fixed spread of node indexes (which peers are slow, which
/// are killed), the same in every run.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn nanos(d: Duration) -> Nanos {
    d.as_nanos() as Nanos
}

/// Events at one simulated instant after which the run is declared stuck
/// (a loop between the cores and the world that time never ends).
const MAX_EVENTS_AT_ONE_INSTANT: u64 = 20_000_000;

/// The host of the origin server.
const ORIGIN_HOST: usize = 0;

impl World {
    pub fn new(p: Params) -> Self {
        let clock = Clock::new();
        let layout = p.layout();
        let digests = (0..layout.piece_count())
            .map(|n| piece_digest(format!("piece {n} of the simulated file").as_bytes()))
            .collect();
        let url = "http://origin.sim/model.safetensors".to_string();
        let mut net = Net::default();
        let zones = p.zones.max(1);
        let total_hosts = p.peers + p.seeds + 1;
        let rate = |bits: u64| bits as f64 / 8.0 * p.goodput;
        let (mut zone_out, mut zone_in) = (Vec::new(), Vec::new());
        if zones > 1 {
            for z in 0..zones {
                let hosts_here = (0..total_hosts).filter(|h| h % zones == z).count() as u64;
                let bits = p
                    .zone_bandwidth
                    .unwrap_or(hosts_here * p.bandwidth / 16)
                    .max(1);
                zone_out.push(net.add_link(rate(bits)));
                zone_in.push(net.add_link(rate(bits)));
            }
        }
        let mut hosts = Vec::new();
        let mut add_host = |net: &mut Net<usize>, up_bits: u64, zone: usize| {
            hosts.push(Host {
                up: net.add_link(rate(up_bits)),
                down: net.add_link(rate(p.bandwidth)),
                loopback: net.add_link(p.loopback),
                zone,
            });
            hosts.len() - 1
        };
        add_host(
            &mut net,
            p.origin_bandwidth.unwrap_or(p.bandwidth),
            ORIGIN_HOST,
        );
        let mut nodes = Vec::new();
        let piece_count = layout.piece_count() as usize;
        let node = |id: String, host: usize, zone: usize, seed: bool, slow: bool| Node {
            hostname: format!("host-{host:05}"),
            addr: format!(
                "10.{}.{}.{}:7430",
                host >> 16,
                (host >> 8) & 255,
                host & 255
            ),
            zone_label: if zones > 1 {
                format!("zone-{zone}")
            } else {
                String::new()
            },
            id,
            host,
            seed,
            slow,
            alive: true,
            download: None,
            timeout_at: None,
            have: vec![false; piece_count],
            have_bytes: 0,
            active_uploads: 0,
            queue: VecDeque::new(),
            load_sent: 0,
            send_once: match (seed, p.seed_send_once) {
                (true, Some(hold)) => Some(SendOnce::new(hold)),
                _ => None,
            },
            done_at: None,
            failed: None,
        };
        for s in 0..p.seeds {
            let zone = s % zones;
            let host = if s == 0 && p.seed_on_origin {
                ORIGIN_HOST
            } else {
                add_host(&mut net, p.bandwidth, zone)
            };
            let zone = if host == ORIGIN_HOST { 0 } else { zone };
            nodes.push(node(format!("seed-{s:03}"), host, zone, true, false));
        }
        for i in 0..p.peers {
            let zone = i % zones;
            let slow = p.heterogeneous && mix(i as u64).is_multiple_of(4);
            let up = if slow { p.bandwidth / 10 } else { p.bandwidth };
            let host = add_host(&mut net, up, zone);
            nodes.push(node(format!("peer-{i:05}"), host, zone, false, slow));
        }
        let by_id = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        let scheduler = Scheduler::new(p.scheduler.clone(), clock);
        Self {
            clock,
            layout,
            digests,
            epoch: Instant::now(),
            task: TaskId::from_url(&url),
            url,
            net,
            hosts,
            zone_out,
            zone_in,
            nodes,
            by_id,
            scheduler,
            transfers: Vec::new(),
            free_transfers: Vec::new(),
            heap: BinaryHeap::new(),
            events: Vec::new(),
            free_events: Vec::new(),
            seq: 0,
            now: 0,
            processed: 0,
            churned: false,
            killed: 0,
            peers_over: 0,
            received_bytes: 0,
            origin_bytes: 0,
            seed_upload_bytes: 0,
            slow_upload_bytes: 0,
            cross_zone_bytes: 0,
            duplicate_bytes: 0,
            verified_pieces: 0,
            unchecked_pieces: 0,
            busy_answers: 0,
            not_found_answers: 0,
            elsewhere_answers: 0,
            stale_wakes: 0,
            same_instant: 0,
            stuck: false,
            first_piece: Vec::new(),
            timeline: Vec::new(),
            p,
        }
    }

    fn push(&mut self, at: Nanos, ev: Ev) {
        let slot = match self.free_events.pop() {
            Some(s) => {
                self.events[s as usize] = Some(ev);
                s
            }
            None => {
                self.events.push(Some(ev));
                self.events.len() as u32 - 1
            }
        };
        self.seq += 1;
        self.heap.push(Reverse((at.max(self.now), self.seq, slot)));
    }

    fn host_zone(&self, host: usize) -> usize {
        self.hosts[host].zone
    }

    /// One-way latency between two hosts.
    fn latency(&self, a: usize, b: usize) -> Nanos {
        if a == b {
            return 0;
        }
        let mut l = nanos(self.p.latency);
        if self.host_zone(a) != self.host_zone(b) {
            l += nanos(self.p.zone_latency);
        }
        l
    }

    /// One-way latency between a node and the scheduler (in zone 0).
    fn sched_latency(&self, node: usize) -> Nanos {
        let mut l = nanos(self.p.latency);
        if self.host_zone(self.nodes[node].host) != 0 {
            l += nanos(self.p.zone_latency);
        }
        l
    }

    fn path(&self, from: usize, to: usize) -> Vec<LinkId> {
        if from == to {
            return vec![self.hosts[from].loopback];
        }
        let mut p = vec![self.hosts[from].up, self.hosts[to].down];
        let (zf, zt) = (self.host_zone(from), self.host_zone(to));
        if zf != zt {
            p.push(self.zone_out[zf]);
            p.push(self.zone_in[zt]);
        }
        p
    }

    /// Runs to the end: every receiver done, killed or failed, or the time limit.
    pub fn run(mut self) -> SimResult {
        let started = std::time::Instant::now();
        for s in 0..self.p.seeds {
            self.push(0, Ev::Start(s));
        }
        let spread = nanos(self.p.arrival_spread);
        for i in 0..self.p.peers {
            let at = if self.p.peers > 1 {
                spread * i as u64 / (self.p.peers as u64 - 1)
            } else {
                0
            };
            self.push(at, Ev::Start(self.p.seeds + i));
        }
        let interval = nanos(self.p.load_interval).max(1);
        for n in 0..self.nodes.len() {
            self.push(mix(n as u64 ^ 0x5eed) % interval, Ev::LoadTick(n));
        }
        self.first_piece = vec![None; self.nodes.len()];
        self.push(0, Ev::Sample);
        let limit = nanos(self.p.time_limit);
        while let Some(&Reverse((t, _, slot))) = self.heap.peek() {
            if t > self.now && self.net.dirty() {
                self.settle();
                continue;
            }
            if t > limit || self.peers_over == self.p.peers {
                break;
            }
            self.heap.pop();
            if t == self.now {
                self.same_instant += 1;
                if self.same_instant > MAX_EVENTS_AT_ONE_INSTANT {
                    self.stuck = true;
                    break;
                }
            } else {
                self.same_instant = 0;
            }
            self.now = t;
            self.processed += 1;
            let ev = self.events[slot as usize]
                .take()
                .expect("a queued event's slot holds it until it is popped");
            self.free_events.push(slot);
            self.dispatch(ev);
        }
        self.result(started.elapsed().as_secs_f64())
    }

    fn settle(&mut self) {
        let mut done = Vec::new();
        self.net.settle(self.now, |k, t| done.push((k, t)));
        for (k, t) in done {
            self.push(t, Ev::FlowDone(k));
        }
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Start(n) => self.start(n),
            Ev::Hello(n) => {
                let node = &self.nodes[n];
                if !node.alive {
                    return;
                }
                let info = NodeInfo {
                    peer_id: &node.id,
                    hostname: &node.hostname,
                    piece_addr: &node.addr,
                    zone: &node.zone_label,
                    seed: node.seed,
                    upload_slots: self.p.upload_slots,
                };
                let out = self.scheduler.hello(&info, self.now);
                self.send_out(out);
            }
            Ev::ToScheduler(n, ev) => {
                let id = self.nodes[n].id.clone();
                let out = self.scheduler.handle(&id, ev, self.now);
                self.send_out(out);
            }
            Ev::Disconnect(n) => {
                let id = self.nodes[n].id.clone();
                let out = self.scheduler.disconnect(&id, self.now);
                self.send_out(out);
            }
            Ev::ToNode(n, msg) => self.deliver_to_node(n, msg),
            Ev::Request(t) => self.request(t),
            Ev::QueueWaitOver(t, since) => self.queue_wait_over(t, since),
            Ev::Answer(t) => self.answer(t),
            Ev::FlowDone(k) => self.flow_done(k),
            Ev::Timeout(n) => {
                if self.nodes[n].timeout_at != Some(self.now) {
                    return;
                }
                self.nodes[n].timeout_at = None;
                if let Some(d) = self.nodes[n].download.as_mut() {
                    d.timeout(self.now);
                }
                self.drain_after(n, true);
            }
            Ev::Probed(n) => {
                if let Some(d) = self.nodes[n].download.as_mut() {
                    d.probed(self.now, self.p.size);
                }
                self.drain(n);
            }
            Ev::LoadTick(n) => {
                let node = &mut self.nodes[n];
                if !node.alive {
                    return;
                }
                if node.active_uploads != node.load_sent {
                    node.load_sent = node.active_uploads;
                    let ev = cores::load_report(node.active_uploads);
                    let at = self.now + self.sched_latency(n);
                    self.push(at, Ev::ToScheduler(n, ev));
                }
                let at = self.now + nanos(self.p.load_interval).max(1);
                self.push(at, Ev::LoadTick(n));
            }
            Ev::Churn => self.churn(),
            Ev::Sample => self.sample(),
        }
    }

    fn sample(&mut self) {
        let receivers = &self.nodes[self.p.seeds..];
        let capacity = self.p.peers as f64 * self.p.bandwidth as f64 / 8.0;
        let holders = self.nodes.iter().filter(|n| n.alive && n.have_bytes > 0);
        let (slots, busy) = holders.fold((0u64, 0u64), |(s, b), n| {
            (
                s + self.p.upload_concurrency as u64,
                b + n.active_uploads as u64,
            )
        });
        let downloading: Vec<&PeerDownload> = receivers
            .iter()
            .filter(|n| n.alive && n.done_at.is_none())
            .filter_map(|n| n.download.as_ref())
            .collect();
        self.timeline.push(Sample {
            secs: self.now as f64 / 1e9,
            goodput: self.net.total_rate() / capacity,
            upload_slots_busy: busy as f64 / slots.max(1) as f64,
            downloading: downloading.len(),
            starved: downloading.iter().filter(|d| d.in_flight() == 0).count(),
            parentless: downloading.iter().filter(|d| d.parent_count() == 0).count(),
            mean_in_flight: downloading.iter().map(|d| d.in_flight()).sum::<usize>() as f64
                / downloading.len().max(1) as f64,
            done: receivers.iter().filter(|n| n.done_at.is_some()).count(),
        });
        let every = (self.p.t_star() * 1e9 / SAMPLES as f64) as Nanos;
        self.push(self.now + every.max(1), Ev::Sample);
    }

    fn start(&mut self, n: usize) {
        let at = self.now + self.sched_latency(n);
        self.push(at, Ev::Hello(n));
        if !self.nodes[n].seed {
            // A peer's `get`: a swarm download that registers the task.
            let node = &mut self.nodes[n];
            node.download = Some(PeerDownload::new(
                self.p.download.clone(),
                &node.id,
                self.task,
                &self.url,
                false,
                self.clock,
                self.now,
            ));
            self.drain(n);
        }
    }

    fn send_out(&mut self, out: Vec<ToNode>) {
        for m in out {
            let Some(&n) = self.by_id.get(&m.to) else {
                continue;
            };
            let at = self.now + self.sched_latency(n);
            self.push(at, Ev::ToNode(n, m.msg));
        }
    }

    fn deliver_to_node(&mut self, n: usize, msg: ToPeer) {
        let now = self.now;
        let node = &mut self.nodes[n];
        if !node.alive {
            return;
        }
        if cores::is_seed_order(&msg) {
            if node.download.is_none() {
                node.download = Some(PeerDownload::new(
                    self.p.download.clone(),
                    &node.id,
                    self.task,
                    &self.url,
                    true,
                    self.clock,
                    now,
                ));
            }
        } else if let Some(d) = node.download.as_mut() {
            d.deliver(now, msg);
        }
        self.drain(n);
    }

    /// Carries out what node `n`'s download asks for, then re-arms its timer.
    fn drain(&mut self, n: usize) {
        self.drain_after(n, false);
    }

    /// [`World::drain`]; `after_timeout`: the download was just given its
    /// timeout. A deadline it still names at or before now is then dropped
    /// until its next input: firing it again would change nothing. (The
    /// core keeps naming a parent's `Busy` wait after it has passed, so
    /// its `poll_timeout` stays in the past; the engine's shell, which
    /// sleeps until that instant, wakes at once, again and again, until
    /// some other input arrives.)
    fn drain_after(&mut self, n: usize, after_timeout: bool) {
        let now = self.now;
        while let Some(action) = self.nodes[n]
            .download
            .as_mut()
            .and_then(|d| d.next_action())
        {
            match action {
                Action::Send(ev) => {
                    let at = now + self.sched_latency(n);
                    self.push(at, Ev::ToScheduler(n, ev));
                }
                Action::Open => {
                    if let Some(d) = self.nodes[n].download.as_mut() {
                        d.opened(now);
                    }
                }
                Action::Probe => {
                    let host = self.nodes[n].host;
                    let at = self.now + 2 * self.latency(host, ORIGIN_HOST);
                    self.push(at, Ev::Probed(n));
                }
                Action::CheckWholeDigest => {
                    if let Some(d) = self.nodes[n].download.as_mut() {
                        d.whole_digest(now, [0; 32]);
                    }
                }
                Action::FetchOrigin { num } => self.begin_fetch(n, None, num, None),
                Action::FetchParent {
                    num,
                    parent,
                    expected,
                } => {
                    let p = self.by_id.get(&parent).copied();
                    match p {
                        Some(p) => self.begin_fetch(n, Some(p), num, expected),
                        // A parent the world never made: the core's bug, not
                        // the network's; answered as a broken parent.
                        None => {
                            let t = self.new_transfer(n, None, num, expected);
                            let tr = self.transfers[t].as_mut().expect("just made");
                            tr.outcome = Some(Outcome::ParentFailed);
                            self.push(self.now, Ev::Answer(t));
                        }
                    }
                }
                Action::Finished(r) => {
                    let node = &mut self.nodes[n];
                    match r {
                        Ok(()) => node.done_at = Some(self.now),
                        Err(e) => node.failed = Some(e),
                    }
                    if !node.seed {
                        self.peers_over += 1;
                    }
                }
            }
        }
        // A deadline already past fires now, not in the past.
        let next = self.nodes[n]
            .download
            .as_ref()
            .and_then(|d| d.poll_timeout())
            .map(|t| t.max(now))
            .filter(|&t| !(after_timeout && t <= now));
        if after_timeout && next.is_none() {
            self.stale_wakes += 1;
        }
        let node = &mut self.nodes[n];
        if next != node.timeout_at {
            node.timeout_at = next;
            if let Some(t) = next {
                self.push(t, Ev::Timeout(n));
            }
        }
    }

    fn new_transfer(
        &mut self,
        child: usize,
        parent: Option<usize>,
        num: u32,
        expected: Option<PieceDigest>,
    ) -> usize {
        let t = Transfer {
            child,
            parent,
            num,
            bytes: self.layout.piece_len(num),
            expected,
            requested: self.now,
            flow: None,
            outcome: None,
            dropped: false,
            queued: None,
            ticket: None,
        };
        match self.free_transfers.pop() {
            Some(i) => {
                self.transfers[i] = Some(t);
                i
            }
            None => {
                self.transfers.push(Some(t));
                self.transfers.len() - 1
            }
        }
    }

    fn parent_host(&self, parent: Option<usize>) -> usize {
        parent.map_or(ORIGIN_HOST, |p| self.nodes[p].host)
    }

    fn begin_fetch(
        &mut self,
        child: usize,
        parent: Option<usize>,
        num: u32,
        expected: Option<PieceDigest>,
    ) {
        if parent.is_some() && expected.is_none() {
            self.unchecked_pieces += 1;
        }
        let t = self.new_transfer(child, parent, num, expected);
        let at = self.now + self.latency(self.nodes[child].host, self.parent_host(parent));
        self.push(at, Ev::Request(t));
    }

    /// A request reaches the parent's upload server (or the origin).
    fn request(&mut self, t: usize) {
        let Some(tr) = self.transfers[t].as_ref() else {
            return;
        };
        if tr.dropped {
            self.free_transfer(t);
            return;
        }
        let (parent, num, child) = (tr.parent, tr.num, tr.child);
        let now = self.now;
        let Some(p) = parent else {
            self.serve(t);
            return;
        };
        let at = self.instant(now);
        let who = self.host_addr(self.nodes[child].host);
        let node = &self.nodes[p];
        // The server's order: a seed's send-once check, then an upload
        // slot (waiting in its queue), then whether it holds the piece.
        let mut ticket = None;
        let elsewhere = match &node.send_once {
            Some(once) if node.alive => match once.admit(self.task, num, who, at) {
                Ok(tk) => {
                    ticket = Some(tk);
                    None
                }
                Err(wait) => Some(nanos(wait)),
            },
            _ => None,
        };
        if !node.alive {
            self.answer_now(t, Outcome::ParentFailed);
        } else if let Some(wait) = elsewhere {
            self.elsewhere_answers += 1;
            let retry_in = Duration::from_nanos(wait.max(1_000_000));
            self.answer_now(t, Outcome::Elsewhere { retry_in });
        } else if node.active_uploads < self.p.upload_concurrency {
            self.hold_ticket(t, ticket);
            self.serve(t);
        } else if (node.queue.len() as u32)
            < self.p.upload_concurrency * self.p.upload_queue_per_slot
        {
            // Admitted by the send-once check before it waits (its ticket
            // is taken), as the real server does.
            self.hold_ticket(t, ticket);
            self.nodes[p].queue.push_back(t);
            if let Some(tr) = self.transfers[t].as_mut() {
                tr.queued = Some(now);
            }
            let at = now + nanos(self.p.upload_queue_wait);
            self.push(at, Ev::QueueWaitOver(t, now));
        } else {
            self.busy_answers += 1;
            self.answer_now(t, Outcome::Busy);
        }
    }

    /// The outcome of a request is sent back now, without a transfer.
    fn answer_now(&mut self, t: usize, o: Outcome) {
        let Some(tr) = self.transfers[t].as_mut() else {
            return;
        };
        tr.outcome = Some(o);
        let (parent, child) = (tr.parent, tr.child);
        let (from, to) = (self.parent_host(parent), self.nodes[child].host);
        let at = self.now + self.latency(from, to);
        self.push(at, Ev::Answer(t));
    }

    /// A queued request waited its longest: answered `Busy`, if it still
    /// waits since `since`.
    fn queue_wait_over(&mut self, t: usize, since: Nanos) {
        let Some(tr) = self.transfers[t].as_mut() else {
            return;
        };
        if tr.queued != Some(since) {
            return;
        }
        tr.queued = None;
        let parent = tr.parent;
        if let Some(p) = parent {
            self.nodes[p].queue.retain(|&q| q != t);
            self.drop_ticket(t);
        }
        if self.transfers[t].as_ref().is_some_and(|tr| tr.dropped) {
            self.free_transfer(t);
            return;
        }
        self.busy_answers += 1;
        self.answer_now(t, Outcome::Busy);
    }

    /// A slot of `p` freed: its oldest queued request takes it.
    fn serve_queued(&mut self, p: usize) {
        while self.nodes[p].alive && self.nodes[p].active_uploads < self.p.upload_concurrency {
            let Some(t) = self.nodes[p].queue.pop_front() else {
                return;
            };
            let Some(tr) = self.transfers[t].as_mut() else {
                continue;
            };
            tr.queued = None;
            if tr.dropped {
                self.free_transfer(t);
                continue;
            }
            self.serve(t);
        }
    }

    /// The simulated time `at` on the clock the send-once table reads.
    fn instant(&self, at: Nanos) -> Instant {
        self.epoch + Duration::from_nanos(at)
    }

    /// The address a seed sees host `h`'s requests come from.
    fn host_addr(&self, h: usize) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(h as u128 + 1))
    }

    /// Transfer `t` keeps the send-once ticket it was admitted with.
    fn hold_ticket(&mut self, t: usize, ticket: Option<SendTicket>) {
        if let Some(tr) = self.transfers[t].as_mut() {
            tr.ticket = ticket;
        }
    }

    /// Transfer `t` gives its send-once ticket back unsent.
    fn drop_ticket(&mut self, t: usize) {
        if let Some(tr) = self.transfers[t].as_mut() {
            tr.ticket = None;
        }
    }

    /// The request holds an upload slot (or goes to the origin): the
    /// piece is sent, or `NotFound` answered.
    fn serve(&mut self, t: usize) {
        let Some(tr) = self.transfers[t].as_ref() else {
            return;
        };
        let (child, parent, num, bytes) = (tr.child, tr.parent, tr.num, tr.bytes);
        if let Some(p) = parent {
            if !self.nodes[p].have[num as usize] {
                self.drop_ticket(t);
                self.not_found_answers += 1;
                self.answer_now(t, Outcome::NotFound);
                return;
            }
        }
        let from = self.parent_host(parent);
        let to = self.nodes[child].host;
        let load = match parent {
            Some(p) => {
                let node = &mut self.nodes[p];
                node.active_uploads += 1;
                Some(node.active_uploads + node.queue.len() as u32)
            }
            None => None,
        };
        let path = self.path(from, to);
        let flow = self.net.start(self.now, bytes, &path, t);
        if let Some(tr) = self.transfers[t].as_mut() {
            tr.flow = Some(flow);
            let digest = self.digests[num as usize];
            let ok = tr.expected.is_none_or(|e| e == digest);
            tr.outcome = Some(if ok {
                Outcome::Verified {
                    digest,
                    parent_load: load,
                }
            } else {
                Outcome::Corrupt
            });
        }
    }

    fn flow_done(&mut self, k: FlowKey) {
        if !self.net.current(k) {
            return;
        }
        let Some((t, _)) = self.net.remove(self.now, k.flow) else {
            return;
        };
        self.transfer_ended(t, true);
    }

    /// A transfer's flow is over: `whole` when every byte arrived.
    fn transfer_ended(&mut self, t: usize, whole: bool) {
        let Some(tr) = self.transfers[t].as_mut() else {
            return;
        };
        tr.flow = None;
        let ticket = tr.ticket.take();
        let (child, parent, bytes) = (tr.child, tr.parent, tr.bytes);
        let from = self.parent_host(parent);
        let to = self.nodes[child].host;
        if let Some(p) = parent {
            let now = self.now;
            let at = self.instant(now);
            let node = &mut self.nodes[p];
            node.active_uploads = node.active_uploads.saturating_sub(1);
            if let (Some(tk), true) = (ticket, whole) {
                tk.sent(at);
            }
            self.serve_queued(p);
        }
        if !whole {
            return;
        }
        match parent {
            None => self.origin_bytes += bytes,
            Some(p) => {
                if self.nodes[p].seed {
                    self.seed_upload_bytes += bytes;
                }
                if self.nodes[p].slow {
                    self.slow_upload_bytes += bytes;
                }
            }
        }
        if self.host_zone(from) != self.host_zone(to) {
            self.cross_zone_bytes += bytes;
        }
        let hash = self
            .p
            .hash_rate
            .map_or(0, |r| (bytes as f64 / r * 1e9) as Nanos);
        let at = self.now + self.latency(from, to) + hash;
        self.push(at, Ev::Answer(t));
    }

    fn free_transfer(&mut self, t: usize) {
        self.transfers[t] = None;
        self.free_transfers.push(t);
    }

    /// The outcome of a fetch reaches the child.
    fn answer(&mut self, t: usize) {
        let Some(tr) = self.transfers[t].take() else {
            return;
        };
        self.free_transfers.push(t);
        let n = tr.child;
        if tr.dropped || !self.nodes[n].alive {
            return;
        }
        let outcome = tr.outcome.unwrap_or(Outcome::ParentFailed);
        if let Outcome::Verified { .. } = outcome {
            let node = &mut self.nodes[n];
            let slot = &mut node.have[tr.num as usize];
            if *slot {
                self.duplicate_bytes += tr.bytes;
            } else {
                *slot = true;
                node.have_bytes += tr.bytes;
                self.verified_pieces += 1;
                self.first_piece[n].get_or_insert(self.now);
                if !node.seed {
                    self.received_bytes += tr.bytes;
                    self.maybe_churn();
                }
            }
        }
        let from = tr.parent.map(|p| self.nodes[p].id.clone());
        let took = self.now - tr.requested;
        if let Some(d) = self.nodes[n].download.as_mut() {
            d.piece(self.now, tr.num, from.as_deref(), tr.bytes, took, outcome);
        }
        self.drain(n);
    }

    fn maybe_churn(&mut self) {
        if self.churned || self.p.churn <= 0.0 {
            return;
        }
        let half = self.p.size as u128 * self.p.peers as u128 / 2;
        if self.received_bytes as u128 >= half {
            self.churned = true;
            self.push(self.now, Ev::Churn);
        }
    }

    /// Kills the churn fraction of the receivers (picked by hash) at once.
    fn churn(&mut self) {
        let want = (self.p.churn * self.p.peers as f64).round() as usize;
        let mut order: Vec<usize> = (0..self.p.peers).map(|i| self.p.seeds + i).collect();
        order.sort_by_key(|&n| mix(n as u64 ^ 0xc4u64));
        let victims: Vec<usize> = order
            .into_iter()
            .filter(|&n| self.nodes[n].done_at.is_none() && self.nodes[n].alive)
            .take(want)
            .collect();
        for &n in &victims {
            let node = &mut self.nodes[n];
            node.alive = false;
            node.download = None;
            node.timeout_at = None;
            self.killed += 1;
            if node.failed.is_none() {
                self.peers_over += 1;
            }
        }
        // Requests queued at the dead: their connections broke.
        for &n in &victims {
            for t in std::mem::take(&mut self.nodes[n].queue) {
                let Some(tr) = self.transfers[t].as_mut() else {
                    continue;
                };
                tr.queued = None;
                if tr.dropped || !self.nodes[tr.child].alive {
                    self.free_transfer(t);
                } else {
                    self.answer_now(t, Outcome::ParentFailed);
                }
            }
        }
        // Transfers to or from the dead: cut their flows; a live child hears
        // that its parent broke.
        // A request still on its way finds its parent dead when it arrives
        // (`request`); an answer on its way to a dead child is dropped.
        for t in 0..self.transfers.len() {
            let Some(tr) = self.transfers[t].as_ref() else {
                continue;
            };
            let (child, parent, flow) = (tr.child, tr.parent, tr.flow);
            let child_dead = !self.nodes[child].alive;
            let parent_dead = parent.is_some_and(|p| !self.nodes[p].alive);
            if !child_dead && !parent_dead {
                continue;
            }
            if let Some(f) = flow {
                self.net.remove(self.now, f);
                self.transfer_ended(t, false);
                if !child_dead {
                    if let Some(tr) = self.transfers[t].as_mut() {
                        tr.outcome = Some(Outcome::ParentFailed);
                    }
                    let at =
                        self.now + self.latency(self.parent_host(parent), self.nodes[child].host);
                    self.push(at, Ev::Answer(t));
                } else {
                    self.free_transfer(t);
                    continue;
                }
            }
            if child_dead {
                if let Some(tr) = self.transfers[t].as_mut() {
                    tr.dropped = true;
                }
            }
        }
        for n in victims {
            let at = self.now + self.sched_latency(n);
            self.push(at, Ev::Disconnect(n));
        }
    }

    fn result(&self, wall_secs: f64) -> SimResult {
        let peers = &self.nodes[self.p.seeds..];
        let secs = |t: Nanos| t as f64 / 1e9;
        SimResult {
            peers: self.p.peers,
            seeds: self.p.seeds,
            size: self.p.size,
            piece_size: self.layout.piece_size,
            pieces: self.layout.piece_count(),
            bandwidth_bits: self.p.bandwidth,
            zones: self.p.zones,
            heterogeneous: self.p.heterogeneous,
            churn: self.p.churn,
            s_over_b: self.p.s_over_b(),
            t_star: self.p.t_star(),
            peer_secs: peers
                .iter()
                .map(|n| n.done_at.filter(|_| n.alive).map(secs))
                .collect(),
            killed: self.killed,
            failed: peers
                .iter()
                .filter_map(|n| n.failed.as_ref().map(|e| format!("{}: {e}", n.id)))
                .collect(),
            unfinished: peers
                .iter()
                .filter(|n| n.alive && n.done_at.is_none() && n.failed.is_none())
                .count(),
            stalled: peers
                .iter()
                .filter(|n| n.alive && n.done_at.is_none() && n.failed.is_none())
                .filter_map(|n| {
                    let d = n.download.as_ref()?;
                    Some(format!("{}: {}", n.id, d.stall_summary(&n.have, self.now)))
                })
                .take(5)
                .collect(),
            origin_bytes: self.origin_bytes,
            seed_upload_bytes: self.seed_upload_bytes,
            slow_upload_bytes: self.slow_upload_bytes,
            cross_zone_bytes: self.cross_zone_bytes,
            duplicate_bytes: self.duplicate_bytes,
            verified_pieces: self.verified_pieces,
            unchecked_pieces: self.unchecked_pieces,
            busy_answers: self.busy_answers,
            not_found_answers: self.not_found_answers,
            elsewhere_answers: self.elsewhere_answers,
            source_requests: self
                .nodes
                .iter()
                .filter_map(|n| n.download.as_ref())
                .map(|d| d.source_requests() as u64)
                .sum(),
            scheduler: self.scheduler.stats(),
            sim_secs: secs(self.now),
            events: self.processed,
            recomputations: self.net.recomputations,
            unconverged: self.net.unconverged,
            stale_wakes: self.stale_wakes,
            stuck: self.stuck,
            wall_secs,
            first_piece_secs: self.first_piece[self.p.seeds..]
                .iter()
                .map(|t| t.map(secs))
                .collect(),
            timeline: self.timeline.clone(),
        }
    }
}
