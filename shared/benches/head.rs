//! `cargo bench -p gaussedge-shared --bench head [-- --quick]`
//!
//! The head at the real feature size (D = 1280) for K = 10 and K = 64,
//! side by side with a straightforward dense nalgebra f64 implementation of
//! the same operation (the peer), in one run. Prints a markdown table: time
//! per operation (median), and the ratio peer / gaussedge (above 1 means
//! gaussedge is faster), then the fixed memory footprint of both.
//!
//! Operations:
//! * learn: one Welford update of the staged class (per sample, over
//!   groups of `PENDING`: the head batches the scatter updates),
//! * commit: regularise, Cholesky, recompute `w_c` for all K classes,
//! * classify: K scores and arg-max,
//! * predict: classify plus the Mahalanobis novelty (a triangular solve),
//! * save / load: the statistics file (load validates, factors, refits `w`).

use gaussedge_shared::config::{Estimator, Weighting};
use gaussedge_shared::head::{GaussianHead, HeadConfig, Layout, OwnedStorage, PENDING};
use gaussedge_shared::stats::{self, Expect, StatsMeta};
use gaussedge_shared::{label, Transform};
use nalgebra::{DMatrix, DVector};
use std::hint::black_box;
use std::time::{Duration, Instant};

const DIM: usize = 1280;

/// Median seconds per call of `f`, over at least `min_runs` calls and about
/// `budget` of wall time.
fn time(min_runs: usize, budget: Duration, mut f: impl FnMut()) -> f64 {
    let mut samples = vec![];
    let start = Instant::now();
    while samples.len() < min_runs || (start.elapsed() < budget && samples.len() < 10_000) {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64());
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn sample(rng: &mut Rng, class: usize) -> Vec<f32> {
    (0..DIM).map(|i| rng.next() + if i % 64 == class % 64 { 3.0 } else { 0.0 }).collect()
}

/// The peer: dense symmetric matrices in nalgebra, f64.
struct Peer {
    scatter: DMatrix<f64>,
    chol: DMatrix<f64>,
    means: DMatrix<f64>,
    weights: DMatrix<f64>,
    bias: DVector<f64>,
}

impl Peer {
    fn new(k: usize) -> Self {
        Peer {
            scatter: DMatrix::identity(DIM, DIM),
            chol: DMatrix::identity(DIM, DIM),
            means: DMatrix::from_fn(k, DIM, |c, i| if i % 64 == c % 64 { 3.0 } else { 0.0 }),
            weights: DMatrix::zeros(k, DIM),
            bias: DVector::zeros(k),
        }
    }
    fn learn(&mut self, x: &DVector<f64>, mean: &mut DVector<f64>, n: &mut f64) {
        *n += 1.0;
        let d = x - &*mean;
        *mean += &d / *n;
        self.scatter.ger(((*n - 1.0) / *n) * 1.0, &d, &d, 1.0);
    }
    fn commit(&mut self) {
        let mu = self.scatter.trace() / DIM as f64;
        let sigma = &self.scatter * (1.0 - 1e-4) + DMatrix::identity(DIM, DIM) * (1e-4 * mu);
        let chol = sigma.cholesky().expect("peer factor");
        self.weights = chol.solve(&self.means.transpose()).transpose();
        for c in 0..self.means.nrows() {
            self.bias[c] = -0.5 * self.weights.row(c).dot(&self.means.row(c));
        }
        self.chol = chol.l();
    }
    fn classify(&self, x: &DVector<f64>) -> usize {
        (&self.weights * x + &self.bias).argmax().0
    }
    fn predict(&self, x: &DVector<f64>) -> (usize, f64) {
        let c = self.classify(x);
        let y = self.chol.solve_lower_triangular(x).expect("triangular");
        (c, y.norm_squared())
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = Duration::from_millis(if quick { 150 } else { 1500 });
    let runs = if quick { 3 } else { 7 };
    let mut rows = vec![];
    let mut memory = vec![];
    for k in [10usize, 64] {
        let mut rng = Rng(k as u64);
        let config = HeadConfig {
            dim: DIM,
            capacity: k,
            weighting: Weighting::Count,
            settings: Estimator::Pooled.settings(),
            transform: Transform::IDENTITY,
        };
        let mut head: GaussianHead<OwnedStorage> = GaussianHead::with_capacity(config).unwrap();
        // Fill all but one slot so commit refits K - 1 classes plus the new one.
        for c in 0..k - 1 {
            head.begin(label(&format!("c{c}")).unwrap()).unwrap();
            for _ in 0..4 {
                head.learn(&sample(&mut rng, c)).unwrap();
            }
            head.commit().unwrap();
        }
        let x = sample(&mut rng, 3);
        let xd = DVector::from_iterator(DIM, x.iter().map(|&v| v as f64));
        let mut peer = Peer::new(k);
        let mut peer_mean = DVector::zeros(DIM);
        let mut peer_n = 0.0;

        // Distinct samples: learning the same one again is a zero update.
        let pool: Vec<Vec<f32>> = (0..64).map(|i| sample(&mut rng, i)).collect();
        let pool_d: Vec<DVector<f64>> =
            pool.iter().map(|x| DVector::from_iterator(DIM, x.iter().map(|&v| v as f64))).collect();
        head.begin(label("new").unwrap()).unwrap();
        let mut i = 0;
        // The head adds samples to its scatter `PENDING` at a time, so one
        // call in `PENDING` pays for the others: time groups of `PENDING`
        // calls (both sides) and report the cost per sample.
        let ours_learn = time(runs, budget, || {
            for _ in 0..PENDING {
                i += 1;
                black_box(head.learn(black_box(&pool[i % 64])).unwrap());
            }
        }) / PENDING as f64;
        let peer_learn = time(runs, budget, || {
            for _ in 0..PENDING {
                i += 1;
                peer.learn(black_box(&pool_d[i % 64]), &mut peer_mean, &mut peer_n)
            }
        }) / PENDING as f64;
        head.abort().unwrap();

        let ours_commit = time(runs, budget, || {
            head.begin(label("new").unwrap()).unwrap();
            head.learn(&x).unwrap();
            black_box(head.commit().unwrap());
            head.forget("new").unwrap();
        });
        let peer_commit = time(runs, budget, || peer.commit());
        head.begin(label("new").unwrap()).unwrap();
        head.learn(&x).unwrap();
        head.commit().unwrap();

        let mut scores = vec![0.0; k];
        let ours_classify = time(runs, budget, || drop(black_box(head.classify(black_box(&x), Some(&mut scores)))));
        let peer_classify = time(runs, budget, || {
            black_box(peer.classify(black_box(&xd)));
        });
        let ours_predict = time(runs, budget, || drop(black_box(head.predict(black_box(&x), Some(&mut scores)))));
        let peer_predict = time(runs, budget, || {
            black_box(peer.predict(black_box(&xd)));
        });

        // Save / load: against postcard of the same numbers in owned Vecs
        // (what a serde-derived struct with `Vec<f64>` fields would do).
        let meta = StatsMeta::default();
        let mut file = Vec::with_capacity(stats::encoded_len(&head, &meta) as usize);
        let ours_save = time(runs, budget, || {
            file.clear();
            stats::write(&head, &meta, |b| {
                file.extend_from_slice(b);
                Ok::<(), ()>(())
            })
            .unwrap();
        });
        let ours_load = time(runs, budget, || {
            black_box(stats::load(&mut head, &file, &Expect::default()).unwrap());
        });
        let owned: (Vec<f64>, Vec<f64>) =
            ((0..k).flat_map(|c| head.mean(c % head.class_count()).to_vec()).collect(), head.pooled().to_vec());
        let peer_save = time(runs, budget, || drop(black_box(postcard::to_allocvec(&owned).unwrap())));
        let encoded = postcard::to_allocvec(&owned).unwrap();
        let peer_load = time(runs, budget, || {
            let back: (Vec<f64>, Vec<f64>) = postcard::from_bytes(black_box(&encoded)).unwrap();
            let mut dense = DMatrix::<f64>::zeros(DIM, DIM);
            let mut it = back.1.iter();
            for i in 0..DIM {
                for j in 0..=i {
                    let v = *it.next().unwrap();
                    dense[(i, j)] = v;
                    dense[(j, i)] = v;
                }
            }
            peer.scatter = dense;
            peer.commit();
        });

        for (op, ours, theirs) in [
            ("learn (1 sample)", ours_learn, peer_learn),
            ("commit", ours_commit, peer_commit),
            ("classify", ours_classify, peer_classify),
            ("predict + novelty", ours_predict, peer_predict),
            ("save stats", ours_save, peer_save),
            ("load stats (+ factor)", ours_load, peer_load),
        ] {
            rows.push(format!("| {k} | {op} | {} | {} | {:.2} |", fmt(ours), fmt(theirs), theirs / ours));
        }
        let ours_bytes = Layout { dim: DIM, capacity: k }.bytes();
        let peer_bytes = (2 * DIM * DIM + 2 * k * DIM + k) * 8;
        memory.push(format!(
            "| {k} | {} | {} | {:.2} | {} |",
            mib(ours_bytes),
            mib(peer_bytes),
            peer_bytes as f64 / ours_bytes as f64,
            mib(stats::encoded_len(&head, &meta) as usize)
        ));
    }
    println!("D = {DIM}; median per call; ratio = nalgebra dense f64 / gaussedge (> 1: gaussedge faster)\n");
    println!("| K | operation | gaussedge | nalgebra peer | ratio |\n| --- | --- | --- | --- | --- |");
    rows.iter().for_each(|r| println!("{r}"));
    println!("\nFixed footprint (the head allocates nothing after construction)\n");
    println!("| K | gaussedge head | nalgebra peer (2 dense D x D + K x D) | ratio | stats file |\n| --- | --- | --- | --- | --- |");
    memory.iter().for_each(|r| println!("{r}"));
}

fn fmt(s: f64) -> String {
    if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

fn mib(b: usize) -> String {
    format!("{:.2} MiB", b as f64 / (1 << 20) as f64)
}
