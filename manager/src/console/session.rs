//! Console sign-in: users' passwords (argon2id PHC strings), sessions in
//! an `HttpOnly; SameSite=Strict` cookie (stored only as its sha256), and
//! the per-session CSRF token every POST form must carry. The sign-in form
//! itself, before any session, uses a double-submit cookie.

use crate::db::{now_ms, Db, DbError, SessionRow};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::http::{header, HeaderMap};

/// The session cookie's name.
pub const COOKIE: &str = "wc_session";
/// The sign-in form's double-submit cookie.
pub const LOGIN_COOKIE: &str = "wc_login";
/// How long a session lasts.
pub const LIFETIME_MS: i64 = 12 * 3_600_000;
/// The one user the console has for now.
pub const ROOT: &str = "root";
/// Shorter passwords are refused.
pub const MIN_PASSWORD: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("the password is shorter than {MIN_PASSWORD} characters: choose a longer one")]
    TooShort,
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// A random token (cookie values, CSRF tokens).
pub fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Hashes `password` with argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(PasswordError::TooShort);
    }
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| PasswordError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Sets `user`'s password (creating the user), ending its sessions.
pub async fn set_password(db: &Db, user: &str, password: &str) -> Result<(), PasswordError> {
    let hash = hash_password(password)?;
    db.set_password(user, &hash).await?;
    Ok(())
}

/// Whether `password` is `hash`'s.
pub fn verify(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Checks a sign-in; on success opens a session and answers its cookie
/// value. Unknown users cost a hash too, so timing does not tell them.
pub async fn sign_in(db: &Db, user: &str, password: &str) -> Result<Option<String>, DbError> {
    let stored = db.user_password(user).await?;
    let ok = match &stored {
        Some((_, hash)) => verify(hash, password),
        None => {
            let _ = hash_password("timing-equalizer");
            false
        }
    };
    let Some((id, _)) = stored.filter(|_| ok) else {
        return Ok(None);
    };
    let token = random_token();
    db.create_session(
        id,
        &crate::tokens::hash(&token),
        &random_token(),
        now_ms() + LIFETIME_MS,
    )
    .await?;
    Ok(Some(token))
}

/// A cookie's value in a request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The request's session, if its cookie names a live one.
pub async fn current(db: &Db, headers: &HeaderMap) -> Result<Option<SessionRow>, DbError> {
    match cookie(headers, COOKIE) {
        Some(token) if !token.is_empty() => db.session(&crate::tokens::hash(token)).await,
        _ => Ok(None),
    }
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, the whole site.
pub fn set_cookie(name: &str, value: &str, max_age_s: i64) -> String {
    format!("{name}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age_s}")
}

/// Equal without an early exit (CSRF tokens).
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        assert!(matches!(
            hash_password("short"),
            Err(PasswordError::TooShort)
        ));
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify(&h, "correct horse"));
        assert!(!verify(&h, "correct horsE"));
        assert!(!verify("not a hash", "correct horse"));
        assert_ne!(h, hash_password("correct horse").unwrap(), "salted");
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; wc_session=abc; b=2".parse().unwrap());
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "wc"), None);
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
        let c = set_cookie(COOKIE, "v", 60);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict"));
    }
}
