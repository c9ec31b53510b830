//! Fuzz (bounded, seeded): what a registry or a Hub answers — safetensors
//! headers, OCI manifests and indexes, Hub tree and revision JSON — is
//! parsed or refused without a panic, an allocation sized by a length
//! field, or a path outside the output.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weightcast_modelpack::hf_api::{files_from_tree, RevisionInfo, TreeEntry};
use weightcast_modelpack::oci_artifact::Manifest;
use weightcast_modelpack::{safetensors_check, safetensors_gen};

const CASES: usize = 5_000;

/// `seed` with a few random byte edits (flips, JSON-ish tokens, cuts).
fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    let tokens: [&[u8]; 10] = [
        b"..",
        b"/",
        b"\"",
        b"{",
        b"}",
        b"[",
        b"-1",
        b"1e400",
        b"18446744073709551616",
        b"\\u0000",
    ];
    for _ in 0..rng.gen_range(1..6) {
        if b.is_empty() {
            break;
        }
        let at = rng.gen_range(0..b.len());
        match rng.gen_range(0..4) {
            0 => b[at] = rng.gen(),
            1 => {
                let t = tokens[rng.gen_range(0..tokens.len())];
                b.splice(at..at, t.iter().copied());
            }
            2 => b.truncate(at),
            _ => {
                let end = (at + rng.gen_range(1..8)).min(b.len());
                b.drain(at..end);
            }
        }
    }
    b
}

#[test]
fn safetensors_headers_of_any_shape_are_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("m.safetensors");
    safetensors_gen::write(&f, 4096, 1).unwrap();
    let good = std::fs::read(&f).unwrap();
    assert!(safetensors_check::validate_bytes(&good).is_ok());
    // A header length claiming more than the file: refused, nothing allocated for it.
    for claim in [u64::MAX, 1 << 62, good.len() as u64] {
        let mut b = good.clone();
        b[..8].copy_from_slice(&claim.to_le_bytes());
        assert!(safetensors_check::validate_bytes(&b).is_err(), "{claim}");
    }
    let mut rng = StdRng::seed_from_u64(4);
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut ok = 0;
    for _ in 0..CASES {
        // Mutate the header only, mostly: the tensor bytes are opaque.
        let cut = (8 + header_len).min(good.len());
        let mut b = mutate(&mut rng, &good[..cut]);
        b.extend_from_slice(&good[cut..]);
        if safetensors_check::validate_bytes(&b).is_ok() {
            ok += 1;
        }
    }
    eprintln!("safetensors fuzz: {CASES} headers, {ok} still valid");
}

#[test]
fn oci_manifests_and_indexes_parse_or_fail_without_a_panic() {
    let d = format!("sha256:{}", "a".repeat(64));
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.cncf.model.manifest.v1+json","config":{{"mediaType":"application/vnd.cncf.model.config.v1+json","digest":"{d}","size":2}},"layers":[{{"mediaType":"application/vnd.cncf.model.weight.v1.raw","digest":"{d}","size":10,"annotations":{{"org.cncf.model.filepath":"w/model.safetensors"}}}}]}}"#
    );
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":5,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
    );
    assert!(Manifest::parse(manifest.as_bytes()).is_ok());
    assert!(Manifest::parse(index.as_bytes()).is_ok());
    let mut rng = StdRng::seed_from_u64(5);
    let mut parsed = 0;
    for i in 0..CASES {
        let seed = if i % 2 == 0 { &manifest } else { &index };
        let b = mutate(&mut rng, seed.as_bytes());
        if let Ok(m) = Manifest::parse(&b) {
            parsed += 1;
            let _ = m.pick(Some("linux/amd64"));
            let _ = m.pick(None);
        }
    }
    eprintln!("oci manifest fuzz: {CASES} documents, {parsed} parsed");
}

#[test]
fn hub_tree_and_revision_json_never_yield_an_unsafe_path() {
    let tree = r#"[{"type":"file","path":"config.json","size":10,"oid":"abc"},{"type":"directory","path":"sub","oid":"d"},{"type":"file","path":"sub/model.safetensors","size":99,"oid":"e","lfs":{"oid":"0000000000000000000000000000000000000000000000000000000000000000","size":99}}]"#;
    let rev = r#"{"id":"org/m","sha":"0123456789012345678901234567890123456789"}"#;
    let mut rng = StdRng::seed_from_u64(6);
    let (mut trees, mut files) = (0, 0);
    for i in 0..CASES {
        let b = mutate(
            &mut rng,
            if i % 4 == 0 {
                rev.as_bytes()
            } else {
                tree.as_bytes()
            },
        );
        let _ = serde_json::from_slice::<RevisionInfo>(&b);
        let Ok(entries) = serde_json::from_slice::<Vec<TreeEntry>>(&b) else {
            continue;
        };
        trees += 1;
        for selector in [None, Some("*.safetensors"), Some("sub/**")] {
            if let Ok(picked) = files_from_tree(&entries, selector) {
                for f in picked {
                    files += 1;
                    let p = std::path::Path::new(f.path.as_str());
                    assert!(
                        p.components()
                            .all(|c| matches!(c, std::path::Component::Normal(_))),
                        "unsafe path {:?} accepted",
                        f.path.as_str()
                    );
                }
            }
        }
    }
    eprintln!("hub json fuzz: {CASES} documents, {trees} trees parsed, {files} files checked");
}
