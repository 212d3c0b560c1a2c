//! Hostile statistics files: headers that claim more than the file holds,
//! absurd counts, non-finite settings. Each is refused with a typed error
//! before anything is allocated from it, and leaves a loaded head as it was.

mod common;

use common::*;
use gaussedge_shared::config::{Estimator, Power, Regularizer, Transform, Weighting};
use gaussedge_shared::head::{GaussianHead, HeadConfig, HeadError, Layout, MAX_COUNT};
use gaussedge_shared::stats::{self, ClassRecord, Expect, StatsError, StatsHeader, StatsMeta};

fn small_head() -> GaussianHead<gaussedge_shared::head::OwnedStorage> {
    let config = HeadConfig {
        dim: 4,
        capacity: 4,
        weighting: Weighting::Count,
        settings: Estimator::Pooled.settings(),
        transform: Transform::IDENTITY,
    };
    let mut h = GaussianHead::with_capacity(config).unwrap();
    learn_all(&mut h, &gaussian_classes(4, &[12, 9], 5), 0);
    h
}

/// Re-encodes `h`'s statistics with a changed header and class records.
fn reencode(
    h: &GaussianHead<gaussedge_shared::head::OwnedStorage>,
    edit_header: impl FnOnce(&mut StatsHeader),
    edit_record: impl Fn(usize, &mut ClassRecord),
) -> Vec<u8> {
    let mut header = stats::read_header(&stats::to_vec(h, &StatsMeta::default()).unwrap()).unwrap();
    edit_header(&mut header);
    let records: Vec<(ClassRecord, &[f64])> = h
        .classes()
        .map(|(slot, c)| {
            let mut r = ClassRecord { label: c.label.clone(), count: c.count, spread: h.spread(slot) };
            edit_record(slot, &mut r);
            (r, h.mean(slot))
        })
        .collect();
    stats::encode_parts(&header, &records, None, h.pooled())
}

/// Makes the length field and the CRC agree with the bytes there, as a
/// crafted file would, so only the header's claims are false.
fn seal(mut bytes: Vec<u8>) -> Vec<u8> {
    let n = bytes.len();
    bytes[6..14].copy_from_slice(&(n as u64).to_le_bytes());
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(&bytes[..n - 4]);
    bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// `bytes` with its postcard header replaced by `header` (class records
/// and arrays as they were), sealed: a header that lies about the rest.
fn with_header(bytes: &[u8], header: &StatsHeader) -> Vec<u8> {
    let old = stats::read_header(bytes).unwrap();
    let old_len = postcard::to_allocvec(&old).unwrap().len();
    let mut out = bytes[..14].to_vec();
    out.extend(postcard::to_allocvec(header).unwrap());
    out.extend_from_slice(&bytes[14 + old_len..]);
    seal(out)
}

/// The 143-byte file of the reliability issue: a valid length and CRC, a
/// header that claims a feature dimension of 16 million (a 3.1 GB head).
const BOMB: &str = "R0VIUwMAjwAAAAAAAAD//QAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABAQA8s0ycAABAAAAAAAAAAAAAAAAAIiEsS8=";

fn base64(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => unreachable!("not base64: {c}"),
    };
    let digits: Vec<u8> = s.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = vec![];
    for chunk in digits.chunks(4) {
        let mut acc = 0u32;
        for (i, &d) in chunk.iter().enumerate() {
            acc |= u32::from(d) << (18 - 6 * i);
        }
        out.extend_from_slice(&acc.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[test]
fn a_header_claiming_more_than_the_file_holds_is_refused_before_allocating() {
    let bomb = base64(BOMB);
    assert_eq!(bomb.len(), 143);
    let err = stats::read_header(&bomb).unwrap_err();
    assert_eq!(err, StatsError::Malformed("header claims more data than the file holds"));
    assert!(GaussianHead::from_stats(&bomb, 8, &Expect::default()).is_err());

    // The same lie about the dimension, the class count or both, on a real
    // file: refused by the header check, whatever the numbers.
    let h = small_head();
    for (dim, classes) in [(20_000, 2), (1_000_000, 2), (u32::MAX, 2), (4, 1_000_000_000), (u32::MAX, u32::MAX)] {
        let file = stats::to_vec(&h, &StatsMeta::default()).unwrap();
        let mut header = stats::read_header(&file).unwrap();
        (header.dim, header.classes) = (dim, classes);
        let bytes = with_header(&file, &header);
        let err = GaussianHead::from_stats(&bytes, 8, &Expect::default()).map(|_| ()).unwrap_err();
        assert_eq!(err, StatsError::Malformed("header claims more data than the file holds"), "{dim} {classes}");
    }
}

#[test]
fn sizes_that_overflow_are_an_error_not_a_panic() {
    for (dim, capacity) in [(usize::MAX, 1), (1, usize::MAX), (1 << 33, 1 << 33)] {
        assert_eq!(Layout { dim, capacity }.checked_bytes(), None);
        let config = HeadConfig {
            dim,
            capacity,
            weighting: Weighting::Count,
            settings: Estimator::Pooled.settings(),
            transform: Transform::IDENTITY,
        };
        assert!(matches!(GaussianHead::with_capacity(config), Err(HeadError::TooLarge { .. })));
    }
    // A capacity asked for from outside (a CLI flag) is bounded the same way.
    let bytes = stats::to_vec(&small_head(), &StatsMeta::default()).unwrap();
    assert!(matches!(
        GaussianHead::from_stats(&bytes, usize::MAX, &Expect::default()),
        Err(StatsError::Head(HeadError::TooLarge { .. }))
    ));
}

#[test]
fn absurd_counts_are_refused_and_cannot_wrap() {
    let h = small_head();
    let mut target = small_head();
    let before = stats::to_vec(&target, &StatsMeta::default()).unwrap();
    for count in [u64::MAX, MAX_COUNT + 1] {
        let bytes = reencode(
            &h,
            |_| {},
            |slot, r| {
                if slot == 0 {
                    r.count = count
                }
            },
        );
        let err = stats::load(&mut target, &bytes, &Expect::default()).unwrap_err();
        assert!(matches!(err, StatsError::Malformed(_)), "{count}: {err}");
        assert_eq!(stats::to_vec(&target, &StatsMeta::default()).unwrap(), before);
    }
    // Two classes whose counts are each allowed but whose sum is not.
    let bytes = reencode(&h, |hd| hd.scatter_norm = MAX_COUNT as f64, |_, r| r.count = MAX_COUNT / 2 + 1);
    assert_eq!(
        stats::load(&mut target, &bytes, &Expect::default()).unwrap_err(),
        StatsError::Malformed("class sample counts exceed 2^48")
    );
    // A count the scatter's normaliser cannot have come from.
    let bytes = reencode(
        &h,
        |_| {},
        |slot, r| {
            if slot == 0 {
                r.count = 1 << 40
            }
        },
    );
    assert_eq!(
        stats::load(&mut target, &bytes, &Expect::default()).unwrap_err(),
        StatsError::Malformed("class sample counts disagree with the scatter normaliser")
    );
    assert_eq!(stats::to_vec(&target, &StatsMeta::default()).unwrap(), before);
}

#[test]
fn a_commit_past_the_count_bound_is_refused_and_changes_nothing() {
    // The largest file the loader accepts: one class at the bound.
    let h = small_head();
    let bytes = reencode(
        &h,
        |hd| hd.scatter_norm = MAX_COUNT as f64,
        |slot, r| {
            if slot == 0 {
                r.count = MAX_COUNT - 10
            }
        },
    );
    let (mut head, _) = GaussianHead::from_stats(&bytes, 4, &Expect::default()).unwrap();
    let before = stats::to_vec(&head, &StatsMeta::default()).unwrap();
    head.begin_extend(gaussedge_shared::label("c0").unwrap()).unwrap();
    head.learn(&[0.5, 0.1, 0.2, 0.3]).unwrap();
    head.learn(&[0.4, 0.2, 0.1, 0.0]).unwrap();
    assert_eq!(head.commit(), Err(HeadError::CountOverflow));
    head.abort().unwrap();
    assert_eq!(stats::to_vec(&head, &StatsMeta::default()).unwrap(), before);
}

#[test]
fn non_finite_or_out_of_range_settings_are_refused() {
    let h = small_head();
    fn power(shift: f32, exponent: f32) -> Transform {
        Transform { power: Some(Power { shift, exponent }), center_l2: false }
    }
    type Edit = Box<dyn Fn(&mut StatsHeader)>;
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|hd| hd.transform = power(0.3, f32::NAN)), "Tukey power exponent is not a positive finite number"),
        (Box::new(|hd| hd.transform = power(0.3, -1.0)), "Tukey power exponent is not a positive finite number"),
        (Box::new(|hd| hd.transform = power(f32::INFINITY, 0.5)), "Tukey power shift is not finite"),
        (Box::new(|hd| hd.settings.regularizer = Regularizer::Shrinkage(f64::NAN)), "shrinkage is not in [0, 1]"),
        (Box::new(|hd| hd.settings.regularizer = Regularizer::Shrinkage(2.0)), "shrinkage is not in [0, 1]"),
        (
            Box::new(|hd| hd.settings.regularizer = Regularizer::Ridge(-1e-3)),
            "ridge is not a finite non-negative number",
        ),
        (
            Box::new(|hd| hd.settings.regularizer = Regularizer::Ridge(f64::INFINITY)),
            "ridge is not a finite non-negative number",
        ),
        (Box::new(|hd| hd.preprocess.mean[1] = f32::NAN), "preprocessing mean or std is not finite"),
        (
            Box::new(|hd| {
                hd.preprocess.width = 32;
                hd.preprocess.height = 32;
                hd.preprocess.channels = 3;
                hd.preprocess.std = [0.2, 0.0, 0.2];
            }),
            "preprocessing std is not positive",
        ),
        (Box::new(|hd| hd.scatter_norm = f64::NAN), "scatter normaliser"),
    ];
    for (edit, why) in cases {
        let bytes = reencode(&h, edit, |_, _| {});
        assert_eq!(stats::read_header(&bytes).unwrap_err(), StatsError::Malformed(why));
    }
    // The head refuses the same values when they come from code.
    let mut head = small_head();
    let mut settings = head.settings();
    settings.regularizer = Regularizer::Shrinkage(f64::NAN);
    assert_eq!(head.set_settings(settings), Err(HeadError::InvalidSetting("shrinkage is not in [0, 1]")));
}
