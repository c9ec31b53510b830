//! `weightcast-bench sched-load`: one real `weightcast scheduler` process
//! on loopback under thousands of real gRPC sessions.
//!
//! Each simulated peer is only its scheduler session: a `hello`, a
//! `Register` for the one task, `PieceDone` announcements at a paced
//! aggregate rate, and `TaskDone`. One seed peer registers first, gives
//! the length and announces every piece, so that the scheduler plans
//! parents exactly as it does for daemons. The generator timestamps what it
//! sends and what comes back, on one clock:
//!
//! - *register round trip*: `Register` sent → the `Meta` it causes back at
//!   the same peer (the actor handled it, phase 1 included);
//! - *announce → available*: a parent's `PieceDone` sent → each child's
//!   `Available` for it received (the decision fanned out);
//! - *first piece → new parent*: a peer's first `PieceDone` (it becomes a
//!   parent) → a `Parents` message that names it, with that one piece, at
//!   a child short of parents (the top-up's plan);
//! - *decisions per second*: the scheduler's handled-message counter over
//!   a burst in which every peer announces as fast as its stream takes;
//! - *memory per peer*: the scheduler's RSS with every session open and
//!   every announcement in, less its RSS before the first session;
//! - *CPU per 1,000 announcements*: the scheduler's user + system time over
//!   the paced phase.
//!
//! The generator shares the machine's cores with the scheduler, so the
//! latencies include its own scheduling delays: they bound the
//! scheduler's from above.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use weightcast_proto::pb::{self, peer_message::Msg as PeerMsg, scheduler_message::Msg};
use weightcast_testkit::cluster::{http_get, metric, Cluster};
use weightcast_types::TaskId;

/// What to load the scheduler with.
#[derive(Debug, Clone)]
pub struct LoadParams {
    /// The `weightcast` binary.
    pub bin: PathBuf,
    /// Peers besides the seed.
    pub peers: usize,
    /// Pieces of the task.
    pub pieces: u32,
    /// Pieces each peer announces in the paced phase.
    pub announce_per_peer: u32,
    /// Announcements per second, all peers together, in the paced phase.
    pub rate: u64,
    /// Registrations per second.
    pub register_rate: u64,
    /// Sessions opened at once while connecting.
    pub connect_parallel: usize,
}

/// A latency distribution, microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl Latency {
    fn of(mut v: Vec<u64>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1e3;
        Self {
            count: v.len(),
            p50_us: at(0.5),
            p90_us: at(0.9),
            p99_us: at(0.99),
            max_us: at(1.0),
        }
    }
}

/// What one load run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    pub peers: usize,
    pub pieces: u32,
    pub connect_secs: f64,
    pub register: Latency,
    /// Peers that got parents in answer to their registration.
    pub parents_at_register: usize,
    pub announcements: u64,
    pub announce_secs: f64,
    /// Announcements per second actually sent in the paced phase.
    pub announce_rate: f64,
    pub available: Latency,
    /// A peer's first announcement → a child told of it as a new parent.
    pub new_parent: Latency,
    /// Scheduler user + system CPU seconds over the paced phase.
    pub cpu_secs: f64,
    pub cpu_ms_per_1000_announcements: f64,
    /// Messages the scheduler handled per second in the burst.
    pub burst_messages_per_sec: f64,
    pub burst_messages: u64,
    /// The scheduler's resident memory before the first session, and with
    /// every session open and every announcement in.
    pub rss_idle_bytes: u64,
    pub rss_loaded_bytes: u64,
    pub rss_per_peer_bytes: f64,
    pub anon_loaded_bytes: u64,
    /// Peers the scheduler dropped for not reading (should be 0).
    pub slow_peers_disconnected: u64,
}

/// RSS and anonymous RSS of a process, bytes.
fn memory(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status: is the scheduler still running?"))?;
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Ok((kb("VmRSS:"), kb("RssAnon:")))
}

/// User + system CPU seconds of a process.
fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unexpected /proc/pid/stat format")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat: 11 and 12 after ')'.
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(11) + ticks(12)) / hz)
}

fn messages(metrics_addr: &str) -> Result<u64> {
    let page = http_get(metrics_addr, "/metrics")?;
    Ok(metric(&page, "weightcast_scheduler_messages_total", "").unwrap_or(0.0) as u64)
}

fn digest(num: u32) -> Vec<u8> {
    let mut d = vec![0u8; 32];
    d[..4].copy_from_slice(&num.to_le_bytes());
    d[31] = 0xd1;
    d
}

/// The piece peer `i` announces in round `k` of the paced phase.
fn piece_of(i: usize, k: u32, pieces: u32) -> u32 {
    (i as u32).wrapping_mul(7).wrapping_add(k) % pieces
}

/// The first piece peer `i` announces.
fn first_piece(i: usize, pieces: u32) -> u32 {
    piece_of(i, 0, pieces)
}

fn peer_name(i: usize) -> String {
    format!("load-{i:05}")
}

/// What the sessions' readers record, on the generator's one clock.
struct Shared {
    t0: Instant,
    pieces: u32,
    /// When each (peer, piece) announcement went out, ns since `t0` (0: not yet).
    announced: Vec<AtomicU64>,
    /// When each peer's `Register` went out.
    registered: Vec<AtomicU64>,
    register_rtt: Mutex<Vec<u64>>,
    available: Mutex<Vec<u64>>,
    /// A peer's first announcement (it becomes a parent; the scheduler
    /// tops up children short of parents with it) → a `Parents` message
    /// naming it with that one piece.
    new_parent: Mutex<Vec<u64>>,
    parents_at_register: AtomicUsize,
    metas: AtomicUsize,
}

impl Shared {
    fn now(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }
}

/// One peer's session: its outbound queue; a task reads what comes back.
struct Session {
    tx: mpsc::Sender<pb::PeerMessage>,
}

fn msg(m: PeerMsg) -> pb::PeerMessage {
    pb::PeerMessage { msg: Some(m) }
}

async fn open(endpoint: &str, i: usize, shared: Arc<Shared>) -> Result<Session> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("connect session {i} to the scheduler"))?;
    let (tx, rx) = mpsc::channel(1024);
    let hello = pb::HostInfo {
        peer_id: peer_name(i),
        hostname: format!("load-host-{i:05}"),
        piece_addr: format!("10.{}.{}.{}:7430", 10 + (i >> 16), (i >> 8) & 255, i & 255),
        zone: String::new(),
        rack: String::new(),
        seed: i == 0,
        upload_slots: 16,
        rdma: false,
        host_id: String::new(),
    };
    tx.send(msg(PeerMsg::Hello(hello))).await?;
    let mut client = pb::scheduler_client::SchedulerClient::new(channel);
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .with_context(|| format!("open session {i}"))?
        .into_inner();
    tokio::spawn(async move {
        let mut got_parents = false;
        while let Some(Ok(m)) = inbound.next().await {
            let now = shared.now();
            match m.msg {
                Some(Msg::Meta(_)) => {
                    let sent = shared.registered[i].load(Ordering::Acquire);
                    if sent > 0 {
                        shared
                            .register_rtt
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(now - sent);
                        shared.metas.fetch_add(1, Ordering::AcqRel);
                    }
                }
                Some(Msg::Parents(ps)) => {
                    if !got_parents {
                        got_parents = true;
                        let sent = shared.registered[i].load(Ordering::Acquire);
                        if sent > 0 && now - sent < 50_000_000 {
                            shared.parents_at_register.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                    // A parent listed with its first piece only was planned
                    // onto this child after that piece's announcement (it
                    // became a parent then): the top-up's latency. Collected
                    // first, so the shared list is locked once per message.
                    let mut latencies = Vec::new();
                    for parent in &ps.parents {
                        let Some(p) = parent
                            .peer_id
                            .strip_prefix("load-")
                            .and_then(|n| n.parse::<usize>().ok())
                        else {
                            continue;
                        };
                        let first = first_piece(p, shared.pieces);
                        if p == 0 || parent.pieces.len() != 1 || parent.pieces[0].num != first {
                            continue;
                        }
                        let slot = p * shared.pieces as usize + first as usize;
                        let sent = shared
                            .announced
                            .get(slot)
                            .map_or(0, |s| s.load(Ordering::Acquire));
                        if sent > 0 {
                            latencies.push(now.saturating_sub(sent));
                        }
                    }
                    if !latencies.is_empty() {
                        shared
                            .new_parent
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .extend(latencies);
                    }
                }
                Some(Msg::Available(a)) => {
                    let parent = a
                        .parent_id
                        .strip_prefix("load-")
                        .and_then(|n| n.parse::<usize>().ok());
                    if let (Some(p), Some(piece)) = (parent, a.piece) {
                        let slot = p * shared.pieces as usize + piece.num as usize;
                        let sent = shared
                            .announced
                            .get(slot)
                            .map_or(0, |s| s.load(Ordering::Acquire));
                        if sent > 0 && p != 0 {
                            shared
                                .available
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(now.saturating_sub(sent));
                        }
                    }
                }
                _ => {}
            }
        }
    });
    Ok(Session { tx })
}

/// Sends `m` on every session in `order`, `per_sec` a second, calling
/// `before` with each index just before it is sent.
async fn paced(
    sessions: &[Session],
    order: impl Iterator<Item = (usize, pb::PeerMessage)>,
    per_sec: u64,
    mut before: impl FnMut(usize, &pb::PeerMessage),
) -> Result<(u64, f64)> {
    let t0 = Instant::now();
    let mut sent = 0u64;
    for (i, m) in order {
        // Open loop: message k goes at t0 + k / rate.
        let due = t0 + Duration::from_secs_f64(sent as f64 / per_sec.max(1) as f64);
        let now = Instant::now();
        if due > now + Duration::from_micros(200) {
            tokio::time::sleep_until(due.into()).await;
        }
        before(i, &m);
        sessions[i]
            .tx
            .send(m)
            .await
            .map_err(|_| anyhow::anyhow!("session {i} closed: the scheduler dropped it"))?;
        sent += 1;
    }
    Ok((sent, t0.elapsed().as_secs_f64()))
}

pub fn run(p: &LoadParams) -> Result<LoadResult> {
    let mut cluster = Cluster::new(&p.bin)?;
    let (endpoint, metrics_addr) = cluster.scheduler()?;
    let pid = cluster.proc(0).pid();
    std::thread::sleep(Duration::from_millis(300));
    let (rss_idle, _) = memory(pid)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let task = TaskId::from_url("http://origin.load/model.safetensors").to_hex();
    let url = "http://origin.load/model.safetensors".to_string();
    let n = p.peers + 1;
    let shared = Arc::new(Shared {
        t0: Instant::now(),
        pieces: p.pieces,
        announced: (0..n * p.pieces as usize)
            .map(|_| AtomicU64::new(0))
            .collect(),
        registered: (0..n).map(|_| AtomicU64::new(0)).collect(),
        register_rtt: Mutex::new(Vec::new()),
        available: Mutex::new(Vec::new()),
        new_parent: Mutex::new(Vec::new()),
        parents_at_register: AtomicUsize::new(0),
        metas: AtomicUsize::new(0),
    });
    rt.block_on(async {
        let t_connect = Instant::now();
        let mut sessions = Vec::with_capacity(n);
        for chunk_start in (0..n).step_by(p.connect_parallel.max(1)) {
            let end = (chunk_start + p.connect_parallel.max(1)).min(n);
            let opened = futures::future::join_all(
                (chunk_start..end).map(|i| open(&endpoint, i, shared.clone())),
            )
            .await;
            for s in opened {
                sessions.push(s?);
            }
        }
        let connect_secs = t_connect.elapsed().as_secs_f64();
        eprintln!("   {n} sessions open in {connect_secs:.1} s");
        // The seed: registers, gives the length, holds every piece.
        let seed = &sessions[0].tx;
        let send = |m| async move { seed.send(msg(m)).await };
        send(PeerMsg::Register(pb::RegisterTask {
            task_id: task.clone(),
            url: url.clone(),
            have: Vec::new(),
            content_length: 0,
            digest: Vec::new(),
            traceparent: String::new(),
        }))
        .await?;
        send(PeerMsg::Meta(pb::TaskMeta {
            task_id: task.clone(),
            content_length: p.pieces as u64 * (4 << 20),
        }))
        .await?;
        for num in 0..p.pieces {
            send(PeerMsg::PieceDone(pb::PieceDone {
                task_id: task.clone(),
                num,
                digest: digest(num),
            }))
            .await?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Every peer registers.
        let register = (1..n).map(|i| {
            (
                i,
                msg(PeerMsg::Register(pb::RegisterTask {
                    task_id: task.clone(),
                    url: url.clone(),
                    have: Vec::new(),
                    content_length: 0,
                    digest: Vec::new(),
                    traceparent: String::new(),
                })),
            )
        });
        let sh = shared.clone();
        paced(&sessions, register, p.register_rate, |i, _| {
            sh.registered[i].store(sh.now().max(1), Ordering::Release);
        })
        .await?;
        let wait = Instant::now();
        while shared.metas.load(Ordering::Acquire) < p.peers && wait.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Paced announcements: round k, every peer announces its k-th piece.
        let (cpu0, msgs0) = (cpu_secs(pid)?, messages(&metrics_addr)?);
        let pieces = p.pieces;
        let per_peer = p.announce_per_peer.min(pieces);
        let order = (0..per_peer).flat_map(|k| {
            let task = task.clone();
            (1..n).map(move |i| {
                let num = piece_of(i, k, pieces);
                (
                    i,
                    msg(PeerMsg::PieceDone(pb::PieceDone {
                        task_id: task.clone(),
                        num,
                        digest: digest(num),
                    })),
                )
            })
        });
        let sh = shared.clone();
        let (announcements, announce_secs) = paced(&sessions, order, p.rate, |i, m| {
            if let Some(PeerMsg::PieceDone(d)) = &m.msg {
                let slot = i * sh.pieces as usize + d.num as usize;
                sh.announced[slot].store(sh.now().max(1), Ordering::Release);
            }
        })
        .await?;
        // Let the last ones land before reading the counters.
        let settle = Instant::now();
        let want = msgs0 + announcements;
        while messages(&metrics_addr)? < want && settle.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cpu = cpu_secs(pid)? - cpu0;
        // Burst: every peer announces the rest of its pieces at once.
        let before = messages(&metrics_addr)?;
        let t_burst = Instant::now();
        let mut burst = 0u64;
        for (i, session) in sessions.iter().enumerate().take(n).skip(1) {
            for k in per_peer..pieces {
                let num = piece_of(i, k, pieces);
                session
                    .tx
                    .send(msg(PeerMsg::PieceDone(pb::PieceDone {
                        task_id: task.clone(),
                        num,
                        digest: digest(num),
                    })))
                    .await
                    .map_err(|_| anyhow::anyhow!("session {i} closed during the burst"))?;
                burst += 1;
            }
        }
        while messages(&metrics_addr)? < before + burst && t_burst.elapsed() < Duration::from_secs(120) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let burst_secs = t_burst.elapsed().as_secs_f64();
        let burst_done = messages(&metrics_addr)? - before;
        let (rss_loaded, anon_loaded) = memory(pid)?;
        let page = http_get(&metrics_addr, "/metrics")?;
        let slow = metric(&page, "weightcast_scheduler_slow_peers_disconnected_total", "")
            .unwrap_or(0.0) as u64;
        for s in &sessions {
            let _ = s
                .tx
                .send(msg(PeerMsg::TaskDone(pb::TaskDone {
                    task_id: task.clone(),
                })))
                .await;
        }
        drop(sessions);
        let take = |m: &Mutex<Vec<u64>>| std::mem::take(&mut *m.lock().unwrap_or_else(|p| p.into_inner()));
        if burst_done < burst {
            bail!("the scheduler handled {burst_done} of the {burst} burst announcements within 120 s");
        }
        Ok(LoadResult {
            peers: p.peers,
            pieces: p.pieces,
            connect_secs,
            register: Latency::of(take(&shared.register_rtt)),
            parents_at_register: shared.parents_at_register.load(Ordering::Acquire),
            announcements,
            announce_secs,
            announce_rate: announcements as f64 / announce_secs.max(1e-9),
            available: Latency::of(take(&shared.available)),
            new_parent: Latency::of(take(&shared.new_parent)),
            cpu_secs: cpu,
            cpu_ms_per_1000_announcements: cpu * 1e3 / (announcements.max(1) as f64 / 1e3),
            burst_messages_per_sec: burst_done as f64 / burst_secs.max(1e-9),
            burst_messages: burst_done,
            rss_idle_bytes: rss_idle,
            rss_loaded_bytes: rss_loaded,
            rss_per_peer_bytes: rss_loaded.saturating_sub(rss_idle) as f64 / p.peers.max(1) as f64,
            anon_loaded_bytes: anon_loaded,
            slow_peers_disconnected: slow,
        })
    })
}

/// The results as a markdown table.
pub fn markdown(results: &[LoadResult]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| peers | pieces | paced rate /s | register RTT p50 / p99 µs | announce→available p50 / p99 µs (target p99 < 1000) | first piece → new parent p50 / p99 µs | CPU ms / 1,000 announcements | burst messages/s | RSS / peer KiB | RSS idle → loaded MiB |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for r in results {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.0} / {:.0} | {:.0} / **{:.0}** | {:.0} / {:.0} | {:.1} | {:.0} | {:.1} | {:.1} → {:.1} |",
            r.peers,
            r.pieces,
            r.announce_rate,
            r.register.p50_us,
            r.register.p99_us,
            r.available.p50_us,
            r.available.p99_us,
            r.new_parent.p50_us,
            r.new_parent.p99_us,
            r.cpu_ms_per_1000_announcements,
            r.burst_messages_per_sec,
            r.rss_per_peer_bytes / 1024.0,
            r.rss_idle_bytes as f64 / (1 << 20) as f64,
            r.rss_loaded_bytes as f64 / (1 << 20) as f64,
        );
    }
    s
}
