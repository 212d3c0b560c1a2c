//! Tract tensors as flat `f32` slices, for the ops this crate adds to
//! tract's graph: their loops walk values in row-major order, which a
//! tensor's storage is unless tract left it with other strides.

use tract_onnx::tract_core::internal::*;

/// Whether `t`'s storage is its elements in row-major order, so that a flat
/// slice walks it (tract's own binary ops check the same before their fast
/// path).
pub(crate) fn natural(t: &Tensor) -> bool {
    t.len() == t.shape().iter().product::<usize>() && t.strides() == &*Tensor::natural_strides(t.shape())
}

/// Runs `f` on `x`'s values in row-major order, copying them only when
/// `x` is stored otherwise.
pub(crate) fn with_values<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> TractResult<R>) -> TractResult<R> {
    if natural(x) {
        f(x.try_as_plain_ram()?.as_slice::<f32>()?)
    } else {
        f(&x.to_plain_array_view::<f32>()?.iter().copied().collect::<Vec<_>>())
    }
}

/// Asserts that `got` has `want`'s values within `tol` relative to
/// `1 + |want|`, naming `what` when not.
#[cfg(test)]
pub(crate) fn assert_close(want: &[f32], got: &[f32], tol: f32, what: &str) {
    assert_eq!(want.len(), got.len(), "{what}: lengths");
    for (a, b) in want.iter().zip(got) {
        assert!((a - b).abs() <= tol * (1.0 + a.abs()), "{what}: {a} vs {b}");
    }
}

/// [`assert_close`] for two tensors of the same shape.
#[cfg(test)]
pub(crate) fn assert_tensors_close(want: &Tensor, got: &Tensor, tol: f32, what: &str) {
    assert_eq!(want.shape(), got.shape(), "{what}: shapes");
    with_values(want, |w| {
        with_values(got, |g| {
            assert_close(w, g, tol, what);
            Ok(())
        })
    })
    .unwrap();
}
