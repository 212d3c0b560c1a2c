//! Streaming, merged and batch moments agree, at the real feature size.
//!
//! Tolerances: means within `1e-12 * (1 + max|x|)`, scatters within
//! `1e-10 * (1 + max|S|)` of a two-pass f64 reference. Welford and Chan are
//! exact in exact arithmetic; these bounds leave room for rounding only.

mod common;

use common::Rng;
use gaussedge_shared::linalg::{row_start, tri_len};
use gaussedge_shared::moments::{pool_class, ClassSummary, Weighting};
use proptest::prelude::*;

/// Features shaped like pooled SiLU activations: positive-ish, uneven scale.
fn samples(n: usize, dim: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = Rng::new(seed);
    let scale: Vec<f64> = (0..dim).map(|_| 0.05 + rng.uniform()).collect();
    let offset: Vec<f64> = (0..dim).map(|_| rng.normal()).collect();
    (0..n).map(|_| (0..dim).map(|i| offset[i] + scale[i] * rng.normal()).collect()).collect()
}

/// Two-pass mean and packed scatter.
fn batch(xs: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
    let dim = xs[0].len();
    let n = xs.len() as f64;
    let mut mean = vec![0.0; dim];
    for x in xs {
        for (m, v) in mean.iter_mut().zip(x) {
            *m += v / n;
        }
    }
    let mut scatter = vec![0.0; tri_len(dim)];
    for x in xs {
        for i in 0..dim {
            let ci = x[i] - mean[i];
            for j in 0..=i {
                scatter[row_start(i) + j] += ci * (x[j] - mean[j]);
            }
        }
    }
    (mean, scatter)
}

fn assert_close(s: &ClassSummary, xs: &[Vec<f64>], what: &str) {
    let (mean, scatter) = batch(xs);
    assert_eq!(s.count, xs.len() as u64, "{what}: count");
    let xmax = xs.iter().flatten().fold(0.0f64, |a, v| a.max(v.abs()));
    let smax = scatter.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    let dm = s.mean.iter().zip(&mean).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let ds = s.scatter.iter().zip(&scatter).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(dm <= 1e-12 * (1.0 + xmax), "{what}: mean off by {dm:e}");
    assert!(ds <= 1e-10 * (1.0 + smax), "{what}: scatter off by {ds:e} (max {smax:e})");
}

fn streamed(xs: &[Vec<f64>]) -> ClassSummary {
    let mut s = ClassSummary::new(xs[0].len());
    xs.iter().for_each(|x| s.push(x));
    s
}

/// Splits `xs` at the given fractions, summarises each piece, merges the
/// pieces in `order`, and checks against the batch reference; then removes
/// the first piece again.
fn check(dim: usize, n: usize, seed: u64, cuts: &[f64], order_seed: u64) {
    let xs = samples(n, dim, seed);
    assert_close(&streamed(&xs), &xs, "streaming");

    let mut bounds: Vec<usize> = cuts.iter().map(|c| (c * n as f64) as usize).collect();
    bounds.extend([0, n]);
    bounds.sort_unstable();
    bounds.dedup();
    let pieces: Vec<&[Vec<f64>]> = bounds.windows(2).map(|w| &xs[w[0]..w[1]]).collect();
    let mut order: Vec<usize> = (0..pieces.len()).collect();
    let mut rng = Rng::new(order_seed);
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let mut merged = ClassSummary::new(dim);
    for &i in &order {
        merged.merge(&streamed(pieces[i]));
    }
    assert_close(&merged, &xs, "merged");

    if pieces.len() > 1 {
        let first = streamed(pieces[0]);
        assert!(merged.remove(&first));
        assert_close(&merged, &xs[pieces[0].len()..], "removed");
        assert!(!first.clone().remove(&streamed(&xs)), "cannot remove more than there is");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]
    #[test]
    fn streaming_merged_and_batch_agree_at_d1280(
        n in 2usize..24,
        seed in any::<u64>(),
        cuts in proptest::collection::vec(0.0f64..1.0, 0..4),
        order in any::<u64>(),
    ) {
        check(1280, n, seed, &cuts, order);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    #[test]
    fn streaming_merged_and_batch_agree_small(
        dim in 1usize..12,
        n in 1usize..80,
        seed in any::<u64>(),
        cuts in proptest::collection::vec(0.0f64..1.0, 0..6),
        order in any::<u64>(),
    ) {
        check(dim, n, seed, &cuts, order);
    }
}

#[test]
fn removing_a_class_from_the_pool_is_exact() {
    let dim = 32;
    let classes: Vec<ClassSummary> = (0..3).map(|c| streamed(&samples(20 + 10 * c, dim, c as u64))).collect();
    for weighting in [Weighting::Count, Weighting::ClassMean] {
        let mut all = vec![0.0; tri_len(dim)];
        let mut all_norm = 0.0;
        for c in &classes {
            pool_class(weighting, &mut all, &mut all_norm, c.count, &c.scatter, 1.0);
        }
        let mut two = vec![0.0; tri_len(dim)];
        let mut two_norm = 0.0;
        for c in &classes[..2] {
            pool_class(weighting, &mut two, &mut two_norm, c.count, &c.scatter, 1.0);
        }
        pool_class(weighting, &mut all, &mut all_norm, classes[2].count, &classes[2].scatter, -1.0);
        assert_eq!(all_norm, two_norm);
        let smax = two.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        let diff = all.iter().zip(&two).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(diff <= 1e-12 * smax, "{weighting:?}: {diff:e}");
    }
    let expected_norm: f64 = classes.iter().map(|c| (c.count - 1) as f64).sum();
    let mut acc = vec![0.0; tri_len(dim)];
    let mut norm = 0.0;
    classes.iter().for_each(|c| pool_class(Weighting::Count, &mut acc, &mut norm, c.count, &c.scatter, 1.0));
    assert_eq!(norm, expected_norm, "count weighting normalises by N - C");
}

/// The head defers Welford's scatter updates and applies them several at
/// a time for speed; the batched kernels must give the one-at-a-time
/// results bit for bit, or the head's figures would move with `PENDING`.
#[test]
fn batched_updates_and_solves_equal_one_at_a_time_bit_for_bit() {
    use gaussedge_shared::linalg::{cholesky_in_place, forward_solve, forward_solve_batch, syr, syr_batch};
    let dim = 37;
    let xs = samples(11, dim, 7);
    let mut rng = Rng::new(8);
    let alphas: Vec<f64> = (0..xs.len()).map(|i| if i == 3 { 0.0 } else { rng.uniform() }).collect();
    let flat: Vec<f64> = xs.iter().flatten().copied().collect();
    let mut one = vec![0.5; tri_len(dim)];
    for (x, &a) in xs.iter().zip(&alphas) {
        syr(&mut one, a, x);
    }
    let mut batch = vec![0.5; tri_len(dim)];
    syr_batch(&mut batch, &alphas[..4], &flat[..4 * dim]);
    syr_batch(&mut batch, &alphas[4..], &flat[4 * dim..]);
    assert!(one.iter().zip(&batch).all(|(a, b)| a.to_bits() == b.to_bits()));

    // A well-conditioned factor: the scatter plus a ridge.
    let mut l = one.clone();
    for i in 0..dim {
        l[row_start(i) + i] += 1.0;
    }
    cholesky_in_place(&mut l, dim).unwrap();
    let mut solved = flat.clone();
    forward_solve_batch(&l, &mut solved, dim);
    for (x, y) in xs.iter().zip(solved.chunks_exact(dim)) {
        let mut alone = x.clone();
        forward_solve(&l, &mut alone);
        assert!(alone.iter().zip(y).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
