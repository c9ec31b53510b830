//! Artifact resolution without networking policy: what an artifact is made
//! of, where each file goes, and whether a downloaded file is sound.
//!
//! - [`hf_uri`] parses `hf://[datasets/]owner/name[@revision][/path-or-glob]`.
//! - [`hf_api`]: the Hub's revision and tree answers, its URL shapes, and the
//!   turn from a tree into the list of files to fetch.
//! - [`rel_path`]: file names from the network are untrusted; a [`RelPath`]
//!   is one that cannot leave the directory it is joined to.
//! - [`glob`]: the path selector of an `hf://` URI.
//! - [`safetensors_check`]: a `.safetensors` file's header and offsets;
//!   [`safetensors_gen`]: a valid one of any size (the demo's stand-in weights).
//! - [`oci_ref`], [`oci_artifact`]: `oci://` references, and a ModelPack
//!   or plain OCI artifact's manifest turned into layers and file paths.
//! - [`tar_extract`]: safe extraction of tar layers.
//! - [`layout`]: where files land: a plain directory, the Hugging Face
//!   cache structure, a Triton or TorchServe model repository entry.
//!
//! The engine does the HTTP; this crate only knows shapes, so everything in
//! it is tested without sockets.

pub mod glob;
pub mod hf_api;
pub mod hf_uri;
pub mod layout;
pub mod oci_artifact;
pub mod oci_ref;
pub mod rel_path;
pub mod safetensors_check;
pub mod safetensors_gen;
pub mod tar_extract;

pub use hf_api::{BlobId, HfFile, RepoKind, RepoRef};
pub use hf_uri::HfUri;
pub use layout::Layout;
pub use rel_path::RelPath;
