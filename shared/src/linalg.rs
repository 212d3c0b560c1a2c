//! Dense kernels on packed symmetric and triangular matrices.
//!
//! Every matrix here is a `D x D` symmetric (or lower-triangular) matrix
//! stored as its lower triangle, row by row: element `(i, j)` with `j <= i`
//! lives at `i * (i + 1) / 2 + j`. Row `i` is then one contiguous slice of
//! `i + 1` values, which is what the Cholesky factorisation and the forward
//! substitution walk, so their inner loops are plain dot products over
//! contiguous memory. Packing halves the memory of a dense matrix (3.3 MB
//! instead of 6.6 MB per matrix at D = 1280 in f32, twice that in f64).
//!
//! Why not `nalgebra::Cholesky`: it needs an owned, dense, heap-allocated
//! matrix for a run-time dimension, which breaks both the fixed footprint and
//! `no_std` without `alloc`. nalgebra stays the f64 reference in the tests
//! and the peer in the benchmark.
//!
//! Nothing here allocates; slices of the wrong length are caller bugs and
//! panic in debug builds through the indexing.

/// Number of stored values of a packed `d x d` symmetric matrix.
#[inline]
pub const fn tri_len(d: usize) -> usize {
    d * (d + 1) / 2
}

/// Offset of row `i` in a packed matrix.
#[inline]
pub const fn row_start(i: usize) -> usize {
    i * (i + 1) / 2
}

/// Element `(i, j)` of a packed symmetric matrix, either order of indices.
#[inline]
pub fn sym_get(p: &[f64], i: usize, j: usize) -> f64 {
    let (r, c) = if j <= i { (i, j) } else { (j, i) };
    p[row_start(r) + c]
}

/// Dot product with four independent accumulators, so the compiler can keep
/// several lanes busy: a single running sum is a serial dependency chain
/// that it may not reorder for floats.
#[inline]
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f64; 4];
    let mut ca = a.chunks_exact(4);
    let mut cb = b.chunks_exact(4);
    for (x, y) in (&mut ca).zip(&mut cb) {
        acc[0] += x[0] * y[0];
        acc[1] += x[1] * y[1];
        acc[2] += x[2] * y[2];
        acc[3] += x[3] * y[3];
    }
    let mut tail = 0.0;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// `dot` of an f32 vector with an f64 one, accumulated in f64.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f64]) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f64; 4];
    let mut ca = a.chunks_exact(4);
    let mut cb = b.chunks_exact(4);
    for (x, y) in (&mut ca).zip(&mut cb) {
        acc[0] += f64::from(x[0]) * y[0];
        acc[1] += f64::from(x[1]) * y[1];
        acc[2] += f64::from(x[2]) * y[2];
        acc[3] += f64::from(x[3]) * y[3];
    }
    let mut tail = 0.0;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += f64::from(*x) * y;
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// `y += alpha * x`.
#[inline]
pub fn axpy(y: &mut [f64], alpha: f64, x: &[f64]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

/// Symmetric rank-one update of a packed matrix: `P += alpha * x x^T`.
pub fn syr(p: &mut [f64], alpha: f64, x: &[f64]) {
    let d = x.len();
    debug_assert_eq!(p.len(), tri_len(d));
    for (i, &xi) in x.iter().enumerate() {
        let s = alpha * xi;
        if s == 0.0 {
            continue;
        }
        let row = &mut p[row_start(i)..row_start(i) + i + 1];
        axpy(row, s, &x[..=i]);
    }
}

/// `P += sum_j alpha_j x_j x_j^T` for `k = alphas.len()` vectors stored one
/// after another in `xs` (`k * D` values). The same additions, in the same
/// order per element, as `k` calls of [`syr`]: bit for bit their result.
/// What it changes is memory traffic: each row of `P` is read and written
/// once for all `k` vectors (it stays in L1 while they pass over it), where
/// `k` rank-one updates stream the whole matrix `k` times. At D = 1808 the
/// matrix is 13 MiB, far past the caches, so one pass is most of the cost.
pub fn syr_batch(p: &mut [f64], alphas: &[f64], xs: &[f64]) {
    let d = if alphas.is_empty() { return } else { xs.len() / alphas.len() };
    debug_assert_eq!(p.len(), tri_len(d));
    for i in 0..d {
        let row = &mut p[row_start(i)..row_start(i) + i + 1];
        for (j, &alpha) in alphas.iter().enumerate() {
            let x = &xs[j * d..(j + 1) * d];
            let s = alpha * x[i];
            if s != 0.0 {
                axpy(row, s, &x[..=i]);
            }
        }
    }
}

/// `P += alpha * Q` for two packed matrices of the same size.
pub fn add_scaled(p: &mut [f64], alpha: f64, q: &[f64]) {
    debug_assert_eq!(p.len(), q.len());
    axpy(p, alpha, q);
}

/// Trace of a packed symmetric matrix.
pub fn trace(p: &[f64], d: usize) -> f64 {
    (0..d).map(|i| p[row_start(i) + i]).sum()
}

/// Squared Frobenius norm of a packed symmetric matrix (off-diagonal
/// entries count twice, as in the dense matrix).
pub fn frobenius_sq(p: &[f64], d: usize) -> f64 {
    let mut total = 0.0;
    for i in 0..d {
        let row = &p[row_start(i)..row_start(i) + i + 1];
        let off = dot(&row[..i], &row[..i]);
        total += 2.0 * off + row[i] * row[i];
    }
    total
}

/// The factorisation met a pivot that was not positive: the matrix is not
/// (numerically) positive definite. `row` is where it stopped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NotPositiveDefinite {
    /// The row whose pivot failed.
    pub row: usize,
    /// The pivot found there (zero, negative or NaN).
    pub pivot: f64,
}

/// In-place Cholesky factorisation `A = L L^T` of a packed symmetric matrix
/// (Cholesky-Banachiewicz, row by row). On success `p` holds `L`. On error
/// `p` is left partly overwritten: callers that must stay atomic factor a
/// copy, or can rebuild it (the head refactors from its committed scatter).
pub fn cholesky_in_place(p: &mut [f64], d: usize) -> Result<(), NotPositiveDefinite> {
    debug_assert_eq!(p.len(), tri_len(d));
    for i in 0..d {
        let ri = row_start(i);
        // Split so that rows j < i (already factored) can be read while row
        // i is written.
        let (done, rest) = p.split_at_mut(ri);
        let row_i = &mut rest[..=i];
        for j in 0..i {
            let rj = row_start(j);
            let row_j = &done[rj..rj + j + 1];
            let s = row_i[j] - dot(&row_i[..j], &row_j[..j]);
            row_i[j] = s / row_j[j];
        }
        let pivot = row_i[i] - dot(&row_i[..i], &row_i[..i]);
        if !pivot.is_finite() || pivot <= 0.0 {
            return Err(NotPositiveDefinite { row: i, pivot });
        }
        row_i[i] = libm::sqrt(pivot);
    }
    Ok(())
}

/// Solves `L y = b` in place (`b` becomes `y`) for a packed lower factor.
pub fn forward_solve(l: &[f64], b: &mut [f64]) {
    let d = b.len();
    for i in 0..d {
        let ri = row_start(i);
        let row = &l[ri..ri + i + 1];
        let s = b[i] - dot(&row[..i], &b[..i]);
        b[i] = s / row[i];
    }
}

/// [`forward_solve`] for `bs.len() / D` right-hand sides stored one after
/// another, in one pass over `L` (bit for bit the single solves' results;
/// see [`syr_batch`] for why one pass matters).
pub fn forward_solve_batch(l: &[f64], bs: &mut [f64], d: usize) {
    if d == 0 {
        return;
    }
    for i in 0..d {
        let ri = row_start(i);
        let row = &l[ri..ri + i + 1];
        for b in bs.chunks_exact_mut(d) {
            let s = b[i] - dot(&row[..i], &b[..i]);
            b[i] = s / row[i];
        }
    }
}

/// `|L^-1 v|^2 = v' (L L^T)^-1 v`, a squared Mahalanobis norm; `v` is
/// overwritten with `L^-1 v`.
pub fn whitened_norm_sq(l: &[f64], v: &mut [f64]) -> f64 {
    forward_solve(l, v);
    dot(v, v)
}

/// Solves `L^T x = y` in place (`y` becomes `x`) for a packed lower factor.
/// Walks the rows of `L` from the bottom, so memory access stays contiguous.
pub fn backward_solve(l: &[f64], y: &mut [f64]) {
    let d = y.len();
    for i in (0..d).rev() {
        let ri = row_start(i);
        let row = &l[ri..ri + i + 1];
        let xi = y[i] / row[i];
        y[i] = xi;
        axpy(&mut y[..i], -xi, &row[..i]);
    }
}

/// Solves `(L L^T) x = b` in place.
pub fn cholesky_solve(l: &[f64], b: &mut [f64]) {
    forward_solve(l, b);
    backward_solve(l, b);
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec::Vec;

    fn dense_to_packed(m: &nalgebra::DMatrix<f64>) -> Vec<f64> {
        let d = m.nrows();
        let mut p = Vec::with_capacity(tri_len(d));
        for i in 0..d {
            for j in 0..=i {
                p.push(m[(i, j)]);
            }
        }
        p
    }

    fn spd(d: usize, seed: u64) -> nalgebra::DMatrix<f64> {
        let mut s = seed;
        let mut next = move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        };
        let a = nalgebra::DMatrix::from_fn(d, d + 3, |_, _| next());
        &a * a.transpose() + nalgebra::DMatrix::identity(d, d) * 1e-3
    }

    #[test]
    fn cholesky_matches_nalgebra() {
        for d in [1, 2, 5, 17, 64] {
            let a = spd(d, d as u64);
            let mut p = dense_to_packed(&a);
            cholesky_in_place(&mut p, d).unwrap();
            let reference = a.clone().cholesky().unwrap().l();
            for i in 0..d {
                for j in 0..=i {
                    let got = p[row_start(i) + j];
                    let want = reference[(i, j)];
                    assert!((got - want).abs() <= 1e-10 * (1.0 + want.abs()), "d={d} ({i},{j})");
                }
            }
            let b: Vec<f64> = (0..d).map(|i| (i as f64).sin()).collect();
            let mut x = b.clone();
            cholesky_solve(&p, &mut x);
            let want = a.clone().cholesky().unwrap().solve(&nalgebra::DVector::from_vec(b));
            for i in 0..d {
                assert!((x[i] - want[i]).abs() <= 1e-8 * (1.0 + want[i].abs()));
            }
        }
    }

    #[test]
    fn cholesky_rejects_indefinite() {
        // [[1, 2], [2, 1]] has eigenvalues 3 and -1.
        let mut p = [1.0, 2.0, 1.0];
        let err = cholesky_in_place(&mut p, 2).unwrap_err();
        assert_eq!(err.row, 1);
        let mut nan = [f64::NAN];
        assert!(cholesky_in_place(&mut nan, 1).is_err());
    }

    #[test]
    fn syr_trace_frobenius() {
        let x = [1.0, -2.0, 3.0];
        let mut p = [0.0; 6];
        syr(&mut p, 2.0, &x);
        assert_eq!(p, [2.0, -4.0, 8.0, 6.0, -12.0, 18.0]);
        assert_eq!(trace(&p, 3), 28.0);
        let dense: f64 = x.iter().flat_map(|a| x.iter().map(move |b| (2.0 * a * b) * (2.0 * a * b))).sum();
        assert!((frobenius_sq(&p, 3) - dense).abs() < 1e-12);
        assert_eq!(sym_get(&p, 0, 2), sym_get(&p, 2, 0));
    }
}
