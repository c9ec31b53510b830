//! The AWS CLI's shared files, `~/.aws/credentials` and `~/.aws/config`
//! (or `AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE`), read for the
//! profile `AWS_PROFILE` names (else `default`): the `object_store`
//! credential chain reads the environment, web identity, containers and
//! instance metadata, but not these files.
//!
//! Only static keys, the region and `endpoint_url` are read; a profile that
//! needs SSO or a `credential_process` is not (its keys belong in the
//! environment then).

use std::collections::HashMap;
use std::path::PathBuf;

/// What one profile says.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Profile {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(
        "AWS_PROFILE={0:?}, but neither ~/.aws/credentials nor ~/.aws/config has that profile"
    )]
    NoSuchProfile(String),
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Sections of an INI file: name → key → value. Indented lines (a
/// `services` block's nested settings) are skipped.
fn parse_ini(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut out: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut section: Option<String> = None;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim().to_string();
            out.entry(name.clone()).or_default();
            section = Some(name);
            continue;
        }
        if let (Some(s), Some((k, v))) = (&section, line.split_once('=')) {
            out.entry(s.clone())
                .or_default()
                .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    out
}

/// The profile `name` from the credentials file's text and the config
/// file's (where it is `[profile name]`, and `[default]` for the default).
pub fn from_texts(name: &str, credentials: &str, config: &str) -> Option<Profile> {
    let creds = parse_ini(credentials);
    let conf = parse_ini(config);
    let in_config = match name {
        "default" => conf.get("default"),
        n => conf.get(&format!("profile {n}")),
    };
    let in_creds = creds.get(name);
    if in_config.is_none() && in_creds.is_none() {
        return None;
    }
    let get = |key: &str| {
        in_creds
            .and_then(|s| s.get(key))
            .or_else(|| in_config.and_then(|s| s.get(key)))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    Some(Profile {
        access_key_id: get("aws_access_key_id"),
        secret_access_key: get("aws_secret_access_key"),
        session_token: get("aws_session_token"),
        region: get("region"),
        endpoint_url: get("endpoint_url"),
    })
}

/// The profile of this process's environment; `None` when there is no
/// file or no such profile (an error when `AWS_PROFILE` names one that is
/// missing).
pub fn load(env: impl Fn(&str) -> Option<String>) -> Result<Option<Profile>, ProfileError> {
    let home = env("HOME").map(PathBuf::from);
    let path = |var: &str, file: &str| {
        env(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(file)))
    };
    let read = |p: Option<PathBuf>| -> Result<String, ProfileError> {
        match p {
            None => Ok(String::new()),
            Some(path) => match std::fs::read_to_string(&path) {
                Ok(t) => Ok(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
                Err(source) => Err(ProfileError::Unreadable { path, source }),
            },
        }
    };
    let credentials = read(path("AWS_SHARED_CREDENTIALS_FILE", "credentials"))?;
    let config = read(path("AWS_CONFIG_FILE", "config"))?;
    let named = env("AWS_PROFILE").filter(|p| !p.is_empty());
    let name = named.clone().unwrap_or_else(|| "default".into());
    match (from_texts(&name, &credentials, &config), named) {
        (Some(p), _) => Ok(Some(p)),
        (None, Some(n)) => Err(ProfileError::NoSuchProfile(n)),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREDS: &str = "\
[default]
aws_access_key_id = AKIDEFAULT
aws_secret_access_key = secret-default

[ci]
aws_access_key_id=AKICI
aws_secret_access_key=secret-ci
aws_session_token = tok
";
    const CONFIG: &str = "\
# comment
[default]
region = eu-west-1

[profile ci]
region = us-west-2
endpoint_url = http://127.0.0.1:9000
services = local
  s3 =
    endpoint_url = http://ignored
";

    #[test]
    fn a_profile_joins_both_files() {
        let p = from_texts("ci", CREDS, CONFIG).unwrap();
        assert_eq!(p.access_key_id.as_deref(), Some("AKICI"));
        assert_eq!(p.secret_access_key.as_deref(), Some("secret-ci"));
        assert_eq!(p.session_token.as_deref(), Some("tok"));
        assert_eq!(p.region.as_deref(), Some("us-west-2"));
        assert_eq!(p.endpoint_url.as_deref(), Some("http://127.0.0.1:9000"));
        let d = from_texts("default", CREDS, CONFIG).unwrap();
        assert_eq!(d.access_key_id.as_deref(), Some("AKIDEFAULT"));
        assert_eq!(d.region.as_deref(), Some("eu-west-1"));
        assert!(from_texts("nope", CREDS, CONFIG).is_none());
        assert!(
            !format!("{p:?}").contains("secret-ci"),
            "Debug hides the secret"
        );
    }

    #[test]
    fn files_come_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".aws")).unwrap();
        std::fs::write(dir.path().join(".aws/credentials"), CREDS).unwrap();
        let home = dir.path().display().to_string();
        let env = |profile: Option<&'static str>| {
            let home = home.clone();
            move |k: &str| match k {
                "HOME" => Some(home.clone()),
                "AWS_PROFILE" => profile.map(str::to_string),
                _ => None,
            }
        };
        let p = load(env(None)).unwrap().unwrap();
        assert_eq!(p.access_key_id.as_deref(), Some("AKIDEFAULT"));
        assert_eq!(p.region, None, "no config file");
        assert!(matches!(
            load(env(Some("missing"))),
            Err(ProfileError::NoSuchProfile(_))
        ));
        let nothing = |k: &str| (k == "HOME").then(|| "/nonexistent".to_string());
        assert_eq!(load(nothing).unwrap(), None);
    }
}
