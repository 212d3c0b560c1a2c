//! The statistics file: round trips, and every kind of damage refused with a
//! typed error that leaves the head exactly as it was.

mod common;

use common::*;
use gaussedge_shared::config::{
    Estimator, HeadSettings, NoveltyScore, Power, Prior, Regularizer, Transform, Weighting,
};
use gaussedge_shared::head::{GaussianHead, HeadConfig, HeadError, OwnedStorage};
use gaussedge_shared::stats::{self, Expect, Precision, Preprocess, StatsError, StatsMeta};

const SHA: [u8; 32] = [7; 32];

fn meta() -> StatsMeta {
    StatsMeta {
        backbone_sha256: SHA,
        preprocess: Preprocess {
            width: 32,
            height: 32,
            channels: 3,
            mean: [0.49, 0.48, 0.45],
            std: [0.25, 0.24, 0.26],
        },
        ..Default::default()
    }
}

fn small_head(dim: usize, classes: &[usize], seed: u64, transform: Transform) -> GaussianHead<OwnedStorage> {
    let config =
        HeadConfig { dim, capacity: 4, weighting: Weighting::Count, settings: Estimator::Pooled.settings(), transform };
    let mut h = GaussianHead::with_capacity(config).unwrap();
    if transform.center_l2 {
        h.set_center(&(0..dim).map(|i| i as f64 * 0.1).collect::<Vec<_>>()).unwrap();
    }
    learn_all(&mut h, &gaussian_classes(dim, classes, seed), 0);
    h
}

fn fresh(dim: usize, capacity: usize) -> GaussianHead<OwnedStorage> {
    head(dim, capacity, Weighting::ClassMean, Estimator::Seed.settings())
}

/// Rewrites the CRC so that damage reaches the parser behind it.
fn fix_crc(bytes: &mut [u8]) {
    let n = bytes.len();
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(&bytes[..n - 4]);
    bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn round_trip_restores_every_prediction() {
    let transform = Transform { power: Some(Power { shift: 0.5, exponent: 0.5 }), center_l2: true };
    for t in [Transform::IDENTITY, transform] {
        let mut h = small_head(6, &[20, 15, 30], 1, t);
        h.forget("c1").unwrap();
        let bytes = stats::to_vec(&h, &meta()).unwrap();
        assert_eq!(bytes.len() as u64, stats::encoded_len(&h, &meta()));
        let mut back = fresh(6, 8);
        let header = stats::load(&mut back, &bytes, &Expect { backbone_sha256: Some(SHA) }).unwrap();
        assert_eq!(header.classes, 2);
        assert_eq!(header.preprocess, meta().preprocess);
        assert_eq!(back.config().transform, t);
        assert_eq!(back.settings(), h.settings());
        assert_eq!(back.weighting(), h.weighting());
        assert_eq!(back.pooled(), h.pooled());
        for label in ["c0", "c2"] {
            let (i, j) = (h.find(label).unwrap(), back.find(label).unwrap());
            assert_eq!(back.spread(j), h.spread(i), "the class spread travels with the file");
        }
        assert!(h.spread(h.find("c2").unwrap()) > 0.0);
        for x in gaussian_classes(6, &[10, 10, 10], 1).iter().flatten() {
            let (a, b) = (h.predict(x, None).unwrap(), back.predict(x, None).unwrap());
            assert_eq!(h.slots()[a.class].label, back.slots()[b.class].label);
            assert_eq!((a.score, a.novelty), (b.score, b.novelty));
        }
        // A head of the same capacity saves the same bytes back (the
        // capacity is part of the header).
        let mut same = fresh(6, 4);
        stats::load(&mut same, &bytes, &Expect::default()).unwrap();
        assert_eq!(stats::to_vec(&same, &meta()).unwrap(), bytes);
    }
}

#[test]
fn a_compact_file_is_the_f32_rounding_of_the_accumulator_and_predicts_alike() {
    let mut h = small_head(24, &[40, 35, 50], 4, Transform::IDENTITY);
    let compact = StatsMeta { precision: Precision::F32, ..meta() };
    let full = stats::to_vec(&h, &meta()).unwrap();
    let bytes = stats::to_vec(&h, &compact).unwrap();
    assert_eq!(bytes.len() as u64, stats::encoded_len(&h, &compact));
    // The accumulator is 300 of the file's values: 4 bytes saved on each.
    assert_eq!(full.len() - bytes.len(), 4 * 24 * 25 / 2);
    let mut back = fresh(24, 4);
    let header = stats::load(&mut back, &bytes, &Expect::default()).unwrap();
    assert_eq!(header.scatter_precision, Precision::F32);
    for (a, b) in h.pooled().iter().zip(back.pooled()) {
        assert_eq!(*b, f64::from(*a as f32));
    }
    // Means stay exact; scores move by the rounding only.
    for x in gaussian_classes(24, &[20, 20, 20], 9).iter().flatten() {
        let (a, b) = (h.predict(x, None).unwrap(), back.predict(x, None).unwrap());
        assert_eq!(a.class, b.class);
        assert!((a.score - b.score).abs() <= 1e-5 * a.score.abs().max(1.0), "{} vs {}", a.score, b.score);
    }
    // Saved again at full precision, the widened values come back exactly.
    let again = stats::to_vec(&back, &meta()).unwrap();
    let mut twice = fresh(24, 4);
    stats::load(&mut twice, &again, &Expect::default()).unwrap();
    assert_eq!(twice.pooled(), back.pooled());
}

#[test]
fn every_truncation_and_every_bit_flip_is_refused_and_changes_nothing() {
    for precision in [Precision::F64, Precision::F32] {
        refuses_every_damage(StatsMeta { precision, ..meta() });
    }
}

fn refuses_every_damage(meta: StatsMeta) {
    let meta = || meta;
    let source = small_head(4, &[12, 9], 2, Transform::IDENTITY);
    let bytes = stats::to_vec(&source, &meta()).unwrap();
    let mut target = small_head(4, &[7, 8, 9], 3, Transform::IDENTITY);
    let before = stats::to_vec(&target, &meta()).unwrap();
    let unchanged = |t: &GaussianHead<OwnedStorage>| stats::to_vec(t, &meta()).unwrap() == before;

    for len in 0..bytes.len() {
        let err = stats::load(&mut target, &bytes[..len], &Expect::default()).unwrap_err();
        assert!(
            matches!(
                err,
                StatsError::Truncated { .. } | StatsError::BadMagic(_) | StatsError::UnsupportedVersion { .. }
            ),
            "len {len}: {err:?}"
        );
        assert!(unchanged(&target));
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(stats::load(&mut target, &longer, &Expect::default()), Err(StatsError::LengthMismatch { .. })));

    for bit in 0..bytes.len() * 8 {
        let mut bad = bytes.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let err = stats::load(&mut target, &bad, &Expect::default()).unwrap_err();
        assert!(
            matches!(
                err,
                StatsError::Crc { .. }
                    | StatsError::BadMagic(_)
                    | StatsError::UnsupportedVersion { .. }
                    | StatsError::Truncated { .. }
                    | StatsError::LengthMismatch { .. }
            ),
            "bit {bit}: {err:?}"
        );
        assert!(unchanged(&target));
    }
    stats::load(&mut target, &bytes, &Expect::default()).unwrap();
    assert!(!unchanged(&target));
}

#[test]
fn damage_behind_a_good_crc_is_still_refused() {
    let source = small_head(4, &[12, 9], 2, Transform::IDENTITY);
    let bytes = stats::to_vec(&source, &meta()).unwrap();
    let mut target = small_head(4, &[7, 8], 3, Transform::IDENTITY);
    let before = stats::to_vec(&target, &meta()).unwrap();
    // Flip every bit after the prefix and re-seal the CRC: the parser must
    // refuse or accept cleanly, never panic, and a refusal changes nothing.
    let mut refused = 0;
    for bit in 14 * 8..(bytes.len() - 4) * 8 {
        let mut bad = bytes.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        fix_crc(&mut bad);
        let mut t = fresh(4, 4);
        stats::load(&mut t, &before, &Expect::default()).unwrap();
        match stats::load(&mut t, &bad, &Expect::default()) {
            Ok(_) => {}
            Err(_) => {
                refused += 1;
                assert_eq!(stats::to_vec(&t, &meta()).unwrap(), before);
            }
        }
    }
    assert!(refused > 0);
    // A NaN mean with a valid CRC.
    let mut bad = bytes.clone();
    let at = bytes.len() - 4 - 8 * 10 - 8; // inside the pooled scatter
    bad[at..at + 8].copy_from_slice(&f64::NAN.to_le_bytes());
    fix_crc(&mut bad);
    assert!(matches!(stats::load(&mut target, &bad, &Expect::default()), Err(StatsError::Malformed(_))));
}

#[test]
fn a_negative_or_non_finite_spread_is_refused() {
    let h = small_head(4, &[12, 9], 2, Transform::IDENTITY);
    let header = stats::read_header(&stats::to_vec(&h, &meta()).unwrap()).unwrap();
    let mean = h.mean(0).to_vec();
    let label = gaussedge_shared::label("c0").unwrap();
    let mut target = small_head(4, &[7, 8], 3, Transform::IDENTITY);
    let before = stats::to_vec(&target, &meta()).unwrap();
    for spread in [-1.0, f64::NAN, f64::INFINITY] {
        let record = stats::ClassRecord { label: label.clone(), count: 12, spread };
        let bytes = stats::encode_parts(&header, &[(record, &mean)], None, h.pooled());
        let err = stats::load(&mut target, &bytes, &Expect::default()).unwrap_err();
        assert_eq!(err, StatsError::Malformed("class record"), "spread {spread}");
        assert_eq!(stats::to_vec(&target, &meta()).unwrap(), before);
    }
    let record = stats::ClassRecord { label, count: 12, spread: 3.5 };
    let bytes = stats::encode_parts(&header, &[(record, &mean)], None, h.pooled());
    stats::load(&mut target, &bytes, &Expect::default()).unwrap();
    assert_eq!(target.spread(0), 3.5);
}

#[test]
fn mismatches_are_named() {
    let h = small_head(4, &[12, 9, 10], 2, Transform::IDENTITY);
    let bytes = stats::to_vec(&h, &meta()).unwrap();
    let mut wrong_dim = fresh(5, 4);
    assert_eq!(
        stats::load(&mut wrong_dim, &bytes, &Expect::default()),
        Err(StatsError::DimMismatch { file: 4, head: 5 })
    );
    let mut small = fresh(4, 2);
    assert_eq!(
        stats::load(&mut small, &bytes, &Expect::default()),
        Err(StatsError::TooManyClasses { classes: 3, capacity: 2 })
    );
    let mut t = fresh(4, 4);
    let other = [9u8; 32];
    let err = stats::load(&mut t, &bytes, &Expect { backbone_sha256: Some(other) }).unwrap_err();
    assert_eq!(err, StatsError::BackboneMismatch { file: SHA, expected: other });
    assert!(err.to_string().contains("0707"), "{err}");
    // Version 1 lacked the accumulator's precision, version 2 the class
    // spreads; a future version may change anything.
    for version in [1u16, 2, 6] {
        let mut other = bytes.clone();
        other[4..6].copy_from_slice(&version.to_le_bytes());
        assert_eq!(
            stats::load(&mut t, &other, &Expect::default()),
            Err(StatsError::UnsupportedVersion { found: version, supported: stats::VERSION })
        );
    }
    assert!(matches!(
        stats::load(&mut t, b"PK\x03\x04 not a stats file", &Expect::default()),
        Err(StatsError::BadMagic(_))
    ));
}

#[test]
fn a_file_that_cannot_be_factored_leaves_the_head_unchanged() {
    // Rank-deficient statistics saved without regularisation.
    let dim = 4;
    let bare = HeadSettings {
        regularizer: Regularizer::Shrinkage(0.0),
        prior: Prior::Uniform,
        debias: true,
        novelty: NoveltyScore::OwnSpread,
    };
    let mut h = head(dim, 2, Weighting::Count, Estimator::Pooled.settings());
    let flat: Vec<Vec<f32>> = (0..6).map(|i| vec![i as f32, 1.0, 2.0, 3.0]).collect();
    h.begin(gaussedge_shared::label("flat").unwrap()).unwrap();
    learn_samples(&mut h, &flat);
    h.commit().unwrap();
    let mut bytes = stats::to_vec(&h, &meta()).unwrap();
    // Patch the settings in the header to "no shrinkage": find the encoded
    // Shrinkage(1e-4) and replace it with Shrinkage(0.0).
    let needle = 1e-4f64.to_le_bytes();
    let at = bytes.windows(8).position(|w| w == needle).unwrap();
    bytes[at..at + 8].copy_from_slice(&0.0f64.to_le_bytes());
    fix_crc(&mut bytes);
    assert_eq!(stats::read_header(&bytes).unwrap().settings, bare);

    let mut target = small_head(dim, &[10, 10], 5, Transform::IDENTITY);
    let before = stats::to_vec(&target, &meta()).unwrap();
    let err = stats::load(&mut target, &bytes, &Expect::default()).unwrap_err();
    assert!(matches!(err, StatsError::Head(HeadError::NotPositiveDefinite { .. })), "{err:?}");
    assert_eq!(stats::to_vec(&target, &meta()).unwrap(), before);
    assert!(target.predict(&[0.0; 4], None).is_ok());
}

#[test]
fn saving_or_loading_mid_learning_is_refused() {
    let mut h = small_head(4, &[12], 2, Transform::IDENTITY);
    let bytes = stats::to_vec(&h, &meta()).unwrap();
    h.begin(gaussedge_shared::label("new").unwrap()).unwrap();
    assert!(matches!(stats::to_vec(&h, &meta()), Err(stats::WriteError::Busy)));
    assert!(matches!(stats::load(&mut h, &bytes, &Expect::default()), Err(StatsError::Head(HeadError::Busy(_)))));
    assert_eq!(h.learning(), Some(("new", 0)));
}

/// The header as version 3 and 4 files wrote it: settings without a
/// novelty score, and (version 4) a threshold.
#[derive(serde::Serialize)]
struct OldHeader {
    dim: u32,
    capacity: u32,
    classes: u32,
    weighting: Weighting,
    settings: (Regularizer, Prior, bool),
    transform: Transform,
    scatter_norm: f64,
    backbone_sha256: [u8; 32],
    preprocess: Preprocess,
    scatter_precision: Precision,
}

/// `bytes` (a current file) rewritten as `version` wrote it.
fn as_version(bytes: &[u8], version: u16) -> Vec<u8> {
    let h = stats::read_header(bytes).unwrap();
    let header_len = postcard::to_allocvec(&h).unwrap().len();
    let s = h.settings;
    let old = OldHeader {
        dim: h.dim,
        capacity: h.capacity,
        classes: h.classes,
        weighting: h.weighting,
        settings: (s.regularizer, s.prior, s.debias),
        transform: h.transform,
        scatter_norm: h.scatter_norm,
        backbone_sha256: h.backbone_sha256,
        preprocess: h.preprocess,
        scatter_precision: h.scatter_precision,
    };
    let mut header = postcard::to_allocvec(&old).unwrap();
    if version == 4 {
        header.extend_from_slice(&postcard::to_allocvec(&h.novelty_threshold).unwrap());
    }
    let mut out = [&bytes[..14], &header[..], &bytes[14 + header_len..]].concat();
    out[4..6].copy_from_slice(&version.to_le_bytes());
    let len = out.len() as u64;
    out[6..14].copy_from_slice(&len.to_le_bytes());
    fix_crc(&mut out);
    out
}

#[test]
fn the_threshold_and_novelty_score_travel_with_the_statistics_and_older_files_still_load() {
    let mut h = small_head(5, &[20, 15], 4, Transform::IDENTITY);
    let own = HeadSettings { novelty: NoveltyScore::OwnSpread, ..h.settings() };
    h.set_settings(own).unwrap();
    let t = 1234.5678f64;
    let with = StatsMeta { novelty_threshold: t, ..meta() };
    let bytes = stats::to_vec(&h, &with).unwrap();
    let header = stats::read_header(&bytes).unwrap();
    assert_eq!((header.novelty_threshold, header.settings.novelty), (t, NoveltyScore::OwnSpread));
    assert_eq!(stats::read_header(&stats::to_vec(&h, &meta()).unwrap()).unwrap().novelty_threshold, f64::INFINITY);

    // The same file as earlier firmware wrote it: version 4 (a threshold,
    // distance as the score) and version 3 (no threshold: never unknown).
    for (version, threshold) in [(4u16, t), (3, f64::INFINITY)] {
        let old = as_version(&bytes, version);
        let mut back = fresh(5, 4);
        let header = stats::load(&mut back, &old, &Expect { backbone_sha256: Some(SHA) }).unwrap();
        assert_eq!((header.classes, header.novelty_threshold), (2, threshold), "{version}");
        assert_eq!(header.settings, HeadSettings { novelty: NoveltyScore::Distance, ..own }, "{version}");
        assert_eq!(back.settings().novelty, NoveltyScore::Distance);
        assert_eq!(back.mean(0), h.mean(0));
    }

    // Older and newer versions, and thresholds that are not scores, are refused.
    let at = bytes.windows(8).position(|w| w == t.to_le_bytes()).expect("threshold bytes");
    for version in [2u16, 6] {
        let mut b = bytes.clone();
        b[4..6].copy_from_slice(&version.to_le_bytes());
        fix_crc(&mut b);
        assert!(matches!(stats::read_header(&b), Err(StatsError::UnsupportedVersion { .. })), "{version}");
    }
    for bad in [f64::NAN, -1.0] {
        let mut b = bytes.clone();
        b[at..at + 8].copy_from_slice(&bad.to_le_bytes());
        fix_crc(&mut b);
        let e = stats::read_header(&b).unwrap_err().to_string();
        assert!(e.contains("novelty threshold"), "{bad}: {e}");
    }
}
