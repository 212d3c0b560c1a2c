//! The head's estimator settings: how the shared covariance is regularised,
//! which class prior the scores use, and which transform features go through
//! before any statistic sees them.

use crate::linalg::{frobenius_sq, row_start, trace};
pub use crate::moments::Weighting;
use serde::{Deserialize, Serialize};

/// Regularisation applied to the pooled covariance `Sigma = A / z` before it
/// is factored.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Regularizer {
    /// `Sigma + lambda I` (the seed used `lambda = 1e-6`).
    Ridge(f64),
    /// `(1 - a) Sigma + a (tr(Sigma) / D) I` with a fixed `a` in `[0, 1]`.
    Shrinkage(f64),
    /// Shrinkage with `a` from the Oracle Approximating Shrinkage formula
    /// (Chen et al. 2010). It needs only `Sigma` and its sample count, which a
    /// streaming summary has; Ledoit-Wolf needs the fourth moments of the
    /// individual samples, which it does not keep.
    Oas,
}

/// Log prior added to each class's score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Prior {
    /// `log n_c`, the seed's choice. With a few captured samples per new class
    /// it pulls predictions toward the big base classes.
    LogCount,
    /// Equal priors.
    Uniform,
}

impl Prior {
    /// The log prior of a class learned from `count` samples.
    #[inline]
    pub fn log_prior(self, count: u64) -> f64 {
        match self {
            Prior::LogCount => libm::log(count.max(1) as f64),
            Prior::Uniform => 0.0,
        }
    }
}

/// What a frame's novelty score measures: how far it lies from the classes
/// the head knows, the number compared with the "unknown" threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum NoveltyScore {
    /// The smallest squared Mahalanobis distance to a class mean (less the
    /// class mean's noise under [`HeadSettings::debias`]). Manifests and
    /// statistics written before the choice existed read as this.
    #[default]
    Distance,
    /// The same distance, less the amount by which each class's own average
    /// squared distance (its whitened spread per sample) exceeds the head's
    /// pooled average. Why: the shared covariance is the count-weighted
    /// pool, so a class learned on the device from a few hundred frames
    /// barely moves it; where such a class varies in directions the base
    /// classes do not, its own images lie further out than a base class's,
    /// and a threshold calibrated on base classes answers "unknown" to most
    /// of them (Fashion-MNIST, 500 frames: 43% of Sandals kept). Shifting
    /// each class by its excess keeps the calibrated share of every class;
    /// the price is that images near a wide class are kept too (see
    /// bench/accuracy.md, "The unknown answer").
    OwnSpread,
}

/// Settings that can change at run time: they only change how the stored
/// statistics are turned into a classifier, so the head refactors and keeps
/// every class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeadSettings {
    /// How the pooled covariance is kept invertible.
    pub regularizer: Regularizer,
    /// The class prior added to each discriminant.
    pub prior: Prior,
    /// Subtract from each class's squared distances the noise energy of its
    /// estimated mean (see [`crate::head::GaussianHead::spread`]). Matters
    /// for classes learned from a few samples; off in the seed estimator.
    /// Manifests written before it existed read as off.
    #[serde(default)]
    pub debias: bool,
    /// What the novelty score measures; it only changes which frames are
    /// answered "unknown", never the class ranking.
    #[serde(default)]
    pub novelty: NoveltyScore,
}

impl HeadSettings {
    /// `Err(what)` if the regulariser's parameter is out of its range (a
    /// ridge must be finite and non-negative, a shrinkage in `[0, 1]`).
    pub fn check(&self) -> Result<(), &'static str> {
        match self.regularizer {
            Regularizer::Ridge(l) if !(l.is_finite() && l >= 0.0) => Err("ridge is not a finite non-negative number"),
            Regularizer::Shrinkage(a) if !(0.0..=1.0).contains(&a) => Err("shrinkage is not in [0, 1]"),
            _ => Ok(()),
        }
    }
}

/// Tukey's power transform `x -> max(x + shift, 0)^exponent`. SiLU features
/// reach down to about -0.28, so a shift makes them non-negative first.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Power {
    /// Added before the power (makes SiLU outputs non-negative).
    pub shift: f32,
    /// The power (Tukey's `0.5` is a square root).
    pub exponent: f32,
}

/// Feature transform applied before statistics are gathered. It is part of
/// the statistics (means and scatter live in transformed space), so it is
/// fixed for the life of a head and stored in its statistics file.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Transform {
    /// Tukey's power transform, first, when set.
    pub power: Option<Power>,
    /// Subtract a centre (the mean of the base classes' features, stored with
    /// the statistics) and scale to unit L2 norm.
    pub center_l2: bool,
}

impl Transform {
    /// Features as the backbone gives them.
    pub const IDENTITY: Transform = Transform { power: None, center_l2: false };

    /// `Err(what)` if a parameter would make every transformed feature NaN
    /// or infinite: a shift that is not finite, an exponent that is not a
    /// positive finite number. Files and manifests are checked with it, so a
    /// corrupt one is refused instead of turning every score into NaN.
    pub fn check(&self) -> Result<(), &'static str> {
        match self.power {
            Some(p) if !p.shift.is_finite() => Err("Tukey power shift is not finite"),
            Some(p) if !(p.exponent.is_finite() && p.exponent > 0.0) => {
                Err("Tukey power exponent is not a positive finite number")
            }
            _ => Ok(()),
        }
    }

    /// Applies the transform to `x`, writing `out`. `center` is used only
    /// when `center_l2` is set.
    pub fn apply(&self, x: &[f32], center: &[f64], out: &mut [f64]) {
        match self.power {
            Some(p) => {
                let (shift, e) = (f64::from(p.shift), f64::from(p.exponent));
                for (o, &v) in out.iter_mut().zip(x) {
                    let s = f64::from(v) + shift;
                    *o = if s > 0.0 { libm::pow(s, e) } else { 0.0 };
                }
            }
            None => {
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = f64::from(v);
                }
            }
        }
        if self.center_l2 {
            let mut sq = 0.0;
            for (o, &c) in out.iter_mut().zip(center) {
                *o -= c;
                sq += *o * *o;
            }
            if sq > 0.0 {
                let inv = 1.0 / libm::sqrt(sq);
                out.iter_mut().for_each(|o| *o *= inv);
            }
        }
    }
}

/// Named presets for the `--estimator` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Estimator {
    /// The write-up's estimator exactly: mean of per-class biased
    /// covariances, `+ 1e-6 I`, `log n_c` prior.
    Seed,
    /// Count-weighted pooled covariance with shrinkage toward the mean
    /// variance (`1e-4`, the best value a reference run found) and a uniform
    /// prior, which does not drown classes learned from few samples.
    Pooled,
}

impl Estimator {
    /// How the preset pools class scatters.
    pub fn weighting(self) -> Weighting {
        match self {
            Estimator::Seed => Weighting::ClassMean,
            Estimator::Pooled => Weighting::Count,
        }
    }

    /// The preset's run-time settings.
    pub fn settings(self) -> HeadSettings {
        match self {
            Estimator::Seed => HeadSettings {
                regularizer: Regularizer::Ridge(1e-6),
                prior: Prior::LogCount,
                debias: false,
                novelty: NoveltyScore::Distance,
            },
            Estimator::Pooled => HeadSettings {
                regularizer: Regularizer::Shrinkage(1e-4),
                prior: Prior::Uniform,
                debias: true,
                novelty: NoveltyScore::OwnSpread,
            },
        }
    }
}

/// Turns a packed covariance `cov` (already divided by its normaliser) into
/// its regularised form in place. `samples` is the effective sample count
/// used by OAS. Returns the shrinkage or ridge actually applied.
pub fn regularize(cov: &mut [f64], dim: usize, regularizer: Regularizer, samples: f64) -> f64 {
    let d = dim as f64;
    let mu = trace(cov, dim) / d;
    let (keep, add) = match regularizer {
        Regularizer::Ridge(lambda) => (1.0, lambda),
        Regularizer::Shrinkage(a) => {
            let a = a.clamp(0.0, 1.0);
            (1.0 - a, a * mu)
        }
        Regularizer::Oas => {
            let a = oas_shrinkage(cov, dim, mu, samples);
            (1.0 - a, a * mu)
        }
    };
    if keep != 1.0 {
        cov.iter_mut().for_each(|v| *v *= keep);
    }
    for i in 0..dim {
        cov[row_start(i) + i] += add;
    }
    match regularizer {
        Regularizer::Ridge(lambda) => lambda,
        _ => 1.0 - keep,
    }
}

/// OAS shrinkage as scikit-learn computes it: with `mu = tr/D`,
/// `alpha = mean(Sigma^2)`, `a = min((alpha + mu^2) / ((n + 1)(alpha - mu^2/D)), 1)`.
pub fn oas_shrinkage(cov: &[f64], dim: usize, mu: f64, samples: f64) -> f64 {
    let d = dim as f64;
    let alpha = frobenius_sq(cov, dim) / (d * d);
    let num = alpha + mu * mu;
    let den = (samples + 1.0) * (alpha - mu * mu / d);
    if den <= 0.0 || !den.is_finite() {
        1.0
    } else {
        (num / den).min(1.0)
    }
}
