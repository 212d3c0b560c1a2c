//! Features through the exported ONNX (tract, exactly as the device runs
//! it), cached per backbone and dataset split, and the Gaussian head fitted
//! on them.

use crate::data::{Dataset, DatasetKind, Split};
use crate::prep;
use anyhow::{bail, Context, Result};
use gaussedge_backbone::Backbone;
use gaussedge_bundle::{sha256, HeadDefaults};
use gaussedge_shared::head::{GaussianHead, HeadConfig, OwnedStorage};
use gaussedge_shared::stats::Preprocess;
use gaussedge_shared::{label, Transform};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

/// A backbone with its preprocessing, run in batches.
pub struct Extractor {
    backbone: Backbone,
    pub pre: Preprocess,
    pub sha256: [u8; 32],
    pub layers: Vec<String>,
    /// Average each image's features with its mirror image's here, on the
    /// host (`gaussedge eval --tta flip`), to measure the lever on a bundle
    /// whose graph does not: a bundle that ships it averages in its graph
    /// (`views`), which is what a device runs.
    pub flip_average: bool,
}

impl Extractor {
    /// Runs `batch` images at a time, or as many as the graph's input fixes
    /// (an export for one image at a time runs one at a time).
    pub fn new(onnx: &[u8], pre: Preprocess, layers: &[String], batch: usize) -> Result<Self> {
        let load =
            |b: usize| Backbone::load(onnx, b, pre.channels as usize, pre.height as usize, pre.width as usize, layers);
        let backbone = match load(batch) {
            Err(e @ gaussedge_backbone::BackboneError::InputShape { .. }) => {
                match gaussedge_backbone::declared_batch(onnx) {
                    Some(fixed) if fixed != batch => load(fixed)?,
                    _ => return Err(e.into()),
                }
            }
            other => other?,
        };
        Ok(Extractor { backbone, pre, sha256: sha256(onnx), layers: layers.to_vec(), flip_average: false })
    }

    pub fn dim(&self) -> usize {
        self.backbone.dim()
    }

    /// Features of samples `idx` of `ds`, `idx.len() * D` values.
    pub fn extract(&self, ds: &Dataset, idx: &[usize], bar: &ProgressBar) -> Result<Vec<f32>> {
        let (b, d) = (self.backbone.batch(), self.dim());
        let per = self.backbone.input_len();
        let mut out = Vec::with_capacity(idx.len() * d);
        for chunk in idx.chunks(b) {
            let mut input = prep::inputs(ds, chunk, &self.pre)?;
            // The plan has a fixed batch: pad the last one with zeros.
            input.resize(b * per, 0.0);
            let f = self.backbone.features(&input)?;
            out.extend_from_slice(&f[..chunk.len() * d]);
            bar.inc(chunk.len() as u64);
        }
        Ok(out)
    }

    /// Features of a whole split, from the cache when this backbone already
    /// saw these images. The cache key is the backbone's SHA-256, its
    /// layers, the dataset, the split, the sample count and a digest of
    /// every sample read (label and pixels): two data folders of the same
    /// layout and size once shared an entry, and a host scored one folder
    /// with the other's features.
    pub fn extract_cached(&self, ds: &Dataset, kind: DatasetKind, split: Split, progress: bool) -> Result<Vec<f32>> {
        let mut f = self.extract_cached_view(ds, kind, split, progress)?;
        if self.flip_average {
            // The mirrored split has its own digest, so its own cache entry.
            let m = self.extract_cached_view(&ds.mirrored(), kind, split, progress)?;
            f.iter_mut().zip(&m).for_each(|(a, b)| *a = 0.5 * (*a + b));
        }
        Ok(f)
    }

    fn extract_cached_view(&self, ds: &Dataset, kind: DatasetKind, split: Split, progress: bool) -> Result<Vec<f32>> {
        let d = self.dim();
        let layers = if self.layers == gaussedge_bundle::default_layers() {
            String::new()
        } else {
            format!("-{}", &hex::encode(sha256(self.layers.join(",").as_bytes()))[..8])
        };
        let path = cache_dir().join("features").join(format!(
            "{}{layers}-{}-{:?}-{}-{}.f32",
            &hex::encode(self.sha256)[..16],
            kind.name(),
            split,
            ds.len(),
            &hex::encode(dataset_digest(ds))[..16]
        ));
        if let Ok(bytes) = std::fs::read(&path) {
            if bytes.len() == ds.len() * d * 4 {
                return Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect());
            }
        }
        let bar = bar(progress, ds.len() as u64, &format!("features {} {:?}", kind.name(), split));
        let idx: Vec<usize> = (0..ds.len()).collect();
        let f = self.extract(ds, &idx, &bar)?;
        bar.finish_and_clear();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let bytes: Vec<u8> = f.iter().flat_map(|v| v.to_le_bytes()).collect();
        crate::util::write_atomic(&path, &bytes)?;
        Ok(f)
    }
}

/// SHA-256 over every sample's label, frame format and pixels, in order:
/// what the features of a split depend on besides the backbone.
pub fn dataset_digest(ds: &Dataset) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for s in &ds.samples {
        h.update(s.label.to_le_bytes());
        h.update(s.format.width.to_le_bytes());
        h.update(s.format.height.to_le_bytes());
        h.update([s.format.channels]);
        h.update((s.pixels.len() as u64).to_le_bytes());
        h.update(&s.pixels);
    }
    h.finalize().into()
}

/// `$GAUSSEDGE_CACHE`, default `~/.cache/gaussedge`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("GAUSSEDGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/gaussedge"))
}

pub fn bar(show: bool, len: u64, what: &str) -> ProgressBar {
    let b = if show { ProgressBar::new(len) } else { ProgressBar::hidden() };
    b.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} (eta {eta})")
            .expect("template")
            .progress_chars("=> "),
    );
    b.set_prefix(what.to_string());
    b
}

/// A class label for the head from a dataset class name (at most 32 bytes).
pub fn class_label(name: &str, class: u16) -> gaussedge_shared::Label {
    let mut s: String = name.chars().filter(|c| !c.is_control()).collect();
    while s.len() > gaussedge_shared::head::MAX_LABEL {
        s.pop();
    }
    label(&s).unwrap_or_else(|| label(&format!("class{class}")).expect("short label"))
}

/// A head with `capacity` slots and the bundle's settings, its centre set
/// from `base_features` when the transform needs one.
pub fn new_head(
    dim: usize,
    capacity: usize,
    head: &HeadDefaults,
    base_features: &[f32],
) -> Result<GaussianHead<OwnedStorage>> {
    let config =
        HeadConfig { dim, capacity, weighting: head.weighting, settings: head.settings, transform: head.transform };
    let mut h = GaussianHead::with_capacity(config)?;
    if head.transform.center_l2 {
        // The centre is the mean of the power-transformed base features.
        let power_only = Transform { power: head.transform.power, center_l2: false };
        let n = base_features.len() / dim;
        if n == 0 {
            bail!("the centre-L2 transform needs base features");
        }
        let mut center = vec![0f64; dim];
        let mut t = vec![0f64; dim];
        for x in base_features.chunks_exact(dim) {
            power_only.apply(x, &[], &mut t);
            center.iter_mut().zip(&t).for_each(|(c, v)| *c += v / n as f64);
        }
        h.set_center(&center)?;
    }
    Ok(h)
}

/// Learns one class from its features (all rows of `features`).
pub fn learn_class(
    head: &mut GaussianHead<OwnedStorage>,
    name: gaussedge_shared::Label,
    features: &[f32],
) -> Result<()> {
    let d = head.dim();
    head.begin(name)?;
    for x in features.chunks_exact(d) {
        head.learn(x)?;
    }
    head.commit()?;
    Ok(())
}

/// A head fitted on `classes`: rows of `features` (`n * d`) labelled by
/// `labels`; the `center_l2` centre, if any, is the mean over those classes.
/// Each class's spread is then re-measured from its rows in the final
/// metric, as a device cannot (it keeps no samples): learned one after the
/// other, the first class would have none and the others partial metrics.
#[allow(clippy::too_many_arguments)]
pub fn fit_head(
    d: usize,
    capacity: usize,
    head: &HeadDefaults,
    features: &[f32],
    labels: &[u16],
    classes: &[u16],
    label_of: impl Fn(u16) -> gaussedge_shared::Label,
) -> Result<GaussianHead<OwnedStorage>> {
    let rows: Vec<Vec<f32>> = classes.iter().map(|&c| rows_of(features, labels, d, c)).collect();
    let mut h = new_head(d, capacity, head, &rows.concat())?;
    for (&c, rows) in classes.iter().zip(&rows) {
        learn_class(&mut h, label_of(c), rows)?;
    }
    for (&c, rows) in classes.iter().zip(&rows) {
        let slot = h.find(&label_of(c)).context("fitted class")?;
        let spread = whitened_total(&h, slot, rows)?;
        h.set_spread(slot, spread)?;
    }
    Ok(h)
}

/// A bundle's base head and its "unknown" threshold.
pub struct Fitted {
    pub head: GaussianHead<OwnedStorage>,
    pub calibration: gaussedge_bundle::Calibration,
}

/// The base statistics as every bundle gets them: fitted on the base
/// classes' training images except the held-out ones, and the threshold
/// calibrated on those at `tpr` (see [`crate::split`] and
/// [`crate::calibrate`]). `train` is the whole training split; its features
/// come from the cache that `eval` shares.
#[allow(clippy::too_many_arguments)]
pub fn fit_base(
    extractor: &Extractor,
    kind: DatasetKind,
    train: &Dataset,
    classes: &[u16],
    head: &HeadDefaults,
    capacity: usize,
    held: gaussedge_bundle::HeldOut,
    tpr: f64,
    progress: bool,
) -> Result<Fitted> {
    let (fit_idx, held_idx) = crate::split::held_out(train, classes, &held);
    anyhow::ensure!(!fit_idx.is_empty(), "no training images of classes {classes:?} to fit");
    anyhow::ensure!(
        !held_idx.is_empty(),
        "no training images held out to calibrate the threshold (fraction {} of {} images)",
        held.fraction,
        fit_idx.len()
    );
    let features = extractor.extract_cached(train, kind, Split::Train, progress)?;
    let d = extractor.dim();
    let labels: Vec<u16> = fit_idx.iter().map(|&i| train.samples[i].label).collect();
    let mut h = fit_head(d, capacity, head, &rows_at(&features, d, &fit_idx), &labels, classes, |c| {
        class_label(&train.class_names[c as usize], c)
    })?;
    let calibration = crate::calibrate::calibrate(&mut h, &rows_at(&features, d, &held_idx), tpr, held)?;
    Ok(Fitted { head: h, calibration })
}

/// `sum_i |L^-1 (t(x_i) - m_slot)|^2` over the rows of `rows`, on every core.
pub fn whitened_total(head: &GaussianHead<OwnedStorage>, slot: usize, rows: &[f32]) -> Result<f64> {
    let d = head.dim();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = rows.len().div_ceil(d).div_ceil(threads).max(1) * d;
    std::thread::scope(|s| {
        let jobs: Vec<_> = rows
            .chunks(per)
            .map(|part| {
                s.spawn(move || -> Result<f64> {
                    let mut scratch = vec![0f64; 2 * d];
                    let mut sum = 0.0;
                    for x in part.chunks_exact(d) {
                        sum += head.whitened_sq(slot, x, &mut scratch)?;
                    }
                    Ok(sum)
                })
            })
            .collect();
        jobs.into_iter().map(|j| j.join().map_err(|_| anyhow::anyhow!("spread thread panicked"))?).sum()
    })
}

/// Rows of `features` (`n * d`) whose label is `class`.
pub fn rows_of(features: &[f32], labels: &[u16], d: usize, class: u16) -> Vec<f32> {
    let idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
    rows_at(features, d, &idx)
}

/// Rows `idx` of `features` (`n * d` values), in that order.
pub fn rows_at(features: &[f32], d: usize, idx: &[usize]) -> Vec<f32> {
    idx.iter().flat_map(|&i| features[i * d..(i + 1) * d].iter().copied()).collect()
}

/// Reads a bundle's backbone with the manifest's preprocessing and layers.
pub fn extractor_for(bundle: &Path, batch: usize) -> Result<(gaussedge_bundle::Bundle, Extractor)> {
    extractor_with(bundle, None, batch)
}

/// Like [`extractor_for`], with other layers than the manifest's when
/// `layers` is given (see [`resolve_layers`]).
pub fn extractor_with(
    bundle: &Path,
    layers: Option<&[String]>,
    batch: usize,
) -> Result<(gaussedge_bundle::Bundle, Extractor)> {
    let b = gaussedge_bundle::Bundle::read(bundle)?;
    let layers = match layers {
        Some(l) => resolve_layers(&b.onnx, l)?,
        None => b.manifest.layers.clone(),
    };
    let e = Extractor::new(&b.onnx, b.manifest.preprocess, &layers, batch)?;
    if layers == b.manifest.layers && e.dim() != b.manifest.feature_dim {
        bail!("backbone gives {} features, the manifest says {}", e.dim(), b.manifest.feature_dim);
    }
    Ok((b, e))
}

/// Names of the graph outputs of an ONNX model, in order.
pub fn onnx_outputs(onnx: &[u8]) -> Result<Vec<String>> {
    use prost::Message;
    let model = tract_onnx::pb::ModelProto::decode(onnx).context("backbone.onnx is not an ONNX model")?;
    Ok(model.graph.map(|g| g.output.into_iter().map(|o| o.name).collect()).unwrap_or_default())
}

/// Layer names with the shorthand `blocks` expanded to every `features_<i>`
/// output of the backbone, in block order.
pub fn resolve_layers(onnx: &[u8], asked: &[String]) -> Result<Vec<String>> {
    let outputs = onnx_outputs(onnx)?;
    let mut out = vec![];
    for name in asked {
        if name == "blocks" {
            let mut blocks: Vec<(usize, String)> =
                outputs.iter().filter_map(|o| Some((crate::onnx::block_index(o)?, o.clone()))).collect();
            if blocks.is_empty() {
                bail!("`blocks`: the backbone exports no block outputs (features_<i>); outputs: {outputs:?}");
            }
            blocks.sort();
            out.extend(blocks.into_iter().map(|(_, o)| o));
        } else if outputs.contains(name) {
            out.push(name.clone());
        } else {
            bail!("the backbone has no output {name:?}; it has {outputs:?}");
        }
    }
    if out.is_empty() {
        bail!("no layers named");
    }
    Ok(out)
}

/// The head design that won on both datasets (bench/accuracy.md): every
/// MBConv block's pooled output (Lee et al.'s feature ensemble), centred on
/// the base classes' mean and L2-normalised, the count-weighted pooled
/// covariance with shrinkage 1e-5 of the mean variance, a uniform prior,
/// and novelty measured against each class's own spread (so classes learned
/// on the device from a few hundred frames keep the calibrated share).
///
/// 1e-6 scores 0.1-0.15 points higher with f64 statistics, but a bundle
/// stores its accumulator in f32 (see `stats::Precision`), whose rounding
/// (6e-8 of each entry) can outweigh a 1e-6 ridge: one Fashion-MNIST
/// backbone's bundle then failed to factor on load. 1e-5 leaves a margin
/// of two orders of magnitude.
pub fn recommended_head() -> HeadDefaults {
    use gaussedge_shared::{HeadSettings, NoveltyScore, Prior, Regularizer, Weighting};
    HeadDefaults {
        weighting: Weighting::Count,
        settings: HeadSettings {
            regularizer: Regularizer::Shrinkage(1e-5),
            prior: Prior::Uniform,
            debias: true,
            novelty: NoveltyScore::OwnSpread,
        },
        transform: Transform { power: None, center_l2: true },
    }
}

/// Outputs `features_0` .. `features_{blocks-1}`: the recommended layers.
pub fn block_layers(blocks: usize) -> Vec<String> {
    (0..blocks).map(crate::onnx::block_output).collect()
}
