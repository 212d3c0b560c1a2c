//! A model bundle on disk: `backbone.onnx`, `head.stats`, `manifest.json`.

use gaussedge_shared::stats::Preprocess;
use gaussedge_shared::{HeadSettings, Transform, Weighting};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

pub const BACKBONE: &str = "backbone.onnx";
pub const STATS: &str = "head.stats";
pub const MANIFEST: &str = "manifest.json";

/// Head settings recorded in the manifest: what `eval` and the demo use by
/// default for this bundle.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeadDefaults {
    pub weighting: Weighting,
    pub settings: HeadSettings,
    pub transform: Transform,
}

/// What a device needs to know about a bundle; the host adds training
/// details under `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub dataset: String,
    /// Labels of all the dataset's classes, by class number.
    pub labels: Vec<String>,
    /// Classes the backbone was trained on (and `head.stats` holds).
    pub base_classes: Vec<u16>,
    pub preprocess: Preprocess,
    pub feature_dim: usize,
    /// Outputs of `backbone.onnx` whose concatenation is the feature vector
    /// (`feature_dim` wide in all). A backbone may export more outputs than
    /// a manifest uses, so one ONNX serves several head designs.
    #[serde(default = "default_layers")]
    pub layers: Vec<String>,
    /// Hex SHA-256 of `backbone.onnx`.
    pub backbone_sha256: String,
    pub head: HeadDefaults,
    #[serde(default)]
    pub extra: serde_json::Value,
}

pub const MANIFEST_FORMAT: u32 = 1;

/// The output every exported backbone has: the pooled last layer.
pub const DEFAULT_LAYER: &str = "features";

pub fn default_layers() -> Vec<String> {
    vec![DEFAULT_LAYER.to_string()]
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: bad manifest: {source}")]
    Manifest { path: String, source: serde_json::Error },
    #[error("{path}: manifest format {found}, this build reads {MANIFEST_FORMAT}")]
    Format { path: String, found: u32 },
    #[error("backbone.onnx has SHA-256 {actual}, the manifest says {expected}")]
    Hash { expected: String, actual: String },
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read(path: &Path) -> Result<Vec<u8>, BundleError> {
    std::fs::read(path).map_err(|source| BundleError::Io { path: path.display().to_string(), source })
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Self, BundleError> {
        let path = dir.join(MANIFEST);
        let bytes = read(&path)?;
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|source| BundleError::Manifest { path: path.display().to_string(), source })?;
        if m.format != MANIFEST_FORMAT {
            return Err(BundleError::Format { path: path.display().to_string(), found: m.format });
        }
        Ok(m)
    }

    pub fn sha256_bytes(&self) -> Option<[u8; 32]> {
        let s = self.backbone_sha256.as_bytes();
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(std::str::from_utf8(&s[2 * i..2 * i + 2]).ok()?, 16).ok()?;
        }
        Some(out)
    }
}

/// A bundle read from disk, the backbone verified against the manifest.
pub struct Bundle {
    pub manifest: Manifest,
    pub onnx: Vec<u8>,
    pub stats: Option<Vec<u8>>,
}

impl Bundle {
    pub fn read(dir: &Path) -> Result<Self, BundleError> {
        let manifest = Manifest::read(dir)?;
        let onnx = read(&dir.join(BACKBONE))?;
        let actual = hex(&sha256(&onnx));
        if actual != manifest.backbone_sha256 {
            return Err(BundleError::Hash { expected: manifest.backbone_sha256.clone(), actual });
        }
        let stats_path = dir.join(STATS);
        let stats = if stats_path.exists() { Some(read(&stats_path)?) } else { None };
        Ok(Bundle { manifest, onnx, stats })
    }
}
