//! Synthetic data and plain f64 references shared by the tests.
#![allow(dead_code)]

use gaussedge_shared::config::{HeadSettings, Transform, Weighting};
use gaussedge_shared::head::{GaussianHead, HeadConfig, OwnedStorage};
use gaussedge_shared::label;
use nalgebra::{DMatrix, DVector};
use rand_xoshiro::rand_core::{Rng as _, SeedableRng};
use rand_xoshiro::SplitMix64;

/// A deterministic generator (`rand_xoshiro`'s SplitMix64, the state
/// the seed itself), so every failure reproduces.
pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(SplitMix64::seed_from_u64(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-300);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// `classes` Gaussian classes in `dim` dimensions sharing a random
/// covariance, `per_class[c]` samples each, as f32 features.
pub fn gaussian_classes(dim: usize, per_class: &[usize], seed: u64) -> Vec<Vec<Vec<f32>>> {
    let mut rng = Rng::new(seed);
    let mix = DMatrix::from_fn(dim, dim, |i, j| if i == j { 1.0 } else { 0.3 * rng.normal() / (dim as f64).sqrt() });
    per_class
        .iter()
        .map(|&n| {
            let mean = DVector::from_fn(dim, |_, _| 2.0 * rng.normal());
            (0..n)
                .map(|_| {
                    let z = DVector::from_fn(dim, |_, _| rng.normal());
                    let x = &mean + &mix * z;
                    x.iter().map(|&v| v as f32).collect()
                })
                .collect()
        })
        .collect()
}

pub fn head(dim: usize, capacity: usize, weighting: Weighting, settings: HeadSettings) -> GaussianHead<OwnedStorage> {
    GaussianHead::with_capacity(HeadConfig { dim, capacity, weighting, settings, transform: Transform::IDENTITY })
        .unwrap()
}

/// Feeds samples to the class being learned.
pub fn learn_samples<S: gaussedge_shared::head::Storage>(head: &mut GaussianHead<S>, samples: &[Vec<f32>]) {
    for x in samples {
        head.learn(x).unwrap();
    }
}

/// Learns each class of `data` as `c0`, `c1`, ... in order.
pub fn learn_all(head: &mut GaussianHead<OwnedStorage>, data: &[Vec<Vec<f32>>], first: usize) {
    for (c, samples) in data.iter().enumerate() {
        head.begin(label(&format!("c{}", first + c)).unwrap()).unwrap();
        for x in samples {
            head.learn(x).unwrap();
        }
        head.commit().unwrap();
    }
}

pub fn to_f64(x: &[f32]) -> DVector<f64> {
    DVector::from_iterator(x.len(), x.iter().map(|&v| v as f64))
}

/// Per-class mean and biased covariance (`/ n`), two-pass, dense.
pub fn class_moments(samples: &[Vec<f32>]) -> (DVector<f64>, DMatrix<f64>, usize) {
    let d = samples[0].len();
    let n = samples.len();
    let mut mean = DVector::zeros(d);
    for x in samples {
        mean += to_f64(x);
    }
    mean /= n as f64;
    let mut cov = DMatrix::zeros(d, d);
    for x in samples {
        let c = to_f64(x) - &mean;
        cov += &c * c.transpose();
    }
    (mean, cov / n as f64, n)
}

pub fn max_abs(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}
