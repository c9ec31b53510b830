//! The task id of a download: the one place that says which bytes are the
//! same task, so that a `get`, the daemon's Hugging Face endpoint, its
//! registry mirror and a preheat all name a file the same way (a preheat
//! that warmed another id than the pull computes is the classic "SUCCESS,
//! but pulls still go to the origin").
//!
//! - A file whose sha256 is known (an LFS file of the Hub, an OCI blob,
//!   `get --digest`) is keyed by that digest, whatever URL serves it.
//! - Otherwise by its URL, normalized: scheme and host lower-cased, the
//!   default port and the fragment dropped, and the query parameters that
//!   only sign or route a request removed (the list Dragonfly filters by
//!   default: S3 `X-Amz-*`, GCS `X-Goog-*`, OSS, OBS, COS and containerd's
//!   `ns`), so the same object under two signed URLs is one task.
//!
//! A new kind of origin (object storage by bucket and key, say) adds a
//! [`TaskKey`] variant here and nothing else changes for its callers.

use crate::TaskId;

/// Query parameters removed before a URL becomes a task id (compared
/// case-insensitively). The signatures and expiries of presigned URLs change
/// with every signing; the object they name does not.
pub const FILTERED_QUERY_PARAMS: &[&str] = &[
    // S3
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
    "X-Amz-User-Agent",
    // GCS
    "X-Goog-Algorithm",
    "X-Goog-Credential",
    "X-Goog-Date",
    "X-Goog-Expires",
    "X-Goog-SignedHeaders",
    "X-Goog-Signature",
    // OSS
    "OSSAccessKeyId",
    "Expires",
    "Signature",
    "SecurityToken",
    // OBS
    "AccessKeyId",
    "X-Obs-Date",
    "X-Obs-Security-Token",
    // COS
    "q-sign-algorithm",
    "q-ak",
    "q-sign-time",
    "q-key-time",
    "q-header-list",
    "q-url-param-list",
    "q-signature",
    "x-cos-security-token",
    // containerd
    "ns",
];

/// What a task is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKey<'a> {
    /// The file's sha256 is known.
    Sha256(&'a [u8; 32]),
    /// Only its URL is known.
    Url(&'a str),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid URL {url:?}: {why}")]
pub struct BadTaskUrl {
    pub url: String,
    pub why: String,
}

impl TaskKey<'_> {
    /// The key of a file at `url`, with `digest` when its sha256 is known.
    pub fn of<'a>(url: &'a str, digest: Option<&'a [u8; 32]>) -> TaskKey<'a> {
        match digest {
            Some(d) => TaskKey::Sha256(d),
            None => TaskKey::Url(url),
        }
    }

    /// The task id, with the default filtered query parameters.
    pub fn task_id(&self) -> Result<TaskId, BadTaskUrl> {
        self.task_id_filtering(FILTERED_QUERY_PARAMS)
    }

    /// The task id, removing `filtered` query parameters from a URL key
    /// (a preheat's `filtered_query_params`; the default list when empty).
    pub fn task_id_filtering<S: AsRef<str>>(&self, filtered: &[S]) -> Result<TaskId, BadTaskUrl> {
        match self {
            TaskKey::Sha256(d) => Ok(TaskId::from_sha256(d)),
            TaskKey::Url(u) => Ok(TaskId::from_url(&id_url(u, filtered)?)),
        }
    }
}

/// `url` as its task id sees it: normalized, without the fragment and the
/// `filtered` query parameters (the default list when `filtered` is empty).
pub fn id_url<S: AsRef<str>>(url: &str, filtered: &[S]) -> Result<String, BadTaskUrl> {
    let mut u = url::Url::parse(url).map_err(|e| BadTaskUrl {
        url: url.to_string(),
        why: e.to_string(),
    })?;
    u.set_fragment(None);
    let drop = |k: &str| {
        if filtered.is_empty() {
            FILTERED_QUERY_PARAMS
                .iter()
                .any(|f| f.eq_ignore_ascii_case(k))
        } else {
            filtered.iter().any(|f| f.as_ref().eq_ignore_ascii_case(k))
        }
    };
    if u.query().is_some() {
        let kept: Vec<(String, String)> = u
            .query_pairs()
            .filter(|(k, _)| !drop(k))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if kept.is_empty() {
            u.set_query(None);
        } else {
            u.query_pairs_mut().clear().extend_pairs(kept);
        }
    }
    Ok(u.to_string())
}

/// Splits a preheat's `filtered_query_params` (`&`-separated, as
/// Dragonfly's API takes it).
pub fn parse_filtered(params: &str) -> Vec<String> {
    params
        .split('&')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(url: &str) -> TaskId {
        TaskKey::Url(url).task_id().unwrap()
    }

    #[test]
    fn signed_url_variants_are_one_task() {
        let a = "https://bucket.s3.amazonaws.com/m/model.safetensors?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F1&X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=abc";
        let b = "https://BUCKET.s3.amazonaws.com:443/m/model.safetensors?X-Amz-Signature=def&X-Amz-Date=20260102T000000Z#frag";
        assert_eq!(id(a), id(b));
        assert_eq!(
            id(a),
            id("https://bucket.s3.amazonaws.com/m/model.safetensors")
        );
        let gcs =
            "https://storage.googleapis.com/b/o?X-Goog-Signature=1&X-Goog-Date=2&x-goog-expires=3";
        assert_eq!(id(gcs), id("https://storage.googleapis.com/b/o"));
    }

    #[test]
    fn other_query_parameters_still_name_different_files() {
        let v1 = id("https://o/file?version=1&X-Amz-Signature=a");
        let v2 = id("https://o/file?version=2&X-Amz-Signature=a");
        assert_ne!(v1, v2);
        assert_eq!(v1, id("https://o/file?version=1"));
        assert_ne!(id("https://o/a"), id("https://o/b"));
    }

    #[test]
    fn custom_filter_replaces_the_default() {
        let k = TaskKey::Url("https://o/f?token=1&X-Amz-Date=2");
        let custom = parse_filtered("token&");
        assert_eq!(custom, vec!["token".to_string()]);
        assert_eq!(
            k.task_id_filtering(&custom).unwrap(),
            TaskId::from_url("https://o/f?X-Amz-Date=2")
        );
        assert_ne!(k.task_id_filtering(&custom).unwrap(), id("https://o/f"));
    }

    #[test]
    fn a_digest_key_ignores_the_url() {
        let d = [3u8; 32];
        assert_eq!(
            TaskKey::of("https://a/x", Some(&d)).task_id().unwrap(),
            TaskKey::of("https://b/y?z=1", Some(&d)).task_id().unwrap()
        );
        assert_eq!(
            TaskKey::Sha256(&d).task_id().unwrap(),
            TaskId::from_sha256(&d)
        );
        assert!(TaskKey::Url("not a url").task_id().is_err());
    }
}

/// Which of `schedulers` owns `task` when a cluster has several:
/// rendezvous hashing over their endpoints, so every daemon and the manager
/// agree from the same list, and when one goes only its tasks move.
pub fn owner<'a, S: AsRef<str>>(task: &TaskId, schedulers: &'a [S]) -> Option<&'a S> {
    use sha2::{Digest, Sha256};
    schedulers.iter().max_by_key(|s| {
        let mut h = Sha256::new();
        h.update(s.as_ref().as_bytes());
        h.update(task.as_bytes());
        let d = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&d[..8]);
        (u64::from_be_bytes(first), s.as_ref().to_string())
    })
}

#[cfg(test)]
mod owner_tests {
    use super::*;

    #[test]
    fn only_the_tasks_of_a_gone_scheduler_move() {
        let all = ["http://a:7400", "http://b:7400", "http://c:7400"];
        let tasks: Vec<TaskId> = (0..300)
            .map(|i| TaskId::from_url(&format!("u{i}")))
            .collect();
        let before: Vec<&str> = tasks.iter().map(|t| *owner(t, &all).unwrap()).collect();
        for s in all {
            assert!(
                before.iter().filter(|b| **b == s).count() > 60,
                "spread over {s}"
            );
        }
        let left = ["http://a:7400", "http://c:7400"];
        for (t, b) in tasks.iter().zip(&before) {
            let now = *owner(t, &left).unwrap();
            if *b != "http://b:7400" {
                assert_eq!(now, *b);
            }
        }
        assert!(owner::<&str>(&tasks[0], &[]).is_none());
    }
}
