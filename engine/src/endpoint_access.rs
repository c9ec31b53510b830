//! Who may use the daemon's HTTP endpoints (the Hugging Face endpoint, the
//! registry mirror): each serves whatever the daemon's own credentials can
//! fetch, so by default they listen on loopback only, and a non-loopback
//! address needs an access token (`--endpoint-token`).
//!
//! With a token, a request from another host must carry it, as
//! `X-Weightcast-Token: <token>`, as the password of a Basic login (what
//! registry clients send to a mirror they have a login for), or, for the
//! Hugging Face endpoint, as the first path segment `/t/<token>/...` (put
//! it in `HF_ENDPOINT=http://node:7410/t/<token>`: the Hub client sends no
//! extra header, and its own `Authorization` is the Hub token). Loopback
//! clients need none, as without a token.

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;

/// The header a token may come in.
pub const TOKEN_HEADER: &str = "x-weightcast-token";

/// An endpoint's access rule.
#[derive(Clone, Default)]
pub struct EndpointAccess {
    /// sha256 of the token: compared digest to digest, so the comparison
    /// says nothing about how much of a guess was right.
    token: Option<[u8; 32]>,
}

impl std::fmt::Debug for EndpointAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EndpointAccess(token: {})", self.token.is_some())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{what} {addr} is not a loopback address: give --endpoint-token (clients then present it), or listen on 127.0.0.1")]
pub struct OpenBind {
    what: &'static str,
    addr: SocketAddr,
}

impl EndpointAccess {
    pub fn new(token: Option<&str>) -> Self {
        Self {
            token: token
                .filter(|t| !t.is_empty())
                .map(|t| Sha256::digest(t.as_bytes()).into()),
        }
    }

    /// Refuses a bind that other hosts can reach without a token.
    pub fn check_bind(&self, what: &'static str, addr: SocketAddr) -> Result<(), OpenBind> {
        if self.token.is_none() && !addr.ip().is_loopback() {
            return Err(OpenBind { what, addr });
        }
        Ok(())
    }

    fn matches(&self, presented: &str) -> bool {
        let got: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.token.is_some_and(|t| t == got)
    }

    /// Whether a request passes; `Some(uri)`: it does, with the token's
    /// path prefix removed.
    pub fn admit(
        &self,
        peer: SocketAddr,
        headers: &axum::http::HeaderMap,
        uri: &Uri,
    ) -> Option<Uri> {
        if self.token.is_none() {
            return Some(uri.clone());
        }
        if let Some(stripped) = strip_prefix(uri, self) {
            return Some(stripped);
        }
        if peer.ip().is_loopback() {
            return Some(uri.clone());
        }
        if let Some(t) = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok()) {
            if self.matches(t) {
                return Some(uri.clone());
            }
        }
        let basic_password = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|up| up.split_once(':').map(|(_, p)| p.to_string()));
        basic_password
            .is_some_and(|p| self.matches(&p))
            .then(|| uri.clone())
    }
}

/// `uri` without a leading `/t/<token>` segment: `None` when it has none
/// or the token does not match.
fn strip_prefix(uri: &Uri, access: &EndpointAccess) -> Option<Uri> {
    let path = uri.path();
    let rest = path.strip_prefix("/t/")?;
    let (token, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if !access.matches(token) {
        return None;
    }
    let mut pq = format!("/{tail}");
    if let Some(q) = uri.query() {
        pq.push('?');
        pq.push_str(q);
    }
    pq.parse().ok()
}

/// The axum middleware: a request without the token gets `401`.
pub async fn require(
    State(access): State<Arc<EndpointAccess>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    match access.admit(peer, req.headers(), req.uri()) {
        Some(uri) => {
            *req.uri_mut() = uri;
            next.run(req).await
        }
        None => {
            let mut r = (
                StatusCode::UNAUTHORIZED,
                "this endpoint needs its access token (X-Weightcast-Token, a Basic login's password, or an /t/<token> path prefix)\n",
            )
                .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"weightcast\""),
            );
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    fn remote() -> SocketAddr {
        "10.1.2.3:5555".parse().unwrap()
    }

    #[test]
    fn an_open_bind_needs_a_token() {
        let none = EndpointAccess::new(None);
        assert!(none
            .check_bind("--hf-listen", "127.0.0.1:7410".parse().unwrap())
            .is_ok());
        assert!(none
            .check_bind("--hf-listen", "[::1]:7410".parse().unwrap())
            .is_ok());
        let e = none
            .check_bind("--hf-listen", "0.0.0.0:7410".parse().unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("--endpoint-token"), "{e}");
        assert!(EndpointAccess::new(Some(""))
            .check_bind("x", "0.0.0.0:1".parse().unwrap())
            .is_err());
        let some = EndpointAccess::new(Some("s3cret"));
        assert!(some.check_bind("x", "0.0.0.0:1".parse().unwrap()).is_ok());
    }

    #[test]
    fn remote_requests_carry_the_token_loopback_ones_need_none() {
        let a = EndpointAccess::new(Some("s3cret"));
        let uri: Uri = "/api/models/x/revision/main?a=1".parse().unwrap();
        let empty = HeaderMap::new();
        assert!(a.admit(remote(), &empty, &uri).is_none());
        assert_eq!(
            a.admit("127.0.0.1:1".parse().unwrap(), &empty, &uri),
            Some(uri.clone())
        );
        let mut h = HeaderMap::new();
        h.insert(TOKEN_HEADER, "s3cret".parse().unwrap());
        assert_eq!(a.admit(remote(), &h, &uri), Some(uri.clone()));
        h.insert(TOKEN_HEADER, "s3cre".parse().unwrap());
        assert!(a.admit(remote(), &h, &uri).is_none());
        let mut h = HeaderMap::new();
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:s3cret");
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {basic}").parse().unwrap(),
        );
        assert!(a.admit(remote(), &h, &uri).is_some());
        let prefixed: Uri = "/t/s3cret/api/models/x/revision/main?a=1".parse().unwrap();
        assert_eq!(a.admit(remote(), &empty, &prefixed), Some(uri.clone()));
        let wrong: Uri = "/t/guess/api/models/x".parse().unwrap();
        assert!(a.admit(remote(), &empty, &wrong).is_none());
    }
}
