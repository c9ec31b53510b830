//! The open API's job shapes, as Dragonfly's manager reads and writes them
//! (and Harbor parses them): the create body, preheat/get_task/delete_task
//! `args`, and the job answer with its `result.job_states[].results[]`.

use crate::db::JobRow;
use crate::time_format::rfc3339;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

pub const PREHEAT: &str = "preheat";
pub const GET_TASK: &str = "get_task";
pub const DELETE_TASK: &str = "delete_task";

/// `POST /oapi/v1/jobs`. Harbor sends every key, some `null`.
#[derive(Debug, Deserialize)]
pub struct CreateJob {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub bio: Option<String>,
    #[serde(default)]
    pub args: Value,
    #[serde(default)]
    pub user_id: Option<i64>,
    #[serde(default)]
    pub scheduler_cluster_ids: Option<Vec<i64>>,
    #[serde(default)]
    pub seed_peer_cluster_ids: Option<Vec<i64>>,
}

/// Preheat `args` (Dragonfly's `PreheatArgs`, plus ours: `hf://`/`oci://`
/// URLs, `hf_endpoint`, `plain_http`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PreheatArgs {
    #[serde(rename = "type")]
    pub kind: String,
    pub url: String,
    pub urls: Option<Vec<String>>,
    pub piece_length: Option<u64>,
    pub tag: Option<String>,
    pub application: Option<String>,
    pub filtered_query_params: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub platform: Option<String>,
    pub scope: Option<String>,
    pub ips: Option<Vec<String>>,
    pub count: Option<u32>,
    pub percentage: Option<u32>,
    pub concurrent_task_count: Option<i64>,
    pub concurrent_peer_count: Option<i64>,
    /// Harbor's own key; Dragonfly ignores it, so do we.
    pub concurrent_count: Option<i64>,
    /// Go `time.Duration`: integer nanoseconds; 0 is the default.
    pub timeout: Option<i64>,
    pub hf_endpoint: Option<String>,
    pub hf_token: Option<String>,
    pub plain_http: Option<bool>,
}

/// `get_task` / `delete_task` `args`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TaskArgs {
    pub task_id: Option<String>,
    pub url: Option<String>,
    /// Ours: a `sha256:<hex>` digest (an LFS file, an OCI blob).
    pub digest: Option<String>,
    pub content_for_calculating_task_id: Option<String>,
    pub filtered_query_params: Option<String>,
    pub timeout: Option<i64>,
}

/// The `args` of a new job of type `kind`, checked (the open API and the
/// console create jobs through this one gate); the error says what is wrong.
pub fn checked_args(kind: &str, args: &Value) -> Result<Value, String> {
    match kind {
        PREHEAT => {
            let a =
                serde_json::from_value::<PreheatArgs>(args.clone()).map_err(|e| e.to_string())?;
            a.validate().map_err(|e| e.0)?;
        }
        GET_TASK | DELETE_TASK => {
            let a = serde_json::from_value::<TaskArgs>(args.clone()).map_err(|e| e.to_string())?;
            crate::worker::task_of(&a)?;
        }
        _ => return Err("Unknow type".into()),
    }
    Ok(args.clone())
}

/// Queues a job whose `args` passed [`checked_args`], for `cluster_ids`
/// (empty: every cluster with an active scheduler).
pub async fn enqueue(
    db: &crate::db::Db,
    kind: &str,
    bio: &str,
    user_id: i64,
    args: &Value,
    cluster_ids: &[i64],
) -> Result<JobRow, crate::db::DbError> {
    let group = hex::encode(rand::random::<[u8; 16]>());
    db.insert_job(
        kind,
        bio,
        user_id,
        &args.to_string(),
        &serde_json::to_string(cluster_ids).unwrap_or_else(|_| "[]".into()),
        &group,
    )
    .await
}

/// A 422 with Dragonfly's `{"errors": ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl PreheatArgs {
    pub fn validate(&self) -> Result<(), Invalid> {
        let ours = |u: &str| u.starts_with("hf://") || u.starts_with("oci://");
        match self.kind.as_str() {
            "image" => {
                if self.url.is_empty() {
                    return Err(Invalid("args.url is required for an image preheat".into()));
                }
                if !ours(&self.url) {
                    crate::resolve::parse_manifest_url(&self.url)
                        .map_err(|e| Invalid(e.to_string()))?;
                }
            }
            "file" | "hf" | "oci" => {
                if self.all_urls().is_empty() {
                    return Err(Invalid("args.url or args.urls is required".into()));
                }
            }
            other => {
                return Err(Invalid(format!(
                    "args.type {other:?}: expected image or file"
                )))
            }
        }
        if let Some(s) = &self.scope {
            if weightcast_proto_scope(s).is_none() {
                return Err(Invalid(format!(
                    "args.scope {s:?}: expected single_seed_peer, all_seed_peers or all_peers"
                )));
            }
        }
        if let Some(ips) = &self.ips {
            if ips.len() > 100 {
                return Err(Invalid("args.ips takes at most 100 entries".into()));
            }
        }
        if self.count.is_some_and(|c| c > 200) {
            return Err(Invalid("args.count is 1 to 200".into()));
        }
        if self.percentage.is_some_and(|p| p > 100) {
            return Err(Invalid("args.percentage is 1 to 100".into()));
        }
        Ok(())
    }

    pub fn all_urls(&self) -> Vec<String> {
        let mut v: Vec<String> = self.urls.clone().unwrap_or_default();
        if !self.url.is_empty() && !v.contains(&self.url) {
            v.insert(0, self.url.clone());
        }
        v
    }

    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
            .filter(|ns| *ns > 0)
            .map(|ns| Duration::from_nanos(ns as u64))
    }
}

fn weightcast_proto_scope(s: &str) -> Option<()> {
    matches!(s, "" | "single_seed_peer" | "all_seed_peers" | "all_peers").then_some(())
}

/// One cluster's part of a job, as the worker records it.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ClusterState {
    pub cluster_id: i64,
    pub state: String,
    pub error: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// The `results[0]` object of this job state.
    pub result: Value,
}

/// The `result` of a job (Dragonfly's `GroupJobState`).
pub fn group_result(
    group_uuid: &str,
    state: &str,
    created: i64,
    updated: i64,
    parts: &[ClusterState],
) -> Value {
    json!({
        "group_uuid": group_uuid,
        "state": state,
        "created_at": rfc3339(created),
        "updated_at": rfc3339(updated),
        "job_states": parts.iter().map(|p| json!({
            "task_uuid": format!("{group_uuid}-{}", p.cluster_id),
            "task_name": "",
            "state": p.state,
            "error": p.error,
            "created_at": rfc3339(p.created_at),
            "ttl": 0,
            "results": [p.result],
        })).collect::<Vec<_>>(),
    })
}

/// A job as the API answers it.
pub fn render(job: &JobRow, clusters: &[(i64, String)]) -> Value {
    let args: Value = serde_json::from_str(&job.args).unwrap_or(Value::Null);
    let result: Value = serde_json::from_str(&job.result).unwrap_or_else(|_| json!({}));
    let ids: Vec<i64> = serde_json::from_str(&job.cluster_ids).unwrap_or_default();
    let scheduler_clusters: Vec<Value> = clusters
        .iter()
        .filter(|(id, _)| ids.is_empty() || ids.contains(id))
        .map(|(id, name)| json!({"id": id, "name": name}))
        .collect();
    json!({
        "id": job.id,
        "created_at": rfc3339(job.created_at),
        "updated_at": rfc3339(job.updated_at),
        "is_del": 0,
        "task_id": format!("group_{}", job.group_uuid),
        "bio": job.bio,
        "type": job.kind,
        "state": job.state,
        "args": args,
        "result": result,
        "user_id": job.user_id,
        "user": null,
        "seed_peer_clusters": [],
        "scheduler_clusters": scheduler_clusters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body Harbor's Dragonfly provider sends (every key, no omitempty).
    const HARBOR: &str = r#"{"type":"preheat","args":{"type":"image","url":"https://harbor.example/v2/library/fake/manifests/v1","tag":"","filtered_query_params":"","headers":{"Authorization":"Bearer eyJ"},"scope":"","concurrent_count":0,"timeout":0},"scheduler_cluster_ids":null}"#;

    #[test]
    fn harbors_body_is_accepted_as_sent() {
        let c: CreateJob = serde_json::from_str(HARBOR).unwrap();
        assert_eq!(c.kind, PREHEAT);
        assert_eq!(c.scheduler_cluster_ids, None);
        let a: PreheatArgs = serde_json::from_value(c.args).unwrap();
        a.validate().unwrap();
        assert_eq!(a.timeout(), None);
        assert_eq!(a.scope.as_deref(), Some(""));
        assert_eq!(a.headers.unwrap()["Authorization"], "Bearer eyJ");
    }

    #[test]
    fn bad_args_are_refused_with_a_reason() {
        let a = PreheatArgs {
            kind: "image".into(),
            url: "https://harbor.example/library/fake:v1".into(),
            ..Default::default()
        };
        assert!(a.validate().is_err());
        let a = PreheatArgs {
            kind: "file".into(),
            url: "https://o/f".into(),
            scope: Some("everyone".into()),
            ..Default::default()
        };
        assert!(a.validate().unwrap_err().0.contains("everyone"));
        let a = PreheatArgs {
            kind: "file".into(),
            url: "hf://org/model".into(),
            timeout: Some(90_000_000_000),
            ..Default::default()
        };
        a.validate().unwrap();
        assert_eq!(a.timeout(), Some(Duration::from_secs(90)));
    }
}
