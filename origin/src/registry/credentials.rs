//! Who to be towards a registry: a login from the command line, else the
//! user's docker `config.json` (`$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`), else anonymous.

use super::naming::api_host;
use base64::Engine as _;
use std::path::PathBuf;

#[derive(Clone, Default)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic {
        user: String,
        password: String,
    },
    /// A whole `Authorization` value used as given: a token the registry
    /// (or whoever fronts it, as Harbor does for a preheat) already issued.
    Header(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => write!(f, "Anonymous"),
            Credentials::Basic { user, .. } => write!(f, "Basic({user}, <redacted>)"),
            Credentials::Header(_) => write!(f, "Header(<redacted>)"),
        }
    }
}

impl Credentials {
    /// The `Authorization` value of a login (`Basic`, or a header given as
    /// is); `None` when anonymous.
    pub fn basic_header(&self) -> Option<String> {
        match self {
            Credentials::Anonymous => None,
            Credentials::Basic { user, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )),
            Credentials::Header(h) => Some(h.clone()),
        }
    }

    /// The credentials for `registry` in the docker `config.json`
    /// ([`docker_config_logins`]); anonymous when there is none.
    pub fn from_docker_config(registry: &str) -> Result<Self, DockerConfigError> {
        let host = api_host(registry);
        Ok(docker_config_logins()?
            .into_iter()
            .find(|(h, _)| *h == host)
            .map(|(_, c)| c)
            .unwrap_or_default())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read {}: {why}", path.display())]
pub struct DockerConfigError {
    pub path: PathBuf,
    pub why: DockerConfigFault,
}

#[derive(Debug, thiserror::Error)]
pub enum DockerConfigFault {
    #[error("invalid JSON: {0}")]
    Json(serde_json::Error),
    #[error("the auth of {host} is not base64: {error}")]
    Base64 {
        host: String,
        error: base64::DecodeError,
    },
    #[error("the auth of {0} is not UTF-8 user:password")]
    NotUserPassword(String),
}

/// Every login in the docker `config.json` by the API `host[:port]` it is
/// for (Docker Hub's `https://index.docker.io/v1/` is
/// `registry-1.docker.io`); none when the file does not exist.
pub fn docker_config_logins() -> Result<Vec<(String, Credentials)>, DockerConfigError> {
    let path = match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => PathBuf::from(d).join("config.json"),
        None => match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".docker/config.json"),
            None => return Ok(Vec::new()),
        },
    };
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(Vec::new());
    };
    parse_logins(&bytes).map_err(|why| DockerConfigError { path, why })
}

fn parse_logins(bytes: &[u8]) -> Result<Vec<(String, Credentials)>, DockerConfigFault> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(DockerConfigFault::Json)?;
    let mut out = Vec::new();
    for (key, entry) in v
        .get("auths")
        .and_then(|a| a.as_object())
        .into_iter()
        .flatten()
    {
        let host = api_host(key);
        let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) else {
            continue;
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth)
            .map_err(|error| DockerConfigFault::Base64 {
                host: host.clone(),
                error,
            })?;
        let text = String::from_utf8(decoded)
            .map_err(|_| DockerConfigFault::NotUserPassword(host.clone()))?;
        let (user, password) = text
            .split_once(':')
            .ok_or_else(|| DockerConfigFault::NotUserPassword(host.clone()))?;
        out.push((
            host,
            Credentials::Basic {
                user: user.into(),
                password: password.into(),
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_logins_are_keyed_by_api_host() {
        // u:p and a:b
        let config = br#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "dTpw"},
            "127.0.0.1:5000": {"auth": "YTpi"},
            "helper.example": {}
        }}"#;
        let mut logins = parse_logins(config).unwrap();
        logins.sort_by(|a, b| a.0.cmp(&b.0));
        let hosts: Vec<&str> = logins.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(hosts, ["127.0.0.1:5000", "registry-1.docker.io"]);
        assert_eq!(logins[1].1.basic_header().as_deref(), Some("Basic dTpw"));
        assert!(parse_logins(br#"{"auths": {"x": {"auth": "!!"}}}"#).is_err());
        assert!(parse_logins(br#"{"auths": {"x": {"auth": "bm9jb2xvbg=="}}}"#).is_err());
    }

    #[test]
    fn credentials_hide_the_password() {
        let c = Credentials::Basic {
            user: "u".into(),
            password: "s3cret".into(),
        };
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(c.basic_header().as_deref(), Some("Basic dTpzM2NyZXQ="));
        assert_eq!(Credentials::Anonymous.basic_header(), None);
    }
}
