//! The download core under fake time: every test scripts what the world
//! answers and checks what the core asks for.

use super::*;
use crate::events::{Failure, FetchFrom, ParentInfo};
use weightcast_types::piece::MIN_PIECE_SIZE;

type D = Download<String>;

const PIECE: u64 = MIN_PIECE_SIZE;

fn spec(mode: Mode) -> Spec {
    Spec {
        peer_id: "child".into(),
        digest: None,
        mode,
        back_to_source: true,
        announce: true,
        resume_length: None,
        scheduler_up: true,
    }
}

fn config() -> Config {
    Config {
        pieces_in_flight: 4,
        pieces_per_parent: 2,
        stall_timeout: Duration::from_secs(30),
        busy_backoff: Duration::from_millis(100),
        fallback_jitter: Duration::from_secs(5),
        reader_window: 2,
    }
}

fn drain(d: &mut D) -> Vec<Command<String>> {
    std::iter::from_fn(|| d.poll_command()).collect()
}

fn fetches(cmds: &[Command<String>]) -> Vec<(u32, FetchFrom)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Fetch(f) => Some((f.num, f.from.clone())),
            _ => None,
        })
        .collect()
}

fn sent(cmds: &[Command<String>]) -> Vec<ToScheduler> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Send(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn finished(cmds: &[Command<String>]) -> Option<&Result<(), Failure<String>>> {
    cmds.iter().find_map(|c| match c {
        Command::Finish(r) => Some(r),
        _ => None,
    })
}

fn digest(num: u32) -> PieceDigest {
    [num as u8 + 1; 32]
}

fn verified(num: u32, from: Source) -> Input<String> {
    Input::Piece(PieceReport {
        num,
        from,
        bytes: PIECE,
        took: Duration::from_millis(40),
        outcome: PieceOutcome::Verified {
            digest: digest(num),
            parent_load: Some(0),
        },
    })
}

fn report(num: u32, parent: &str, outcome: PieceOutcome<String>) -> Input<String> {
    Input::Piece(PieceReport {
        num,
        from: Source::Parent(parent.into()),
        bytes: PIECE,
        took: Duration::from_millis(40),
        outcome,
    })
}

fn parent(id: &str, seed: bool, pieces: impl IntoIterator<Item = u32>) -> ParentInfo {
    ParentInfo {
        id: id.into(),
        addr: format!("{id}:7430"),
        seed,
        remote: false,
        rdma: false,
        pieces: pieces.into_iter().map(|n| (n, digest(n))).collect(),
    }
}

fn parent_of(f: &FetchFrom) -> &str {
    match f {
        FetchFrom::Parent { id, .. } => id,
        FetchFrom::Origin => "origin",
    }
}

/// A swarm download of `pieces` pieces whose file is open, with no parents yet.
fn open_swarm(pieces: u64, t0: Instant) -> D {
    let mut d = D::new(config(), spec(Mode::Swarm), t0);
    assert!(matches!(
        sent(&drain(&mut d))[..],
        [ToScheduler::Register { .. }]
    ));
    d.handle(
        t0,
        Input::Scheduler(SchedulerEvent::Meta {
            content_length: pieces * PIECE,
        }),
    );
    assert!(matches!(drain(&mut d)[..], [Command::Open { .. }]));
    d.handle(t0, Input::Opened(Ok(Vec::new())));
    assert!(drain(&mut d).is_empty(), "no parent: nothing to fetch");
    d
}

#[test]
fn a_source_probes_opens_fetches_front_to_back_and_finishes() {
    let t0 = Instant::now();
    let mut d = D::new(config(), spec(Mode::Source), t0);
    let cmds = drain(&mut d);
    assert!(matches!(
        cmds[..],
        [Command::Send(ToScheduler::Register { .. }), Command::Probe]
    ));
    d.handle(t0, Input::Probed(Ok(3 * PIECE + 1)));
    assert!(matches!(
        drain(&mut d)[..],
        [Command::Open {
            content_length: len
        }] if len == 3 * PIECE + 1
    ));
    d.handle(t0, Input::Opened(Ok(Vec::new())));
    let cmds = drain(&mut d);
    assert!(sent(&cmds).contains(&ToScheduler::Meta {
        content_length: 3 * PIECE + 1
    }));
    let order: Vec<u32> = fetches(&cmds).iter().map(|f| f.0).collect();
    assert_eq!(order, [0, 1, 2, 3]);
    for n in 0..4 {
        d.handle(t0, verified(n, Source::Origin));
    }
    let cmds = drain(&mut d);
    assert_eq!(
        sent(&cmds).last(),
        Some(&ToScheduler::TaskDone),
        "{:?}",
        sent(&cmds)
    );
    assert!(matches!(finished(&cmds), Some(Ok(()))));
    assert_eq!(d.progress().from_origin, 4 * PIECE);
    assert!(d.is_finished());
}

#[test]
fn peers_serve_before_the_seed_and_a_parent_that_dies_mid_piece_is_replaced() {
    let t0 = Instant::now();
    let mut d = open_swarm(4, t0);
    d.handle(
        t0,
        Input::Scheduler(SchedulerEvent::Parents(vec![
            parent("seed", true, 0..4),
            parent("a", false, [0, 1]),
            parent("b", false, [0, 1]),
        ])),
    );
    let first = fetches(&drain(&mut d));
    // Pieces 0 and 1 come from the peers, 2 and 3 from the seed (its budget is 2).
    let from_peers: Vec<u32> = first
        .iter()
        .filter(|f| parent_of(&f.1) != "seed")
        .map(|f| f.0)
        .collect();
    assert_eq!(from_peers.len(), 2, "{first:?}");
    assert!(from_peers.contains(&0) && from_peers.contains(&1));
    // The parent serving piece 0 dies mid-transfer.
    let (num, dead) = first
        .iter()
        .find(|f| f.0 == 0)
        .map(|f| (f.0, parent_of(&f.1).to_string()))
        .unwrap();
    d.handle(
        t0,
        report(
            num,
            &dead,
            PieceOutcome::ParentFailed {
                reason: "connection reset".into(),
            },
        ),
    );
    let cmds = drain(&mut d);
    assert!(sent(&cmds).contains(&ToScheduler::PieceFailed {
        num: 0,
        parent: dead.clone(),
        reason: "connection reset".into()
    }));
    let again = fetches(&cmds);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].0, 0, "the lost piece is fetched again at once");
    assert_ne!(parent_of(&again[0].1), dead, "from another parent");
    assert_eq!(d.parent_count(), 2);
}

#[test]
fn a_corrupt_piece_is_reported_and_fetched_elsewhere() {
    let t0 = Instant::now();
    let mut d = open_swarm(1, t0);
    d.handle(
        t0,
        Input::Scheduler(SchedulerEvent::Parents(vec![parent("a", false, [0])])),
    );
    let f = fetches(&drain(&mut d));
    assert!(matches!(&f[0].1, FetchFrom::Parent { expected: Some(e), .. } if *e == digest(0)));
    d.handle(
        t0,
        Input::Scheduler(SchedulerEvent::Parents(vec![parent("b", false, [0])])),
    );
    d.handle(
        t0,
        report(
            0,
            "a",
            PieceOutcome::Corrupt {
                reason: "digest mismatch".into(),
            },
        ),
    );
    let cmds = drain(&mut d);
    assert!(sent(&cmds)
        .iter()
        .any(|m| matches!(m, ToScheduler::PieceFailed { parent, .. } if parent == "a")));
    let f = fetches(&cmds);
    assert_eq!(parent_of(&f[0].1), "b");
    d.handle(t0, verified(0, Source::Parent("b".into())));
    assert!(matches!(finished(&drain(&mut d)), Some(Ok(()))));
}

#[test]
fn a_stall_asks_the_scheduler_and_only_its_grant_sends_the_peer_to_the_origin() {
    let t0 = Instant::now();
    let mut d = D::new(config(), spec(Mode::Swarm), t0);
    drain(&mut d);
    let deadline = d.poll_timeout().expect("a stall deadline");
    assert_eq!(deadline, t0 + Duration::from_secs(30));
    // Too early: nothing happens.
    d.handle(t0 + Duration::from_secs(10), Input::Timeout);
    assert!(drain(&mut d).is_empty());
    // Stalled: ask, do not go.
    d.handle(deadline, Input::Timeout);
    let cmds = drain(&mut d);
    assert!(
        matches!(&sent(&cmds)[..], [ToScheduler::SourceRequest { .. }]),
        "{cmds:?}"
    );
    assert!(!cmds.iter().any(|c| matches!(c, Command::Probe)));
    assert_eq!(d.mode(), Mode::Swarm);
    // No answer: it asks again one stall timeout later, still without going.
    let again = d.poll_timeout().unwrap();
    assert_eq!(again, deadline + Duration::from_secs(30));
    d.handle(again, Input::Timeout);
    let cmds = drain(&mut d);
    assert!(matches!(
        &sent(&cmds)[..],
        [ToScheduler::SourceRequest { .. }]
    ));
    assert_eq!(d.source_requests(), 2);
    // The grant.
    d.handle(
        again,
        Input::Scheduler(SchedulerEvent::BackToSource {
            reason: "granted".into(),
        }),
    );
    assert!(matches!(drain(&mut d)[..], [Command::Probe]));
    assert_eq!(d.mode(), Mode::Source);
    assert_eq!(d.poll_timeout(), None, "no stall timer at the origin");
}

#[test]
fn a_stall_fails_without_back_to_source() {
    let t0 = Instant::now();
    let mut s = spec(Mode::Swarm);
    s.back_to_source = false;
    let mut d = D::new(config(), s, t0);
    drain(&mut d);
    d.handle(t0 + Duration::from_secs(30), Input::Timeout);
    let cmds = drain(&mut d);
    assert!(matches!(
        finished(&cmds),
        Some(Err(Failure::Stalled { secs: 30 }))
    ));
    assert!(sent(&cmds).contains(&ToScheduler::TaskLeft));
}

#[test]
fn with_the_scheduler_unreachable_a_peer_falls_back_alone_after_its_own_jitter() {
    let t0 = Instant::now();
    let deadlines: Vec<Duration> = (0..20)
        .map(|i| {
            let mut s = spec(Mode::Swarm);
            s.peer_id = format!("peer-{i}");
            s.scheduler_up = false;
            let mut d = D::new(config(), s, t0);
            drain(&mut d);
            let at = d.poll_timeout().unwrap();
            assert!(at - t0 < Duration::from_secs(5), "within the jitter");
            d.handle(at, Input::Timeout);
            assert!(matches!(drain(&mut d)[..], [Command::Probe]));
            at - t0
        })
        .collect();
    let distinct: std::collections::BTreeSet<_> = deadlines.iter().collect();
    assert!(distinct.len() >= 15, "peers spread out: {deadlines:?}");

    // A peer whose scheduler comes back before its jitter is over stays.
    let mut s = spec(Mode::Swarm);
    s.scheduler_up = false;
    let mut d = D::new(config(), s, t0);
    drain(&mut d);
    d.handle(t0, Input::Reconnected);
    assert!(matches!(
        sent(&drain(&mut d))[..],
        [ToScheduler::Register { .. }]
    ));
    assert_eq!(d.poll_timeout(), Some(t0 + Duration::from_secs(30)));
    // And one that loses it mid-download, with parents still serving,
    // waits for a real stall first.
    let mut d = open_swarm(4, t0);
    d.handle(
        t0,
        Input::Scheduler(SchedulerEvent::Parents(vec![parent("a", false, 0..4)])),
    );
    drain(&mut d);
    d.handle(t0 + Duration::from_secs(1), Input::SchedulerLost);
    d.handle(
        t0 + Duration::from_secs(2),
        verified(0, Source::Parent("a".into())),
    );
    drain(&mut d);
    let at = d.poll_timeout().unwrap();
    assert!(at >= t0 + Duration::from_secs(32), "{:?}", at - t0);
}

#[test]
fn the_endgame_waits_for_the_last_piece_then_checks_the_whole_digest() {
    let t0 = Instant::now();
    let mut s = spec(Mode::Swarm);
    s.digest = Some([9; 32]);
    let mut d = D::new(config(), s, t0);
    drain(&mut d);
    d.handle(
        t0,
        Input::Scheduler(SchedulerEvent::Meta {
            content_length: 2 * PIECE,
        }),
    );
    d.handle(t0, Input::Opened(Ok(vec![(0, digest(0))])));
    let cmds = drain(&mut d);
    assert!(
        sent(&cmds).contains(&ToScheduler::PieceDone {
            num: 0,
            digest: digest(0)
        }),
        "a resumed piece is announced"
    );
    assert_eq!(d.progress().resumed, PIECE);
    d.handle(
        t0,
        Input::Scheduler(SchedulerEvent::Parents(vec![parent("a", false, [1])])),
    );
    assert_eq!(fetches(&drain(&mut d)).len(), 1);
    d.handle(t0, verified(1, Source::Parent("a".into())));
    let cmds = drain(&mut d);
    assert!(matches!(cmds.last(), Some(Command::CheckWholeDigest)));
    assert!(
        finished(&cmds).is_none(),
        "not before the whole file matched"
    );
    d.handle(t0, Input::WholeDigest(Ok([1; 32])));
    let cmds = drain(&mut d);
    assert!(matches!(cmds.first(), Some(Command::Discard)));
    assert!(matches!(
        finished(&cmds),
        Some(Err(Failure::DigestMismatch { .. }))
    ));
}

#[test]
fn a_hasher_failure_is_not_a_digest_mismatch() {
    let t0 = Instant::now();
    let mut s = spec(Mode::Source);
    s.digest = Some([9; 32]);
    let mut d = D::new(config(), s, t0);
    d.handle(t0, Input::Probed(Ok(PIECE)));
    d.handle(t0, Input::Opened(Ok(Vec::new())));
    d.handle(t0, verified(0, Source::Origin));
    drain(&mut d);
    d.handle(t0, Input::WholeDigest(Err("hasher panicked".into())));
    let cmds = drain(&mut d);
    assert!(!cmds.iter().any(|c| matches!(c, Command::Discard)));
    assert!(matches!(finished(&cmds), Some(Err(Failure::Shell(e))) if e == "hasher panicked"));
}

#[test]
fn a_streaming_reader_gets_its_next_pieces_first_and_the_rest_stays_rarest_first() {
    let t0 = Instant::now();
    let mut d = open_swarm(32, t0);
    d.handle(t0, Input::Wanted(20));
    d.handle(
        t0,
        Input::Scheduler(SchedulerEvent::Parents(vec![
            parent("a", false, 0..32),
            parent("b", false, 0..32),
            parent("c", false, [5]),
        ])),
    );
    let nums: Vec<u32> = fetches(&drain(&mut d)).iter().map(|f| f.0).collect();
    assert_eq!(&nums[..2], &[20, 21], "the reader's window first: {nums:?}");
    assert_eq!(nums.len(), 4, "{nums:?}");
    assert!(
        !nums[2..].contains(&5),
        "beyond the window, rarest first: piece 5 has a third holder: {nums:?}"
    );
}

#[test]
fn a_seed_that_says_elsewhere_is_asked_for_other_pieces_and_again_later() {
    let t0 = Instant::now();
    let mut d = open_swarm(2, t0);
    d.handle(
        t0,
        Input::Scheduler(SchedulerEvent::Parents(vec![parent("seed", true, 0..2)])),
    );
    let first = fetches(&drain(&mut d));
    assert_eq!(first.len(), 2, "both seed pieces (the seed budget is 2)");
    d.handle(
        t0,
        report(
            first[0].0,
            "seed",
            PieceOutcome::Elsewhere {
                retry_in: Duration::from_secs(5),
            },
        ),
    );
    assert!(
        fetches(&drain(&mut d)).is_empty(),
        "not from the seed while it said elsewhere"
    );
    assert_eq!(d.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    // A peer announces it: it comes from there.
    d.handle(
        t0,
        Input::Scheduler(SchedulerEvent::Parents(vec![parent("a", false, [])])),
    );
    d.handle(
        t0,
        Input::Scheduler(SchedulerEvent::Available {
            parent: "a".into(),
            num: first[0].0,
            digest: digest(first[0].0),
        }),
    );
    let f = fetches(&drain(&mut d));
    assert_eq!(f.len(), 1);
    assert_eq!((f[0].0, parent_of(&f[0].1)), (first[0].0, "a"));
}

#[test]
fn a_panicked_piece_task_frees_its_piece() {
    let t0 = Instant::now();
    let mut d = D::new(config(), spec(Mode::Source), t0);
    d.handle(t0, Input::Probed(Ok(PIECE)));
    d.handle(t0, Input::Opened(Ok(Vec::new())));
    assert_eq!(fetches(&drain(&mut d)).len(), 1);
    assert_eq!(d.in_flight(), 1);
    d.handle(
        t0,
        Input::Piece(PieceReport {
            num: 0,
            from: Source::Origin,
            bytes: PIECE,
            took: Duration::ZERO,
            outcome: PieceOutcome::Lost {
                reason: "the fetch task panicked".into(),
            },
        }),
    );
    let f = fetches(&drain(&mut d));
    assert_eq!(f.len(), 1, "fetched again, not stuck in flight");
    assert_eq!(f[0].0, 0);
}

#[test]
fn a_busy_parent_is_asked_again_after_its_backoff() {
    let t0 = Instant::now();
    let mut d = open_swarm(1, t0);
    d.handle(
        t0,
        Input::Scheduler(SchedulerEvent::Parents(vec![parent("a", false, [0])])),
    );
    drain(&mut d);
    d.handle(t0, report(0, "a", PieceOutcome::Busy));
    assert!(fetches(&drain(&mut d)).is_empty(), "not while it is busy");
    let wake = d.poll_timeout().unwrap();
    assert_eq!(wake, t0 + Duration::from_millis(100));
    d.handle(wake, Input::Timeout);
    assert_eq!(fetches(&drain(&mut d)).len(), 1);
}

#[test]
fn shutdown_drains_the_pieces_in_flight_then_finishes() {
    let t0 = Instant::now();
    let mut d = D::new(config(), spec(Mode::Source), t0);
    d.handle(t0, Input::Probed(Ok(8 * PIECE)));
    d.handle(t0, Input::Opened(Ok(Vec::new())));
    assert_eq!(fetches(&drain(&mut d)).len(), 4);
    d.handle(t0, Input::Shutdown);
    assert!(drain(&mut d).is_empty());
    for n in 0..3 {
        d.handle(t0, verified(n, Source::Origin));
        let cmds = drain(&mut d);
        assert!(fetches(&cmds).is_empty(), "no new fetch after shutdown");
        assert!(finished(&cmds).is_none());
    }
    d.handle(t0, verified(3, Source::Origin));
    assert!(matches!(
        finished(&drain(&mut d)),
        Some(Err(Failure::ShuttingDown))
    ));
}

#[test]
fn the_scheduler_can_send_a_peer_to_the_origin_unless_forbidden() {
    let t0 = Instant::now();
    let mut s = spec(Mode::Swarm);
    s.back_to_source = false;
    let mut d = D::new(config(), s, t0);
    drain(&mut d);
    d.handle(
        t0,
        Input::Scheduler(SchedulerEvent::BackToSource {
            reason: "no seed".into(),
        }),
    );
    assert!(matches!(
        finished(&drain(&mut d)),
        Some(Err(Failure::SourceForbidden { .. }))
    ));
}

#[test]
fn a_reconnect_registers_again_with_the_pieces_held() {
    let t0 = Instant::now();
    let mut d = open_swarm(2, t0);
    d.handle(
        t0,
        Input::Scheduler(SchedulerEvent::Parents(vec![parent("a", false, [0, 1])])),
    );
    drain(&mut d);
    d.handle(t0, verified(0, Source::Parent("a".into())));
    drain(&mut d);
    d.handle(t0, Input::Reconnected);
    let cmds = drain(&mut d);
    assert!(sent(&cmds).contains(&ToScheduler::Register {
        have: vec![(0, digest(0))],
        content_length: 2 * PIECE
    }));
    assert_eq!(d.parent_count(), 0, "old parents are forgotten");
}

#[test]
fn private_downloads_say_nothing_to_the_scheduler() {
    let t0 = Instant::now();
    let mut s = spec(Mode::Source);
    s.announce = false;
    let mut d = D::new(config(), s, t0);
    d.handle(t0, Input::Probed(Ok(0)));
    d.handle(t0, Input::Opened(Ok(Vec::new())));
    let cmds = drain(&mut d);
    assert!(sent(&cmds).is_empty());
    assert!(
        matches!(finished(&cmds), Some(Ok(()))),
        "an empty file is complete at once"
    );
}
