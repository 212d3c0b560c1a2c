//! The EfficientNet of [`crate::arch`] as tch modules, for training.
//!
//! Variable names are the description's (torchvision's), so a checkpoint is
//! a plain `name -> tensor` map that the ONNX writer reads without tch.

use crate::arch::{Arch, Block, BN_EPS};
use tch::nn;

use tch::{Kind, Tensor};

/// Batch-norm momentum of torchvision's EfficientNet-b0 (PyTorch default).
const BN_MOMENTUM: f64 = 0.1;

fn path<'a>(root: &nn::Path<'a>, name: &str) -> nn::Path<'a> {
    name.split('.').fold(root.clone(), |p, s| p / s)
}

/// `kaiming_normal_(mode="fan_out")`: std = sqrt(2 / (out * k * k)).
fn kaiming(out: usize, k: usize) -> nn::Init {
    nn::Init::Randn { mean: 0.0, stdev: (2.0 / (out * k * k) as f64).sqrt() }
}

struct ConvBn {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn new(root: &nn::Path, name: &str, i: usize, o: usize, k: usize, stride: usize, groups: usize) -> Self {
        let config = nn::ConvConfig {
            stride: stride as i64,
            padding: ((k - 1) / 2) as i64,
            groups: groups as i64,
            bias: false,
            ws_init: kaiming(o, k),
            ..Default::default()
        };
        let conv = nn::conv2d(path(root, &format!("{name}.0")), i as i64, o as i64, k as i64, config);
        let bn_config = nn::BatchNormConfig { eps: BN_EPS, momentum: BN_MOMENTUM, ..Default::default() };
        let bn = nn::batch_norm2d(path(root, &format!("{name}.1")), o as i64, bn_config);
        ConvBn { conv, bn }
    }

    fn forward(&self, xs: &Tensor, train: bool, act: bool) -> Tensor {
        let y = xs.apply(&self.conv).apply_t(&self.bn, train);
        if act {
            y.silu()
        } else {
            y
        }
    }
}

struct MbConv {
    spec: Block,
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    se_reduce: nn::Conv2D,
    se_expand: nn::Conv2D,
    project: ConvBn,
}

impl MbConv {
    fn new(root: &nn::Path, b: &Block) -> Self {
        let (expand, dw, se, project) = b.layer_names();
        let se_conv = |name: &str, i: usize, o: usize| {
            let config = nn::ConvConfig { ws_init: kaiming(o, 1), bs_init: nn::Init::Const(0.0), ..Default::default() };
            nn::conv2d(path(root, &format!("{se}.{name}")), i as i64, o as i64, 1, config)
        };
        MbConv {
            spec: b.clone(),
            expand: expand.map(|e| ConvBn::new(root, &e, b.input, b.expanded, 1, 1, 1)),
            depthwise: ConvBn::new(root, &dw, b.expanded, b.expanded, b.kernel, b.stride, b.expanded),
            se_reduce: se_conv("fc1", b.expanded, b.squeeze),
            se_expand: se_conv("fc2", b.squeeze, b.expanded),
            project: ConvBn::new(root, &project, b.expanded, b.output, 1, 1, 1),
        }
    }

    fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut h = match &self.expand {
            Some(e) => e.forward(xs, train, true),
            None => xs.shallow_clone(),
        };
        h = self.depthwise.forward(&h, train, true);
        let s = h.adaptive_avg_pool2d([1, 1]).apply(&self.se_reduce).silu().apply(&self.se_expand).sigmoid();
        h = self.project.forward(&(h * s), train, false);
        if self.spec.residual() {
            if train && self.spec.drop_prob > 0.0 {
                // Stochastic depth, "row" mode: drop the branch per sample.
                let keep = 1.0 - self.spec.drop_prob;
                let n = h.size()[0];
                let mask = Tensor::rand([n, 1, 1, 1], (Kind::Float, h.device())).lt(keep).to_kind(Kind::Float);
                h = h * mask / keep;
            }
            h + xs
        } else {
            h
        }
    }
}

/// EfficientNet with its classifier.
pub struct EfficientNet {
    pub arch: Arch,
    stem: ConvBn,
    blocks: Vec<MbConv>,
    head: ConvBn,
    classifier: nn::Linear,
}

impl EfficientNet {
    pub fn new(root: &nn::Path, arch: &Arch) -> Self {
        let c = arch.config;
        let last = arch.blocks.last().map(|b| b.output).unwrap_or(arch.stem);
        let range = 1.0 / (c.num_classes as f64).sqrt();
        let fc = nn::LinearConfig {
            ws_init: nn::Init::Uniform { lo: -range, up: range },
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        };
        EfficientNet {
            arch: arch.clone(),
            stem: ConvBn::new(root, "features.0", c.in_channels, arch.stem, 3, 2, 1),
            blocks: arch.blocks.iter().map(|b| MbConv::new(root, b)).collect(),
            head: ConvBn::new(root, &format!("features.{}", arch.head_index), last, arch.head, 1, 1, 1),
            classifier: nn::linear(path(root, "classifier.1"), arch.head as i64, c.num_classes as i64, fc),
        }
    }

    /// Pooled penultimate features, `[N, D]`.
    pub fn features_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut h = self.stem.forward(xs, train, true);
        for b in &self.blocks {
            h = b.forward(&h, train);
        }
        self.head.forward(&h, train, true).adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }

    /// Every block's output, globally pooled and concatenated in block
    /// order, `[N, sum of block widths]`: the feature ensemble the bundles
    /// use (ONNX outputs `features_0` .. `features_15`).
    pub fn block_features_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut h = self.stem.forward(xs, train, true);
        let mut pooled = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            h = b.forward(&h, train);
            pooled.push(h.adaptive_avg_pool2d([1, 1]).flatten(1, -1));
        }
        Tensor::cat(&pooled, 1)
    }

    /// Logits, `[N, classes]`: linear, or scaled cosines with
    /// [`ArchConfig::cosine_scale`](crate::arch::ArchConfig::cosine_scale).
    pub fn logits_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let f = self.features_t(xs, train).dropout(self.arch.config.dropout, train);
        let scale = self.arch.config.cosine_scale;
        if scale > 0.0 {
            cosine_logits(&f, &self.classifier.ws, scale)
        } else {
            f.apply(&self.classifier)
        }
    }
}

/// `scale * cos(f_i, w_k)` for features `[N, D]` and weight rows `[K, D]`.
pub fn cosine_logits(features: &Tensor, weights: &Tensor, scale: f64) -> Tensor {
    unit_rows(features).matmul(&unit_rows(weights).transpose(0, 1)) * scale
}

/// Each row of `t` scaled to unit L2 norm. The epsilon keeps an all-zero
/// row (a dead feature vector after dropout) finite.
pub fn unit_rows(t: &Tensor) -> Tensor {
    t / (t.norm_scalaropt_dim(2, [-1i64].as_slice(), true) + 1e-7)
}
