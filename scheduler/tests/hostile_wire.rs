//! Fuzz (bounded, seeded): whatever bytes a peer sends on its stream, the
//! scheduler's decoding (prost, then `wire`) refuses or accepts them
//! without a panic, and accepted task ids are well formed.

use prost::Message;
use rand::{Rng, SeedableRng};
use weightcast_proto::pb;
use weightcast_scheduler::wire;

const CASES: usize = 20_000;

fn seeds() -> Vec<Vec<u8>> {
    use pb::peer_message::Msg;
    let id = "ab".repeat(32);
    let msgs = vec![
        Msg::Register(pb::RegisterTask {
            task_id: id.clone(),
            url: "http://o/f".into(),
            content_length: 1 << 30,
            ..Default::default()
        }),
        Msg::PieceDone(pb::PieceDone {
            task_id: id.clone(),
            num: 3,
            digest: vec![7; 32],
        }),
        Msg::TaskDone(pb::TaskDone {
            task_id: id.clone(),
        }),
        Msg::Meta(pb::TaskMeta {
            task_id: id,
            content_length: u64::MAX,
        }),
    ];
    msgs.into_iter()
        .map(|m| pb::PeerMessage { msg: Some(m) }.encode_to_vec())
        .collect()
}

#[test]
fn any_bytes_on_a_peer_stream_decode_or_are_refused_without_a_panic() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let seeds = seeds();
    let (mut decoded, mut accepted) = (0, 0);
    for i in 0..CASES {
        let mut b = seeds[i % seeds.len()].clone();
        for _ in 0..rng.gen_range(0..6) {
            let at = rng.gen_range(0..b.len().max(1));
            match rng.gen_range(0..3) {
                0 if !b.is_empty() => b[at] = rng.gen(),
                1 => b.insert(at.min(b.len()), rng.gen()),
                _ => b.truncate(at),
            }
        }
        if i % 10 == 0 {
            b = (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect();
        }
        let Ok(m) = pb::PeerMessage::decode(b.as_slice()) else {
            continue;
        };
        decoded += 1;
        if wire::peer_event(m).is_ok() {
            accepted += 1;
        }
    }
    assert!(
        accepted > 100,
        "the fuzz reached the decoder ({accepted} accepted)"
    );
    eprintln!(
        "scheduler wire fuzz: {CASES} inputs, {decoded} protobuf-decoded, {accepted} accepted"
    );
}

#[test]
fn a_peer_flooding_messages_is_cut_off_within_the_second() {
    use std::time::{Duration, Instant};
    use weightcast_scheduler::service::{MessageBudget, MAX_PEER_MESSAGES_PER_SECOND};
    let t0 = Instant::now();
    let mut b = MessageBudget::new(t0);
    for _ in 0..MAX_PEER_MESSAGES_PER_SECOND {
        assert!(b.admit(t0 + Duration::from_millis(500)));
    }
    assert!(
        !b.admit(t0 + Duration::from_millis(999)),
        "one over the rate"
    );
    assert!(
        b.admit(t0 + Duration::from_millis(1500)),
        "a new second, a new budget"
    );
}
