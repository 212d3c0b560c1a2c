//! A dense convolution over few input channels (a network's stem),
//! channel-first in, channel-last out, with its SiLU.
//!
//! EfficientNet's stem is a 3x3 stride-2 convolution of the RGB image to
//! 32 channels. tract pads the image (a copy), lowers the convolution to
//! its lazy im2col and matrix product with a channel-first output and a
//! separate SiLU; the first depthwise block then moves the 32x32x32 map to
//! channel-last. On a 2-core AMD EPYC that was 180 µs of a 3.5 ms frame
//! where onnxruntime's stem took 55. [`Im2colConv`] pads the image once
//! and runs [`Pointwise`] on it with offset tables, each output pixel's
//! window read in place as a row of channels x taps: no gathered copy,
//! bias and SiLU applied while the rows are in L1, the output
//! channel-last, as the next block wants it.

use std::sync::Arc;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::conv::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::nn::DataFormat;

use crate::ops::depthwise::{window, Window};
use crate::ops::pointwise::{is_silu, sole_successor, Input, Pointwise, Strides};

/// Input channels times taps the op takes (a row of the gathered
/// windows); wider convolutions stay with tract, whose packing is then
/// worth its cost.
const MAX_ROW: usize = 64;

/// Convolution of an `[N, C, H, W]` image to `[N, OH, OW, O]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Im2colConv {
    /// `[N, C, H, W]`.
    pub input: [usize; 4],
    /// Zero rows above and below, columns left and right.
    pub pad: [usize; 4],
    /// The product of the windows (`C * kh * kw` values, read from the
    /// padded image through offset tables) and the weights, with the bias
    /// and SiLU.
    pub rows: Arc<Pointwise>,
}

impl Op for Im2colConv {
    fn name(&self) -> StaticName {
        "Im2colConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("input {:?} pad {:?}; {}", self.input, self.pad, self.rows.info()?.join(" "))])
    }

    op_as_typed_op!();
}

impl EvalOp for Im2colConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        ensure!(x.shape() == self.input, "Im2colConv input {:?}, expected {:?}", x.shape(), self.input);
        let [n, c, h, w] = self.input;
        let [top, bottom, left, right] = self.pad;
        let (hp, wp) = (h + top + bottom, w + left + right);
        let mut padded = vec![0f32; n * c * hp * wp];
        crate::ops::flat::with_values(&x, |x| {
            for (plane, out) in x.chunks_exact(h * w).zip(padded.chunks_exact_mut(hp * wp)) {
                for (row, out) in plane.chunks_exact(w).zip(out[top * wp..].chunks_exact_mut(wp)) {
                    out[left..left + w].copy_from_slice(row);
                }
            }
            Ok(())
        })?;
        // SAFETY: `run_into` writes every output value before it is read.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&self.rows.output_shape)? };
        let mut ram = out.try_as_plain_ram_mut()?;
        self.rows.run_into(&padded, None, ram.as_slice_mut::<f32>()?)?;
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for Im2colConv {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&*self.rows.output_shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        self.rows.cost(inputs)
    }

    as_op!();
}

/// The op for a dense `Conv` of a channel-first graph over few input
/// channels, with the SiLU after it if there is one; and the outlet it
/// replaces. `None` where the node is not one.
fn im2col_of(model: &TypedModel, node: &TypedNode) -> TractResult<Option<(Im2colConv, OutletId)>> {
    let Some(conv) = node.op_as::<Conv>() else { return Ok(None) };
    let spec = &conv.pool_spec;
    let x = model.outlet_fact(node.inputs[0])?;
    let (Some(shape), true) = (x.shape.as_concrete(), node.inputs.len() == 3) else { return Ok(None) };
    let plain = conv.q_params.is_none()
        && x.datum_type == f32::datum_type()
        && spec.data_format == DataFormat::NCHW
        && shape.len() == 4
        && spec.kernel_shape.len() == 2
        && conv.group == 1
        && spec.kernel_shape.iter().product::<usize>() > 1
        && conv.input_channels() * spec.kernel_shape.iter().product::<usize>() <= MAX_ROW
        && spec.dilations.as_ref().is_none_or(|d| d.iter().all(|&d| d == 1));
    let Some((kernel, bias)) = crate::ops::depthwise::constants(model, node)?.filter(|_| plain) else {
        return Ok(None);
    };
    let (c, o) = (conv.input_channels(), conv.output_channels());
    let [kh, kw] = [spec.kernel_shape[0], spec.kernel_shape[1]];
    if kernel.len() != o * c * kh * kw || !(bias.len() == 1 || bias.len() == o) {
        return Ok(None);
    }
    let Some(Window { stride, pad_before, pad_after, output }) = window(spec, [shape[2], shape[3]]) else {
        return Ok(None);
    };
    let view = kernel.to_plain_array_view::<f32>()?;
    let weight = |oc: usize, k: usize| {
        let (ch, tap) = (k / (kh * kw), k % (kh * kw));
        let (ky, kx) = (tap / kw, tap % kw);
        match conv.kernel_fmt {
            KernelFormat::OIHW => view[[oc, ch, ky, kx]],
            KernelFormat::HWIO => view[[ky, kx, ch, oc]],
            KernelFormat::OHWI => view[[oc, ky, kx, ch]],
        }
    };
    let bias: Vec<f32> = bias.to_plain_array_view::<f32>()?.iter().copied().collect();
    let bias = if bias.len() == 1 { vec![bias[0]; o] } else { bias };
    // The SiLU after it, if it is the convolution's only reader.
    let conv_out = OutletId::new(node.id, 0);
    let silu = sole_successor(model, conv_out).filter(|&s| is_silu(model.node(s)));
    let last = silu.map_or(conv_out, |s| OutletId::new(s, 0));
    let silu = silu.is_some();
    let (n, pixels, k) = (shape[0], output[0] * output[1], c * kh * kw);
    // In the padded image: each output pixel's window corner, each
    // (channel, tap row, tap column)'s offset from it.
    let pad = [pad_before[0], pad_after[0], pad_before[1], pad_after[1]];
    let (hp, wp) = (shape[2] + pad[0] + pad[1], shape[3] + pad[2] + pad[3]);
    let corners = (0..pixels).map(|p| (p / output[1] * stride[0]) * wp + p % output[1] * stride[1]).collect();
    let taps = (0..k).map(|i| (i / (kh * kw)) * hp * wp + (i % (kh * kw) / kw) * wp + i % kw).collect();
    let rows = Pointwise::new(
        [k, o],
        [n, pixels],
        weight,
        &bias,
        silu,
        false,
        (
            Input { batch: c * hp * wp, pixels: corners, channels: taps },
            Strides { batch: pixels * o, pixel: o, channel: 1 },
        ),
        [tvec![n, c, hp, wp], tvec![n, output[0], output[1], o]],
    )?;
    let input = [shape[0], shape[1], shape[2], shape[3]];
    Ok(Some((Im2colConv { input, pad, rows: Arc::new(rows) }, last)))
}

/// Replaces every dense convolution over at most `MAX_ROW` channels x
/// taps of a channel-first typed graph (and its SiLU) with [`Im2colConv`],
/// followed by a move of the channels back to axis 1, which the next
/// channel-last op's move cancels when the graph is decluttered. Run it
/// before `conv_nhwc`. Returns how many nodes it replaced.
pub fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some((op, last)) = im2col_of(model, node)? else { continue };
        let name = node.name.clone();
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, node.inputs[0])?;
        let y = patch.wire_node(&name, op, &[x])?;
        let y = patch.wire_node(format!("{name}.nchw_out"), AxisOp::Move(3, 1), &y)?;
        patch.shunt_outside(model, last, y[0])?;
        patch.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::cnn::{PaddingSpec, PoolSpec};
    use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
    use tract_onnx::tract_core::ops::nn::Silu;

    /// One test convolution.
    #[derive(Clone, Debug)]
    struct Case {
        n: usize,
        c: usize,
        o: usize,
        hw: [usize; 2],
        k: [usize; 2],
        stride: usize,
        padding: PaddingSpec,
        silu: bool,
        group: usize,
    }

    /// A channel-first graph with one dense `Conv` (and a SiLU), as the
    /// ONNX importer builds it.
    fn model(case: &Case) -> TypedModel {
        let Case { n, c, o, hw, k, stride, ref padding, silu, group } = *case;
        let padding = padding.clone();
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([n, c, hw[0], hw[1]])).unwrap();
        let kernel: Vec<f32> = (0..o * c / group * k[0] * k[1]).map(|i| (i as f32 * 0.731).sin()).collect();
        let bias: Vec<f32> = (0..o).map(|i| (i as f32 * 0.29).cos()).collect();
        let kernel = m.add_const("k", Tensor::from_shape(&[o, c / group, k[0], k[1]], &kernel).unwrap()).unwrap();
        let bias = m.add_const("b", Tensor::from_shape(&[o], &bias).unwrap()).unwrap();
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: k.into_iter().collect(),
                padding,
                dilations: None,
                strides: Some(tvec![stride, stride]),
                input_channels: c,
                output_channels: o,
            },
            kernel_fmt: KernelFormat::OIHW,
            group,
            q_params: None,
        };
        let mut y = m.wire_node("conv", conv, &[x, kernel, bias]).unwrap();
        if silu {
            y = m.wire_node("silu", ElementWiseOp(Box::new(Silu {}), None), &y).unwrap();
        }
        m.select_output_outlets(&y).unwrap();
        m
    }

    #[test]
    fn matches_tract_convolution() {
        let one = PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]);
        let case = |n, c, o, hw, k, stride, padding, silu| Case { n, c, o, hw, k, stride, padding, silu, group: 1 };
        let cases = [
            // EfficientNet's stem, on an odd-sized image.
            case(1, 3, 32, [17, 17], [3, 3], 2, one.clone(), true),
            case(2, 3, 5, [9, 8], [3, 3], 1, PaddingSpec::Valid, false),
            case(1, 1, 20, [6, 7], [2, 3], 1, PaddingSpec::SameUpper, true),
            case(1, 4, 48, [5, 5], [3, 3], 2, one, false),
        ];
        for case in cases {
            let Case { n, c, o, hw, k, ref padding, .. } = case;
            let generic = model(&case);
            let mut ours = generic.clone();
            assert_eq!(rewrite(&mut ours).unwrap(), 1);
            let ours = ours.into_optimized().unwrap();
            assert!(ours.nodes.iter().any(|n| n.op_is::<Im2colConv>()));
            let shape = [n, c, hw[0], hw[1]];
            let data: Vec<f32> = (0..shape.iter().product::<usize>()).map(|i| (i as f32 * 0.37).cos()).collect();
            let input = || tvec![Tensor::from_shape(&shape, &data).unwrap().into_tvalue()];
            let want = generic.into_optimized().unwrap().into_runnable().unwrap().run(input()).unwrap().remove(0);
            let got = ours.into_runnable().unwrap().run(input()).unwrap().remove(0);
            crate::ops::flat::assert_tensors_close(&want, &got, 1e-5, &format!("{c}->{o} {k:?} {padding:?}"));
        }
    }

    #[test]
    fn leaves_other_convolutions_to_tract() {
        let one = PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]);
        let base = Case { n: 1, c: 8, o: 8, hw: [6, 6], k: [3, 3], stride: 1, padding: one, silu: false, group: 2 };
        assert_eq!(rewrite(&mut model(&base)).unwrap(), 0, "grouped");
        assert_eq!(rewrite(&mut model(&Case { group: 1, ..base.clone() })).unwrap(), 0, "72 values a row");
        let pointwise = Case { c: 3, k: [1, 1], padding: PaddingSpec::Valid, group: 1, ..base };
        assert_eq!(rewrite(&mut model(&pointwise)).unwrap(), 0, "1x1: Pointwise's");
    }
}
