//! `cargo bench -p gaussedge-shared --bench cholesky [-- --rounds N] [-- --dim D]`
//!
//! The head's factorisation at the bundles' feature size (D = 1808): what a
//! device runs at boot when it starts from a bundle's statistics, and at
//! every commit that refactors. The blocked factorisation against the row
//! by row one it replaced (the same bits) and nalgebra's dense Cholesky,
//! interleaved call by call in each round, the caches flushed before each.
//! Prints medians and the ratios row-by-row / blocked and nalgebra /
//! blocked (above 1: blocked is faster), median and range over rounds.

use gaussedge_shared::linalg::{self, row_start, tri_len};
use std::hint::black_box;
use std::time::Instant;

#[path = "common/mod.rs"]
mod common;
use common::flush;

fn arg(name: &str) -> Option<usize> {
    std::env::args().skip_while(|a| a != name).nth(1).and_then(|v| v.parse().ok())
}

fn main() {
    let rounds = arg("--rounds").unwrap_or(5);
    let d = arg("--dim").unwrap_or(1808);
    println!("kernels: {}; D = {d}", linalg::kernels());
    // A covariance-like matrix: a Gram matrix of d + 8 pseudo-random
    // columns, plus a small ridge (as the head's shrinkage adds).
    let cols = d + 8;
    let x: Vec<f64> = (0..d * cols).map(|i| ((i * 7919 + 13) % 2003) as f64 / 2003.0 - 0.5).collect();
    let mut a = vec![0.0f64; tri_len(d)];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = (0..cols).map(|k| x[i * cols + k] * x[j * cols + k]).sum();
            a[row_start(i) + j] = s / cols as f64 + if i == j { 1e-3 } else { 0.0 };
        }
    }
    let dense = nalgebra::DMatrix::from_fn(d, d, |i, j| linalg::sym_get(&a, i, j));
    let mut evict = vec![1u8; 64 << 20];
    let (mut blocked, mut rows, mut peer) = (vec![], vec![], vec![]);
    for _ in 0..rounds {
        let mut p = a.clone();
        flush(&mut evict);
        let t = Instant::now();
        linalg::cholesky_in_place(black_box(&mut p), d).expect("positive definite");
        blocked.push(t.elapsed().as_secs_f64());
        let mut q = a.clone();
        flush(&mut evict);
        let t = Instant::now();
        linalg::cholesky_rows(black_box(&mut q), d).expect("positive definite");
        rows.push(t.elapsed().as_secs_f64());
        assert!(p.iter().zip(&q).all(|(u, v)| u.to_bits() == v.to_bits()), "the two factorisations differ");
        let m = dense.clone();
        flush(&mut evict);
        let t = Instant::now();
        black_box(m.cholesky().expect("positive definite"));
        peer.push(t.elapsed().as_secs_f64());
    }
    let ratio = |num: &[f64]| {
        let mut r: Vec<f64> = num.iter().zip(&blocked).map(|(n, b)| n / b).collect();
        r.sort_by(f64::total_cmp);
        format!("{:.2} ({:.2}-{:.2})", r[r.len() / 2], r[0], r[r.len() - 1])
    };
    let med = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2] * 1e3
    };
    println!("\n| factorisation, D = {d}, {rounds} interleaved rounds | median | ratio to blocked |");
    println!("| --- | --- | --- |");
    println!(
        "| cholesky_in_place (blocks of {} rows with AVX-512) | {:.1} ms | 1 |",
        linalg::CHOLESKY_ROWS,
        med(&blocked)
    );
    println!("| row by row (before) | {:.1} ms | {} |", med(&rows), ratio(&rows));
    println!("| nalgebra, dense | {:.1} ms | {} |", med(&peer), ratio(&peer));
}
