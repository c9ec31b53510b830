//! What can go wrong talking to an origin, typed, with a coarse
//! [`ErrorKind`] a caller can act on or serialize (a 404 is not a digest
//! mismatch, and neither is a refused token).
//!
//! Transport errors keep the `reqwest::Error` itself. Its `Display` hides
//! the cause ("error sending request"), so these errors print the whole
//! chain themselves with [`error_chain`] and do not also hand it out as
//! `source()`: under `{:#}` the causes would print twice.

use reqwest::StatusCode;
use std::time::Duration;

/// What kind of failure an error is, for a caller that has to decide
/// (retry, ask for credentials, report upstream) or to report it in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A URL no backend takes (wrong scheme, no host, malformed).
    BadUrl,
    /// The origin says the object does not exist (404, 410, an
    /// unknown manifest, repository or revision).
    NotFound,
    /// The origin refused the credentials, or there were none and it needs some.
    Unauthorized,
    /// Rate-limited or down for now (429, 5xx, 408): worth retrying later.
    Unavailable,
    /// Any other refusal (4xx) of a request the origin understood.
    Refused,
    /// The connection failed, timed out or broke mid-answer.
    Transport,
    /// The origin answered, but not with what the protocol promises
    /// (no Range support, a short body, invalid JSON, a missing header).
    BadAnswer,
    /// The bytes are not the ones their digest names.
    DigestMismatch,
    /// The backend cannot do this at all (listing a plain HTTP URL).
    Unsupported,
    /// Local configuration is wrong (an unreadable docker config).
    Config,
}

impl ErrorKind {
    /// The kind of an HTTP error status.
    pub fn of_status(status: StatusCode) -> Self {
        match status.as_u16() {
            401 | 403 => ErrorKind::Unauthorized,
            404 | 410 => ErrorKind::NotFound,
            408 | 429 => ErrorKind::Unavailable,
            s if s >= 500 => ErrorKind::Unavailable,
            _ => ErrorKind::Refused,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("invalid URL {url:?}: {why}")]
    BadUrl { url: String, why: String },
    #[error("origin answered {status} for {url}")]
    Status {
        url: String,
        status: StatusCode,
        /// The origin's `Retry-After` (429, 503): when to ask again.
        retry_after: Option<Duration>,
    },
    #[error("cannot fetch {url}: {}", error_chain(error))]
    Transport { url: String, error: reqwest::Error },
    #[error("{url} does not support HTTP Range requests, which piece downloads need")]
    NoRangeSupport { url: String },
    #[error("{url} did not say how long it is (no Content-Range or Content-Length)")]
    UnknownLength { url: String },
    #[error("{url} sent {got} bytes for a {want}-byte range")]
    ShortBody { url: String, got: u64, want: u64 },
    #[error("{url} changed while it was being downloaded (its {what} was {was}, now {now}): the partial download was discarded, so that no file mixes two versions; run the command again to fetch the new version")]
    Changed {
        url: String,
        what: &'static str,
        was: String,
        now: String,
    },
    #[error("{url}: the origin refused the request ({status}): check the credentials (--hf-token for the Hub; --registry-user/--registry-password or ~/.docker/config.json for a registry)")]
    Unauthorized {
        url: String,
        status: StatusCode,
        /// A `WWW-Authenticate: Bearer ...` challenge (a registry's token flow).
        challenge: Option<String>,
    },
    #[error("{url}: no pull token from {realm:?}: {failure}")]
    Token {
        url: String,
        realm: String,
        failure: TokenFailure,
    },
    #[error("{url}: the bytes have digest {got}, not the {expected} they were asked by")]
    DigestMismatch {
        url: String,
        expected: String,
        got: String,
    },
    #[error("{url}: the answer is over {limit} bytes, more than a {what} may be")]
    TooLarge {
        url: String,
        what: &'static str,
        limit: u64,
    },
    #[error("{url}: invalid JSON in the answer: {error}")]
    BadJson {
        url: String,
        error: serde_json::Error,
    },
    #[error("unexpected answer from {url}: {why}")]
    BadAnswer { url: String, why: String },
    #[error("{url}: the {backend} backend cannot {operation}")]
    Unsupported {
        url: String,
        backend: &'static str,
        operation: &'static str,
    },
    /// The Hub backend's own error (with the Hub's error code).
    #[error(transparent)]
    Hub(Box<crate::hub::HubError>),
    /// The registry backend's own error (with the registry's words).
    #[error(transparent)]
    Registry(Box<crate::registry::RegistryError>),
    /// An object store's refusal (with its error code), or its credentials.
    #[error(transparent)]
    Object(Box<crate::object::ObjectError>),
}

/// Why a registry's token realm gave no token.
#[derive(Debug, thiserror::Error)]
pub enum TokenFailure {
    #[error("cannot read the challenge {0:?}")]
    BadChallenge(String),
    #[error("the realm is not a URL")]
    RealmNotUrl,
    #[error("{}", error_chain(.0))]
    Transport(reqwest::Error),
    #[error(
        "it answered {0} (check --registry-user/--registry-password or ~/.docker/config.json)"
    )]
    Status(StatusCode),
    #[error("its answer is not JSON: {0}")]
    BadJson(serde_json::Error),
    #[error("its answer holds no token")]
    NoToken,
}

impl OriginError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            OriginError::BadUrl { .. } => ErrorKind::BadUrl,
            OriginError::Status { status, .. } => ErrorKind::of_status(*status),
            OriginError::Transport { .. } => ErrorKind::Transport,
            OriginError::NoRangeSupport { .. }
            | OriginError::UnknownLength { .. }
            | OriginError::ShortBody { .. }
            | OriginError::Changed { .. }
            | OriginError::TooLarge { .. }
            | OriginError::BadJson { .. }
            | OriginError::BadAnswer { .. } => ErrorKind::BadAnswer,
            OriginError::Unauthorized { .. } => ErrorKind::Unauthorized,
            OriginError::Token { failure, .. } => match failure {
                TokenFailure::Transport(_) => ErrorKind::Transport,
                TokenFailure::Status(s) if ErrorKind::of_status(*s) == ErrorKind::Unavailable => {
                    ErrorKind::Unavailable
                }
                TokenFailure::Status(_) => ErrorKind::Unauthorized,
                _ => ErrorKind::BadAnswer,
            },
            OriginError::DigestMismatch { .. } => ErrorKind::DigestMismatch,
            OriginError::Unsupported { .. } => ErrorKind::Unsupported,
            OriginError::Hub(e) => e.kind(),
            OriginError::Registry(e) => e.kind(),
            OriginError::Object(e) => e.kind(),
        }
    }

    /// Whether another attempt may go better: the origin was unavailable,
    /// the connection broke, or the body came short.
    pub fn retryable(&self) -> bool {
        match self {
            OriginError::ShortBody { .. } => true,
            OriginError::Registry(e) => match &**e {
                crate::registry::RegistryError::Origin { error, .. } => error.retryable(),
                e => matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Transport),
            },
            e => matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Transport),
        }
    }

    /// How long the origin asked us to wait (`Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            OriginError::Status { retry_after, .. } => *retry_after,
            OriginError::Registry(e) => match &**e {
                crate::registry::RegistryError::Origin { error, .. } => error.retry_after(),
                _ => None,
            },
            _ => None,
        }
    }

    pub(crate) fn transport(url: &str, error: reqwest::Error) -> Self {
        OriginError::Transport {
            url: url.to_string(),
            error,
        }
    }

    pub(crate) fn bad_answer(url: &str, why: impl Into<String>) -> Self {
        OriginError::BadAnswer {
            url: url.to_string(),
            why: why.into(),
        }
    }
}

/// An error and its causes on one line: reqwest's Display hides the cause
/// ("error sending request").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        message.push_str(": ");
        message.push_str(&s.to_string());
        src = s.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        let status = |s: u16| OriginError::Status {
            url: "u".into(),
            status: StatusCode::from_u16(s).unwrap(),
            retry_after: None,
        };
        assert_eq!(status(404).kind(), ErrorKind::NotFound);
        assert_eq!(status(401).kind(), ErrorKind::Unauthorized);
        assert_eq!(status(429).kind(), ErrorKind::Unavailable);
        assert_eq!(status(503).kind(), ErrorKind::Unavailable);
        assert_eq!(status(400).kind(), ErrorKind::Refused);
        assert!(status(503).retryable() && status(429).retryable());
        assert!(!status(404).retryable() && !status(400).retryable());
        let mismatch = OriginError::DigestMismatch {
            url: "u".into(),
            expected: "sha256:a".into(),
            got: "sha256:b".into(),
        };
        assert_eq!(mismatch.kind(), ErrorKind::DigestMismatch);
        assert!(!mismatch.retryable());
        assert_eq!(
            serde_json::to_string(&ErrorKind::DigestMismatch).unwrap(),
            "\"digest_mismatch\""
        );
    }
}
