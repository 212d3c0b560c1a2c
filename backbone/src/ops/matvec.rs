//! The squeeze-excitation's matrix-vector products, outside tract's
//! general matrix product.
//!
//! EfficientNet's squeeze-excitation runs two 1x1 convolutions per block on
//! the pooled channel vector (for b0: 32 products, 8x32 to 48x1152).
//! tract declutters each into an einsum and lowers it to its matrix
//! product, whose AVX-512 kernel for a one-column right-hand side is 128
//! rows tall: a 48-row weight is padded to 128, and the 32 products took
//! 93 to 145 µs of a 1 ms frame at 6 GMAC/s or less. [`MatVec`] streams
//! the weights once, vectorised by [`crate::kernels::simd`]: a short output as one
//! dot product per output (a running output vector would wait on its own
//! store every input), a long one as `y += x[i] * W[i, :]`, in L1.

use std::sync::Arc;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::einsum::EinSum;

/// `y = W x` for an input of `I` elements and an output of `O`, whatever
/// unit axes either carries; the weights are held by the op.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MatVec {
    /// `[O, I]` (one dot product per output) when `O <= I`, else `[I, O]`
    /// (one row of output weights per input element).
    pub weights: Arc<Tensor>,
    /// Whether `weights` is `[O, I]`.
    pub by_output: bool,
    /// The output's shape (`O` elements, unit axes elsewhere).
    pub output: TVec<usize>,
}

impl MatVec {
    /// `(I, O)`.
    fn dims(&self) -> (usize, usize) {
        let s = self.weights.shape();
        if self.by_output {
            (s[1], s[0])
        } else {
            (s[0], s[1])
        }
    }
}

impl Op for MatVec {
    fn name(&self) -> StaticName {
        "MatVec".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let (i, o) = self.dims();
        Ok(vec![format!("{i} -> {o}")])
    }

    op_as_typed_op!();
}

impl EvalOp for MatVec {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let (i, o) = self.dims();
        ensure!(x.len() == i, "MatVec takes {i} values, got {:?}", x.shape());
        let weights = self.weights.try_as_plain_ram()?;
        let weights = weights.as_slice::<f32>()?;
        let y: Vec<f32> = crate::ops::flat::with_values(&x, |x| {
            Ok(if self.by_output {
                weights.chunks_exact(i).map(|row| crate::kernels::simd::dot(row, x)).collect()
            } else {
                let mut y = vec![0f32; o];
                crate::kernels::simd::gemv_rows(&mut y, x, weights);
                y
            })
        })?;
        Ok(tvec!(Tensor::from_shape(&self.output, &y)?.into_tvalue()))
    }
}

impl TypedOp for MatVec {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&*self.output)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        Ok(tvec!((Cost::FMA(f32::datum_type()), self.weights.len().to_dim())))
    }

    as_op!();
}

/// An f32 einsum `x · W` of a graph with known shapes, whose second input
/// is a constant `[O, I]` matrix: what the ops replacing such einsums
/// ([`MatVec`], [`crate::ops::pointwise::Pointwise`]) read of it.
pub(crate) struct WeightedEinsum {
    pub x_shape: TVec<usize>,
    pub y_shape: TVec<usize>,
    /// `[O, I]`.
    pub w: Arc<Tensor>,
    /// Axis labels of `x` and of the output, one per axis.
    pub xa: Vec<char>,
    pub ya: Vec<char>,
    /// The labels of `W`'s axes, distinct.
    pub o_axis: char,
    pub i_axis: char,
}

/// The node as a [`WeightedEinsum`], or `None`.
pub(crate) fn weighted_einsum(model: &TypedModel, node: &TypedNode) -> TractResult<Option<WeightedEinsum>> {
    let Some(einsum) = node.op_as::<EinSum>() else { return Ok(None) };
    if einsum.q_params.is_some() || einsum.operating_dt != f32::datum_type() || node.inputs.len() != 2 {
        return Ok(None);
    }
    let x = model.outlet_fact(node.inputs[0])?;
    let Some(w) = model.outlet_fact(node.inputs[1])?.konst.clone() else { return Ok(None) };
    let (Some(x_shape), Some(y_shape)) = (x.shape.as_concrete(), node.outputs[0].fact.shape.as_concrete()) else {
        return Ok(None);
    };
    if x.datum_type != f32::datum_type() || w.datum_type() != f32::datum_type() || w.rank() != 2 {
        return Ok(None);
    }
    let (inputs, outputs) = einsum.axes.to_strs();
    let [xa, wa] = &inputs[..] else { return Ok(None) };
    let [ya] = &outputs[..] else { return Ok(None) };
    let (xa, wa, ya): (Vec<char>, Vec<char>, Vec<char>) =
        (xa.chars().collect(), wa.chars().collect(), ya.chars().collect());
    let [o_axis, i_axis] = wa[..] else { return Ok(None) };
    if o_axis == i_axis || xa.len() != x_shape.len() || ya.len() != y_shape.len() {
        return Ok(None);
    }
    Ok(Some(WeightedEinsum { x_shape: x_shape.into(), y_shape: y_shape.into(), w, xa, ya, o_axis, i_axis }))
}

/// The op for an f32 einsum `x · W` where `W` is a constant `[O, I]` and
/// every axis of `x` and of the output but `I` and `O` is a unit axis, or
/// `None`.
fn matvec_of(model: &TypedModel, node: &TypedNode) -> TractResult<Option<MatVec>> {
    let Some(WeightedEinsum { x_shape, y_shape: out_shape, w, xa: xs, ya: ys, o_axis, i_axis }) =
        weighted_einsum(model, node)?
    else {
        return Ok(None);
    };
    let ws = [o_axis, i_axis];
    let (o, i) = (w.shape()[0], w.shape()[1]);
    let unit_but = |axes: &[char], shape: &[usize], keep: char, size: usize| {
        axes.len() == shape.len()
            && axes.iter().filter(|&&a| a == keep).count() == 1
            && axes.iter().zip(shape).all(|(&a, &d)| if a == keep { d == size } else { d == 1 && !ws.contains(&a) })
    };
    let fits = unit_but(&xs, &x_shape, i_axis, i)
        && unit_but(&ys, &out_shape, o_axis, o)
        && !ys.contains(&i_axis)
        && !xs.contains(&o_axis);
    if !fits {
        return Ok(None);
    }
    let view = w.to_plain_array_view::<f32>()?;
    let by_output = o <= i;
    let mut weights = vec![0f32; i * o];
    for r in 0..o {
        for c in 0..i {
            weights[if by_output { r * i + c } else { c * o + r }] = view[[r, c]];
        }
    }
    let shape = if by_output { [o, i] } else { [i, o] };
    Ok(Some(MatVec { weights: Arc::new(Tensor::from_shape(&shape, &weights)?), by_output, output: out_shape }))
}

/// Replaces every matrix-vector einsum of a decluttered graph with
/// [`MatVec`]. Returns how many nodes it replaced.
pub fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(op) = matvec_of(model, node)? else { continue };
        let patch = TypedModelPatch::replace_single_op(model, node, &node.inputs[..1], op)?;
        patch.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(expr: &str, x: &[usize], w: &[usize]) -> TypedModel {
        let mut m = TypedModel::default();
        let a = m.add_source("x", f32::fact(x)).unwrap();
        let values: Vec<f32> = (0..w.iter().product::<usize>()).map(|i| (i as f32 * 0.731).sin()).collect();
        let b = m.add_const("w", Tensor::from_shape(w, &values).unwrap()).unwrap();
        let op = EinSum { axes: expr.parse().unwrap(), operating_dt: f32::datum_type(), q_params: None };
        let y = m.wire_node("fc", op, &[a, b]).unwrap();
        m.select_output_outlets(&y).unwrap();
        m
    }

    #[test]
    fn matches_tract_einsum() {
        let cases: [(&str, &[usize], &[usize]); 4] = [
            ("NHWI,OI->O", &[1, 1, 1, 1152], &[48, 1152]),
            ("I,OI->NHWO", &[48], &[1152, 48]),
            ("HWI,OI->O", &[1, 1, 240], &[10, 240]),
            ("I,OI->HWO", &[10], &[240, 10]),
        ];
        for (expr, x, w) in cases {
            let generic = model(expr, x, w);
            let mut ours = generic.clone();
            assert_eq!(rewrite(&mut ours).unwrap(), 1, "{expr}");
            let data: Vec<f32> = (0..x.iter().product::<usize>()).map(|i| (i as f32 * 0.37).cos()).collect();
            let input = || tvec![Tensor::from_shape(x, &data).unwrap().into_tvalue()];
            let want = generic.into_optimized().unwrap().into_runnable().unwrap().run(input()).unwrap().remove(0);
            let got = ours.into_optimized().unwrap().into_runnable().unwrap().run(input()).unwrap().remove(0);
            crate::ops::flat::assert_tensors_close(&want, &got, 1e-4, expr);
        }
    }

    #[test]
    fn leaves_matrix_products_to_tract() {
        // Four pixels: a real matrix product.
        let mut m = model("NHWI,OI->NHWO", &[1, 2, 2, 16], &[8, 16]);
        assert_eq!(rewrite(&mut m).unwrap(), 0);
    }
}
