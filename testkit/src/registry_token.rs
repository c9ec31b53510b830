//! A registry token server, as Harbor's core is one for its registry: the
//! realm of distribution's `auth: token:` scheme. It checks a Basic login,
//! grants the actions a scope asks for (to the login; nothing to an
//! anonymous caller) and answers an RS256 JWT whose `x5c` carries the
//! signing certificate, which the registry trusts through its
//! `rootcertbundle`. The key and certificate come from the `openssl` CLI.
//!
//! Every token issued is recorded, so that a test can tell who did the
//! token dance and for which scopes.

use anyhow::{bail, Context, Result};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// The `service` the registry names in its challenges (the token's `aud`).
pub const SERVICE: &str = "weightcast-test-registry";
/// The token's `iss`, checked by the registry.
pub const ISSUER: &str = "weightcast-test-token-issuer";
/// How long a token lives, in seconds (Harbor's default is 30 minutes).
const LIFE_S: u64 = 300;

/// One token handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// The login's user; empty for an anonymous caller.
    pub subject: String,
    /// The scopes asked for (`repository:models/fake:pull`).
    pub scopes: Vec<String>,
    /// Whether the scopes were granted (a login) or not (anonymous).
    pub granted: bool,
}

struct TokenState {
    key: RsaKeyPair,
    rng: SystemRandom,
    /// The signing certificate, base64 DER, for the JWT's `x5c`.
    x5c: String,
    user: String,
    password: String,
    issued: Mutex<Vec<Issued>>,
}

pub struct TokenServer {
    /// `http://127.0.0.1:<port>/token`: the realm the registry names.
    pub realm: String,
    /// The PEM certificate the registry's `rootcertbundle` points at.
    pub cert: PathBuf,
    state: Arc<TokenState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The DER inside a one-object PEM file.
fn pem_der(path: &Path) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let b64: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    STANDARD
        .decode(b64.trim())
        .with_context(|| format!("{} is not PEM", path.display()))
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenState {
    /// A registry JWT granting `access` (distribution's claim set).
    fn jwt(&self, subject: &str, access: &[serde_json::Value]) -> Result<String> {
        let now = now_s();
        let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]});
        let claims = json!({
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + LIFE_S,
            "nbf": now.saturating_sub(10),
            "iat": now,
            "jti": format!("{:016x}", rand::random::<u64>()),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?)
        );
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &self.rng,
                signing_input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| anyhow::anyhow!("RS256 signing failed"))?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }

    /// The subject of a valid Basic login; `Ok(None)` for none given,
    /// `Err` for a wrong one.
    fn login(&self, headers: &HeaderMap) -> Result<Option<String>, ()> {
        let Some(v) = headers.get(header::AUTHORIZATION) else {
            return Ok(None);
        };
        let v = v.to_str().map_err(|_| ())?;
        let b64 = v
            .get(..6)
            .filter(|p| p.eq_ignore_ascii_case("basic "))
            .map(|_| &v[6..])
            .ok_or(())?;
        let plain = STANDARD.decode(b64.trim()).map_err(|_| ())?;
        let plain = String::from_utf8(plain).map_err(|_| ())?;
        match plain.split_once(':') {
            Some((u, p)) if u == self.user && p == self.password => Ok(Some(u.to_string())),
            _ => Err(()),
        }
    }
}

/// `repository:models/fake:pull,push` → distribution's access entry.
fn access_of(scope: &str) -> Option<serde_json::Value> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    Some(json!({
        "type": kind,
        "name": name,
        "actions": actions.split(',').filter(|a| !a.is_empty()).collect::<Vec<_>>(),
    }))
}

async fn token(
    State(s): State<Arc<TokenState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let subject = match s.login(&headers) {
        Ok(who) => who,
        Err(()) => return (
            StatusCode::UNAUTHORIZED,
            axum::Json(
                json!({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}),
            ),
        )
            .into_response(),
    };
    let pairs: Vec<(String, String)> =
        reqwest::Url::parse(&format!("http://realm/?{}", query.unwrap_or_default()))
            .map(|u| u.query_pairs().into_owned().collect())
            .unwrap_or_default();
    if pairs.iter().any(|(k, v)| k == "service" && v != SERVICE) {
        return (StatusCode::BAD_REQUEST, "unknown service").into_response();
    }
    // `scope` may repeat, and one value may hold several, space-separated.
    let scopes: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .filter(|v| !v.is_empty())
        .collect();
    let granted = subject.is_some();
    let access: Vec<serde_json::Value> = if granted {
        scopes.iter().filter_map(|sc| access_of(sc)).collect()
    } else {
        Vec::new()
    };
    let subject = subject.unwrap_or_default();
    let jwt = match s.jwt(&subject, &access) {
        Ok(t) => t,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    s.issued
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Issued {
            subject,
            scopes,
            granted,
        });
    axum::Json(json!({
        "token": jwt,
        "access_token": jwt,
        "expires_in": LIFE_S,
    }))
    .into_response()
}

impl TokenServer {
    /// Makes a key and certificate under `dir` and serves the realm on
    /// loopback, granting `user`/`password` whatever it asks.
    pub fn start(dir: &Path, user: &str, password: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let key_path = dir.join("token-key.pem");
        let cert = dir.join("token-cert.pem");
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=weightcast-test-token-issuer", "-keyout"])
            .arg(&key_path)
            .arg("-out")
            .arg(&cert)
            .output()
            .context("run openssl to make the token signing key (apt-get install openssl)")?;
        if !out.status.success() {
            bail!(
                "openssl req failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // `openssl req -newkey` writes PKCS#8, which ring reads.
        let key = RsaKeyPair::from_pkcs8(&pem_der(&key_path)?)
            .map_err(|e| anyhow::anyhow!("the openssl key is not PKCS#8 RSA: {e}"))?;
        let state = Arc::new(TokenState {
            key,
            rng: SystemRandom::new(),
            x5c: STANDARD.encode(pem_der(&cert)?),
            user: user.to_string(),
            password: password.to_string(),
            issued: Mutex::new(Vec::new()),
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let realm = format!("http://{}/token", listener.local_addr()?);
        let app = axum::Router::new()
            .route("/token", axum::routing::get(token))
            .with_state(state.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                tokio::select! {
                    _ = stopped => {}
                    _ = axum::serve(listener, app) => {}
                }
            });
        });
        Ok(Self {
            realm,
            cert,
            state,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// A token for `scope` asked of the realm over HTTP with the login, as
    /// Harbor's core hands its preheat provider a pull token.
    pub fn token_for(&self, scope: &str) -> Result<String> {
        let r = reqwest::blocking::Client::new()
            .get(&self.realm)
            .query(&[("service", SERVICE), ("scope", scope)])
            .basic_auth(&self.state.user, Some(&self.state.password))
            .send()?;
        if !r.status().is_success() {
            bail!("the token realm answered {}", r.status());
        }
        let v: serde_json::Value = serde_json::from_slice(&r.bytes()?)?;
        v["token"]
            .as_str()
            .map(str::to_string)
            .context("the token realm's answer has no token")
    }

    /// Every token issued so far.
    pub fn issued(&self) -> Vec<Issued> {
        self.state
            .issued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The registry's `auth:` section for this realm.
    pub(crate) fn registry_auth_yaml(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.realm,
            self.cert.display()
        )
    }
}
