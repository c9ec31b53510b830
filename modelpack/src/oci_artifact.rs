//! A ModelPack (CNCF model-spec) or plain OCI artifact, from its manifest to
//! the files it holds.
//!
//! Each layer is one blob: a file (`raw`) or an archive of files (`tar`,
//! `tar+gzip`, `tar+zstd`). Its path comes from the
//! `org.cncf.model.filepath` annotation (ModelPack) or
//! `org.opencontainers.image.title` (plain artifacts, ORAS); a raw layer
//! without either is refused, since there is nothing to name it by.

use crate::glob;
use crate::oci_ref::is_sha256_digest;
use crate::rel_path::{RelPath, UnsafePath};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// What a registry is asked for: every manifest and index shape.
pub const ACCEPT: [&str; 4] = [MANIFEST, INDEX, DOCKER_MANIFEST, DOCKER_LIST];
pub const MODEL_ARTIFACT: &str = "application/vnd.cncf.model.manifest.v1+json";
pub const MODEL_CONFIG: &str = "application/vnd.cncf.model.config.v1+json";
pub const FILEPATH: &str = "org.cncf.model.filepath";
pub const TITLE: &str = "org.opencontainers.image.title";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest, or an index of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub artifact_type: Option<String>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// Set in an index.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArtifactError {
    #[error("the manifest is not valid JSON of an OCI manifest: {0}")]
    BadJson(String),
    #[error("unsupported manifest schema version {0} (expected 2)")]
    Schema(u32),
    #[error("{0:?} is not a sha256 digest")]
    BadDigest(String),
    #[error("layer {digest} has no org.cncf.model.filepath or org.opencontainers.image.title annotation to name its file")]
    Unnamed { digest: String },
    #[error(transparent)]
    UnsafePath(#[from] UnsafePath),
    #[error("the index lists no manifest for platform {0}; it has: {1}")]
    NoPlatform(String, String),
    #[error("the index lists {0} manifests: pick one with --platform os/arch (it has: {1})")]
    AmbiguousIndex(usize, String),
    #[error("two layers both write {0}")]
    Duplicate(String),
    #[error("no layer is left after --include/--exclude")]
    NothingSelected,
    #[error("the model config {digest} is invalid: {why}")]
    BadConfig { digest: String, why: String },
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Self, ArtifactError> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ArtifactError::BadJson(e.to_string()))?;
        if m.schema_version != 2 {
            return Err(ArtifactError::Schema(m.schema_version));
        }
        for d in m.layers.iter().chain(&m.manifests).chain(&m.config) {
            if !is_sha256_digest(&d.digest) {
                return Err(ArtifactError::BadDigest(d.digest.clone()));
            }
        }
        Ok(m)
    }

    pub fn is_index(&self) -> bool {
        !self.manifests.is_empty()
            || matches!(self.media_type.as_deref(), Some(INDEX) | Some(DOCKER_LIST))
    }

    pub fn is_model(&self) -> bool {
        self.artifact_type.as_deref() == Some(MODEL_ARTIFACT)
            || self
                .config
                .as_ref()
                .is_some_and(|c| c.media_type == MODEL_CONFIG)
    }

    /// In an index, the manifest for `platform` (`os/arch[/variant]`), or
    /// the only one when none is asked.
    pub fn pick(&self, platform: Option<&str>) -> Result<&Descriptor, ArtifactError> {
        let name = |d: &Descriptor| match &d.platform {
            Some(p) => match &p.variant {
                Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                None => format!("{}/{}", p.os, p.architecture),
            },
            None => "(no platform)".to_string(),
        };
        let all = self
            .manifests
            .iter()
            .map(name)
            .collect::<Vec<_>>()
            .join(", ");
        match platform {
            Some(want) => self
                .manifests
                .iter()
                .find(|d| name(d) == want || name(d).starts_with(&format!("{want}/")))
                .ok_or_else(|| ArtifactError::NoPlatform(want.to_string(), all)),
            None => match self.manifests.as_slice() {
                [only] => Ok(only),
                many => Err(ArtifactError::AmbiguousIndex(many.len(), all)),
            },
        }
    }
}

/// What a layer holds, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayerKind {
    Weight,
    WeightConfig,
    Doc,
    Code,
    Dataset,
    /// Not a ModelPack media type (a plain artifact's file).
    Other,
}

impl LayerKind {
    pub fn name(self) -> &'static str {
        match self {
            LayerKind::Weight => "weight",
            LayerKind::WeightConfig => "weight.config",
            LayerKind::Doc => "doc",
            LayerKind::Code => "code",
            LayerKind::Dataset => "dataset",
            LayerKind::Other => "other",
        }
    }
}

/// How a layer's bytes are packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Packing {
    Raw,
    Tar,
    TarGzip,
    TarZstd,
}

/// `application/vnd.cncf.model.<kind>.v1.<packing>`; anything else is a
/// plain file of kind `other` (tar when the type says so).
pub fn classify(media_type: &str) -> (LayerKind, Packing) {
    let packing = if media_type.ends_with("tar+gzip")
        || media_type.ends_with("tar.gzip")
        || media_type.ends_with("tar+gz")
    {
        Packing::TarGzip
    } else if media_type.ends_with("tar+zstd") {
        Packing::TarZstd
    } else if media_type.ends_with(".tar") || media_type.ends_with("+tar") {
        Packing::Tar
    } else {
        Packing::Raw
    };
    let kind = match media_type
        .strip_prefix("application/vnd.cncf.model.")
        .and_then(|r| r.split_once(".v1"))
        .map(|(k, _)| k)
    {
        Some("weight") => LayerKind::Weight,
        Some("weight.config") => LayerKind::WeightConfig,
        Some("doc") => LayerKind::Doc,
        Some("code") => LayerKind::Code,
        Some("dataset") => LayerKind::Dataset,
        _ => LayerKind::Other,
    };
    (kind, packing)
}

/// One layer, ready to fetch: its blob and where its content goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layer {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    pub kind: LayerKind,
    pub packing: Packing,
    /// A raw layer's file; an archive's directory to extract into (`None`:
    /// the output's root).
    pub path: Option<RelPath>,
}

impl Layer {
    pub fn sha256_hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }
}

/// `--include` / `--exclude`: layer kinds (`weight`, `doc`, ...) or globs
/// over file paths.
#[derive(Debug, Clone, Default)]
pub struct LayerFilter {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

impl LayerFilter {
    fn matches(pattern: &str, l: &Layer) -> bool {
        pattern == l.kind.name()
            || pattern == l.media_type
            || l.path
                .as_ref()
                .is_some_and(|p| glob::selects(pattern, p.as_str()))
    }

    pub fn keeps(&self, l: &Layer) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| Self::matches(p, l)))
            && !self.exclude.iter().any(|p| Self::matches(p, l))
    }
}

/// The layers of an image manifest that `filter` keeps, each checked: a
/// sha256 digest, a safe path, no two raw layers on one path.
pub fn layers(m: &Manifest, filter: &LayerFilter) -> Result<Vec<Layer>, ArtifactError> {
    let mut out: Vec<Layer> = Vec::new();
    for d in &m.layers {
        let (kind, packing) = classify(&d.media_type);
        let name = d
            .annotations
            .get(FILEPATH)
            .or_else(|| d.annotations.get(TITLE));
        let path = match (name, packing) {
            (Some(n), _) => Some(RelPath::parse(n.trim_end_matches('/'))?),
            (None, Packing::Raw) => {
                return Err(ArtifactError::Unnamed {
                    digest: d.digest.clone(),
                })
            }
            (None, _) => None,
        };
        let layer = Layer {
            digest: d.digest.clone(),
            size: d.size,
            media_type: d.media_type.clone(),
            kind,
            packing,
            path,
        };
        if !filter.keeps(&layer) {
            continue;
        }
        if layer.packing == Packing::Raw
            && out
                .iter()
                .any(|o| o.packing == Packing::Raw && o.path == layer.path)
        {
            return Err(ArtifactError::Duplicate(
                layer.path.map(|p| p.to_string()).unwrap_or_default(),
            ));
        }
        out.push(layer);
    }
    if out.is_empty() {
        return Err(ArtifactError::NothingSelected);
    }
    Ok(out)
}

/// Checks a ModelPack config blob: JSON with the spec's sections, and every
/// `modelfs.diffIds` entry a sha256 digest.
pub fn validate_model_config(
    digest: &str,
    bytes: &[u8],
) -> Result<serde_json::Value, ArtifactError> {
    let bad = |why: String| ArtifactError::BadConfig {
        digest: digest.to_string(),
        why,
    };
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("not a JSON object".into()))?;
    for (key, want_object) in [("descriptor", true), ("config", true), ("modelfs", true)] {
        if let Some(x) = obj.get(key) {
            if want_object && !x.is_object() {
                return Err(bad(format!("{key:?} is not an object")));
            }
        }
    }
    if let Some(ids) = obj.get("modelfs").and_then(|m| m.get("diffIds")) {
        let ids = ids
            .as_array()
            .ok_or_else(|| bad("modelfs.diffIds is not a list".into()))?;
        if let Some(x) = ids
            .iter()
            .find(|x| !x.as_str().is_some_and(is_sha256_digest))
        {
            return Err(bad(format!(
                "modelfs.diffIds holds {x}, not a sha256 digest"
            )));
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(media: &str, path: Option<&str>, n: u8) -> Descriptor {
        Descriptor {
            media_type: media.into(),
            digest: format!("sha256:{}", format!("{n:02x}").repeat(32)),
            size: 10,
            annotations: path
                .map(|p| BTreeMap::from([(FILEPATH.to_string(), p.to_string())]))
                .unwrap_or_default(),
            platform: None,
        }
    }

    fn manifest(layers: Vec<Descriptor>) -> Manifest {
        Manifest {
            schema_version: 2,
            media_type: Some(MANIFEST.into()),
            artifact_type: Some(MODEL_ARTIFACT.into()),
            config: None,
            layers,
            manifests: vec![],
        }
    }

    #[test]
    fn media_types_classify() {
        assert_eq!(
            classify("application/vnd.cncf.model.weight.v1.raw"),
            (LayerKind::Weight, Packing::Raw)
        );
        assert_eq!(
            classify("application/vnd.cncf.model.weight.config.v1.tar"),
            (LayerKind::WeightConfig, Packing::Tar)
        );
        assert_eq!(
            classify("application/vnd.cncf.model.dataset.v1.tar+zstd"),
            (LayerKind::Dataset, Packing::TarZstd)
        );
        assert_eq!(
            classify("application/vnd.cncf.model.code.v1.tar+gzip"),
            (LayerKind::Code, Packing::TarGzip)
        );
        assert_eq!(
            classify("application/octet-stream"),
            (LayerKind::Other, Packing::Raw)
        );
        assert_eq!(
            classify("application/vnd.oci.image.layer.v1.tar+gzip"),
            (LayerKind::Other, Packing::TarGzip)
        );
    }

    #[test]
    fn layers_are_named_checked_and_filtered() {
        let m = manifest(vec![
            layer(
                "application/vnd.cncf.model.weight.v1.raw",
                Some("model.safetensors"),
                1,
            ),
            layer(
                "application/vnd.cncf.model.doc.v1.raw",
                Some("README.md"),
                2,
            ),
            layer("application/vnd.cncf.model.dataset.v1.tar", None, 3),
        ]);
        assert!(m.is_model());
        let all = layers(&m, &LayerFilter::default()).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].path.as_ref().unwrap().as_str(), "model.safetensors");
        assert_eq!(all[2].path, None);
        let weights = LayerFilter {
            include: vec!["weight".into()],
            exclude: vec![],
        };
        assert_eq!(layers(&m, &weights).unwrap().len(), 1);
        let no_data = LayerFilter {
            include: vec![],
            exclude: vec!["dataset".into(), "*.md".into()],
        };
        assert_eq!(layers(&m, &no_data).unwrap().len(), 1);
        let none = LayerFilter {
            include: vec!["code".into()],
            exclude: vec![],
        };
        assert_eq!(layers(&m, &none), Err(ArtifactError::NothingSelected));

        let evil = manifest(vec![layer(
            "application/vnd.cncf.model.weight.v1.raw",
            Some("../../etc/x"),
            1,
        )]);
        assert!(matches!(
            layers(&evil, &LayerFilter::default()),
            Err(ArtifactError::UnsafePath(_))
        ));
        let unnamed = manifest(vec![layer(
            "application/vnd.cncf.model.weight.v1.raw",
            None,
            1,
        )]);
        assert!(matches!(
            layers(&unnamed, &LayerFilter::default()),
            Err(ArtifactError::Unnamed { .. })
        ));
        let twice = manifest(vec![
            layer("application/vnd.cncf.model.weight.v1.raw", Some("a"), 1),
            layer("application/vnd.cncf.model.weight.v1.raw", Some("a"), 2),
        ]);
        assert!(matches!(
            layers(&twice, &LayerFilter::default()),
            Err(ArtifactError::Duplicate(_))
        ));
    }

    #[test]
    fn manifests_parse_and_indexes_pick_a_platform() {
        assert!(matches!(
            Manifest::parse(b"{"),
            Err(ArtifactError::BadJson(_))
        ));
        assert!(matches!(
            Manifest::parse(br#"{"schemaVersion":1}"#),
            Err(ArtifactError::Schema(1))
        ));
        let bad =
            br#"{"schemaVersion":2,"layers":[{"mediaType":"x","digest":"sha256:zz","size":1}]}"#;
        assert!(matches!(
            Manifest::parse(bad),
            Err(ArtifactError::BadDigest(_))
        ));
        let d = |n: u8, arch: &str| Descriptor {
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: None,
            }),
            ..layer(MANIFEST, None, n)
        };
        let idx = Manifest {
            manifests: vec![d(1, "amd64"), d(2, "arm64")],
            media_type: Some(INDEX.into()),
            ..manifest(vec![])
        };
        assert!(idx.is_index());
        assert_eq!(
            idx.pick(Some("linux/arm64")).unwrap().digest,
            d(2, "arm64").digest
        );
        assert!(matches!(
            idx.pick(None),
            Err(ArtifactError::AmbiguousIndex(2, _))
        ));
        assert!(matches!(
            idx.pick(Some("linux/s390x")),
            Err(ArtifactError::NoPlatform(..))
        ));
        let one = Manifest {
            manifests: vec![d(1, "amd64")],
            ..idx
        };
        assert!(one.pick(None).is_ok());
    }

    #[test]
    fn model_configs_are_checked() {
        let ok = br#"{"descriptor":{"name":"m"},"config":{"format":"safetensors"},"modelfs":{"type":"layers","diffIds":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}}"#;
        assert!(validate_model_config("d", ok).is_ok());
        assert!(validate_model_config("d", b"[]").is_err());
        assert!(validate_model_config("d", br#"{"modelfs":{"diffIds":["nope"]}}"#).is_err());
        assert!(validate_model_config("d", br#"{"config":"x"}"#).is_err());
    }
}
