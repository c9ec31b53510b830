//! The manager's HTTP server: Dragonfly's open API (`/healthy`,
//! `/oapi/v1/jobs`, `/oapi/v1/clusters`, behind personal access tokens) and
//! the cluster registry's own endpoints (keepalives from schedulers and
//! seeds, the scheduler list daemons ask for).

use crate::db::{Db, DbError};
use crate::jobs::{self, CreateJob};
use crate::tokens::{self, AuthError, Denied};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct Shared {
    pub db: Db,
    /// A scheduler or seed not heard from within this is inactive.
    pub ttl: Duration,
    pub metrics: Metrics,
    /// Proved to schedulers by the console's lookups.
    pub cluster_secrets: Option<std::sync::Arc<weightcast_proto::cluster_auth::ClusterSecrets>>,
}

#[derive(Default)]
pub struct Metrics {
    pub jobs_created: AtomicU64,
    pub keepalives: AtomicU64,
    pub marked_inactive: AtomicU64,
    pub denied: AtomicU64,
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthy", get(|| async { Json("OK") }))
        .route("/oapi/v1/jobs", post(create_job).get(list_jobs))
        .route("/oapi/v1/jobs/:id", get(get_job).delete(delete_job))
        .route("/oapi/v1/clusters", get(list_clusters))
        .route("/api/v1/keepalive", post(keep_alive))
        .route("/api/v1/clusters/:name/schedulers", get(cluster_schedulers))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

fn message(status: StatusCode, text: &str) -> Response {
    (status, Json(json!({"message": text}))).into_response()
}

fn unprocessable(text: &str) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({"errors": text})),
    )
        .into_response()
}

fn internal(e: DbError) -> Response {
    tracing::warn!(error = %e, "database error answering a request");
    message(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
}

/// The token check every `/oapi` route makes first.
async fn authorize(s: &Shared, uri: &Uri, headers: &HeaderMap) -> Result<(), Response> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = tokens::token_of(uri.query(), authorization);
    match tokens::authorize(&s.db, token, uri.path()).await {
        Ok(()) => Ok(()),
        Err(AuthError::Denied(d)) => {
            s.metrics.denied.fetch_add(1, Ordering::Relaxed);
            Err(match d {
                Denied::Unauthorized => message(StatusCode::UNAUTHORIZED, "Unauthorized"),
                Denied::Forbidden(why) => message(StatusCode::FORBIDDEN, why),
            })
        }
        Err(AuthError::Db(e)) => Err(internal(e)),
    }
}

async fn create_job(
    State(s): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authorize(&s, &uri, &headers).await {
        return r;
    }
    let req: CreateJob = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return unprocessable(&e.to_string()),
    };
    let args = match jobs::checked_args(&req.kind, &req.args) {
        Ok(a) => a,
        Err(e) => return unprocessable(&e),
    };
    let ids = req.scheduler_cluster_ids.unwrap_or_default();
    let _ = req.seed_peer_cluster_ids;
    let row = match jobs::enqueue(
        &s.db,
        &req.kind,
        req.bio.as_deref().unwrap_or(""),
        req.user_id.unwrap_or(0),
        &args,
        &ids,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    s.metrics.jobs_created.fetch_add(1, Ordering::Relaxed);
    tracing::info!(job = row.id, kind = %row.kind, "job created");
    let clusters = s.db.clusters().await.unwrap_or_default();
    Json(jobs::render(&row, &clusters)).into_response()
}

async fn get_job(
    State(s): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = authorize(&s, &uri, &headers).await {
        return r;
    }
    let Ok(id) = id.parse::<i64>() else {
        return unprocessable("the job id is an integer");
    };
    match s.db.job(id).await {
        Ok(Some(row)) => {
            let clusters = s.db.clusters().await.unwrap_or_default();
            Json(jobs::render(&row, &clusters)).into_response()
        }
        Ok(None) => message(StatusCode::NOT_FOUND, "job not found"),
        Err(e) => internal(e),
    }
}

async fn delete_job(
    State(s): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = authorize(&s, &uri, &headers).await {
        return r;
    }
    let Ok(id) = id.parse::<i64>() else {
        return unprocessable("the job id is an integer");
    };
    match s.db.delete_job(id).await {
        Ok(true) => StatusCode::OK.into_response(),
        Ok(false) => message(StatusCode::NOT_FOUND, "job not found"),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    state: Option<String>,
    page: Option<i64>,
    per_page: Option<i64>,
}

async fn list_jobs(
    State(s): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    if let Err(r) = authorize(&s, &uri, &headers).await {
        return r;
    }
    let page = q.page.unwrap_or(1).max(1);
    let per_page = q.per_page.unwrap_or(10).clamp(1, 1000);
    let (rows, total) = match s
        .db
        .jobs(q.kind.as_deref(), q.state.as_deref(), page, per_page)
        .await
    {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let clusters = s.db.clusters().await.unwrap_or_default();
    let body: Vec<Value> = rows.iter().map(|r| jobs::render(r, &clusters)).collect();
    let last = ((total + per_page - 1) / per_page).max(1);
    let link =
        |p: i64, rel: &str| format!("<{}?page={p}&per_page={per_page}>; rel={rel}", uri.path());
    let mut links = vec![link(1, "first")];
    if page > 1 {
        links.push(link(page - 1, "prev"));
    }
    if page < last {
        links.push(link(page + 1, "next"));
    }
    links.push(link(last, "last"));
    let mut resp = Json(body).into_response();
    if let Ok(v) = links.join(",").parse() {
        resp.headers_mut().insert(header::LINK, v);
    }
    resp
}

async fn list_clusters(State(s): State<Arc<Shared>>, uri: Uri, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &uri, &headers).await {
        return r;
    }
    let clusters = match s.db.clusters().await {
        Ok(c) => c,
        Err(e) => return internal(e),
    };
    let instances = s.db.instances().await.unwrap_or_default();
    let body: Vec<Value> = clusters
        .iter()
        .map(|(id, name)| {
            let of = |kind: &str| {
                instances
                    .iter()
                    .filter(|i| i.cluster_id == *id && i.kind == kind)
                    .map(|i| json!({"id": i.id, "host_name": i.hostname, "addr": i.addr, "state": i.state, "last_keep_alive_at": crate::time_format::rfc3339(i.last_keep_alive_at)}))
                    .collect::<Vec<_>>()
            };
            json!({"id": id, "name": name, "schedulers": of("scheduler"), "seed_peers": of("seed_peer")})
        })
        .collect();
    Json(body).into_response()
}

/// A keepalive from a scheduler or seed peer.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct KeepAlive {
    /// `scheduler` or `seed_peer`.
    pub kind: String,
    pub cluster: String,
    pub hostname: String,
    /// A scheduler's gRPC endpoint (`http://host:port`); a seed's upload
    /// address.
    pub addr: String,
}

async fn keep_alive(State(s): State<Arc<Shared>>, Json(k): Json<KeepAlive>) -> Response {
    if !matches!(k.kind.as_str(), "scheduler" | "seed_peer")
        || k.cluster.is_empty()
        || k.addr.is_empty()
    {
        return unprocessable("kind (scheduler or seed_peer), cluster and addr are required");
    }
    s.metrics.keepalives.fetch_add(1, Ordering::Relaxed);
    match s
        .db
        .keep_alive(&k.kind, &k.cluster, &k.hostname, &k.addr)
        .await
    {
        Ok(()) => Json(json!({"ttl_ms": s.ttl.as_millis() as u64})).into_response(),
        Err(e) => internal(e),
    }
}

/// The active schedulers of a cluster, for daemons.
async fn cluster_schedulers(State(s): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    let id = match s.db.cluster_id(&name).await {
        Ok(id) => id,
        Err(e) => return internal(e),
    };
    match s.db.active("scheduler", id, s.ttl).await {
        Ok(list) => {
            Json(json!({"schedulers": list.iter().map(|i| i.addr.clone()).collect::<Vec<_>>()}))
                .into_response()
        }
        Err(e) => internal(e),
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let mut m = weightcast_proto::metrics_text::MetricsText::default();
    let instances = s.db.instances().await.unwrap_or_default();
    let count = |kind: &str, state: &str| {
        instances
            .iter()
            .filter(|i| i.kind == kind && i.state == state)
            .count() as u64
    };
    m.counter(
        "weightcast_manager_jobs_created_total",
        "Jobs created through the open API.",
        s.metrics.jobs_created.load(Ordering::Relaxed),
    )
    .counter(
        "weightcast_manager_keepalives_total",
        "Keepalives from schedulers and seed peers.",
        s.metrics.keepalives.load(Ordering::Relaxed),
    )
    .counter(
        "weightcast_manager_marked_inactive_total",
        "Schedulers and seed peers marked inactive for missing keepalives.",
        s.metrics.marked_inactive.load(Ordering::Relaxed),
    )
    .counter(
        "weightcast_manager_denied_total",
        "Open API requests refused (401, 403).",
        s.metrics.denied.load(Ordering::Relaxed),
    )
    .gauge(
        "weightcast_manager_active_schedulers",
        "Schedulers marked active.",
        count("scheduler", "active"),
    )
    .gauge(
        "weightcast_manager_active_seed_peers",
        "Seed peers marked active.",
        count("seed_peer", "active"),
    );
    m.finish().into_response()
}
