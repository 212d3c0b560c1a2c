//! `cargo bench -p gaussedge-shared --bench learn_solve [-- --rounds N]`
//!
//! The solve a learned sample pays for its class's whitened spread, at the
//! bundles' feature size (D = 1808) and the head's batch of `PENDING`
//! samples: against the f64 factor (the head before it kept the f32 copy
//! for learning too) and against the factor rounded to f32 (the head now),
//! interleaved call by call in each round, so both see the same machine.
//! Between calls a buffer the size of a frame's working set is streamed,
//! as the backbone does on a device, so neither factor starts in the
//! caches. Prints each median per sample and the ratio f64 / f32 (above 1:
//! the f32 solve is faster), median and range over rounds.

use gaussedge_shared::head::PENDING;
use gaussedge_shared::linalg::{self, tri_len};
use std::hint::black_box;
use std::time::Instant;

#[path = "common/mod.rs"]
mod common;
use common::flush;

const DIM: usize = 1808;

fn main() {
    let rounds = std::env::args().skip_while(|a| a != "--rounds").nth(1).and_then(|v| v.parse().ok()).unwrap_or(5usize);
    println!("kernels: {}; D = {DIM}, {PENDING} right-hand sides per call", linalg::kernels());
    // A well-conditioned factor: the Cholesky factor of I + u u'/D.
    let mut a = vec![0.0f64; tri_len(DIM)];
    let u: Vec<f64> = (0..DIM).map(|i| ((i * 7919) % 1000) as f64 / 1000.0 - 0.5).collect();
    for i in 0..DIM {
        for j in 0..=i {
            a[linalg::row_start(i) + j] = u[i] * u[j] / DIM as f64 + if i == j { 1.0 } else { 0.0 };
        }
    }
    linalg::cholesky_in_place(&mut a, DIM).expect("positive definite");
    let mut l32 = vec![0.0f32; tri_len(DIM)];
    linalg::round_to_f32(&a, &mut l32);
    let rhs: Vec<f64> = (0..PENDING * DIM).map(|i| ((i * 104729) % 997) as f64 / 997.0 - 0.5).collect();
    let mut evict = vec![1u8; 64 << 20];
    let calls = 40;
    let (mut f64s, mut f32s, mut ratios) = (vec![], vec![], vec![]);
    for _ in 0..rounds {
        let (mut t64, mut t32) = (vec![], vec![]);
        for _ in 0..calls {
            t64.push(per_sample(&mut evict, &rhs, |b| linalg::forward_solve_batch(black_box(&a), b, DIM)));
            t32.push(per_sample(&mut evict, &rhs, |b| linalg::forward_solve_batch_f32(black_box(&l32), b, DIM)));
        }
        let (m64, m32) = (median(&mut t64), median(&mut t32));
        f64s.push(m64);
        f32s.push(m32);
        ratios.push(m64 / m32);
    }
    let r = median(&mut ratios.clone());
    let (lo, hi) = ratios.iter().fold((f64::INFINITY, 0.0f64), |(l, h), &v| (l.min(v), h.max(v)));
    println!("\n| solve per learned sample | f64 factor | f32 factor | ratio f64 / f32 |\n| --- | --- | --- | --- |");
    println!(
        "| median of {rounds} rounds x {calls} calls | {:.1} µs | {:.1} µs | {r:.2} ({lo:.2}-{hi:.2}) |",
        1e6 * median(&mut f64s),
        1e6 * median(&mut f32s)
    );
}

/// Seconds per right-hand side of one batched solve `solve` on a copy of
/// `rhs`, the caches flushed first.
fn per_sample(evict: &mut [u8], rhs: &[f64], solve: impl Fn(&mut [f64])) -> f64 {
    let mut b = rhs.to_vec();
    flush(evict);
    let t = Instant::now();
    solve(&mut b);
    let s = t.elapsed().as_secs_f64() / PENDING as f64;
    black_box(&b);
    s
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
