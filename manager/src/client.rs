//! What talks to the manager: schedulers and seeds keeping alive, daemons
//! asking for their cluster's schedulers, and `weightcast preheat` / `task`
//! calling the open API.

use crate::api::KeepAlive;
use serde_json::Value;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the manager at {url}: {error}")]
    Transport { url: String, error: reqwest::Error },
    #[error("the manager answered {status} to {url}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default()
}

/// `http://mgr:7500` (a bare `host:port` gets `http://`).
pub fn base(manager: &str) -> String {
    let m = manager.trim_end_matches('/');
    if m.contains("://") {
        m.to_string()
    } else {
        format!("http://{m}")
    }
}

async fn json(url: String, r: reqwest::RequestBuilder) -> Result<Value, ClientError> {
    let resp = r.send().await.map_err(|error| ClientError::Transport {
        url: url.clone(),
        error,
    })?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(ClientError::Status {
            url,
            status: status.as_u16(),
            body: text,
        });
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Keeps `who` registered with the manager until `cancel`: one keepalive
/// every `every`; failures are logged and retried.
pub async fn keep_alive(
    manager: String,
    who: KeepAlive,
    every: Duration,
    cancel: CancellationToken,
) {
    let url = format!("{}/api/v1/keepalive", base(&manager));
    let client = http();
    let mut warned = false;
    loop {
        match json(url.clone(), client.post(&url).json(&who)).await {
            Ok(_) => {
                if warned {
                    tracing::info!(manager = %manager, "the manager answers keepalives again");
                }
                warned = false;
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "keepalive to the manager failed; retrying");
                }
                warned = true;
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// The active schedulers of `cluster`.
pub async fn schedulers(manager: &str, cluster: &str) -> Result<Vec<String>, ClientError> {
    let url = format!("{}/api/v1/clusters/{cluster}/schedulers", base(manager));
    let v = json(url.clone(), http().get(&url)).await?;
    Ok(v["schedulers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// The open API with a personal access token.
pub struct OpenApi {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl OpenApi {
    pub fn new(manager: &str, token: &str) -> Self {
        Self {
            base: base(manager),
            token: token.to_string(),
            http: http(),
        }
    }

    pub async fn create_job(&self, body: &Value) -> Result<Value, ClientError> {
        let url = format!("{}/oapi/v1/jobs", self.base);
        json(
            url.clone(),
            self.http.post(&url).bearer_auth(&self.token).json(body),
        )
        .await
    }

    pub async fn job(&self, id: i64) -> Result<Value, ClientError> {
        let url = format!("{}/oapi/v1/jobs/{id}", self.base);
        json(url.clone(), self.http.get(&url).bearer_auth(&self.token)).await
    }
}
