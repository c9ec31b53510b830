//! The protobuf edge of the scheduler: `pb::PeerMessage` in, the core's
//! [`PeerEvent`] out, and the core's [`Outbound`] back to
//! `pb::SchedulerMessage`.
//!
//! Everything the network can get wrong (a task id that is not 64 hex
//! characters, a digest that is not 32 bytes, a message the core has no use
//! for) is rejected here, so the core only ever sees well-formed input. The
//! wire format is the one `proto/proto/scheduler.proto` defines; this module
//! only translates, it never changes what peers see.

use std::time::Duration;
use weightcast_proto::pb::{
    self, peer_message::Msg as PeerMsg, scheduler_message::Msg as SchedMsg,
};
use weightcast_scheduler_core::{
    HostInfo, JobStatus, Outbound, ParentEntry, PeerEvent, PeerFilter, PeerResult, PeerSummary,
    PreheatJob, ResultState, Scope, ToPeer, WarmTask,
};
use weightcast_types::ids::InvalidTaskId;
use weightcast_types::piece::{digest_from_slice, PieceDigest};
use weightcast_types::TaskId;

/// Why a peer message was dropped before it reached the core.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error(transparent)]
    TaskId(#[from] InvalidTaskId),
    #[error("piece {num}: digest of {len} bytes, expected a 32-byte sha256")]
    Digest { num: u32, len: usize },
    #[error("a second hello on an open session (open a new session to change it)")]
    RepeatedHello,
    #[error("an empty message, or one of a newer protocol this scheduler does not know")]
    Unknown,
    #[error("unknown preheat scope {0:?}: expected single_seed_peer, all_seed_peers or all_peers")]
    Scope(String),
    #[error("task {task}: a digest of {len} bytes, expected a 32-byte sha256")]
    TaskDigest { task: String, len: usize },
}

/// How long a cache job may run when its request names no timeout: well
/// inside Harbor's 30 minutes (it gives up on a job after 1801 s).
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(25 * 60);

fn job_timeout(ms: u64) -> Duration {
    match ms {
        0 => DEFAULT_JOB_TIMEOUT,
        ms => Duration::from_millis(ms),
    }
}

/// A preheat request, as the core takes it.
pub fn preheat_job(r: pb::PreheatRequest) -> Result<PreheatJob, Rejected> {
    let scope = Scope::parse(&r.scope).ok_or_else(|| Rejected::Scope(r.scope.clone()))?;
    let tasks = r
        .tasks
        .into_iter()
        .map(|t| {
            let digest = match t.digest.len() {
                0 => None,
                32 => digest_from_slice(&t.digest),
                len => {
                    return Err(Rejected::TaskDigest {
                        task: t.task_id,
                        len,
                    })
                }
            };
            Ok(WarmTask {
                task: task_id(&t.task_id)?,
                url: t.url,
                digest,
                authorization: (!t.authorization.is_empty()).then_some(t.authorization),
            })
        })
        .collect::<Result<_, Rejected>>()?;
    Ok(PreheatJob {
        tasks,
        scope,
        filter: PeerFilter {
            ips: r.ips,
            count: (r.count > 0).then_some(r.count),
            percentage: (r.percentage > 0).then_some(r.percentage),
        },
        concurrent_peers: r.concurrent_peer_count as usize,
        timeout: job_timeout(r.timeout_ms),
    })
}

/// The task ids and timeout of an eviction.
pub fn delete_tasks(r: pb::DeleteTasksRequest) -> Result<(Vec<TaskId>, Duration), Rejected> {
    let tasks = r
        .task_ids
        .iter()
        .map(|t| task_id(t))
        .collect::<Result<_, _>>()?;
    Ok((tasks, job_timeout(r.timeout_ms)))
}

pub fn peer_result(r: PeerResult) -> pb::PeerResult {
    let state = match r.state {
        ResultState::Pending => pb::peer_result::State::Pending,
        ResultState::Success => pb::peer_result::State::Success,
        ResultState::Failure => pb::peer_result::State::Failure,
    };
    pb::PeerResult {
        peer_id: r.peer_id,
        hostname: r.hostname,
        addr: r.addr,
        seed: r.seed,
        state: state as i32,
        description: r.description,
        bytes: r.bytes,
        held: r.held,
        from_origin: r.from_origin,
        done_after_ms: r.done_after.map(|d| d.as_millis() as u64),
    }
}

pub fn job_progress(s: JobStatus) -> pb::JobProgress {
    pb::JobProgress {
        job_id: s.id,
        tasks: s
            .tasks
            .into_iter()
            .map(|t| pb::TaskResults {
                task_id: t.task.to_hex(),
                url: t.url,
                content_length: t.content_length.unwrap_or(0),
                peers: t.peers.into_iter().map(peer_result).collect(),
            })
            .collect(),
        finished: s.finished,
    }
}

/// A peer's hello, as the core takes it.
pub fn host_info(h: pb::HostInfo) -> HostInfo {
    HostInfo {
        peer_id: h.peer_id,
        hostname: h.hostname,
        piece_addr: h.piece_addr,
        zone: h.zone,
        rack: h.rack,
        seed: h.seed,
        upload_slots: h.upload_slots,
        rdma: h.rdma,
        host_id: h.host_id,
    }
}

pub fn peer_summary(p: PeerSummary) -> pb::PeerSummary {
    let h = p.info;
    pb::PeerSummary {
        host: Some(pb::HostInfo {
            peer_id: h.peer_id,
            hostname: h.hostname,
            piece_addr: h.piece_addr,
            zone: h.zone,
            rack: h.rack,
            seed: h.seed,
            upload_slots: h.upload_slots,
            rdma: h.rdma,
            host_id: h.host_id,
        }),
        active_uploads: p.active_uploads,
        tasks: p.tasks,
    }
}

fn task_id(s: &str) -> Result<TaskId, Rejected> {
    Ok(s.parse()?)
}

fn digest(num: u32, bytes: &[u8]) -> Result<PieceDigest, Rejected> {
    bytes.try_into().map_err(|_| Rejected::Digest {
        num,
        len: bytes.len(),
    })
}

/// Decodes anything a peer says after its hello.
pub fn peer_event(m: pb::PeerMessage) -> Result<PeerEvent, Rejected> {
    Ok(match m.msg.ok_or(Rejected::Unknown)? {
        PeerMsg::Hello(_) => return Err(Rejected::RepeatedHello),
        PeerMsg::Register(r) => PeerEvent::Register {
            task: task_id(&r.task_id)?,
            url: r.url,
            have: r
                .have
                .iter()
                .map(|p| Ok((p.num, digest(p.num, &p.digest)?)))
                .collect::<Result<_, Rejected>>()?,
            content_length: (r.content_length > 0).then_some(r.content_length),
            digest: digest_from_slice(&r.digest),
        },
        PeerMsg::Meta(m) => PeerEvent::Meta {
            task: task_id(&m.task_id)?,
            content_length: m.content_length,
        },
        PeerMsg::PieceDone(p) => PeerEvent::PieceDone {
            task: task_id(&p.task_id)?,
            num: p.num,
            digest: digest(p.num, &p.digest)?,
        },
        PeerMsg::PieceFailed(f) => PeerEvent::PieceFailed {
            task: task_id(&f.task_id)?,
            num: f.num,
            parent: f.parent_id,
        },
        PeerMsg::TaskDone(d) => PeerEvent::TaskDone {
            task: task_id(&d.task_id)?,
        },
        PeerMsg::TaskLeft(l) => PeerEvent::TaskLeft {
            task: task_id(&l.task_id)?,
        },
        PeerMsg::Load(l) => PeerEvent::Load {
            active_uploads: l.active_uploads,
        },
        PeerMsg::SourceRequest(r) => PeerEvent::SourceRequest {
            task: task_id(&r.task_id)?,
        },
        PeerMsg::TaskFailed(f) => PeerEvent::TaskFailed {
            task: task_id(&f.task_id)?,
            reason: f.reason,
        },
        PeerMsg::CacheDeleted(d) => PeerEvent::CacheDeleted {
            task: task_id(&d.task_id)?,
            held: d.held,
            error: (!d.error.is_empty()).then_some(d.error),
        },
    })
}

fn piece(num: u32, digest: &PieceDigest) -> pb::Piece {
    pb::Piece {
        num,
        digest: digest.to_vec(),
    }
}

fn parent(p: ParentEntry) -> pb::Parent {
    pb::Parent {
        pieces: p.pieces.iter().map(|(n, d)| piece(*n, d)).collect(),
        peer_id: p.peer_id,
        addr: p.addr,
        seed: p.seed,
        remote: p.remote,
        rdma: p.rdma,
    }
}

/// A task id in lower-case hex, as [`TaskId::to_hex`] writes it, by table:
/// every message the scheduler sends carries one, and the `hex` crate's
/// char-by-char encoding was a few per cent of the scheduler's time under
/// load.
fn task_hex(task: &TaskId) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * task.0.len());
    for b in task.0 {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// Encodes one message of the core for its peer (`o.to` routes it).
pub fn scheduler_message(o: Outbound) -> pb::SchedulerMessage {
    let task_id = task_hex(&o.task);
    let msg = match o.msg {
        ToPeer::SeedTask { url, digest } => SchedMsg::SeedTask(pb::SeedTask {
            task_id,
            url,
            digest: digest.map(|d| d.to_vec()).unwrap_or_default(),
            traceparent: String::new(),
        }),
        ToPeer::Meta { content_length } => SchedMsg::Meta(pb::TaskMeta {
            task_id,
            content_length,
        }),
        ToPeer::Parents(parents) => SchedMsg::Parents(pb::Parents {
            task_id,
            parents: parents.into_iter().map(parent).collect(),
        }),
        ToPeer::Available {
            parent,
            num,
            digest,
        } => SchedMsg::Available(pb::PieceAvailable {
            task_id,
            parent_id: parent,
            piece: Some(piece(num, &digest)),
        }),
        ToPeer::ParentGone { parent } => SchedMsg::ParentGone(pb::ParentGone {
            task_id,
            parent_id: parent,
        }),
        ToPeer::BackToSource { reason } => SchedMsg::BackToSource(pb::BackToSource {
            task_id,
            reason: reason.as_str().to_string(),
        }),
        ToPeer::OriginBudget {
            origin,
            bytes_per_second,
        } => SchedMsg::OriginBudget(pb::OriginBudget {
            origin,
            bytes_per_second,
        }),
        ToPeer::Preheat {
            url,
            digest,
            authorization,
            from_origin,
        } => SchedMsg::Preheat(pb::PreheatTask {
            task_id,
            url,
            digest: digest.map(|d| d.to_vec()).unwrap_or_default(),
            authorization: authorization.unwrap_or_default(),
            from_origin,
        }),
        ToPeer::DeleteCache => SchedMsg::DeleteCache(pb::DeleteCache { task_id }),
    };
    pb::SchedulerMessage { msg: Some(msg) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weightcast_scheduler_core::SourceReason;

    fn id() -> TaskId {
        TaskId::from_url("https://origin/m")
    }

    #[test]
    fn task_hex_is_to_hex() {
        for t in [
            id(),
            TaskId([0; 32]),
            TaskId([0xff; 32]),
            TaskId::from_url("x"),
        ] {
            assert_eq!(task_hex(&t), t.to_hex());
        }
    }

    fn wrap(m: PeerMsg) -> pb::PeerMessage {
        pb::PeerMessage { msg: Some(m) }
    }

    #[test]
    fn peer_messages_decode_into_typed_events() {
        let register = wrap(PeerMsg::Register(pb::RegisterTask {
            task_id: id().to_hex(),
            url: "https://origin/m".into(),
            have: vec![pb::Piece {
                num: 3,
                digest: vec![7; 32],
            }],
            content_length: 0,
            digest: vec![],
            traceparent: String::new(),
        }));
        assert_eq!(
            peer_event(register).unwrap(),
            PeerEvent::Register {
                task: id(),
                url: "https://origin/m".into(),
                have: vec![(3, [7; 32])],
                content_length: None,
                digest: None,
            }
        );
        let done = wrap(PeerMsg::PieceDone(pb::PieceDone {
            task_id: id().to_hex(),
            num: 1,
            digest: vec![1; 32],
        }));
        assert_eq!(
            peer_event(done).unwrap(),
            PeerEvent::PieceDone {
                task: id(),
                num: 1,
                digest: [1; 32]
            }
        );
        let load = wrap(PeerMsg::Load(pb::Load { active_uploads: 5 }));
        assert_eq!(
            peer_event(load).unwrap(),
            PeerEvent::Load { active_uploads: 5 }
        );
    }

    #[test]
    fn malformed_ids_and_digests_are_rejected() {
        let bad_id = wrap(PeerMsg::TaskDone(pb::TaskDone {
            task_id: "not-hex".into(),
        }));
        assert!(matches!(peer_event(bad_id), Err(Rejected::TaskId(_))));
        let short = wrap(PeerMsg::PieceDone(pb::PieceDone {
            task_id: id().to_hex(),
            num: 4,
            digest: vec![0; 31],
        }));
        let e = peer_event(short).unwrap_err();
        assert!(matches!(e, Rejected::Digest { num: 4, len: 31 }), "{e}");
        let bad_have = wrap(PeerMsg::Register(pb::RegisterTask {
            task_id: id().to_hex(),
            have: vec![pb::Piece {
                num: 0,
                digest: vec![],
            }],
            ..Default::default()
        }));
        assert!(matches!(peer_event(bad_have), Err(Rejected::Digest { .. })));
        let hello = wrap(PeerMsg::Hello(pb::HostInfo::default()));
        assert!(matches!(peer_event(hello), Err(Rejected::RepeatedHello)));
        assert!(matches!(
            peer_event(pb::PeerMessage { msg: None }),
            Err(Rejected::Unknown)
        ));
    }

    #[test]
    fn outbound_messages_encode_to_the_unchanged_wire_format() {
        let out = |msg| {
            scheduler_message(Outbound {
                to: "a".into(),
                task: id(),
                msg,
            })
            .msg
            .unwrap()
        };
        assert_eq!(
            out(ToPeer::Parents(vec![ParentEntry {
                peer_id: "p".into(),
                addr: "p:1".into(),
                seed: true,
                pieces: vec![(2, [9; 32])],
                remote: true,
                rdma: true,
            }])),
            SchedMsg::Parents(pb::Parents {
                task_id: id().to_hex(),
                parents: vec![pb::Parent {
                    peer_id: "p".into(),
                    addr: "p:1".into(),
                    seed: true,
                    pieces: vec![pb::Piece {
                        num: 2,
                        digest: vec![9; 32]
                    }],
                    remote: true,
                    rdma: true,
                }],
            })
        );
        assert_eq!(
            out(ToPeer::Available {
                parent: "p".into(),
                num: 2,
                digest: [9; 32]
            }),
            SchedMsg::Available(pb::PieceAvailable {
                task_id: id().to_hex(),
                parent_id: "p".into(),
                piece: Some(pb::Piece {
                    num: 2,
                    digest: vec![9; 32]
                }),
            })
        );
        assert_eq!(
            out(ToPeer::BackToSource {
                reason: SourceReason::NoSeed
            }),
            SchedMsg::BackToSource(pb::BackToSource {
                task_id: id().to_hex(),
                reason: "no seed peer is connected to the scheduler".into(),
            })
        );
        assert_eq!(
            out(ToPeer::SeedTask {
                url: "u".into(),
                digest: Some([5; 32])
            }),
            SchedMsg::SeedTask(pb::SeedTask {
                task_id: id().to_hex(),
                url: "u".into(),
                digest: vec![5; 32],
                traceparent: String::new(),
            })
        );
        assert_eq!(
            out(ToPeer::Meta { content_length: 9 }),
            SchedMsg::Meta(pb::TaskMeta {
                task_id: id().to_hex(),
                content_length: 9
            })
        );
        assert_eq!(
            out(ToPeer::ParentGone { parent: "p".into() }),
            SchedMsg::ParentGone(pb::ParentGone {
                task_id: id().to_hex(),
                parent_id: "p".into()
            })
        );
    }
}
