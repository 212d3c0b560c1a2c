//! The Gaussian head against straightforward f64 references.

mod common;

use common::*;
use gaussedge_shared::config::{
    oas_shrinkage, Estimator, HeadSettings, Power, Prior, Regularizer, Transform, Weighting,
};
use gaussedge_shared::head::{BorrowedStorage, ClassSlot, GaussianHead, HeadConfig, HeadError, Layout};
use gaussedge_shared::label;
use gaussedge_shared::linalg::tri_len;
use nalgebra::{DMatrix, DVector};

/// A direct transcription of the seed write-up's numpy code: per class the
/// mean and the biased covariance; `z_var` the running unweighted mean of
/// class covariances (`z_var * C / (C + 1) + new / (C + 1)`);
/// `inv(z_var + 1e-6 I)`; scores `A x - B + log(count)`.
struct SeedReference {
    z_mean: Vec<DVector<f64>>,
    z_var: DMatrix<f64>,
    target_count: Vec<f64>,
}

impl SeedReference {
    fn fit_base(classes: &[Vec<Vec<f32>>]) -> Self {
        let d = classes[0][0].len();
        let mut z_var = DMatrix::zeros(d, d);
        let mut z_mean = vec![];
        let mut target_count = vec![];
        for samples in classes {
            let (mean, var, n) = class_moments(samples);
            z_var += var;
            z_mean.push(mean);
            target_count.push(n as f64);
        }
        z_var /= classes.len() as f64;
        SeedReference { z_mean, z_var, target_count }
    }

    fn add_class(&mut self, samples: &[Vec<f32>]) {
        let (mean, var, n) = class_moments(samples);
        let c = self.target_count.len() as f64;
        self.z_mean.push(mean);
        self.z_var = &self.z_var * (c / (c + 1.0)) + var / (c + 1.0);
        self.target_count.push(n as f64);
    }

    fn scores(&self, x: &[f32]) -> Vec<f64> {
        let d = self.z_var.nrows();
        let inv = (&self.z_var + DMatrix::identity(d, d) * 1e-6).try_inverse().unwrap();
        let x = to_f64(x);
        self.z_mean
            .iter()
            .zip(&self.target_count)
            .map(|(m, &n)| {
                let a = &inv * m;
                a.dot(&x) - 0.5 * a.dot(m) + n.ln()
            })
            .collect()
    }
}

fn argmax(v: &[f64]) -> usize {
    v.iter().enumerate().fold(0, |best, (i, &s)| if s > v[best] { i } else { best })
}

#[test]
fn seed_estimator_reproduces_the_write_up_formulas() {
    let dim = 24;
    let data = gaussian_classes(dim, &[60, 45, 80, 50, 70, 30, 55], 7);
    let mut reference = SeedReference::fit_base(&data[..5]);
    let mut head = head(dim, 8, Estimator::Seed.weighting(), Estimator::Seed.settings());
    learn_all(&mut head, &data[..5], 0);
    let test: Vec<&Vec<f32>> = data.iter().flatten().step_by(3).collect();
    let check = |head: &mut GaussianHead<_>, reference: &SeedReference| {
        let mut scores = vec![0.0; 8];
        let mut agree = 0;
        for x in &test {
            let want = reference.scores(x);
            let p = head.predict(x, Some(&mut scores)).unwrap();
            for (c, w) in want.iter().enumerate() {
                assert!((scores[c] - w).abs() <= 1e-6 * (1.0 + w.abs()), "score {c}: {} vs {w}", scores[c]);
            }
            agree += usize::from(p.class == argmax(&want));
        }
        assert_eq!(agree, test.len());
    };
    check(&mut head, &reference);
    for (i, samples) in data[5..].iter().enumerate() {
        reference.add_class(samples);
        head.begin(label(&format!("c{}", 5 + i)).unwrap()).unwrap();
        for x in samples {
            head.learn(x).unwrap();
        }
        head.commit().unwrap();
        check(&mut head, &reference);
    }
}

/// LDA with a count-weighted pooled covariance, regularised, in f64.
fn pooled_reference(
    classes: &[Vec<Vec<f32>>],
    reg: Regularizer,
    prior: Prior,
) -> (Vec<DVector<f64>>, DMatrix<f64>, Vec<f64>) {
    let d = classes[0][0].len();
    let mut scatter = DMatrix::zeros(d, d);
    let (mut total, mut means, mut counts) = (0usize, vec![], vec![]);
    for samples in classes {
        let (mean, cov, n) = class_moments(samples);
        scatter += cov * n as f64;
        total += n;
        means.push(mean);
        counts.push(n as f64);
    }
    let sigma = scatter / (total - classes.len()) as f64;
    let mu = sigma.trace() / d as f64;
    let reg_sigma = match reg {
        Regularizer::Ridge(l) => &sigma + DMatrix::identity(d, d) * l,
        Regularizer::Shrinkage(a) => &sigma * (1.0 - a) + DMatrix::identity(d, d) * (a * mu),
        Regularizer::Oas => {
            // scikit-learn's OAS on the dense matrix.
            let alpha = sigma.iter().map(|v| v * v).sum::<f64>() / (d * d) as f64;
            let n = (total - classes.len()) as f64;
            let a = ((alpha + mu * mu) / ((n + 1.0) * (alpha - mu * mu / d as f64))).min(1.0);
            &sigma * (1.0 - a) + DMatrix::identity(d, d) * (a * mu)
        }
    };
    let priors = counts.iter().map(|&n| if prior == Prior::LogCount { n.ln() } else { 0.0 }).collect();
    (means, reg_sigma.try_inverse().unwrap(), priors)
}

#[test]
fn pooled_estimators_match_the_f64_reference() {
    let dim = 20;
    let data = gaussian_classes(dim, &[50, 70, 5, 40], 11);
    let test: Vec<&Vec<f32>> = data.iter().flatten().collect();
    for reg in [Regularizer::Shrinkage(0.0), Regularizer::Shrinkage(0.2), Regularizer::Ridge(0.5), Regularizer::Oas] {
        for prior in [Prior::Uniform, Prior::LogCount] {
            let settings = HeadSettings { regularizer: reg, prior };
            let mut head = head(dim, 4, Weighting::Count, settings);
            learn_all(&mut head, &data, 0);
            let (means, inv, priors) = pooled_reference(&data, reg, prior);
            let mut scores = vec![0.0; 4];
            for x in &test {
                let p = head.predict(x, Some(&mut scores)).unwrap();
                let xv = to_f64(x);
                let want: Vec<f64> = means
                    .iter()
                    .zip(&priors)
                    .map(|(m, lp)| {
                        let w = &inv * m;
                        w.dot(&xv) - 0.5 * w.dot(m) + lp
                    })
                    .collect();
                let novelty = means.iter().map(|m| (&xv - m).dot(&(&inv * (&xv - m)))).fold(f64::INFINITY, f64::min);
                for c in 0..4 {
                    assert!((scores[c] - want[c]).abs() <= 1e-7 * (1.0 + want[c].abs()), "{reg:?} {prior:?}");
                }
                assert!((p.novelty - novelty).abs() <= 1e-7 * (1.0 + novelty), "novelty {} vs {novelty}", p.novelty);
                assert_eq!(p.class, argmax(&want));
            }
        }
    }
}

#[test]
fn oas_formula_matches_dense_computation() {
    let dim = 6;
    let data = gaussian_classes(dim, &[30], 3);
    let (_, cov, n) = class_moments(&data[0]);
    let mut packed = vec![];
    for i in 0..dim {
        for j in 0..=i {
            packed.push(cov[(i, j)]);
        }
    }
    let mu = cov.trace() / dim as f64;
    let alpha = cov.iter().map(|v| v * v).sum::<f64>() / (dim * dim) as f64;
    let want = ((alpha + mu * mu) / ((n as f64 + 1.0) * (alpha - mu * mu / dim as f64))).min(1.0);
    assert!((oas_shrinkage(&packed, dim, mu, n as f64) - want).abs() < 1e-12);
}

#[test]
fn extending_a_class_equals_learning_it_at_once() {
    let dim = 12;
    let data = gaussian_classes(dim, &[40, 60], 5);
    let settings = Estimator::Pooled.settings();
    let mut once = head(dim, 3, Weighting::Count, settings);
    learn_all(&mut once, &data, 0);

    let mut split = head(dim, 3, Weighting::Count, settings);
    split.begin(label("c0").unwrap()).unwrap();
    learn_samples(&mut split, &data[0]);
    split.commit().unwrap();
    split.begin(label("c1").unwrap()).unwrap();
    learn_samples(&mut split, &data[1][..25]);
    split.commit().unwrap();
    split.begin_extend(label("c1").unwrap()).unwrap();
    learn_samples(&mut split, &data[1][25..]);
    let c = split.commit().unwrap();
    assert_eq!((c.count, c.added), (60, 35));

    assert_eq!(split.slots()[1].count, 60);
    assert!(max_abs(split.mean(1), once.mean(1)) < 1e-12);
    assert!(max_abs(split.pooled(), once.pooled()) < 1e-9);
    assert_eq!(split.scatter_norm(), once.scatter_norm());

    // The seed estimator keeps no per-class scatter, so it cannot extend.
    let mut seed = head(dim, 3, Estimator::Seed.weighting(), Estimator::Seed.settings());
    learn_all(&mut seed, &data[..1], 0);
    assert_eq!(seed.begin_extend(label("c0").unwrap()), Err(HeadError::ExtendUnsupported));
}

#[test]
fn errors_change_nothing() {
    let dim = 8;
    let data = gaussian_classes(dim, &[20, 20, 20], 9);
    let mut h = head(dim, 2, Weighting::Count, Estimator::Pooled.settings());
    assert_eq!(h.predict(&data[0][0], None), Err(HeadError::NoClasses));
    assert_eq!(h.learn(&data[0][0]), Err(HeadError::NotLearning));
    assert_eq!(h.commit(), Err(HeadError::NotLearning));
    assert_eq!(h.abort(), Err(HeadError::NotLearning));
    learn_all(&mut h, &data[..1], 0);
    let before: Vec<f64> = h.pooled().to_vec();

    assert!(matches!(h.begin(label("c0").unwrap()), Err(HeadError::DuplicateLabel(_))));
    assert!(matches!(h.begin_extend(label("nope").unwrap()), Err(HeadError::UnknownClass(_))));
    assert!(matches!(h.forget("nope"), Err(HeadError::UnknownClass(_))));
    h.begin(label("c1").unwrap()).unwrap();
    assert!(matches!(h.begin(label("c2").unwrap()), Err(HeadError::Busy(_))));
    assert_eq!(h.commit(), Err(HeadError::EmptyClass));
    assert_eq!(h.learning(), Some(("c1", 0)), "an empty commit keeps the class staged");
    assert_eq!(h.learn(&[0.0; 3]), Err(HeadError::DimMismatch { expected: 8, got: 3 }));
    let mut nan = data[1][0].clone();
    nan[3] = f32::NAN;
    assert_eq!(h.learn(&nan), Err(HeadError::NonFinite));
    assert_eq!(h.learning(), Some(("c1", 0)));
    h.learn(&data[1][0]).unwrap();
    h.abort().unwrap();
    assert_eq!(h.pooled(), &before[..], "abort leaves the statistics bit-identical");
    assert_eq!(h.class_count(), 1);

    learn_all(&mut h, &data[1..2], 1);
    assert!(matches!(h.begin(label("c9").unwrap()), Err(HeadError::Full { capacity: 2 })));
    assert!(h.predict(&nan, None) == Err(HeadError::NonFinite));
}

#[test]
fn failed_factorisations_are_atomic() {
    let dim = 6;
    // Samples that only vary in 2 of 6 dimensions: singular without
    // regularisation.
    let flat: Vec<Vec<f32>> = (0..10).map(|i| vec![i as f32, (i * i) as f32 * 0.1, 1.0, 1.0, 1.0, 1.0]).collect();
    let bare = HeadSettings { regularizer: Regularizer::Shrinkage(0.0), prior: Prior::Uniform };
    let mut h = head(dim, 3, Weighting::Count, bare);
    h.begin(label("flat").unwrap()).unwrap();
    learn_samples(&mut h, &flat);
    assert!(matches!(h.commit(), Err(HeadError::NotPositiveDefinite { .. })));
    assert_eq!(h.class_count(), 0);
    assert_eq!(h.learning(), None, "a failed commit drops the staged samples");
    assert_eq!(h.predict(&flat[0], None), Err(HeadError::NoClasses));

    // With shrinkage it commits; taking the shrinkage away again must fail
    // and leave every score as it was.
    h.set_settings(Estimator::Pooled.settings()).unwrap();
    h.begin(label("flat").unwrap()).unwrap();
    learn_samples(&mut h, &flat);
    h.commit().unwrap();
    let probe = [3.0f32, 0.5, 1.0, 1.2, 0.9, 1.0];
    let before = h.predict(&probe, None).unwrap();
    assert!(matches!(h.set_settings(bare), Err(HeadError::NotPositiveDefinite { .. })));
    assert_eq!(h.settings(), Estimator::Pooled.settings());
    assert_eq!(h.predict(&probe, None).unwrap(), before);
}

#[test]
fn forgetting_removes_a_class_and_keeps_the_others_exact() {
    let dim = 10;
    let data = gaussian_classes(dim, &[30, 30, 30], 21);
    let mut h = head(dim, 3, Weighting::Count, Estimator::Pooled.settings());
    learn_all(&mut h, &data, 0);
    let mut before = vec![0.0; 3];
    let mut after = vec![0.0; 3];
    let x = &data[2][0];
    h.predict(x, Some(&mut before)).unwrap();
    h.forget("c2").unwrap();
    let p = h.predict(x, Some(&mut after)).unwrap();
    assert_ne!(p.class, 2);
    assert_eq!(after[2], f64::NEG_INFINITY);
    assert_eq!(&after[..2], &before[..2]);
    // The freed slot is reused.
    learn_all(&mut h, &data[2..], 5);
    assert_eq!(h.find("c5"), Some(2));
}

#[test]
fn transforms_equal_feeding_transformed_features() {
    let dim = 9;
    let data = gaussian_classes(dim, &[25, 35], 4);
    let transform = Transform { power: Some(Power { shift: 8.0, exponent: 0.5 }), center_l2: true };
    let center: Vec<f64> = (0..dim).map(|i| 2.5 + 0.1 * i as f64).collect();
    let settings = Estimator::Pooled.settings();
    let mut with =
        GaussianHead::with_capacity(HeadConfig { dim, capacity: 2, weighting: Weighting::Count, settings, transform })
            .unwrap();
    with.set_center(&center).unwrap();
    learn_all(&mut with, &data, 0);

    let apply = |x: &Vec<f32>| -> Vec<f32> {
        let p: Vec<f64> = x.iter().map(|&v| (v as f64 + 8.0).max(0.0).sqrt()).collect();
        let c: Vec<f64> = p.iter().zip(&center).map(|(a, b)| a - b).collect();
        let n = c.iter().map(|v| v * v).sum::<f64>().sqrt();
        c.iter().map(|v| (v / n) as f32).collect()
    };
    let mut without = head(dim, 2, Weighting::Count, settings);
    let pre: Vec<Vec<Vec<f32>>> = data.iter().map(|c| c.iter().map(apply).collect()).collect();
    learn_all(&mut without, &pre, 0);
    for x in data.iter().flatten() {
        let a = with.predict(x, None).unwrap();
        let b = without.predict(&apply(x), None).unwrap();
        assert_eq!(a.class, b.class);
        assert!((a.score - b.score).abs() < 1e-3 * (1.0 + b.score.abs()), "{a:?} {b:?}");
    }
    assert_eq!(with.set_center(&center), Err(HeadError::NotEmpty));
}

#[test]
fn novelty_separates_unseen_classes() {
    let dim = 16;
    let data = gaussian_classes(dim, &[80, 80, 80], 13);
    let mut h = head(dim, 3, Weighting::Count, Estimator::Pooled.settings());
    learn_all(&mut h, &data[..2], 0);
    let known: Vec<f64> = data[..2].iter().flatten().map(|x| h.predict(x, None).unwrap().novelty).collect();
    let unseen: Vec<f64> = data[2].iter().map(|x| h.predict(x, None).unwrap().novelty).collect();
    // AUROC: probability an unseen sample scores above a known one.
    let wins: usize = unseen.iter().map(|u| known.iter().filter(|k| u > k).count()).sum();
    let auroc = wins as f64 / (known.len() * unseen.len()) as f64;
    assert!(auroc > 0.95, "auroc {auroc}");
}

#[test]
fn borrowed_storage_and_shared_prediction() {
    let dim = 5;
    let layout = Layout { dim, capacity: 2 };
    let mut floats = vec![1.0; layout.floats()];
    let mut slots = vec![ClassSlot::default(); 2];
    let config = HeadConfig {
        dim,
        capacity: 2,
        weighting: Weighting::Count,
        settings: Estimator::Pooled.settings(),
        transform: Transform::IDENTITY,
    };
    assert!(matches!(
        GaussianHead::new(BorrowedStorage { floats: &mut floats[1..], slots: &mut slots }, config),
        Err(HeadError::StorageSize { .. })
    ));
    let mut h = GaussianHead::new(BorrowedStorage { floats: &mut floats, slots: &mut slots }, config).unwrap();
    let data = gaussian_classes(dim, &[10, 10], 1);
    for (c, samples) in data.iter().enumerate() {
        h.begin(label(&format!("c{c}")).unwrap()).unwrap();
        learn_samples(&mut h, samples);
        h.commit().unwrap();
    }
    let mut scratch = vec![0.0; 2 * dim];
    let shared = h.predict_with(&data[1][3], None, &mut scratch).unwrap();
    assert_eq!(shared, h.predict(&data[1][3], None).unwrap());
    assert_eq!(layout.floats(), 2 * 5 * 2 + 2 * 2 + 4 * 5 + 3 * tri_len(5));
}
