//! A channel-last broadcast multiply, `x[.., C] * s[1, .., 1, C]`, as a tract
//! op, and the rewrite that puts it in place of tract's generic one.
//!
//! Why: run channel-last (`conv_nhwc`), EfficientNet's squeeze-excitation
//! scaling multiplies every spatial position by one vector of channel
//! weights. tract 0.23.9 lowers that pattern to its SIMD "unicast" kernel
//! only when the channel count is a multiple of the vector size counted in
//! *bytes* (64 with AVX-512), so 32, 96, 144, 240, 480 and 672 channels fall
//! back to the generic broadcasting `Mul`, which measured 0.73 ms of a
//! 2.6 ms b0 frame at 64x64. This loop is the same arithmetic, in the same
//! order (one product per element), so results are bit-identical.

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;

/// `a * b` where `b` has `a`'s last dimension and 1 everywhere else.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChannelScale;

impl Op for ChannelScale {
    fn name(&self) -> StaticName {
        "ChannelScale".into()
    }

    op_as_typed_op!();
}

impl EvalOp for ChannelScale {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (a, b) = args_2!(inputs);
        let natural = |t: &Tensor| {
            t.len() == t.shape().iter().product::<usize>() && t.strides() == &*Tensor::natural_strides(t.shape())
        };
        let mut a = a.into_tensor();
        if !natural(&a) || !natural(&b) {
            let mut view = a.to_plain_array_view_mut::<f32>()?;
            view *= &b.to_plain_array_view::<f32>()?;
            return Ok(tvec!(a.into_tvalue()));
        }
        let b = b.try_as_plain_ram()?;
        let scale = b.as_slice::<f32>()?;
        ensure!(!scale.is_empty() && a.len() % scale.len() == 0, "channel scale shape");
        {
            let mut ram = a.try_as_plain_ram_mut()?;
            for row in ram.as_slice_mut::<f32>()?.chunks_exact_mut(scale.len()) {
                for (x, s) in row.iter_mut().zip(scale) {
                    *x *= s;
                }
            }
        }
        Ok(tvec!(a.into_tvalue()))
    }
}

impl TypedOp for ChannelScale {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// Replaces every f32 `Mul` of the channel-last broadcast shape with
/// [`ChannelScale`]. Returns how many it replaced.
pub fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(op) = node.op_as::<TypedBinOp>() else { continue };
        if op.0.name() != "Mul" || op.1.is_some() || node.inputs.len() != 2 {
            continue;
        }
        let (a, b) = (model.outlet_fact(node.inputs[0])?, model.outlet_fact(node.inputs[1])?);
        if a.datum_type != f32::datum_type() || b.datum_type != f32::datum_type() {
            continue;
        }
        let (Some(sa), Some(sb)) = (a.shape.as_concrete(), b.shape.as_concrete()) else { continue };
        let r = sa.len();
        let channel_last = r >= 2
            && sb.len() == r
            && sb[r - 1] == sa[r - 1]
            && sa[r - 1] > 1
            && sb[..r - 1].iter().all(|&d| d == 1)
            && sa[..r - 1].iter().product::<usize>() > 1;
        if !channel_last {
            continue;
        }
        let patch = TypedModelPatch::replace_single_op(model, node, &node.inputs, ChannelScale)?;
        patch.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::math::mul;

    /// `x * s` with `s` broadcast over every axis but the last.
    fn model(channels: usize) -> TypedModel {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, 5, 3, channels])).unwrap();
        let s = m.add_source("s", f32::fact([1, 1, 1, channels])).unwrap();
        let y = m.wire_node("scale", mul(), &[x, s]).unwrap();
        m.select_output_outlets(&y).unwrap();
        m
    }

    #[test]
    fn rewrite_is_bit_identical_to_the_generic_multiply() {
        for channels in [6, 96, 144] {
            let generic = model(channels);
            let mut rewritten = generic.clone();
            assert_eq!(rewrite(&mut rewritten).unwrap(), 1);
            assert!(rewritten.nodes.iter().any(|n| n.op_is::<ChannelScale>()));
            let x: Vec<f32> = (0..15 * channels).map(|i| (i as f32 * 0.37).sin()).collect();
            let s: Vec<f32> = (0..channels).map(|i| 1.0 + (i as f32 * 0.11).cos()).collect();
            let inputs = || {
                tvec![
                    Tensor::from_shape(&[1, 5, 3, channels], &x).unwrap().into_tvalue(),
                    Tensor::from_shape(&[1, 1, 1, channels], &s).unwrap().into_tvalue(),
                ]
            };
            let want = generic.into_runnable().unwrap().run(inputs()).unwrap().remove(0);
            let got = rewritten.into_runnable().unwrap().run(inputs()).unwrap().remove(0);
            assert_eq!(want.into_tensor(), got.into_tensor(), "{channels} channels");
        }
    }

    #[test]
    fn other_broadcasts_are_left_alone() {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, 6, 4, 4])).unwrap();
        let s = m.add_source("s", f32::fact([1, 6, 1, 1])).unwrap();
        let y = m.wire_node("per_channel_first", mul(), &[x, s]).unwrap();
        m.select_output_outlets(&y).unwrap();
        assert_eq!(rewrite(&mut m).unwrap(), 0);
    }
}
