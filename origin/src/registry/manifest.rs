//! Manifest bytes and the digest that names them.
//!
//! A manifest is the root of trust of an artifact: its layers are
//! checked against the digests it lists, so the manifest itself must be
//! the one asked for. Its digest is computed from the bytes as received
//! and must match the reference when that is a digest, and the registry's
//! `Docker-Content-Digest` when it sends one; anything else is refused as
//! [`OriginError::DigestMismatch`].

use crate::error::OriginError;
use sha2::{Digest, Sha256, Sha512};
use weightcast_modelpack::oci_ref::OciReference;

/// A manifest is at most 4 MiB (the distribution spec's limit that
/// registries enforce on push).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// `algorithm:hex` of `bytes`, for the algorithms registries use; `None`
/// for another.
fn digest_with(algorithm: &str, bytes: &[u8]) -> Option<String> {
    match algorithm {
        "sha256" => Some(format!("sha256:{}", hex::encode(Sha256::digest(bytes)))),
        "sha512" => Some(format!("sha512:{}", hex::encode(Sha512::digest(bytes)))),
        _ => None,
    }
}

/// The sha256 digest of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Checks `bytes` (from `url`) against the `reference` it was asked by and
/// the registry's `Docker-Content-Digest` (`header`); returns its digest.
pub fn verify(
    url: &str,
    bytes: &[u8],
    reference: &OciReference,
    header: Option<&str>,
) -> Result<String, OriginError> {
    let mismatch = |expected: &str, got: String| OriginError::DigestMismatch {
        url: url.to_string(),
        expected: expected.to_string(),
        got,
    };
    let got = sha256_digest(bytes);
    if let OciReference::Digest(want) = reference {
        if *want != got {
            return Err(mismatch(want, got));
        }
    }
    if let Some(h) = header.map(str::trim).filter(|h| !h.is_empty()) {
        let algorithm = h.split_once(':').map_or("", |(a, _)| a);
        match digest_with(algorithm, bytes) {
            Some(d) if d.eq_ignore_ascii_case(h) => {}
            Some(d) => return Err(mismatch(h, d)),
            // Nothing to check it with; the reference (if a digest) was.
            None => tracing::debug!(
                url,
                digest = h,
                "unknown digest algorithm in Docker-Content-Digest"
            ),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn a_tampered_manifest_is_refused() {
        let m = br#"{"schemaVersion":2,"layers":[]}"#;
        let d = sha256_digest(m);
        let tag = OciReference::Tag("v1".into());
        let pinned = OciReference::Digest(d.clone());
        assert_eq!(verify("u", m, &tag, None).unwrap(), d);
        assert_eq!(verify("u", m, &pinned, Some(&d)).unwrap(), d);
        let tampered = br#"{"schemaVersion":2,"layers":[{}]}"#;
        // Asked by digest: the bytes must be those.
        let e = verify("u", tampered, &pinned, None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DigestMismatch);
        assert!(e.to_string().contains(&d), "{e}");
        // Asked by tag: the registry's own digest must match the bytes.
        let e = verify("u", tampered, &tag, Some(&d)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DigestMismatch);
        // A sha512 header is checked with sha512.
        let d512 = digest_with("sha512", m).unwrap();
        assert_eq!(verify("u", m, &tag, Some(&d512)).unwrap(), d);
        assert!(verify("u", tampered, &tag, Some(&d512)).is_err());
        // An algorithm we cannot compute is not held against the bytes.
        assert!(verify("u", m, &tag, Some("blake3:00")).is_ok());
    }
}
