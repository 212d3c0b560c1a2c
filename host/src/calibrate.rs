//! The "unknown" threshold: where on the novelty score a device stops
//! naming the nearest class.
//!
//! It is chosen on held-out images of the base classes (see
//! [`crate::split`]) as the score that keeps a target share of them (the
//! true-positive rate, 95% by default), and written into the statistics so
//! the device uses it from boot and a pushed or flashed head brings its
//! own. The scores are those the device computes (the shared head's
//! novelty), so host and device draw the line in the same place. A table of
//! the scores' quantiles goes into the manifest, so another rate can be set
//! later without the images.

use anyhow::{ensure, Result};
use gaussedge_bundle::{Calibration, HeldOut};
use gaussedge_shared::head::{GaussianHead, OwnedStorage};

/// The true-positive rate a bundle is calibrated for unless told otherwise.
pub const DEFAULT_TPR: f64 = 0.95;

/// Rates recorded in the manifest's quantile table.
const RATES: [f64; 18] =
    [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995, 1.0];

/// Novelty scores of the rows of `features` under `head`, ascending.
pub fn scores(head: &mut GaussianHead<OwnedStorage>, features: &[f32]) -> Result<Vec<f64>> {
    let mut s =
        features.chunks_exact(head.dim()).map(|x| Ok(head.predict(x, None)?.novelty)).collect::<Result<Vec<f64>>>()?;
    s.sort_by(f64::total_cmp);
    Ok(s)
}

/// The smallest score that at least `tpr` of `sorted` do not exceed: a
/// device flags a score above it, so that share is kept.
pub fn quantile(sorted: &[f64], tpr: f64) -> f64 {
    let n = sorted.len();
    let k = ((tpr * n as f64).ceil() as usize).clamp(1, n);
    sorted[k - 1]
}

/// Calibrates `head` on `held` (its rows were not in the fit) for `tpr`.
pub fn calibrate(
    head: &mut GaussianHead<OwnedStorage>,
    held: &[f32],
    tpr: f64,
    held_out: HeldOut,
) -> Result<Calibration> {
    ensure!(tpr > 0.0 && tpr <= 1.0, "the true-positive rate must be in (0, 1], not {tpr}");
    let sorted = scores(head, held)?;
    ensure!(!sorted.is_empty(), "no held-out images of the base classes to calibrate the threshold on");
    ensure!(sorted.iter().all(|s| s.is_finite()), "a held-out image scored a non-finite novelty");
    let mut quantiles: Vec<[f64; 2]> = RATES.iter().map(|&r| [r, quantile(&sorted, r)]).collect();
    if !RATES.contains(&tpr) {
        quantiles.push([tpr, quantile(&sorted, tpr)]);
        quantiles.sort_by(|a, b| a[0].total_cmp(&b[0]));
    }
    Ok(Calibration { target_tpr: tpr, threshold: quantile(&sorted, tpr), samples: sorted.len(), held_out, quantiles })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quantile_keeps_at_least_the_rate_asked_for() {
        let s: Vec<f64> = (1..=20).map(f64::from).collect();
        for (tpr, t) in [(0.95, 19.0), (0.5, 10.0), (1.0, 20.0), (0.01, 1.0), (0.951, 20.0)] {
            let q = quantile(&s, tpr);
            assert_eq!(q, t, "rate {tpr}");
            let kept = s.iter().filter(|&&x| x <= q).count() as f64 / s.len() as f64;
            assert!(kept >= tpr, "rate {tpr}: kept {kept}");
        }
    }
}
