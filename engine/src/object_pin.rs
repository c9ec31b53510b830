//! Objects of stores that change them in place (object storage), named for
//! a task: before a download of `s3://bucket/key` starts or joins the
//! swarm, this node stats it with its own credentials, and the task is
//! named by what the stat saw: the object's sha256 where the store vouches
//! for one (`x-amz-checksum-sha256`), else the URL pinned to its version
//! and `ETag` ([`weightcast_origin::Backend::pin`]).
//!
//! That stat is also the access check of the swarm: a node that cannot
//! read the object's metadata never learns what its task is called, and
//! never asks peers for it. Seeds read the bytes with their own
//! credentials; none leave the node that holds them.
//!
//! A stat is reused for a few seconds, so that a client's HEAD and the
//! ranged GETs after it (the S3 endpoint) cost the store one HEAD.

use crate::engine::parse_digest;
use crate::request::GetError;
use crate::ttl_cache::TtlCache;
use std::time::Duration;
use weightcast_origin::{OriginAuth, OriginError, OriginFetcher, Pinned};

const PIN_TTL: Duration = Duration::from_secs(5);

pub(crate) struct ObjectPins {
    cache: TtlCache<String, Pinned>,
}

/// A task's URL and digest once its object is pinned.
pub(crate) struct Named {
    pub url: String,
    pub digest: Option<[u8; 32]>,
}

impl ObjectPins {
    pub fn new() -> Self {
        Self {
            cache: TtlCache::new(PIN_TTL, 4096),
        }
    }

    /// The object `url` pinned (`None`: its URL names its bytes already).
    pub async fn pin(
        &self,
        origin: &OriginFetcher,
        url: &str,
        auth: Option<&OriginAuth>,
    ) -> Result<Option<Pinned>, OriginError> {
        if let Some(p) = self.cache.get(&url.to_string()) {
            return Ok(Some(p));
        }
        let pinned = origin.pin(url, auth).await?;
        if let Some(p) = &pinned {
            self.cache.insert(url.to_string(), p.clone());
        }
        Ok(pinned)
    }

    /// What a task of `url` is named by: pinned when its store changes
    /// objects in place; `digest` (a caller's `--digest`) must then agree
    /// with the store's checksum.
    pub async fn name(
        &self,
        origin: &OriginFetcher,
        url: &str,
        digest: Option<[u8; 32]>,
        auth: Option<&OriginAuth>,
    ) -> Result<Named, GetError> {
        let Some(p) = self.pin(origin, url, auth).await? else {
            return Ok(Named {
                url: url.to_string(),
                digest,
            });
        };
        let stored = p.stat.digest.as_deref().map(parse_digest).transpose()?;
        match (digest, stored) {
            (Some(want), Some(got)) if want != got => {
                Err(GetError::Origin(OriginError::DigestMismatch {
                    url: url.to_string(),
                    expected: format!("sha256:{}", hex::encode(want)),
                    got: format!("sha256:{}", hex::encode(got)),
                }))
            }
            (want, got) => Ok(Named {
                url: p.url,
                digest: want.or(got),
            }),
        }
    }
}
