//! The ledger against one head that learned every sample itself.

use gaussedge_fleet::{FleetError, Ledger, Summary, SummaryError};
use gaussedge_shared::head::{GaussianHead, HeadConfig, OwnedStorage};
use gaussedge_shared::stats::{self, Expect, StatsMeta};
use gaussedge_shared::{label, Estimator, Transform};
use rand_xoshiro::rand_core::{Rng as _, SeedableRng};
use rand_xoshiro::SplitMix64;

const DIM: usize = 12;
const SHA: [u8; 32] = [3; 32];

/// `rand_xoshiro`'s SplitMix64 (the state the seed itself) with normal draws.
struct Rng(SplitMix64);
impl Rng {
    fn new(seed: u64) -> Self {
        Rng(SplitMix64::seed_from_u64(seed))
    }
    fn normal(&mut self) -> f64 {
        let mut u = || (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let (a, b) = (u().max(1e-300), u());
        (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()
    }
    fn class(&mut self, centre: f64, n: usize) -> Vec<Vec<f32>> {
        (0..n).map(|_| (0..DIM).map(|j| (centre + j as f64 * 0.1 + self.normal()) as f32).collect()).collect()
    }
}

type Head = GaussianHead<OwnedStorage>;

fn config() -> HeadConfig {
    HeadConfig {
        dim: DIM,
        capacity: 8,
        weighting: Estimator::Pooled.weighting(),
        settings: Estimator::Pooled.settings(),
        transform: Transform::IDENTITY,
    }
}

fn learn(head: &mut Head, name: &str, xs: &[Vec<f32>]) {
    match head.find(name) {
        Some(_) => head.begin_extend(label(name).unwrap()).unwrap(),
        None => head.begin(label(name).unwrap()).unwrap(),
    }
    xs.iter().for_each(|x| {
        head.learn(x).unwrap();
    });
    head.commit().unwrap();
}

fn save(head: &Head) -> Vec<u8> {
    stats::to_vec(head, &StatsMeta { backbone_sha256: SHA, novelty_threshold: 55.0, ..Default::default() }).unwrap()
}

fn load(bytes: &[u8]) -> Head {
    GaussianHead::from_stats(bytes, 8, &Expect::default()).unwrap().0
}

/// `a` and `b` hold the same classes, counts and means, and pooled
/// accumulator, within `1e-9` of the largest entry.
fn assert_same(a: &Head, b: &Head) {
    assert_eq!(a.class_count(), b.class_count());
    let tol = |v: &[f64]| 1e-9 * v.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    for (slot, c) in a.classes() {
        let other = b.find(c.label.as_str()).unwrap_or_else(|| panic!("{} missing", c.label));
        assert_eq!(c.count, b.slots()[other].count, "{}", c.label);
        let t = tol(a.mean(slot));
        for (x, y) in a.mean(slot).iter().zip(b.mean(other)) {
            assert!((x - y).abs() <= t, "{}: mean {x} vs {y}", c.label);
        }
    }
    let t = tol(a.pooled());
    for (x, y) in a.pooled().iter().zip(b.pooled()) {
        assert!((x - y).abs() <= t, "pooled {x} vs {y}");
    }
    assert!((a.scatter_norm() - b.scatter_norm()).abs() <= 1e-9 * a.scatter_norm());
}

struct World {
    base: Vec<u8>,
    x1: Vec<Vec<f32>>,
    x2: Vec<Vec<f32>>,
    y1: Vec<Vec<f32>>,
    y2: Vec<Vec<f32>>,
    z: Vec<Vec<f32>>,
    w: Vec<Vec<f32>>,
}

fn world() -> World {
    let mut r = Rng::new(41);
    let mut base = Head::with_capacity(config()).unwrap();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let xs = r.class(3.0 * i as f64, 200);
        learn(&mut base, name, &xs);
    }
    World {
        base: save(&base),
        x1: r.class(10.0, 40),
        x2: r.class(10.0, 25),
        y1: r.class(-8.0, 30),
        y2: r.class(-8.0, 35),
        z: r.class(16.0, 20),
        w: r.class(-15.0, 50),
    }
}

/// A device's contribution: what `head` holds beyond `parent`.
fn since(head: &Head, parent: &Head) -> Summary {
    Summary::of_head(head).since(&Summary::of_head(parent)).unwrap()
}

#[test]
fn three_devices_and_a_class_taught_on_two_equal_one_device_that_learned_everything() {
    let w = world();
    let mut ledger = Ledger::new(&w.base).unwrap();
    let ctx = *ledger.context();
    let base = load(&w.base);

    // Device 1 learns x and y, device 2 learns y (other samples) and z,
    // device 3 learns w.
    let mut d1 = load(&w.base);
    learn(&mut d1, "x", &w.x1);
    learn(&mut d1, "y", &w.y1);
    let mut d2 = load(&w.base);
    learn(&mut d2, "y", &w.y2);
    learn(&mut d2, "z", &w.z);
    let mut d3 = load(&w.base);
    learn(&mut d3, "w", &w.w);
    for (name, head) in [("d1", &d1), ("d2", &d2), ("d3", &d3)] {
        assert!(ledger.contribute(name, 1, &since(head, &base).to_bytes(&ctx)).unwrap());
    }

    // Device 2 takes the fleet head and learns more of x: it contributes
    // its first summary plus only what it learned since that head.
    let fleet = ledger.head_stats().unwrap();
    let mut d2 = load(&fleet);
    let taken = load(&fleet);
    learn(&mut d2, "x", &w.x2);
    let mut mine = ledger.devices()["d2"].summary.clone();
    mine.add(&since(&d2, &taken)).unwrap();
    assert!(ledger.contribute("d2", 2, &mine.to_bytes(&ctx)).unwrap());

    let mut one = load(&w.base);
    learn(&mut one, "x", &[w.x1.clone(), w.x2.clone()].concat());
    learn(&mut one, "y", &[w.y1.clone(), w.y2.clone()].concat());
    learn(&mut one, "z", &w.z);
    learn(&mut one, "w", &w.w);
    let fleet = ledger.head_stats().unwrap();
    assert_eq!(stats::read_header(&fleet).unwrap().novelty_threshold, 55.0);
    assert_same(&load(&fleet), &one);
}

#[test]
fn duplicates_and_old_generations_never_count_twice() {
    let w = world();
    let mut ledger = Ledger::new(&w.base).unwrap();
    let ctx = *ledger.context();
    let base = load(&w.base);
    let mut d1 = load(&w.base);
    learn(&mut d1, "x", &w.x1);
    let first = since(&d1, &base).to_bytes(&ctx);
    learn(&mut d1, "x", &w.x2);
    let second = since(&d1, &base).to_bytes(&ctx);

    assert!(ledger.contribute("d1", 1, &first).unwrap());
    assert!(ledger.contribute("d1", 2, &second).unwrap());
    let settled = ledger.head_stats().unwrap();
    // Delivered again, and the old one delivered late: no change.
    assert!(!ledger.contribute("d1", 2, &second).unwrap());
    assert!(!ledger.contribute("d1", 1, &first).unwrap());
    assert_eq!(ledger.head_stats().unwrap(), settled);
    let mut one = load(&w.base);
    learn(&mut one, "x", &[w.x1.clone(), w.x2.clone()].concat());
    assert_same(&load(&settled), &one);

    // A merger restarted from the retained messages, in any order, agrees.
    let mut again = Ledger::new(&w.base).unwrap();
    assert!(again.contribute("d1", 2, &second).unwrap());
    assert!(!again.contribute("d1", 1, &first).unwrap());
    assert_eq!(again.head_stats().unwrap(), settled);
}

#[test]
fn statistics_of_another_backbone_or_size_or_corrupt_are_refused_and_change_nothing() {
    let w = world();
    let mut ledger = Ledger::new(&w.base).unwrap();
    let ctx = *ledger.context();
    let base = load(&w.base);
    let mut d1 = load(&w.base);
    learn(&mut d1, "x", &w.x1);
    let good = since(&d1, &base);
    let before = ledger.head_stats().unwrap();

    let other = gaussedge_fleet::Context { backbone_sha256: [9; 32], ..ctx };
    let err = ledger.contribute("bad", 1, &good.to_bytes(&other)).unwrap_err();
    assert!(
        matches!(&err, FleetError::Refused { source: SummaryError::Foreign { what: "backbone", .. }, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("bad") && err.to_string().contains("backbone"), "{err}");

    let small = Summary::empty(4);
    let err = ledger.contribute("bad", 1, &small.to_bytes(&gaussedge_fleet::Context { dim: 4, ..ctx })).unwrap_err();
    assert!(matches!(err, FleetError::Refused { source: SummaryError::Foreign { what: "feature size", .. }, .. }));

    let mut bytes = good.to_bytes(&ctx);
    bytes[40] ^= 1;
    assert!(matches!(
        ledger.contribute("bad", 1, &bytes),
        Err(FleetError::Refused { source: SummaryError::Crc { .. }, .. })
    ));
    let bytes = good.to_bytes(&ctx);
    assert!(matches!(
        ledger.contribute("bad", 1, &bytes[..bytes.len() / 2]),
        Err(FleetError::Refused { source: SummaryError::Crc { .. }, .. })
    ));
    assert!(ledger.devices().is_empty());
    assert_eq!(ledger.head_stats().unwrap(), before);

    // A device that claims a head it did not start from is caught.
    let mut other_base = load(&w.base);
    learn(&mut other_base, "a", &w.z);
    let shrunk = Summary::of_head(&base).since(&Summary::of_head(&other_base)).unwrap_err();
    assert!(matches!(shrunk, SummaryError::Shrunk { .. }), "{shrunk}");
}

#[test]
fn a_fleet_forget_drops_a_class_until_a_device_teaches_it_again() {
    let w = world();
    let mut ledger = Ledger::new(&w.base).unwrap();
    let ctx = *ledger.context();
    let base = load(&w.base);
    let mut d1 = load(&w.base);
    learn(&mut d1, "x", &w.x1);
    learn(&mut d1, "y", &w.y1);
    ledger.contribute_after("d1", 1, 0, &since(&d1, &base).to_bytes(&ctx)).unwrap();

    assert!(ledger.forget(1, "y"));
    assert!(!ledger.forget(1, "y"));
    let head = load(&ledger.head_stats().unwrap());
    assert!(head.find("y").is_none() && head.find("x").is_some());
    // What one device does: learn, then forget (the scatter stays pooled).
    let mut one = load(&w.base);
    learn(&mut one, "x", &w.x1);
    learn(&mut one, "y", &w.y1);
    one.forget("y").unwrap();
    assert_same(&head, &one);

    // The device applies the forget, then teaches y again.
    d1.forget("y").unwrap();
    learn(&mut d1, "y", &w.y2);
    ledger.contribute_after("d1", 2, 1, &since(&d1, &base).to_bytes(&ctx)).unwrap();
    let head = load(&ledger.head_stats().unwrap());
    assert_eq!(head.slots()[head.find("y").unwrap()].count, w.y2.len() as u64);
    one.begin(label("y").unwrap()).unwrap();
    w.y2.iter().for_each(|x| {
        one.learn(x).unwrap();
    });
    one.commit().unwrap();
    assert_same(&head, &one);
}
