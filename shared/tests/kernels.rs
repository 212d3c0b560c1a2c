//! The dispatched linear-algebra kernels (AVX-512 or AVX2 builds where the
//! CPU has them) give the portable kernels' results bit for bit, so a head
//! learned on one machine scores the same on another; and the f32 scoring
//! solve stays within its rounding bound of the f64 one.

mod common;

use common::Rng;
use gaussedge_shared::linalg::{self, portable, row_start, tri_len};

const DIMS: [usize; 9] = [1, 2, 15, 16, 17, 33, 64, 131, 257];

fn vector(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.normal()).collect()
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A well-conditioned packed SPD matrix: `A A^T / n + I` for a random `A`.
fn spd(rng: &mut Rng, d: usize) -> Vec<f64> {
    let n = d + 5;
    let a: Vec<Vec<f64>> = (0..n).map(|_| vector(rng, d)).collect();
    let mut p = vec![0.0; tri_len(d)];
    for x in &a {
        linalg::syr(&mut p, 1.0 / n as f64, x);
    }
    for i in 0..d {
        p[row_start(i) + i] += 1.0;
    }
    p
}

#[test]
fn dispatched_kernels_equal_the_portable_ones_bit_for_bit() {
    eprintln!("kernels: {}", linalg::kernels());
    let mut rng = Rng::new(42);
    for d in DIMS {
        let (a, b) = (vector(&mut rng, d), vector(&mut rng, d));
        assert_eq!(linalg::dot(&a, &b).to_bits(), portable::dot(&a, &b).to_bits(), "dot d={d}");

        for k in [1, 3, 8, 9] {
            let xs = vector(&mut rng, k * d);
            // A zero scale is skipped, as `syr` skips it; a -0 entry shows it.
            let alphas: Vec<f64> = (0..k).map(|j| if j == 1 { 0.0 } else { rng.uniform() }).collect();
            let mut start = vector(&mut rng, tri_len(d));
            start[0] = -0.0;
            let (mut p1, mut p2) = (start.clone(), start.clone());
            linalg::syr_batch(&mut p1, &alphas, &xs);
            portable::syr_batch(&mut p2, &alphas, &xs);
            assert_eq!(bits(&p1), bits(&p2), "syr_batch d={d} k={k}");
            let mut one = start.clone();
            for (j, &alpha) in alphas.iter().enumerate() {
                linalg::syr(&mut one, alpha, &xs[j * d..(j + 1) * d]);
            }
            assert_eq!(bits(&one), bits(&p1), "syr_batch against syr, d={d} k={k}");
        }

        let a = spd(&mut rng, d);
        let (mut l1, mut l2) = (a.clone(), a.clone());
        linalg::cholesky_in_place(&mut l1, d).unwrap();
        portable::cholesky_in_place(&mut l2, d).unwrap();
        assert_eq!(bits(&l1), bits(&l2), "cholesky d={d}");

        let rhs = vector(&mut rng, 3 * d);
        let (mut y1, mut y2) = (rhs.clone(), rhs.clone());
        linalg::forward_solve_batch(&l1, &mut y1, d);
        portable::forward_solve_batch(&l1, &mut y2, d);
        assert_eq!(bits(&y1), bits(&y2), "forward_solve_batch d={d}");
        let mut single = rhs[..d].to_vec();
        linalg::forward_solve(&l1, &mut single);
        assert_eq!(bits(&single), bits(&y1[..d]), "forward_solve d={d}");
        let (mut x1, mut x2) = (single.clone(), single.clone());
        linalg::backward_solve(&l1, &mut x1);
        portable::backward_solve(&l1, &mut x2);
        assert_eq!(bits(&x1), bits(&x2), "backward_solve d={d}");

        let mut l32 = vec![0.0f32; tri_len(d)];
        linalg::round_to_f32(&l1, &mut l32);
        let (mut v1, mut v2) = (rhs[..d].to_vec(), rhs[..d].to_vec());
        let n1 = linalg::whitened_norm_sq_f32(&l32, &mut v1);
        let n2 = portable::whitened_norm_sq_f32(&l32, &mut v2);
        assert_eq!((n1.to_bits(), bits(&v1)), (n2.to_bits(), bits(&v2)), "whitened_norm_sq_f32 d={d}");
        // The learn path's batch against the same f32 factor: each
        // right-hand side as the single solve gives it, on every build.
        let (mut b1, mut b2) = (rhs.clone(), rhs.clone());
        linalg::forward_solve_batch_f32(&l32, &mut b1, d);
        portable::forward_solve_batch_f32(&l32, &mut b2, d);
        assert_eq!(bits(&b1), bits(&b2), "forward_solve_batch_f32 d={d}");
        assert_eq!(bits(&b1[..d]), bits(&v1), "forward_solve_batch_f32 against the single solve, d={d}");
    }
}

#[test]
fn dot_matches_a_plain_sum() {
    let mut rng = Rng::new(7);
    for d in DIMS {
        let (a, b) = (vector(&mut rng, d), vector(&mut rng, d));
        let plain: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let scale: f64 = a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum();
        assert!((linalg::dot(&a, &b) - plain).abs() <= 4.0 * d as f64 * f64::EPSILON * scale, "d={d}");
    }
}

/// The f32 copy of the factor moves the whitened norm by a relative
/// `eps32 cond(L) sqrt(D)` at most, on an ill-conditioned covariance like a
/// head's (eigenvalues spread over five decades).
#[test]
fn the_f32_scoring_solve_stays_within_its_rounding_bound() {
    let mut rng = Rng::new(3);
    for d in [16, 131, 400] {
        // Sigma = Q diag(lambda) Q^T with Q from a QR of a random matrix.
        let q = nalgebra::DMatrix::from_fn(d, d, |_, _| rng.normal()).qr().q();
        let lambda = nalgebra::DVector::from_fn(d, |i, _| 10f64.powf(-5.0 * i as f64 / (d - 1) as f64));
        let sigma = &q * nalgebra::DMatrix::from_diagonal(&lambda) * q.transpose();
        let mut p = vec![0.0; tri_len(d)];
        for i in 0..d {
            for j in 0..=i {
                p[row_start(i) + j] = 0.5 * (sigma[(i, j)] + sigma[(j, i)]);
            }
        }
        linalg::cholesky_in_place(&mut p, d).unwrap();
        let mut l32 = vec![0.0f32; tri_len(d)];
        linalg::round_to_f32(&p, &mut l32);
        let cond_l = (lambda.max() / lambda.min()).sqrt();
        for _ in 0..20 {
            let x = vector(&mut rng, d);
            let (mut v64, mut v32) = (x.clone(), x.clone());
            let exact = linalg::whitened_norm_sq(&p, &mut v64);
            let rounded = linalg::whitened_norm_sq_f32(&l32, &mut v32);
            let bound = 4.0 * f32::EPSILON as f64 * cond_l * (d as f64).sqrt();
            let rel = (rounded - exact).abs() / exact;
            assert!(rel <= bound, "d={d}: relative change {rel:e} above {bound:e}");
        }
    }
}
