//! `oci://registry[:port]/repository[:tag|@sha256:digest]`.
//!
//! As in `docker pull`, the first component is the registry; unlike it,
//! there is no default registry (a model artifact lives in a registry the
//! user names) and no default `library/` namespace.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OciRef {
    /// `host[:port]`.
    pub registry: String,
    pub repository: String,
    pub reference: OciReference,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OciReference {
    Tag(String),
    /// `sha256:<64 hex>`.
    Digest(String),
}

impl OciReference {
    pub fn as_str(&self) -> &str {
        match self {
            OciReference::Tag(t) | OciReference::Digest(t) => t,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid OCI reference {uri:?}: {why} (expected oci://registry[:port]/repository[:tag|@sha256:<digest>])")]
pub struct BadOciRef {
    pub uri: String,
    pub why: &'static str,
}

/// `sha256:<64 lowercase hex>`.
pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

impl OciRef {
    pub fn is_oci(s: &str) -> bool {
        s.starts_with("oci://")
    }

    pub fn parse(s: &str) -> Result<Self, BadOciRef> {
        let bad = |why| BadOciRef {
            uri: s.to_string(),
            why,
        };
        let rest = s
            .strip_prefix("oci://")
            .ok_or_else(|| bad("it does not start with oci://"))?;
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("it names no repository"))?;
        if registry.is_empty()
            || !registry
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
        {
            return Err(bad("the registry must be host[:port]"));
        }
        let (name, reference) = match path.split_once('@') {
            Some((n, d)) => {
                if !is_sha256_digest(d) {
                    return Err(bad("a digest must be sha256:<64 lowercase hex>"));
                }
                (n, OciReference::Digest(d.to_string()))
            }
            None => match path.rsplit_once(':') {
                Some((n, t)) if !t.contains('/') => {
                    let ok = !t.is_empty()
                        && t.len() <= 128
                        && t.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
                    if !ok {
                        return Err(bad(
                            "a tag may hold letters, digits, '_', '.' and '-' (at most 128)",
                        ));
                    }
                    (n, OciReference::Tag(t.to_string()))
                }
                _ => (path, OciReference::Tag("latest".into())),
            },
        };
        let valid = !name.is_empty()
            && name.split('/').all(|c| {
                c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
                    && c.chars().all(|ch| {
                        ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch)
                    })
            });
        if !valid {
            return Err(bad(
                "the repository may hold lowercase letters, digits, '.', '_', '-' and '/'",
            ));
        }
        Ok(Self {
            registry: registry.to_string(),
            repository: name.to_string(),
            reference,
        })
    }

    /// `registry/repository:tag` or `registry/repository@digest`, as
    /// `docker` writes it.
    pub fn whole(&self) -> String {
        match &self.reference {
            OciReference::Tag(t) => format!("{}/{}:{t}", self.registry, self.repository),
            OciReference::Digest(d) => format!("{}/{}@{d}", self.registry, self.repository),
        }
    }

    /// The blob URL path of `digest` in this repository.
    pub fn blob_path(&self, digest: &str) -> String {
        format!("/v2/{}/blobs/{digest}", self.repository)
    }
}

impl fmt::Display for OciRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oci://{}", self.whole())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tags_digests_and_ports() {
        let r = OciRef::parse("oci://registry.example/models/llama3:8b").unwrap();
        assert_eq!(r.registry, "registry.example");
        assert_eq!(r.repository, "models/llama3");
        assert_eq!(r.reference, OciReference::Tag("8b".into()));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = OciRef::parse(&format!("oci://127.0.0.1:5000/models/fake@{d}")).unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.reference, OciReference::Digest(d.clone()));
        assert_eq!(r.whole(), format!("127.0.0.1:5000/models/fake@{d}"));
        let r = OciRef::parse("oci://localhost:5000/m").unwrap();
        assert_eq!(r.reference.as_str(), "latest");
        assert_eq!(r.blob_path("sha256:x"), "/v2/m/blobs/sha256:x");
    }

    #[test]
    fn refuses_malformed_references() {
        for bad in [
            "docker://x/y",
            "oci://",
            "oci://registry",
            "oci://reg/",
            "oci://reg/UPPER",
            "oci://reg/a//b",
            "oci://reg/a:",
            "oci://reg/a@sha256:abc",
            "oci://reg/a@md5:00",
            "oci://reg/../x",
            "oci://re g/x",
        ] {
            assert!(OciRef::parse(bad).is_err(), "{bad}");
        }
    }
}
