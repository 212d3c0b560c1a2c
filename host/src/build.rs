//! Bundle building: a backbone's ONNX and a dataset's base classes to a
//! bundle folder a device can boot from.
//!
//! Every bundle is made the same way whatever trained its backbone
//! (`gaussedge train`, `gaussedge bundle` around a foreign ONNX, the tests'
//! fixture): the base statistics fitted through tract, so they are the
//! device's features, on the base classes' training images less a held-out
//! share on which the "unknown" threshold is calibrated; a checked manifest
//! bound to the backbone by its SHA-256; the files replaced atomically.

use crate::data::{self, Dataset, DatasetKind, Split};
use crate::fit::{self, class_label, Extractor, Fitted};
use crate::util::{write_atomic, Confusion};
use anyhow::{Context, Result};
use gaussedge_bundle::{self as bundle, HeadDefaults, HeldOut, Manifest, MANIFEST_FORMAT};
use gaussedge_shared::head::{GaussianHead, OwnedStorage};
use gaussedge_shared::stats::Preprocess;
use std::path::Path;

/// What a bundle is built from.
pub struct Spec<'a> {
    /// The backbone, as it will ship.
    pub onnx: &'a [u8],
    pub preprocess: Preprocess,
    /// The backbone outputs concatenated into the feature vector.
    pub layers: Vec<String>,
    pub kind: DatasetKind,
    /// The whole training split; only `base`'s images are used.
    pub train: &'a Dataset,
    pub base: &'a [u16],
    pub head: HeadDefaults,
    /// Class capacity of the fitted head (the bundle's file holds only the
    /// base classes; devices choose their own capacity).
    pub capacity: usize,
    pub held_out: HeldOut,
    /// Share of held-out base images the threshold keeps.
    pub tpr: f64,
    /// Images per backbone run while extracting.
    pub batch: usize,
    /// The manifest's free-form record (recipe, command, source).
    pub extra: serde_json::Value,
    pub progress: bool,
}

/// A bundle ready to write.
pub struct Built {
    pub manifest: Manifest,
    pub head: GaussianHead<OwnedStorage>,
    pub extractor: Extractor,
}

/// Fits and calibrates the base statistics through tract and makes the
/// checked manifest. Fails, naming the output, when the ONNX cannot serve
/// as a backbone for these layers and this input.
pub fn build(spec: Spec) -> Result<Built> {
    let extractor = Extractor::new(spec.onnx, spec.preprocess, &spec.layers, spec.batch)?;
    let Fitted { head, calibration } = fit::fit_base(
        &extractor,
        spec.kind,
        spec.train,
        spec.base,
        &spec.head,
        spec.capacity,
        spec.held_out,
        spec.tpr,
        spec.progress,
    )?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        dataset: spec.kind.name().into(),
        labels: spec.train.class_names.clone(),
        base_classes: spec.base.to_vec(),
        preprocess: spec.preprocess,
        feature_dim: extractor.dim(),
        layers: spec.layers,
        backbone_sha256: hex::encode(extractor.sha256),
        head: spec.head,
        calibration: Some(calibration),
        extra: spec.extra,
    };
    manifest.check()?;
    Ok(Built { manifest, head, extractor })
}

/// Writes a bundle folder: the backbone, the head's statistics, the
/// manifest, each replaced atomically (a reader sees the old file or the
/// new one).
pub fn write(dir: &Path, onnx: &[u8], head: &GaussianHead<OwnedStorage>, manifest: &Manifest) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let meta = gaussedge_shared::stats::StatsMeta {
        backbone_sha256: manifest.sha256_bytes().context("manifest hash")?,
        preprocess: manifest.preprocess,
        // A bundle's statistics travel to devices: half the bytes, and the
        // head widens them back to f64 on load.
        precision: gaussedge_shared::stats::Precision::F32,
        novelty_threshold: manifest.calibration.as_ref().map_or(f64::INFINITY, |c| c.threshold),
    };
    let stats_bytes = gaussedge_shared::stats::to_vec(head, &meta).map_err(|e| anyhow::anyhow!("{e}"))?;
    write_atomic(&dir.join(bundle::BACKBONE), onnx)?;
    write_atomic(&dir.join(bundle::STATS), &stats_bytes)?;
    write_atomic(&dir.join(bundle::MANIFEST), &serde_json::to_vec_pretty(manifest)?)?;
    Ok(())
}

/// What building a bundle from a freshly trained network measured.
#[cfg(feature = "train")]
pub struct TrainedReport {
    /// The network's own classifier on the whole test split.
    pub fc: Confusion,
    /// The Gaussian head of the base classes alone on the whole test split.
    pub gaussian: Confusion,
    pub manifest: Manifest,
}

/// How a trained network becomes a bundle: what the manifest records of
/// the run, and the test-time views its graph averages.
#[derive(Debug, Clone, Copy)]
pub struct Export<'a> {
    /// The run's checkpoint folder (recorded portably).
    pub checkpoint: &'a Path,
    /// The run's cap on training images per class, fitted with the same.
    pub limit_per_class: Option<usize>,
    pub tta: crate::views::Tta,
}

/// The pipeline after `gaussedge train`: the FC head scored on the test
/// split (the seed's first table), the ONNX exported with every block's
/// pooled output, the bundle built and written with its `metrics.json` and
/// model card. `checkpoint` is recorded (portably) in the manifest.
#[cfg(feature = "train")]
pub fn from_trained(
    out: &Path,
    trained: &crate::train::Trained,
    kind: DatasetKind,
    dir: &Path,
    base: &[u16],
    export: &Export,
) -> Result<TrainedReport> {
    let Export { checkpoint, limit_per_class, tta } = *export;
    use crate::onnx::{self, ExportOptions};
    use crate::train as tr;
    let recipe = &trained.state.recipe;
    let pre = trained.state.normalization.preprocess(recipe.size);
    let test = data::load(kind, dir, Split::Test)?;
    let inputs = tr::dataset_tensor(&test, &pre)?;
    let preds = tr::fc_predictions(&trained.arch, &trained.weights, base, &inputs)?;
    drop(inputs);
    let mut fc = Confusion::new(test.class_names.len());
    for (s, p) in test.samples.iter().zip(&preds) {
        fc.add(s.label, *p);
    }
    let onnx = onnx::export(
        &trained.arch,
        &trained.weights,
        &ExportOptions {
            height: recipe.size as usize,
            width: recipe.size as usize,
            logits: true,
            block_features: (0..trained.arch.blocks.len()).collect(),
        },
    )?;
    // The test-time views average every feature output the export has
    // (the blocks' and the last layer's, for `eval --layers`); the
    // classifier's logits, which no head reads, leave the graph.
    let layers = fit::block_layers(trained.arch.blocks.len());
    let averaged: Vec<String> = layers.iter().cloned().chain([gaussedge_bundle::DEFAULT_LAYER.to_string()]).collect();
    let onnx = crate::views::with_views(onnx, &averaged, &pre, tta)?;
    let train = data::load(kind, dir, Split::Train)?;
    let built = build(Spec {
        onnx: &onnx,
        preprocess: pre,
        layers,
        kind,
        train: &train,
        base,
        head: fit::recommended_head(),
        capacity: 64,
        held_out: HeldOut { seed: recipe.seed, fraction: recipe.val_fraction, limit_per_class },
        tpr: crate::calibrate::DEFAULT_TPR,
        batch: 32,
        extra: serde_json::Value::Null,
        progress: true,
    })?;
    drop(train);
    let Built { mut manifest, mut head, extractor } = built;
    let gaussian = head_test_accuracy(&extractor, kind, &test, &mut head)?;
    let metrics = serde_json::json!({
        "fc_test_accuracy": fc.accuracy(),
        "fc_base_test_accuracy": fc.accuracy_of(base),
        "fc_confusion": fc.matrix,
        "gaussian_base_only_test_accuracy": gaussian.accuracy(),
        "history": trained.state.history,
    });
    manifest.extra = serde_json::json!({
        "recipe": recipe,
        "limit_per_class": limit_per_class,
        "checkpoint": crate::util::portable_path(checkpoint),
        "tta": tta,
        "metrics": metrics,
        "command": crate::util::portable_command(),
    });
    write(out, &onnx, &head, &manifest)?;
    write_atomic(&out.join("metrics.json"), &serde_json::to_vec_pretty(&metrics)?)?;
    write_trained_card(out, &manifest)?;
    Ok(TrainedReport { fc, gaussian, manifest })
}

/// The base head's accuracy on the whole test split (images of classes it
/// does not know count as wrong).
fn head_test_accuracy(
    extractor: &Extractor,
    kind: DatasetKind,
    test: &Dataset,
    head: &mut GaussianHead<OwnedStorage>,
) -> Result<Confusion> {
    let features = extractor.extract_cached(test, kind, Split::Test, true)?;
    let d = extractor.dim();
    let names = &test.class_names;
    let class_of = |l: &str| {
        names.iter().enumerate().find(|(c, n)| class_label(n, *c as u16).as_str() == l).map(|(c, _)| c as u16)
    };
    let mut conf = Confusion::new(names.len());
    for (s, x) in test.samples.iter().zip(features.chunks_exact(d)) {
        let p = head.classify(x, None)?;
        conf.add(s.label, class_of(head.slots()[p.class].label.as_str()).unwrap_or(u16::MAX));
    }
    Ok(conf)
}

const CALIBRATION_HEADING: &str = "\n## \"Unknown\" threshold\n";

/// The model card's section on the threshold (written with the card,
/// replaced by [`update_card_calibration`]).
pub fn calibration_section(c: &bundle::Calibration) -> String {
    format!(
        "{CALIBRATION_HEADING}\nA prediction whose novelty score is above {:.3} is answered \"unknown\": that keeps \
         {:.1}% of {} held-out training images of the base classes (seed {}, {:.0}% of each class, never seen by the \
         backbone's training when it was trained by gaussedge, left out of the statistics fit). Change it with \
         `gaussedge threshold`.\n",
        c.threshold,
        100.0 * c.target_tpr,
        c.samples,
        c.held_out.seed,
        100.0 * c.held_out.fraction
    )
}

/// Replaces the threshold section of the bundle's model card, if it has
/// one (`gaussedge fit` and `gaussedge threshold` change the threshold).
pub fn update_card_calibration(dir: &Path, c: &bundle::Calibration) -> Result<()> {
    let path = dir.join("MODEL_CARD.md");
    let Ok(card) = std::fs::read_to_string(&path) else { return Ok(()) };
    let (head, rest) = match card.find(CALIBRATION_HEADING) {
        Some(i) => {
            let after = &card[i + CALIBRATION_HEADING.len()..];
            (&card[..i], after.find("\n## ").map_or("", |j| &after[j..]))
        }
        None => (card.as_str(), ""),
    };
    let mut out = head.trim_end().to_string();
    out.push('\n');
    out += &calibration_section(c);
    out += rest;
    write_atomic(&path, out.as_bytes())
}

/// The model card of a bundle whose backbone gaussedge trained.
pub fn write_trained_card(dir: &Path, m: &Manifest) -> Result<()> {
    let metrics = &m.extra["metrics"];
    let mut card = format!(
        "# {name}\n\nEfficientNet-b0 feature extractor trained by gaussedge on {dataset} classes {classes:?} \
         ({labels}), with the base classes' Gaussian-head statistics.\n\n\
         * command: `{command}`\n* input: {w}x{h}, {c} channels, mean {mean:?}, std {std:?}\n\
         * feature dim: {d}, the concatenation of the backbone outputs {layers}\n{views}\
         * backbone.onnx SHA-256: `{sha}`\n* head: {head:?}\n\n## Recipe\n\n```json\n{recipe}\n```\n\n## Metrics\n\n\
         * FC head, 10-class test accuracy: {fc}\n* FC head, base-class test accuracy: {fcb}\n\
         * Gaussian head before any new class, 10-class test accuracy: {g}\n\n\
         ## Intended use\n\nA starting point for on-device class-incremental learning with the gaussedge \
         head. Trained on {dataset} only: features for very different imagery will be weak.\n",
        name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        dataset = m.dataset,
        classes = m.base_classes,
        labels = m.base_classes.iter().map(|&c| m.labels[c as usize].as_str()).collect::<Vec<_>>().join(", "),
        command = m.extra["command"].as_str().unwrap_or(""),
        w = m.preprocess.width,
        h = m.preprocess.height,
        c = m.preprocess.channels,
        mean = m.preprocess.mean,
        std = m.preprocess.std,
        d = m.feature_dim,
        layers = m.layers.join(", "),
        views = views_line(m),
        sha = m.backbone_sha256,
        head = m.head,
        recipe = serde_json::to_string_pretty(&m.extra["recipe"])?,
        fc = metrics["fc_test_accuracy"],
        fcb = metrics["fc_base_test_accuracy"],
        g = metrics["gaussian_base_only_test_accuracy"],
    );
    if let Some(c) = &m.calibration {
        card += &calibration_section(c);
    }
    card += "\nPer-epoch history is in `metrics.json`. Accuracy while classes are added on the device: \
              `gaussedge eval --bundle <this folder>` and bench/accuracy.md.\n";
    write_atomic(&dir.join("MODEL_CARD.md"), card.as_bytes())
}

/// The card's line on test-time views, empty for a graph that runs the
/// frame alone.
fn views_line(m: &Manifest) -> String {
    match crate::views::Tta::of(m) {
        crate::views::Tta::Flip => "* test-time views: each frame and its mirror image, one batch of two through the \
                                    network, features averaged (in the graph: `--tta flip`)\n"
            .into(),
        crate::views::Tta::None => String::new(),
    }
}

/// The model card of a bundle around a backbone gaussedge did not train.
pub fn write_foreign_card(dir: &Path, m: &Manifest, source: &str) -> Result<()> {
    let p = &m.preprocess;
    let mut card = format!(
        "# {name}\n\nA gaussedge bundle around a feature extractor that gaussedge did not train: {source}.\n\n\
         * command: `{command}`\n* input: {w}x{h}, {ch} channels, mean {mean:?}, std {std:?}\n\
         * feature dim: {d}, the concatenation of the outputs {layers}\n{views}* backbone.onnx SHA-256: `{sha}`\n\
         * base classes: {classes:?} of {dataset}, statistics fitted through tract\n* head: {head:?}\n",
        name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        command = m.extra["command"].as_str().unwrap_or(""),
        w = p.width,
        h = p.height,
        ch = p.channels,
        mean = p.mean,
        std = p.std,
        d = m.feature_dim,
        layers = m.layers.join(", "),
        views = views_line(m),
        sha = m.backbone_sha256,
        classes = m.base_classes,
        dataset = m.dataset,
        head = m.head,
    );
    if let Some(c) = &m.calibration {
        card += &calibration_section(c);
    }
    card += "\n## Intended use\n\nThe network's features are what they are: gaussedge adds classes on top of them \
             without training. Check `gaussedge eval --bundle <this folder>` on data like yours.\n";
    write_atomic(&dir.join("MODEL_CARD.md"), card.as_bytes())
}
