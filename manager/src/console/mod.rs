//! The web console at `/`: sign-in, clusters and their peers, the live
//! rollout of a task, preheat jobs, tasks (who holds one, evict it) and
//! tokens. Pages are rendered on the server ([`html`]) and paged and
//! filtered there, so a fleet of 1,000 peers costs the browser one page;
//! live parts are server-sent events carrying the same fragments the
//! pages render. The assets are embedded at build time (no Node step).
//!
//! Nothing is readable or writable without a session ([`session`]); every
//! POST carries the session's CSRF token. The open API stays token-only.

mod cdf;
pub mod fleet;
pub mod html;
mod pages;
pub mod session;

use crate::api::Shared;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

/// What the console's handlers share.
pub struct Console {
    pub shared: Arc<Shared>,
    pub hf_endpoint: String,
    pub hf_token: Option<String>,
}

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/clusters") }))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/clusters", get(pages::clusters))
        .route("/rollout", get(pages::rollout))
        .route("/rollout/events", get(pages::rollout_events))
        .route("/jobs", get(pages::jobs).post(pages::create_job))
        .route("/jobs/:id", get(pages::job))
        .route("/jobs/:id/events", get(pages::job_events))
        .route("/tasks", get(pages::tasks))
        .route("/tasks/evict", get(pages::evict_confirm).post(pages::evict))
        .route("/tokens", get(pages::tokens).post(pages::create_token))
        .route("/tokens/revoke", post(pages::revoke_token))
        .route(
            "/assets/console.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .route(
            "/assets/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", JS) }),
        )
        .layer(axum::middleware::map_response(harden))
        .with_state(console)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// No framing, no inline script, no sniffing: the console's pages only
/// load their own two assets.
async fn harden(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'; form-action 'self'"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    r
}

/// An HTML answer that no cache keeps.
pub(crate) fn html_page(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// Whether a request comes from a page of this console (Origin or
/// Referer), a second guard beside the CSRF token and SameSite.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let from = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok());
    match (host, from) {
        (Some(h), Some(f)) => {
            let rest = f.split_once("://").map_or(f, |(_, r)| r);
            rest.split('/').next() == Some(h)
        }
        // Browsers send Origin on every POST; a client that sends neither
        // still needs the session cookie and the CSRF token.
        (_, None) => true,
        (None, Some(_)) => false,
    }
}
