//! The console's pages and their forms. Each GET renders a whole page
//! (server-side paged and filtered); each POST checks the session and its
//! CSRF token, then redirects (303) to the page that shows the result.

use super::fleet::{self, NamedTask, TaskHolders};
use super::html::{self, esc, query_value, Viewer};
use super::session::{self, COOKIE, LOGIN_COOKIE, ROOT};
use super::{cdf, html_page, same_origin, Console};
use crate::db::{now_ms, SessionRow};
use crate::jobs;
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

type C = State<Arc<Console>>;

/// How often live views ask the schedulers again.
const LIVE_EVERY: Duration = Duration::from_millis(500);
const PEERS_PER_PAGE: i64 = 50;
const JOBS_PER_PAGE: i64 = 20;
const TOKENS_PER_PAGE: i64 = 20;

fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

fn error_page(status: StatusCode, text: &str) -> Response {
    html_page(
        status,
        html::page("Error", "", None, &html::notice("error", text)),
    )
}

/// The request's session, or the answer to send instead: a redirect to
/// the sign-in page (which comes back to `here`).
async fn signed_in(c: &Console, headers: &HeaderMap, here: &str) -> Result<SessionRow, Response> {
    match session::current(&c.shared.db, headers).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(see_other(&format!("/login?next={}", query_value(here)))),
        Err(e) => Err(error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            &e.to_string(),
        )),
    }
}

/// A POST's session, with its CSRF token checked.
async fn posted(c: &Console, headers: &HeaderMap, csrf: &str) -> Result<SessionRow, Response> {
    let s = match session::current(&c.shared.db, headers).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return Err(error_page(
                StatusCode::UNAUTHORIZED,
                "Your session has ended: sign in again, then repeat the action.",
            ))
        }
        Err(e) => {
            return Err(error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                &e.to_string(),
            ))
        }
    };
    if !session::same(&s.csrf, csrf) || !same_origin(headers) {
        return Err(error_page(
            StatusCode::FORBIDDEN,
            "This form is stale or did not come from the console (CSRF check failed): reload the page and try again.",
        ));
    }
    Ok(s)
}

fn render(title: &str, current: &str, s: &SessionRow, body: &str) -> Response {
    let v = Viewer {
        user: &s.user,
        csrf: &s.csrf,
    };
    html_page(StatusCode::OK, html::page(title, current, Some(&v), body))
}

// ---- sign-in ----

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Next {
    next: String,
    error: String,
}

/// Only local paths are followed after sign-in.
fn safe_next(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/clusters"
    }
}

pub async fn login_form(State(c): C, Query(q): Query<Next>) -> Response {
    let token = session::random_token();
    let users = c.shared.db.user_count().await.unwrap_or(0);
    let mut body = String::new();
    if users == 0 {
        body.push_str(&html::notice(
            "error",
            "No console user exists yet: set the root password with `weightcast manager user set-password` or start the manager with --root-password.",
        ));
    }
    if !q.error.is_empty() {
        body.push_str(&html::notice("error", "Wrong user name or password."));
    }
    let _ = write!(
        body,
        r#"<form method="post" action="/login" class="card narrow">
<input type="hidden" name="login_csrf" value="{token}">
<input type="hidden" name="next" value="{next}">
<label for="user">User</label>
<input id="user" name="user" autocomplete="username" value="{ROOT}" required>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Sign in</button>
</form>"#,
        next = esc(safe_next(&q.next)),
    );
    let mut r = html_page(StatusCode::OK, html::page("Sign in", "", None, &body));
    if let Ok(v) = session::set_cookie(LOGIN_COOKIE, &token, 600).parse() {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
pub struct LoginForm {
    user: String,
    password: String,
    login_csrf: String,
    #[serde(default)]
    next: String,
}

pub async fn login(State(c): C, headers: HeaderMap, Form(f): Form<LoginForm>) -> Response {
    let cookie = session::cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if cookie.is_empty() || !session::same(cookie, &f.login_csrf) || !same_origin(&headers) {
        return error_page(
            StatusCode::FORBIDDEN,
            "The sign-in form is stale (CSRF check failed): reload the sign-in page and try again.",
        );
    }
    match session::sign_in(&c.shared.db, f.user.trim(), &f.password).await {
        Ok(Some(token)) => {
            tracing::info!(user = %f.user.trim(), "console sign-in");
            let mut r = see_other(safe_next(&f.next));
            let h = r.headers_mut();
            for v in [
                session::set_cookie(COOKIE, &token, session::LIFETIME_MS / 1000),
                session::set_cookie(LOGIN_COOKIE, "", 0),
            ] {
                if let Ok(v) = v.parse() {
                    h.append(header::SET_COOKIE, v);
                }
            }
            r
        }
        Ok(None) => {
            tracing::warn!(user = %f.user.trim(), "console sign-in refused");
            c.shared.metrics.denied.fetch_add(1, Ordering::Relaxed);
            see_other(&format!(
                "/login?error=1&next={}",
                query_value(safe_next(&f.next))
            ))
        }
        Err(e) => error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    csrf: String,
}

pub async fn logout(State(c): C, headers: HeaderMap, Form(f): Form<CsrfOnly>) -> Response {
    if let Err(r) = posted(&c, &headers, &f.csrf).await {
        return r;
    }
    if let Some(token) = session::cookie(&headers, COOKIE) {
        let _ = c
            .shared
            .db
            .delete_session(&crate::tokens::hash(token))
            .await;
    }
    let mut r = see_other("/login");
    if let Ok(v) = session::set_cookie(COOKIE, "", 0).parse() {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

// ---- clusters ----

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct PeerQuery {
    cluster: String,
    q: String,
    page: Option<i64>,
}

pub async fn clusters(State(c): C, headers: HeaderMap, Query(q): Query<PeerQuery>) -> Response {
    let s = match signed_in(&c, &headers, "/clusters").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let db = &c.shared.db;
    let (clusters, instances) = match (db.clusters().await, db.instances().await) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
    };
    let now = now_ms();
    let mut body = String::new();
    if clusters.is_empty() {
        body.push_str(&html::notice(
            "info",
            "No cluster yet: start a scheduler with --manager and --cluster.",
        ));
    }
    for (id, name) in &clusters {
        let _ = write!(
            body,
            r#"<section class="card" aria-labelledby="cluster-{id}"><h2 id="cluster-{id}">Cluster {}</h2>
<div class="scroll"><table><caption>Schedulers and seed peers</caption><thead><tr><th scope="col">Kind</th><th scope="col">Host</th><th scope="col">Address</th><th scope="col">State</th><th scope="col">Last keepalive</th></tr></thead><tbody>"#,
            esc(name)
        );
        for i in instances.iter().filter(|i| i.cluster_id == *id) {
            let kind = if i.kind == "scheduler" {
                "Scheduler"
            } else {
                "Seed peer"
            };
            let _ = write!(
                body,
                r#"<tr class="instance"><td>{kind}</td><td>{}</td><td>{}</td><td><span class="badge {}">{}</span></td><td><time datetime="{t}" title="{t}">{}</time></td></tr>"#,
                esc(&i.hostname),
                esc(&i.addr),
                esc(&i.state),
                esc(&i.state),
                html::ago(i.last_keep_alive_at, now),
                t = crate::time_format::rfc3339(i.last_keep_alive_at),
            );
        }
        body.push_str("</tbody></table></div></section>");
    }
    // Peers, from the schedulers themselves.
    let only = q.cluster.parse::<i64>().ok();
    let (peers, errors) =
        match fleet::peers(db, c.shared.ttl, c.shared.cluster_secrets.as_ref(), only).await {
            Ok(p) => p,
            Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        };
    let needle = q.q.trim().to_lowercase();
    let matching: Vec<_> = peers
        .iter()
        .filter(|p| {
            let h = p.summary.host.clone().unwrap_or_default();
            needle.is_empty()
                || [&h.hostname, &h.piece_addr, &h.peer_id, &h.zone, &h.rack]
                    .iter()
                    .any(|f| f.to_lowercase().contains(&needle))
        })
        .collect();
    let total = matching.len() as i64;
    let page = q.page.unwrap_or(1).max(1);
    let mut options = String::from(r#"<option value="">All clusters</option>"#);
    for (id, name) in &clusters {
        let sel = if only == Some(*id) { " selected" } else { "" };
        let _ = write!(
            options,
            r#"<option value="{id}"{sel}>{}</option>"#,
            esc(name)
        );
    }
    let _ = write!(
        body,
        r#"<section class="card" aria-labelledby="peers-h"><h2 id="peers-h">Peers</h2>
<form method="get" action="/clusters" class="filters" role="search">
<label for="peer-cluster">Cluster</label><select id="peer-cluster" name="cluster">{options}</select>
<label for="peer-q">Host, address, peer id, zone or rack</label><input id="peer-q" name="q" value="{}" type="search">
<button type="submit">Filter</button></form>"#,
        esc(&q.q)
    );
    for e in &errors {
        body.push_str(&html::notice("error", e));
    }
    body.push_str(r#"<div class="scroll"><table id="peers"><caption>Peers connected to the active schedulers</caption><thead><tr><th scope="col">Host</th><th scope="col">Cluster</th><th scope="col">Address</th><th scope="col">Zone / rack</th><th scope="col">Transport</th><th scope="col">Role</th><th scope="col">Uploads</th><th scope="col">Tasks</th></tr></thead><tbody>"#);
    for p in matching
        .iter()
        .skip(((page - 1) * PEERS_PER_PAGE) as usize)
        .take(PEERS_PER_PAGE as usize)
    {
        let h = p.summary.host.clone().unwrap_or_default();
        let _ = write!(
            body,
            r#"<tr class="peer"><td title="{}">{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{}</td><td>{}</td><td>{} of {}</td><td>{}</td></tr>"#,
            esc(&h.peer_id),
            esc(&h.hostname),
            esc(&p.cluster),
            esc(&h.piece_addr),
            esc(if h.zone.is_empty() { "–" } else { &h.zone }),
            esc(if h.rack.is_empty() { "–" } else { &h.rack }),
            if h.rdma { "RDMA" } else { "TCP" },
            if h.seed { "Seed" } else { "Peer" },
            p.summary.active_uploads,
            h.upload_slots,
            p.summary.tasks,
        );
    }
    body.push_str("</tbody></table></div>");
    body.push_str(&html::pager(
        &format!(
            "/clusters?cluster={}&q={}&",
            query_value(&q.cluster),
            query_value(&q.q)
        ),
        page,
        PEERS_PER_PAGE,
        total,
    ));
    body.push_str("</section>");
    render("Clusters", "/clusters", &s, &body)
}

// ---- rollout and tasks ----

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct TaskQuery {
    q: String,
}

fn search_form(action: &str, q: &str, label: &str) -> String {
    format!(
        r#"<form method="get" action="{action}" class="filters" role="search">
<label for="q">{label}</label>
<input id="q" name="q" type="search" value="{}" placeholder="https://… · hf://org/model · oci://registry/repo:tag · sha256:…" required>
<button type="submit">Show</button></form>"#,
        esc(q)
    )
}

/// The per-peer rows of tasks: a progress bar per peer (bytes held of the
/// task's length), and a summary line per task.
async fn holders_fragment(c: &Console, tasks: &[NamedTask]) -> String {
    let mut out = String::new();
    for (n, t) in tasks.iter().enumerate() {
        let holders = match fleet::holders(
            &c.shared.db,
            c.shared.ttl,
            c.shared.cluster_secrets.as_ref(),
            &t.task,
        )
        .await
        {
            Ok(h) => h,
            Err(e) => {
                out.push_str(&html::notice("error", &e.to_string()));
                continue;
            }
        };
        let _ = write!(
            out,
            r#"<section class="task card" data-task="{id}" aria-labelledby="task-{n}"><h2 id="task-{n}">{}</h2><p class="task-id">Task <code>{id}</code></p>"#,
            esc(&t.name),
            id = t.task.to_hex(),
        );
        let peers: Vec<(&TaskHolders, &weightcast_proto::pb::PeerResult)> = holders
            .iter()
            .flat_map(|h| h.peers.iter().map(move |p| (h, p)))
            .collect();
        for h in holders.iter().filter_map(|h| h.error.as_ref()) {
            out.push_str(&html::notice("error", h));
        }
        if peers.is_empty() {
            out.push_str(r#"<p class="empty">No peer holds this task.</p></section>"#);
            continue;
        }
        let complete = peers.iter().filter(|(_, p)| p.held).count();
        let held: u64 = peers.iter().map(|(_, p)| p.bytes).sum();
        let length = holders.iter().map(|h| h.content_length).max().unwrap_or(0);
        // Where the bytes came from: what the peers that went to the origin
        // hold (the seed, or a peer granted back-to-source) came from it;
        // the rest came from peers.
        let from_origin: u64 = peers
            .iter()
            .filter(|(_, p)| p.from_origin)
            .map(|(_, p)| p.bytes)
            .sum();
        let seeds: u64 = peers
            .iter()
            .filter(|(_, p)| p.seed)
            .map(|(_, p)| p.bytes)
            .sum();
        let copies = if length > 0 {
            format!(" ({:.2} copies)", from_origin as f64 / length as f64)
        } else {
            String::new()
        };
        let _ = write!(
            out,
            r#"<p class="sources" data-origin-bytes="{from_origin}" data-peer-bytes="{from_peers}">From the origin: <strong>{}</strong>{copies} · from peers: <strong>{}</strong> · held by seeds: {}</p>"#,
            html::bytes(from_origin),
            html::bytes(held.saturating_sub(from_origin)),
            html::bytes(seeds),
            from_peers = held.saturating_sub(from_origin),
        );
        let done_ms: Vec<u64> = peers.iter().filter_map(|(_, p)| p.done_after_ms).collect();
        if let Some(plot) = cdf::svg(&done_ms, peers.len()) {
            out.push_str(&plot);
        }
        let _ = write!(
            out,
            r#"<p class="summary"><strong>{complete} of {} peers complete</strong> · {} held{}</p>
<div class="scroll"><table class="holders"><caption class="visually-hidden">Peers holding {}</caption><thead><tr><th scope="col">Host</th><th scope="col">Cluster</th><th scope="col">Role</th><th scope="col">Progress</th><th scope="col">Source</th><th scope="col">Done after</th><th scope="col">State</th></tr></thead><tbody>"#,
            peers.len(),
            html::bytes(held),
            if length > 0 {
                format!(" of {} each", html::bytes(length))
            } else {
                String::new()
            },
            esc(&t.name),
        );
        for (h, p) in peers {
            let max = h.content_length.max(1);
            let pct = (p.bytes as f64 * 100.0 / max as f64).min(100.0);
            let state = if p.held { "complete" } else { "fetching" };
            let _ = write!(
                out,
                r#"<tr class="holder" data-peer="{peer}"><td>{host}<br><small>{addr}</small></td><td>{cluster}</td><td>{role}</td><td><progress max="{max}" value="{value}" aria-label="{host}: {pct:.0}%">{pct:.0}%</progress> <span class="pct">{pct:.0}%</span> <small>{held}</small></td><td>{source}</td><td>{done}</td><td><span class="badge {state}">{state}</span></td></tr>"#,
                peer = esc(&p.peer_id),
                host = esc(&p.hostname),
                addr = esc(&p.addr),
                cluster = esc(&h.cluster),
                role = if p.seed { "Seed" } else { "Peer" },
                value = p.bytes,
                held = html::bytes(p.bytes),
                source = if p.from_origin { "origin" } else { "peers" },
                done = p.done_after_ms.map_or(String::from("–"), |ms| format!(
                    "{:.1} s",
                    ms as f64 / 1000.0
                )),
            );
        }
        out.push_str("</tbody></table></div></section>");
    }
    out
}

async fn search(c: &Console, q: &str) -> Result<Vec<NamedTask>, String> {
    fleet::search(q, &c.hf_endpoint, c.hf_token.as_deref())
        .await
        .map_err(|e| e.to_string())
}

pub async fn rollout(State(c): C, headers: HeaderMap, Query(q): Query<TaskQuery>) -> Response {
    let here = format!("/rollout?q={}", query_value(&q.q));
    let s = match signed_in(&c, &headers, &here).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut body = search_form(
        "/rollout",
        &q.q,
        "URL, hf:// or oci:// reference, or digest",
    );
    if !q.q.trim().is_empty() {
        match search(&c, &q.q).await {
            Ok(tasks) => {
                let _ = write!(
                    body,
                    r#"<div id="live" data-events="/rollout/events?q={}" aria-live="polite">{}</div>"#,
                    esc(&query_value(&q.q)),
                    holders_fragment(&c, &tasks).await
                );
            }
            Err(e) => body.push_str(&html::notice("error", &e)),
        }
    }
    render("Rollout", "/rollout", &s, &body)
}

/// Server-sent events, with comments sent while nothing changes (so
/// proxies keep the stream open).
fn sse<S: Stream<Item = Result<Event, Infallible>> + Send + 'static>(s: S) -> Response {
    Sse::new(s).keep_alive(KeepAlive::default()).into_response()
}

pub async fn rollout_events(
    State(c): C,
    headers: HeaderMap,
    Query(q): Query<TaskQuery>,
) -> Response {
    if !matches!(session::current(&c.shared.db, &headers).await, Ok(Some(_))) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let tasks = match search(&c, &q.q).await {
        Ok(t) => t,
        Err(e) => return (StatusCode::UNPROCESSABLE_ENTITY, e).into_response(),
    };
    // (console, tasks, last fragment sent): a new fragment when it changed.
    let stream =
        futures::stream::unfold((c, tasks, String::new()), |(c, tasks, last)| async move {
            loop {
                if !last.is_empty() {
                    tokio::time::sleep(LIVE_EVERY).await;
                }
                let now = holders_fragment(&c, &tasks).await;
                if now != last {
                    let ev = Event::default().data(now.clone());
                    return Some((Ok(ev), (c, tasks, now)));
                }
            }
        });
    sse(stream)
}

pub async fn tasks(State(c): C, headers: HeaderMap, Query(q): Query<TaskQuery>) -> Response {
    let here = format!("/tasks?q={}", query_value(&q.q));
    let s = match signed_in(&c, &headers, &here).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut body = search_form(
        "/tasks",
        &q.q,
        "Task: URL, hf:// or oci:// reference, digest or task id",
    );
    if !q.q.trim().is_empty() {
        match search(&c, &q.q).await {
            Ok(tasks) => {
                body.push_str(&holders_fragment(&c, &tasks).await);
                let _ = write!(
                    body,
                    r#"<p><a class="button danger" href="/tasks/evict?q={}">Evict everywhere…</a></p>"#,
                    esc(&query_value(&q.q))
                );
            }
            Err(e) => body.push_str(&html::notice("error", &e)),
        }
    }
    render("Tasks", "/tasks", &s, &body)
}

pub async fn evict_confirm(
    State(c): C,
    headers: HeaderMap,
    Query(q): Query<TaskQuery>,
) -> Response {
    let here = format!("/tasks/evict?q={}", query_value(&q.q));
    let s = match signed_in(&c, &headers, &here).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let tasks = match search(&c, &q.q).await {
        Ok(t) => t,
        Err(e) => return render("Evict", "/tasks", &s, &html::notice("error", &e)),
    };
    let mut list = String::new();
    for t in &tasks {
        let _ = write!(
            list,
            "<li>{} (<code>{}</code>)</li>",
            esc(&t.name),
            t.task.to_hex()
        );
    }
    let body = format!(
        r#"<section class="card" role="alertdialog" aria-labelledby="confirm-h" aria-describedby="confirm-d">
<h2 id="confirm-h">Evict from every cache?</h2>
<p id="confirm-d">Every peer of every cluster drops these tasks; the next download fetches them again.</p>
<ul>{list}</ul>
<form method="post" action="/tasks/evict">{}<input type="hidden" name="q" value="{}">
<button type="submit" class="danger" id="confirm-evict">Evict</button> <a href="/tasks?q={}">Cancel</a></form></section>"#,
        html::csrf_field(&s.csrf),
        esc(&q.q),
        esc(&query_value(&q.q)),
    );
    render("Evict", "/tasks", &s, &body)
}

#[derive(Deserialize)]
pub struct EvictForm {
    csrf: String,
    q: String,
}

pub async fn evict(State(c): C, headers: HeaderMap, Form(f): Form<EvictForm>) -> Response {
    let s = match posted(&c, &headers, &f.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let tasks = match search(&c, &f.q).await {
        Ok(t) => t,
        Err(e) => return render("Evict", "/tasks", &s, &html::notice("error", &e)),
    };
    let mut last = None;
    for t in &tasks {
        let args = json!({"task_id": t.task.to_hex()});
        match jobs::enqueue(
            &c.shared.db,
            jobs::DELETE_TASK,
            &format!("console: evict {}", t.name),
            0,
            &args,
            &[],
        )
        .await
        {
            Ok(row) => {
                c.shared
                    .metrics
                    .jobs_created
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(job = row.id, user = %s.user, task = %t.task, "eviction requested from the console");
                last = Some(row.id);
            }
            Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }
    match (tasks.len(), last) {
        (1, Some(id)) => see_other(&format!("/jobs/{id}")),
        _ => see_other("/jobs?type=delete_task"),
    }
}

// ---- jobs ----

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct JobQuery {
    state: String,
    #[serde(rename = "type")]
    kind: String,
    page: Option<i64>,
}

fn select(id: &str, name: &str, options: &[(&str, &str)], current: &str) -> String {
    let mut out = format!(r#"<select id="{id}" name="{name}">"#);
    for (v, label) in options {
        let sel = if *v == current { " selected" } else { "" };
        let _ = write!(out, r#"<option value="{v}"{sel}>{label}</option>"#);
    }
    out.push_str("</select>");
    out
}

async fn jobs_page(
    c: &Console,
    s: &SessionRow,
    q: &JobQuery,
    form_error: Option<&str>,
) -> Response {
    let db = &c.shared.db;
    let page = q.page.unwrap_or(1).max(1);
    let (rows, total) = match db
        .jobs(
            Some(q.kind.as_str()),
            Some(q.state.as_str()),
            page,
            JOBS_PER_PAGE,
        )
        .await
    {
        Ok(r) => r,
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let clusters = db.clusters().await.unwrap_or_default();
    let mut cluster_options = vec![(String::new(), "Every cluster".to_string())];
    cluster_options.extend(
        clusters
            .iter()
            .map(|(id, n)| (id.to_string(), format!("Cluster {n}"))),
    );
    let cluster_options: Vec<(&str, &str)> = cluster_options
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let mut body = String::new();
    if let Some(e) = form_error {
        body.push_str(&html::notice("error", e));
    }
    let _ = write!(
        body,
        r#"<section class="card" aria-labelledby="new-h"><h2 id="new-h">New preheat</h2>
<form method="post" action="/jobs" class="grid">{csrf}
<label for="job-type">Type</label>{types}
<label for="job-url">URL or reference</label><input id="job-url" name="url" required placeholder="https://… · hf://org/model@main · oci://registry/repo:tag">
<label for="job-scope">Scope</label>{scopes}
<label for="job-cluster">Cluster</label>{clusters}
<label for="job-count">Peers (all_peers: how many; empty: every one)</label><input id="job-count" name="count" inputmode="numeric" pattern="[0-9]*">
<span class="check"><input id="job-plain" name="plain_http" type="checkbox" value="on"><label for="job-plain">Registry over plain HTTP (oci://)</label></span>
<button type="submit">Preheat</button></form></section>"#,
        csrf = html::csrf_field(&s.csrf),
        types = select(
            "job-type",
            "kind",
            &[
                ("file", "File, hf:// or oci:// reference"),
                ("image", "Image manifest URL (as Harbor sends)")
            ],
            "file"
        ),
        scopes = select(
            "job-scope",
            "scope",
            &[
                ("single_seed_peer", "The task's seed peer"),
                ("all_seed_peers", "Every seed peer"),
                ("all_peers", "Every peer"),
            ],
            "single_seed_peer"
        ),
        clusters = select("job-cluster", "cluster", &cluster_options, ""),
    );
    let _ = write!(
        body,
        r#"<section class="card" aria-labelledby="hist-h"><h2 id="hist-h">History</h2>
<form method="get" action="/jobs" class="filters" role="search">
<label for="f-type">Type</label>{}
<label for="f-state">State</label>{}
<button type="submit">Filter</button></form>
<div class="scroll"><table id="jobs"><caption class="visually-hidden">Jobs, newest first</caption><thead><tr><th scope="col">Job</th><th scope="col">Type</th><th scope="col">What</th><th scope="col">State</th><th scope="col">Created</th></tr></thead><tbody>"#,
        select(
            "f-type",
            "type",
            &[
                ("", "Any"),
                ("preheat", "Preheat"),
                ("delete_task", "Eviction"),
                ("get_task", "Lookup")
            ],
            &q.kind
        ),
        select(
            "f-state",
            "state",
            &[
                ("", "Any"),
                ("PENDING", "Pending"),
                ("SUCCESS", "Success"),
                ("FAILURE", "Failure")
            ],
            &q.state
        ),
    );
    for r in &rows {
        let args: Value = serde_json::from_str(&r.args).unwrap_or(Value::Null);
        let what = args["url"]
            .as_str()
            .or(args["task_id"].as_str())
            .unwrap_or("")
            .to_string();
        let _ = write!(
            body,
            r#"<tr class="job"><td><a href="/jobs/{id}">#{id}</a></td><td>{}</td><td class="wrap">{}</td><td><span class="badge {st}">{st}</span></td><td>{}</td></tr>"#,
            esc(&r.kind),
            esc(&what),
            crate::time_format::rfc3339(r.created_at),
            id = r.id,
            st = esc(&r.state),
        );
    }
    body.push_str("</tbody></table></div>");
    body.push_str(&html::pager(
        &format!(
            "/jobs?type={}&state={}&",
            query_value(&q.kind),
            query_value(&q.state)
        ),
        page,
        JOBS_PER_PAGE,
        total,
    ));
    body.push_str("</section>");
    render("Preheat jobs", "/jobs", s, &body)
}

pub async fn jobs(State(c): C, headers: HeaderMap, Query(q): Query<JobQuery>) -> Response {
    let s = match signed_in(&c, &headers, "/jobs").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    jobs_page(&c, &s, &q, None).await
}

#[derive(Deserialize)]
pub struct JobForm {
    csrf: String,
    kind: String,
    url: String,
    scope: String,
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    count: String,
    #[serde(default)]
    plain_http: Option<String>,
}

pub async fn create_job(State(c): C, headers: HeaderMap, Form(f): Form<JobForm>) -> Response {
    let s = match posted(&c, &headers, &f.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut args = json!({
        "type": f.kind,
        "url": f.url.trim(),
        "scope": f.scope,
        "plain_http": f.plain_http.is_some(),
    });
    if !f.count.trim().is_empty() {
        match f.count.trim().parse::<u32>() {
            Ok(n) => args["count"] = json!(n),
            Err(_) => {
                return jobs_page(
                    &c,
                    &s,
                    &JobQuery::default(),
                    Some("Peers is a whole number."),
                )
                .await
            }
        }
    }
    let args = match jobs::checked_args(jobs::PREHEAT, &args) {
        Ok(a) => a,
        Err(e) => return jobs_page(&c, &s, &JobQuery::default(), Some(&e)).await,
    };
    let ids: Vec<i64> = f.cluster.parse().ok().into_iter().collect();
    match jobs::enqueue(&c.shared.db, jobs::PREHEAT, "console", 0, &args, &ids).await {
        Ok(row) => {
            c.shared
                .metrics
                .jobs_created
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(job = row.id, user = %s.user, "preheat created from the console");
            see_other(&format!("/jobs/{}", row.id))
        }
        Err(e) => error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// A job's state, its clusters, and its per-blob and per-peer rows.
fn job_fragment(row: &crate::db::JobRow, clusters: &[(i64, String)]) -> String {
    let result: Value = serde_json::from_str(&row.result).unwrap_or(Value::Null);
    let mut out = format!(
        r#"<p class="summary">State: <strong id="job-state" class="badge {st}" data-state="{st}">{st}</strong> · updated {}</p>"#,
        crate::time_format::rfc3339(row.updated_at),
        st = esc(&row.state),
    );
    let empty = Vec::new();
    for js in result["job_states"].as_array().unwrap_or(&empty) {
        let r = &js["results"][0];
        let cid = r["scheduler_cluster_id"].as_i64().unwrap_or(0);
        let cname = clusters
            .iter()
            .find(|(id, _)| *id == cid)
            .map_or_else(|| "(none)".to_string(), |(_, n)| n.clone());
        let _ = write!(
            out,
            r#"<section class="card"><h2>Cluster {}: <span class="badge {st}">{st}</span></h2>"#,
            esc(&cname),
            st = esc(js["state"].as_str().unwrap_or("")),
        );
        if let Some(e) = js["error"].as_str().filter(|e| !e.is_empty()) {
            out.push_str(&html::notice("error", e));
        }
        if let Some(blobs) = r["progress"].as_array().filter(|b| !b.is_empty()) {
            out.push_str(r#"<div class="scroll"><table class="blobs"><caption>Blobs</caption><thead><tr><th scope="col">URL</th><th scope="col">Peers</th><th scope="col">Done</th><th scope="col">Failed</th><th scope="col">Bytes held</th></tr></thead><tbody>"#);
            for b in blobs {
                let _ = write!(
                    out,
                    r#"<tr class="blob"><td class="wrap">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
                    esc(b["url"].as_str().unwrap_or("")),
                    b["peers"],
                    b["succeeded"],
                    b["failed"],
                    html::bytes(b["bytes"].as_u64().unwrap_or(0)),
                );
            }
            out.push_str("</tbody></table></div>");
        }
        let ok = r["success_tasks"].as_array().unwrap_or(&empty);
        let failed = r["failure_tasks"].as_array().unwrap_or(&empty);
        if ok.is_empty() && failed.is_empty() {
            out.push_str(r#"<p class="empty">No peer result yet.</p>"#);
        } else {
            out.push_str(r#"<div class="scroll"><table class="peer-results"><caption>Per peer</caption><thead><tr><th scope="col">Host</th><th scope="col">IP</th><th scope="col">URL</th><th scope="col">Result</th></tr></thead><tbody>"#);
            for (rows, state) in [(ok, "SUCCESS"), (failed, "FAILURE")] {
                for p in rows {
                    let what = match (state, p["description"].as_str()) {
                        ("FAILURE", Some(d)) => format!("FAILURE: {d}"),
                        (_, Some(d)) if !d.is_empty() => format!("SUCCESS: {d}"),
                        _ => state.to_string(),
                    };
                    let _ = write!(
                        out,
                        r#"<tr class="peer-result" data-state="{state}"><td>{}</td><td>{}</td><td class="wrap">{}</td><td><span class="badge {state}">{}</span></td></tr>"#,
                        esc(p["hostname"].as_str().unwrap_or("")),
                        esc(p["ip"].as_str().unwrap_or("")),
                        esc(p["url"].as_str().unwrap_or("")),
                        esc(&what),
                    );
                }
            }
            out.push_str("</tbody></table></div>");
        }
        out.push_str("</section>");
    }
    out
}

fn terminal(state: &str) -> bool {
    matches!(state, "SUCCESS" | "FAILURE")
}

pub async fn job(State(c): C, headers: HeaderMap, Path(id): Path<i64>) -> Response {
    let s = match signed_in(&c, &headers, &format!("/jobs/{id}")).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let row = match c.shared.db.job(id).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return error_page(
                StatusCode::NOT_FOUND,
                "No such job: it may have been deleted.",
            )
        }
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let clusters = c.shared.db.clusters().await.unwrap_or_default();
    let args: Value = serde_json::from_str(&row.args).unwrap_or(Value::Null);
    let what = args["url"]
        .as_str()
        .or(args["task_id"].as_str())
        .unwrap_or("");
    let live = if terminal(&row.state) {
        String::new()
    } else {
        format!(r#" data-events="/jobs/{id}/events""#)
    };
    let body = format!(
        r#"<p class="wrap">{} · <code>{}</code> · created {}</p><div id="live"{live} aria-live="polite">{}</div><p><a href="/jobs">All jobs</a></p>"#,
        esc(&row.kind),
        esc(what),
        crate::time_format::rfc3339(row.created_at),
        job_fragment(&row, &clusters),
    );
    render(&format!("Job #{id}"), "/jobs", &s, &body)
}

pub async fn job_events(State(c): C, headers: HeaderMap, Path(id): Path<i64>) -> Response {
    if !matches!(session::current(&c.shared.db, &headers).await, Ok(Some(_))) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    // (console, last fragment sent, over)
    let stream = futures::stream::unfold(
        (c, String::new(), false),
        move |(c, last, over)| async move {
            if over {
                return None;
            }
            loop {
                if !last.is_empty() {
                    tokio::time::sleep(LIVE_EVERY).await;
                }
                let row = match c.shared.db.job(id).await {
                    Ok(Some(r)) => r,
                    _ => return None,
                };
                let clusters = c.shared.db.clusters().await.unwrap_or_default();
                let now = job_fragment(&row, &clusters);
                let done = terminal(&row.state);
                if now != last || done {
                    let ev = Event::default()
                        .event(if done { "done" } else { "message" })
                        .data(now.clone());
                    return Some((Ok(ev), (c, now, done)));
                }
            }
        },
    );
    sse(stream)
}

// ---- tokens ----

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct PageQuery {
    page: Option<i64>,
}

async fn tokens_page(c: &Console, s: &SessionRow, page: i64, top: &str) -> Response {
    let (rows, total) = match c.shared.db.tokens(page, TOKENS_PER_PAGE).await {
        Ok(r) => r,
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let mut body = top.to_string();
    let _ = write!(
        body,
        r#"<section class="card" aria-labelledby="tok-new-h"><h2 id="tok-new-h">New token</h2>
<form method="post" action="/tokens" class="grid">{}
<label for="tok-name">Name</label><input id="tok-name" name="name" required maxlength="100">
<fieldset><legend>Scopes</legend>
<span class="check"><input id="tok-job" type="checkbox" name="scope_job" value="on" checked><label for="tok-job">job (preheat, evict, look up)</label></span>
<span class="check"><input id="tok-cluster" type="checkbox" name="scope_cluster" value="on"><label for="tok-cluster">cluster (list clusters)</label></span></fieldset>
<label for="tok-exp">Expires after (e.g. 90d, 12h; empty: never)</label><input id="tok-exp" name="expires" pattern="[0-9]+[dhms]">
<button type="submit">Create token</button></form></section>
<section class="card" aria-labelledby="tok-h"><h2 id="tok-h">Tokens</h2>
<div class="scroll"><table id="tokens"><caption class="visually-hidden">Personal access tokens</caption><thead><tr><th scope="col">Name</th><th scope="col">Scopes</th><th scope="col">State</th><th scope="col">Expires</th><th scope="col">Created</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead><tbody>"#,
        html::csrf_field(&s.csrf)
    );
    let now = now_ms();
    for t in &rows {
        let expired = t.row.expires_at.is_some_and(|e| e <= now);
        let state = if expired {
            "expired"
        } else {
            t.row.state.as_str()
        };
        let action = if t.row.state == "active" && !expired {
            format!(
                r#"<form method="post" action="/tokens/revoke">{}<input type="hidden" name="name" value="{n}"><button type="submit" class="danger" aria-label="Revoke {n}">Revoke</button></form>"#,
                html::csrf_field(&s.csrf),
                n = esc(&t.row.name),
            )
        } else {
            String::new()
        };
        let _ = write!(
            body,
            r#"<tr class="token"><td>{}</td><td>{}</td><td><span class="badge {st}">{st}</span></td><td>{}</td><td>{}</td><td>{action}</td></tr>"#,
            esc(&t.row.name),
            esc(&t.row.scopes.join(", ")),
            t.row
                .expires_at
                .map_or_else(|| "never".into(), crate::time_format::rfc3339),
            crate::time_format::rfc3339(t.created_at),
            st = esc(state),
        );
    }
    body.push_str("</tbody></table></div>");
    body.push_str(&html::pager("/tokens?", page, TOKENS_PER_PAGE, total));
    body.push_str("</section>");
    render("Tokens", "/tokens", s, &body)
}

pub async fn tokens(State(c): C, headers: HeaderMap, Query(q): Query<PageQuery>) -> Response {
    let s = match signed_in(&c, &headers, "/tokens").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    tokens_page(&c, &s, q.page.unwrap_or(1).max(1), "").await
}

#[derive(Deserialize)]
pub struct TokenForm {
    csrf: String,
    name: String,
    #[serde(default)]
    scope_job: Option<String>,
    #[serde(default)]
    scope_cluster: Option<String>,
    #[serde(default)]
    expires: String,
}

/// Creates a token and shows it on this answer only (never stored, never
/// rendered again: the list shows names).
pub async fn create_token(State(c): C, headers: HeaderMap, Form(f): Form<TokenForm>) -> Response {
    let s = match posted(&c, &headers, &f.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut scopes = Vec::new();
    if f.scope_job.is_some() {
        scopes.push("job".to_string());
    }
    if f.scope_cluster.is_some() {
        scopes.push("cluster".to_string());
    }
    let name = f.name.trim();
    if name.is_empty() || scopes.is_empty() {
        return tokens_page(
            &c,
            &s,
            1,
            &html::notice("error", "A token needs a name and at least one scope."),
        )
        .await;
    }
    let expires_at = if f.expires.trim().is_empty() {
        None
    } else {
        match crate::tokens::parse_expiry(&f.expires) {
            Ok(ms) => Some(now_ms() + ms),
            Err(e) => return tokens_page(&c, &s, 1, &html::notice("error", &e)).await,
        }
    };
    let (token, hash) = crate::tokens::generate();
    match c
        .shared
        .db
        .create_token(name, &hash, &scopes, expires_at)
        .await
    {
        Ok(_) => {
            tracing::info!(token = %name, user = %s.user, "token created from the console");
            let top = format!(
                r#"<section class="card created" aria-labelledby="shown-h"><h2 id="shown-h">Token {} created</h2>
<p role="status">Copy it now: it is shown only this once.</p>
<label for="new-token">Token</label><input id="new-token" readonly value="{}" class="secret"></section>"#,
                esc(name),
                esc(&token)
            );
            tokens_page(&c, &s, 1, &top).await
        }
        Err(e) => tokens_page(&c, &s, 1, &html::notice("error", &e.to_string())).await,
    }
}

#[derive(Deserialize)]
pub struct RevokeForm {
    csrf: String,
    name: String,
}

pub async fn revoke_token(State(c): C, headers: HeaderMap, Form(f): Form<RevokeForm>) -> Response {
    let s = match posted(&c, &headers, &f.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match c.shared.db.set_token_state(&f.name, "inactive").await {
        Ok(_) => {
            tracing::info!(token = %f.name, user = %s.user, "token revoked from the console");
            see_other("/tokens")
        }
        Err(e) => error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}
