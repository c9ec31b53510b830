//! The registry client against a small registry with token auth (the
//! e2e tests in `tests/oci.rs` use a real one with Basic auth).

use super::*;
use crate::backend::Backends;
use crate::fetcher::{OriginConfig, OriginFetcher};
use crate::stats::OriginStats;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode as Code};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// A registry at `addr` whose repository `m` needs a pull token for the
/// login u:p; it serves `blobs` by digest and `manifests` by tag or digest,
/// each with the `Docker-Content-Digest` in `claimed` (else its own).
struct Fixture {
    blobs: HashMap<String, Vec<u8>>,
    manifests: HashMap<String, Vec<u8>>,
    claimed: HashMap<String, String>,
    tokens_issued: AtomicU32,
    addr: String,
}

fn bearer_ok(h: &HeaderMap) -> bool {
    h.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer tok")
}

fn challenge(addr: &str) -> Response {
    let c =
        format!(r#"Bearer realm="http://{addr}/token",service="reg",scope="repository:m:pull""#);
    (
        Code::UNAUTHORIZED,
        [("www-authenticate", c)],
        r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
    )
        .into_response()
}

fn unknown(code: &str) -> Response {
    let body = format!(
        r#"{{"errors":[{{"code":"{code}","message":"{} unknown"}}]}}"#,
        code.to_lowercase()
    );
    (Code::NOT_FOUND, body).into_response()
}

async fn token(State(f): State<Arc<Fixture>>, h: HeaderMap) -> Response {
    f.tokens_issued.fetch_add(1, Ordering::Relaxed);
    // u:p
    if h.get("authorization").and_then(|v| v.to_str().ok()) != Some("Basic dTpw") {
        return Code::UNAUTHORIZED.into_response();
    }
    r#"{"token":"tok","expires_in":300}"#.into_response()
}

async fn manifest(
    State(f): State<Arc<Fixture>>,
    Path(reference): Path<String>,
    h: HeaderMap,
) -> Response {
    if !bearer_ok(&h) {
        return challenge(&f.addr);
    }
    let Some(bytes) = f.manifests.get(&reference) else {
        return unknown("MANIFEST_UNKNOWN");
    };
    let digest = f
        .claimed
        .get(&reference)
        .cloned()
        .unwrap_or_else(|| manifest::sha256_digest(bytes));
    (
        [
            ("docker-content-digest", digest),
            ("content-type", oci_artifact::MANIFEST.to_string()),
        ],
        bytes.clone(),
    )
        .into_response()
}

async fn blob(State(f): State<Arc<Fixture>>, Path(digest): Path<String>, h: HeaderMap) -> Response {
    if !bearer_ok(&h) {
        return challenge(&f.addr);
    }
    let Some(bytes) = f.blobs.get(&digest) else {
        return unknown("BLOB_UNKNOWN");
    };
    let len = bytes.len();
    match h.get("range").and_then(|v| v.to_str().ok()) {
        Some(r) => {
            let (a, b) = r
                .strip_prefix("bytes=")
                .and_then(|r| r.split_once('-'))
                .map(|(a, b)| (a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()))
                .unwrap();
            (
                Code::PARTIAL_CONTENT,
                [("content-range", format!("bytes {a}-{b}/{len}"))],
                bytes[a..=b].to_vec(),
            )
                .into_response()
        }
        None => ([("docker-content-digest", digest)], bytes.clone()).into_response(),
    }
}

async fn tags(State(f): State<Arc<Fixture>>, h: HeaderMap) -> Response {
    if !bearer_ok(&h) {
        return challenge(&f.addr);
    }
    let mut tags: Vec<&String> = f.manifests.keys().filter(|k| !k.contains(':')).collect();
    tags.sort();
    axum::Json(serde_json::json!({"name": "m", "tags": tags})).into_response()
}

const WEIGHTS: &[u8] = b"0123456789abcdef";

/// Starts the registry: tag `v1` is a ModelPack manifest, `tampered` is
/// other bytes claiming v1's digest.
async fn start() -> (Arc<Fixture>, String, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config =
        br#"{"descriptor":{"name":"m"},"config":{},"modelfs":{"type":"layers","diffIds":[]}}"#
            .to_vec();
    let config_digest = manifest::sha256_digest(&config);
    let weights_digest = manifest::sha256_digest(WEIGHTS);
    let v1 = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci_artifact::MANIFEST,
        "artifactType": oci_artifact::MODEL_ARTIFACT,
        "config": {"mediaType": oci_artifact::MODEL_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{
            "mediaType": "application/vnd.cncf.model.weight.v1.raw",
            "digest": weights_digest,
            "size": WEIGHTS.len(),
            "annotations": {oci_artifact::FILEPATH: "model.safetensors"}
        }]
    }))
    .unwrap();
    let v1_digest = manifest::sha256_digest(&v1);
    let mut tampered = v1.clone();
    tampered.extend_from_slice(b" ");
    let fixture = Arc::new(Fixture {
        blobs: [
            (config_digest, config),
            (weights_digest.clone(), WEIGHTS.to_vec()),
        ]
        .into(),
        manifests: [
            ("v1".to_string(), v1.clone()),
            (v1_digest.clone(), v1),
            ("tampered".to_string(), tampered),
        ]
        .into(),
        claimed: [("tampered".to_string(), v1_digest.clone())].into(),
        tokens_issued: AtomicU32::new(0),
        addr: addr.clone(),
    });
    let app = axum::Router::new()
        .route("/token", axum::routing::get(token))
        .route("/v2/m/manifests/:reference", axum::routing::get(manifest))
        .route("/v2/m/blobs/:digest", axum::routing::get(blob))
        .route("/v2/m/tags/list", axum::routing::get(tags))
        .with_state(fixture.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (fixture, v1_digest, weights_digest)
}

fn login() -> Credentials {
    Credentials::Basic {
        user: "u".into(),
        password: "p".into(),
    }
}

#[tokio::test]
async fn an_artifact_resolves_through_one_token_flow() {
    let (f, v1_digest, weights) = start().await;
    let client = RegistryClient::new(true);
    let r = OciRef::parse(&format!("oci://{}/m:v1", f.addr)).unwrap();
    let art = client
        .resolve(&r, &login(), None, &LayerFilter::default())
        .await
        .unwrap();
    assert_eq!(art.manifest_digest, v1_digest);
    assert!(art.is_model);
    assert_eq!(art.config.as_ref().unwrap()["descriptor"]["name"], "m");
    assert_eq!(art.layers.len(), 1);
    assert_eq!(
        art.blob_url(&weights),
        format!("http://{}/v2/m/blobs/{weights}", f.addr)
    );
    let auth = art.blob_auth().unwrap();
    assert_eq!(auth.value(), "Bearer tok", "the blobs get the pull token");
    assert_eq!(
        f.tokens_issued.load(Ordering::Relaxed),
        1,
        "one token for the manifest and the config"
    );
    // The blob's size, as a mirror asks for it, with the held token.
    let stat = client.blob_stat(&r, &weights, &login()).await.unwrap();
    assert_eq!(stat.content_length, WEIGHTS.len() as u64);
    assert_eq!(f.tokens_issued.load(Ordering::Relaxed), 1);

    // Without the login: the realm refuses, in the registry's words.
    let e = RegistryClient::new(true)
        .resolve(&r, &Credentials::Anonymous, None, &LayerFilter::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized);
    assert!(e.to_string().contains("refused the credentials"), "{e}");
    // Missing: not found, not an error of another kind.
    let missing = OciRef::parse(&format!("oci://{}/m:nope", f.addr)).unwrap();
    let e = client.manifest_raw(&missing, &login()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("not found"), "{e}");
}

#[tokio::test]
async fn a_tampered_manifest_is_refused() {
    let (f, v1_digest, _) = start().await;
    let client = RegistryClient::new(true);
    let r = OciRef::parse(&format!("oci://{}/m:tampered", f.addr)).unwrap();
    let e = client.manifest_raw(&r, &login()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DigestMismatch, "{e}");
    assert!(e.to_string().contains(&v1_digest), "{e}");
    let e = client
        .resolve(&r, &login(), None, &LayerFilter::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DigestMismatch, "{e}");
    // By digest, the right bytes pass.
    let pinned = OciRef::parse(&format!("oci://{}/m@{v1_digest}", f.addr)).unwrap();
    let (_, d) = client.manifest_raw(&pinned, &login()).await.unwrap();
    assert_eq!(d, v1_digest);
}

#[tokio::test]
async fn the_registry_as_an_oci_backend() {
    let (f, _, weights) = start().await;
    let mut backends = Backends::builtin();
    backends.register(Arc::new(RegistryBackend::new(RegistryClient::new(true))));
    let config = OriginConfig {
        credentials: vec![OriginAuth::new(
            &format!("http://{}/", f.addr),
            login().basic_header().unwrap(),
        )
        .unwrap()],
        retries: 0,
        ..OriginConfig::default()
    };
    let fetcher = OriginFetcher::with_backends(config, Arc::new(OriginStats::default()), backends);
    let blob = format!("oci://{}/m@{weights}", f.addr);
    let stat = fetcher.stat(&blob, None).await.unwrap();
    assert_eq!(stat.content_length, WEIGHTS.len() as u64);
    let mut dst = [0u8; 6];
    fetcher
        .fetch_range(&blob, 4..10, &mut dst, None)
        .await
        .unwrap();
    assert_eq!(&dst, b"456789");
    let tags = fetcher
        .list(&format!("oci://{}/m", f.addr), None)
        .await
        .unwrap();
    let names: Vec<&str> = tags.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["tampered", "v1"]);
    assert_eq!(f.tokens_issued.load(Ordering::Relaxed), 1);
    // Bytes come from blobs only.
    let e = fetcher
        .fetch_range(&format!("oci://{}/m:v1", f.addr), 0..4, &mut dst[..4], None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadUrl);
    let missing = format!("oci://{}/m@sha256:{}", f.addr, "0".repeat(64));
    let e = fetcher.stat(&missing, None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}
