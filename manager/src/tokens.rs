//! Personal access tokens, as Dragonfly's open API takes them: sent as
//! `Authorization: Bearer <token>` or `?access_token=<token>` (the query
//! first), stored only as their sha256, with scopes `job` and `cluster`.
//!
//! Missing, malformed or unknown: 401. Inactive, expired, or a resource the
//! scopes do not cover: 403. An empty scope list covers everything (as in
//! Dragonfly, for old tokens).

use crate::db::{now_ms, Db, DbError};
use sha2::{Digest, Sha256};

pub const SCOPES: [&str; 2] = ["job", "cluster"];

/// What a request's token check ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// 401.
    Unauthorized,
    /// 403, with the reason.
    Forbidden(&'static str),
}

/// A new random token (shown once) and the hash that is stored.
pub fn generate() -> (String, String) {
    let bytes: [u8; 32] = rand::random();
    let token = format!("wc_{}", hex::encode(bytes));
    let hash = hash(&token);
    (token, hash)
}

pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Checks `scopes` are known ones.
pub fn check_scopes(scopes: &[String]) -> Result<(), String> {
    for s in scopes {
        if !SCOPES.contains(&s.as_str()) {
            return Err(format!("unknown scope {s:?}: expected job or cluster"));
        }
    }
    Ok(())
}

/// The token of a request: `access_token` in the query, else a Bearer
/// `Authorization` of exactly two fields.
pub fn token_of<'a>(query: Option<&'a str>, authorization: Option<&'a str>) -> Option<&'a str> {
    if let Some(q) = query {
        for pair in q.split('&') {
            if let Some(v) = pair.strip_prefix("access_token=") {
                return Some(v);
            }
        }
    }
    let a = authorization?;
    let mut fields = a.split_whitespace();
    let (scheme, token, rest) = (fields.next()?, fields.next()?, fields.next());
    (scheme.eq_ignore_ascii_case("bearer") && rest.is_none()).then_some(token)
}

/// The resource a path is about: `jobs` of `/oapi/v1/jobs/7`.
pub fn resource(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/oapi/v")?;
    let (version, rest) = rest.split_once('/')?;
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let name = rest.split('/').next()?;
    Some(name)
}

/// The scope a resource needs.
fn scope_for(resource: &str) -> Option<&'static str> {
    match resource {
        "jobs" => Some("job"),
        "clusters" => Some("cluster"),
        _ => None,
    }
}

/// Checks a request's token against the database.
pub async fn authorize(db: &Db, token: Option<&str>, path: &str) -> Result<(), AuthError> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err(AuthError::Denied(Denied::Unauthorized));
    };
    let Some(row) = db.token_by_hash(&hash(token)).await? else {
        return Err(AuthError::Denied(Denied::Unauthorized));
    };
    if row.state != "active" {
        return Err(AuthError::Denied(Denied::Forbidden("Token is inactive")));
    }
    if row.expires_at.is_some_and(|e| e <= now_ms()) {
        return Err(AuthError::Denied(Denied::Forbidden("Token has expired")));
    }
    if !row.scopes.is_empty() {
        let needed = resource(path).and_then(scope_for);
        if !needed.is_some_and(|n| row.scopes.iter().any(|s| s == n)) {
            return Err(AuthError::Denied(Denied::Forbidden(
                "Token does not have the scope for this resource",
            )));
        }
    }
    tracing::debug!(token = %row.name, id = row.id, %path, "authorized");
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0:?}")]
    Denied(Denied),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// `90d`, `12h`, `30m`, `45s` as milliseconds.
pub fn parse_expiry(s: &str) -> Result<i64, String> {
    let bad = || format!("invalid --expires {s:?}: expected a number and d, h, m or s (e.g. 90d)");
    let s = s.trim();
    let (num, unit) = s.split_at(s.len().checked_sub(1).ok_or_else(bad)?);
    let n: i64 = num.parse().map_err(|_| bad())?;
    let ms = match unit {
        "d" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1_000,
        _ => return Err(bad()),
    };
    n.checked_mul(ms).filter(|v| *v > 0).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_the_query_first_then_a_two_field_bearer() {
        assert_eq!(
            token_of(Some("a=1&access_token=q"), Some("Bearer h")),
            Some("q")
        );
        assert_eq!(token_of(None, Some("bearer h")), Some("h"));
        assert_eq!(token_of(None, Some("Bearer h extra")), None);
        assert_eq!(token_of(None, Some("Basic dXNlcjpwdw==")), None);
        assert_eq!(token_of(None, None), None);
    }

    #[test]
    fn resources_and_expiries() {
        assert_eq!(resource("/oapi/v1/jobs/3"), Some("jobs"));
        assert_eq!(resource("/oapi/v1/clusters"), Some("clusters"));
        assert_eq!(resource("/api/v1/jobs"), None);
        assert_eq!(parse_expiry("90d"), Ok(90 * 86_400_000));
        assert!(parse_expiry("90").is_err());
        assert!(parse_expiry("-1d").is_err());
        let (t, h) = generate();
        assert!(t.starts_with("wc_") && h == hash(&t) && h != t);
        assert!(check_scopes(&["job".into()]).is_ok());
        assert!(check_scopes(&["admin".into()]).is_err());
    }
}
