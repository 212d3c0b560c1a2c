//! Four tract ops for the graph tract runs channel-last, and the rewrite
//! that puts them in place of tract's generic ones (their loops are in
//! [`crate::kernels::simd`]).
//!
//! Run channel-last (`conv_nhwc`), EfficientNet's squeeze-excitation first
//! sums every spatial position into one vector of channels, then scales
//! every position by a vector of channel weights:
//!
//! * [`ChannelScale`], `x[.., C] * s[1, .., 1, C]`: tract 0.23.9 lowers that
//!   pattern to its SIMD "unicast" kernel only when the channel count is a
//!   multiple of the vector size counted in *bytes* (64 with AVX-512), so
//!   32, 96, 144, 240, 480 and 672 channels fall back to the generic
//!   broadcasting `Mul`, which measured 0.73 ms of a 2.6 ms b0 frame at
//!   64x64. The loop is the same arithmetic in the same order (one product
//!   per element), so results are bit-identical.
//! * [`SpatialSum`], the sum over every axis but the channels: tract's
//!   `Reduce<Sum>` took 79 µs for the first block's 32x32x32 map (2.4 ns
//!   an element, ten times its rate on the other blocks). Rows are added
//!   in order, so the result may differ from tract's in the last bits.
//! * [`PlaneBias`], `x[N, C, ..] + b[1, C, 1, ..]`: the bias of a 1x1
//!   convolution tract left channel-first. With one image tract's
//!   "by scalar" kernel takes it; with a batch the leading 1 sends it to the
//!   generic broadcast (75 µs an image for the first block at batch 8).
//! * [`PlaneSum`], the sum of each channel plane of `x[N, C, ..]`: the
//!   global pools of the feature ensemble's block outputs, which tract left
//!   channel-first. Tract's `Reduce<Sum>` spent 4.6 ns an element on the
//!   2x2 planes of the last blocks (6 µs for 320 channels).
//!
//! The first two also take a batch (`s[N, 1, .., 1, C]`, a sum per image),
//! which is what batched frames give. The rewrite also rebuilds folded
//! constants with natural strides (see `natural_constants`).

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::{OptBinUnicast, TypedBinOp};
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer};

use crate::ops::flat::{natural, with_values};

/// `a op= b` for the binary ops here: `fast` on the flat values when both
/// are stored in row-major order, else `generic` on array views (tract's
/// own broadcasting, for layouts these ops do not expect).
fn in_place(
    inputs: TVec<TValue>,
    generic: impl FnOnce(&mut Tensor, &Tensor) -> TractResult<()>,
    fast: impl FnOnce(&mut [f32], &[f32], &[usize]) -> TractResult<()>,
) -> TractResult<TVec<TValue>> {
    let (a, b) = args_2!(inputs);
    let mut a = a.into_tensor();
    if !natural(&a) || !natural(&b) {
        generic(&mut a, &b)?;
        return Ok(tvec!(a.into_tvalue()));
    }
    let shape: TVec<usize> = a.shape().into();
    let b = b.try_as_plain_ram()?;
    {
        let mut ram = a.try_as_plain_ram_mut()?;
        fast(ram.as_slice_mut::<f32>()?, b.as_slice::<f32>()?, &shape)?;
    }
    Ok(tvec!(a.into_tvalue()))
}

/// `a * b` where `b` has `a`'s last dimension, 1 or `a`'s first dimension
/// first, and 1 everywhere else.
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
        let generic = |a: &mut Tensor, b: &Tensor| {
            let mut view = a.to_plain_array_view_mut::<f32>()?;
            view *= &b.to_plain_array_view::<f32>()?;
            Ok(())
        };
        in_place(inputs, generic, |a, scale, shape| {
            let channels = *shape.last().context("rank 0")?;
            // One scale vector, or one per image.
            let images = scale.len() / channels.max(1);
            ensure!(channels > 0 && images > 0 && scale.len() == images * channels, "channel scale shape");
            ensure!(a.len().is_multiple_of(images * channels), "channel scale shape");
            for (image, scale) in a.chunks_exact_mut(a.len() / images).zip(scale.chunks_exact(channels)) {
                crate::kernels::simd::scale_rows(image, scale);
            }
            Ok(())
        })
    }
}

impl TypedOp for ChannelScale {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// The sum over every axis but the last (and the first, with `batch`) of
/// a tensor whose other axes have size 1; the summed axes stay, with size 1
/// (`Reduce` keeps them too).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpatialSum {
    /// Axis 0 holds images, summed separately.
    pub batch: bool,
}

impl Op for SpatialSum {
    fn name(&self) -> StaticName {
        "SpatialSum".into()
    }

    op_as_typed_op!();
}

impl EvalOp for SpatialSum {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let shape = x.shape();
        let channels = *shape.last().context("rank 0")?;
        let images = if self.batch { shape[0] } else { 1 };
        let mut out_shape: TVec<usize> = shape.iter().map(|_| 1).collect();
        *out_shape.last_mut().context("rank 0")? = channels;
        if self.batch {
            out_shape[0] = images;
        }
        let mut sum = vec![0f32; images * channels];
        with_values(&x, |values| {
            ensure!(channels > 0 && images > 0 && values.len().is_multiple_of(images), "spatial sum shape");
            for (image, sum) in values.chunks_exact(values.len() / images).zip(sum.chunks_exact_mut(channels)) {
                crate::kernels::simd::sum_rows(sum, image);
            }
            Ok(())
        })?;
        Ok(tvec!(Tensor::from_shape(&out_shape, &sum)?.into_tvalue()))
    }
}

impl TypedOp for SpatialSum {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = &inputs[0].shape;
        let mut out: TVec<TDim> = shape.iter().map(|_| 1.to_dim()).collect();
        *out.last_mut().context("rank 0")? = shape[shape.len() - 1].clone();
        if self.batch {
            out[0] = shape[0].clone();
        }
        Ok(tvec!(inputs[0].datum_type.fact(out)))
    }

    as_op!();
}

/// `a + b` for `a` of shape `[N, C, ..]` and `b` of shape `[1, C, 1, ..]`:
/// one value added to each channel plane of each image.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PlaneBias;

impl Op for PlaneBias {
    fn name(&self) -> StaticName {
        "PlaneBias".into()
    }

    op_as_typed_op!();
}

impl EvalOp for PlaneBias {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let generic = |a: &mut Tensor, b: &Tensor| {
            let mut view = a.to_plain_array_view_mut::<f32>()?;
            view += &b.to_plain_array_view::<f32>()?;
            Ok(())
        };
        in_place(inputs, generic, |a, bias, shape| {
            let plane = shape[2..].iter().product::<usize>();
            ensure!(plane > 0 && shape[1] == bias.len(), "plane bias shape");
            for (values, bias) in a.chunks_exact_mut(plane).zip(bias.iter().cycle()) {
                crate::kernels::simd::add_scalar(values, *bias);
            }
            Ok(())
        })
    }
}

impl TypedOp for PlaneBias {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// The sum of each plane of `x` over its axes from `kept` on, kept as
/// `[N, C, 1, ..]` (for `kept` = 2; the feature pools of a grouped layout
/// `[N, 1, C, H, W]` keep 3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PlaneSum {
    pub kept: usize,
}

impl Op for PlaneSum {
    fn name(&self) -> StaticName {
        "PlaneSum".into()
    }

    op_as_typed_op!();
}

impl EvalOp for PlaneSum {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let shape = x.shape();
        let kept = self.kept;
        ensure!(kept >= 1 && shape.len() > kept, "plane sum keeping {kept} axes of rank {}", shape.len());
        let plane = shape[kept..].iter().product::<usize>();
        ensure!(plane > 0, "empty planes");
        let mut out_shape: TVec<usize> = shape.iter().map(|_| 1).collect();
        out_shape[..kept].copy_from_slice(&shape[..kept]);
        let sums: Vec<f32> =
            with_values(&x, |values| Ok(values.chunks_exact(plane).map(crate::kernels::simd::sum).collect()))?;
        Ok(tvec!(Tensor::from_shape(&out_shape, &sums)?.into_tvalue()))
    }
}

impl TypedOp for PlaneSum {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = &inputs[0].shape;
        let out: TVec<TDim> =
            shape.iter().enumerate().map(|(a, d)| if a < self.kept { d.clone() } else { 1.to_dim() }).collect();
        Ok(tvec!(inputs[0].datum_type.fact(out)))
    }

    as_op!();
}

/// Gives every f32 constant natural strides.
///
/// Constant folding of a reshape (`Tensor::insert_axis`) can leave a
/// constant with strides like `[1, 1, 1, 1]` for shape `[1, 16, 1, 1]`: the
/// same elements in the same order, but tract's binary ops check for natural
/// strides before their fast path, and took the generic broadcasting loop
/// for the first block's bias: 77 µs for a 16x32x32 add that takes 1.4 µs
/// with a natural constant. Returns how many constants it rebuilt.
fn natural_constants(model: &mut TypedModel) -> TractResult<usize> {
    let mut rebuilt = 0;
    for node in &mut model.nodes {
        let Some(konst) = node.op_as::<Const>() else { continue };
        let t = konst.val();
        if konst.exotic_fact().is_some() || t.datum_type() != f32::datum_type() || !t.is_plain() || natural(t) {
            continue;
        }
        let values: Vec<f32> = t.to_plain_array_view::<f32>()?.iter().copied().collect();
        let t = Arc::new(Tensor::from_shape(t.shape(), &values)?);
        node.outputs[0].fact.konst = Some(t.clone());
        node.op = Box::new(Const::new(t)?);
        rebuilt += 1;
    }
    Ok(rebuilt)
}

/// Replaces every f32 `Mul` of the channel-last broadcast shape with
/// [`ChannelScale`], every channel-first batched bias `Add` with
/// [`PlaneBias`], every channel-last spatial `Reduce<Sum>` with
/// [`SpatialSum`] and every channel-first one with [`PlaneSum`], and gives
/// constants natural strides. Returns how many nodes it replaced or
/// rebuilt.
pub fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = natural_constants(model)?;
    for id in model.eval_order()? {
        let node = model.node(id);
        if let Some(reduce) = node.op_as::<Reduce>() {
            let fact = model.outlet_fact(node.inputs[0])?;
            let Some(shape) = fact.shape.as_concrete() else { continue };
            let r = shape.len();
            let summed = |a: usize| reduce.axes.contains(&a) || shape[a] == 1;
            // Axis 0 may be kept when it holds images (and something else is summed).
            let batch = r >= 3 && !summed(0);
            let spatial = reduce.reducer == Reducer::Sum
                && fact.datum_type == f32::datum_type()
                && r >= 2
                && !reduce.axes.contains(&(r - 1))
                && (1..r - 1).all(summed)
                && (batch || summed(0))
                && shape[usize::from(batch)..r - 1].iter().product::<usize>() > 1;
            // Planes: the axes after the last one kept (past the first
            // two: images and channels, or images, a unit group and
            // channels), all summed.
            let kept = (0..r).rev().find(|&a| !summed(a)).map_or(0, |a| a + 1).max(2);
            let planes = reduce.reducer == Reducer::Sum
                && fact.datum_type == f32::datum_type()
                && r > kept
                && reduce.axes.iter().all(|&a| a >= kept)
                && shape[kept..].iter().product::<usize>() > 1;
            let patch = if spatial {
                TypedModelPatch::replace_single_op(model, node, &node.inputs, SpatialSum { batch })?
            } else if planes {
                TypedModelPatch::replace_single_op(model, node, &node.inputs, PlaneSum { kept })?
            } else {
                continue;
            };
            patch.apply(model)?;
            replaced += 1;
            continue;
        }
        // The plain binary op, or the form tract's optimiser gives some of
        // them (unicast: the first block's scale took 26 µs there).
        let name = if let Some(op) = node.op_as::<TypedBinOp>() {
            if op.1.is_some() {
                continue;
            }
            op.0.name()
        } else if let Some(op) = node.op_as::<OptBinUnicast>() {
            op.binop.name()
        } else {
            continue;
        };
        if !(name == "Mul" || name == "Add") || node.inputs.len() != 2 {
            continue;
        }
        let (a, b) = (model.outlet_fact(node.inputs[0])?, model.outlet_fact(node.inputs[1])?);
        if a.datum_type != f32::datum_type() || b.datum_type != f32::datum_type() {
            continue;
        }
        let (Some(sa), Some(sb)) = (a.shape.as_concrete(), b.shape.as_concrete()) else { continue };
        let r = sa.len();
        if sb.len() != r || r < 2 {
            continue;
        }
        // Scale vectors shared by every image, or one per image.
        let per_image = r >= 3 && sb[0] == sa[0] && sa[0] > 1;
        let channel_last = name == "Mul"
            && sb[r - 1] == sa[r - 1]
            && sa[r - 1] > 1
            && (sb[0] == 1 || per_image)
            && sb[1..r - 1].iter().all(|&d| d == 1)
            && sa[usize::from(per_image)..r - 1].iter().product::<usize>() > 1;
        let plane_bias = name == "Add"
            && r >= 3
            && sa[0] > 1
            && sb[0] == 1
            && sb[1] == sa[1]
            && sb[2..].iter().all(|&d| d == 1)
            && sa[2..].iter().product::<usize>() > 1;
        let patch = if channel_last {
            TypedModelPatch::replace_single_op(model, node, &node.inputs, ChannelScale)?
        } else if plane_bias {
            TypedModelPatch::replace_single_op(model, node, &node.inputs, PlaneBias)?
        } else {
            continue;
        };
        patch.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::math::mul;

    /// `x op s`, `s` broadcast by tract's rules.
    fn model(op: Box<dyn TypedOp>, x: &[usize], s: &[usize]) -> TypedModel {
        let mut m = TypedModel::default();
        let a = m.add_source("x", f32::fact(x)).unwrap();
        let b = m.add_source("s", f32::fact(s)).unwrap();
        let y = m.wire_node("op", op, &[a, b]).unwrap();
        m.select_output_outlets(&y).unwrap();
        m
    }

    /// Runs `generic` and its rewrite on the same inputs; the rewrite must
    /// have put an `O` in and give the same bits.
    fn bit_identical<O: Op>(generic: TypedModel, x: &[usize], s: &[usize]) {
        let mut rewritten = generic.clone();
        assert_eq!(rewrite(&mut rewritten).unwrap(), 1, "{x:?} {s:?}");
        assert!(rewritten.nodes.iter().any(|n| n.op_is::<O>()));
        let nx: usize = x.iter().product();
        let ns: usize = s.iter().product();
        let xv: Vec<f32> = (0..nx).map(|i| (i as f32 * 0.37).sin()).collect();
        let sv: Vec<f32> = (0..ns).map(|i| 1.0 + (i as f32 * 0.11).cos()).collect();
        let inputs = || {
            tvec![Tensor::from_shape(x, &xv).unwrap().into_tvalue(), Tensor::from_shape(s, &sv).unwrap().into_tvalue(),]
        };
        let want = generic.into_runnable().unwrap().run(inputs()).unwrap().remove(0);
        let got = rewritten.into_runnable().unwrap().run(inputs()).unwrap().remove(0);
        assert_eq!(want.into_tensor(), got.into_tensor(), "{x:?} {s:?}");
    }

    /// Runs `m` and its rewrite, which must put an `O` in and give tract's
    /// reduction within `1e-5`.
    fn sums_match<O: Op>(m: TypedModel, shape: &[usize]) {
        let mut rewritten = m.clone();
        assert_eq!(rewrite(&mut rewritten).unwrap(), 1, "{shape:?}");
        assert!(rewritten.nodes.iter().any(|n| n.op_is::<O>()), "{shape:?}");
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let input = || tvec![Tensor::from_shape(shape, &data).unwrap().into_tvalue()];
        let want = m.into_runnable().unwrap().run(input()).unwrap().remove(0).into_tensor();
        let got = rewritten.into_runnable().unwrap().run(input()).unwrap().remove(0).into_tensor();
        crate::ops::flat::assert_tensors_close(&want, &got, 1e-5, &format!("{shape:?}"));
    }

    fn reduce(shape: &[usize], axes: &[usize]) -> TypedModel {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact(shape)).unwrap();
        let y = m.wire_node("sum", Reduce::new(axes.into(), Reducer::Sum), &[x]).unwrap();
        m.select_output_outlets(&y).unwrap();
        m
    }

    #[test]
    fn rewrite_is_bit_identical_to_the_generic_multiply() {
        for channels in [6, 96, 144] {
            let (x, s) = ([1, 5, 3, channels], [1, 1, 1, channels]);
            bit_identical::<ChannelScale>(model(Box::new(mul()), &x, &s), &x, &s);
            // A batch: one scale vector per image.
            let (x, s) = ([3, 5, 3, channels], [3, 1, 1, channels]);
            bit_identical::<ChannelScale>(model(Box::new(mul()), &x, &s), &x, &s);
        }
        // One scale vector for a batch.
        let (x, s) = ([2, 16, 16, 96], [1, 1, 1, 96]);
        bit_identical::<ChannelScale>(model(Box::new(mul()), &x, &s), &x, &s);
    }

    /// tract's optimiser turns some of these multiplies into its unicast
    /// op first (EfficientNet's first block's scale); the rewrite takes
    /// that form too. tract makes that op only when the channel count is a
    /// multiple of its vector size in bytes, which depends on the CPU (16
    /// on arm64, 32 with AVX2, 64 with AVX-512), so the test asks tract
    /// for that size instead of assuming one: 32 channels gave the unicast
    /// op on AVX2 and the generic multiply on AVX-512.
    #[test]
    fn optimised_unicast_multiply_is_rewritten() {
        let channels = 2 * tract_onnx::tract_core::internal::vector_size();
        eprintln!("tract vector size {} bytes: {channels} channels", channels / 2);
        let (x, s) = ([1, 8, 8, channels], [1, 1, 1, channels]);
        let optimized = model(Box::new(mul()), &x, &s).into_optimized().unwrap();
        assert!(
            optimized.nodes.iter().any(|n| n.op_is::<OptBinUnicast>()),
            "tract no longer makes a unicast op for {channels} channels"
        );
        bit_identical::<ChannelScale>(optimized, &x, &s);
    }

    #[test]
    fn batched_plane_bias_is_bit_identical_to_the_generic_add() {
        let (x, s) = ([3, 6, 4, 5], [1, 6, 1, 1]);
        bit_identical::<PlaneBias>(model(Box::new(tract_onnx::tract_core::ops::math::add()), &x, &s), &x, &s);
    }

    #[test]
    fn spatial_sums_match_tract_reduce() {
        let cases = [(vec![1, 7, 5, 32], vec![1, 2]), (vec![6, 4, 96], vec![0, 1]), (vec![4, 3, 5, 32], vec![1, 2])];
        for (shape, axes) in cases {
            sums_match::<SpatialSum>(reduce(&shape, &axes), &shape);
        }
    }

    #[test]
    fn folded_constants_get_natural_strides() {
        let values: Vec<f32> = (0..16).map(|i| i as f32 * 0.5).collect();
        let mut bias = Tensor::from_shape(&[16], &values).unwrap();
        for axis in [0, 2, 3] {
            bias.insert_axis(axis).unwrap();
        }
        assert_eq!(bias.shape(), &[1, 16, 1, 1]);
        // If this fails, tract keeps inserted axes natural and
        // `natural_constants` can go.
        assert!(!natural(&bias), "insert_axis left natural strides");
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, 16, 4, 4])).unwrap();
        let b = m.add_const("b", bias).unwrap();
        let y = m.wire_node("add", tract_onnx::tract_core::ops::math::add(), &[x, b]).unwrap();
        m.select_output_outlets(&y).unwrap();
        assert_eq!(rewrite(&mut m).unwrap(), 1);
        let konst = m.node(b.node).op_as::<Const>().unwrap().val().clone();
        assert!(natural(&konst));
        assert_eq!(konst.shape(), &[1, 16, 1, 1]);
        assert_eq!(konst.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap(), &values[..]);
        assert_eq!(m.outlet_fact(b).unwrap().konst.as_deref(), Some(&*konst));
    }

    #[test]
    fn plane_sums_match_tract_reduce() {
        for shape in [vec![1, 320, 2, 2], vec![3, 24, 16, 16], vec![2, 5, 7], vec![2, 16, 32, 32]] {
            let r = shape.len();
            sums_match::<PlaneSum>(reduce(&shape, &(2..r).collect::<Vec<_>>()), &shape);
        }
        // The feature pools of a grouped layout, `[N, 1, C, H, W]`.
        for shape in [vec![2, 1, 112, 4, 4], vec![2, 1, 16, 32, 32]] {
            sums_match::<PlaneSum>(reduce(&shape, &[3, 4]), &shape);
        }
        // Not planes: a channel summed with a spatial axis, or a kept axis
        // after a summed one.
        for (shape, axes) in [(vec![2, 3, 4, 5], vec![1, 3]), (vec![2, 3, 4, 5], vec![2])] {
            let mut m = reduce(&shape, &axes);
            rewrite(&mut m).unwrap();
            assert!(!m.nodes.iter().any(|n| n.op_is::<PlaneSum>()), "{shape:?} {axes:?}");
        }
    }

    #[test]
    fn other_broadcasts_are_left_alone() {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, 6, 4, 4])).unwrap();
        let s = m.add_source("s", f32::fact([1, 6, 1, 1])).unwrap();
        let y = m.wire_node("per_channel_first", mul(), &[x, s]).unwrap();
        // A sum over the channels and one spatial axis: neither a spatial
        // sum nor a plane sum.
        let z = m.wire_node("pool", Reduce::new(tvec![1, 3], Reducer::Sum), &y).unwrap();
        m.select_output_outlets(&z).unwrap();
        assert_eq!(rewrite(&mut m).unwrap(), 0);
    }
}
