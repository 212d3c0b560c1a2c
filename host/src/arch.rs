//! EfficientNet (Tan & Le 2019) as an explicit description: the one
//! structure that the tch trainer builds its layers from and the ONNX writer
//! walks, so the two cannot drift.
//!
//! It follows torchvision's `efficientnet_b0` layer for layer, parameter name
//! for parameter name (`features.1.0.block.0.0.weight`, ...), with its
//! width/depth rounding (`_make_divisible`, `ceil`), squeeze width
//! (`max(1, in / 4)`), stochastic depth ramp and initialisation, so weights
//! can be compared with a torchvision model. Width and depth multipliers make
//! the tiny variants the tests use.

use serde::{Deserialize, Serialize};

/// Batch-norm epsilon of torchvision's EfficientNet-b0 (PyTorch's default).
pub const BN_EPS: f64 = 1e-5;

/// Hyper-parameters of the network.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ArchConfig {
    pub width_mult: f64,
    pub depth_mult: f64,
    /// Dropout before the classifier (b0: 0.2).
    pub dropout: f64,
    /// Largest stochastic-depth drop probability, reached by the last block
    /// (torchvision: 0.2).
    pub stochastic_depth: f64,
    pub num_classes: usize,
    /// Channels of the input image.
    pub in_channels: usize,
    /// Cosine classifier (Wang et al. 2018, CosFace; Vaze et al. 2022 for
    /// open-set recognition): the logits are this scale times the cosine
    /// between the pooled features and each class's weight row, with no
    /// bias; 0 is the plain linear classifier. Why: the loss can then only
    /// sharpen the features' direction, not their norm, so base classes are
    /// separated by angle, which is what a shared-covariance Gaussian head
    /// and its novelty distance read. It belongs to the network, not the
    /// recipe, because the forward pass and the ONNX writer both need it.
    #[serde(default)]
    pub cosine_scale: f64,
}

impl ArchConfig {
    /// EfficientNet-b0.
    pub fn b0(num_classes: usize) -> Self {
        ArchConfig {
            width_mult: 1.0,
            depth_mult: 1.0,
            dropout: 0.2,
            stochastic_depth: 0.2,
            num_classes,
            in_channels: 3,
            cosine_scale: 0.0,
        }
    }

    /// A tiny variant for tests: a quarter of the width, one block per stage.
    pub fn tiny(num_classes: usize) -> Self {
        ArchConfig {
            width_mult: 0.25,
            depth_mult: 0.1,
            dropout: 0.0,
            stochastic_depth: 0.0,
            num_classes,
            in_channels: 3,
            cosine_scale: 0.0,
        }
    }
}

/// One MBConv block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Block {
    /// Parameter prefix, e.g. `features.2.1`.
    pub name: String,
    pub input: usize,
    /// Channels after the 1x1 expansion (= `input` when the ratio is 1).
    pub expanded: usize,
    pub output: usize,
    pub kernel: usize,
    pub stride: usize,
    /// Squeeze-excitation bottleneck width.
    pub squeeze: usize,
    /// Drop probability of the residual branch in training.
    pub drop_prob: f64,
}

impl Block {
    pub fn expands(&self) -> bool {
        self.expanded != self.input
    }
    pub fn residual(&self) -> bool {
        self.stride == 1 && self.input == self.output
    }
    /// Index of the sub-layers inside `block.N`: expansion (if any),
    /// depthwise, squeeze-excitation, projection.
    pub fn layer_names(&self) -> (Option<String>, String, String, String) {
        let base = format!("{}.block", self.name);
        let o = usize::from(self.expands());
        (
            self.expands().then(|| format!("{base}.0")),
            format!("{base}.{o}"),
            format!("{base}.{}", o + 1),
            format!("{base}.{}", o + 2),
        )
    }
}

/// The whole network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Arch {
    pub config: ArchConfig,
    /// Stem conv 3x3/2 output channels (`features.0`).
    pub stem: usize,
    pub blocks: Vec<Block>,
    /// Head conv 1x1 output channels (`features.{last}`): the feature dim.
    pub head: usize,
    /// Index of the head conv in `features`.
    pub head_index: usize,
}

/// torchvision's `_make_divisible(v, 8)`.
pub fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let mut new_v = (divisor).max(((v + d / 2.0) as usize) / divisor * divisor);
    if (new_v as f64) < 0.9 * v {
        new_v += divisor;
    }
    new_v
}

/// b0's stages: (expand ratio, kernel, stride, input, output, layers).
const B0_STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
];

impl Arch {
    pub fn new(config: ArchConfig) -> Self {
        let ch = |c: usize| make_divisible(c as f64 * config.width_mult, 8);
        let depth = |n: usize| (n as f64 * config.depth_mult).ceil() as usize;
        let total: usize = B0_STAGES.iter().map(|s| depth(s.5)).sum();
        let mut blocks = vec![];
        let mut block_id = 0usize;
        for (stage, &(expand, kernel, stride, input, output, layers)) in B0_STAGES.iter().enumerate() {
            for i in 0..depth(layers) {
                let input = if i == 0 { ch(input) } else { ch(output) };
                let expanded = make_divisible(input as f64 * expand as f64, 8);
                blocks.push(Block {
                    name: format!("features.{}.{i}", stage + 1),
                    input,
                    expanded: if expand == 1 { input } else { expanded },
                    output: ch(output),
                    kernel,
                    stride: if i == 0 { stride } else { 1 },
                    squeeze: (input / 4).max(1),
                    drop_prob: config.stochastic_depth * block_id as f64 / total as f64,
                });
                block_id += 1;
            }
        }
        let last = blocks.last().map(|b| b.output).unwrap_or(ch(320));
        Arch { config, stem: ch(32), blocks, head: 4 * last, head_index: B0_STAGES.len() + 1 }
    }

    /// Feature dimension (the head conv's channels).
    pub fn feature_dim(&self) -> usize {
        self.head
    }

    /// Every parameter and buffer, with its shape, in torchvision's naming.
    /// Batch-norm layers have `weight`, `bias`, `running_mean`, `running_var`.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = vec![];
        let conv = |out: &mut Vec<(String, Vec<usize>)>, name: &str, o: usize, i: usize, k: usize| {
            out.push((format!("{name}.weight"), vec![o, i, k, k]));
        };
        let bn = |out: &mut Vec<(String, Vec<usize>)>, name: &str, c: usize| {
            for t in ["weight", "bias", "running_mean", "running_var"] {
                out.push((format!("{name}.{t}"), vec![c]));
            }
        };
        conv(&mut out, "features.0.0", self.stem, self.config.in_channels, 3);
        bn(&mut out, "features.0.1", self.stem);
        for b in &self.blocks {
            let (expand, dw, se, project) = b.layer_names();
            if let Some(e) = expand {
                conv(&mut out, &format!("{e}.0"), b.expanded, b.input, 1);
                bn(&mut out, &format!("{e}.1"), b.expanded);
            }
            conv(&mut out, &format!("{dw}.0"), b.expanded, 1, b.kernel);
            bn(&mut out, &format!("{dw}.1"), b.expanded);
            out.push((format!("{se}.fc1.weight"), vec![b.squeeze, b.expanded, 1, 1]));
            out.push((format!("{se}.fc1.bias"), vec![b.squeeze]));
            out.push((format!("{se}.fc2.weight"), vec![b.expanded, b.squeeze, 1, 1]));
            out.push((format!("{se}.fc2.bias"), vec![b.expanded]));
            conv(&mut out, &format!("{project}.0"), b.output, b.expanded, 1);
            bn(&mut out, &format!("{project}.1"), b.output);
        }
        let last = self.blocks.last().map(|b| b.output).unwrap_or(self.stem);
        conv(&mut out, &format!("features.{}.0", self.head_index), self.head, last, 1);
        bn(&mut out, &format!("features.{}.1", self.head_index), self.head);
        out.push(("classifier.1.weight".into(), vec![self.config.num_classes, self.head]));
        out.push(("classifier.1.bias".into(), vec![self.config.num_classes]));
        out
    }

    /// Trainable parameter count (batch-norm running statistics excluded),
    /// as torchvision counts `p.numel()` over `parameters()`.
    pub fn parameter_count(&self) -> usize {
        self.tensors()
            .iter()
            .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }
}

/// The classifier rows the ONNX graph carries for a cosine classifier:
/// each row of `w` (`k` rows) scaled to norm `scale`. With a zero bias the
/// exported `f . w'` is `|f|` times the trained cosine logit, a positive
/// per-image factor, so every image's arg-max (the FC accuracy) is the
/// trained network's, and the graph needs no normalisation op.
pub fn fold_cosine_rows(w: &mut [f32], k: usize, scale: f64) {
    let d = w.len() / k.max(1);
    for row in w.chunks_mut(d.max(1)) {
        let norm = row.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt() + 1e-7;
        for x in row {
            *x = (f64::from(*x) * scale / norm) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_cosine_rows_have_the_scale_as_norm_and_keep_each_arg_max() {
        let mut w = vec![3.0f32, 4.0, 0.0, -0.5, 0.1, 0.2];
        let orig = w.clone();
        fold_cosine_rows(&mut w, 3, 16.0);
        for row in w.chunks(2) {
            let n = (row[0] * row[0] + row[1] * row[1]).sqrt();
            assert!((n - 16.0).abs() < 1e-4, "{n}");
        }
        // Against the f64 definition: the arg-max of cos(f, w_k) is the
        // arg-max of f . w'_k for any f.
        for f in [[1.0f64, 0.0], [0.0, 1.0], [-2.0, 0.3], [0.7, -0.7]] {
            let cos = |r: &[f32]| {
                let (a, b) = (f64::from(r[0]), f64::from(r[1]));
                (f[0] * a + f[1] * b) / (a.hypot(b) * f[0].hypot(f[1]))
            };
            let dot = |r: &[f32]| f[0] * f64::from(r[0]) + f[1] * f64::from(r[1]);
            let best = |score: &dyn Fn(&[f32]) -> f64, m: &[f32]| {
                (0..3).max_by(|&i, &j| score(&m[2 * i..2 * i + 2]).total_cmp(&score(&m[2 * j..2 * j + 2]))).unwrap()
            };
            assert_eq!(best(&cos, &orig), best(&dot, &w), "{f:?}");
        }
    }

    #[test]
    fn b0_matches_torchvision() {
        let arch = Arch::new(ArchConfig::b0(5));
        // torchvision.models.efficientnet_b0(num_classes=5): 4,013,953.
        assert_eq!(arch.parameter_count(), 4_013_953);
        assert_eq!(arch.blocks.len(), 16);
        assert_eq!(arch.feature_dim(), 1280);
        assert_eq!(Arch::new(ArchConfig::b0(1000)).parameter_count(), 5_288_548);
        let b = &arch.blocks[1];
        assert_eq!(
            (b.name.as_str(), b.input, b.expanded, b.output, b.stride, b.squeeze),
            ("features.2.0", 16, 96, 24, 2, 4)
        );
        assert_eq!(arch.blocks[0].layer_names().1, "features.1.0.block.0");
        assert_eq!(arch.blocks[1].layer_names().3, "features.2.0.block.3");
        assert!((arch.blocks[15].drop_prob - 0.2 * 15.0 / 16.0).abs() < 1e-12);
        assert_eq!(arch.head_index, 8);
    }

    #[test]
    fn divisible_rounding() {
        assert_eq!(make_divisible(32.0 * 0.25, 8), 8);
        assert_eq!(make_divisible(24.0 * 0.25, 8), 8);
        assert_eq!(make_divisible(40.0 * 1.1, 8), 48);
        let tiny = Arch::new(ArchConfig::tiny(3));
        assert_eq!(tiny.blocks.len(), 7);
        assert_eq!(tiny.feature_dim(), 4 * make_divisible(80.0, 8));
    }
}
