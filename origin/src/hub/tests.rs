//! The Hub as an `hf://` backend, against a small Hub and CDN (the e2e
//! tests in `tests/hf.rs` run the real `huggingface_hub` client).

use super::*;
use crate::backend::Backends;
use crate::fetcher::{OriginConfig, OriginFetcher};
use crate::stats::OriginStats;
use crate::OriginAuth;
use axum::http::{HeaderMap, Method, StatusCode as Code, Uri};
use axum::response::IntoResponse;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const BYTES: &[u8] = b"safetensors-bytes";
const TOKEN: &str = "Bearer hf_tok";

fn sha() -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(BYTES))
}

async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A CDN that counts requests carrying an `Authorization`.
async fn cdn(with_auth: Arc<AtomicU32>) -> String {
    let app = axum::Router::new().fallback(move |h: HeaderMap| async move {
        if h.contains_key("authorization") {
            with_auth.fetch_add(1, Ordering::Relaxed);
        }
        let range = h.get("range").and_then(|v| v.to_str().ok()).unwrap_or("");
        let (a, b) = range
            .strip_prefix("bytes=")
            .and_then(|r| r.split_once('-'))
            .map(|(a, b)| (a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()))
            .unwrap_or((0, BYTES.len() - 1));
        let cr = format!("bytes {a}-{b}/{}", BYTES.len());
        (
            Code::PARTIAL_CONTENT,
            [("content-range", cr)],
            BYTES[a..=b].to_vec(),
        )
            .into_response()
    });
    serve(app).await
}

/// A gated repo `org/m`: `w/model.bin` (LFS, on the CDN) and `README.md`.
async fn hub(cdn: String) -> String {
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri, h: HeaderMap| {
        let cdn = cdn.clone();
        async move {
            if h.get("authorization").and_then(|v| v.to_str().ok()) != Some(TOKEN) {
                return (Code::UNAUTHORIZED, [("x-error-code", "GatedRepo")]).into_response();
            }
            match (method, uri.path()) {
                (Method::GET, "/api/models/org/m/revision/main") => {
                    axum::Json(serde_json::json!({"id": "org/m", "sha": COMMIT})).into_response()
                }
                (Method::GET, p) if p == format!("/api/models/org/m/tree/{COMMIT}") => {
                    axum::Json(serde_json::json!([
                        {"type": "directory", "path": "w", "oid": "d"},
                        {"type": "file", "path": "w/model.bin", "size": 130, "oid": "p",
                         "lfs": {"oid": sha(), "size": BYTES.len()}},
                        {"type": "file", "path": "README.md", "size": 5, "oid": "g"},
                    ]))
                    .into_response()
                }
                (_, "/org/m/resolve/main/w/model.bin") => (
                    Code::FOUND,
                    [
                        ("location", format!("{cdn}/blob")),
                        ("x-repo-commit", COMMIT.to_string()),
                        ("x-linked-etag", format!("\"{}\"", sha())),
                        ("x-linked-size", BYTES.len().to_string()),
                    ],
                )
                    .into_response(),
                _ => (Code::NOT_FOUND, [("x-error-code", "EntryNotFound")]).into_response(),
            }
        }
    });
    serve(app).await
}

fn fetcher(endpoint: &str, token: bool) -> OriginFetcher {
    let mut backends = Backends::builtin();
    backends.register(Arc::new(HubBackend::new(HubClient::new(endpoint).unwrap())));
    let config = OriginConfig {
        credentials: token
            .then(|| OriginAuth::new(endpoint, TOKEN).unwrap())
            .into_iter()
            .collect(),
        retries: 0,
        ..OriginConfig::default()
    };
    OriginFetcher::with_backends(config, Arc::new(OriginStats::default()), backends)
}

#[tokio::test]
async fn the_hub_as_an_hf_backend() {
    let with_auth = Arc::new(AtomicU32::new(0));
    let endpoint = hub(cdn(with_auth.clone()).await).await;
    let f = fetcher(&endpoint, true);
    let file = "hf://org/m/w/model.bin";
    let stat = f.stat(file, None).await.unwrap();
    assert_eq!(stat.content_length, BYTES.len() as u64);
    assert_eq!(stat.digest, Some(format!("sha256:{}", sha())));

    let mut dst = [0u8; 6];
    f.fetch_range(file, 2..8, &mut dst, None).await.unwrap();
    assert_eq!(&dst, &BYTES[2..8]);
    assert_eq!(
        with_auth.load(Ordering::Relaxed),
        0,
        "the Hub token never reaches the CDN"
    );

    let listed = f.list("hf://org/m/w", None).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].name, "model.bin");
    assert_eq!(listed[0].size, Some(BYTES.len() as u64));
    assert_eq!(listed[0].digest, stat.digest);
    assert_eq!(f.list("hf://org/m", None).await.unwrap().len(), 3);

    let e = f.stat("hf://org/m/missing.bin", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let e = f.stat("hf://org/m/w/*.bin", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadUrl, "a glob names no one file");
    // Without the token: the Hub's gate, as such.
    let e = fetcher(&endpoint, false)
        .stat(file, None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    assert!(e.to_string().contains("--hf-token"), "{e}");
}
