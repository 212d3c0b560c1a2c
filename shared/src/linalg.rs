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
//!
//! Each kernel is written once, in [`portable`], with its order of
//! operations fixed in the source (sums in [`LANES`] lanes, no fused
//! multiply-add); on x86-64 with `std` it also runs as an AVX2 or AVX-512
//! build of the same source, picked at run time by one `dispatch!`. Every
//! build gives the same bits, so statistics learned on one CPU score the
//! same on another, and a test holds the builds to it.

/// Calls `portable::$f(args)` compiled for AVX2 where the CPU has it (found
/// at run time, so one binary serves every x86-64), else as built. The
/// kernels fix their order of operations in the source (lanes, no fused
/// multiply-add), so both give the same bits: the wider build only packs
/// the same additions into wider registers. The one dispatch point of this
/// crate (but for [`cholesky_in_place`], whose blocked form only pays with
/// AVX-512's 32 registers); builds without `std` (a microcontroller) use
/// the portable code.
macro_rules! dispatch {
    (portable::$f:ident($($a:expr),*)) => {{
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        #[allow(unsafe_code)]
        {
            if isa::avx512() {
                // SAFETY: the CPU has AVX-512F, checked just above.
                return unsafe { wide::avx512::$f($($a),*) };
            }
            if isa::avx2() {
                // SAFETY: the CPU has AVX2, checked just above.
                return unsafe { wide::avx2::$f($($a),*) };
            }
        }
        portable::$f($($a),*)
    }};
}

/// Which build of the kernels [`dot`] and the others run on this CPU:
/// `"avx512"`, `"avx2"` or `"portable"` (tests and benchmarks print it; the
/// results are the same bits whichever it is).
pub fn kernels() -> &'static str {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    {
        if isa::avx512() {
            return "avx512";
        }
        if isa::avx2() {
            return "avx2";
        }
    }
    "portable"
}

/// Run-time CPU detection, cached by the standard library.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
mod isa {
    extern crate std;

    #[inline]
    pub fn avx2() -> bool {
        std::arch::is_x86_feature_detected!("avx2")
    }

    #[inline]
    pub fn avx512() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
    }
}

/// The kernels compiled with wider vectors enabled: thin wrappers into
/// which the portable bodies (`#[inline(always)]`) are inlined.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[allow(unsafe_code)]
mod wide {
    macro_rules! wrap {
        ($(fn $f:ident($($a:ident: $t:ty),*) $(-> $r:ty)?;)*) => {
            pub mod avx2 {
                use super::super::{portable, NotPositiveDefinite};
                $(
                    #[target_feature(enable = "avx2")]
                    pub unsafe fn $f($($a: $t),*) $(-> $r)? {
                        portable::$f($($a),*)
                    }
                )*
            }
            pub mod avx512 {
                use super::super::{portable, NotPositiveDefinite};
                $(
                    #[target_feature(enable = "avx512f")]
                    pub unsafe fn $f($($a: $t),*) $(-> $r)? {
                        portable::$f($($a),*)
                    }
                )*
            }
        };
    }

    wrap! {
        fn dot(a: &[f64], b: &[f64]) -> f64;
        fn syr_batch(p: &mut [f64], alphas: &[f64], xs: &[f64]);
        fn cholesky_rows(p: &mut [f64], d: usize) -> Result<(), NotPositiveDefinite>;
        fn forward_solve(l: &[f64], b: &mut [f64]);
        fn forward_solve_batch(l: &[f64], bs: &mut [f64], d: usize);
        fn forward_solve_batch_f32(l: &[f32], bs: &mut [f64], d: usize);
        fn backward_solve(l: &[f64], y: &mut [f64]);
        fn whitened_norm_sq_f32(l: &[f32], v: &mut [f64]) -> f64;
    }

    /// The blocked factorisation, built for AVX-512 only: see
    /// [`super::cholesky_in_place`] for why the other builds go row by row.
    pub mod avx512_blocked {
        use super::super::{portable, NotPositiveDefinite};

        #[target_feature(enable = "avx512f")]
        pub unsafe fn cholesky_in_place(p: &mut [f64], d: usize) -> Result<(), NotPositiveDefinite> {
            portable::cholesky_in_place(p, d)
        }
    }
}

/// The kernels as written: what every CPU computes, and what builds without
/// run-time detection run. Public so tests can hold the dispatched kernels
/// to them bit for bit.
pub mod portable {
    use super::{row_start, tri_len, NotPositiveDefinite, CHOLESKY_ROWS, LANES};

    /// See [`super::dot`].
    #[inline(always)]
    pub fn dot(a: &[f64], b: &[f64]) -> f64 {
        dot_lanes(a, b)
    }

    /// The one dot product, of an f64 or f32 vector (each value widened
    /// exactly) with an f64 one: element `i` into lane `i % LANES` in
    /// order, the lanes summed by a fixed tree, then the tail.
    #[inline(always)]
    fn dot_lanes<A: Copy + Into<f64>>(a: &[A], b: &[f64]) -> f64 {
        debug_assert_eq!(a.len(), b.len());
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let mut acc = [0.0f64; LANES];
        let mut ca = a.chunks_exact(LANES);
        let mut cb = b.chunks_exact(LANES);
        for (x, y) in (&mut ca).zip(&mut cb) {
            // Index loops over fixed-size arrays: LLVM keeps `acc` in
            // registers and vectorises across the lanes.
            for l in 0..LANES {
                acc[l] += x[l].into() * y[l];
            }
        }
        let mut tail = 0.0;
        for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
            tail += (*x).into() * y;
        }
        sum_lanes(acc, tail)
    }

    /// The last step of every dot product: the lanes summed by the fixed
    /// tree, then the tail.
    #[inline(always)]
    fn sum_lanes(mut acc: [f64; LANES], tail: f64) -> f64 {
        let mut width = LANES / 2;
        while width > 0 {
            for l in 0..width {
                acc[l] += acc[l + width];
            }
            width /= 2;
        }
        acc[0] + tail
    }

    /// See [`super::syr_batch`]. Row by row; within a row, a tile of
    /// `LANES` elements is loaded once, every vector's term added to it in
    /// order, and stored once.
    #[inline(always)]
    pub fn syr_batch(p: &mut [f64], alphas: &[f64], xs: &[f64]) {
        let k = alphas.len();
        let Some(d) = xs.len().checked_div(k) else { return };
        debug_assert_eq!(p.len(), tri_len(d));
        // The vectors' scales for this row; a zero scale skips its vector,
        // as `syr` does (adding `+0` would turn a `-0` into `+0`).
        const MAX: usize = 64;
        let mut s = [0.0f64; MAX];
        let mut which = [0usize; MAX];
        for start in (0..k).step_by(MAX) {
            let batch = &alphas[start..k.min(start + MAX)];
            for i in 0..d {
                let mut active = 0;
                for (j, &alpha) in batch.iter().enumerate() {
                    let v = alpha * xs[(start + j) * d + i];
                    if v != 0.0 {
                        s[active] = v;
                        which[active] = (start + j) * d;
                        active += 1;
                    }
                }
                if active == 0 {
                    continue;
                }
                let row = &mut p[row_start(i)..row_start(i) + i + 1];
                let full = (i + 1) / LANES * LANES;
                for c in (0..full).step_by(LANES) {
                    let mut tile = [0.0f64; LANES];
                    tile.copy_from_slice(&row[c..c + LANES]);
                    for a in 0..active {
                        let x = &xs[which[a] + c..which[a] + c + LANES];
                        let sa = s[a];
                        for l in 0..LANES {
                            tile[l] += sa * x[l];
                        }
                    }
                    row[c..c + LANES].copy_from_slice(&tile);
                }
                for (c, r) in row.iter_mut().enumerate().skip(full) {
                    for a in 0..active {
                        *r += s[a] * xs[which[a] + c];
                    }
                }
            }
        }
    }

    /// See [`super::cholesky_in_place`]. Rows go in blocks of
    /// [`CHOLESKY_ROWS`]: each finished row `j` left of a block is read
    /// once for the whole block (its dot products with the block's rows run
    /// side by side, [`dot_rows`]), rather than once per row. Each value is
    /// still `(a_ij - dot(l_i[..j], l_j[..j])) / l_jj` with the dot product
    /// in [`dot`]'s order, so the factor is the same bits as row by row
    /// ([`super::cholesky_rows`], which the tests hold it to).
    #[inline(always)]
    pub fn cholesky_in_place(p: &mut [f64], d: usize) -> Result<(), NotPositiveDefinite> {
        debug_assert_eq!(p.len(), tri_len(d));
        const R: usize = CHOLESKY_ROWS;
        let mut i0 = 0;
        while i0 < d {
            let rows = R.min(d - i0);
            let mut first = 0;
            if rows == R {
                let (done, rest) = p.split_at_mut(row_start(i0));
                // The block's rows, each `i + 1` long, one after another.
                let (r0, rest) = rest.split_at_mut(i0 + 1);
                let (r1, rest) = rest.split_at_mut(i0 + 2);
                let (r2, rest) = rest.split_at_mut(i0 + 3);
                let r3 = &mut rest[..i0 + 4];
                for j in 0..i0 {
                    let rj = row_start(j);
                    let row_j = &done[rj..rj + j + 1];
                    let s = dot_rows([&r0[..j], &r1[..j], &r2[..j], &r3[..j]], &row_j[..j]);
                    r0[j] = (r0[j] - s[0]) / row_j[j];
                    r1[j] = (r1[j] - s[1]) / row_j[j];
                    r2[j] = (r2[j] - s[2]) / row_j[j];
                    r3[j] = (r3[j] - s[3]) / row_j[j];
                }
                first = i0;
            }
            // The block's own triangle and pivots, row by row (and the last
            // rows, fewer than a block, whole).
            for i in i0..i0 + rows {
                finish_row(p, i, first)?;
            }
            i0 += rows;
        }
        Ok(())
    }

    /// See [`super::cholesky_rows`].
    #[inline(always)]
    pub fn cholesky_rows(p: &mut [f64], d: usize) -> Result<(), NotPositiveDefinite> {
        debug_assert_eq!(p.len(), tri_len(d));
        for i in 0..d {
            finish_row(p, i, 0)?;
        }
        Ok(())
    }

    /// Row `i` of the factor from column `first` on (the columns before it
    /// are done), then its pivot: each value `(a_ij - dot(l_i[..j],
    /// l_j[..j])) / l_jj`, the pivot `sqrt(a_ii - dot(l_i, l_i))`.
    #[inline(always)]
    fn finish_row(p: &mut [f64], i: usize, first: usize) -> Result<(), NotPositiveDefinite> {
        // Split so that rows j < i (already factored) can be read while
        // row i is written.
        let (done, rest) = p.split_at_mut(row_start(i));
        let row_i = &mut rest[..=i];
        for j in first..i {
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
        Ok(())
    }

    /// [`CHOLESKY_ROWS`] dot products of `a[r]` with one `b`, each in
    /// exactly [`dot_lanes`]'s order: `b` is loaded once for all of them.
    #[inline(always)]
    fn dot_rows(a: [&[f64]; CHOLESKY_ROWS], b: &[f64]) -> [f64; CHOLESKY_ROWS] {
        let n = b.len();
        let [a0, a1, a2, a3] = a.map(|r| &r[..n]);
        let (mut s0, mut s1, mut s2, mut s3) = ([0.0f64; LANES], [0.0f64; LANES], [0.0f64; LANES], [0.0f64; LANES]);
        let chunks = b
            .chunks_exact(LANES)
            .zip(a0.chunks_exact(LANES))
            .zip(a1.chunks_exact(LANES))
            .zip(a2.chunks_exact(LANES))
            .zip(a3.chunks_exact(LANES));
        for ((((y, x0), x1), x2), x3) in chunks {
            // Index loops over fixed-size arrays, as in `dot_lanes`: the
            // four accumulators stay in registers.
            for l in 0..LANES {
                s0[l] += x0[l] * y[l];
                s1[l] += x1[l] * y[l];
                s2[l] += x2[l] * y[l];
                s3[l] += x3[l] * y[l];
            }
        }
        let full = n / LANES * LANES;
        let finish = |acc: [f64; LANES], x: &[f64]| {
            let mut tail = 0.0;
            for (x, y) in x[full..].iter().zip(&b[full..]) {
                tail += x * y;
            }
            sum_lanes(acc, tail)
        };
        [finish(s0, a0), finish(s1, a1), finish(s2, a2), finish(s3, a3)]
    }

    /// See [`super::forward_solve`].
    #[inline(always)]
    pub fn forward_solve(l: &[f64], b: &mut [f64]) {
        forward_lanes(l, b)
    }

    /// The one forward substitution, for a factor in f64 or rounded to f32
    /// (each value widened exactly): row by row, [`dot_lanes`] of the row
    /// with the values solved so far.
    #[inline(always)]
    fn forward_lanes<A: Copy + Into<f64>>(l: &[A], b: &mut [f64]) {
        let d = b.len();
        for i in 0..d {
            let ri = row_start(i);
            let row = &l[ri..ri + i + 1];
            let s = b[i] - dot_lanes(&row[..i], &b[..i]);
            b[i] = s / row[i].into();
        }
    }

    /// See [`super::forward_solve_batch`].
    #[inline(always)]
    pub fn forward_solve_batch(l: &[f64], bs: &mut [f64], d: usize) {
        forward_batch_lanes(l, bs, d)
    }

    /// See [`super::forward_solve_batch_f32`].
    #[inline(always)]
    pub fn forward_solve_batch_f32(l: &[f32], bs: &mut [f64], d: usize) {
        forward_batch_lanes(l, bs, d)
    }

    /// The one batched forward substitution, for a factor in f64 or rounded
    /// to f32: each row of `L` read once for every right-hand side, each
    /// right-hand side's values as [`forward_lanes`] computes them.
    #[inline(always)]
    fn forward_batch_lanes<A: Copy + Into<f64>>(l: &[A], bs: &mut [f64], d: usize) {
        if d == 0 {
            return;
        }
        for i in 0..d {
            let ri = row_start(i);
            let row = &l[ri..ri + i + 1];
            for b in bs.chunks_exact_mut(d) {
                let s = b[i] - dot_lanes(&row[..i], &b[..i]);
                b[i] = s / row[i].into();
            }
        }
    }

    /// See [`super::whitened_norm_sq_f32`].
    #[inline(always)]
    pub fn whitened_norm_sq_f32(l: &[f32], v: &mut [f64]) -> f64 {
        forward_lanes(l, v);
        dot(v, v)
    }

    /// See [`super::backward_solve`].
    #[inline(always)]
    pub fn backward_solve(l: &[f64], y: &mut [f64]) {
        let d = y.len();
        for i in (0..d).rev() {
            let ri = row_start(i);
            let row = &l[ri..ri + i + 1];
            let xi = y[i] / row[i];
            y[i] = xi;
            super::axpy(&mut y[..i], -xi, &row[..i]);
        }
    }
}

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

/// Lanes of the dot product's accumulator: element `i` of a dot product
/// is added to lane `i % LANES`, in order, and the lanes are summed by a
/// fixed tree at the end. Sixteen independent sums keep four AVX2 (or
/// eight SSE2) adders busy: one running sum is a serial chain of float
/// additions, which the compiler may not reorder, and at one element per
/// add latency it, not memory, bounded the novelty's triangular solve.
/// The order is part of the result: every ISA gives the same bits.
pub const LANES: usize = 16;

/// Rows the factorisation takes together: each finished row is streamed
/// from memory once per block of this many later rows. At D = 1808 the
/// factor is 13 MB, beyond the caches, and row by row the factorisation was
/// most of a device's boot.
pub const CHOLESKY_ROWS: usize = 4;

/// Dot product in [`LANES`] fixed lanes (see there): the same bits on
/// every CPU, vectorised where the CPU allows.
#[inline]
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    dispatch!(portable::dot(a, b))
}

/// `y += alpha * x`. Always inlined, so the kernels' wide builds vectorise
/// it too.
#[inline(always)]
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
/// once for all `k` vectors, a register tile of it at a time, where `k`
/// rank-one updates stream the whole matrix `k` times (13 MiB at D = 1808,
/// far past the caches) and load and store each element `k` times.
pub fn syr_batch(p: &mut [f64], alphas: &[f64], xs: &[f64]) {
    dispatch!(portable::syr_batch(p, alphas, xs))
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
///
/// With AVX-512 the rows go in blocks ([`portable::cholesky_in_place`]:
/// 1.4x faster at D = 1808, `cargo bench -p gaussedge-shared --bench
/// cholesky`); a block's accumulators fill 16 of its 32 vector registers.
/// With 16 registers (AVX2) or SSE2's they spill, and the SSE2 build
/// measured 0.97x of row by row, so every other CPU runs
/// [`cholesky_rows`]. Both give the same bits.
pub fn cholesky_in_place(p: &mut [f64], d: usize) -> Result<(), NotPositiveDefinite> {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    #[allow(unsafe_code)]
    if isa::avx512() {
        // SAFETY: the CPU has AVX-512F, checked just above.
        return unsafe { wide::avx512_blocked::cholesky_in_place(p, d) };
    }
    cholesky_rows(p, d)
}

/// [`cholesky_in_place`] row by row (Cholesky-Banachiewicz), every
/// finished row streamed once per later row: the same bits, slower. The
/// reference the blocked factorisation is tested against and the peer its
/// benchmark (`cargo bench -p gaussedge-shared --bench cholesky`) runs.
pub fn cholesky_rows(p: &mut [f64], d: usize) -> Result<(), NotPositiveDefinite> {
    dispatch!(portable::cholesky_rows(p, d))
}

/// Solves `L y = b` in place (`b` becomes `y`) for a packed lower factor.
pub fn forward_solve(l: &[f64], b: &mut [f64]) {
    dispatch!(portable::forward_solve(l, b))
}

/// [`forward_solve`] for `bs.len() / D` right-hand sides stored one after
/// another, in one pass over `L` (bit for bit the single solves' results;
/// see [`syr_batch`] for why one pass matters).
pub fn forward_solve_batch(l: &[f64], bs: &mut [f64], d: usize) {
    dispatch!(portable::forward_solve_batch(l, bs, d))
}

/// [`forward_solve_batch`] against a factor rounded to f32 (see
/// [`round_to_f32`]), every sum in f64: half the bytes to stream. The head
/// learns a class's whitened spread through it, a figure that only shifts
/// each class's distances by `spread / (n (n - 1))`, so the solve's relative
/// `O(eps32 cond(L) sqrt(D))` error (see [`whitened_norm_sq_f32`]) reaches
/// a score scaled down by that much again.
pub fn forward_solve_batch_f32(l: &[f32], bs: &mut [f64], d: usize) {
    dispatch!(portable::forward_solve_batch_f32(l, bs, d))
}

/// `|L^-1 v|^2 = v' (L L^T)^-1 v`, a squared Mahalanobis norm; `v` is
/// overwritten with `L^-1 v`.
pub fn whitened_norm_sq(l: &[f64], v: &mut [f64]) -> f64 {
    forward_solve(l, v);
    dot(v, v)
}

/// [`whitened_norm_sq`] against a factor rounded to f32 (see
/// [`round_to_f32`]), with `v` and every sum in f64: half the bytes to
/// stream, which is what the solve waits for once a frame's backbone has
/// evicted the factor from the caches. Rounding `L` perturbs it by at most
/// `eps32 |L|` element-wise, so the solve moves by a relative
/// `O(eps32 cond(L) sqrt(D))` (a test holds it to that).
pub fn whitened_norm_sq_f32(l: &[f32], v: &mut [f64]) -> f64 {
    dispatch!(portable::whitened_norm_sq_f32(l, v))
}

/// `dst[i] = src[i] as f32`, round to nearest.
pub fn round_to_f32(src: &[f64], dst: &mut [f32]) {
    dst.iter_mut().zip(src).for_each(|(d, s)| *d = *s as f32);
}

/// Views f64 storage as twice as many f32 values: the head keeps its f32
/// copy of the factor inside its one f64 arena.
#[allow(unsafe_code)]
pub fn as_f32(v: &[f64]) -> &[f32] {
    // SAFETY: the pointer is 8-aligned (f32 needs 4), the bytes are
    // initialised and every bit pattern is a valid f32; the length covers
    // exactly the same bytes, and the borrow is carried over.
    unsafe { core::slice::from_raw_parts(v.as_ptr().cast::<f32>(), 2 * v.len()) }
}

/// [`as_f32`], mutably.
#[allow(unsafe_code)]
pub fn as_f32_mut(v: &mut [f64]) -> &mut [f32] {
    // SAFETY: as in `as_f32`; the exclusive borrow is carried over.
    unsafe { core::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<f32>(), 2 * v.len()) }
}

/// Solves `L^T x = y` in place (`y` becomes `x`) for a packed lower factor.
/// Walks the rows of `L` from the bottom, so memory access stays contiguous.
pub fn backward_solve(l: &[f64], y: &mut [f64]) {
    dispatch!(portable::backward_solve(l, y))
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

    /// The blocked factorisation is the row-by-row one, bit for bit, at
    /// sizes around the block and lane widths; and so are its failures.
    #[test]
    fn blocked_cholesky_is_the_row_by_row_one() {
        for d in [1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 33, 64, 65, 130] {
            let mut blocked = dense_to_packed(&spd(d, 7 + d as u64));
            let (mut rows, mut portable) = (blocked.clone(), blocked.clone());
            cholesky_in_place(&mut blocked, d).unwrap();
            cholesky_rows(&mut rows, d).unwrap();
            // The blocked loop as built, whatever this CPU dispatches to
            // (only AVX-512 runs it in `cholesky_in_place`).
            portable::cholesky_in_place(&mut portable, d).unwrap();
            assert!(blocked.iter().zip(&rows).all(|(a, b)| a.to_bits() == b.to_bits()), "d={d}");
            assert!(portable.iter().zip(&rows).all(|(a, b)| a.to_bits() == b.to_bits()), "d={d}, portable");
            // A matrix that fails at row k fails there in both.
            for k in [0, d / 2, d - 1] {
                let mut bad = dense_to_packed(&spd(d, 9));
                bad[row_start(k) + k] = -1.0;
                let (mut again, mut built) = (bad.clone(), bad.clone());
                let (a, b) = (cholesky_in_place(&mut bad, d).unwrap_err(), cholesky_rows(&mut again, d).unwrap_err());
                let c = portable::cholesky_in_place(&mut built, d).unwrap_err();
                assert_eq!((a.row, a.pivot.to_bits()), (b.row, b.pivot.to_bits()), "d={d} k={k}");
                assert_eq!((c.row, c.pivot.to_bits()), (b.row, b.pivot.to_bits()), "d={d} k={k}, portable");
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
