//! A model bundle on disk: `backbone.onnx`, `head.stats`, `manifest.json`.
//!
//! Its own crate so that everything that reads bundles (the host, the
//! simulator, the fuzz targets) does so without linking a runtime.
//!
//! ```no_run
//! let bundle = gaussedge_bundle::Bundle::read("models/cifar10-b0-base5".as_ref())?;
//! // The backbone's bytes were checked against the manifest's SHA-256.
//! assert_eq!(bundle.manifest.sha256_bytes(), Some(gaussedge_bundle::sha256(&bundle.onnx)));
//! println!("{} features from {:?}", bundle.manifest.feature_dim, bundle.manifest.layers);
//! # Ok::<(), gaussedge_bundle::BundleError>(())
//! ```
#![warn(missing_docs)]

use gaussedge_shared::stats::Preprocess;
use gaussedge_shared::{HeadSettings, Transform, Weighting};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

/// The backbone's file in a bundle folder.
pub const BACKBONE: &str = "backbone.onnx";
/// The base statistics' file (optional: a bundle may ship a bare backbone).
pub const STATS: &str = "head.stats";
/// The manifest's file.
pub const MANIFEST: &str = "manifest.json";

/// Head settings recorded in the manifest: what `eval` and the demo use by
/// default for this bundle.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeadDefaults {
    /// How class scatters are pooled (fixed when a head is made).
    pub weighting: Weighting,
    /// Regulariser, prior, debias and novelty score (changeable later).
    pub settings: HeadSettings,
    /// The feature transform; its centre comes with the statistics.
    pub transform: Transform,
}

/// What a device needs to know about a bundle; the host adds training
/// details under `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`]: a reader refuses formats it does not know.
    pub format: u32,
    /// The dataset the labels come from (`cifar10`, `fashion-mnist`, a folder).
    pub dataset: String,
    /// Labels of all the dataset's classes, by class number.
    pub labels: Vec<String>,
    /// Classes the backbone was trained on (and `head.stats` holds).
    pub base_classes: Vec<u16>,
    /// How a camera frame becomes the backbone's input.
    pub preprocess: Preprocess,
    /// Length of the feature vector the head sees.
    pub feature_dim: usize,
    /// Outputs of `backbone.onnx` whose concatenation is the feature vector
    /// (`feature_dim` wide in all). A backbone may export more outputs than
    /// a manifest uses, so one ONNX serves several head designs.
    #[serde(default = "default_layers")]
    pub layers: Vec<String>,
    /// Hex SHA-256 of `backbone.onnx`.
    pub backbone_sha256: String,
    /// The head design the statistics were fitted with.
    pub head: HeadDefaults,
    /// How the "unknown" threshold in `head.stats` was chosen (absent in
    /// bundles written before it was calibrated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// What made the bundle (recipe, command, metrics); devices ignore it.
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// Which training images were held out to calibrate the threshold: the
/// stratified split `gaussedge train` makes for validation (seeded, a
/// fraction of each base class, after an optional per-class limit), so that
/// for a backbone gaussedge trained they are images it never trained on.
/// They are left out of the statistics fit as well.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeldOut {
    /// Seed of the split.
    pub seed: u64,
    /// Share of each base class held out, in (0, 1).
    pub fraction: f64,
    /// Images per class kept before splitting (`train --limit-per-class`).
    #[serde(default)]
    pub limit_per_class: Option<usize>,
}

/// The bundle's "unknown" threshold and how it was measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Share of held-out base-class samples the threshold keeps (answers
    /// with a class); the rest are answered "unknown".
    pub target_tpr: f64,
    /// Novelty score above which the device answers "unknown"; the same
    /// value is in `head.stats`.
    pub threshold: f64,
    /// Held-out samples it was measured on.
    pub samples: usize,
    /// Which images those were.
    pub held_out: HeldOut,
    /// `[tpr, threshold]` pairs over a range of rates, so another rate can
    /// be chosen later without the samples (`gaussedge threshold --tpr`).
    pub quantiles: Vec<[f64; 2]>,
}

impl Calibration {
    /// The threshold that keeps `tpr` of the held-out samples, interpolated
    /// between recorded rates; `None` outside the recorded range.
    pub fn threshold_for(&self, tpr: f64) -> Option<f64> {
        let q = &self.quantiles;
        if tpr < q.first()?[0] || tpr > q.last()?[0] {
            return None;
        }
        let i = q.iter().position(|p| p[0] >= tpr)?;
        if i == 0 {
            return Some(q[0][1]);
        }
        let (a, b) = (q[i - 1], q[i]);
        Some(a[1] + (b[1] - a[1]) * (tpr - a[0]) / (b[0] - a[0]))
    }

    fn check(&self) -> Result<(), String> {
        let rate = |r: f64| r > 0.0 && r <= 1.0;
        let score = gaussedge_shared::stats::valid_threshold;
        if !rate(self.target_tpr) || !score(self.threshold) {
            return Err(format!("calibration: rate {} or threshold {}", self.target_tpr, self.threshold));
        }
        if !(self.held_out.fraction > 0.0 && self.held_out.fraction < 1.0) {
            return Err(format!("calibration: held-out fraction {}", self.held_out.fraction));
        }
        if self.quantiles.iter().any(|p| !rate(p[0]) || !score(p[1]))
            || self.quantiles.windows(2).any(|w| w[1][0] <= w[0][0] || w[1][1] < w[0][1])
        {
            return Err("calibration: quantiles must be increasing rates in (0, 1] with thresholds >= 0".into());
        }
        Ok(())
    }
}

/// The manifest format this build reads and writes.
pub const MANIFEST_FORMAT: u32 = 1;

/// The output every exported backbone has: the pooled last layer.
pub const DEFAULT_LAYER: &str = "features";

/// Name of the output holding block `index`'s pooled output, as gaussedge's
/// ONNX writer exports it (a manifest's `layers` name these).
pub fn block_output(index: usize) -> String {
    format!("{DEFAULT_LAYER}_{index}")
}

/// The block index of a [`block_output`] name.
pub fn block_index(name: &str) -> Option<usize> {
    name.strip_prefix(DEFAULT_LAYER)?.strip_prefix('_')?.parse().ok()
}

/// The layers of a manifest that names none: [`DEFAULT_LAYER`].
pub fn default_layers() -> Vec<String> {
    vec![DEFAULT_LAYER.to_string()]
}

/// Why a bundle was refused; each names the file or the field.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // the fields are what the messages print
pub enum BundleError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// The manifest is not the JSON this build reads.
    #[error("{path}: bad manifest: {source}")]
    Manifest { path: String, source: serde_json::Error },
    /// The manifest is of another format.
    #[error("{path}: manifest format {found}, this build reads {MANIFEST_FORMAT}")]
    Format { path: String, found: u32 },
    /// The backbone is not the one the manifest (and its statistics) were made for.
    #[error("backbone.onnx has SHA-256 {actual}, the manifest says {expected}")]
    Hash { expected: String, actual: String },
    /// A field is out of range or inconsistent with another.
    #[error("manifest: {0}")]
    Invalid(String),
}

/// Largest input side a manifest may ask for: sizes of buffers and of the
/// backbone's input come from it, so it is bounded before anything uses it.
pub const MAX_SIDE: u16 = 4096;
/// Largest feature vector a manifest may announce.
pub const MAX_FEATURE_DIM: usize = 1 << 16;

/// SHA-256 of a file's bytes: what binds statistics to their backbone.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn read(path: &Path) -> Result<Vec<u8>, BundleError> {
    std::fs::read(path).map_err(|source| BundleError::Io { path: path.display().to_string(), source })
}

impl Manifest {
    /// Reads and checks `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Self, BundleError> {
        let path = dir.join(MANIFEST);
        Manifest::from_bytes(&path.display().to_string(), &read(&path)?)
    }

    /// A manifest from its bytes, checked; `origin` names it in errors.
    pub fn from_bytes(origin: &str, bytes: &[u8]) -> Result<Self, BundleError> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|source| BundleError::Manifest { path: origin.into(), source })?;
        if m.format != MANIFEST_FORMAT {
            return Err(BundleError::Format { path: origin.into(), found: m.format });
        }
        m.check()?;
        Ok(m)
    }

    /// Refuses what no device should act on: input sizes and feature sizes
    /// out of range (buffers are sized from them), normalisation or head
    /// parameters that are not finite, no layers, a malformed digest, base
    /// classes without a label.
    pub fn check(&self) -> Result<(), BundleError> {
        let bad = |what: String| Err(BundleError::Invalid(what));
        let p = &self.preprocess;
        if !(1..=MAX_SIDE).contains(&p.width) || !(1..=MAX_SIDE).contains(&p.height) {
            return bad(format!("input {}x{} is outside 1..={MAX_SIDE} pixels a side", p.width, p.height));
        }
        if !(p.channels == 1 || p.channels == 3) {
            return bad(format!("input has {} channels; 1 or 3 are supported", p.channels));
        }
        p.check().or_else(|e| bad(e.to_string()))?;
        if !(1..=MAX_FEATURE_DIM).contains(&self.feature_dim) {
            return bad(format!("feature_dim {} is outside 1..={MAX_FEATURE_DIM}", self.feature_dim));
        }
        if self.layers.is_empty() || self.layers.iter().any(|l| l.is_empty()) {
            return bad("layers must name at least one backbone output, none empty".into());
        }
        if self.sha256_bytes().is_none() {
            return bad(format!("backbone_sha256 {:?} is not 64 hex digits", self.backbone_sha256));
        }
        self.head.settings.check().or_else(|e| bad(e.to_string()))?;
        self.head.transform.check().or_else(|e| bad(e.to_string()))?;
        if let Some(c) = self.base_classes.iter().find(|&&c| c as usize >= self.labels.len()) {
            return bad(format!("base class {c} has no label ({} labels)", self.labels.len()));
        }
        if let Some(c) = &self.calibration {
            c.check().or_else(bad)?;
        }
        Ok(())
    }

    /// The backbone's SHA-256 as bytes; `None` unless it is 64 hex digits.
    pub fn sha256_bytes(&self) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&self.backbone_sha256, &mut out).ok()?;
        Some(out)
    }
}

/// A bundle read from disk, the backbone verified against the manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    /// The checked manifest.
    pub manifest: Manifest,
    /// `backbone.onnx`, its SHA-256 the manifest's.
    pub onnx: Vec<u8>,
    /// `head.stats`, when the bundle has one (not parsed here).
    pub stats: Option<Vec<u8>>,
}

impl Bundle {
    /// Reads a bundle folder and checks its manifest and backbone.
    pub fn read(dir: &Path) -> Result<Self, BundleError> {
        let manifest = Manifest::read(dir)?;
        let onnx = read(&dir.join(BACKBONE))?;
        let stats_path = dir.join(STATS);
        let stats = if stats_path.exists() { Some(read(&stats_path)?) } else { None };
        Bundle::checked(manifest, onnx, stats)
    }

    /// A bundle from its files' bytes (a device's flash, an upload), checked
    /// as [`Bundle::read`] checks one on disk; `origin` names it in errors.
    pub fn from_parts(
        origin: &str,
        manifest: &[u8],
        onnx: Vec<u8>,
        stats: Option<Vec<u8>>,
    ) -> Result<Self, BundleError> {
        Bundle::checked(Manifest::from_bytes(&format!("{origin}/{MANIFEST}"), manifest)?, onnx, stats)
    }

    fn checked(manifest: Manifest, onnx: Vec<u8>, stats: Option<Vec<u8>>) -> Result<Self, BundleError> {
        let actual = hex::encode(sha256(&onnx));
        if actual != manifest.backbone_sha256 {
            return Err(BundleError::Hash { expected: manifest.backbone_sha256.clone(), actual });
        }
        Ok(Bundle { manifest, onnx, stats })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gaussedge_shared::Estimator;

    #[test]
    fn block_output_names_round_trip_and_nothing_else_parses() {
        assert_eq!(block_output(7), "features_7");
        assert_eq!(
            (0..20).map(|i| block_index(&block_output(i))).collect::<Vec<_>>(),
            (0..20).map(Some).collect::<Vec<_>>()
        );
        for other in [DEFAULT_LAYER, "features7", "features_", "features_x", "logits", "block_3"] {
            assert_eq!(block_index(other), None, "{other}");
        }
    }

    fn manifest() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            dataset: "cifar10".into(),
            labels: (0..10).map(|i| format!("c{i}")).collect(),
            base_classes: vec![0, 1, 2, 3, 4],
            preprocess: Preprocess { width: 64, height: 64, channels: 3, mean: [0.5; 3], std: [0.25; 3] },
            feature_dim: 1808,
            layers: default_layers(),
            backbone_sha256: "ab".repeat(32),
            head: HeadDefaults {
                weighting: Estimator::Pooled.weighting(),
                settings: Estimator::Pooled.settings(),
                transform: Transform::IDENTITY,
            },
            calibration: None,
            extra: serde_json::Value::Null,
        }
    }

    fn calibration(threshold: f64) -> Calibration {
        Calibration {
            target_tpr: 0.95,
            threshold,
            samples: 100,
            held_out: HeldOut { seed: 0, fraction: 0.05, limit_per_class: None },
            quantiles: vec![[0.5, 10.0], [0.9, 20.0], [0.95, 30.0], [1.0, 50.0]],
        }
    }

    #[test]
    fn other_rates_are_read_off_the_recorded_quantiles() {
        let c = calibration(30.0);
        assert_eq!(c.threshold_for(0.95), Some(30.0));
        assert_eq!(c.threshold_for(0.5), Some(10.0));
        assert!((c.threshold_for(0.7).unwrap() - 15.0).abs() < 1e-9);
        assert!((c.threshold_for(0.975).unwrap() - 40.0).abs() < 1e-9);
        assert_eq!(c.threshold_for(0.4), None);
        assert_eq!(c.threshold_for(f64::NAN), None);
    }

    #[test]
    fn manifests_that_would_size_buffers_absurdly_or_hold_nan_are_refused() {
        manifest().check().unwrap();
        type Edit = fn(&mut Manifest);
        let cases: Vec<(Edit, &str)> = vec![
            (|m| m.preprocess.width = 0, "input 0x64"),
            (|m| m.preprocess.height = 60_000, "input 64x60000"),
            (|m| m.preprocess.channels = 4, "4 channels"),
            (|m| m.preprocess.std[2] = 0.0, "std is not positive"),
            (|m| m.preprocess.mean[0] = f32::NAN, "not finite"),
            (|m| m.feature_dim = 0, "feature_dim 0"),
            (|m| m.feature_dim = usize::MAX, "feature_dim 18446744073709551615"),
            (|m| m.layers.clear(), "layers"),
            (|m| m.backbone_sha256 = "é".repeat(32), "not 64 hex digits"),
            (|m| m.head.settings.regularizer = gaussedge_shared::Regularizer::Shrinkage(f64::NAN), "shrinkage"),
            (|m| m.base_classes.push(10), "base class 10 has no label"),
            (|m| m.calibration = Some(calibration(f64::NAN)), "threshold NaN"),
            (|m| m.calibration.as_mut().unwrap().quantiles.reverse(), "quantiles must be increasing"),
        ];
        for (edit, why) in cases {
            let mut m = manifest();
            m.calibration = Some(calibration(30.0));
            edit(&mut m);
            let err = m.check().unwrap_err().to_string();
            assert!(err.contains(why), "{err:?} should say {why:?}");
        }
    }
}
