//! Fuzz (bounded, seeded): the piece-frame codec and HTTP Range parsing
//! take any bytes without panicking, and what they accept is sound.

use rand::{Rng, SeedableRng};
use weightcast_proto::frame::{
    AuthChallenge, AuthProof, ClientFrame, PieceRequest, ResponseHeader, AUTH_CHALLENGE_LEN,
    AUTH_PROOF_LEN, REQUEST_LEN, RESPONSE_HEADER_LEN,
};
use weightcast_proto::http_range;

const CASES: usize = 20_000;

#[test]
fn frames_of_any_bytes_decode_or_fail_cleanly_and_round_trip() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let magics: [&[u8; 4]; 5] = [b"WCP1", b"WCQ1", b"WCM1", b"WCD1", b"WCR1"];
    let mut accepted = 0;
    for i in 0..CASES {
        let len = rng.gen_range(0..80);
        let mut b: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        // Most cases start with a real magic, so the bodies get exercised.
        if i % 4 != 0 && b.len() >= 4 {
            b[..4].copy_from_slice(magics[rng.gen_range(0..magics.len())]);
        }
        if let Ok(f) = ClientFrame::decode(&b) {
            accepted += 1;
            let mut again = Vec::new();
            f.encode(&mut again);
            assert_eq!(
                ClientFrame::decode(&again).ok(),
                Some(f),
                "a decoded frame round-trips"
            );
            assert_eq!(
                Some(again.len()),
                b.get(..4)
                    .and_then(|m| ClientFrame::len_for_magic(m.try_into().ok()?).ok())
            );
        }
        if let Ok(arr) = <[u8; REQUEST_LEN]>::try_from(&b[..b.len().min(REQUEST_LEN)]) {
            if let Ok(r) = PieceRequest::decode(&arr) {
                assert_eq!(r.encode(), arr);
            }
        }
        if let Ok(arr) =
            <[u8; RESPONSE_HEADER_LEN]>::try_from(&b[..b.len().min(RESPONSE_HEADER_LEN)])
        {
            if let Ok(h) = ResponseHeader::decode(&arr) {
                assert_eq!(h.encode(), arr);
            }
        }
    }
    assert!(
        accepted > 100,
        "the fuzz reached the decoders' bodies ({accepted})"
    );
    // The cluster-secret handshake: a challenge (what a child reads first
    // from a parent) and a proof (what a parent reads first), and neither is
    // a frame a parent serves.
    let mut auth_accepted = 0;
    for i in 0..CASES {
        let len = rng.gen_range(0..48);
        let mut b: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if i % 4 != 0 && b.len() >= 4 {
            b[..4].copy_from_slice([b"WCH1", b"WCK1"][i % 2]);
        }
        if b.starts_with(b"WCH1") || b.starts_with(b"WCK1") {
            assert!(
                ClientFrame::decode(&b).is_err(),
                "a handshake frame is never served as a request"
            );
        }
        if let Ok(arr) = <[u8; AUTH_CHALLENGE_LEN]>::try_from(&b[..b.len().min(AUTH_CHALLENGE_LEN)])
        {
            if let Ok(c) = AuthChallenge::decode(&arr) {
                auth_accepted += 1;
                assert_eq!(c.encode(), arr);
            }
        }
        if let Ok(arr) = <[u8; AUTH_PROOF_LEN]>::try_from(&b[..b.len().min(AUTH_PROOF_LEN)]) {
            if let Ok(p) = AuthProof::decode(&arr) {
                auth_accepted += 1;
                assert_eq!(p.encode(), arr);
            }
        }
    }
    assert!(
        auth_accepted > 100,
        "the fuzz reached the auth frames' bodies ({auth_accepted})"
    );
    eprintln!(
        "frame fuzz: {CASES} inputs, {accepted} decoded; {CASES} more, {auth_accepted} auth frames"
    );
}

#[test]
fn range_headers_of_any_text_give_a_range_inside_the_body_or_none() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let parts = [
        "bytes=",
        "-",
        ",",
        " ",
        "0",
        "1",
        "9",
        "18446744073709551615",
        "99999999999999999999",
        "=",
        "a",
        "+",
        "\u{e9}",
    ];
    for _ in 0..CASES {
        let n = rng.gen_range(0..8);
        let h: String = (0..n)
            .map(|_| parts[rng.gen_range(0..parts.len())])
            .collect();
        let len = match rng.gen_range(0..4) {
            0 => 0,
            1 => rng.gen_range(0..10),
            2 => u64::MAX,
            _ => rng.gen(),
        };
        if let Some((a, b)) = http_range::parse(&h, len) {
            assert!(a <= b && b < len, "{h:?} in {len}: ({a}, {b})");
        }
    }
    eprintln!("range fuzz: {CASES} inputs");
}
