//! Streaming first and second moments: Welford's per-sample update, Chan et
//! al.'s exact merge of two summaries, its inverse, and the pooling of class
//! scatters into the shared covariance.
//!
//! These are the only places the head's statistics change, whether the data
//! arrives one sample at a time on a device, as whole summaries merged on the
//! host, or as a class removed again. The functions work on caller-owned
//! slices (packed scatter, see [`crate::linalg`]) and never allocate;
//! [`ClassSummary`] wraps them with owned buffers where `alloc` is available.

use crate::linalg::{axpy, syr, tri_len};
use serde::{Deserialize, Serialize};

/// How class scatters are pooled into the shared covariance.
///
/// The pooled accumulator is `A = sum_c weight_c * S_c` and its normaliser
/// `z = sum_c norm_c`; the covariance is `A / z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Weighting {
    /// `weight_c = 1`, `norm_c = n_c - 1`: the count-weighted, unbiased
    /// within-class covariance `S / (N - C)` of LDA.
    Count,
    /// `weight_c = 1 / n_c`, `norm_c = 1`: the unweighted mean of the
    /// per-class (biased) covariances, as in the seed write-up.
    ClassMean,
}

impl Weighting {
    /// Weight of a class scatter in the accumulator.
    #[inline]
    pub fn weight(self, count: u64) -> f64 {
        match self {
            Weighting::Count => 1.0,
            Weighting::ClassMean => {
                if count == 0 {
                    0.0
                } else {
                    1.0 / count as f64
                }
            }
        }
    }

    /// Contribution of a class to the normaliser.
    #[inline]
    pub fn norm(self, count: u64) -> f64 {
        match self {
            Weighting::Count => count.saturating_sub(1) as f64,
            Weighting::ClassMean => {
                if count == 0 {
                    0.0
                } else {
                    1.0
                }
            }
        }
    }
}

/// Adds one sample to a summary (Welford): `n += 1; d = x - m; m += d / n;
/// S += d (x - m)^T`, the last written as `S += (n - 1) / n * d d^T` so it is
/// one symmetric rank-one update. `delta` is scratch of length `D`.
pub fn welford_push(count: &mut u64, mean: &mut [f64], scatter: &mut [f64], x: &[f64], delta: &mut [f64]) {
    debug_assert_eq!(scatter.len(), tri_len(mean.len()));
    let coeff = welford_mean(count, mean, x, delta);
    syr(scatter, coeff, delta);
}

/// The mean half of [`welford_push`]: counts `x`, moves the mean, writes
/// `d = x - m_old` into `delta` and returns the coefficient the scatter
/// update `S += coeff * d d^T` needs, so a caller can defer that update
/// and apply several at once ([`crate::linalg::syr_batch`]).
pub fn welford_mean(count: &mut u64, mean: &mut [f64], x: &[f64], delta: &mut [f64]) -> f64 {
    let n = *count + 1;
    let inv = 1.0 / n as f64;
    for ((d, m), &xi) in delta.iter_mut().zip(mean.iter_mut()).zip(x) {
        *d = xi - *m;
        *m += *d * inv;
    }
    *count = n;
    (n - 1) as f64 * inv
}

/// Merges summary `b` into summary `a` (Chan, Golub & LeVeque 1979):
/// `n = na + nb; delta = mb - ma; ma += delta nb / n;
/// Sa += Sb + delta delta^T na nb / n`. Exact in exact arithmetic and
/// independent of order. `delta` is scratch of length `D`.
#[allow(clippy::too_many_arguments)]
pub fn chan_merge(
    count_a: &mut u64,
    mean_a: &mut [f64],
    scatter_a: &mut [f64],
    count_b: u64,
    mean_b: &[f64],
    scatter_b: &[f64],
    delta: &mut [f64],
) {
    if count_b == 0 {
        return;
    }
    let coeff = chan_delta(*count_a, mean_a, count_b, mean_b, delta);
    axpy(mean_a, count_b as f64 / (*count_a + count_b) as f64, delta);
    axpy(scatter_a, 1.0, scatter_b);
    syr(scatter_a, coeff, delta);
    *count_a += count_b;
}

/// The cross term of a Chan merge: writes `delta = mb - ma` and returns
/// `na nb / (na + nb)`, the weight of `delta delta^T` in the merged scatter.
/// The merged mean is `ma + delta nb / (na + nb)`.
pub fn chan_delta(count_a: u64, mean_a: &[f64], count_b: u64, mean_b: &[f64], delta: &mut [f64]) -> f64 {
    for ((d, &ma), &mb) in delta.iter_mut().zip(mean_a).zip(mean_b) {
        *d = mb - ma;
    }
    let n = (count_a + count_b) as f64;
    if n == 0.0 {
        0.0
    } else {
        count_a as f64 * count_b as f64 / n
    }
}

/// The exact inverse of [`chan_merge`]: removes the samples summarised by
/// `b` from `a`, which must contain them. Returns `false` (and changes
/// nothing) when `b` holds more samples than `a`.
#[allow(clippy::too_many_arguments)]
pub fn chan_remove(
    count_a: &mut u64,
    mean_a: &mut [f64],
    scatter_a: &mut [f64],
    count_b: u64,
    mean_b: &[f64],
    scatter_b: &[f64],
    delta: &mut [f64],
) -> bool {
    if count_b > *count_a {
        return false;
    }
    if count_b == 0 {
        return true;
    }
    let n = *count_a as f64;
    let nb = count_b as f64;
    let na = n - nb;
    if na == 0.0 {
        *count_a = 0;
        mean_a.iter_mut().for_each(|m| *m = 0.0);
        scatter_a.iter_mut().for_each(|s| *s = 0.0);
        return true;
    }
    for ((d, ma), &mb) in delta.iter_mut().zip(mean_a.iter_mut()).zip(mean_b) {
        // Mean of the remaining samples, then the same delta as the merge.
        let rest = (n * *ma - nb * mb) / na;
        *d = mb - rest;
        *ma = rest;
    }
    axpy(scatter_a, -1.0, scatter_b);
    syr(scatter_a, -na * nb / n, delta);
    *count_a -= count_b;
    true
}

/// Adds a class's scatter to a pooled accumulator (`sign = 1.0`) or removes
/// it again (`sign = -1.0`).
pub fn pool_class(weighting: Weighting, accum: &mut [f64], norm: &mut f64, count: u64, scatter: &[f64], sign: f64) {
    axpy(accum, sign * weighting.weight(count), scatter);
    *norm += sign * weighting.norm(count);
}

#[cfg(feature = "alloc")]
pub use owned::ClassSummary;

#[cfg(feature = "alloc")]
mod owned {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    /// Count, mean and packed scatter of one class, with owned buffers.
    /// Used by the host (fitting, merging statistics) and as the unit the
    /// property tests compare against a plain reference.
    #[derive(Debug, Clone, PartialEq)]
    pub struct ClassSummary {
        /// Samples summarised.
        pub count: u64,
        /// Their mean.
        pub mean: Vec<f64>,
        /// `sum (x - mean)(x - mean)^T`, packed lower triangle.
        pub scatter: Vec<f64>,
        delta: Vec<f64>,
    }

    impl ClassSummary {
        /// The summary of no samples in `dim` dimensions.
        pub fn new(dim: usize) -> Self {
            ClassSummary { count: 0, mean: vec![0.0; dim], scatter: vec![0.0; tri_len(dim)], delta: vec![0.0; dim] }
        }

        /// The dimension.
        pub fn dim(&self) -> usize {
            self.mean.len()
        }

        /// Welford update with one sample; allocation-free.
        pub fn push(&mut self, x: &[f64]) {
            assert_eq!(x.len(), self.dim(), "sample dimension");
            welford_push(&mut self.count, &mut self.mean, &mut self.scatter, x, &mut self.delta);
        }

        /// Exact merge of another summary of the same dimension.
        pub fn merge(&mut self, other: &ClassSummary) {
            assert_eq!(other.dim(), self.dim(), "summary dimension");
            chan_merge(
                &mut self.count,
                &mut self.mean,
                &mut self.scatter,
                other.count,
                &other.mean,
                &other.scatter,
                &mut self.delta,
            );
        }

        /// Exact removal of a sub-summary; `false` if `other` is larger.
        pub fn remove(&mut self, other: &ClassSummary) -> bool {
            assert_eq!(other.dim(), self.dim(), "summary dimension");
            chan_remove(
                &mut self.count,
                &mut self.mean,
                &mut self.scatter,
                other.count,
                &other.mean,
                &other.scatter,
                &mut self.delta,
            )
        }

        /// Biased covariance `S / n` (what the seed calls a class variance).
        pub fn covariance_biased(&self) -> Vec<f64> {
            let n = self.count.max(1) as f64;
            self.scatter.iter().map(|s| s / n).collect()
        }
    }
}
