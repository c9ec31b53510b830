//! The broadcast simulation on the real cores, briefly: correctness only
//! (the performance runs are `weightcast-bench simulate`, see
//! bench/results/simulate). Every peer must complete with every piece
//! checked against the digest its source recorded, the origin must be
//! counted, and the same inputs must give the same output.

use weightcast_bench::simulate::{self, Params};

const MIB: u64 = 1 << 20;

fn params(peers: usize, size: u64) -> Params {
    Params::new(peers, size, 10_000_000_000)
}

fn assert_correct(r: &simulate::SimResult, p: &Params) {
    assert!(!r.stuck, "the run got stuck");
    assert!(
        r.failed.is_empty(),
        "peers failed: {:?}",
        &r.failed[..r.failed.len().min(5)]
    );
    assert_eq!(r.unfinished, 0, "peers still downloading at the time limit");
    assert!(r.all_complete());
    let survivors = (p.peers - r.killed) as u64;
    assert!(
        r.verified_pieces >= (survivors + p.seeds as u64) * r.pieces as u64,
        "every surviving peer and the seed verified every piece: {} of {}",
        r.verified_pieces,
        (survivors + p.seeds as u64) * r.pieces as u64
    );
    assert_eq!(
        r.unchecked_pieces, 0,
        "a piece came from a parent without a digest to check it by"
    );
    assert_eq!(
        r.duplicate_bytes, 0,
        "a peer fetched a piece it already held"
    );
    assert!(
        r.origin_bytes >= p.size,
        "the origin served at least one copy"
    );
}

#[test]
fn a_thousand_peers_all_complete_and_the_origin_sends_one_copy() {
    let p = params(1000, 64 * MIB);
    let r = simulate::run(p.clone());
    assert_correct(&r, &p);
    assert_eq!(r.peer_secs.len(), 1000);
    assert!(r.peer_secs.iter().all(|s| s.is_some()));
    assert_eq!(
        r.origin_bytes, p.size,
        "only the seed fetched from the origin"
    );
    // Nobody beats the bound: each peer takes in S bytes at B at most.
    assert!(r.peer_secs.iter().flatten().all(|&s| s >= r.s_over_b));
}

#[test]
fn the_same_inputs_give_the_same_output() {
    let mut p = params(64, 32 * MIB);
    p.heterogeneous = true;
    let a = simulate::run(p.clone());
    let b = simulate::run(p);
    assert_eq!(a.peer_secs, b.peer_secs);
    assert_eq!(a.events, b.events);
    assert_eq!(a.busy_answers, b.busy_answers);
}

#[test]
fn survivors_of_churn_and_peers_across_zones_complete() {
    let mut p = params(120, 32 * MIB);
    p.churn = 0.25;
    let r = simulate::run(p.clone());
    assert_eq!(r.killed, 30);
    assert_correct(&r, &p);
    assert_eq!(r.peer_secs.iter().flatten().count(), 90);

    let mut p = params(120, 32 * MIB);
    p.zones = 3;
    p.heterogeneous = true;
    let r = simulate::run(p.clone());
    assert_correct(&r, &p);
    assert!(
        r.cross_zone_bytes > 0,
        "a zone without the seed gets its pieces across"
    );
    assert!(r.slow_upload_bytes > 0);
}

#[test]
fn a_request_beyond_the_upload_slots_waits_in_the_queue_instead_of_busy() {
    // Four children, two pieces in flight each, at a seed of four slots:
    // at most eight requests at once, which four slots and a queue of two
    // per slot hold; without the queue, four of them are answered `Busy`.
    let mut p = params(4, 16 * MIB);
    p.download.pieces_in_flight = 2;
    p.download.pieces_per_parent = 2;
    p.upload_concurrency = 4;
    let queued = simulate::run(p.clone());
    assert_correct(&queued, &p);
    assert_eq!(queued.busy_answers, 0, "every request waited for a slot");

    p.upload_queue_per_slot = 0;
    let unqueued = simulate::run(p.clone());
    assert_correct(&unqueued, &p);
    assert!(
        unqueued.busy_answers > 0,
        "without a queue the fifth request at once is answered Busy"
    );
}
