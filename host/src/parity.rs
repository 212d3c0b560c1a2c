//! Parity between the tch network and its ONNX export run by tract: the same
//! inputs through both, the largest absolute difference of the features:
//! the last layer and every block's pooled output (the feature ensemble).

use crate::arch::Arch;
use crate::net::EfficientNet;
use crate::onnx::{self, ExportOptions, Weights};
use gaussedge_backbone::Backbone;
use tch::{nn, Kind, Tensor};

/// Copies a var store's tensors (parameters and batch-norm statistics).
pub fn weights_of(vs: &nn::VarStore) -> Weights {
    let mut w = Weights::default();
    for (name, t) in vs.variables() {
        let t = t.to_device(tch::Device::Cpu).to_kind(Kind::Float).contiguous();
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let n: usize = shape.iter().product();
        let mut data = vec![0f32; n];
        t.view([-1]).copy_data(&mut data, n);
        w.insert(&name, shape, data);
    }
    w
}

/// Runs a few batches in training mode without gradients so batch norm's
/// running statistics describe real activations. With the initial running
/// statistics (mean 0, var 1) a random-init network's eval-mode activations
/// shrink layer after layer to ~1e-13, and any parity check would pass.
pub fn calibrate_batch_norm(net: &EfficientNet, inputs: &Tensor, rounds: usize) {
    tch::no_grad(|| {
        for _ in 0..rounds {
            let _ = net.features_t(inputs, true);
        }
    });
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ParityReport {
    /// Largest absolute difference over every compared layer.
    pub max_abs_diff: f32,
    /// The smallest of the layers' scales (largest absolute tch value of
    /// each): if activations died out anywhere, it shows here.
    pub feature_scale: f32,
    /// The worst layer's difference relative to its own scale.
    pub relative: f32,
}

/// Exports `vs` and compares features on `inputs` (`[N, C, H, W]`).
pub fn check(arch: &Arch, net: &EfficientNet, vs: &nn::VarStore, inputs: &Tensor) -> anyhow::Result<ParityReport> {
    let size = inputs.size();
    let (n, c, h, w) = (size[0] as usize, size[1] as usize, size[2] as usize, size[3] as usize);
    let want = tch::no_grad(|| Tensor::cat(&[net.features_t(inputs, false), net.block_features_t(inputs, false)], 1))
        .to_kind(Kind::Float)
        .contiguous();
    let want: Vec<f32> = {
        let len = want.numel();
        let mut v = vec![0f32; len];
        want.view([-1]).copy_data(&mut v, len);
        v
    };
    let onnx = onnx::export(
        arch,
        &weights_of(vs),
        &ExportOptions { height: h, width: w, logits: false, block_features: (0..arch.blocks.len()).collect() },
    )?;
    let mut layers = gaussedge_bundle::default_layers();
    layers.extend(crate::fit::block_layers(arch.blocks.len()));
    let backbone = Backbone::load(&onnx, n, c, h, w, &layers)?;
    let input: Vec<f32> = {
        let t = inputs.to_kind(Kind::Float).contiguous();
        let len = t.numel();
        let mut v = vec![0f32; len];
        t.view([-1]).copy_data(&mut v, len);
        v
    };
    let got = backbone.features(&input)?;
    anyhow::ensure!(got.len() == want.len(), "tract gave {} values, tch {}", got.len(), want.len());
    // Each layer is judged against its own scale, so a large block output
    // cannot hide an error in a small one; the report keeps the worst.
    let mut report = ParityReport { max_abs_diff: 0.0, feature_scale: f32::INFINITY, relative: 0.0 };
    let (d, dims) = (backbone.dim(), backbone.layer_dims().to_vec());
    let mut start = 0;
    for width in dims {
        let cols = |v: &[f32]| -> Vec<f32> {
            v.chunks_exact(d).flat_map(|row| row[start..start + width].iter().copied()).collect::<Vec<_>>()
        };
        let (g, w) = (cols(&got), cols(&want));
        let diff = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        let scale = w.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        report.max_abs_diff = report.max_abs_diff.max(diff);
        report.feature_scale = report.feature_scale.min(scale);
        report.relative = report.relative.max(diff / scale.max(f32::MIN_POSITIVE));
        start += width;
    }
    Ok(report)
}
