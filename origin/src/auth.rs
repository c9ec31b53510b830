//! Credentials towards origins, and the one registry token flow.
//!
//! - [`OriginAuth`]: an `Authorization` value bound to one origin
//!   (`scheme://host:port`). It is sent there only: never to another host,
//!   and never along a redirect to one (reqwest drops it when the host
//!   changes, e.g. from the Hub to its CDN). Its `Debug` hides the value.
//! - [`RegistryTokens`]: the token flow of OCI registries (Docker Hub,
//!   Harbor, GHCR). A request answered `401` with `WWW-Authenticate: Bearer
//!   realm=..,service=..,scope=..` is retried with a token from the realm,
//!   asked for with the Basic login held for the registry, or anonymously.
//!   The token is kept for the repository until it expires, so the
//!   manifest GETs of the registry client and the blob GETs of the fetcher
//!   go through this one flow (and one token serves every blob of a repo).

use crate::error::{OriginError, TokenFailure};
use crate::origin_key::OriginKey;
use reqwest::Url;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// An `Authorization` value bound to one origin (`scheme://host:port`).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OriginAuth {
    origin: OriginKey,
    value: String,
}

impl std::fmt::Debug for OriginAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OriginAuth({}, <redacted>)", self.origin)
    }
}

impl OriginAuth {
    /// `value` (a whole `Authorization` header value) for the origin of
    /// `url`, an http(s) URL.
    pub fn new(url: &str, value: impl Into<String>) -> Result<Self, OriginError> {
        let u = crate::http::check_url(url)?;
        Ok(Self {
            origin: OriginKey::of(&u),
            value: value.into(),
        })
    }

    /// `Bearer <token>` for the origin of `url`.
    pub fn bearer(url: &str, token: &str) -> Result<Self, OriginError> {
        Self::new(url, format!("Bearer {token}"))
    }

    /// The header value, when `url` is on this credential's origin.
    pub fn for_url(&self, url: &Url) -> Option<&str> {
        self.for_origin(&OriginKey::of(url))
    }

    /// The header value, when `origin` is this credential's.
    pub fn for_origin(&self, origin: &OriginKey) -> Option<&str> {
        (*origin == self.origin).then_some(self.value.as_str())
    }

    pub fn origin(&self) -> &OriginKey {
        &self.origin
    }

    pub fn value(&self) -> &str {
        &self.value
    }

    /// Whether this is a login (`Basic`), which a token realm accepts,
    /// rather than a token.
    pub fn is_basic(&self) -> bool {
        is_basic(&self.value)
    }
}

pub(crate) fn is_basic(authorization: &str) -> bool {
    authorization
        .get(..6)
        .is_some_and(|p| p.eq_ignore_ascii_case("basic "))
}

/// The `WWW-Authenticate` value of a `401`/`403` when it is a Bearer
/// challenge (a registry's token flow); a Basic one is not.
pub fn bearer_challenge(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.trim_start().to_ascii_lowercase().starts_with("bearer "))
        .map(str::to_string)
}

/// `Bearer realm="https://auth",service="registry",scope="repository:a:pull"`
/// → its parameters; `None` for another scheme or a malformed value.
pub fn parse_bearer_challenge(v: &str) -> Option<HashMap<String, String>> {
    let v = v.trim();
    v.get(..7).filter(|p| p.eq_ignore_ascii_case("bearer "))?;
    let mut params = HashMap::new();
    let mut s = &v[7..];
    while !s.trim().is_empty() {
        let (key, after) = s.split_once('=')?;
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = match after.strip_prefix('"') {
            Some(q) => {
                let end = q.find('"')?;
                (q[..end].to_string(), &q[end + 1..])
            }
            None => {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_string(), &after[end..])
            }
        };
        params.insert(key, value);
        s = next.trim_start().trim_start_matches(',');
    }
    Some(params)
}

/// What a token is held under: the registry repository of a distribution
/// API URL (`/v2/<name>/blobs/..`, `/manifests/..`, `/tags/list`), since a
/// pull token's scope is the repository; any other URL stands for itself.
fn token_key(url: &Url) -> String {
    let origin = OriginKey::of(url);
    let path = url.path();
    let repo = path.strip_prefix("/v2/").and_then(|rest| {
        ["/blobs/", "/manifests/"]
            .iter()
            .find_map(|kind| rest.rfind(kind).map(|i| &rest[..i]))
            .or_else(|| rest.strip_suffix("/tags/list"))
    });
    match repo {
        Some(r) if !r.is_empty() => format!("{origin}/v2/{r}"),
        _ => format!("{origin}{path}"),
    }
}

/// Whether a Basic login may be sent to a token realm at `url`: over
/// https, or to this host (loopback) over http.
pub fn login_may_go_to(url: &Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => url.host_str().is_some_and(|h| {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            h.eq_ignore_ascii_case("localhost")
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }),
        _ => false,
    }
}

/// Pull tokens from registries' realms, each held until it expires.
pub struct RegistryTokens {
    client: reqwest::Client,
    held: Mutex<HashMap<String, (String, Instant)>>,
}

impl RegistryTokens {
    /// `client` asks the realms (it may be the one that sends the requests).
    pub fn new(client: reqwest::Client) -> Self {
        Self {
            client,
            held: Mutex::new(HashMap::new()),
        }
    }

    /// The `Authorization` (`Bearer <token>`) held for `url`'s repository,
    /// while it lives.
    pub fn held(&self, url: &Url) -> Option<String> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(&token_key(url))
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(v, _)| v.clone())
    }

    /// Answers `challenge` (from a `401` of `url`): asks its realm for a
    /// token with `login` when it is Basic, else anonymously, and holds it
    /// for `url`'s repository. Returns the `Authorization` to retry with.
    pub async fn exchange(
        &self,
        url: &Url,
        challenge: &str,
        login: Option<&str>,
    ) -> Result<String, OriginError> {
        let fail = |realm: &str, failure| OriginError::Token {
            url: url.to_string(),
            realm: realm.to_string(),
            failure,
        };
        let params = parse_bearer_challenge(challenge)
            .ok_or_else(|| fail("", TokenFailure::BadChallenge(challenge.to_string())))?;
        let realm = params.get("realm").cloned().unwrap_or_default();
        let fail = |failure| fail(&realm, failure);
        let mut realm_url = Url::parse(&realm).map_err(|_| fail(TokenFailure::RealmNotUrl))?;
        if !matches!(realm_url.scheme(), "http" | "https") {
            return Err(fail(TokenFailure::RealmNotUrl));
        }
        {
            let mut q = realm_url.query_pairs_mut();
            for key in ["service", "scope"] {
                if let Some(v) = params.get(key) {
                    q.append_pair(key, v);
                }
            }
        }
        let login_allowed = login_may_go_to(&realm_url);
        let mut req = self.client.get(realm_url);
        // Only a login goes to the realm; a token held for the registry
        // means nothing there. And a login travels encrypted, or stays on
        // this host: never in clear text across a network.
        if let Some(basic) = login.filter(|v| is_basic(v)) {
            if login_allowed {
                req = req.header(reqwest::header::AUTHORIZATION, basic);
            } else {
                tracing::warn!(%realm, "the registry's token realm is plain http on another host: asking it for a token without the login (serve the realm over https)");
            }
        }
        let resp = req
            .send()
            .await
            .map_err(|e| fail(TokenFailure::Transport(e)))?;
        if !resp.status().is_success() {
            return Err(fail(TokenFailure::Status(resp.status())));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| fail(TokenFailure::Transport(e)))?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| fail(TokenFailure::BadJson(e)))?;
        let token = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| fail(TokenFailure::NoToken))?;
        // The spec's default life is 60 s; keep a margin for the clock.
        let life = v
            .get("expires_in")
            .and_then(|e| e.as_u64())
            .unwrap_or(60)
            .max(10);
        let until = Instant::now() + Duration::from_secs(life - 5);
        let value = format!("Bearer {token}");
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        held.retain(|_, (_, until)| now < *until);
        held.insert(token_key(url), (value.clone(), until));
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_goes_only_over_https_or_to_loopback() {
        for ok in [
            "https://auth.example/token",
            "http://127.0.0.1:5000/token",
            "http://[::1]/t",
            "http://localhost/t",
        ] {
            assert!(login_may_go_to(&Url::parse(ok).unwrap()), "{ok}");
        }
        for no in [
            "http://auth.example/token",
            "http://10.0.0.5/token",
            "http://localhost.evil.example/t",
            "ftp://127.0.0.1/t",
        ] {
            assert!(!login_may_go_to(&Url::parse(no).unwrap()), "{no}");
        }
    }

    #[test]
    fn credentials_stay_with_their_origin() {
        let a = OriginAuth::bearer("https://hub.example/api", "secret").unwrap();
        let same = Url::parse("https://hub.example:443/org/m/resolve/main/x").unwrap();
        let cdn = Url::parse("https://cdn.example/blobs/x").unwrap();
        let other_port = Url::parse("https://hub.example:8443/x").unwrap();
        let other_scheme = Url::parse("http://hub.example/x").unwrap();
        assert_eq!(a.for_url(&same), Some("Bearer secret"));
        assert_eq!(a.for_url(&cdn), None);
        assert_eq!(a.for_url(&other_port), None);
        assert_eq!(a.for_url(&other_scheme), None);
        assert!(
            !format!("{a:?}").contains("secret"),
            "Debug must not print the token"
        );
        assert!(OriginAuth::new("file:///etc/passwd", "Basic x").is_err());
        assert!(!a.is_basic());
        assert!(OriginAuth::new("https://r.example/", "basic dTpw")
            .unwrap()
            .is_basic());
    }

    #[test]
    fn bearer_challenges_parse() {
        let p = parse_bearer_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:models/x:pull""#,
        )
        .unwrap();
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:models/x:pull");
        let unquoted = parse_bearer_challenge("bearer realm=https://a/t, service=r").unwrap();
        assert_eq!(unquoted["realm"], "https://a/t");
        assert_eq!(unquoted["service"], "r");
        assert!(parse_bearer_challenge("Basic realm=\"x\"").is_none());
        assert!(parse_bearer_challenge("Bearer realm=\"unterminated").is_none());
    }

    #[test]
    fn one_token_serves_a_whole_repository() {
        let u = |s: &str| token_key(&Url::parse(s).unwrap());
        let blob = u("https://r.example/v2/models/x/blobs/sha256:aa");
        assert_eq!(blob, u("https://r.example/v2/models/x/manifests/v1"));
        assert_eq!(blob, u("https://r.example:443/v2/models/x/tags/list?n=1"));
        assert_ne!(blob, u("https://r.example/v2/models/y/blobs/sha256:aa"));
        assert_ne!(blob, u("http://r.example/v2/models/x/blobs/sha256:aa"));
        assert_eq!(
            u("https://cdn.example/a/b?sig=1"),
            "https://cdn.example:443/a/b"
        );
    }
}
