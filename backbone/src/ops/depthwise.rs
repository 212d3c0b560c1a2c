//! A channel-last depthwise convolution for x86-64, where tract-linalg 0.23.9
//! has no vector kernel for it.
//!
//! tract lowers a depthwise `Conv` to its `DepthWise` op, whose channel-last
//! walk calls `tract_linalg::routines::depthwise_c_f32`: written for arm64
//! and wasm, absent on x86-64, where a generic loop runs instead (baseline
//! SSE2, the output row re-read and re-written once per tap). That loop was
//! 650 µs of a 2.2 ms EfficientNet-b0 frame at 64x64, 30% of it.
//! [`DepthwiseNhwc`] keeps each output pixel's accumulators in registers
//! across all its taps (64 channels at a time: four AVX-512 vectors, eight
//! AVX2 ones), picked at run time from what the CPU has. On other
//! architectures [`rewrite`] leaves the graph to tract, whose kernels there
//! are the vector ones.
//!
//! The arithmetic is tract's, in tract's order (bias first, then the taps
//! row by row), except that a CPU with FMA fuses each multiply-add, so
//! results may differ from tract's in the last bits.

use std::ops::Range;
use std::sync::Arc;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::conv::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::cnn::{PaddingSpec, PoolSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

/// Taps per pixel the op takes (a 7x7 kernel); larger kernels stay with
/// tract, whose generic loop has no such bound.
pub(crate) const MAX_TAPS: usize = 49;

/// Depthwise 2-D convolution of an `[N, H, W, C]` (or `[H, W, C]`) map, the kernel and bias
/// held by the op (they are constants of the exported graph).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DepthwiseNhwc {
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Vertical and horizontal stride.
    pub stride: [usize; 2],
    /// Zero rows above and columns left of the input.
    pub pad_before: [usize; 2],
    /// Output height and width.
    pub output: [usize; 2],
    /// `[kh * kw, C]`: one channel vector per tap, row-major taps.
    pub weights: Arc<Tensor>,
    /// `[C]`.
    pub bias: Arc<Tensor>,
    /// Whether tract's SiLU follows, applied by each part to the rows it
    /// wrote ([`fuse_silu`]).
    pub silu: bool,
}

impl Op for DepthwiseNhwc {
    fn name(&self) -> StaticName {
        "DepthwiseNhwc".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "kernel {:?} stride {:?} pad {:?} output {:?}",
            self.kernel, self.stride, self.pad_before, self.output
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for DepthwiseNhwc {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let shape = x.shape();
        let (n, h, w, c) = match *shape {
            [n, h, w, c] => (n, h, w, c),
            [h, w, c] => (1, h, w, c),
            _ => bail!("DepthwiseNhwc takes [N, H, W, C] or [H, W, C], got {shape:?}"),
        };
        ensure!(c == self.bias.len(), "DepthwiseNhwc has {} channels, input {c}", self.bias.len());
        let [oh, ow] = self.output;
        let shape: TVec<usize> = if shape.len() == 4 { tvec![n, oh, ow, c] } else { tvec![oh, ow, c] };
        // Not zeroed, so that the part that owns a row is the first core to
        // touch it.
        // SAFETY: f32 has no invalid bit patterns, and every value is
        // written before the tensor leaves: the parts cover every output
        // row, and `run` writes each row's pixels whole, every channel.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        let mut ram = out.try_as_plain_ram_mut()?;
        let out_values = ram.as_slice_mut::<f32>()?;
        let weights = self.weights.try_as_plain_ram()?;
        let bias = self.bias.try_as_plain_ram()?;
        let geometry = Geometry {
            input: [h, w],
            channels: c,
            kernel: self.kernel,
            stride: self.stride,
            pad_before: self.pad_before,
            output: self.output,
        };
        let (weights, bias) = (weights.as_slice::<f32>()?, bias.as_slice::<f32>()?);
        let work = n * oh * ow * c * self.kernel[0] * self.kernel[1];
        let threads = crate::kernels::parts::threads_for(work);
        crate::ops::flat::with_values(&x, |x| {
            // Units are output rows, `n * oh` of them; a part's rows may
            // span two images.
            crate::kernels::parts::for_each_rows(out_values, ow * c, threads, |units, mut out| {
                let silu = if self.silu { Some(tract_linalg::routines::Func::Silu.ew_f32()?) } else { None };
                let mut u = units.start;
                while u < units.end {
                    let (image, oy) = (u / oh, u % oh);
                    let rows = oy..oh.min(oy + units.end - u);
                    let (here, rest) = out.split_at_mut(rows.len() * ow * c);
                    run(&geometry, &x[image * h * w * c..][..h * w * c], weights, bias, here, rows.clone());
                    if let Some(silu) = &silu {
                        silu.run(here)?;
                    }
                    (u, out) = (u + rows.len(), rest);
                }
                Ok(())
            })
        })?;
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for DepthwiseNhwc {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let s = &inputs[0].shape;
        let [oh, ow] = self.output.map(|d| d.to_dim());
        Ok(tvec!(match s.len() {
            4 => f32::fact([s[0].clone(), oh, ow, s[3].clone()]),
            3 => f32::fact([oh, ow, s[2].clone()]),
            _ => bail!("DepthwiseNhwc takes [N, H, W, C] or [H, W, C]"),
        }))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let s = &inputs[0].shape;
        let taps = self.kernel[0] * self.kernel[1];
        let images = if s.len() == 4 { s[0].clone() } else { 1.to_dim() };
        Ok(tvec!((Cost::FMA(f32::datum_type()), images * self.bias.len() * (taps * self.output[0] * self.output[1]))))
    }

    as_op!();
}

/// One image's shapes, as the kernel loop wants them.
struct Geometry {
    input: [usize; 2],
    channels: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    pad_before: [usize; 2],
    output: [usize; 2],
}

/// Convolves output rows `rows` of one `[H, W, C]` image into `out`
/// (`[rows, OW, C]`), with the widest vector unit this CPU has.
fn run(g: &Geometry, x: &[f32], weights: &[f32], bias: &[f32], out: &mut [f32], rows: Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    match crate::kernels::Isa::best() {
        // SAFETY: `best` never names a width the CPU lacks.
        crate::kernels::Isa::Avx512 => return unsafe { run_avx512(g, x, weights, bias, out, rows) },
        // SAFETY: as above.
        crate::kernels::Isa::Avx2 => return unsafe { run_avx2(g, x, weights, bias, out, rows) },
        crate::kernels::Isa::Portable => {}
    }
    run_body::<false>(g, x, weights, bias, out, rows)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn run_avx512(g: &Geometry, x: &[f32], weights: &[f32], bias: &[f32], out: &mut [f32], rows: Range<usize>) {
    run_body::<true>(g, x, weights, bias, out, rows)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_avx2(g: &Geometry, x: &[f32], weights: &[f32], bias: &[f32], out: &mut [f32], rows: Range<usize>) {
    run_body::<true>(g, x, weights, bias, out, rows)
}

/// Rows of one image; inlined into each target-feature wrapper so that
/// LLVM vectorises it for that wrapper's vector width. `FUSED` uses
/// `mul_add`, which is one instruction only where FMA is enabled.
#[inline(always)]
fn run_body<const FUSED: bool>(
    g: &Geometry,
    x: &[f32],
    weights: &[f32],
    bias: &[f32],
    out: &mut [f32],
    rows: Range<usize>,
) {
    let c = g.channels;
    let [h, w] = g.input;
    let [kh, kw] = g.kernel;
    // Every tap, offsets from the window's top-left input pixel: the list
    // of any window wholly inside the image.
    let mut all = [(0usize, 0usize); MAX_TAPS];
    for ky in 0..kh {
        for kx in 0..kw {
            all[ky * kw + kx] = (ky * kw + kx, (ky * w + kx) * c);
        }
    }
    let all = &all[..kh * kw];
    // (tap, offset of the tap's input pixel) for a window across the border.
    let mut taps = [(0usize, 0usize); MAX_TAPS];
    for oy in rows.clone() {
        let y0 = (oy * g.stride[0]) as isize - g.pad_before[0] as isize;
        let rows_inside = y0 >= 0 && y0 as usize + kh <= h;
        for ox in 0..g.output[1] {
            let x0 = (ox * g.stride[1]) as isize - g.pad_before[1] as isize;
            let o = &mut out[((oy - rows.start) * g.output[1] + ox) * c..][..c];
            if rows_inside && x0 >= 0 && x0 as usize + kw <= w {
                let origin = (y0 as usize * w + x0 as usize) * c;
                pixel::<FUSED>(o, bias, weights, &x[origin..], all, c);
                continue;
            }
            let mut n = 0;
            for ky in 0..kh {
                let y = y0 + ky as isize;
                if y < 0 || y >= h as isize {
                    continue;
                }
                for kx in 0..kw {
                    let xx = x0 + kx as isize;
                    if xx < 0 || xx >= w as isize {
                        continue;
                    }
                    taps[n] = (ky * kw + kx, (y as usize * w + xx as usize) * c);
                    n += 1;
                }
            }
            pixel::<FUSED>(o, bias, weights, x, &taps[..n], c);
        }
    }
}

/// One output pixel: 64 channels at a time, then 32, 16, then one, each
/// block's sums kept in registers across the taps. `taps` offsets index `x`.
#[inline(always)]
fn pixel<const FUSED: bool>(
    out: &mut [f32],
    bias: &[f32],
    weights: &[f32],
    x: &[f32],
    taps: &[(usize, usize)],
    c: usize,
) {
    let mut c0 = 0;
    c0 = block::<FUSED, 64>(out, bias, weights, x, taps, c, c0);
    c0 = block::<FUSED, 32>(out, bias, weights, x, taps, c, c0);
    c0 = block::<FUSED, 16>(out, bias, weights, x, taps, c, c0);
    block::<FUSED, 1>(out, bias, weights, x, taps, c, c0);
}

/// Channels from `c0` in blocks of `B` while a whole block fits; returns
/// where it stopped.
#[inline(always)]
fn block<const FUSED: bool, const B: usize>(
    out: &mut [f32],
    bias: &[f32],
    weights: &[f32],
    x: &[f32],
    taps: &[(usize, usize)],
    c: usize,
    mut c0: usize,
) -> usize {
    while c0 + B <= c {
        let mut acc = [0f32; B];
        acc.copy_from_slice(&bias[c0..c0 + B]);
        for &(tap, offset) in taps {
            let k: &[f32; B] = weights[tap * c + c0..][..B].try_into().unwrap();
            let v: &[f32; B] = x[offset + c0..][..B].try_into().unwrap();
            for i in 0..B {
                acc[i] = if FUSED { v[i].mul_add(k[i], acc[i]) } else { acc[i] + v[i] * k[i] };
            }
        }
        out[c0..c0 + B].copy_from_slice(&acc);
        c0 += B;
    }
    c0
}

/// The op for a depthwise `Conv` node of a channel-first graph, or `None`
/// where the node is something it does not cover (tract keeps those).
fn depthwise_of(model: &TypedModel, node: &TypedNode) -> TractResult<Option<DepthwiseNhwc>> {
    let Some(conv) = node.op_as::<Conv>() else { return Ok(None) };
    let spec = &conv.pool_spec;
    let x = model.outlet_fact(node.inputs[0])?;
    let (Some(shape), true) = (x.shape.as_concrete(), node.inputs.len() == 3) else { return Ok(None) };
    let channels = conv.input_channels();
    let plain = conv.q_params.is_none()
        && x.datum_type == f32::datum_type()
        && matches!((spec.data_format, shape.len()), (DataFormat::NCHW, 4) | (DataFormat::CHW, 3))
        && spec.kernel_shape.len() == 2
        && conv.group == channels
        && conv.output_channels() == channels
        && channels > 1
        && spec.dilations.as_ref().is_none_or(|d| d.iter().all(|&d| d == 1));
    let Some((kernel, bias)) = constants(model, node)?.filter(|_| plain) else { return Ok(None) };
    let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
    if kh * kw > MAX_TAPS || kernel.len() != channels * kh * kw || !(bias.len() == 1 || bias.len() == channels) {
        return Ok(None);
    }
    let r = shape.len();
    let Some(Window { stride, pad_before, output, .. }) = window(spec, [shape[r - 2], shape[r - 1]]) else {
        return Ok(None);
    };
    // Kernel to [tap, channel] whatever its declared layout.
    let view = kernel.to_plain_array_view::<f32>()?;
    let mut weights = vec![0f32; kh * kw * channels];
    for c in 0..channels {
        for ky in 0..kh {
            for kx in 0..kw {
                let v = match conv.kernel_fmt {
                    KernelFormat::OIHW => view[[c, 0, ky, kx]],
                    KernelFormat::HWIO => view[[ky, kx, 0, c]],
                    KernelFormat::OHWI => view[[c, ky, kx, 0]],
                };
                weights[(ky * kw + kx) * channels + c] = v;
            }
        }
    }
    let bias: Vec<f32> = bias.to_plain_array_view::<f32>()?.iter().copied().collect();
    let bias = if bias.len() == 1 { vec![bias[0]; channels] } else { bias };
    Ok(Some(DepthwiseNhwc {
        kernel: [kh, kw],
        stride,
        pad_before,
        output,
        weights: Arc::new(Tensor::from_shape(&[kh * kw, channels], &weights)?),
        bias: Arc::new(Tensor::from_shape(&[channels], &bias)?),
        silu: false,
    }))
}

/// The kernel and bias of a `Conv` node when both are f32 constants.
pub(crate) fn constants(model: &TypedModel, node: &TypedNode) -> TractResult<Option<(Arc<Tensor>, Arc<Tensor>)>> {
    if node.inputs.len() != 3 {
        return Ok(None);
    }
    let (kernel, bias) = (model.outlet_fact(node.inputs[1])?, model.outlet_fact(node.inputs[2])?);
    Ok(match (&kernel.konst, &bias.konst) {
        (Some(k), Some(b)) if k.datum_type() == f32::datum_type() && b.datum_type() == f32::datum_type() => {
            Some((k.clone(), b.clone()))
        }
        _ => None,
    })
}

/// A 2-D window's geometry over an input plane, per axis (rows, columns).
pub(crate) struct Window {
    pub stride: [usize; 2],
    /// Zero rows (columns) before the input.
    pub pad_before: [usize; 2],
    /// Zero rows (columns) after it.
    pub pad_after: [usize; 2],
    pub output: [usize; 2],
}

/// The window `spec` slides over an `input`-sized plane; `None` for
/// geometry the ops of this crate do not cover (dilation is checked by the
/// caller; ceil-mode padding, a kernel larger than the padded input).
pub(crate) fn window(spec: &PoolSpec, input: [usize; 2]) -> Option<Window> {
    let stride = spec.strides.as_ref().map_or([1, 1], |s| [s[0], s[1]]);
    let mut pad_before = [0; 2];
    let mut pad_after = [0; 2];
    let mut output = [0; 2];
    for a in 0..2 {
        let k = spec.kernel_shape[a];
        let (before, after) = match &spec.padding {
            PaddingSpec::Valid => (0, 0),
            PaddingSpec::Explicit(b, e) | PaddingSpec::ExplicitOnnxPool(b, e, false) => (b[a], e[a]),
            PaddingSpec::SameUpper | PaddingSpec::SameLower => {
                let out = input[a].div_ceil(stride[a]);
                let total = ((out - 1) * stride[a] + k).saturating_sub(input[a]);
                let small = total / 2;
                if spec.padding == PaddingSpec::SameUpper {
                    (small, total - small)
                } else {
                    (total - small, small)
                }
            }
            PaddingSpec::ExplicitOnnxPool(_, _, true) => return None,
        };
        if input[a] + before + after < k {
            return None;
        }
        pad_before[a] = before;
        pad_after[a] = after;
        output[a] = (input[a] + before + after - k) / stride[a] + 1;
    }
    Some(Window { stride, pad_before, pad_after, output })
}

/// Replaces every depthwise `Conv` of a channel-first typed graph with
/// [`DepthwiseNhwc`] between two axis moves (channels last, then back),
/// as tract's `conv_nhwc` transform does with its own op, so that the same
/// declutter passes cancel the moves between neighbouring convolutions.
/// Run it before `conv_nhwc`. Returns how many nodes it replaced.
pub fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(op) = depthwise_of(model, node)? else { continue };
        let name = node.name.clone();
        // Channels after the batch axis, if any; last in the op's input.
        let (c, r) = if model.outlet_fact(node.inputs[0])?.rank() == 4 { (1, 3) } else { (0, 2) };
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, node.inputs[0])?;
        let x = patch.wire_node(format!("{name}.nhwc_in"), AxisOp::Move(c, r), &[x])?;
        let y = patch.wire_node(&name, op, &x)?;
        let y = patch.wire_node(format!("{name}.nhwc_out"), AxisOp::Move(r, c), &y)?;
        patch.shunt_outside(model, id.into(), y[0])?;
        patch.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}

/// Folds each SiLU that alone consumes a [`DepthwiseNhwc`] into it, on the
/// optimised graph: every part then applies tract's own SiLU routine to
/// the rows it wrote (the same function, so the same bits), while they
/// are in its core's cache. Left to tract, the SiLU ran on the calling
/// thread over the whole map, which then moved between cores twice a
/// block when frames split over threads. Returns how many it folded.
pub fn fuse_silu(model: &mut TypedModel) -> TractResult<usize> {
    let mut fused = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(op) = node.op_as::<DepthwiseNhwc>().filter(|op| !op.silu) else { continue };
        let Some(next) = crate::ops::pointwise::sole_successor(model, id.into()) else { continue };
        if !crate::ops::pointwise::is_silu(model.node(next)) {
            continue;
        }
        let op = DepthwiseNhwc { silu: true, ..op.clone() };
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, node.inputs[0])?;
        let y = patch.wire_node(&node.name, op, &[x])?;
        patch.shunt_outside(model, next.into(), y[0])?;
        patch.apply(model)?;
        fused += 1;
    }
    Ok(fused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::cnn::PoolSpec;

    /// A channel-first graph with one depthwise `Conv`, as the ONNX
    /// importer builds it.
    fn model(n: usize, c: usize, hw: [usize; 2], k: usize, stride: usize, padding: PaddingSpec) -> TypedModel {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([n, c, hw[0], hw[1]])).unwrap();
        let kernel: Vec<f32> = (0..c * k * k).map(|i| (i as f32 * 0.731).sin()).collect();
        let bias: Vec<f32> = (0..c).map(|i| (i as f32 * 0.29).cos()).collect();
        let kernel = m.add_const("k", Tensor::from_shape(&[c, 1, k, k], &kernel).unwrap()).unwrap();
        let bias = m.add_const("b", Tensor::from_shape(&[c], &bias).unwrap()).unwrap();
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec![k, k],
                padding,
                dilations: None,
                strides: Some(tvec![stride, stride]),
                input_channels: c,
                output_channels: c,
            },
            kernel_fmt: KernelFormat::OIHW,
            group: c,
            q_params: None,
        };
        let y = m.wire_node("dw", conv, &[x, kernel, bias]).unwrap();
        m.select_output_outlets(&y).unwrap();
        m
    }

    #[test]
    fn matches_tract_depthwise() {
        let cases = [
            (1, 6, [7, 5], 3, 1, PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1])),
            (2, 96, [8, 8], 3, 2, PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1])),
            (1, 144, [9, 9], 5, 2, PaddingSpec::Explicit(tvec![2, 2], tvec![2, 2])),
            (1, 83, [4, 6], 5, 1, PaddingSpec::SameUpper),
            (1, 32, [5, 5], 3, 1, PaddingSpec::Valid),
            (1, 16, [2, 2], 5, 1, PaddingSpec::Explicit(tvec![2, 2], tvec![2, 2])),
        ];
        for (n, c, hw, k, s, padding) in cases {
            let generic = model(n, c, hw, k, s, padding.clone());
            let mut ours = generic.clone();
            assert_eq!(rewrite(&mut ours).unwrap(), 1);
            assert!(ours.nodes.iter().any(|n| n.op_is::<DepthwiseNhwc>()));
            let shape = [n, c, hw[0], hw[1]];
            let data: Vec<f32> = (0..shape.iter().product::<usize>()).map(|i| (i as f32 * 0.37).cos()).collect();
            let input = || tvec![Tensor::from_shape(&shape, &data).unwrap().into_tvalue()];
            let want = generic.into_optimized().unwrap().into_runnable().unwrap().run(input()).unwrap().remove(0);
            let got = ours.into_optimized().unwrap().into_runnable().unwrap().run(input()).unwrap().remove(0);
            crate::ops::flat::assert_tensors_close(&want, &got, 1e-5, &format!("{c} channels {padding:?}"));
        }
    }

    /// Every kernel this CPU can run against the plain loop, so a machine
    /// with AVX-512 also checks the AVX2 build the next machine may pick.
    #[test]
    fn every_vector_width_agrees_with_the_plain_loop() {
        let widths: Vec<_> = crate::kernels::Isa::available().map(crate::kernels::Isa::name).collect();
        eprintln!("depthwise kernels checked on this CPU: {}", widths.join(", "));
        for (c, hw, k, stride, pad) in [(96, [9, 7], 3, 1, 1), (83, [6, 6], 5, 2, 2), (16, [3, 3], 3, 1, 0)] {
            let output = [(hw[0] + 2 * pad - k) / stride + 1, (hw[1] + 2 * pad - k) / stride + 1];
            let g = Geometry {
                input: hw,
                channels: c,
                kernel: [k, k],
                stride: [stride, stride],
                pad_before: [pad, pad],
                output,
            };
            let x: Vec<f32> = (0..hw[0] * hw[1] * c).map(|i| (i as f32 * 0.37).cos()).collect();
            let w: Vec<f32> = (0..k * k * c).map(|i| (i as f32 * 0.731).sin()).collect();
            let b: Vec<f32> = (0..c).map(|i| (i as f32 * 0.29).cos()).collect();
            let n = output[0] * output[1] * c;
            let mut plain = vec![0f32; n];
            run_body::<false>(&g, &x, &w, &b, &mut plain, 0..output[0]);
            for isa in crate::kernels::Isa::available() {
                let mut out = vec![0f32; n];
                crate::kernels::Isa::capped(isa, || run(&g, &x, &w, &b, &mut out, 0..output[0]));
                crate::ops::flat::assert_close(&plain, &out, 1e-5, &format!("{}, {c} channels", isa.name()));
            }
        }
    }

    /// Split by output rows over 2 and 3 threads (parts that span two
    /// images among them), the op gives the one-thread bits.
    #[test]
    fn threads_give_the_one_thread_bits() {
        for (n, c, hw, k, s) in [(2, 96, [16, 16], 5, 1), (3, 40, [13, 11], 3, 2)] {
            let mut m = model(n, c, hw, k, s, PaddingSpec::SameUpper);
            assert_eq!(rewrite(&mut m).unwrap(), 1);
            let plan = m.into_optimized().unwrap().into_runnable().unwrap();
            let shape = [n, c, hw[0], hw[1]];
            let data: Vec<f32> = (0..shape.iter().product::<usize>()).map(|i| (i as f32 * 0.37).cos()).collect();
            let run = || plan.run(tvec![Tensor::from_shape(&shape, &data).unwrap().into_tvalue()]).unwrap().remove(0);
            let one = run();
            for threads in [2, 3] {
                let many = crate::kernels::parts::with_threads(threads, run);
                let bits = |t: &TValue| {
                    t.to_plain_array_view::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                };
                assert!(bits(&one) == bits(&many), "{c} channels, {threads} threads: not the one-thread bits");
            }
        }
    }

    /// The SiLU folded into the op gives tract's SiLU's bits, whole or
    /// split over threads; a SiLU that shares its input stays tract's.
    #[test]
    fn folds_the_silu_after_it() {
        use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
        use tract_onnx::tract_core::ops::nn::Silu;
        for (n, c, hw, k, s) in [(2, 96, [16, 16], 3, 1), (3, 40, [13, 11], 5, 2)] {
            let mut m = model(n, c, hw, k, s, PaddingSpec::SameUpper);
            let dw = m.output_outlets().unwrap()[0];
            let y = m.wire_node("silu", ElementWiseOp(Box::new(Silu {}), None), &[dw]).unwrap();
            m.select_output_outlets(&y).unwrap();
            assert_eq!(rewrite(&mut m).unwrap(), 1);
            let t = tract_onnx::tract_core::transform::get_transform("conv_nhwc").unwrap().unwrap();
            t.transform(&mut m).unwrap();
            let plain = m.into_optimized().unwrap();
            let mut fused = plain.clone();
            assert_eq!(fuse_silu(&mut fused).unwrap(), 1);
            assert!(!fused.nodes.iter().any(crate::ops::pointwise::is_silu));
            let shape = [n, c, hw[0], hw[1]];
            let data: Vec<f32> = (0..shape.iter().product::<usize>()).map(|i| (i as f32 * 0.37).cos()).collect();
            let input = || tvec![Tensor::from_shape(&shape, &data).unwrap().into_tvalue()];
            let bits =
                |t: TValue| t.to_plain_array_view::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            let want = bits(plain.into_runnable().unwrap().run(input()).unwrap().remove(0));
            let plan = fused.into_runnable().unwrap();
            for threads in [1, 2, 3] {
                let got = crate::kernels::parts::with_threads(threads, || plan.run(input()).unwrap().remove(0));
                assert!(want == bits(got), "{c} channels, {threads} threads: not tract's SiLU bits");
            }
            // The convolution's output also leaves the graph: the SiLU stays.
            let mut m = model(n, c, hw, k, s, PaddingSpec::SameUpper);
            let dw = m.output_outlets().unwrap()[0];
            let y = m.wire_node("silu", ElementWiseOp(Box::new(Silu {}), None), &[dw]).unwrap();
            m.select_output_outlets(&[dw, y[0]]).unwrap();
            rewrite(&mut m).unwrap();
            let mut m = m.into_optimized().unwrap();
            assert_eq!(fuse_silu(&mut m).unwrap(), 0);
        }
    }

    #[test]
    fn leaves_other_convolutions_to_tract() {
        let mut m = model(1, 8, [6, 6], 3, 1, PaddingSpec::ExplicitOnnxPool(tvec![1, 1], tvec![1, 1], true));
        assert_eq!(rewrite(&mut m).unwrap(), 0, "ceil-mode padding");
        let mut m = model(1, 8, [6, 6], 9, 1, PaddingSpec::Explicit(tvec![4, 4], tvec![4, 4]));
        assert_eq!(rewrite(&mut m).unwrap(), 0, "more taps than the op holds");
    }
}
