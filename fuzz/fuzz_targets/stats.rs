//! Any bytes as a statistics file: the host's way of opening one
//! (`GaussianHead::from_stats`: header, head sized from it, load) and the
//! device's (into a fixed head). A refusal is a typed error; an allocation
//! bomb shows up as a finding under `-rss_limit_mb`; an accepted file saves
//! back to bytes that load to the same head.
#![no_main]

use gaussedge_shared::stats::{self, Expect, StatsMeta};
use gaussedge_shared::{Estimator, GaussianHead, HeadConfig, Transform};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    open(data);
    // The same bytes with a valid length and CRC: what a crafted file has.
    if let Some(sealed) = common::seal_stats(data) {
        open(&sealed);
    }
});

fn open(data: &[u8]) {
    if let Ok((head, header)) = GaussianHead::from_stats(data, 4, &Expect::default()) {
        let meta = StatsMeta {
            backbone_sha256: header.backbone_sha256,
            preprocess: header.preprocess,
            precision: header.scatter_precision,
            novelty_threshold: header.novelty_threshold,
        };
        let again = stats::to_vec(&head, &meta).expect("a loaded head saves");
        let (back, h) = GaussianHead::from_stats(&again, 4, &Expect::default()).expect("its own file loads");
        assert_eq!(back.class_count(), head.class_count());
        assert_eq!(h.novelty_threshold.to_bits(), header.novelty_threshold.to_bits());
    }
    // A device's fixed head, the seed corpus's dimension.
    let config = HeadConfig {
        dim: 4,
        capacity: 4,
        weighting: Estimator::Pooled.weighting(),
        settings: Estimator::Pooled.settings(),
        transform: Transform::IDENTITY,
    };
    let mut fixed = GaussianHead::with_capacity(config).expect("head");
    let _ = stats::load(&mut fixed, data, &Expect::default());
}
